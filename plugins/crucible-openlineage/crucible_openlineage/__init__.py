"""crucible-openlineage: Crucible runs as OpenLineage RunEvents (see README.md).

Importing this package is cheap: ``openlineage`` is imported only when the
first lineage event is built.
"""

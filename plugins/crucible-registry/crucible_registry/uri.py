"""``models:/NAME@ALIAS`` (or ``/VERSION``, ``/latest``) for the run commands of core.

Declared in the entry-point group ``crucible.resolvers`` (see
``crucible_core.cli.runref``): ``crucible sample models:/dates@production``
samples the weights the alias holds. The reference resolves to the
registered checkpoint inside its run directory (pinned, so retention kept
it), after checking its sha256 against the one registered: what is sampled
is exactly what was registered, or nothing.
"""

from __future__ import annotations

from crucible_core.errors import IntegrityError, NotFound
from crucible_core.records.artifacts import digest_path, uri_path
from crucible_registry.names import parse_ref
from crucible_registry.registry import Registry

__all__ = ["resolve"]


def resolve(ref: str) -> str:
    """The path of the checkpoint ``ref`` names, inside its run directory."""
    with Registry() as reg:
        version = reg.resolve(parse_ref(ref))
    [weights] = [a for a in version.artifacts if a.role == "weights"]
    path = uri_path(weights.run_path)
    if path is None or not path.exists():
        stored = uri_path(weights.store_uri)
        raise NotFound(
            f"{ref}: the checkpoint of version {version.version} is gone from its run "
            f"({weights.run_path})",
            hint=f"the registered copy is in the artifact store: {stored}",
        )
    actual, _ = digest_path(path)
    if actual != weights.sha256:
        raise IntegrityError(
            f"{ref}: {path} no longer matches the sha256 registered for version {version.version}",
            hint=f"`crucible artifacts verify {version.run_id}` lists the damage",
        )
    return str(path)

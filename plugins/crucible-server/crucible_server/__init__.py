"""crucible-server: the REST and streaming API of Crucible.

``crucible serve`` runs it; :func:`crucible_server.app.build_app` builds the
ASGI app; :class:`crucible_server.runner.ApiServer` runs it in-process;
:mod:`crucible_server.client` is the typed Python client. Nothing heavy is
imported by this package itself.
"""

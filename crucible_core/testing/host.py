"""``isolated_host``: a plugin host holding only the plugins a test names."""

from __future__ import annotations

import contextlib
from collections.abc import Generator
from typing import Any

from crucible_core.plugins import PluginHost, reset_host

__all__ = ["isolated_host"]


@contextlib.contextmanager
def isolated_host(*plugins: Any, builtins: bool = True) -> Generator[PluginHost]:
    """A process-wide plugin host holding only core's built-ins and ``plugins``.

    Installed entry points are not loaded, so a test sees exactly the plugins
    it names; ``get_backend`` and the CLI resolve through this host until the
    block ends. Each plugin is a module or object with ``@hookimpl``
    functions, registered under its ``__name__`` (or ``plugin0``, ...)::

        with isolated_host(my_plugin) as host:
            assert "mine" in host.registrations("backend")
    """
    host = PluginHost(autoload=False, builtins=builtins)
    for i, plugin in enumerate(plugins):
        host.add_plugin(plugin, name=str(getattr(plugin, "__name__", f"plugin{i}")))
    reset_host(host)
    try:
        yield host
    finally:
        reset_host(None)

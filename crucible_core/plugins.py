"""Plugin discovery and the registry built from the registration hooks.

Plugins are found through the entry-point group ``crucible``. Each is loaded
inside ``try/except``: a plugin that fails to import (or whose hooks raise)
is recorded with its error and a hint and skipped, so ``crucible`` keeps
working; ``CRUCIBLE_STRICT_PLUGINS=1`` re-raises instead (tests set it).
``CRUCIBLE_PLUGINS`` (load only these) and ``CRUCIBLE_DISABLE_PLUGINS`` are
comma-separated entry-point names applied *before* anything is imported.

Registrations are lazy: a :class:`Registration` holds a ``"module:attr"``
factory and static metadata, so listing imports nothing heavy; ``load()``
imports the factory once and caches it.
"""

from __future__ import annotations

import contextlib
import difflib
import importlib
import os
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING, Any, Literal, cast

import msgspec
import pluggy

from crucible_core._imports import import_object
from crucible_core.errors import NotFound, PluginError, PluginLoadError
from crucible_core.hookspecs import PROJECT_NAME, HookSpecs

if TYPE_CHECKING:
    from crucible_core.ir.backend import Capabilities

__all__ = [
    "ENTRY_POINT_GROUP",
    "KINDS",
    "PluginHost",
    "PluginInfo",
    "Registration",
    "get_host",
    "import_object",
    "reset_host",
]

ENTRY_POINT_GROUP = "crucible"
BUILTIN_PLUGIN = "crucible_core.builtins"

#: Registration kind -> the hook that fills it.
KINDS: dict[str, str] = {
    "backend": "register_backends",
    "stage": "register_stages",
    "dataset": "register_datasets",
    "renderer": "register_renderers",
    "metric": "register_metrics",
    "ensemble_strategy": "register_ensemble_strategies",
    "hedging_policy": "register_hedging_policies",
    "executor": "register_executors",
    "artifact_store": "register_artifact_stores",
    "command": "register_commands",
}


class Registration(msgspec.Struct, frozen=True, kw_only=True):
    """One registered thing. Provenance (plugin, distribution, version) is stamped by the host.

    A msgspec Struct rather than a dataclass: building the registry constructs
    one per registration, and Struct construction is several times cheaper.
    """

    kind: str
    name: str
    factory: str | Callable[..., Any]
    summary: str = ""
    capabilities: Capabilities | None = None
    metadata: Mapping[str, Any] = {}
    plugin: str = ""
    distribution: str | None = None
    version: str | None = None

    def load(self) -> Any:
        """The factory object (imported on first use)."""
        if not isinstance(self.factory, str):
            return self.factory
        try:
            return import_object(self.factory)
        except PluginError:
            raise
        except Exception as exc:
            raise PluginLoadError(
                f"{self.kind} {self.name!r} from plugin {self.plugin!r} could not be loaded: "
                f"{type(exc).__name__}: {exc}",
                hint=_install_hint(exc, self.distribution),
                plugin=self.plugin,
            ) from exc

    def create(self, **options: Any) -> Any:
        """Call the factory with ``options`` and return what it builds."""
        return self.load()(**options)

    def describe(self) -> dict[str, Any]:
        """A JSON-ready summary (what ``crucible plugins --json`` prints)."""
        from crucible_core.ir.codec import to_builtins

        out: dict[str, Any] = {
            "kind": self.kind,
            "name": self.name,
            "summary": self.summary,
            "plugin": self.plugin,
            "distribution": self.distribution,
            "version": self.version,
            "factory": self.factory if isinstance(self.factory, str) else repr(self.factory),
        }
        if self.capabilities is not None:
            out["capabilities"] = to_builtins(self.capabilities)
        if self.metadata:
            out["metadata"] = to_builtins(dict(self.metadata))
        return out


@dataclass
class PluginInfo:
    """What the host knows of one plugin: where it came from and whether it loaded."""

    name: str
    distribution: str | None = None
    version: str | None = None
    status: Literal["ok", "error", "disabled"] = "ok"
    error: str | None = None
    hint: str | None = None
    load_ms: float = 0.0
    builtin: bool = False

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "distribution": self.distribution,
            "version": self.version,
            "status": self.status,
            "error": self.error,
            "hint": self.hint,
            "load_ms": round(self.load_ms, 3),
            "builtin": self.builtin,
        }


def _origin(reg: Registration) -> str:
    dist = f" ({reg.distribution})" if reg.distribution else ""
    return f"plugin {reg.plugin!r}{dist}"


def _install_hint(exc: BaseException, distribution: str | None) -> str:
    if isinstance(exc, ModuleNotFoundError) and exc.name:
        return (
            f"the module {exc.name!r} is missing; install it "
            f"(pip install {exc.name.split('.')[0]}) or reinstall "
            f"{distribution or 'the plugin'}"
        )
    return f"check that {distribution or 'the plugin'} is installed correctly and up to date"


def _env_list(name: str) -> set[str] | None:
    raw = os.environ.get(name)
    if raw is None:
        return None
    return {part.strip() for part in raw.split(",") if part.strip()}


def _strict() -> bool:
    return os.environ.get("CRUCIBLE_STRICT_PLUGINS", "") not in ("", "0", "false", "no")


class PluginHost:
    """Discovers plugins, calls their registration hooks and resolves registrations.

    ``autoload=False`` gives an isolated host (tests, embedding) that only
    knows the built-ins and what :meth:`add_plugin` adds.
    """

    def __init__(self, *, autoload: bool = True, builtins: bool = True) -> None:
        self.pm = pluggy.PluginManager(PROJECT_NAME)
        self.pm.add_hookspecs(HookSpecs)
        self._infos: dict[str, PluginInfo] = {}
        self._registries: dict[str, dict[str, Registration]] = {}
        self._lock = threading.RLock()
        if builtins:
            module = importlib.import_module(BUILTIN_PLUGIN)
            from crucible_core import __version__

            self.add_plugin(
                module, name="core", distribution="crucible-core", version=__version__, builtin=True
            )
        if autoload:
            self.load_entrypoints()

    # -- discovery ------------------------------------------------------------

    def load_entrypoints(self, entry_points: Iterable[Any] | None = None) -> None:
        """Load every plugin in the ``crucible`` entry-point group (once per host)."""
        if entry_points is None:
            from crucible_core._entrypoints import entry_points as _eps

            entry_points = _eps(ENTRY_POINT_GROUP)
        only = _env_list("CRUCIBLE_PLUGINS")
        disabled = _env_list("CRUCIBLE_DISABLE_PLUGINS") or set()
        for ep in entry_points:
            name = cast(str, ep.name)
            dist = getattr(ep, "dist", None)
            dist_name = cast(str | None, getattr(dist, "name", None))
            version = cast(str | None, getattr(dist, "version", None))
            if name in self._infos:
                continue
            if (only is not None and name not in only) or name in disabled:
                self._infos[name] = PluginInfo(
                    name=name, distribution=dist_name, version=version, status="disabled"
                )
                continue
            start = time.perf_counter()
            try:
                module = ep.load()
            except Exception as exc:
                info = PluginInfo(
                    name=name,
                    distribution=dist_name,
                    version=version,
                    status="error",
                    error=f"{type(exc).__name__}: {exc}",
                    hint=_install_hint(exc, dist_name),
                    load_ms=(time.perf_counter() - start) * 1000,
                )
                self._infos[name] = info
                if _strict():
                    raise PluginLoadError(
                        f"plugin {name!r} ({dist_name}) failed to import: {info.error}",
                        hint=info.hint,
                        plugin=name,
                    ) from exc
                continue
            self.add_plugin(
                module,
                name=name,
                distribution=dist_name,
                version=version,
                load_ms=(time.perf_counter() - start) * 1000,
            )

    def add_plugin(
        self,
        plugin: ModuleType | object,
        *,
        name: str,
        distribution: str | None = None,
        version: str | None = None,
        builtin: bool = False,
        load_ms: float = 0.0,
    ) -> None:
        """Register a plugin object or module (its ``@hookimpl`` functions) under ``name``."""
        with self._lock:
            if name in self._infos and self._infos[name].status == "ok":
                raise PluginError(
                    f"a plugin named {name!r} is already registered",
                    hint="give the plugin a different entry-point name",
                )
            try:
                self.pm.register(plugin, name=name)
            except Exception as exc:
                self._infos[name] = PluginInfo(
                    name=name,
                    distribution=distribution,
                    version=version,
                    status="error",
                    error=f"{type(exc).__name__}: {exc}",
                    hint="its hook implementations do not match the hook specs",
                )
                if _strict():
                    raise PluginLoadError(
                        f"plugin {name!r} has invalid hooks: {exc}", plugin=name
                    ) from exc
                return
            self._infos[name] = PluginInfo(
                name=name,
                distribution=distribution,
                version=version,
                builtin=builtin,
                load_ms=load_ms,
            )
            self._registries.clear()

    def remove_plugin(self, name: str) -> None:
        """Unregister a plugin (tests)."""
        with self._lock:
            plugin = self.pm.get_plugin(name)
            if plugin is not None:
                self.pm.unregister(plugin)
            self._infos.pop(name, None)
            self._registries.clear()

    # -- registries -----------------------------------------------------------

    def registrations(self, kind: str) -> dict[str, Registration]:
        """Every registration of ``kind`` by name (built on first use, then cached)."""
        registry = self._registries.get(kind)
        if registry is not None:
            return registry
        with self._lock:
            registry = self._registries.get(kind)
            if registry is None:
                registry = self._collect(kind)
                self._registries[kind] = registry
            return registry

    def _collect(self, kind: str) -> dict[str, Registration]:
        try:
            hook_name = KINDS[kind]
        except KeyError:
            raise NotFound(
                f"no registration kind {kind!r}", hint=f"kinds: {', '.join(KINDS)}"
            ) from None
        hook = getattr(self.pm.hook, hook_name)
        registry: dict[str, Registration] = {}
        for impl in hook.get_hookimpls():  # registration order
            plugin_name = impl.plugin_name
            info = self._infos.get(plugin_name) or PluginInfo(name=plugin_name)
            pending: list[Registration] = []

            def register(
                name: str,
                factory: str | Callable[..., Any],
                *,
                summary: str = "",
                capabilities: Capabilities | None = None,
                _info: PluginInfo = info,
                _pending: list[Registration] = pending,
                **metadata: Any,
            ) -> None:
                if not isinstance(name, str) or not name:  # pyright: ignore[reportUnnecessaryIsInstance]
                    raise PluginError(f"plugin {_info.name!r} registered a {kind} with no name")
                _pending.append(
                    Registration(
                        kind=kind,
                        name=name,
                        factory=factory,
                        summary=summary,
                        capabilities=capabilities,
                        metadata=metadata,
                        plugin=_info.name,
                        distribution=_info.distribution,
                        version=_info.version,
                    )
                )

            try:
                impl.function(register)
            except Exception as exc:
                info.status = "error"
                info.error = f"{hook_name} raised {type(exc).__name__}: {exc}"
                info.hint = "report this to the plugin's authors; its registrations are skipped"
                if _strict():
                    raise PluginLoadError(
                        f"plugin {plugin_name!r}: {info.error}", plugin=plugin_name
                    ) from exc
                continue
            for reg in pending:
                existing = registry.get(reg.name)
                if existing is not None:
                    raise PluginError(
                        f"{kind} {reg.name!r} is registered twice: by {_origin(existing)} "
                        f"and by {_origin(reg)}",
                        hint="uninstall or disable one of them (CRUCIBLE_DISABLE_PLUGINS)",
                    )
                registry[reg.name] = reg
        return registry

    def get(self, kind: str, name: str) -> Registration:
        """The registration ``name`` of ``kind``; NotFound lists what exists."""
        registry = self.registrations(kind)
        try:
            return registry[name]
        except KeyError:
            pass
        close = difflib.get_close_matches(name, list(registry), n=1)
        known = ", ".join(sorted(registry)) or "none"
        broken = [i.name for i in self._infos.values() if i.status == "error"]
        hint = (f"did you mean {close[0]!r}? " if close else "") + f"registered: {known}"
        if broken:
            hint += f"; plugins that failed to load: {', '.join(broken)} (see `crucible plugins`)"
        raise NotFound(f"no {kind.replace('_', ' ')} named {name!r}", hint=hint)

    def create(self, kind: str, name: str, **options: Any) -> Any:
        """Build the thing registered as ``name``: ``factory(**options)``."""
        return self.get(kind, name).create(**options)

    def plugins(self) -> list[PluginInfo]:
        """Every plugin seen, loaded or not, in discovery order."""
        # Registering runs the hooks, which may mark a plugin as errored.
        for kind in KINDS:
            with contextlib.suppress(PluginError):
                self.registrations(kind)
        return list(self._infos.values())

    def emit(self, event: Any) -> None:
        """Deliver an event to every ``on_event`` implementation; their errors are contained."""
        for impl in self.pm.hook.on_event.get_hookimpls():
            try:
                impl.function(event)
            except Exception:
                continue


_host: PluginHost | None = None
_host_lock = threading.Lock()


def get_host() -> PluginHost:
    """The process-wide host (entry points scanned once, on first use)."""
    global _host
    if _host is None:
        with _host_lock:
            if _host is None:
                _host = PluginHost()
    return _host


def reset_host(host: PluginHost | None = None) -> None:
    """Replace the process-wide host (tests; or an embedding platform's own host)."""
    global _host
    with _host_lock:
        _host = host

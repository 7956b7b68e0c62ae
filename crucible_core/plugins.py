"""Plugin discovery and the registry built from the registration hooks.

Plugins are found through the entry-point group ``crucible``. Each is loaded
inside ``try/except``: a plugin that fails to import, or whose hooks raise, is
recorded with its error and a hint and skipped as a whole (none of its
registrations is used), so ``crucible`` keeps working;
``CRUCIBLE_STRICT_PLUGINS=1`` makes any such problem an error instead (tests
set it). ``CRUCIBLE_PLUGINS`` (load only these) and
``CRUCIBLE_DISABLE_PLUGINS`` are comma-separated entry-point names applied
*before* anything is imported; a name in them that no installed plugin has is
reported in :attr:`PluginHost.warnings`.

The registry is built once, on first use, by calling every registration hook
of every plugin: a plugin's registrations are all-or-nothing. Two plugins
registering one name in one kind are both marked ``conflict`` (each naming the
other); that name cannot be resolved until one is disabled, everything else
keeps working. Functions named like hooks that match no hook spec (a misspelt
``register_backend``) are reported as warnings, errors in strict mode.

Registrations are lazy: a :class:`Registration` holds a ``"module:attr"``
factory and static metadata, so listing imports nothing heavy; ``load()``
imports the factory once and caches it.
"""

from __future__ import annotations

import copy
import difflib
import importlib
import inspect
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from types import ModuleType
from typing import TYPE_CHECKING, Any, Literal, cast

import msgspec
import pluggy

from crucible_core._entrypoints import ENTRY_POINT_GROUP
from crucible_core._entrypoints import env_list as _env_list
from crucible_core._imports import import_object
from crucible_core.errors import ConfigError, NotFound, PluginError, PluginLoadError
from crucible_core.hookspecs import PROJECT_NAME, HookSpecs

if TYPE_CHECKING:
    from crucible_core.ir.backend import Capabilities

__all__ = [
    "ENTRY_POINT_GROUP",
    "KINDS",
    "PluginHost",
    "PluginInfo",
    "Registration",
    "current_host",
    "diagnostic_host",
    "get_host",
    "import_object",
    "reset_host",
    "strict_mode",
]

BUILTIN_PLUGIN = "crucible_core.builtins"

#: Registration kind -> the hook that fills it.
KINDS: dict[str, str] = {
    "backend": "register_backends",
    "stage": "register_stages",
    "dataset": "register_datasets",
    "renderer": "register_renderers",
    "metric": "register_metrics",
    "reward": "register_rewards",
    "ensemble_strategy": "register_ensemble_strategies",
    "hedging_policy": "register_hedging_policies",
    "routing_policy": "register_routing_policies",
    "executor": "register_executors",
    "artifact_store": "register_artifact_stores",
    "command": "register_commands",
    "api_route": "register_api_routes",
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
        """Call the factory with ``options`` and return what it builds.

        Options the factory does not take are a ``ConfigError`` naming the
        registration and what it does take (checked against its signature before
        the call, so a ``TypeError`` raised inside the factory stays a bug, not a
        bad option).
        """
        factory = self.load()
        try:
            signature = inspect.signature(factory)
        except (TypeError, ValueError):  # a builtin without a signature: just call it
            return factory(**options)
        try:
            signature.bind(**options)
        except TypeError as exc:
            takes = [p for p in signature.parameters if p not in ("self", "args", "kwargs")]
            raise ConfigError(
                f"{self.name!r} (plugin {self.plugin!r}) refused its options "
                f"{sorted(options)} (bad options: {exc})",
                hint=f"{self.kind} {self.name!r} takes: {', '.join(takes) or 'no options'}",
                refused_options=sorted(options),
            ) from None
        return factory(**options)

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


PluginStatus = Literal["ok", "error", "conflict", "disabled"]


@dataclass
class PluginInfo:
    """What the host knows of one plugin: where it came from and whether it works.

    ``status``: ``ok``; ``error`` (failed to import, invalid hooks, or a hook
    raised: none of its registrations is used); ``conflict`` (it registers a
    name another plugin also registers: ``error`` names the other, that name
    is unusable, its other registrations work); ``disabled`` (by the allow or
    deny list, never imported). ``hooks`` are the hooks it implements;
    ``warnings`` are problems that do not stop it (a function named like a
    hook that matches no hook spec), errors in strict mode.
    """

    name: str
    distribution: str | None = None
    version: str | None = None
    status: PluginStatus = "ok"
    error: str | None = None
    hint: str | None = None
    load_ms: float = 0.0
    builtin: bool = False
    hooks: list[str] = field(default_factory=lambda: [])
    warnings: list[str] = field(default_factory=lambda: [])

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
            "hooks": list(self.hooks),
            "warnings": list(self.warnings),
        }

    def problem(self) -> PluginError | None:
        """The error strict mode raises for this plugin, or None if it is healthy."""
        if self.status == "error":
            return PluginLoadError(
                f"plugin {self.name!r}: {self.error}", hint=self.hint, plugin=self.name
            )
        if self.status == "conflict":
            return PluginError(
                f"plugin {self.name!r}: {self.error}", hint=self.hint, plugin=self.name
            )
        if self.warnings:
            return PluginLoadError(
                f"plugin {self.name!r}: {'; '.join(self.warnings)}",
                hint="rename or mark the function with @hookimpl (see docs/hooks.md)",
                plugin=self.name,
            )
        return None


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


def strict_mode() -> bool:
    """Whether ``CRUCIBLE_STRICT_PLUGINS`` asks for plugin problems to be errors."""
    return os.environ.get("CRUCIBLE_STRICT_PLUGINS", "") not in ("", "0", "false", "no")


#: Registration hook -> the kind it fills.
_KIND_OF_HOOK = {hook: kind for kind, hook in KINDS.items()}

#: Every hook name plugins may implement (registration hooks and ``on_event``).
_SPEC_NAMES = sorted(n for n in vars(HookSpecs) if not n.startswith("_"))


def _did_you_mean(name: str) -> str:
    close = difflib.get_close_matches(name, _SPEC_NAMES, n=1)
    return f"; did you mean {close[0]!r}?" if close else ""


def _hook_warnings(plugin: object, callers: Iterable[Any]) -> list[str]:
    """Functions of ``plugin`` that look like hooks but that pluggy will never call.

    A ``@hookimpl`` whose name matches no hook spec (pluggy accepts it and
    never calls it), and an unmarked function named like a hook
    (``register_*``, ``on_event``; pluggy ignores unmarked functions). For a
    module, only functions defined in it count, not names it imports.
    """
    out: list[str] = []
    marked: set[str] = set()
    for caller in callers:
        marked.add(caller.name)
        if caller.spec is None:
            out.append(
                f"{caller.name!r} is marked @hookimpl but matches no hook"
                f"{_did_you_mean(caller.name)}"
            )
    module_name = plugin.__name__ if isinstance(plugin, ModuleType) else None
    for attr in dir(plugin):
        if attr in marked or not (attr.startswith("register_") or attr in _SPEC_NAMES):
            continue
        obj = getattr(plugin, attr, None)
        if not callable(obj):
            continue
        if module_name is not None and getattr(obj, "__module__", None) != module_name:
            continue
        if attr in _SPEC_NAMES:
            out.append(f"{attr!r} is not marked @hookimpl, so it is never called")
        else:
            out.append(f"{attr!r} matches no hook{_did_you_mean(attr)}")
    return out


def _unknown_names(only: set[str] | None, disabled: set[str], seen: set[str]) -> list[str]:
    """Warnings for allow/deny-list names that match no installed plugin (typos go unnoticed)."""
    out: list[str] = []
    installed = ", ".join(sorted(seen)) or "none"
    for var, names in (("CRUCIBLE_PLUGINS", only or set()), ("CRUCIBLE_DISABLE_PLUGINS", disabled)):
        for name in sorted(names - seen):
            if name == "core":
                if var == "CRUCIBLE_DISABLE_PLUGINS":
                    out.append(f"{var} names 'core', the built-in plugin, which cannot be disabled")
                continue
            close = difflib.get_close_matches(name, sorted(seen), n=1)
            out.append(
                f"{var} names {name!r}, which is not an installed plugin"
                + (f" (did you mean {close[0]!r}?)" if close else "")
                + f"; installed: {installed}"
            )
    return out


class PluginHost:
    """Discovers plugins, calls their registration hooks and resolves registrations.

    ``autoload=False`` gives an isolated host (tests, embedding) that only
    knows the built-ins and what :meth:`add_plugin` adds. ``strict`` (default:
    ``CRUCIBLE_STRICT_PLUGINS``) turns every plugin problem into an error
    raised when plugins are loaded or registrations are looked up.
    """

    def __init__(
        self, *, autoload: bool = True, builtins: bool = True, strict: bool | None = None
    ) -> None:
        self.pm = pluggy.PluginManager(PROJECT_NAME)
        self.pm.add_hookspecs(HookSpecs)
        self._strict = strict
        # State after loading (import, hook validation), and after the registry build.
        self._loaded: dict[str, PluginInfo] = {}
        self._infos: dict[str, PluginInfo] = {}
        #: ``on_event`` failures per plugin (each is logged; see :meth:`emit`).
        self.event_errors: dict[str, int] = {}
        self._registries: dict[str, dict[str, Registration]] | None = None
        self._conflicts: dict[str, dict[str, list[Registration]]] = {}
        # plugin name -> its registration hook functions, with the kind each fills.
        self._register_impls: dict[str, list[tuple[str, Callable[..., Any]]]] = {}
        #: Every entry point seen, disabled ones too: plugin name -> its key
        #: (see ``_entrypoints.entry_point_key``), in discovery order.
        self.entry_point_keys: dict[str, str] = {}
        #: Problems of the configuration rather than of a plugin (unknown allow/deny names).
        self.warnings: list[str] = []
        #: Whether the installed entry points were scanned (the CLI indexes their commands).
        self.autoloaded = False
        self._lock = threading.RLock()
        if builtins:
            module = importlib.import_module(BUILTIN_PLUGIN)
            from crucible_core import __version__

            self.add_plugin(
                module, name="core", distribution="crucible-core", version=__version__, builtin=True
            )
        if autoload:
            self.load_entrypoints()

    @property
    def strict(self) -> bool:
        """Whether plugin problems raise (the constructor's ``strict``, else the environment)."""
        return strict_mode() if self._strict is None else self._strict

    # -- discovery ------------------------------------------------------------

    def load_entrypoints(self, entry_points: Iterable[Any] | None = None) -> None:
        """Load every plugin in the ``crucible`` entry-point group (once per host)."""
        from crucible_core._entrypoints import entry_point_key

        if entry_points is None:
            from crucible_core._entrypoints import entry_points as _eps

            self.autoloaded = True
            entry_points = _eps(ENTRY_POINT_GROUP)
        only = _env_list("CRUCIBLE_PLUGINS")
        disabled = _env_list("CRUCIBLE_DISABLE_PLUGINS") or set()
        seen: set[str] = set()
        for ep in entry_points:
            name = cast(str, ep.name)
            seen.add(name)
            dist = getattr(ep, "dist", None)
            dist_name = cast(str | None, getattr(dist, "name", None))
            version = cast(str | None, getattr(dist, "version", None))
            if name in self._loaded:
                continue
            self.entry_point_keys[name] = entry_point_key(ep)
            if (only is not None and name not in only) or name in disabled:
                self._set(
                    PluginInfo(
                        name=name, distribution=dist_name, version=version, status="disabled"
                    )
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
                    error=f"failed to import: {type(exc).__name__}: {exc}",
                    hint=_install_hint(exc, dist_name),
                    load_ms=(time.perf_counter() - start) * 1000,
                )
                self._set(info)
                if self.strict:
                    raise PluginLoadError(
                        f"plugin {name!r} ({dist_name}) {info.error}", hint=info.hint, plugin=name
                    ) from exc
                continue
            self.add_plugin(
                module,
                name=name,
                distribution=dist_name,
                version=version,
                load_ms=(time.perf_counter() - start) * 1000,
            )
        self.warnings.extend(_unknown_names(only, disabled, seen))

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
            if name in self._loaded and self._loaded[name].status == "ok":
                raise PluginError(
                    f"a plugin named {name!r} is already registered",
                    hint="give the plugin a different entry-point name",
                )
            info = PluginInfo(
                name=name,
                distribution=distribution,
                version=version,
                builtin=builtin,
                load_ms=load_ms,
            )
            try:
                self.pm.register(plugin, name=name)
            except Exception as exc:
                info.status = "error"
                info.error = f"invalid hooks: {type(exc).__name__}: {exc}"
                info.hint = "its hook implementations do not match the hook specs (docs/hooks.md)"
                self._set(info)
                if self.strict:
                    raise PluginLoadError(
                        f"plugin {name!r} has {info.error}", hint=info.hint, plugin=name
                    ) from exc
                return
            callers = self.pm.get_hookcallers(plugin) or []
            info.hooks = sorted(c.name for c in callers if c.spec is not None)
            self._register_impls[name] = [
                (_KIND_OF_HOOK[c.name], impl.function)
                for c in callers
                if c.name in _KIND_OF_HOOK
                for impl in c.get_hookimpls()
                if impl.plugin is plugin
            ]
            info.warnings = _hook_warnings(plugin, callers)
            if info.warnings and self.strict:
                self.pm.unregister(plugin)
                problem = info.problem()  # made from the warnings, while the status is still ok
                assert problem is not None
                info.status, info.error, info.hint = "error", "; ".join(info.warnings), problem.hint
                self._set(info)
                raise problem
            self._set(info)

    def remove_plugin(self, name: str) -> None:
        """Unregister a plugin (tests)."""
        with self._lock:
            plugin = self.pm.get_plugin(name)
            if plugin is not None:
                self.pm.unregister(plugin)
            self._loaded.pop(name, None)
            self._register_impls.pop(name, None)
            self.entry_point_keys.pop(name, None)
            self._invalidate()

    def _set(self, info: PluginInfo) -> None:
        with self._lock:
            self._loaded[info.name] = info
            self._invalidate()

    def _invalidate(self) -> None:
        """Forget the registry: the next lookup calls every registration hook again."""
        with self._lock:
            self._registries = None

    # -- registries -----------------------------------------------------------

    def _built(self) -> dict[str, dict[str, Registration]]:
        registries = self._registries
        if registries is not None:
            return registries
        with self._lock:
            if self._registries is None:
                self._build()
            assert self._registries is not None
            return self._registries

    def _build(self) -> None:
        """Call every registration hook of every plugin; record errors and conflicts.

        A plugin's registrations are kept only if all of its hooks succeed.
        Healthy plugins share their load-time :class:`PluginInfo`; one whose
        state changes here gets a copy, so a rebuild starts from load time.
        """
        infos = dict(self._loaded)
        registries: dict[str, dict[str, Registration]] = {kind: {} for kind in KINDS}
        conflicts: dict[str, dict[str, list[Registration]]] = {}
        for plugin_name, info in infos.items():
            plugin_impls = self._register_impls.get(plugin_name)
            if info.status != "ok" or not plugin_impls:
                continue
            pending: dict[tuple[str, str], Registration] = {}
            kind = ""
            try:
                for kind, function in plugin_impls:
                    function(self._registrar(kind, info, pending))
            except Exception as exc:
                hook_name = KINDS[kind]
                info = infos[plugin_name] = copy.copy(info)
                info.status = "error"
                info.error = f"{hook_name} raised {type(exc).__name__}: {exc}"
                info.hint = "report this to the plugin's authors; none of its registrations is used"
                continue
            for (kind, name), reg in pending.items():
                registry = registries[kind]
                if name in registry:
                    conflicts.setdefault(kind, {})[name] = [registry.pop(name), reg]
                elif conflicts and name in conflicts.get(kind, ()):
                    conflicts[kind][name].append(reg)
                else:
                    registry[name] = reg
        for kind, names in conflicts.items():
            for name, regs in names.items():
                plugins = ", ".join(r.plugin for r in regs)
                for reg in regs:
                    info = infos[reg.plugin]
                    if info is self._loaded.get(reg.plugin):
                        info = infos[reg.plugin] = copy.copy(info)
                    others = " and ".join(_origin(o) for o in regs if o is not reg)
                    clash = f"{kind} {name!r} is also registered by {others}"
                    info.status = "conflict"
                    info.error = clash if info.error is None else f"{info.error}; {clash}"
                    info.hint = (
                        f"uninstall or disable one of {plugins} "
                        "(CRUCIBLE_DISABLE_PLUGINS=name); until then that name cannot be used"
                    )
        self._infos = infos
        self._conflicts = conflicts
        self._registries = registries

    @staticmethod
    def _registrar(
        kind: str, info: PluginInfo, pending: dict[tuple[str, str], Registration]
    ) -> Callable[..., None]:
        """The ``register`` callable one plugin's hook for ``kind`` receives."""

        def register(
            name: str,
            factory: str | Callable[..., Any],
            *,
            summary: str = "",
            capabilities: Capabilities | None = None,
            **metadata: Any,
        ) -> None:
            if not isinstance(name, str) or not name:  # pyright: ignore[reportUnnecessaryIsInstance]
                raise PluginError(f"plugin {info.name!r} registered a {kind} with no name")
            if (kind, name) in pending:
                raise PluginError(f"plugin {info.name!r} registered {kind} {name!r} twice")
            pending[kind, name] = Registration(
                kind=kind,
                name=name,
                factory=factory,
                summary=summary,
                capabilities=capabilities,
                metadata=metadata,
                plugin=info.name,
                distribution=info.distribution,
                version=info.version,
            )

        return register

    def registrations(self, kind: str, *, check: bool = True) -> dict[str, Registration]:
        """Every usable registration of ``kind`` by name (built on first use, then cached).

        A name two plugins register is left out (:meth:`get` explains it). In
        strict mode any plugin problem raises here unless ``check=False``
        (listings that must show broken plugins).
        """
        if kind not in KINDS:
            raise NotFound(f"no registration kind {kind!r}", hint=f"kinds: {', '.join(KINDS)}")
        registries = self._built()
        if check and self.strict:
            self.check()
        return registries[kind]

    def conflicts(self, kind: str) -> dict[str, list[Registration]]:
        """Names of ``kind`` registered by more than one plugin, with every claim."""
        self._built()
        return self._conflicts.get(kind, {})

    def check(self) -> None:
        """Raise the first plugin problem (error, conflict, hook warning); strict mode's rule."""
        for info in self.plugins():
            problem = info.problem()
            if problem is not None:
                raise problem

    def get(self, kind: str, name: str) -> Registration:
        """The registration ``name`` of ``kind``; NotFound lists what exists."""
        registry = self.registrations(kind)
        try:
            return registry[name]
        except KeyError:
            pass
        clash = self._conflicts.get(kind, {}).get(name)
        if clash:
            raise PluginError(
                f"{kind} {name!r} is registered more than once: by "
                + " and by ".join(_origin(r) for r in clash),
                hint="uninstall or disable one of them (CRUCIBLE_DISABLE_PLUGINS=name)",
            )
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
        """Every plugin seen, loaded or not, in discovery order (never raises)."""
        self._built()
        return list(self._infos.values())

    def emit(self, event: Any) -> None:
        """Deliver an event to every ``on_event`` implementation; their errors are contained.

        A plugin marked ``error`` (one of its hooks raised) is skipped here too.
        """
        self._built()
        for impl in self.pm.hook.on_event.get_hookimpls():
            info = self._infos.get(impl.plugin_name)
            if info is not None and info.status == "error":
                continue
            try:
                impl.function(event)
            except Exception:
                self._event_error(impl.plugin_name, event)

    def _event_error(self, plugin: str, event: Any) -> None:
        """Log a plugin's ``on_event`` failure: the first with its traceback, then every
        1000th as a count, so a sink broken for good cannot flood the log."""
        count = self.event_errors.get(plugin, 0) + 1
        self.event_errors[plugin] = count
        kind = getattr(event, "kind", type(event).__name__)
        if count == 1:
            _log.warning(
                "plugin %r: on_event raised on a %r event; it keeps receiving events",
                plugin,
                kind,
                exc_info=True,
            )
        elif count % 1000 == 0:
            _log.warning("plugin %r: on_event has raised %d times", plugin, count)


_log = logging.getLogger("crucible.plugins")
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


def diagnostic_host() -> PluginHost:
    """The process-wide host, or, if none exists yet, a new lenient one installed as it.

    ``crucible plugins`` and ``crucible doctor`` must report every plugin even
    under ``CRUCIBLE_STRICT_PLUGINS=1``, where a strict host stops at the first
    broken one; they call :meth:`PluginHost.check` themselves after reporting.
    """
    global _host
    with _host_lock:
        if _host is None:
            _host = PluginHost(strict=False)
        return _host


def current_host() -> PluginHost | None:
    """The process-wide host if one was built, without building one."""
    return _host


def reset_host(host: PluginHost | None = None) -> None:
    """Replace the process-wide host (tests; or an embedding platform's own host)."""
    global _host
    with _host_lock:
        _host = host

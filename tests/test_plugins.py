"""Plugin discovery, isolation of broken plugins, lazy registrations, duplicates."""

from __future__ import annotations

import sys
import textwrap
import types
from pathlib import Path
from typing import Any

import pluggy
import pytest

from crucible_core import api, hookimpl
from crucible_core._entrypoints import entry_points
from crucible_core.errors import NotFound, PluginError, PluginLoadError
from crucible_core.ir import Capabilities
from crucible_core.plugins import KINDS, PluginHost, Registration


class _EP:
    """An entry point standing in for an installed distribution's (the loader is the real one)."""

    def __init__(self, name: str, load: Any, dist: str = "fake-dist", version: str = "1.0") -> None:
        self.name = name
        self._load = load
        self.dist = types.SimpleNamespace(name=dist, version=version)

    def load(self) -> Any:
        return self._load()


def _plugin(**hooks: Any) -> types.SimpleNamespace:
    return types.SimpleNamespace(**{k: hookimpl(v) for k, v in hooks.items()})


def test_builtins_register_core_commands(host: PluginHost) -> None:
    commands = host.registrations("command")
    assert {"plugins", "ir", "doctor"} <= set(commands)
    assert commands["ir"].plugin == "core"
    assert commands["ir"].distribution == "crucible-core"


def test_registration_is_lazy_and_cached(host: PluginHost, tmp_path: Path) -> None:
    pkg = tmp_path / "lazy_plugin_mod"
    pkg.mkdir()
    (pkg / "__init__.py").write_text(
        "IMPORTED = True\nclass B:\n    def __init__(self, **kw):\n        self.kw = kw\n"
    )
    sys.path.insert(0, str(tmp_path))
    try:
        host.add_plugin(
            _plugin(
                register_backends=lambda register: register(
                    "lazy", "lazy_plugin_mod:B", summary="s"
                )
            ),
            name="lazy",
        )
        reg = host.get("backend", "lazy")
        assert "lazy_plugin_mod" not in sys.modules  # listing imports nothing
        obj = host.create("backend", "lazy", x=1)
        assert obj.kw == {"x": 1}
        assert "lazy_plugin_mod" in sys.modules
        assert reg.load() is reg.load()
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("lazy_plugin_mod", None)


def test_duplicate_names_mark_both_plugins_and_keep_the_rest(
    host: PluginHost, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CRUCIBLE_STRICT_PLUGINS", raising=False)

    def both(own: str) -> Any:
        def register_backends(register: Any) -> None:
            register("x", dict)
            register(own, dict)

        return _plugin(register_backends=register_backends)

    host.add_plugin(both("only-one"), name="one", distribution="dist-one")
    host.add_plugin(both("only-two"), name="two", distribution="dist-two")
    backends = host.registrations("backend")
    assert {"only-one", "only-two"} <= set(backends)
    assert "x" not in backends
    assert api.get_backend("only-two") == {}
    assert api.get_executor("inline") is not None  # the built-ins are untouched
    with pytest.raises(PluginError, match=r"more than once: by plugin 'one'.*by plugin 'two'"):
        host.get("backend", "x")
    infos = {i.name: i for i in host.plugins()}
    assert infos["one"].status == infos["two"].status == "conflict"
    assert "backend 'x' is also registered by plugin 'two' (dist-two)" in (infos["one"].error or "")
    assert "backend 'x' is also registered by plugin 'one' (dist-one)" in (infos["two"].error or "")
    assert infos["core"].status == "ok"
    assert [r.plugin for r in host.conflicts("backend")["x"]] == ["one", "two"]
    monkeypatch.setenv("CRUCIBLE_STRICT_PLUGINS", "1")
    with pytest.raises(PluginError, match="also registered by"):
        host.registrations("backend")


def test_disabling_one_side_of_a_conflict_resolves_it(
    host: PluginHost, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CRUCIBLE_DISABLE_PLUGINS", "two")
    plugin = _plugin(register_backends=lambda register: register("x", dict))
    host.load_entrypoints([_EP("one", lambda: plugin), _EP("two", lambda: plugin)])
    assert host.get("backend", "x").plugin == "one"
    assert {i.name: i.status for i in host.plugins()}["two"] == "disabled"


def test_unknown_name_suggests_and_lists(host: PluginHost) -> None:
    host.add_plugin(_plugin(register_backends=lambda register: register("local", dict)), name="p")
    with pytest.raises(NotFound) as info:
        host.get("backend", "locl")
    assert info.value.hint is not None
    assert "did you mean 'local'?" in info.value.hint
    with pytest.raises(NotFound, match="no registration kind"):
        host.registrations("gizmo")


def test_broken_plugin_is_reported_and_skipped(
    host: PluginHost, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CRUCIBLE_STRICT_PLUGINS", raising=False)

    def boom() -> Any:
        raise ModuleNotFoundError("No module named 'torchy'", name="torchy")

    good = _plugin(register_backends=lambda register: register("good", dict))
    host.load_entrypoints([_EP("broken", boom, dist="crucible-broken"), _EP("fine", lambda: good)])
    infos = {i.name: i for i in host.plugins()}
    assert infos["broken"].status == "error"
    assert "torchy" in (infos["broken"].error or "")
    assert infos["broken"].hint is not None
    assert "pip install torchy" in infos["broken"].hint
    assert infos["fine"].status == "ok"
    assert "good" in host.registrations("backend")
    with pytest.raises(NotFound) as info:
        host.get("backend", "missing")
    assert info.value.hint is not None
    assert "failed to load: broken" in info.value.hint


def test_strict_mode_reraises(host: PluginHost, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CRUCIBLE_STRICT_PLUGINS", "1")

    def boom() -> Any:
        raise RuntimeError("kaput")

    with pytest.raises(PluginLoadError, match="kaput"):
        host.load_entrypoints([_EP("broken", boom)])


def test_hook_that_raises_drops_every_registration_of_its_plugin(
    host: PluginHost, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CRUCIBLE_STRICT_PLUGINS", raising=False)
    seen: list[Any] = []

    def bad(register: Any) -> None:
        register("half-done", dict)
        raise ValueError("oops")

    host.add_plugin(
        _plugin(
            register_backends=lambda register: register("partial-backend", dict),
            register_commands=lambda register: register("partial-cmd", dict, summary="s"),
            register_stages=bad,
            on_event=lambda event: seen.append(event),
        ),
        name="badhooks",
    )
    # Asking for commands first must not let the command through: the plugin is all-or-nothing.
    assert "partial-cmd" not in host.registrations("command")
    assert "partial-backend" not in host.registrations("backend")
    assert all(r.plugin == "core" for r in host.registrations("stage").values())
    host.emit({"kind": "x"})
    assert seen == []
    info = next(i for i in host.plugins() if i.name == "badhooks")
    assert info.status == "error"
    assert "register_stages raised ValueError: oops" in (info.error or "")
    assert info.hint is not None
    assert "none of its registrations is used" in info.hint
    with pytest.raises(NotFound, match="partial-backend"):
        host.get("backend", "partial-backend")
    monkeypatch.setenv("CRUCIBLE_STRICT_PLUGINS", "1")
    host2 = PluginHost(autoload=False)
    host2.add_plugin(_plugin(register_stages=bad), name="badhooks")
    with pytest.raises(PluginLoadError, match="oops"):
        host2.registrations("command")


def test_registering_one_name_twice_in_a_plugin_is_its_error(
    host: PluginHost, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CRUCIBLE_STRICT_PLUGINS", raising=False)

    def twice(register: Any) -> None:
        register("same", dict)
        register("same", list)

    host.add_plugin(_plugin(register_backends=twice), name="twice")
    info = next(i for i in host.plugins() if i.name == "twice")
    assert info.status == "error"
    assert "registered backend 'same' twice" in (info.error or "")


def test_misspelt_and_unmarked_hooks_are_warned_and_strict_errors(
    host: PluginHost, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CRUCIBLE_STRICT_PLUGINS", raising=False)
    plugin = _plugin(register_backend=lambda register: register("typo", dict))
    plugin.register_stages = lambda register: register("unmarked", dict)  # no @hookimpl
    host.add_plugin(plugin, name="typo")
    info = next(i for i in host.plugins() if i.name == "typo")
    assert info.status == "ok"
    assert info.warnings == [
        "'register_backend' is marked @hookimpl but matches no hook; "
        "did you mean 'register_backends'?",
        "'register_stages' is not marked @hookimpl, so it is never called",
    ]
    assert "typo" not in host.registrations("backend")
    monkeypatch.setenv("CRUCIBLE_STRICT_PLUGINS", "1")
    host2 = PluginHost(autoload=False)
    with pytest.raises(PluginLoadError, match="'register_backend' is marked @hookimpl"):
        host2.add_plugin(_plugin(register_backend=lambda register: None), name="typo")
    assert next(i for i in host2.plugins() if i.name == "typo").status == "error"


def test_module_plugin_is_not_blamed_for_names_it_imports(
    host: PluginHost, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CRUCIBLE_STRICT_PLUGINS", raising=False)
    (tmp_path / "imports_helpers_plugin.py").write_text(
        textwrap.dedent(
            """
            from os.path import join as register_join
            from crucible_core import hookimpl

            @hookimpl
            def register_backends(register):
                register("fine", dict)

            def register_helper(x):
                return x
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    import importlib

    module = importlib.import_module("imports_helpers_plugin")
    try:
        host.add_plugin(module, name="mod")
        info = next(i for i in host.plugins() if i.name == "mod")
        assert [w.split(";")[0] for w in info.warnings] == ["'register_helper' matches no hook"]
        assert info.hooks == ["register_backends"]
    finally:
        sys.modules.pop("imports_helpers_plugin", None)


def test_unknown_allow_and_deny_names_are_warned(
    host: PluginHost, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CRUCIBLE_DISABLE_PLUGINS", "helo,core")
    monkeypatch.setenv("CRUCIBLE_PLUGINS", "hello,nope")
    host.load_entrypoints([_EP("hello", lambda: _plugin())])
    assert host.warnings == [
        "CRUCIBLE_PLUGINS names 'nope', which is not an installed plugin; installed: hello",
        "CRUCIBLE_DISABLE_PLUGINS names 'core', the built-in plugin, which cannot be disabled",
        "CRUCIBLE_DISABLE_PLUGINS names 'helo', which is not an installed plugin "
        "(did you mean 'hello'?); installed: hello",
    ]


def test_plugin_info_lists_its_hooks(host: PluginHost) -> None:
    host.add_plugin(_plugin(on_event=lambda event: None), name="sink")
    infos = {i.name: i for i in host.plugins()}
    assert infos["sink"].hooks == ["on_event"]
    assert infos["sink"].describe()["hooks"] == ["on_event"]
    assert "register_commands" in infos["core"].hooks


def test_invalid_hook_signature_is_reported(
    host: PluginHost, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CRUCIBLE_STRICT_PLUGINS", raising=False)
    host.add_plugin(_plugin(register_backends=lambda wrong_arg: None), name="badsig")
    info = next(i for i in host.plugins() if i.name == "badsig")
    assert info.status == "error"


def test_allow_and_deny_lists_apply_before_import(
    host: PluginHost, monkeypatch: pytest.MonkeyPatch
) -> None:
    loaded: list[str] = []

    def loader(name: str) -> Any:
        def load() -> Any:
            loaded.append(name)
            return _plugin(register_backends=lambda register: register(name, dict))

        return load

    monkeypatch.setenv("CRUCIBLE_PLUGINS", "a,b")
    monkeypatch.setenv("CRUCIBLE_DISABLE_PLUGINS", "b")
    host.load_entrypoints([_EP(n, loader(n)) for n in "abc"])
    assert loaded == ["a"]
    statuses = {i.name: i.status for i in host.plugins()}
    assert statuses == {"core": "ok", "a": "ok", "b": "disabled", "c": "disabled"}


def test_registration_describe_and_capabilities(host: PluginHost) -> None:
    caps = Capabilities(backend_id="z", supports_training=True)
    host.add_plugin(
        _plugin(register_backends=lambda register: register("z", "m:f", capabilities=caps, tier=1)),
        name="zz",
        distribution="crucible-zz",
        version="2.0",
    )
    reg = host.get("backend", "z")
    assert isinstance(reg, Registration)
    d = reg.describe()
    assert d["capabilities"]["supports_training"] is True
    assert d["metadata"] == {"tier": 1}
    assert (d["plugin"], d["distribution"], d["version"]) == ("zz", "crucible-zz", "2.0")


def test_factory_import_failure_names_plugin_and_hint(host: PluginHost) -> None:
    host.add_plugin(
        _plugin(register_backends=lambda register: register("y", "no_such_module_xyz:B")),
        name="yy",
        distribution="crucible-yy",
    )
    with pytest.raises(PluginLoadError, match="from plugin 'yy'") as info:
        host.create("backend", "y")
    assert info.value.hint is not None
    assert "no_such_module_xyz" in info.value.hint
    host.add_plugin(_plugin(register_stages=lambda register: register("s", "nocolon")), name="s")
    with pytest.raises(PluginError, match="bad factory reference"):
        host.get("stage", "s").load()


def test_library_api_uses_the_process_host(host: PluginHost) -> None:
    class Echo:
        def __init__(self, **options: Any) -> None:
            self.options = options

    plugin = _plugin(
        **{
            KINDS[kind]: (lambda k: lambda register: register(f"{k}-x", Echo))(kind)
            for kind in KINDS
            if kind != "command"
        }
    )
    host.add_plugin(plugin, name="all")
    assert api.get_backend("backend-x", a=1).options == {"a": 1}
    assert isinstance(api.get_stage("stage-x"), Echo)
    assert isinstance(api.get_dataset("dataset-x"), Echo)
    assert isinstance(api.get_renderer("renderer-x"), Echo)
    assert api.get_metric("metric-x") is Echo
    assert isinstance(api.get_executor("executor-x"), Echo)
    assert isinstance(api.get_artifact_store("artifact_store-x"), Echo)
    assert isinstance(api.get_ensemble_strategy("ensemble_strategy-x"), Echo)
    assert isinstance(api.get_hedging_policy("hedging_policy-x"), Echo)
    assert [r.name for r in api.list_registrations("backend")] == ["backend-x"]
    assert {p.name for p in api.list_plugins()} == {"core", "all"}


def test_on_event_reaches_observers_and_contains_errors(host: PluginHost) -> None:
    seen: list[Any] = []

    def bad(event: Any) -> None:
        raise RuntimeError("observer broke")

    host.add_plugin(_plugin(on_event=lambda event: seen.append(event)), name="obs")
    host.add_plugin(_plugin(on_event=bad), name="bad-obs")
    host.emit({"kind": "x"})
    assert seen == [{"kind": "x"}]


def test_same_plugin_name_twice_is_refused(host: PluginHost) -> None:
    host.add_plugin(_plugin(), name="twice")
    with pytest.raises(PluginError, match="already registered"):
        host.add_plugin(_plugin(), name="twice")
    host.remove_plugin("twice")
    host.add_plugin(_plugin(), name="twice")


def test_hook_impl_default_arguments_are_not_passed() -> None:
    """pluggy treats defaulted impl arguments differently across releases; we pin the behaviour
    we rely on: a hook receives only ``register`` and an impl default is never filled by pluggy."""
    seen: list[Any] = []

    def impl(register: Any, extra: Any = "default") -> None:
        seen.append(extra)

    pm = pluggy.PluginManager("crucible")
    from crucible_core.hookspecs import HookSpecs

    pm.add_hookspecs(HookSpecs)
    pm.register(_plugin(register_backends=impl), name="d")
    pm.hook.register_backends(register=lambda *a, **k: None)
    assert seen == ["default"]


def test_fast_entry_point_scan_agrees_with_importlib(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dist = tmp_path / "Crucible_Fake-1.2.3.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: crucible-fake\nVersion: 1.2.3\n\n")
    (dist / "entry_points.txt").write_text(
        textwrap.dedent(
            """
            [console_scripts]
            x = y:z

            [crucible]
            fake = crucible_fake.plugin
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    fast = {(e.name, e.value, e.dist.name, e.dist.version) for e in entry_points("crucible")}
    monkeypatch.setenv("CRUCIBLE_ENTRY_POINTS", "importlib")
    slow = {(e.name, e.value, e.dist.name, e.dist.version) for e in entry_points("crucible")}
    assert ("fake", "crucible_fake.plugin", "crucible-fake", "1.2.3") in fast
    assert fast == slow


def test_run_records_name_conflicting_plugins_whose_other_registrations_are_used(
    host: PluginHost, monkeypatch: pytest.MonkeyPatch
) -> None:
    from crucible_core.records.artifacts import environment_info

    monkeypatch.delenv("CRUCIBLE_STRICT_PLUGINS", raising=False)

    def clash(own: str) -> Any:
        def register_backends(register: Any) -> None:
            register("x", dict)
            register(own, dict)

        return _plugin(register_backends=register_backends)

    host.add_plugin(clash("a-own"), name="a", version="1.0")
    host.add_plugin(clash("b-own"), name="b", version="2.0")
    host.add_plugin(_plugin(register_stages=lambda register: 1 / 0), name="broken", version="3")
    assert environment_info(host)["plugins"] == {"a": "1.0", "b": "2.0"}


def test_fast_scan_reads_develop_egg_info_without_a_version_in_its_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """setuptools' in-tree metadata is `name.egg-info`; importlib reads it, so must we."""
    egg = tmp_path / "crucible_dev.egg-info"
    egg.mkdir()
    (egg / "PKG-INFO").write_text("Metadata-Version: 2.1\nName: crucible-dev\nVersion: 0.4\n\n")
    (egg / "entry_points.txt").write_text("[crucible]\ndev = crucible_dev.plugin\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    fast = {(e.name, e.dist.name, e.dist.version) for e in entry_points("crucible")}
    assert ("dev", "crucible-dev", "0.4") in fast
    monkeypatch.setenv("CRUCIBLE_ENTRY_POINTS", "importlib")
    assert fast == {(e.name, e.dist.name, e.dist.version) for e in entry_points("crucible")}

"""Third-party plugins as their authors ship them: installed distributions found by entry point.

Each test writes real distributions (a package plus a ``*.dist-info`` with
``entry_points.txt``) into a directory put on ``PYTHONPATH`` and runs the real
``crucible`` in a subprocess, so discovery, the command index and exit codes
are the ones users get.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ACME = """
from crucible_core import hookimpl

@hookimpl
def register_backends(register):
    register("acme", "acme_plugin.impl:Backend", summary="Acme backend")

@hookimpl
def register_stages(register):
    register("acme.stage", "acme_plugin.impl:Stage", summary="Acme stage")

@hookimpl
def register_commands(register):
    register("acme-hello", "acme_plugin.impl:Hello", summary="Say hello from Acme")

@hookimpl
def on_event(event):
    pass
"""

IMPL = """
import os

class Backend:
    def __init__(self, **options):
        self.options = options

class Stage:
    def run(self, ctx):
        return None

class Hello:
    def configure(self, parser):
        parser.add_argument("--name", default="world")

    def run(self, args):
        print(f"hello {args.name}")
        return 0
"""


class Site:
    """A directory of installed distributions, and ``crucible`` run against it."""

    def __init__(self, root: Path) -> None:
        self.root = root / "site"
        self.root.mkdir()
        self.cache = root / "cache"
        self.home = root / "home"

    def install(
        self, dist: str, plugin: str, source: str, *, impl: str = IMPL, version: str = "1.0"
    ) -> Path:
        module = dist.replace("-", "_")
        pkg = self.root / module
        pkg.mkdir(exist_ok=True)
        (pkg / "__init__.py").write_text("")
        (pkg / "plugin.py").write_text(
            # Every import of the plugin module leaves a trace the tests can count.
            f"with open({str(self.root / (plugin + '.imported'))!r}, 'a') as _f:\n"
            "    _f.write('x')\n" + textwrap.dedent(source)
        )
        (pkg / "impl.py").write_text(textwrap.dedent(impl))
        info = self.root / f"{module}-{version}.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(
            f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n\n"
        )
        (info / "entry_points.txt").write_text(f"[crucible]\n{plugin} = {module}.plugin\n")
        return info

    def imports(self, plugin: str) -> int:
        marker = self.root / f"{plugin}.imported"
        return len(marker.read_text()) if marker.exists() else 0

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CRUCIBLE_")}
        env["PYTHONPATH"] = os.pathsep.join([str(self.root), env.get("PYTHONPATH", "")])
        env["CRUCIBLE_CACHE_DIR"] = str(self.cache)
        env["CRUCIBLE_HOME"] = str(self.home)
        env.update(extra)
        return env

    def run(self, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "crucible_core.cli.main", *args],
            env=self.env(**env),
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    def python(self, code: str, **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-c", code],
            env=self.env(**env),
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )


@pytest.fixture
def site(tmp_path: Path) -> Site:
    return Site(tmp_path)


def _plugin_row(out: str, name: str) -> str:
    return next(line for line in out.splitlines() if line.split()[:1] == [name])


def test_full_plugin_works_and_lists_its_hooks(site: Site) -> None:
    site.install("acme-plugin", "acme", ACME)
    proc = site.run("acme-hello", "--name", "Ada", CRUCIBLE_PLUGINS="acme")
    assert (proc.returncode, proc.stdout) == (0, "hello Ada\n"), proc.stderr
    proc = site.run("plugins", "--json", CRUCIBLE_PLUGINS="acme")
    data = json.loads(proc.stdout)
    acme = next(p for p in data["plugins"] if p["name"] == "acme")
    assert acme["status"] == "ok"
    assert acme["hooks"] == [
        "on_event",
        "register_backends",
        "register_commands",
        "register_stages",
    ]
    code = "import crucible_core; print(crucible_core.get_backend('acme', x=1).options)"
    assert site.python(code, CRUCIBLE_PLUGINS="acme").stdout.strip() == "{'x': 1}"


def test_event_sink_only_plugin_shows_its_hook(site: Site) -> None:
    site.install(
        "sink-plugin",
        "sink",
        "from crucible_core import hookimpl\n@hookimpl\ndef on_event(event):\n    pass\n",
    )
    proc = site.run("plugins", CRUCIBLE_PLUGINS="sink")
    assert proc.returncode == 0, proc.stderr
    assert "on_event" in _plugin_row(proc.stdout, "sink")


def test_a_raising_hook_disables_the_plugins_command_too(site: Site) -> None:
    site.install("acme-plugin", "acme", ACME.replace(
        'register("acme.stage"', 'raise RuntimeError("stage table missing"); register("acme.stage"'
    ))  # fmt: skip
    proc = site.run("acme-hello", CRUCIBLE_PLUGINS="acme")
    assert proc.returncode == 2
    assert "hello" not in proc.stdout
    assert "invalid choice: 'acme-hello'" in proc.stderr
    proc = site.run("plugins", CRUCIBLE_PLUGINS="acme")
    assert proc.returncode == 0
    row = _plugin_row(proc.stdout, "acme")
    assert "error" in row
    assert "register_stages raised RuntimeError: stage table missing" in row  # the message
    assert "acme-hello" not in proc.stdout.split("\n\n")[1]  # nothing of it is registered
    proc = site.run("plugins", CRUCIBLE_PLUGINS="acme", CRUCIBLE_STRICT_PLUGINS="1")
    assert proc.returncode == 3
    assert "stage table missing" in proc.stdout  # reported before failing
    assert "error: plugin 'acme': register_stages raised" in proc.stderr


CLASH = """
from crucible_core import hookimpl

@hookimpl
def register_backends(register):
    register("shared", dict, summary="{name}'s shared")
    register("{name}-own", dict, summary="{name}'s own")
"""


def test_two_plugins_one_name_is_a_conflict_on_both(site: Site) -> None:
    site.install("alpha-plugin", "alpha", CLASH.format(name="alpha"))
    site.install("beta-plugin", "beta", CLASH.format(name="beta"))
    only = {"CRUCIBLE_PLUGINS": "alpha,beta"}
    proc = site.run("plugins", **only)
    assert proc.returncode == 0, proc.stderr
    alpha, beta = _plugin_row(proc.stdout, "alpha"), _plugin_row(proc.stdout, "beta")
    assert "conflict" in alpha
    assert "also registered by plugin 'beta' (beta-plugin)" in alpha
    assert "conflict" in beta
    assert "also registered by plugin 'alpha' (alpha-plugin)" in beta
    proc = site.run("doctor", "--json", **only)
    statuses = {p["name"]: p["status"] for p in json.loads(proc.stdout)["plugins"]}
    assert (statuses["alpha"], statuses["beta"], statuses["core"]) == ("conflict", "conflict", "ok")
    assert proc.returncode == 1
    code = (
        "import crucible_core\n"
        "print(crucible_core.get_backend('alpha-own'), crucible_core.get_backend('beta-own'))\n"
        "try:\n    crucible_core.get_backend('shared')\n"
        "except crucible_core.CrucibleError as e:\n    print(e.message)\n"
    )
    out = site.python(code, **only).stdout.splitlines()
    assert out[0] == "{} {}"
    assert out[1] == (
        "backend 'shared' is registered more than once: by plugin 'alpha' (alpha-plugin) "
        "and by plugin 'beta' (beta-plugin)"
    )
    proc = site.run("plugins", CRUCIBLE_STRICT_PLUGINS="1", **only)
    assert proc.returncode == 3
    assert "also registered by" in proc.stderr


def test_misspelt_hook_is_a_warning_and_strict_error(site: Site) -> None:
    site.install(
        "typo-plugin", "typo", ACME.replace("def register_backends", "def register_backend")
    )
    proc = site.run("plugins", CRUCIBLE_PLUGINS="typo")
    assert proc.returncode == 0
    assert (
        "warning: plugin 'typo': 'register_backend' is marked @hookimpl but matches no hook; "
        "did you mean 'register_backends'?"
    ) in proc.stderr
    assert "'register_backend' is marked @hookimpl" in _plugin_row(proc.stdout, "typo")
    proc = site.run("plugins", CRUCIBLE_PLUGINS="typo", CRUCIBLE_STRICT_PLUGINS="1")
    assert proc.returncode == 3
    assert "error: plugin 'typo': 'register_backend' is marked @hookimpl" in proc.stderr
    proc = site.run("acme-hello", CRUCIBLE_PLUGINS="typo", CRUCIBLE_STRICT_PLUGINS="1")
    assert proc.returncode == 3


def test_doctor_under_strict_mode_diagnoses_before_failing(site: Site) -> None:
    site.install("broken-plugin", "broken", "import acme_missing_dependency\n")
    site.install("acme-plugin", "acme", ACME)
    only = {"CRUCIBLE_PLUGINS": "broken,acme", "CRUCIBLE_STRICT_PLUGINS": "1"}
    proc = site.run("doctor", **only)
    assert proc.returncode == 3
    assert "crucible_home" in proc.stdout  # the environment checks ran
    assert "No module named 'acme_missing_dependency'" in _plugin_row(proc.stdout, "broken")
    assert "ok" in _plugin_row(proc.stdout, "acme")
    assert "error: plugin 'broken': failed to import" in proc.stderr


def test_disabling_an_unknown_name_is_warned(site: Site) -> None:
    site.install("acme-plugin", "acme", ACME)
    proc = site.run("plugins", CRUCIBLE_PLUGINS="acme", CRUCIBLE_DISABLE_PLUGINS="acmee")
    assert proc.returncode == 0
    assert (
        "warning: CRUCIBLE_DISABLE_PLUGINS names 'acmee', which is not an installed plugin "
        "(did you mean 'acme'?)"
    ) in proc.stderr


def test_help_lists_plugin_commands_without_importing_plugins(site: Site) -> None:
    info = site.install("acme-plugin", "acme", ACME)
    proc = site.run("--help")
    assert proc.returncode == 0
    assert site.imports("acme") == 0
    assert "acme-hello" not in proc.stdout
    assert "not indexed yet: acme" in " ".join(proc.stdout.split())
    assert site.run("plugins").returncode == 0  # loads the plugins: indexes their commands
    imported = site.imports("acme")
    assert imported >= 1
    proc = site.run("--help")
    assert site.imports("acme") == imported  # the help imported no plugin
    line = next(x for x in proc.stdout.splitlines() if x.strip().startswith("acme-hello"))
    assert "Say hello from Acme [acme]" in line
    assert "not indexed" not in proc.stdout
    assert "acme-hello" not in site.run("--help", CRUCIBLE_DISABLE_PLUGINS="acme").stdout
    # A distribution installed since the index was written is seen, and named as unindexed.
    site.install("beta-plugin", "beta", CLASH.format(name="beta"))
    proc = site.run("--help")
    assert "acme-hello" in proc.stdout
    assert "not indexed yet: beta" in " ".join(proc.stdout.split())
    # Reinstalling (same version, new metadata) invalidates the entry until plugins load again.
    shutil.rmtree(info)
    info = site.install("acme-plugin", "acme", ACME)
    os.utime(info, ns=(1, 1))
    proc = site.run("--help")
    assert "acme-hello" not in proc.stdout
    assert "not indexed yet: acme" in " ".join(proc.stdout.split())


TYPED_GOOD = """
from crucible_core import RegisterBackend, RegisterCommand, RegisterStage, hookimpl
from crucible_core.ir import Capabilities


class Stage:
    def run(self, ctx: object) -> None:
        return None


class Hello:
    def configure(self, parser: object) -> None: ...

    def run(self, args: object) -> int:
        return 0


@hookimpl
def register_backends(register: RegisterBackend) -> None:
    register("b", "pkg.mod:B", summary="s", capabilities=Capabilities(backend_id="b"), tier=1)


@hookimpl
def register_stages(register: RegisterStage) -> None:
    register("s", Stage, summary="s")


@hookimpl
def register_commands(register: RegisterCommand) -> None:
    register("hello", Hello, summary="s")
"""

TYPED_BAD = """
from crucible_core import RegisterBackend, RegisterStage, hookimpl


class NotAStage:
    def execute(self) -> None: ...


@hookimpl
def register_backends(register: RegisterBackend) -> None:
    register("b", "pkg.mod:B", capabilities="streaming")  # line 11: not Capabilities


@hookimpl
def register_stages(register: RegisterStage) -> None:
    register(42, NotAStage)  # line 16: name not str, factory builds no Stage
"""


def test_register_protocols_let_pyright_check_plugins(tmp_path: Path) -> None:
    (tmp_path / "good_plugin.py").write_text(TYPED_GOOD)
    (tmp_path / "bad_plugin.py").write_text(TYPED_BAD)
    # crucible_core is an editable install here, which pyright cannot follow: use the source.
    root = Path(__file__).resolve().parents[1]
    (tmp_path / "pyrightconfig.json").write_text(json.dumps({"extraPaths": [str(root)]}))
    pyright = Path(sys.executable).with_name("pyright")
    proc = subprocess.run(
        [str(pyright), "--outputjson", "--pythonpath", sys.executable, "good_plugin.py",
         "bad_plugin.py"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    report = json.loads(proc.stdout)
    errors = [d for d in report["generalDiagnostics"] if d["severity"] == "error"]
    by_file = {(Path(d["file"]).name, d["range"]["start"]["line"] + 1) for d in errors}
    assert not [e for e in errors if e["file"].endswith("good_plugin.py")], errors
    assert ("bad_plugin.py", 11) in by_file
    assert ("bad_plugin.py", 16) in by_file
    messages = " ".join(e["message"] for e in errors)
    assert "Capabilities" in messages
    assert '"run" is not present' in messages


def test_hook_specs_annotate_register_with_their_protocol() -> None:
    import inspect

    import crucible_core
    from crucible_core.hookspecs import HookSpecs
    from crucible_core.plugins import KINDS

    for kind, hook in KINDS.items():
        annotation = inspect.signature(getattr(HookSpecs, hook)).parameters["register"].annotation
        protocol = "Register" + "".join(part.title() for part in kind.split("_"))
        assert annotation == protocol
        assert protocol in crucible_core.__all__
        assert getattr(crucible_core, protocol).__name__ == protocol


def test_command_index_round_trip_in_process(
    site: Site, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The index's fast path (sys.path unchanged) and its rescan path agree."""
    from crucible_core import _command_index
    from crucible_core.cli.main import main
    from crucible_core.plugins import PluginHost

    site.install("acme-plugin", "acme", ACME)
    monkeypatch.syspath_prepend(str(site.root))
    monkeypatch.setenv("CRUCIBLE_CACHE_DIR", str(site.cache))
    monkeypatch.setenv("CRUCIBLE_PLUGINS", "acme")
    monkeypatch.delenv("CRUCIBLE_STRICT_PLUGINS", raising=False)
    try:
        assert _command_index.indexed_commands() == ([], ["acme"])
        host = PluginHost()
        _command_index.write(host)
        written = Path(_command_index.index_path()).stat().st_mtime_ns
        _command_index.write(host)  # nothing changed: not rewritten
        assert Path(_command_index.index_path()).stat().st_mtime_ns == written
        expected = ([("acme-hello", "Say hello from Acme", "acme")], [])
        assert _command_index.indexed_commands() == expected
        os.utime(site.root, ns=(1, 1))  # sys.path changed: rescan, keys still match
        assert _command_index.indexed_commands() == expected
        with pytest.raises(SystemExit):
            main(["--help"])
        assert "Say hello from Acme [acme]" in capsys.readouterr().out
        Path(_command_index.index_path()).write_bytes(b"not marshal data")
        assert _command_index.read() == {}
    finally:
        for name in [m for m in sys.modules if m.startswith("acme_plugin")]:
            del sys.modules[name]

"""The `crucible` command: built-in commands, exit codes, JSON output, no tracebacks."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import msgspec
import pytest

from crucible_core.cli.main import main
from crucible_core.ir import TrainingJob, codec
from crucible_core.plugins import PluginHost

ROOT = Path(__file__).resolve().parents[1]


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_help_lists_builtin_commands(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    for name in ("plugins", "ir", "doctor"):
        assert name in out


def test_help_documents_every_exit_status(capsys: pytest.CaptureFixture[str]) -> None:
    from crucible_core.errors import ERROR_TABLE, EXIT_INTERRUPTED

    with pytest.raises(SystemExit):
        main(["--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "3 plugin failure (strict mode)" in out
    for code in {exit_code for exit_code, _ in ERROR_TABLE.values()} | {0, EXIT_INTERRUPTED}:
        assert f" {code} " in out.split("Exit status:")[1]


def test_no_arguments_prints_help(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys)
    assert code == 0
    assert "usage: crucible" in out


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    from crucible_core import __version__

    with pytest.raises(SystemExit):
        main(["--version"])
    assert capsys.readouterr().out.strip() == f"crucible {__version__}"


def test_ir_validate_valid_and_invalid(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = tmp_path / "job.toml"
    good.write_text('[model_spec]\nname = "tiny-llama"\n[dataset_spec]\nuri = "d.jsonl"\n')
    code, out, _ = run(capsys, "ir", "validate", str(good))
    assert code == 0
    assert "valid TrainingJob" in out
    code, out, _ = run(capsys, "ir", "validate", str(good), "--json")
    assert json.loads(out) == {"valid": True, "type": "TrainingJob", "file": str(good)}
    bad = tmp_path / "bad.toml"
    bad.write_text(
        '[model_spec]\nname = "m"\n[dataset_spec]\nuri = "d"\n'
        '[learning_config.optimizer]\nname = "adamw"\nlr = -1\n'
    )
    code, out, err = run(capsys, "ir", "validate", str(bad))
    assert code == 2
    assert "$.learning_config.optimizer.lr: expected float > 0.0, got -1" in err
    assert "Traceback" not in err
    code, _, err = run(capsys, "ir", "validate", str(good), "--type", "Jbo")
    assert code == 4
    assert "did you mean 'Job'?" in err


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        ("", "the file is empty"),
        ("a = [", "malformed TOML"),
        ('[model_spec]\nname = "m"\n[dataset_spec]\nuri = "d"\nsurprise = 1\n', "unknown field"),
        ('schema_version = "3.0"\n[model_spec]\nname = "m"\n', "reads schema 1.x"),
    ],
)
def test_ir_validate_bad_files_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str, fragment: str
) -> None:
    path = tmp_path / "x.toml"
    path.write_text(content)
    code, _, err = run(capsys, "ir", "validate", str(path), "--type", "TrainingJob")
    assert code == 2
    assert fragment in err


def test_ir_show_prints_valid_defaults(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, out, _ = run(capsys, "ir", "show", "TrainingJob")
    assert code == 0
    assert 'kind = "lora"' in out
    path = tmp_path / "shown.toml"
    path.write_text(out)
    job = codec.decode_file(path, TrainingJob)
    assert (
        job.adapter_config
        == TrainingJob(model_spec=job.model_spec, dataset_spec=job.dataset_spec).adapter_config
    )
    code, out, _ = run(capsys, "ir", "show", "Job", "--format", "json")
    assert json.loads(out)["priority"] == "batch"


@pytest.mark.parametrize("name", list(codec.IR_TYPES))
def test_ir_show_names_every_required_field(
    name: str, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """Required fields appear in `ir show` (as <placeholders> where no value fits), and
    `ir validate` of that output either passes or names the placeholder's field."""
    code, out, _ = run(capsys, "ir", "show", name, "--format", "json")
    assert code == 0
    shown = json.loads(out)
    info = msgspec.inspect.type_info(codec.IR_TYPES[name])
    assert isinstance(info, msgspec.inspect.StructType)
    for field in info.fields:
        if field.required:
            assert shown.get(field.encode_name) is not None, field.encode_name
    path = tmp_path / "shown.json"
    path.write_text(out)
    code, _, err = run(capsys, "ir", "validate", str(path))
    placeholders = [k for k, v in shown.items() if isinstance(v, str) and v.startswith("<")]
    if code != 0:
        assert placeholders, err
        assert any(f"$.{k}" in err for k in placeholders), err


def test_ir_validate_names_the_missing_field(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = tmp_path / "exp.toml"
    path.write_text('name = "x"\nstages = []\nrepeats = 2\n')
    code, _, err = run(capsys, "ir", "validate", str(path))
    assert code == 2
    assert "closest is Experiment" in err
    assert "$.id" in err


def test_ir_types_and_schemas(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, out, _ = run(capsys, "ir", "types")
    assert code == 0
    assert "TrainingJob" in out
    code, out, _ = run(capsys, "ir", "schemas")
    assert set(json.loads(out)) == set(codec.IR_TYPES)
    code, out, _ = run(capsys, "ir", "schemas", "--write", str(tmp_path / "s"))
    assert code == 0
    names = [*codec.IR_TYPES, *(t.__name__ for t in codec.nested_types()), "RunManifest"]
    assert sorted(p.name for p in (tmp_path / "s").iterdir()) == sorted(
        f"{n}.schema.json" for n in names
    )


def test_committed_schemas_are_fresh(tmp_path: Path) -> None:
    from crucible_core.cli.ir_cmd import write_schemas

    write_schemas(tmp_path)
    committed = ROOT / "ir_schemas"
    stale = [
        p.name
        for p in tmp_path.iterdir()
        if not (committed / p.name).exists() or (committed / p.name).read_text() != p.read_text()
    ]
    assert not stale, (
        f"ir_schemas/ is stale ({stale}); run `crucible ir schemas --write ir_schemas`"
    )
    expected = len(codec.IR_TYPES) + len(codec.nested_types()) + 1  # + RunManifest
    assert len(list(committed.glob("*.schema.json"))) == expected
    for name in ("Prompt", "SamplingParams", "StageDef", "LoRA", "RetryPolicy"):
        assert (committed / f"{name}.schema.json").exists(), name


def test_plugins_json(host: PluginHost, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "plugins", "--json")
    assert code == 0
    data: dict[str, Any] = json.loads(out)
    assert data["plugins"][0]["name"] == "core"
    assert {r["name"] for r in data["registrations"] if r["kind"] == "command"} >= {"ir", "plugins"}
    code, out, _ = run(capsys, "plugins")
    assert "core" in out
    code, out, _ = run(capsys, "plugins", "--kind", "command", "--json")
    assert all(r["kind"] == "command" for r in json.loads(out)["registrations"])


def test_doctor(host: PluginHost, capsys: pytest.CaptureFixture[str], crucible_home: Path) -> None:
    code, out, _ = run(capsys, "doctor", "--json")
    data = json.loads(out)
    assert code == 0
    assert data["ok"] is True
    assert {c["check"] for c in data["checks"]} == {
        "python",
        "crucible",
        "crucible_home",
        "database",
    }
    code, out, _ = run(capsys, "doctor")
    assert code == 0
    assert "crucible_home" in out


def test_unknown_command_is_a_usage_error(
    host: PluginHost, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as info:
        main(["nosuchcommand"])
    assert info.value.code == 2


def test_plugin_command_is_dispatched(host: PluginHost, capsys: pytest.CaptureFixture[str]) -> None:
    import types

    from crucible_core import hookimpl
    from crucible_core.errors import NotFound

    class Greet:
        def configure(self, parser: Any) -> None:
            parser.add_argument("who")

        def run(self, args: Any) -> int:
            if args.who == "nobody":
                raise NotFound("nobody is here", hint="greet somebody")
            print(f"hi {args.who}")
            return 0

    host.add_plugin(
        types.SimpleNamespace(
            register_commands=hookimpl(
                lambda register: register("greet", Greet(), summary="Greets")
            )
        ),
        name="greeter",
    )
    code, out, _ = run(capsys, "greet", "bob")
    assert (code, out) == (0, "hi bob\n")
    code, _, err = run(capsys, "greet", "nobody")
    assert code == 4
    assert "error: nobody is here" in err
    assert "hint: greet somebody" in err


def test_console_script_runs_without_traceback(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text('{"model_spec": {"name": "m"}, "dataset_spec": {"uri": "d"}, "budget": 3}')
    proc = subprocess.run(
        [sys.executable, "-m", "crucible_core.cli.main", "ir", "validate", str(bad)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 2
    assert "$.budget" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_plugin_command_factory_is_called_like_other_kinds(
    host: PluginHost, capsys: pytest.CaptureFixture[str]
) -> None:
    import types

    from crucible_core import hookimpl

    built: list[str] = []

    class Wave:
        def __init__(self) -> None:
            built.append("Wave")

        def configure(self, parser: Any) -> None:
            parser.add_argument("--to", default="all")

        def run(self, args: Any) -> int:
            print(f"wave to {args.to}")
            return 0

    def register(register: Any) -> None:
        register("wave", Wave, summary="Waves")
        register("wave-fn", lambda: Wave(), summary="Waves too")
        register("broken-cmd", lambda: 42, summary="Builds no command")

    host.add_plugin(types.SimpleNamespace(register_commands=hookimpl(register)), name="waver")
    assert run(capsys, "wave", "--to", "you")[:2] == (0, "wave to you\n")
    assert run(capsys, "wave-fn")[:2] == (0, "wave to all\n")
    assert built == ["Wave", "Wave"]
    code, _, err = run(capsys, "broken-cmd")
    assert code == 3
    assert "command 'broken-cmd': its factory returned int" in err


def test_a_command_two_plugins_register_names_both(
    host: PluginHost, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import types

    from crucible_core import hookimpl

    monkeypatch.delenv("CRUCIBLE_STRICT_PLUGINS", raising=False)

    class Cmd:
        def configure(self, parser: Any) -> None: ...

        def run(self, args: Any) -> int:
            return 0

    for name in ("first", "second"):
        host.add_plugin(
            types.SimpleNamespace(
                register_commands=hookimpl(lambda register: register("dup", Cmd, summary="d"))
            ),
            name=name,
        )
    code, _, err = run(capsys, "dup")
    assert code == 3
    assert "command 'dup' is registered more than once: by plugin 'first'" in err
    assert "by plugin 'second'" in err


def test_builtin_commands_are_factories_like_plugin_ones() -> None:
    from crucible_core._imports import import_object
    from crucible_core.cli.commands import BUILTIN_COMMANDS
    from crucible_core.contracts import Command

    for factory, _ in BUILTIN_COMMANDS.values():
        cls = import_object(factory)
        assert isinstance(cls, type), factory
        assert isinstance(cls(), Command)

"""Decoding bad input gives a ValidationError/ConfigError with the field path and a hint."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import msgspec
import pytest

from crucible_core.errors import ConfigError, NotFound, ValidationError
from crucible_core.ir import (
    IRStruct,
    Job,
    TrainingJob,
    codec,
)
from crucible_core.ir.base import SCHEMA_VERSION

MINIMAL: dict[str, Any] = {"model_spec": {"name": "tiny-llama"}, "dataset_spec": {"uri": "d.jsonl"}}


def with_(path: str, value: Any) -> bytes:
    doc = json.loads(json.dumps(MINIMAL))
    node = doc
    parts = path.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value
    return json.dumps(doc).encode()


@pytest.mark.parametrize(
    ("data", "path", "message", "hint"),
    [
        (
            with_("learning_config.optimizer", {"name": "adamw", "lr": -1}),
            "$.learning_config.optimizer.lr",
            "expected float > 0.0, got -1",
            None,
        ),
        (
            with_("adapter_config", {"kind": "lora", "rank": 0}),
            "$.adapter_config.rank",
            "expected int >= 1, got 0",
            None,
        ),
        (
            with_("adapter_config", {"kind": "lora", "dropout": 1.0}),
            "$.adapter_config.dropout",
            "< 1.0, got 1.0",
            None,
        ),
        (
            with_("checkpoint_policy", {"keep_last": 0}),
            "$.checkpoint_policy.keep_last",
            ">= 1, got 0",
            None,
        ),
        (
            with_("adapter_config", {"kind": "lroa"}),
            "$.adapter_config.kind",
            "expected one of 'lora', 'qlora', 'full', got 'lroa'",
            "did you mean 'lora'?",
        ),
        (
            with_("adapter_config", {"kind": "lora", "rnak": 4}),
            "$.adapter_config.rnak",
            "unknown field",
            "did you mean 'rank'?",
        ),
        (
            with_("checkpoint_policy", {"strategy": "step"}),
            "$.checkpoint_policy.strategy",
            "expected one of",
            "did you mean 'steps'?",
        ),
        (
            with_("learning_config", {"batch_size": "four"}),
            "$.learning_config.batch_size",
            "expected int, got 'four'",
            None,
        ),
        (
            json.dumps({"model_spec": {"name": "x"}}).encode(),
            "$.dataset_spec",
            "required field is missing",
            "add `dataset_spec`",
        ),
        (
            with_("learning_config", {"max_steps": None}),
            "$.learning_config",
            "set `max_steps` or `epochs`",
            None,
        ),
        (
            with_("checkpoint_policy", {"push_to_hub": True}),
            "$.checkpoint_policy",
            "needs `hub_repo`",
            None,
        ),
        (
            with_("learning_config", {"loss": {"name": "custom"}}),
            "$.learning_config.loss",
            "a custom loss needs",
            None,
        ),
        (
            with_("schema_version", "2.0"),
            "$.schema_version",
            "reads schema 1.x",
            "upgrade crucible",
        ),
        (b"[1, 2]", "$", "expected object, got [1, 2]", None),
    ],
)
def test_bad_values_name_path_and_fix(
    data: bytes, path: str, message: str, hint: str | None
) -> None:
    with pytest.raises(ValidationError) as info:
        codec.decode(data, TrainingJob)
    err = info.value
    assert err.path == path
    assert err.message.startswith(path + ":")
    assert message in err.message
    if hint is not None:
        assert err.hint is not None
        assert hint in err.hint
    assert err.to_dict()["path"] == path


def test_unknown_major_version_is_reported_before_other_errors() -> None:
    doc = {"schema_version": "9.1", "model_spec": {"name": "x"}, "surprise": 1}
    with pytest.raises(ValidationError, match=r"reads schema 1\.x.*written with 9\.1"):
        codec.decode(json.dumps(doc).encode(), TrainingJob)


def test_minor_version_bump_is_accepted() -> None:
    job = codec.decode(with_("schema_version", "1.7"), TrainingJob)
    assert job.schema_version == "1.7"


@pytest.mark.parametrize(
    ("data", "fmt"),
    [
        (b'{"model_spec": ', "json"),
        (b"model_spec = {", "toml"),
        (b"\xc1", "msgpack"),
    ],
)
def test_malformed_documents_are_config_errors(data: bytes, fmt: codec.Format) -> None:
    with pytest.raises(ConfigError, match=f"malformed {fmt.upper()}"):
        codec.decode(data, TrainingJob, format=fmt)


def test_deeply_nested_document_is_refused_cleanly() -> None:
    deep = b'{"payload": ' + b"[" * 50_000 + b"]" * 50_000 + b"}"
    with pytest.raises(ValidationError, match="nested too deeply"):
        codec.decode(deep, Job)
    deep_toml = b"payload = " + b"[" * 50_000 + b"]" * 50_000
    with pytest.raises(ConfigError, match=r"nested too deeply|malformed TOML"):
        codec.decode(deep_toml, Job, format="toml")


def test_oversized_document_is_refused_before_parsing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(codec, "MAX_DOCUMENT_BYTES", 100)
    with pytest.raises(ConfigError, match="the limit is 100"):
        codec.decode(b" " * 101, TrainingJob)


def test_toml_file_roundtrip_and_validate(tmp_path: Path) -> None:
    job = codec.decode(json.dumps(MINIMAL).encode(), TrainingJob)
    path = tmp_path / "job.toml"
    path.write_bytes(codec.encode(job, format="toml"))
    assert codec.decode_file(path) == job
    assert codec.decode_file(path, TrainingJob) == job


def test_decode_file_errors_name_the_file(tmp_path: Path) -> None:
    empty = tmp_path / "empty.toml"
    empty.write_text("  \n")
    with pytest.raises(ConfigError, match=r"empty\.toml: the file is empty"):
        codec.decode_file(empty)
    with pytest.raises(NotFound, match="no such file"):
        codec.decode_file(tmp_path / "missing.toml")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({**MINIMAL, "adapter_config": {"kind": "lora", "rank": 0}}))
    with pytest.raises(ValidationError, match=r"bad\.json: \$\.adapter_config\.rank") as info:
        codec.decode_file(bad)
    assert info.value.path == "$.adapter_config.rank"
    with pytest.raises(ConfigError, match="cannot tell the format"):
        codec.decode_file(tmp_path / "job.yaml")
    broken = tmp_path / "broken.toml"
    broken.write_text("a = [")
    with pytest.raises(ConfigError, match=r"broken\.toml: malformed TOML"):
        codec.decode_file(broken)


def test_guess_type_picks_the_only_fitting_type() -> None:
    assert codec.guess_type(MINIMAL) is TrainingJob
    assert codec.guess_type({"kind": "inference", "payload": {}}) is Job
    with pytest.raises(ConfigError, match=r"cannot tell.*unknown field\(s\) \$\.nothing"):
        codec.guess_type({"nothing": 1})
    with pytest.raises(
        ConfigError, match=r"closest is Experiment, missing required field\(s\) \$\.id"
    ):
        codec.guess_type({"stages": [], "repeats": 2})
    with pytest.raises(ValidationError, match="expected an object"):
        codec.guess_type([1])


def test_ir_type_lookup_suggests() -> None:
    assert codec.ir_type("trainingjob") is TrainingJob
    with pytest.raises(NotFound) as info:
        codec.ir_type("TrainingJb")
    assert info.value.hint is not None
    assert "TrainingJob" in info.value.hint


def test_convert_validates_python_data() -> None:
    job = codec.convert(MINIMAL, TrainingJob)
    assert job.model_spec.name == "tiny-llama"
    assert job.schema_version == SCHEMA_VERSION
    with pytest.raises(ValidationError, match=r"\$\.model_spec\.name"):
        codec.convert({**MINIMAL, "model_spec": {"name": ""}}, TrainingJob)


def test_backend_accepts_name_or_ref() -> None:
    short = codec.convert({**MINIMAL, "backend": "tinker"}, TrainingJob)
    assert short.backend_ref.name == "tinker"
    full = codec.convert(
        {**MINIMAL, "backend": {"name": "tinker", "options": {"a": 1}, "fallbacks": ["local"]}},
        TrainingJob,
    )
    assert full.backend_ref.fallbacks == ["local"]


def _all_subclasses(cls: type[Any]) -> list[type[Any]]:
    out: list[type[Any]] = []
    for sub in cls.__subclasses__():
        out.append(sub)
        out.extend(_all_subclasses(sub))
    return out


def test_every_ir_struct_is_frozen_kw_only_and_strict() -> None:
    import crucible_core.ir  # noqa: F401 - make sure every family is imported

    subclasses = _all_subclasses(IRStruct)
    assert len(subclasses) > 30
    for cls in subclasses:
        config = cls.__struct_config__
        assert config.frozen, cls
        assert config.forbid_unknown_fields, cls
        fields = msgspec.structs.fields(cls)
        # kw_only is not inherited: positional construction must be refused.
        if fields:
            with pytest.raises(TypeError):
                cls(*(object() for _ in fields))


def test_top_level_messages_carry_schema_version() -> None:
    for name, cls in codec.IR_TYPES.items():
        assert "schema_version" in cls.__struct_fields__, name


def test_schema_descriptions_are_the_cleaned_docstrings() -> None:
    """The schema text must not depend on how a msgspec release cleans docstrings."""
    import inspect

    from crucible_core import ir

    checked = 0
    for name, doc in codec.schemas().items():
        for def_name, definition in doc.get("$defs", {}).items():
            cls = getattr(ir, def_name, None)
            if cls is None or not cls.__doc__ or "description" not in definition:
                continue
            assert definition["description"] == inspect.cleandoc(cls.__doc__), (name, def_name)
            assert not any(
                line.startswith(" ") for line in definition["description"].splitlines()
            ), (name, def_name)
            checked += 1
    assert checked > 20


def test_schema_descriptions_from_an_older_msgspec_are_dedented() -> None:
    # msgspec 0.19 passed docstrings through with their indentation; 0.23 cleans them.
    old = {
        "$defs": {
            "Loss": {"description": "The loss.\n\n    A custom loss names a function.\n"},
            "X": {"properties": {"description": {"description": "  keep as a field"}}},
        }
    }
    cleaned = codec._clean_descriptions(old)  # pyright: ignore[reportPrivateUsage]
    assert cleaned["$defs"]["Loss"]["description"] == "The loss.\n\nA custom loss names a function."
    assert cleaned["$defs"]["X"]["properties"]["description"] == {"description": "keep as a field"}

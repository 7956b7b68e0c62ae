"""Where the API key comes from, and that it never shows: files, env, errors, logs, run dirs."""

from __future__ import annotations

import logging
import pickle
from pathlib import Path
from typing import Any

import msgspec
import pytest
from crucible_tinker.backend import TinkerBackend
from crucible_tinker.credentials import (
    API_KEY_ENV,
    API_KEY_FILE_ENV,
    Secret,
    read_key_file,
    redact,
    resolve_api_key,
)
from crucible_tinker.server import TinkerServer

from crucible_core.errors import AuthError, ConfigError
from crucible_core.ir import to_builtins
from crucible_core.ir.backend import Datum, LossFnInputs
from crucible_core.ir.training import (
    CheckpointPolicy,
    DatasetSpec,
    LearningConfig,
    LoRA,
    ModelSpec,
    TrainingJob,
)
from crucible_core.records.events import EventBus
from crucible_core.train.loop import train

from .conftest import BASE_MODEL, TEXTS, WAIT

pytestmark = pytest.mark.timeout(180)


def _write(path: Path, text: str, mode: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(mode)
    return path


def test_resolution_order(tmp_path: Path) -> None:
    key_file = _write(tmp_path / "k.toml", 'api_key = "tml-from-file"\n', 0o600)
    env = {API_KEY_ENV: "tml-from-env", API_KEY_FILE_ENV: str(key_file)}
    assert resolve_api_key("tml-opt", environ=env).reveal() == "tml-opt"
    assert resolve_api_key(environ=env).reveal() == "tml-from-env"
    assert resolve_api_key(environ={API_KEY_FILE_ENV: str(key_file)}).reveal() == "tml-from-file"
    default = _write(tmp_path / "xdg" / "crucible" / "tinker.toml", "tml-bare\n", 0o600)
    got = resolve_api_key(environ={"XDG_CONFIG_HOME": str(tmp_path / "xdg")})
    assert got.reveal() == "tml-bare"
    assert got.source == f"file:{default}"
    with pytest.raises(AuthError, match="no Tinker API key"):
        resolve_api_key(environ={"XDG_CONFIG_HOME": str(tmp_path / "empty")})


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660])
def test_key_files_readable_by_others_are_refused(tmp_path: Path, mode: int) -> None:
    path = _write(tmp_path / "key", "tml-supersecret-value", mode)
    with pytest.raises(ConfigError, match="0600") as info:
        read_key_file(path)
    assert "supersecret" not in str(info.value)
    assert info.value.hint == f"chmod 600 {path}"


def test_key_file_formats(tmp_path: Path) -> None:
    assert read_key_file(_write(tmp_path / "a", "tml-a\n", 0o600)).reveal() == "tml-a"
    assert read_key_file(_write(tmp_path / "b", 'api_key = "tml-b"', 0o400)).reveal() == "tml-b"
    with pytest.raises(ConfigError, match="neither TOML") as info:
        read_key_file(_write(tmp_path / "c", 'api_key = "tml-c-unterminated', 0o600))
    assert "tml-c" not in str(info.value)
    with pytest.raises(ConfigError, match="does not exist"):
        read_key_file(tmp_path / "missing")


def test_secret_never_prints_and_redact_scrubs() -> None:
    s = Secret("tml-hidden-1234", source="env:TINKER_API_KEY")
    assert "hidden" not in repr(s)
    assert "hidden" not in str(s)
    assert "hidden" not in f"{s}"
    with pytest.raises(TypeError):
        pickle.dumps(s)
    assert redact("sent tml-hidden-1234 twice: tml-hidden-1234", [s]) == "sent *** twice: ***"


def _datums(tokenizer: Any) -> list[Datum]:
    out = []
    for text in TEXTS:
        ids = tokenizer.encode(text)
        out.append(
            Datum(
                model_input=ids[:-1],
                loss_fn_inputs=LossFnInputs(target_tokens=ids[1:], weights=[1.0] * (len(ids) - 1)),
            )
        )
    return out


def test_key_never_reaches_run_dir_events_logs_or_errors(
    local_home: Path,
    tmp_path: Path,
    tokenizer: Any,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
) -> None:
    home = tmp_path / "crucible-home"
    monkeypatch.setenv("CRUCIBLE_HOME", str(home))
    caplog.set_level(logging.DEBUG)  # every logger: crucible, tinker, httpx, uvicorn
    job = TrainingJob(
        job_id="key-check",
        backend="tinker",
        model_spec=ModelSpec(name=BASE_MODEL),
        adapter_config=LoRA(rank=4, train_unembed=False),
        learning_config=LearningConfig(max_steps=3, batch_size=2),
        dataset_spec=DatasetSpec(uri="memory:keys"),
        checkpoint_policy=CheckpointPolicy(save_every=2, save_best=False),
    )
    with TinkerServer("local", backend_options={"home": str(local_home)}) as srv:
        key = srv.api_key
        monkeypatch.setenv(API_KEY_ENV, key)  # the way users pass it
        backend = TinkerBackend(
            base_url=srv.url,
            tokenizer_backend="local",
            tokenizer_backend_options={"home": str(local_home)},
            timeout=WAIT,
        )
        bus = EventBus()
        refs: list[Any] = []
        try:
            session = backend.create_session(job)
            result = train(
                session,
                job,
                _datums(tokenizer),
                emit=lambda kind, **data: bus.emit(kind, job_id="key-check", **data),
                on_checkpoint=lambda ckpt, state: refs.append(to_builtins(ckpt.ref)),
                backend_name="tinker",
                deadline_s=WAIT,
            )
            sampler = session.save_weights_for_sampler("final").result(timeout=WAIT)
            refs.append(to_builtins(sampler.checkpoint))
            session.close()
            assert result.state.step == 3
            # An error path: a wrong key is refused, and the refusal does not quote it.
            wrong = "tml-wrong-" + key[4:]
            monkeypatch.setenv(API_KEY_ENV, wrong)
            bad = TinkerBackend(
                base_url=srv.url,
                tokenizer_backend="local",
                tokenizer_backend_options={"home": str(local_home)},
                timeout=WAIT,
            )
            with pytest.raises(AuthError) as info:
                bad.load_sampler(ModelSpec(name=BASE_MODEL), None)
            bad.close()
            errors = [str(info.value), repr(info.value), str(info.value.to_dict())]
            assert all(wrong not in e for e in errors)
            reprs = [repr(backend), repr(backend.capabilities())]
        finally:
            backend.close()
            bus.close()
    run = home / "runs" / "key-check"
    (run / "manifest.json").write_bytes(
        msgspec.json.encode({"backend": "tinker", "checkpoints": refs, "reprs": reprs})
    )
    files = [p for p in run.rglob("*") if p.is_file()]
    assert any(p.name == "telemetry.jsonl" for p in files)
    out, err = capfd.readouterr()
    texts = [p.read_text() for p in files] + [caplog.text, out, err, *reprs]
    texts += [r.getMessage() for r in caplog.records]
    assert caplog.records  # the logs were really captured (httpx, tinker, crucible)
    for text in texts:
        assert key not in text
        assert key[4:] not in text


def test_a_refused_key_is_an_auth_error_naming_the_setting(
    server: TinkerServer,
    local_home: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A wrong key used to surface as ``no tokenizer for 'tiny-llama'``: the tokenizer
    lookup at the server was refused and taken for "not a crucible server"."""
    from crucible_core.cli.main import main

    job = TrainingJob(
        backend="tinker",
        model_spec=ModelSpec(name=BASE_MODEL),
        adapter_config=LoRA(rank=4),
        learning_config=LearningConfig(max_steps=1),
        dataset_spec=DatasetSpec(uri="memory:auth"),
    )
    wrong = "tml-wrong-key-0123456789"
    monkeypatch.setenv(API_KEY_ENV, wrong)
    # Through the SDK (the tokenizer is found locally, so the SDK meets the refusal).
    through_sdk = TinkerBackend(
        base_url=server.url,
        tokenizer_backend="local",
        tokenizer_backend_options={"home": str(local_home)},
        timeout=WAIT,
    )
    # The tokenizer borrowed from the server, as `crucible train` does by default.
    borrowing = TinkerBackend(base_url=server.url, timeout=WAIT)
    try:
        for backend in (through_sdk, borrowing):
            with pytest.raises(AuthError) as info:
                backend.create_session(job)
            assert f"set {API_KEY_ENV} to a key the server accepts" in str(info.value)
            assert wrong not in str(info.value)
    finally:
        through_sdk.close()
        borrowing.close()
    # A key from a file names the file.
    monkeypatch.delenv(API_KEY_ENV)
    keyfile = _write(tmp_path / "tinker.toml", f'api_key = "{wrong}"\n', 0o600)
    from_file = TinkerBackend(base_url=server.url, api_key_file=str(keyfile), timeout=WAIT)
    try:
        with pytest.raises(AuthError, match=f"key in {keyfile}"):
            from_file.create_session(job)
    finally:
        from_file.close()
    # The reported symptom: `crucible train` says what to fix, exit 2, no traceback.
    monkeypatch.setenv(API_KEY_ENV, wrong)
    monkeypatch.setenv("TINKER_BASE_URL", server.url)
    monkeypatch.setenv("CRUCIBLE_HOME", str(tmp_path / "home"))
    repo = Path(__file__).resolve().parents[3]
    monkeypatch.chdir(repo)
    code = main(["train", "examples/sft-local.toml", "--backend", "tinker", "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert API_KEY_ENV in err
    assert "no tokenizer" not in err
    assert "Traceback" not in err
    assert wrong not in err

"""Bring your own model: any Hugging Face causal LM as the base, by path or by hub id.

The model is built on the fly (tests/hfdir.py): a Llama config with its own
BPE tokenizer and chat template. A hub id is resolved in a real Hugging Face
cache layout under a temporary ``HF_HUB_CACHE``; nothing is downloaded.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from crucible_local.backend import LocalBackend
from crucible_local.models import load_model, load_tokenizer

from crucible_core.errors import ConfigError
from crucible_core.ir.training import ModelSpec

from .conftest import JobFactory
from .hfdir import (
    CHAT_TEMPLATE,
    cli,
    export_run,
    put_in_hub_cache,
    write_byo_model,
    write_job,
)


@pytest.fixture(scope="module")
def byo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_byo_model(tmp_path_factory.mktemp("byo") / "model")


def test_a_model_directory_brings_its_own_tokenizer_and_template(byo_dir: Path) -> None:
    loaded = load_model(ModelSpec(name="my-llama", path=str(byo_dir)))
    tok = loaded.tokenizer
    assert tok.chat_template == CHAT_TEMPLATE
    # Its BPE merges, not the built-in byte tokenizer: a corpus word is fewer tokens than bytes.
    assert len(tok.encode("Crucible")) < len(b"Crucible")
    assert tok.vocab_size == loaded.vocab_rows
    ids = tok.apply_chat_template([{"role": "user", "content": "hi"}])
    assert tok.decode(ids) == "<s>user: hi</s><s>assistant:"
    assert loaded.context_length == 128
    assert loaded.source == str(byo_dir.resolve())


def test_a_hub_id_resolves_in_the_local_cache_at_its_revision(
    byo_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = tmp_path / "hub"
    snapshot = put_in_hub_cache(byo_dir, cache, "acme/tiny-byo", revision="v1")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    import huggingface_hub.constants as hub_constants

    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(cache))
    loaded = load_model(ModelSpec(name="acme/tiny-byo", revision="v1"))
    assert loaded.source == str(snapshot.resolve())
    assert load_tokenizer(ModelSpec(name="acme/tiny-byo", revision="v1")).chat_template
    # The revision is honoured: main was never downloaded.
    with pytest.raises(ConfigError) as err:
        load_model(ModelSpec(name="acme/tiny-byo"))
    assert "'acme/tiny-byo'" in err.value.message
    assert "hf download acme/tiny-byo" in (err.value.hint or "")


def test_a_byo_model_trains_and_its_loss_goes_down(
    byo_dir: Path,
    backend: LocalBackend,
    make_job: JobFactory,
    datums: Callable[..., list[object]],
    run_steps: Callable[..., list[float]],
) -> None:
    from crucible_core.ir.training import LoRA

    job = make_job(
        model_spec=ModelSpec(name="my-llama", path=str(byo_dir)),
        adapter_config=LoRA(rank=8, alpha=16, dropout=0.0, target_modules=["all-linear"]),
    )
    session = backend.create_session(job)
    batch = datums(session.tokenizer)
    losses = run_steps(session, batch, 12, lr=2e-2)
    assert losses[-1] < losses[0] * 0.8, losses
    session.close()


@dataclass(frozen=True)
class HubRun:
    """A home holding run ``exp`` of ``acme/tiny-byo`` (a hub id), and its plan."""

    home: Path
    env: dict[str, str]
    plan: dict[str, Any]


@pytest.fixture(scope="module")
def hub_run(byo_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> HubRun:
    """``acme/tiny-byo`` in a hub cache, planned and trained (6 steps) through the CLI once,
    for the tests that read the run: the plan/train test and the export test (each
    ``crucible`` command is a fresh process that loads the model)."""
    root = tmp_path_factory.mktemp("hub-run")
    cache = root / "hub"
    put_in_hub_cache(byo_dir, cache, "acme/tiny-byo")
    job = write_job(root / "job.toml", 'name = "acme/tiny-byo"\nmax_seq_len = 128')
    env = {"HF_HUB_CACHE": str(cache)}
    home = root / "home"
    plan = cli(home, "plan", str(job), "--json", env=env)
    assert plan.returncode == 0, plan.stderr
    proc = cli(home, "train", str(job), "--job-id", "exp", "--no-progress", env=env)
    assert proc.returncode == 0, proc.stderr
    return HubRun(home=home, env=env, plan=json.loads(plan.stdout))


def test_plan_and_train_a_hub_id_end_to_end_through_the_cli(
    hub_run: HubRun, tmp_path: Path
) -> None:
    manifest = json.loads((hub_run.home / "runs" / "exp" / "manifest.json").read_text())
    assert manifest["model"]["name"] == "acme/tiny-byo"
    summary = manifest["training"]
    assert summary["steps"] == 6
    assert summary["final_loss"] < summary["initial_loss"]
    # The plan counted tokens with the model's own BPE tokenizer and template, not the
    # built-in byte tokenizer's.
    byte_job = write_job(tmp_path / "byte.toml", 'name = "tiny-llama"\nmax_seq_len = 128')
    byte_plan = json.loads(cli(tmp_path / "home", "plan", str(byte_job), "--json").stdout)
    assert 0 < hub_run.plan["tokens_per_epoch"] != byte_plan["tokens_per_epoch"]


def test_byo_model_trained_exported_merged_and_reloaded_gives_the_same_logits(
    hub_run: HubRun, tmp_path: Path
) -> None:
    out = tmp_path / "merged"
    record = export_run(
        hub_run.home, "--format", "merged", "--out", str(out), "--verify", env=hub_run.env
    )
    verification = record["verification"]
    assert isinstance(verification, dict)
    assert verification["ok"] is True
    assert verification["max_abs_diff"] <= 1e-3
    # The peft export of a hub base names the hub id, which loads from the cache.
    peft_out = tmp_path / "peft"
    export_run(
        hub_run.home, "--format", "peft", "--out", str(peft_out), "--verify", env=hub_run.env
    )
    config = json.loads((peft_out / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == "acme/tiny-byo"
    assert not (peft_out / "base").exists()


def test_a_hub_id_missing_from_the_cache_is_a_clear_usage_error(tmp_path: Path) -> None:
    job = write_job(tmp_path / "job.toml", 'name = "acme/not-downloaded"')
    proc = cli(
        tmp_path / "home",
        "plan",
        str(job),
        env={"HF_HUB_CACHE": str(tmp_path / "empty-cache"), "HF_HUB_OFFLINE": "1"},
    )
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "'acme/not-downloaded'" in proc.stderr
    assert "hf download acme/not-downloaded" in proc.stderr


def test_an_outside_peft_adapter_is_the_start_of_training(
    tmp_path: Path,
    backend: LocalBackend,
    make_job: JobFactory,
    datums: Callable[..., list[object]],
    run_steps: Callable[..., list[float]],
) -> None:
    """An adapter made by plain peft (rank 4 on q_proj/v_proj) continues training with its
    own shape and its learnt weights: the new run starts at the old run's loss."""
    from peft import LoraConfig, get_peft_model

    from crucible_core.ir.training import Loss

    base = load_model(ModelSpec(name="tiny-llama")).model
    from crucible_local._hf import peft_quiet

    with peft_quiet():  # peft's own deprecation noise (see crucible_local._hf)
        outside = get_peft_model(
            base,
            LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], lora_dropout=0.0),
        )
    first = backend.create_session(make_job())
    batch = datums(first.tokenizer)
    fresh_loss = first.forward(batch, Loss()).result(timeout=120).loss
    first.close()
    # Train the outside adapter with plain torch, as another tool would.
    import torch

    ids = [torch.tensor([d.model_input]) for d in batch]  # type: ignore[attr-defined]
    opt = torch.optim.AdamW([p for p in outside.parameters() if p.requires_grad], lr=2e-2)
    for _ in range(15):
        for x in ids:
            loss = outside(input_ids=x, labels=x).loss
            loss.backward()
        opt.step()
        opt.zero_grad()
    adapter_dir = tmp_path / "outside-adapter"
    with peft_quiet():
        outside.save_pretrained(str(adapter_dir))

    job = make_job(model_spec=ModelSpec(name="tiny-llama", adapter=str(adapter_dir)))
    session = backend.create_session(job)
    # Its own rank and targets: 4 x (64 + 64) per adapted layer, q_proj and v_proj only.
    names = {n for n, p in session.torch_model.named_parameters() if p.requires_grad}
    assert names
    assert all(("q_proj" in n or "v_proj" in n) and "lora_" in n for n in names)
    start = session.forward(batch, Loss()).result(timeout=120).loss
    assert start < fresh_loss * 0.8, (start, fresh_loss)
    losses = run_steps(session, batch, 6, lr=1e-2)
    assert losses[-1] < start
    session.close()


def test_a_missing_outside_adapter_is_a_config_error(
    tmp_path: Path, backend: LocalBackend, make_job: JobFactory
) -> None:
    job = make_job(model_spec=ModelSpec(name="tiny-llama", adapter=str(tmp_path / "nope")))
    with pytest.raises(ConfigError) as err:
        backend.create_session(job)
    assert "model_spec.adapter" in err.value.message

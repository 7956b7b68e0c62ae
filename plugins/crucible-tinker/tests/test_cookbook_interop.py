"""tinker-cookbook's own training loops, unmodified, against ``crucible serve-tinker``.

The cookbook (installed by ``scripts/setup.sh --all``, see docs/tinker.md for why it is
installed without its dependency resolver) drives the server through the real ``tinker``
SDK over HTTP on 127.0.0.1. The served base model is a local Hugging Face directory
written by the test; the cookbook loads its tokenizer by that name (a path), so nothing
is downloaded. Its supervised loop fetches a pricing file over HTTPS once and, by its
own contract, logs token counts only when that fails (tests have no internet). There is
no setting to skip the fetch, so the test points the function's ``url`` default at a
closed local port: the failure is immediate instead of waiting for its timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
from collections.abc import Coroutine, Iterator, Sequence
from pathlib import Path
from typing import Any

import chz
import pytest
import tinker
import torch
from crucible_local.models import write_tiny_model_dir
from crucible_tinker.server import TinkerServer
from tinker_cookbook.rl import train as rl_train
from tinker_cookbook.rl.types import (
    Action,
    ActionExtra,
    Env,
    EnvGroupBuilder,
    Metrics,
    Observation,
    RLDataset,
    RLDatasetBuilder,
    StepResult,
    Trajectory,
)
from tinker_cookbook.supervised import train as sl_train
from tinker_cookbook.supervised.common import datum_from_model_input_weights
from tinker_cookbook.supervised.types import SupervisedDataset, SupervisedDatasetBuilder
from tinker_cookbook.tokenizer_utils import get_tokenizer
from tinker_cookbook.utils import cost_estimation

pytestmark = pytest.mark.timeout(280)

TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "Crucible trains tiny models on the CPU.",
    "A byte level tokenizer needs no download.",
    "Low rank adapters learn quickly.",
]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A local Hugging Face model directory: what the server trains and the cookbook's
    tokenizer source."""
    return write_tiny_model_dir(tmp_path_factory.mktemp("hf") / "tiny-llama")


@pytest.fixture(scope="module")
def dir_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TinkerServer]:
    srv = TinkerServer(
        "local",
        backend_options={"home": str(tmp_path_factory.mktemp("local-home"))},
        long_poll_s=5.0,
    )
    srv.start(timeout=60)
    yield srv
    srv.stop()


@pytest.fixture(autouse=True)
def _server_env(dir_server: TinkerServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """The cookbook builds its ServiceClient from the environment (and ``base_url``)."""
    monkeypatch.setenv("TINKER_API_KEY", dir_server.api_key)
    monkeypatch.setenv("TINKER_BASE_URL", dir_server.url)
    monkeypatch.setenv("TINKER_TELEMETRY", "0")
    monkeypatch.setenv("WANDB_MODE", "disabled")
    # No internet here: the pricing file goes to a closed local port, which fails at once;
    # the cookbook then logs token counts only (its documented "never raises" path).
    defaults = cost_estimation.fetch_model_pricing.__kwdefaults__
    assert defaults is not None
    monkeypatch.setitem(defaults, "url", "http://127.0.0.1:9/models.json")
    monkeypatch.setitem(defaults, "timeout", 2.0)


def _run_cookbook(main: Coroutine[Any, Any, None]) -> None:
    """Run one of the cookbook's ``main`` coroutines with the root logger set aside.

    The cookbook's ``ml_log.configure_logging_module`` replaces the root logger's
    handlers and *closes* the old ones, which would close pytest's log-capture
    handlers: every later test in the process then fails with "I/O operation on
    closed file". The loop runs with the root logger emptied; afterwards the
    cookbook's own handlers are closed and the previous ones and level are back.
    """
    root = logging.getLogger()
    saved, level = root.handlers[:], root.level
    for handler in saved:
        root.removeHandler(handler)
    try:
        asyncio.run(main)
    finally:
        for handler in root.handlers[:]:
            root.removeHandler(handler)
            with contextlib.suppress(Exception):
                handler.close()
        for handler in saved:
            root.addHandler(handler)
        root.setLevel(level)


def _metrics(log_path: Path) -> list[dict[str, Any]]:
    lines = (log_path / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def _checkpoints(log_path: Path) -> list[dict[str, Any]]:
    path = log_path / "checkpoints.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# ---------------------------------------------------------------- supervised


class _TextDataset(SupervisedDataset):
    """Every batch is the same few sentences, every token weighted 1."""

    def __init__(self, model_name: str, n_batches: int) -> None:
        tokenizer = get_tokenizer(model_name)
        self.data = [
            datum_from_model_input_weights(
                tinker.ModelInput.from_ints(ids := tokenizer.encode(text)),
                torch.ones(len(ids)),
            )
            for text in TEXTS
        ]
        self.n_batches = n_batches

    def get_batch(self, index: int) -> list[tinker.Datum]:
        return list(self.data)

    def __len__(self) -> int:
        return self.n_batches

    def set_epoch(self, seed: int = 0) -> None:
        pass


@chz.chz
class _TextDatasetBuilder(SupervisedDatasetBuilder):
    model_name: str
    n_batches: int = 6

    def __call__(self) -> tuple[SupervisedDataset, SupervisedDataset | None]:
        # The held-out set is the training set: the cookbook scores it through
        # SamplingClient.compute_logprobs (prompt logprobs on the server).
        return _TextDataset(self.model_name, self.n_batches), _TextDataset(self.model_name, 1)


def test_cookbook_supervised_loop_trains_against_serve_tinker(
    model_dir: Path, dir_server: TinkerServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    log_path = tmp_path / "sl"
    config = sl_train.Config(
        log_path=str(log_path),
        model_name=str(model_dir),
        recipe_name="crucible-interop",
        renderer_name="role_colon",
        dataset_builder=_TextDatasetBuilder(model_name=str(model_dir)),
        learning_rate=2e-2,
        lr_schedule="constant",
        lora_rank=4,
        base_url=dir_server.url,
        save_every=3,
        eval_every=3,
        infrequent_eval_every=0,
        ttl_seconds=None,
    )
    _run_cookbook(sl_train.main(config))
    # pytest's log capture survived the cookbook's logging set-up (see _run_cookbook).
    logging.getLogger("crucible.test").warning("after the cookbook")
    assert "after the cookbook" in caplog.text

    rows = [row for row in _metrics(log_path) if "train_mean_nll" in row]
    losses = [float(row["train_mean_nll"]) for row in rows]
    assert len(losses) == 6, rows
    assert all(math.isfinite(x) for x in losses)
    # Same batch every step: the loss must fall.
    assert losses[-1] < losses[0] - 0.05, losses
    # The cookbook's held-out NLL comes from the sampler's prompt logprobs on the weights
    # the step trains from, so it equals that step's training NLL (same data, same weights).
    evals = [row for row in rows if "test/nll" in row]
    assert [row["step"] for row in evals] == [1, 4], evals
    for row in evals:
        assert row["test/nll"] == pytest.approx(row["train_mean_nll"], abs=1e-3)
    assert evals[-1]["test/nll"] < evals[0]["test/nll"]
    saved = _checkpoints(log_path)
    assert saved, "the loop saved no checkpoint"
    final = saved[-1]
    assert str(final["sampler_path"]).startswith("tinker://")
    assert dir_server.engine.checkpoints.get(final["sampler_path"]) is not None


# ---------------------------------------------------------------- RL


class _LowercaseEnv(Env):
    """One step: the prompt is fixed, the reward is the fraction of sampled characters
    that are lowercase letters (an easy, dense signal for a tiny random model)."""

    def __init__(self, prompt: list[int], tokenizer: Any) -> None:
        self.prompt = prompt
        self.tokenizer = tokenizer

    async def initial_observation(self) -> tuple[Observation, list[int]]:
        return tinker.ModelInput.from_ints(self.prompt), []

    async def step(self, action: Action, *, extra: ActionExtra | None = None) -> StepResult:
        text = self.tokenizer.decode(list(action))
        reward = sum(c.islower() for c in text) / max(1, len(text))
        return StepResult(
            reward=reward,
            episode_done=True,
            next_observation=tinker.ModelInput.empty(),
            next_stop_condition=[],
            metrics={"lowercase": reward},
        )


class _LowercaseGroup(EnvGroupBuilder):
    def __init__(self, prompt: list[int], tokenizer: Any, size: int) -> None:
        self.prompt, self.tokenizer, self.size = prompt, tokenizer, size

    async def make_envs(self) -> Sequence[Env]:
        return [_LowercaseEnv(self.prompt, self.tokenizer) for _ in range(self.size)]

    async def compute_group_rewards(
        self, trajectory_group: list[Trajectory], env_group: Sequence[Env]
    ) -> list[tuple[float, Metrics]]:
        return [(0.0, {}) for _ in trajectory_group]

    def logging_tags(self) -> list[str]:
        return ["lowercase"]


class _LowercaseDataset(RLDataset):
    def __init__(self, model_name: str, n_batches: int, groups: int) -> None:
        self.tokenizer = get_tokenizer(model_name)
        self.prompt = self.tokenizer.encode("Write in lowercase: ")
        self.n_batches = n_batches
        self.groups = groups

    def get_batch(self, index: int) -> Sequence[EnvGroupBuilder]:
        return [_LowercaseGroup(self.prompt, self.tokenizer, 8) for _ in range(self.groups)]

    def __len__(self) -> int:
        return self.n_batches


@chz.chz
class _LowercaseDatasetBuilder(RLDatasetBuilder):
    model_name: str
    n_batches: int = 10
    groups: int = 4

    async def __call__(self) -> tuple[RLDataset, RLDataset | None]:
        return _LowercaseDataset(self.model_name, self.n_batches, self.groups), None


def test_cookbook_rl_loop_trains_against_serve_tinker(
    model_dir: Path, dir_server: TinkerServer, tmp_path: Path
) -> None:
    log_path = tmp_path / "rl"
    config = rl_train.Config(
        learning_rate=5e-2,
        dataset_builder=_LowercaseDatasetBuilder(model_name=str(model_dir)),
        model_name=str(model_dir),
        recipe_name="crucible-interop",
        renderer_name="role_colon",
        max_tokens=8,
        log_path=str(log_path),
        lora_rank=4,
        save_every=2,
        eval_every=0,
        # A KL penalty to the base model: the cookbook scores every sample with the
        # reference's compute_logprobs (prompt logprobs on the server).
        kl_penalty_coef=1e-3,
        kl_reference_config=rl_train.KLReferenceConfig(base_model=str(model_dir)),
        base_url=dir_server.url,
        ttl_seconds=None,
    )
    _run_cookbook(rl_train.main(config))

    rows = _metrics(log_path)
    rewards = [float(r["env/all/reward/total"]) for r in rows if "env/all/reward/total" in r]
    assert len(rewards) == 10, rows
    assert all(math.isfinite(x) for x in rewards)
    # The policy learns the easy task: mean reward of the last steps beats the first ones.
    assert sum(rewards[-3:]) / 3 > sum(rewards[:3]) / 3 + 0.1, rewards
    # The sampler's logprobs are the trainer's: the cookbook's sample/train KL is ~0.
    kls = [float(r["optim/kl_sample_train_v2"]) for r in rows if "optim/kl_sample_train_v2" in r]
    assert len(kls) == len(rewards)
    assert all(abs(k) < 1e-3 for k in kls), kls
    # KL to the base starts at 0 (the fresh LoRA is the base) and grows as the policy moves.
    kl_base = [float(r["kl_policy_base"]) for r in rows if "kl_policy_base" in r]
    assert len(kl_base) == len(rewards)
    assert abs(kl_base[0]) < 1e-3, kl_base
    assert kl_base[-1] > kl_base[0] + 1e-3, kl_base
    saved = _checkpoints(log_path)
    assert saved, "the loop saved no checkpoint"
    assert dir_server.engine.checkpoints.get(saved[-1]["sampler_path"]) is not None


def test_cookbook_rl_loop_trains_with_cispo(
    model_dir: Path, dir_server: TinkerServer, tmp_path: Path
) -> None:
    """The cookbook's RL loop with ``loss_fn="cispo"`` (one of the losses its async
    default, stable_reinforce, can be swapped for): two steps, no KL reference."""
    log_path = tmp_path / "rl-cispo"
    config = rl_train.Config(
        learning_rate=5e-2,
        dataset_builder=_LowercaseDatasetBuilder(model_name=str(model_dir), n_batches=2, groups=2),
        model_name=str(model_dir),
        recipe_name="crucible-interop",
        renderer_name="role_colon",
        max_tokens=8,
        log_path=str(log_path),
        lora_rank=4,
        save_every=0,
        eval_every=0,
        loss_fn="cispo",
        base_url=dir_server.url,
        ttl_seconds=None,
    )
    before = len(dir_server.applied_steps())
    _run_cookbook(rl_train.main(config))
    rows = [r for r in _metrics(log_path) if "env/all/reward/total" in r]
    assert len(rows) == 2, rows
    # Each step's forward_backward ran cispo on the server (it refused the loss before)
    # and its optimizer step applied a non-zero gradient.
    assert len(dir_server.applied_steps()) == before + 2
    assert all(float(r["grad_norm"]) > 0 for r in rows), rows
    assert all(abs(float(r["optim/kl_sample_train_v2"])) < 1e-3 for r in rows), rows


# ---------------------------------------------------------------- prompt logprobs


def test_compute_logprobs_matches_the_trainers_forward(
    model_dir: Path, dir_server: TinkerServer
) -> None:
    """``SamplingClient.compute_logprobs`` (prompt logprobs, what the cookbook's NLL
    evaluator, KL penalty and distillation use) scores each prompt token under the sampled
    weights: the same numbers the training forward gives for the same weights."""
    service = tinker.ServiceClient(base_url=dir_server.url, api_key=dir_server.api_key)
    try:
        training = service.create_lora_training_client(base_model=str(model_dir), rank=4).result(
            timeout=90
        )
        tokenizer = get_tokenizer(str(model_dir))
        ids = tokenizer.encode(TEXTS[0])
        datum = datum_from_model_input_weights(
            tinker.ModelInput.from_ints(ids), torch.ones(len(ids))
        )
        training.forward_backward([datum], "cross_entropy").result(timeout=90)
        training.optim_step(tinker.AdamParams(learning_rate=5e-2)).result(timeout=90)
        forward = training.forward([datum], "cross_entropy").result(timeout=90)
        expected = forward.loss_fn_outputs[0]["logprobs"].to_torch().tolist()
        sampler = training.save_weights_and_get_sampling_client().result(timeout=90)

        got = sampler.compute_logprobs(tinker.ModelInput.from_ints(ids)).result(timeout=90)
        assert got[0] is None
        assert len(got) == len(ids)
        assert [x for x in got[1:] if x is not None] == pytest.approx(expected, abs=1e-3)

        tail = sampler.compute_logprobs(
            tinker.ModelInput.from_ints(ids), prompt_logprobs_last_n=3
        ).result(timeout=90)
        assert tail[:-3] == [None] * (len(ids) - 3)
        assert tail[-3:] == pytest.approx(expected[-3:], abs=1e-3)

        # Top-k prompt logprobs (the cookbook's off-policy distillation, SDFT): the
        # likeliest tokens per position, best first, agreeing with the plain logprobs.
        response = sampler.sample(
            tinker.ModelInput.from_ints(ids),
            1,
            tinker.SamplingParams(max_tokens=1),
            include_prompt_logprobs=True,
            topk_prompt_logprobs=3,
        ).result(timeout=90)
        topk = response.topk_prompt_logprobs
        assert topk is not None
        assert len(topk) == len(ids)
        assert topk[0] is None
        for position, row in enumerate(topk[1:], start=1):
            assert row is not None
            assert len(row) == 3
            values = [lp for _, lp in row]
            assert values == sorted(values, reverse=True)
            actual = got[position]
            assert actual is not None
            assert values[0] >= actual - 1e-4
            by_id = dict(row)
            if ids[position] in by_id:
                assert by_id[ids[position]] == pytest.approx(actual, abs=1e-4)

        # Top-k *sample* logprobs: per generated position, the likeliest tokens under the
        # weights that sampled it. Greedy, so the sampled token is each row's first, and
        # its logprob is the one the prompt-logprob path gives prompt + completion.
        sampled = sampler.sample(
            tinker.ModelInput.from_ints(ids[:4]),
            2,
            tinker.SamplingParams(max_tokens=5, temperature=0.0),
            topk_sample_logprobs=4,
        ).result(timeout=90)
        for seq in sampled.sequences:
            rows = seq.topk_logprobs
            assert rows is not None
            assert len(rows) == len(seq.tokens) > 0
            full = sampler.compute_logprobs(
                tinker.ModelInput.from_ints([*ids[:4], *seq.tokens])
            ).result(timeout=90)
            for j, (token, row) in enumerate(zip(seq.tokens, rows, strict=True)):
                assert row is not None
                assert len(row) == 4
                values = [lp for _, lp in row]
                assert values == sorted(values, reverse=True)
                assert row[0][0] == token
                assert row[0][1] == pytest.approx(full[4 + j], abs=1e-4)
    finally:
        service.close("success").result(timeout=90)

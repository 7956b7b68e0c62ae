"""Fixtures for crucible-local: a backend in a temporary home, jobs and datums."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import torch
from crucible_local.backend import LocalBackend
from crucible_local.session import LocalTrainingSession

from crucible_core.ir.backend import AdamParams, Datum, LossFnInputs
from crucible_core.ir.training import (
    DatasetSpec,
    LearningConfig,
    LoRA,
    Loss,
    ModelSpec,
    TrainingJob,
)

# One torch thread for the whole suite: CI and developers share 2 busy cores, where two
# OpenMP threads waiting on each other make a tiny-model step 10-50x slower. Behaviour
# is the same at any thread count.
torch.set_num_threads(1)

CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Crucible trains tiny models on the CPU.",
    "A byte level tokenizer needs no download.",
    "Low rank adapters learn quickly.",
]


@pytest.fixture
def backend(tmp_path: Path) -> Iterator[LocalBackend]:
    """A LocalBackend whose runs go under the test's temporary directory."""
    b = LocalBackend(home=tmp_path / "home", num_threads=1)
    yield b
    b.close()


JobFactory = Callable[..., TrainingJob]


@pytest.fixture
def make_job() -> JobFactory:
    """``make_job(**fields)``: a small LoRA job on tiny-llama; keyword fields replace defaults.

    ``lr``/``seed``/``max_steps``/``optimizer``/``scheduler`` go to the LearningConfig.
    """

    def factory(**overrides: Any) -> TrainingJob:
        learning: dict[str, Any] = {"max_steps": 100, "seed": 0}
        for key in ("seed", "max_steps", "epochs", "optimizer", "scheduler", "loss"):
            if key in overrides:
                learning[key] = overrides.pop(key)
        fields: dict[str, Any] = {
            "model_spec": ModelSpec(name="tiny-llama"),
            "dataset_spec": DatasetSpec(uri="memory:tests"),
            "adapter_config": LoRA(rank=8, alpha=16, dropout=0.0, target_modules=["all-linear"]),
            "learning_config": LearningConfig(**learning),
        }
        fields.update(overrides)
        return TrainingJob(**fields)

    return factory


def make_datums(tokenizer: Any, texts: Sequence[str], *, eos: bool = False) -> list[Datum]:
    """Next-token datums over ``texts`` (optionally ending in EOS), every target weighted 1."""
    out: list[Datum] = []
    for text in texts:
        ids = tokenizer.encode(text)
        if eos:
            ids = [*ids, tokenizer.eos_token_id]
        out.append(
            Datum(
                model_input=ids[:-1],
                loss_fn_inputs=LossFnInputs(target_tokens=ids[1:], weights=[1.0] * (len(ids) - 1)),
            )
        )
    return out


@pytest.fixture
def datums() -> Callable[..., list[Datum]]:
    """``datums(tokenizer, texts=CORPUS, eos=False)``."""

    def factory(tokenizer: Any, texts: Sequence[str] = CORPUS, *, eos: bool = False) -> list[Datum]:
        return make_datums(tokenizer, texts, eos=eos)

    return factory


def train(
    session: LocalTrainingSession,
    batch: Sequence[Datum],
    steps: int,
    *,
    lr: float = 1e-2,
    loss: Loss | None = None,
) -> list[float]:
    """Run ``steps`` pipelined steps on a fixed batch; return each step's loss."""
    futures = []
    for _ in range(steps):
        futures.append(session.forward_backward(batch, loss or Loss()))
        session.optim_step(AdamParams(learning_rate=lr))
    return [f.result(timeout=120).loss for f in futures]


@pytest.fixture
def run_steps() -> Callable[..., list[float]]:
    """``run_steps(session, batch, steps, lr=1e-2, loss=None) -> losses``."""
    return train

"""The tinker backend's session returns futures at once, so a loop can pipeline: measured
against the server with injected per-request latency, over real HTTP."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from crucible_tinker.backend import TinkerBackend, TinkerTrainingSession
from crucible_tinker.server import FaultConfig, TinkerServer

from crucible_core.ir.backend import AdamParams, Datum, LossFnInputs
from crucible_core.ir.training import DatasetSpec, LoRA, Loss, ModelSpec, TrainingJob

from .conftest import BASE_MODEL, WAIT

pytestmark = pytest.mark.timeout(180)
LATENCY = 0.15
STEPS = 3


@pytest.fixture
def slow_session(local_home: Path, tokenizer: Any) -> Iterator[tuple[TinkerTrainingSession, Any]]:
    with TinkerServer("local", backend_options={"home": str(local_home)}) as srv:
        backend = TinkerBackend(
            base_url=srv.url,
            api_key=srv.api_key,
            tokenizer_backend="local",
            tokenizer_backend_options={"home": str(local_home)},
            timeout=WAIT,
        )
        job = TrainingJob(
            backend="tinker",
            model_spec=ModelSpec(name=BASE_MODEL),
            adapter_config=LoRA(rank=4, train_unembed=False),
            dataset_spec=DatasetSpec(uri="memory:pipe"),
        )
        try:
            session = backend.create_session(job)
            ids = tokenizer.encode("pipelining hides the round trips")
            batch = [
                Datum(
                    model_input=ids[:-1],
                    loss_fn_inputs=LossFnInputs(
                        target_tokens=ids[1:], weights=[1.0] * (len(ids) - 1)
                    ),
                )
            ]
            srv.set_faults(FaultConfig(latency_s=LATENCY))
            yield session, batch
            session.close()
        finally:
            backend.close()


def test_calls_return_futures_before_the_server_answers(
    slow_session: tuple[TinkerTrainingSession, Any],
) -> None:
    session, batch = slow_session
    start = time.perf_counter()
    futures = []
    for _ in range(STEPS):
        futures.append(session.forward_backward(batch, Loss()))
        futures.append(session.optim_step(AdamParams(learning_rate=1e-2)))
    submitted = time.perf_counter() - start
    assert not any(f.done() for f in futures)  # nothing could have come back yet
    assert submitted < LATENCY  # six calls queued in less than one request's latency
    for f in futures:
        f.result(timeout=WAIT)
    assert session.step == STEPS


def test_pipelined_loop_beats_submit_and_wait(
    slow_session: tuple[TinkerTrainingSession, Any],
) -> None:
    session, batch = slow_session
    loss, params = Loss(), AdamParams(learning_rate=1e-2)

    start = time.perf_counter()
    for _ in range(STEPS):
        session.forward_backward(batch, loss).result(timeout=WAIT)
        session.optim_step(params).result(timeout=WAIT)
    naive = time.perf_counter() - start

    start = time.perf_counter()
    pending: list[tuple[Any, Any]] = []
    for _ in range(STEPS):
        pending.append((session.forward_backward(batch, loss), session.optim_step(params)))
        if len(pending) == 2:
            fb, opt = pending.pop(0)
            fb.result(timeout=WAIT)
            opt.result(timeout=WAIT)
    for fb, opt in pending:
        fb.result(timeout=WAIT)
        opt.result(timeout=WAIT)
    pipelined = time.perf_counter() - start
    # A naive step waits for 4 requests in a row, a pipelined one for the 2 POSTs.
    assert naive >= 4 * LATENCY * STEPS
    assert pipelined < 0.75 * naive, (pipelined, naive)

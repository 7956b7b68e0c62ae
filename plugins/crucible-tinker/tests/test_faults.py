"""Fault injection: dropped connections (before and after the server acted), 5xx answers and
delays on a seeded fraction of requests. Runs complete, results equal a fault-free run, and
the server's applied-step log shows no optimizer step applied twice.

Every fault here is real: the server cuts the TCP connection or answers 503 over
HTTP, and the unmodified SDK's own retry machinery recovers. No mocks.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
import tinker
from crucible_tinker.backend import TinkerBackend
from crucible_tinker.server import FaultConfig, TinkerServer
from tinker import types

from crucible_core.ir.backend import Datum, LossFnInputs
from crucible_core.ir.training import (
    CheckpointPolicy,
    DatasetSpec,
    LearningConfig,
    LoRA,
    ModelSpec,
    TrainingJob,
)
from crucible_core.train.loop import train

from .conftest import BASE_MODEL, TEXTS, WAIT, byte_datums

pytestmark = pytest.mark.timeout(240)

#: The SDK-visible POSTs whose loss forces a resubmission, plus result polling.
FAULTY = frozenset({"forward_backward", "optim_step", "retrieve_future"})
STEPS = 6


def faults(seed: int) -> FaultConfig:
    return FaultConfig(
        seed=seed,
        paths=FAULTY,
        error_fraction=0.12,
        drop_fraction=0.08,
        drop_after_fraction=0.15,
        delay_fraction=0.2,
        delay_s=0.05,
        retry_after_ms=20,
    )


def _run_sdk_loop(srv: TinkerServer, data: Any) -> tuple[str, list[float]]:
    service = tinker.ServiceClient(base_url=srv.url, api_key=srv.api_key)
    try:
        return _loop(service, data)
    finally:
        service.close("success").result(timeout=WAIT)


def _loop(service: tinker.ServiceClient, data: Any) -> tuple[str, list[float]]:
    training = service.create_lora_training_client(
        base_model=BASE_MODEL, rank=4, seed=3, train_unembed=False
    ).result(timeout=WAIT)
    losses: list[float] = []
    pending: list[Any] = []
    for _ in range(STEPS):
        fb = training.forward_backward(data, "cross_entropy")
        opt = training.optim_step(types.AdamParams(learning_rate=2e-2))
        pending.append((fb, opt))
        if len(pending) == 2:  # step k+1 submitted before step k is read
            f, o = pending.pop(0)
            losses.append(float(f.result(timeout=WAIT).metrics["loss:sum"]))
            o.result(timeout=WAIT)
    for f, o in pending:
        losses.append(float(f.result(timeout=WAIT).metrics["loss:sum"]))
        o.result(timeout=WAIT)
    return training.model_id, losses


def test_sdk_loop_under_faults_matches_a_clean_run(local_home: Path, tokenizer: Any) -> None:
    data = byte_datums(tokenizer)[:3]  # 2 chunks per forward_backward
    with TinkerServer(
        "local",
        backend_options={"home": str(local_home)},
        fwdbwd_max_chunk_len=2,
        long_poll_s=2.0,
    ) as srv:
        clean_model, clean = _run_sdk_loop(srv, data)
        srv.set_faults(faults(seed=11))
        faulty_model, faulty = _run_sdk_loop(srv, data)
        counts = srv.fault_counts()
        stats = dict(srv.engine.stats)
        hits = _idempotency_hits(srv)
        applied = srv.applied_steps()
    # The faults really happened, of every kind.
    assert counts.get("errors", 0) >= 1, counts
    assert counts.get("dropped_before", 0) >= 1, counts
    assert counts.get("dropped_after", 0) >= 1, counts
    assert counts.get("delayed", 0) >= 1, counts
    lost_answers = sum(
        v
        for k, v in counts.items()
        if k.startswith("dropped_after:") and not k.endswith("retrieve_future")
    )
    # Every POST that was applied but whose answer was lost came back and was deduplicated.
    assert stats["duplicate_submissions"] + hits >= lost_answers
    # Exactly one application per optimizer step, in order.
    faulty_steps = [(seq, step) for model, seq, step in applied if model == faulty_model]
    assert [step for _, step in faulty_steps] == list(range(1, STEPS + 1))
    assert len({seq for seq, _ in faulty_steps}) == STEPS
    assert len([1 for model, _, _ in applied if model == clean_model]) == STEPS
    # Same data, same seed: the faults changed nothing the model saw.
    assert faulty == pytest.approx(clean, rel=1e-5)
    assert faulty[-1] < faulty[0]


def _idempotency_hits(srv: TinkerServer) -> int:
    r = httpx.get(f"{srv.url}/crucible/v1/stats", headers={"X-API-Key": srv.api_key}, timeout=10)
    return int(r.json()["stats"]["idempotency_hits"])


def test_crucible_train_loop_on_tinker_backend_under_faults(
    local_home: Path, tokenizer: Any
) -> None:
    """The core pipelined training loop over the tinker backend, through a faulty network."""
    datums = []
    for text in TEXTS:
        ids = tokenizer.encode(text)
        datums.append(
            Datum(
                model_input=ids[:-1],
                loss_fn_inputs=LossFnInputs(target_tokens=ids[1:], weights=[1.0] * (len(ids) - 1)),
            )
        )
    job = TrainingJob(
        job_id="faulty-run",
        backend="tinker",
        model_spec=ModelSpec(name=BASE_MODEL),
        adapter_config=LoRA(rank=4, train_unembed=False),
        learning_config=LearningConfig(max_steps=STEPS, batch_size=2, seed=5),
        dataset_spec=DatasetSpec(uri="memory:faults", shuffle=False),
        checkpoint_policy=CheckpointPolicy(save_every=3, keep_last=2, save_best=False),
    )
    with TinkerServer(
        "local", backend_options={"home": str(local_home)}, long_poll_s=2.0, faults=faults(seed=5)
    ) as srv:
        backend = TinkerBackend(
            base_url=srv.url,
            api_key=srv.api_key,
            tokenizer_backend="local",
            tokenizer_backend_options={"home": str(local_home)},
            timeout=WAIT,
        )
        try:
            session = backend.create_session(job)
            saved: list[str] = []
            result = train(
                session,
                job,
                datums,
                backend_name="tinker",
                deadline_s=WAIT,
                on_checkpoint=lambda ckpt, _state: saved.append(ckpt.ref.uri),
            )
            model_id = session.model_id
            session.close()
        finally:
            backend.close()
        counts = srv.fault_counts()
        applied = [a for a in srv.applied_steps() if a[0] == model_id]
    assert result.state.step == STEPS
    assert result.stopped is None
    assert [step for _, _, step in applied] == list(range(1, STEPS + 1))
    assert len({seq for _, seq, _ in applied}) == STEPS
    assert saved
    assert all(uri.startswith(f"tinker://{model_id}/weights/") for uri in saved)
    assert counts.get("dropped_after", 0) + counts.get("errors", 0) >= 1, counts

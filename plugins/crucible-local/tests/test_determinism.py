"""Same seed, same loss curve; different seeds, different curves; other sessions don't matter."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from crucible_local.backend import LocalBackend

from crucible_core.ir.backend import Datum
from crucible_core.ir.training import LoRA

# Dropout makes every step draw random numbers, so the seed matters beyond LoRA's init.
ADAPTER = LoRA(rank=4, alpha=8, dropout=0.2, target_modules=["q_proj", "v_proj", "up_proj"])


def _curve(
    backend: LocalBackend,
    make_job: Callable[..., Any],
    datums: Callable[..., list[Datum]],
    run_steps: Callable[..., list[float]],
    seed: int,
) -> list[float]:
    session = backend.create_session(make_job(adapter_config=ADAPTER, seed=seed))
    return run_steps(session, datums(session.tokenizer), 8)


def test_same_seed_same_curve_different_seed_different_curve(
    backend: LocalBackend,
    make_job: Callable[..., Any],
    datums: Callable[..., list[Datum]],
    run_steps: Callable[..., list[float]],
) -> None:
    a = _curve(backend, make_job, datums, run_steps, seed=1)
    b = _curve(backend, make_job, datums, run_steps, seed=1)
    c = _curve(backend, make_job, datums, run_steps, seed=2)
    assert a == b
    assert a != c
    assert a[1:] != c[1:]


def test_concurrent_sessions_do_not_perturb_each_other(
    backend: LocalBackend,
    make_job: Callable[..., Any],
    datums: Callable[..., list[Datum]],
    run_steps: Callable[..., list[float]],
) -> None:
    alone = _curve(backend, make_job, datums, run_steps, seed=3)
    results: dict[int, list[float]] = {}

    def worker(index: int, seed: int) -> None:
        results[index] = _curve(backend, make_job, datums, run_steps, seed=seed)

    threads = [threading.Thread(target=worker, args=(i, 3 + i % 2)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results[0] == alone
    assert results[2] == alone
    assert results[1] != alone

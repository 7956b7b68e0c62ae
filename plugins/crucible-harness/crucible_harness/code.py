"""pass@k for HumanEval-style data: ``k`` sampled completions per problem, run against its tests.

Sampling: ``n`` completions of each prompt in one request (``SamplingParams.n``)
at ``temperature`` (0.8 by default for n > 1, as Chen et al. 2021 used for
pass@100; greedy for n = 1), seeded per problem so a run is reproducible on a
backend that honours seeds. Every request is submitted before any result is
read (a backend that batches gets them all at once).

Execution: each completion becomes a program, the problem's prompt + the
completion + its ``test`` + ``check(entry_point)``
(:func:`crucible_datasets.execution.humaneval_program`); a completion that
restates the whole function simply redefines it, and a Markdown code fence
around it is removed. Programs run in
:func:`crucible_datasets.execution.run_program`: a fresh ``python -I`` with
resource limits, no network (a network namespace where the machine allows it,
and an audit hook), killed with its process group at ``timeout`` seconds. A
hang or a network attempt is a failed sample, never a stuck evaluation.

Score: the unbiased estimator ``1 - C(n - c, k) / C(n, k)``
(:func:`crucible_datasets.metrics.pass_at_k_estimate`) per problem, averaged;
reported as ``pass@1`` and ``pass@n``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, cast

from crucible_core.contracts import Future, Sampler
from crucible_core.ir.backend import Completion, Prompt, SamplingParams

__all__ = ["DEFAULT_TEMPERATURE", "clean_completion", "pass_counts", "pass_scores", "sample_n"]

#: Sampling temperature for n > 1 when none is given.
DEFAULT_TEMPERATURE = 0.8
_FENCE = re.compile(r"```[A-Za-z0-9_+-]*\n(.*?)(?:```|\Z)", re.DOTALL)
#: The longest completion sampled for one problem.
_MAX_NEW_TOKENS = 384


def sample_n(
    sampler: Sampler,
    prompts: Sequence[Mapping[str, Any]],
    *,
    n: int,
    temperature: float,
    seed: int,
    context: int | None,
    deadline_s: float,
) -> list[list[str]]:
    """``n`` completions per prompt (``eval_prompts`` rows), in order."""
    tokenizer = sampler.tokenizer
    futures: list[Future[list[Completion]]] = []
    for i, p in enumerate(prompts):
        tokens = [int(t) for t in cast(Sequence[Any], p["tokens"])]
        ref_len = len(tokenizer.encode(str(p["reference"])))
        want = min(_MAX_NEW_TOKENS, 2 * ref_len + 32)
        if context is not None:
            want = min(want, context - len(tokens))
        params = SamplingParams(
            max_tokens=max(1, want), temperature=temperature, n=n, seed=seed + i
        )
        futures.append(sampler.sample(Prompt(tokens=tokens), params))
    return [[c.text for c in f.result(timeout=deadline_s)] for f in futures]


def clean_completion(text: str) -> str:
    """The code of a completion: the inside of its first Markdown fence, if it has one."""
    fenced = _FENCE.search(text)
    return fenced.group(1) if fenced else text


def pass_counts(
    problems: Sequence[Mapping[str, Any]],
    completions: Sequence[Sequence[str]],
    *,
    timeout: float,
    workers: int = 2,
) -> tuple[list[int], int]:
    """How many completions of each problem pass its tests, and how many timed out."""
    from crucible_datasets.execution import humaneval_program, run_program

    jobs = [
        (i, humaneval_program(problem, clean_completion(text)))
        for i, (problem, texts) in enumerate(zip(problems, completions, strict=True))
        for text in texts
    ]
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        results = list(pool.map(lambda job: run_program(job[1], timeout=timeout), jobs))
    passed = [0] * len(problems)
    timeouts = 0
    for (i, _), result in zip(jobs, results, strict=True):
        passed[i] += int(result.passed)
        timeouts += int(result.status == "timeout")
    return passed, timeouts


def pass_scores(n: int, passed: Sequence[int]) -> dict[str, list[float]]:
    """Per-problem pass@1 and pass@n (the unbiased estimator), keyed ``pass@K``."""
    from crucible_datasets.metrics import pass_at_k_estimate

    ks = sorted({1, n})
    return {f"pass@{k}": [pass_at_k_estimate(n, c, k) for c in passed] for k in ks}

"""Running the members: parallel, sequential or cascade, with early stop, a deadline and a quorum.

Why threads and not asyncio: the ``InferenceBackend`` contract is synchronous
(``complete`` blocks), so an event loop would only wrap the same calls in
threads. Each member call runs in a pooled daemon thread
(:mod:`crucible_ensemble._threads`) that posts its outcome to a queue; the
caller waits on that queue with the request's deadline, so a member that hangs
is counted as failed at the deadline and can never hold the request (or the
interpreter's exit) hostage.

Cancelling: when the strategy says the outcome is settled, members not yet
started are never called (sequential and cascade save those calls), and members
in flight are abandoned: the contract has no way to interrupt a blocking call,
so their threads finish in the background and their results are discarded.
"""

from __future__ import annotations

import math
import queue
import time
from collections.abc import Callable, Sequence
from typing import Any, Literal

import msgspec

from crucible_core.errors import BackendError
from crucible_core.ir import Completion, Costs, Prompt, SamplingParams, Usage
from crucible_ensemble._threads import run_in_daemon_thread
from crucible_ensemble.normalise import Normaliser
from crucible_ensemble.strategies import Strategy
from crucible_ensemble.votes import Vote, make_vote

__all__ = ["EnsembleResult", "Member", "MemberOutcome", "Mode", "QuorumError", "run_ensemble"]

Mode = Literal["parallel", "sequential", "cascade"]
MemberStatus = Literal["ok", "failed", "timeout", "cancelled"]


class QuorumError(BackendError):
    """Fewer members answered than the quorum needs; ``failed`` maps each failed member to why."""


class Member(msgspec.Struct, frozen=True, kw_only=True):
    """One backend in an ensemble: a unique ``name``, its weight, and its declared prices."""

    name: str
    backend: Any
    weight: float = 1.0
    costs: Costs | None = None

    @property
    def unit_price(self) -> float:
        """Declared price per million prompt + sampled tokens (0 when unknown): cascade order."""
        c = self.costs
        return 0.0 if c is None else c.prompt_per_mtok + c.sample_per_mtok


class MemberOutcome(msgspec.Struct, frozen=True, kw_only=True):
    """What one member did for one request."""

    member: str
    status: MemberStatus
    completions: list[Completion] = []
    latency_ms: float = 0.0
    cost: float = 0.0
    usage: Usage = Usage()
    error: str | None = None


class EnsembleResult(msgspec.Struct, frozen=True, kw_only=True):
    """The ensemble's answer with everything behind it.

    ``answer`` is the winning normalised key, ``text`` a member's text for it;
    ``failed`` maps members that errored or timed out to the reason; ``cancelled``
    lists members not waited for (early stop) or never called (cascade, sequential).
    """

    answer: str
    text: str
    agreement: float
    strategy: str
    mode: Mode
    outcomes: list[MemberOutcome]
    latency_ms: float
    cost: float
    usage: Usage
    failed: dict[str, str]
    cancelled: list[str]
    early_stopped: bool
    member_calls: int
    source: Completion | None = None

    def completion(self, backend_id: str = "ensemble") -> Completion:
        """The result as one ``Completion`` (what ``InferenceBackend.complete`` returns).

        It is the winning member's completion (tokens, logprobs, finish reason and
        that sequence's usage), re-labelled with the ensemble's ``backend_id`` and
        the whole request's latency; the total usage and cost of every member are
        in :attr:`usage` and :attr:`cost`.
        """
        if self.source is None:
            return Completion(text=self.text, latency_ms=self.latency_ms, backend_id=backend_id)
        return msgspec.structs.replace(
            self.source, text=self.text, latency_ms=self.latency_ms, backend_id=backend_id
        )


def _call_member(member: Member, prompt: Prompt, params: SamplingParams) -> list[Completion]:
    backend = member.backend
    sample: Any = getattr(backend, "sample", None)
    if callable(sample):  # a Sampler: n completions in one call, as a future
        future: Any = sample(prompt, params)
        return list(future.result())
    if params.n == 1:
        return [backend.complete(prompt, params)]
    # An InferenceBackend returns one completion per call: draw n, varying the seed.
    out: list[Completion] = []
    for i in range(params.n):
        seed = None if params.seed is None else params.seed + i
        one = msgspec.structs.replace(params, n=1, seed=seed)
        out.append(backend.complete(prompt, one))
    return out


def _cost(member: Member, usage: Usage) -> float:
    c = member.costs
    if c is None:
        return 0.0
    return (
        usage.prompt_tokens * c.prompt_per_mtok + usage.completion_tokens * c.sample_per_mtok
    ) / 1e6


def _add(a: Usage, b: Usage) -> Usage:
    return Usage(
        prompt_tokens=a.prompt_tokens + b.prompt_tokens,
        completion_tokens=a.completion_tokens + b.completion_tokens,
    )


def run_ensemble(
    members: Sequence[Member],
    prompt: Prompt,
    params: SamplingParams,
    *,
    strategy: Strategy,
    normaliser: Normaliser,
    mode: Mode = "parallel",
    early_stop: bool = True,
    quorum: int = 1,
    deadline_s: float = 60.0,
    cascade_agreement: float = 1.0,
    cascade_min_votes: int = 2,
    clock: Callable[[], float] = time.monotonic,
) -> EnsembleResult:
    """Ask ``members``, combine their votes with ``strategy``; see the module docstring.

    Raises :class:`QuorumError` when fewer than ``quorum`` members answer.
    """
    start = clock()
    deadline = start + deadline_s
    order = (
        sorted(members, key=lambda m: (m.unit_price, m.name))
        if mode == "cascade"
        else list(members)
    )
    concurrency = len(order) if mode == "parallel" else 1
    results: queue.Queue[tuple[str, list[Completion] | BaseException, float]] = queue.Queue()

    index_of = {m.name: i for i, m in enumerate(members)}

    def worker(member: Member) -> None:
        # With a seed, member i draws with seeds from seed + i * n: copies of one backend draw
        # different answers, reproducibly.
        own = params
        if params.seed is not None:
            offset = index_of[member.name] * params.n
            own = msgspec.structs.replace(params, seed=params.seed + offset)
        t0 = clock()
        try:
            value: list[Completion] | BaseException = _call_member(member, prompt, own)
        except BaseException as exc:  # reported as the member's failure, never raised here
            value = exc
        results.put((member.name, value, (clock() - t0) * 1000))

    by_name = {m.name: m for m in order}
    outcomes: dict[str, MemberOutcome] = {}
    votes: list[Vote] = []
    waiting = list(order)  # not started yet
    running: set[str] = set()
    early_stopped = False
    calls = 0

    def stop_now() -> bool:
        ok = sum(1 for o in outcomes.values() if o.status == "ok")
        if ok < quorum:
            return False
        pending = [m.weight for m in waiting] + [by_name[n].weight for n in running]
        if early_stop and strategy.settled(votes, pending, params.n):
            return True
        if mode == "cascade" and len(votes) >= cascade_min_votes and waiting:
            decision = strategy.decide(votes)
            return decision is not None and decision.agreement >= cascade_agreement
        return False

    while waiting or running:
        if stop_now():
            early_stopped = bool(waiting or running)
            break
        while waiting and len(running) < concurrency:
            member = waiting.pop(0)
            running.add(member.name)
            calls += 1
            run_in_daemon_thread(lambda m=member: worker(m))
        remaining = deadline - clock()
        try:
            name, value, latency = (
                results.get(timeout=max(remaining, 0.0)) if remaining > 0 else results.get_nowait()
            )
        except queue.Empty:
            for n in sorted(running):
                outcomes[n] = MemberOutcome(
                    member=n,
                    status="timeout",
                    error=f"no answer within the {deadline_s:g} s deadline",
                )
            running.clear()
            for m in waiting:
                outcomes[m.name] = MemberOutcome(
                    member=m.name, status="timeout", error="not started before the deadline"
                )
            waiting.clear()
            break
        running.discard(name)
        member = by_name[name]
        if isinstance(value, BaseException):
            outcomes[name] = MemberOutcome(
                member=name,
                status="failed",
                latency_ms=latency,
                error=f"{type(value).__name__}: {value}",
            )
            continue
        usage = Usage()
        for c in value:
            usage = _add(usage, c.usage)
        outcomes[name] = MemberOutcome(
            member=name,
            status="ok",
            completions=value,
            latency_ms=latency,
            cost=_cost(member, usage),
            usage=usage,
        )
        if value:
            votes.append(make_vote(name, member.weight, value, normaliser))

    cancelled = sorted(n for n in [*running, *(m.name for m in waiting)])
    for n in cancelled:
        outcomes[n] = MemberOutcome(member=n, status="cancelled")
    failed = {
        n: o.error or o.status for n, o in outcomes.items() if o.status in ("failed", "timeout")
    }
    ok = [o for o in outcomes.values() if o.status == "ok"]
    decision = strategy.decide(votes) if len(ok) >= quorum else None
    if decision is None:
        reasons = "; ".join(f"{n}: {why}" for n, why in sorted(failed.items())) or "no votes"
        raise QuorumError(
            f"ensemble: {len(ok)} of {len(order)} members answered, "
            f"the quorum is {quorum} ({reasons})",
            hint="check the failed members, lower `quorum`, or raise `deadline_s`",
            failed=failed,
        )
    usage = Usage()
    for o in ok:
        usage = _add(usage, o.usage)
    return EnsembleResult(
        answer=decision.key,
        text=decision.text,
        agreement=decision.agreement,
        strategy=decision.strategy,
        mode=mode,
        outcomes=[outcomes[m.name] for m in order],
        latency_ms=(clock() - start) * 1000,
        cost=math.fsum(o.cost for o in ok),
        usage=usage,
        failed=failed,
        cancelled=cancelled,
        early_stopped=early_stopped,
        member_calls=calls,
        source=decision.source,
    )

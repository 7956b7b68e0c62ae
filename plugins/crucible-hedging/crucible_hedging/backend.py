"""``HedgedBackend``: an ``InferenceBackend`` that sends a backup request when the first is slow.

Only idempotent calls are hedged: ``complete`` (and ``sample`` on a wrapped
``Sampler``). Training calls are refused by construction: the wrapper has no
``create_session``/``forward_backward``/``optim_step``, and asking for them raises
``UnsupportedError`` instead of silently reaching the wrapped backend, because a
duplicated optimizer step would change the model.

Each attempt runs in a daemon thread; the first to answer wins and the others are
abandoned (the contract cannot interrupt a blocking call; their results are
discarded and ``hedge.cancelled`` is emitted). ``stream`` is passed through
unhedged: a stream cannot be switched to a backup after its first chunk.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import msgspec

from crucible_core.errors import ConfigError, DeadlineExceeded, UnsupportedError
from crucible_core.ir import Capabilities, Completion, Health, Prompt, SamplingParams, StreamChunk
from crucible_hedging.budget import HedgeBudget
from crucible_hedging.policies import HedgePolicy, Observation

__all__ = ["HedgedBackend", "build_policy", "hedged_call"]

_TRAINING = frozenset(
    {"create_session", "forward_backward", "forward", "optim_step", "save_state", "load_state"}
)


def build_policy(name: str, **options: Any) -> HedgePolicy:
    """A policy by registered name through the plugin host (built-ins and third parties')."""
    from crucible_core import get_hedging_policy

    policy = get_hedging_policy(name, **options)  # unknown options: ConfigError from the host
    if not isinstance(policy, HedgePolicy):
        raise ConfigError(f"hedging policy {name!r} does not provide plan() and observe()")
    return policy


class _Stats:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.counts: dict[str, float] = {
            "requests": 0,
            "hedges_fired": 0,
            "hedges_won": 0,
            "hedges_denied": 0,
            "deadline_exceeded": 0,
        }

    def add(self, **deltas: float) -> None:
        with self.lock:
            for k, v in deltas.items():
                self.counts[k] += v


def hedged_call(
    call: Callable[[], Any],
    *,
    policy: HedgePolicy,
    budget: HedgeBudget,
    emit: Callable[..., None] | None = None,
    clock: Callable[[], float] = time.monotonic,
    stats: Any = None,
) -> Any:
    """Run the idempotent ``call``, hedging it as ``policy`` plans and ``budget`` allows.

    Returns the first successful result. If an attempt fails while another is still
    running, the caller waits for the other; when every attempt fired has failed,
    the first error is raised. At the plan's deadline, ``DeadlineExceeded``. A backup
    the budget denies is asked for again each time the request's wait doubles, so
    the budget goes to the slowest requests rather than the first ones to ask.
    """
    plan = policy.plan()
    budget.primary()
    start = clock()
    results: queue.Queue[tuple[int, bool, Any, float]] = queue.Queue()

    # The policy learns from the primary's true latency, even when a backup won and the
    # primary finished later, abandoned: leaving slow primaries out would teach the
    # policy that the tail it is cutting no longer exists.
    lock = threading.Lock()
    late: dict[str, Any] = {"returned": None, "primary_done": False}

    def attempt(index: int) -> None:
        t0 = clock()
        try:
            value, ok = call(), True
        except Exception as exc:  # delivered to the caller below
            value, ok = exc, False
        latency = clock() - t0
        if index == 0:
            with lock:
                late["primary_done"] = True
                returned: Observation | None = late["returned"]
            if returned is not None:
                primary = latency if ok else None
                policy.observe(msgspec.structs.replace(returned, primary_latency=primary))
        results.put((index, ok, value, latency))

    def fire(index: int) -> None:
        threading.Thread(target=attempt, args=(index,), name=f"hedge-{index}", daemon=True).start()

    fire(0)
    launched, outstanding = 1, 1
    pending_delays = list(plan.delays)
    denied_once = False
    errors: list[BaseException] = []
    emit_ = emit or (lambda kind, **data: None)
    while True:
        now = clock() - start
        wake = [d for d in pending_delays[:1]]
        if plan.deadline is not None:
            wake.append(plan.deadline)
        timeout = max(0.0, min(wake) - now) if wake else None
        try:
            index, ok, value, latency = results.get(timeout=timeout)
        except queue.Empty:
            now = clock() - start
            if plan.deadline is not None and now >= plan.deadline:
                if stats is not None:
                    stats.add(deadline_exceeded=1)
                emit_("hedge.cancelled", attempts=launched, reason="deadline")
                policy.observe(
                    Observation(latency=now, primary_latency=None, hedges=launched - 1, plan=plan)
                )
                raise DeadlineExceeded(
                    f"no answer within the {plan.deadline:g} s deadline "
                    f"({launched} attempt(s) fired)",
                    hint="raise the policy's deadline_ms or check the backend",
                    retryable=True,
                ) from None
            if pending_delays and now >= pending_delays[0] - 1e-9:
                due = pending_delays.pop(0)
                if budget.try_hedge():
                    fire(launched)
                    launched += 1
                    outstanding += 1
                    if stats is not None:
                        stats.add(hedges_fired=1)
                    emit_("hedge.fired", attempt=launched - 1, after_ms=now * 1000)
                else:
                    if stats is not None and not denied_once:
                        stats.add(hedges_denied=1)
                    denied_once = True
                    # Ask again when this request has waited twice as long: the budget
                    # refills with every new request, and a request still waiting then is
                    # further in the tail, so what the budget allows goes to the slowest.
                    pending_delays.insert(0, max(2 * due, due + 0.001))
            continue
        outstanding -= 1
        if not ok:
            errors.append(value)
            if outstanding == 0 and not (pending_delays and budget.try_hedge()):
                raise errors[0]
            if outstanding == 0:  # the budget allowed an immediate backup
                pending_delays.pop(0)
                fire(launched)
                launched += 1
                outstanding += 1
                if stats is not None:
                    stats.add(hedges_fired=1)
                emit_("hedge.fired", attempt=launched - 1, after_ms=(clock() - start) * 1000)
            continue
        total = clock() - start
        if index > 0:
            if stats is not None:
                stats.add(hedges_won=1)
            emit_("hedge.won", attempt=index, latency_ms=total * 1000)
        if outstanding:
            emit_("hedge.cancelled", attempts=outstanding, reason="lost")
        observation = Observation(
            latency=total,
            primary_latency=latency if index == 0 else None,
            hedges=launched - 1,
            plan=plan,
        )
        if index == 0:
            policy.observe(observation)
        else:
            with lock:
                primary_done = late["primary_done"]
                late["returned"] = observation
            if primary_done:  # the primary failed before the backup answered
                policy.observe(observation)
        return value


class HedgedBackend:
    """Wraps ``backend`` (a name, a ``{"name", "options"}`` table, or an object).

    ``policy``: ``fixed``, ``percentile``, ``adaptive``, ``backoff``, ``deadline`` or a
    plugin's (options in ``policy_options``), or a policy object. ``budget``: extra
    requests per primary in [0, 1] over the last ``window`` primaries (default 5 %
    of 1000); ``burst``: token-bucket size. ``bus``/``job_id``: where ``hedge.fired``,
    ``hedge.won`` and ``hedge.cancelled`` events go.
    """

    def __init__(
        self,
        backend: Any,
        policy: str | HedgePolicy = "percentile",
        *,
        policy_options: Mapping[str, Any] | None = None,
        budget: float = 0.05,
        window: int = 1000,
        burst: float | None = None,
        bus: Any = None,
        job_id: str = "hedging",
    ) -> None:
        from crucible_core import open_backend

        backend, self._owned = open_backend(backend, field="hedging.backend")
        self.backend = backend
        self.policy: HedgePolicy = (
            build_policy(policy, **dict(policy_options or {}))
            if isinstance(policy, str)
            else policy
        )
        self.budget = HedgeBudget(budget, window, burst)
        if hasattr(self.policy, "budget") and getattr(self.policy, "budget", 0) is None:
            self.policy.budget = self.budget.ratio  # type: ignore[attr-defined]
        self.bus = bus
        self.job_id = job_id
        self._stats = _Stats()

    def __getattr__(self, name: str) -> Any:
        if name in _TRAINING:
            raise UnsupportedError(
                f"hedging never duplicates a training call ({name!r} is not idempotent)",
                hint="train on the backend itself; hedge only inference and sampling",
            )
        raise AttributeError(name)

    def _emit(self, kind: str, **data: Any) -> None:
        if self.bus is not None:
            self.bus.emit(kind, job_id=self.job_id, **data)

    def _hedge(self, call: Callable[[], Any]) -> Any:
        self._stats.add(requests=1)
        return hedged_call(
            call, policy=self.policy, budget=self.budget, emit=self._emit, stats=self._stats
        )

    # -- InferenceBackend ----------------------------------------------------

    def capabilities(self) -> Capabilities:
        from msgspec.structs import replace

        caps: Capabilities = self.backend.capabilities()
        return replace(caps, supports_training=False)

    def complete(self, prompt: Prompt, params: SamplingParams) -> Completion:
        return self._hedge(lambda: self.backend.complete(prompt, params))

    def stream(self, prompt: Prompt, params: SamplingParams) -> Iterator[StreamChunk]:
        yield from self.backend.stream(prompt, params)

    def sample(self, prompt: Prompt, params: SamplingParams) -> Any:
        """Hedged ``Sampler.sample``: a completed future of the winner's completions."""
        from concurrent.futures import Future

        inner = self.backend.sample
        result = self._hedge(lambda: list(inner(prompt, params).result()))
        future: Future[list[Completion]] = Future()
        future.set_result(result)
        return future

    def health_check(self) -> Health:
        return self.backend.health_check()

    def metrics(self) -> Mapping[str, float]:
        with self._stats.lock:
            out = dict(self._stats.counts)
        hedges, primaries = self.budget.in_window()
        out["window_hedge_ratio"] = hedges / primaries if primaries else 0.0
        inner = self.backend.metrics() if callable(getattr(self.backend, "metrics", None)) else {}
        out.update({f"backend.{k}": float(v) for k, v in inner.items()})
        return out

    def close(self) -> None:
        if self._owned:
            self.backend.close()

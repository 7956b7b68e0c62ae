"""``RoutedBackend``: a primary backend and its fallbacks, each behind a circuit breaker.

Inference and sampling calls (``complete``, ``stream`` before its first chunk,
``sample``) go to the first member that is available: created, and whose
breaker allows a call. A member that fails with a retryable error (a
``BackendError`` with ``retryable``, so ``CapacityError`` and
``DeadlineExceeded``, or an exception that is not a ``CrucibleError`` at all,
e.g. a dropped connection) is recorded as a failure on its breaker and the call
moves on to the next member. Errors that are the request's fault rather than
the backend's (``ConfigError``, ``UnsupportedError``, a non-retryable
``BackendError``, any other ``CrucibleError``) are raised at once and say
nothing about the member's health.

Training calls are never moved: they go to the *home* member (the first that
could be created) and a failure is raised as a ``BackendError`` that says so,
because a training session's state lives on one backend.

A member may carry ``limits`` (requests/s, tokens/min, max in flight; shared
across processes through the state file, :mod:`crucible_router.limits`): a
member over its limit for longer than ``max_wait_s`` is skipped like one over
capacity, without counting against its breaker.

Events on ``bus`` (``job_id`` given): ``route.fallback`` (which member
answered, and why each earlier one was skipped), ``breaker.open``,
``breaker.half_open``, ``breaker.closed``.
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from crucible_core.errors import (
    BackendError,
    CapacityError,
    ConfigError,
    CrucibleError,
    NotFound,
    PluginError,
)
from crucible_core.ir import (
    Capabilities,
    Completion,
    Costs,
    Health,
    Prompt,
    SamplingParams,
    StreamChunk,
)
from crucible_router.breaker import STATES, BreakerState, CircuitBreaker
from crucible_router.limits import Limits, LimitStore, RateLimiter
from crucible_router.policies import PrimaryFirst
from crucible_router.state import BreakerStateFile

__all__ = ["TRAINING_METHODS", "Member", "RoutedBackend", "fails_over"]

TRAINING_METHODS = frozenset(
    {
        "create_session",
        "forward_backward",
        "forward",
        "optim_step",
        "save_state",
        "load_state",
        "load_sampler",
        "save_weights_for_sampler",
    }
)


def fails_over(exc: BaseException) -> bool:
    """Does ``exc`` mean "this backend failed, try the next one"? (See the module docstring.)"""
    if isinstance(exc, BackendError):
        return exc.retryable
    return not isinstance(exc, CrucibleError)


class Member:
    """One backend of a route: its name, the object (or why it could not be built), its breaker."""

    def __init__(self, name: str, backend: Any, error: str | None, breaker: CircuitBreaker):
        self.name = name
        self.backend = backend
        self.error = error
        self.breaker = breaker
        self.owned = False
        self.calls = 0
        self.failures = 0
        self.limiter: RateLimiter | None = None
        caps = _capabilities(backend)
        self.backend_id: str | None = caps.backend_id if caps is not None else None
        self.costs: Costs | None = caps.costs if caps is not None else None


class _Spec:
    """A member spec, parsed: the name to build (or the object), its options and limits."""

    def __init__(self, wanted: str | None, obj: Any, options: dict[str, Any], limits: Limits):
        self.wanted = wanted
        self.obj = obj
        self.options = options
        self.limits = limits


def _is_backend(obj: Any) -> bool:
    return callable(getattr(obj, "complete", None)) or callable(getattr(obj, "sample", None))


def _parse_spec(spec: Any, where: str) -> _Spec:
    """A name, a ``{name | backend, options, limits}`` table or an object; ConfigError if not."""
    if isinstance(spec, str):
        return _Spec(spec, None, {}, Limits())
    if isinstance(spec, Mapping):
        table: Mapping[str, Any] = spec  # pyright: ignore[reportUnknownVariableType]
        keys = set(table)
        if keys - {"name", "backend", "options", "limits"} or len(keys & {"name", "backend"}) != 1:
            raise ConfigError(
                f"{where}: expected a table with 'name' (or 'backend', an object) and optional "
                f"'options' and 'limits', got keys {sorted(table)}"
            )
        limits_table = table.get("limits") or {}
        if not isinstance(limits_table, Mapping):
            raise ConfigError(f"{where}.limits: expected a table, got {limits_table!r}")
        limits = Limits.parse(limits_table, f"{where}.limits")  # pyright: ignore[reportUnknownArgumentType]
        if "backend" in table:
            if not _is_backend(table["backend"]) or "options" in table:
                raise ConfigError(f"{where}.backend: expected a backend object (without options)")
            return _Spec(None, table["backend"], {}, limits)
        options = dict(table.get("options") or {})
        return _Spec(str(table["name"]), None, options, limits)
    if _is_backend(spec):
        return _Spec(None, spec, {}, Limits())
    raise ConfigError(f"{where}: {type(spec).__name__} is not a backend name, table or object")


def _tokens(result: Any) -> int:
    """Tokens a call used, from the ``Completion`` (or list of them) it returned: what
    ``tokens_per_min`` charges (streams count their chunks' tokens themselves)."""
    items = result if isinstance(result, list) else [result]
    total = 0
    for item in items:  # pyright: ignore[reportUnknownVariableType]
        usage = getattr(item, "usage", None)
        if usage is not None:
            total += int(usage.prompt_tokens) + int(usage.completion_tokens)
    return total


def _capabilities(backend: Any) -> Capabilities | None:
    if backend is None or not callable(getattr(backend, "capabilities", None)):
        return None
    try:
        caps = backend.capabilities()
    except Exception:  # a member that cannot describe itself is still routable
        return None
    return caps if isinstance(caps, Capabilities) else None


def _cost(result: Any, costs: Costs | None) -> float:
    """What a call's answer cost at the member's declared prices (0 when it declares none)."""
    if costs is None:
        return 0.0
    total = 0.0
    for item in result if isinstance(result, list) else [result]:  # pyright: ignore[reportUnknownVariableType]
        usage = getattr(item, "usage", None)
        if usage is not None:
            total += (
                usage.prompt_tokens * costs.prompt_per_mtok
                + usage.completion_tokens * costs.sample_per_mtok
            )
    return total / 1e6


def _label(spec: Any) -> str:
    caps = spec.capabilities() if callable(getattr(spec, "capabilities", None)) else None
    return str(getattr(caps, "backend_id", None) or type(spec).__name__)


class RoutedBackend:
    """``primary`` then ``fallbacks`` (each a name, a ``{"name", "options"}`` table or an object).

    Breaker options (one breaker per member): ``failure_threshold`` consecutive
    failures, or ``error_rate`` over ``window_s`` seconds once ``min_calls``
    outcomes are in it, open it; ``cooldown_s`` later one probe is let through.
    ``clock`` drives the breakers (tests inject one). ``state_file``: ``True``
    writes every breaker change to ``$CRUCIBLE_HOME/router.db``, a path writes
    there, ``False`` (default) nowhere; ``crucible backends status`` reads it, and
    a router started with the same file begins with the breakers it records as
    open still open until their probe time.
    ``host``: the plugin host that builds members given by name (default: the
    process's).

    A member table's ``limits`` (``requests_per_s``, ``burst``, ``tokens_per_min``,
    ``max_in_flight``, ``max_wait_s``, ``key``; see :mod:`crucible_router.limits`)
    caps the calls sent to it; with ``state_file`` on, the caps are shared with
    every process using the same file. A member that cannot admit a call within
    ``max_wait_s`` is skipped (``rate limited``) without counting against its
    breaker. ``sleep`` is what waiting calls (tests inject one with ``clock``).

    ``policy`` orders the members per request (:mod:`crucible_router.policies`): a
    registered routing policy's name (``primary``, ``round_robin``, ``adaptive``, or
    one another plugin registers through ``register_routing_policies``) built with
    ``policy_options``, or an object; default: the configured order. The members
    after the first still serve as its fallbacks, up to ``max_attempts`` calls per
    request (default: every member). :meth:`feedback` passes a quality score on.

    A member whose creation fails (plugin missing, bad options) stays in the route
    as unavailable, so the route still answers from the others; when no member
    can be created, ``BackendError`` lists why for each.
    """

    def __init__(
        self,
        primary: Any,
        fallbacks: Sequence[Any] = (),
        *,
        failure_threshold: int = 5,
        error_rate: float | None = None,
        window_s: float = 60.0,
        min_calls: int = 10,
        cooldown_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        state_file: bool | str | BreakerStateFile = False,
        bus: Any = None,
        job_id: str = "router",
        host: Any = None,
        policy: Any = None,
        policy_options: Mapping[str, Any] | None = None,
        max_attempts: int | None = None,
    ) -> None:
        if isinstance(fallbacks, str | Mapping):
            raise ConfigError("router.fallbacks: expected a list of backends, got one")
        self.bus = bus
        self.job_id = job_id
        self._clock = clock
        if max_attempts is not None and max_attempts < 1:
            raise ConfigError(f"router.max_attempts must be >= 1, got {max_attempts}")
        self.max_attempts = max_attempts
        self._lock = threading.Lock()
        self._counts = {"requests": 0, "fallbacks": 0, "failed": 0}
        if state_file is True:
            self._state_file: BreakerStateFile | None = BreakerStateFile()
        elif isinstance(state_file, BreakerStateFile):
            self._state_file = state_file
        elif state_file:
            self._state_file = BreakerStateFile(state_file)
        else:
            self._state_file = None
        self.members: list[Member] = []
        specs = [primary, *fallbacks]
        parsed = [
            _parse_spec(spec, "router.primary" if i == 0 else f"router.fallbacks[{i - 1}]")
            for i, spec in enumerate(specs)
        ]
        self._sleep = sleep
        self._limit_store: LimitStore | None = None
        for spec in parsed:
            backend, owned, error = spec.obj, False, None
            if spec.wanted is not None:
                if host is None:
                    from crucible_core.plugins import get_host

                    host = get_host()
                try:
                    backend, owned = host.create("backend", spec.wanted, **spec.options), True
                except (NotFound, PluginError, BackendError) as exc:
                    backend, error = None, exc.message
            name = spec.wanted if spec.wanted is not None else _label(spec.obj)
            taken = {m.name for m in self.members}
            if name in taken:  # the same backend twice (other options): number the repeats
                name = next(
                    f"{name}#{k}" for k in range(2, len(specs) + 2) if f"{name}#{k}" not in taken
                )
            breaker = CircuitBreaker(
                failure_threshold=failure_threshold,
                error_rate=error_rate,
                window_s=window_s,
                min_calls=min_calls,
                cooldown_s=cooldown_s,
                clock=clock,
                on_change=self._on_change(name),
            )
            member = Member(name, backend, error, breaker)
            member.owned = owned
            if spec.limits.active:
                member.limiter = RateLimiter(
                    name, spec.limits, self._limits_store(), clock=clock, sleep=sleep
                )
            self.members.append(member)
        if all(m.backend is None for m in self.members):
            raise BackendError(
                "no backend of the route could be created: "
                + "; ".join(f"{m.name} ({m.error})" for m in self.members),
                hint="install the backends' plugins, or fix their options",
            )
        self.home = next(m for m in self.members if m.backend is not None)
        self.policy = self._make_policy(policy, policy_options or {}, host)
        if self._state_file is not None:
            self._resume_open_breakers(self._state_file)

    @staticmethod
    def _make_policy(policy: Any, options: Mapping[str, Any], host: Any) -> Any:
        """A registered routing policy by name (built with ``options``), or the object;
        ``None``: the configured order (``PrimaryFirst``)."""
        if policy is None and not options:
            return PrimaryFirst()
        if isinstance(policy, str):
            if host is None:
                from crucible_core.plugins import get_host

                host = get_host()
            return host.create("routing_policy", policy, **options)
        if options:
            raise ConfigError("router.policy_options: only for a policy given by name")
        if not callable(getattr(policy, "order", None)) or not callable(
            getattr(policy, "observe", None)
        ):
            raise ConfigError(
                f"router.policy: {type(policy).__name__} has no order()/observe(); give a "
                "registered policy's name (primary, round_robin, adaptive) or such an object"
            )
        return policy

    def _limits_store(self) -> LimitStore:
        """The limiters' database: the state file when on (shared by processes), else memory."""
        if self._limit_store is None:
            path = self._state_file.path if self._state_file is not None else None
            self._limit_store = LimitStore(path)
        return self._limit_store

    def _resume_open_breakers(self, store: BreakerStateFile) -> None:
        """Start with the breakers another process (or an earlier run) left open, until
        their recorded probe time: a backend known to be down is not hammered again."""
        now = time.time()
        rows = {row["backend"]: row for row in store.read()}
        for m in self.members:
            row = rows.get(m.name)
            if row is None or row["state"] != "open" or row["retry_at"] is None:
                continue
            if row["retry_at"] > now:
                why = row["reason"] or "recorded open"
                m.breaker.open_for(row["retry_at"] - now, f"open in the state file ({why})")

    # -- events -----------------------------------------------------------------

    def _emit(self, kind: str, **data: Any) -> None:
        if self.bus is not None:
            self.bus.emit(kind, job_id=self.job_id, **data)

    def _on_change(
        self, name: str
    ) -> Callable[[BreakerState, BreakerState, Mapping[str, Any]], None]:
        def changed(old: BreakerState, new: BreakerState, info: Mapping[str, Any]) -> None:
            self._emit(f"breaker.{new}", backend=name, previous=old, **info)
            if self._state_file is not None:
                member = next(m for m in self.members if m.name == name)
                self._state_file.write(name, member.breaker.snapshot(), info.get("reason"))

        return changed

    # -- routing ----------------------------------------------------------------

    def _order(self, op: str) -> list[Member]:
        """This request's order: the policy ranks the members that could answer ``op``;
        the others follow (to be skipped with their reason)."""
        usable = [
            m
            for m in self.members
            if m.backend is not None and callable(getattr(m.backend, op, None))
        ]
        if len(usable) < 2:
            return self.members
        by_name = {m.name: m for m in usable}
        ranked = [
            by_name.pop(n) for n in self.policy.order([m.name for m in usable]) if n in by_name
        ]
        ranked += by_name.values()  # a policy that forgot some: they keep their place at the end
        return ranked + [m for m in self.members if m not in usable]

    def _observe(self, member: Member, started: float, *, failed: bool, cost: float) -> None:
        self.policy.observe(
            member.name, latency_s=max(0.0, self._clock() - started), failed=failed, cost=cost
        )

    def feedback(self, answer: Completion | str, quality: float) -> None:
        """Feed an evaluation of an answer back to the policy (``quality`` in [0, 1]):
        ``answer`` is the ``Completion`` (its ``backend_id`` names the member) or a member's
        name. Ignored by policies without ``feedback``; ``NotFound`` for an unknown member."""
        wanted = answer if isinstance(answer, str) else answer.backend_id
        member = next((m for m in self.members if m.name == wanted), None) or next(
            (m for m in self.members if m.backend_id == wanted), None
        )
        if member is None:
            raise NotFound(
                f"no member {wanted!r} in this route (members: {[m.name for m in self.members]})"
            )
        hook = getattr(self.policy, "feedback", None)
        if callable(hook):
            hook(member.name, quality)

    def _route(
        self,
        op: str,
        call: Callable[[Any], Any],
        hold: list[Callable[[int], None]] | None = None,
    ) -> Any:
        """Run ``call(member.backend)`` on the first member that answers (module docstring).

        With ``hold`` (a stream), the answering member's in-flight slot is not released on
        return: a ``release(tokens)`` callable is appended to ``hold`` instead."""
        skipped: list[dict[str, str]] = []
        retryable = False
        with self._lock:
            self._counts["requests"] += 1
        attempts = 0
        for member in self._order(op):
            if member.backend is None:
                skipped.append({"backend": member.name, "reason": f"unavailable: {member.error}"})
                continue
            if not callable(getattr(member.backend, op, None)):
                skipped.append({"backend": member.name, "reason": f"has no {op}()"})
                continue
            if self.max_attempts is not None and attempts >= self.max_attempts:
                skipped.append({"backend": member.name, "reason": "max_attempts reached"})
                continue
            permit = member.breaker.allow()
            if permit is None:
                wait = member.breaker.retry_in()
                reason = f"circuit open (probe in {wait:.3g} s)" if wait else "probe in flight"
                skipped.append({"backend": member.name, "reason": reason})
                retryable = True
                continue
            slot = None
            if member.limiter is not None:
                try:
                    slot = member.limiter.acquire()
                except CapacityError as exc:  # our own limit: says nothing about health
                    member.breaker.release(permit)
                    skipped.append(
                        {"backend": member.name, "reason": f"rate limited: {exc.message}"}
                    )
                    retryable = True
                    continue
            with self._lock:
                member.calls += 1
            attempts += 1
            started = self._clock()
            try:
                result = call(member.backend)
            except Exception as exc:
                if slot is not None:
                    member.limiter.release(slot)  # pyright: ignore[reportOptionalMemberAccess]
                if not fails_over(exc):
                    member.breaker.release(permit)
                    raise
                self._observe(member, started, failed=True, cost=0.0)
                with self._lock:
                    member.failures += 1
                member.breaker.record_failure(permit)
                retryable = True
                kind = "over capacity" if isinstance(exc, CapacityError) else "failed"
                skipped.append(
                    {"backend": member.name, "reason": f"{kind}: {type(exc).__name__}: {exc}"}
                )
                continue
            except BaseException:  # interrupted: says nothing about health; free a probe slot
                if slot is not None:
                    member.limiter.release(slot)  # pyright: ignore[reportOptionalMemberAccess]
                member.breaker.release(permit)
                raise
            if slot is not None:
                limiter = member.limiter
                assert limiter is not None
                if hold is None:
                    limiter.release(slot, _tokens(result))
                else:
                    hold.append(functools.partial(limiter.release, slot))
            member.breaker.record_success(permit)
            self._observe(member, started, failed=False, cost=_cost(result, member.costs))
            if skipped:
                with self._lock:
                    self._counts["fallbacks"] += 1
                self._emit("route.fallback", op=op, backend=member.name, skipped=skipped)
            return result
        with self._lock:
            self._counts["failed"] += 1
        busy = bool(skipped) and all(
            s["reason"].startswith(("rate limited", "over capacity")) for s in skipped
        )
        error = CapacityError if busy else BackendError  # every member busy: code "capacity"
        raise error(
            f"{op}: no backend of the route answered: "
            + "; ".join(f"{s['backend']} ({s['reason']})" for s in skipped),
            hint="see `crucible backends status`; open circuits admit a probe after cooldown_s",
            retryable=retryable,
        )

    # -- InferenceBackend -----------------------------------------------------------

    def capabilities(self) -> Capabilities:
        """The home member's capabilities (``supports_training``: training goes only there)."""
        caps: Capabilities = self.home.backend.capabilities()
        return caps

    def complete(self, prompt: Prompt, params: SamplingParams) -> Completion:
        """The first available member's completion; its ``backend_id`` names who answered."""
        return self._route("complete", lambda b: b.complete(prompt, params))

    def stream(self, prompt: Prompt, params: SamplingParams) -> Iterator[StreamChunk]:
        """Fails over until a member yields its first chunk; after that the stream is that
        member's (a stream cannot be switched mid-way): its errors are raised and counted
        in the member's ``failures`` metric, but not fed to the breaker (the member did
        answer, and the breaker's permit ended with the first chunk). A limited member's
        in-flight slot is held until the stream ends (or is closed), and its
        ``tokens_per_min`` is charged the streamed chunks' tokens."""

        def first(backend: Any) -> tuple[Any, Iterator[StreamChunk], Any]:
            it = iter(backend.stream(prompt, params))
            return backend, it, next(it, None)

        release: list[Callable[[int], None]] = []
        backend, it, head = self._route("stream", first, hold=release)
        tokens = 0
        try:
            if head is None:
                return
            tokens += len(head.tokens)
            yield head
            member = next(m for m in self.members if m.backend is backend)
            try:
                for chunk in it:
                    tokens += len(chunk.tokens)
                    yield chunk
            except Exception as exc:
                if fails_over(exc):
                    member.failures += 1
                raise
        finally:  # the member's in-flight slot is held until the stream ends or is closed
            for done in release:
                done(tokens)

    def sample(self, prompt: Prompt, params: SamplingParams) -> Any:
        """``Sampler.sample`` with fail-over: waits for the member's future so a failure can
        move on; returns a completed future of the completions."""
        from concurrent.futures import Future

        result = self._route("sample", lambda b: list(b.sample(prompt, params).result()))
        future: Future[list[Completion]] = Future()
        future.set_result(result)
        return future

    def health_check(self) -> Health:
        """Ok while some member is created and not open; the detail names each member's state."""
        states = {
            m.name: ("unavailable" if m.backend is None else m.breaker.state) for m in self.members
        }
        ok = any(m.backend is not None and m.breaker.state != "open" for m in self.members)
        detail = ", ".join(f"{k}: {v}" for k, v in states.items())
        return Health(ok=ok, detail=detail)

    def metrics(self) -> Mapping[str, float]:
        """``requests``, ``fallbacks``, ``failed``, and per member ``<name>.state`` (0 closed,
        1 half-open, 2 open, -1 unavailable), ``.calls``, ``.failures``, ``.opens``."""
        with self._lock:
            out: dict[str, float] = {k: float(v) for k, v in self._counts.items()}
        for m in self.members:
            out[f"{m.name}.state"] = (
                -1.0 if m.backend is None else float(STATES.index(m.breaker.state))
            )
            out[f"{m.name}.calls"] = float(m.calls)
            out[f"{m.name}.failures"] = float(m.failures)
            out[f"{m.name}.opens"] = float(m.breaker.opens)
            if m.limiter is not None:
                for key, value in m.limiter.metrics().items():
                    out[f"{m.name}.{key}"] = value
        policy_metrics = getattr(self.policy, "metrics", None)
        if callable(policy_metrics):
            extra: Mapping[str, float] = policy_metrics()  # pyright: ignore[reportAssignmentType]
            for key, value in extra.items():
                out[f"policy.{key}"] = float(value)
        return out

    def status(self) -> list[dict[str, Any]]:
        """Per member: ``backend``, ``available``, ``error`` and the breaker's snapshot."""
        return [
            {"backend": m.name, "available": m.backend is not None, "error": m.error}
            | m.breaker.snapshot()
            for m in self.members
        ]

    def close(self) -> None:
        for m in self.members:
            if m.owned and m.backend is not None:
                m.backend.close()
        if self._limit_store is not None:
            self._limit_store.close()

    # -- TrainingBackend: the home member only, never failed over -----------------

    def __getattr__(self, name: str) -> Any:
        if name not in TRAINING_METHODS or name.startswith("__"):
            raise AttributeError(name)
        home: Member | None = self.__dict__.get("home")
        method = getattr(home.backend, name, None) if home is not None else None
        if home is None or method is None:
            raise AttributeError(name)
        where = home.name

        def pinned(*args: Any, **kwargs: Any) -> Any:
            try:
                return method(*args, **kwargs)
            except CrucibleError as exc:
                if isinstance(exc, BackendError):
                    raise BackendError(
                        f"{name} on {where!r} failed: {exc.message} (training is never "
                        f"moved to another backend: the session's state lives on {where!r})",
                        hint=exc.hint or "retry on the same backend, or resume from a checkpoint",
                        retryable=exc.retryable,
                        backend=where,
                    ) from exc
                raise
            except Exception as exc:
                raise BackendError(
                    f"{name} on {where!r} failed: {type(exc).__name__}: {exc} (training is "
                    f"never moved to another backend: the session's state lives on {where!r})",
                    hint="retry on the same backend, or resume from a checkpoint",
                    backend=where,
                ) from exc

        return pinned

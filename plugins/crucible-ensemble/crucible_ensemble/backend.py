"""``EnsembleBackend``: several backends behind one ``InferenceBackend``.

Because the ensemble is itself a backend, it composes: a member may be another
ensemble or a hedged backend, and a job or ``BackendRef`` names it like any
other (``backend = {name = "ensemble", options = {members = ["local", "tinker"]}}``).
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, cast

from crucible_core.errors import ConfigError, UnsupportedError
from crucible_core.ir import (
    Capabilities,
    Completion,
    Costs,
    Health,
    Prompt,
    SamplingParams,
    StreamChunk,
)
from crucible_ensemble.execution import EnsembleResult, Member, Mode, run_ensemble
from crucible_ensemble.normalise import Normaliser
from crucible_ensemble.strategies import Strategy, build_strategy

__all__ = ["EnsembleBackend"]

_MODES: tuple[Mode, ...] = ("parallel", "sequential", "cascade")


def _finite(
    field: str, value: object, *, low: float, high: float = math.inf, low_open: bool = False
) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"ensemble.{field}: expected a number, got {value!r}")
    v = float(value)
    ok = math.isfinite(v) and (v > low if low_open else v >= low) and v <= high
    if not ok:
        bound = f"{'>' if low_open else '>='} {low:g}" + (
            f" and <= {high:g}" if high != math.inf else ""
        )
        raise ConfigError(f"ensemble.{field}: must be a finite number {bound}, got {value!r}")
    return v


class EnsembleBackend:
    """Asks every member, then votes.

    ``members``: backend names, ``{"name", "options", "weight", "label"}`` tables, or
    backend objects (at least two). ``strategy``: a registered strategy name
    (``majority``, ``weighted``, ``best_confidence``, ``unanimous``,
    ``ranked_choice``, ``semantic_similarity``, or a plugin's) or a strategy object;
    ``strategy_options`` go to its factory. ``weights``: one per member (>= 0, not
    all 0). ``mode``: ``parallel``, ``sequential`` or ``cascade`` (cheapest first by
    declared costs, escalating while agreement is below ``cascade_agreement``).
    ``early_stop``: stop waiting once the outcome cannot change. ``quorum``: members
    that must answer (default: a majority). ``deadline_s``: the whole request's bound.
    ``samples``: completions per member (``n``); ``normalise``: :class:`Normaliser` options.
    With a seed in the request, member i samples from ``seed + i * samples``, so copies of one
    backend draw different answers, reproducibly.
    ``bus``: an ``EventBus`` that receives an ``ensemble.vote`` event per request
    (under ``job_id``): answer, agreement, strategy, failed, cancelled, early_stopped.
    """

    def __init__(
        self,
        members: Sequence[Any],
        strategy: str | Strategy = "majority",
        *,
        strategy_options: Mapping[str, Any] | None = None,
        weights: Sequence[float] | None = None,
        mode: str = "parallel",
        early_stop: bool = True,
        quorum: int | None = None,
        deadline_s: float = 60.0,
        samples: int = 1,
        normalise: Mapping[str, Any] | Normaliser | None = None,
        cascade_agreement: float = 1.0,
        cascade_min_votes: int = 2,
        bus: Any = None,
        job_id: str = "ensemble",
    ) -> None:
        count = 1 if isinstance(members, str | bytes) else len(members)
        if count < 2:
            raise ConfigError(
                f"ensemble.members: an ensemble needs at least 2 members, got {count}",
                hint="list two or more backends, e.g. members = ['local', 'tinker']",
            )
        if weights is not None and len(weights) != len(members):
            raise ConfigError(
                f"ensemble.weights: {len(weights)} weight(s) for {len(members)} members",
                hint="give one weight per member, in the members' order",
            )
        if mode not in _MODES:
            raise ConfigError(f"ensemble.mode: {mode!r} is not one of {', '.join(_MODES)}")
        self.mode: Mode = cast(Mode, mode)
        self.early_stop = bool(early_stop)
        self.deadline_s = _finite("deadline_s", deadline_s, low=0.0, low_open=True)
        self.cascade_agreement = _finite("cascade_agreement", cascade_agreement, low=0.0, high=1.0)
        self.cascade_min_votes = int(_finite("cascade_min_votes", cascade_min_votes, low=1))
        self.samples = int(_finite("samples", samples, low=1, high=128))
        self.normaliser = (
            normalise if isinstance(normalise, Normaliser) else _normaliser(normalise or {})
        )
        self.strategy: Strategy = (
            build_strategy(strategy, **dict(strategy_options or {}))
            if isinstance(strategy, str)
            else strategy
        )
        self._owned: list[Any] = []
        self.members = self._members(members, weights)
        if not any(m.weight > 0 for m in self.members):
            raise ConfigError("ensemble.weights: at least one weight must be > 0")
        default_quorum = len(self.members) // 2 + 1
        self.quorum = int(
            _finite(
                "quorum",
                default_quorum if quorum is None else quorum,
                low=1,
                high=len(self.members),
            )
        )
        self.bus = bus
        self.job_id = job_id
        self._lock = threading.Lock()
        self._counters: dict[str, float] = {
            "requests": 0,
            "member_calls": 0,
            "member_failures": 0,
            "early_stops": 0,
            "quorum_failures": 0,
            "agreement_sum": 0.0,
        }

    def _members(self, specs: Sequence[Any], weights: Sequence[float] | None) -> list[Member]:
        from crucible_core import open_backend

        out: list[Member] = []
        seen: set[str] = set()
        keys = ("name", "options", "weight", "label")
        for i, spec in enumerate(specs):
            weight: object = 1.0 if weights is None else weights[i]
            backend, owned = open_backend(spec, field=f"ensemble.members[{i}]", keys=keys)
            if owned:
                self._owned.append(backend)
            if isinstance(spec, str):
                label = spec
            elif isinstance(spec, Mapping):
                table = cast(Mapping[str, Any], spec)
                label = str(table.get("label") or table["name"])
                weight = table.get("weight", weight)
            else:
                label = _backend_id(spec) or f"member{i}"
            base, n = label, 2
            while label in seen:
                label, n = f"{base}#{n}", n + 1
            seen.add(label)
            w = _finite(f"weights[{i}]", weight, low=0.0)
            out.append(Member(name=label, backend=backend, weight=w, costs=_costs(backend)))
        return out

    def run(self, prompt: Prompt, params: SamplingParams) -> EnsembleResult:
        """Ask the members and vote; the full result (per-member outcomes, cost, usage)."""
        from msgspec.structs import replace

        try:
            result = run_ensemble(
                self.members,
                prompt,
                replace(params, n=self.samples),
                strategy=self.strategy,
                normaliser=self.normaliser,
                mode=self.mode,
                early_stop=self.early_stop,
                quorum=self.quorum,
                deadline_s=self.deadline_s,
                cascade_agreement=self.cascade_agreement,
                cascade_min_votes=self.cascade_min_votes,
            )
        except Exception:
            with self._lock:
                self._counters["requests"] += 1
                self._counters["quorum_failures"] += 1
            raise
        with self._lock:
            c = self._counters
            c["requests"] += 1
            c["member_calls"] += result.member_calls
            c["member_failures"] += len(result.failed)
            c["early_stops"] += int(result.early_stopped)
            c["agreement_sum"] += result.agreement
        if self.bus is not None:
            self.bus.emit(
                "ensemble.vote",
                job_id=self.job_id,
                answer=result.answer,
                agreement=result.agreement,
                strategy=result.strategy,
                mode=result.mode,
                members=[o.member for o in result.outcomes],
                failed=result.failed,
                cancelled=result.cancelled,
                early_stopped=result.early_stopped,
                latency_ms=result.latency_ms,
                cost=result.cost,
            )
        return result

    # -- InferenceBackend ----------------------------------------------------

    def capabilities(self) -> Capabilities:
        """What every member can do (streaming is always offered: the answer comes as one chunk)."""
        caps = [_capabilities(m.backend) for m in self.members]
        known = [c for c in caps if c is not None]
        costs = [m.costs for m in self.members if m.costs is not None]
        return Capabilities(
            backend_id="ensemble",
            provider="crucible-ensemble",
            supports_streaming=True,
            supports_inference=True,
            supports_logprobs=False,
            max_context_length=min(
                (c.max_context_length for c in known if c.max_context_length is not None),
                default=None,
            ),
            costs=Costs(
                prompt_per_mtok=math.fsum(c.prompt_per_mtok for c in costs),
                sample_per_mtok=math.fsum(c.sample_per_mtok for c in costs) * self.samples,
            )
            if costs
            else None,
        )

    def complete(self, prompt: Prompt, params: SamplingParams) -> Completion:
        """The voted answer as one completion; ``n > 1`` is refused (members draw
        ``samples`` each; the vote yields one answer)."""
        _one(params)
        return self.run(prompt, params).completion()

    def stream(self, prompt: Prompt, params: SamplingParams) -> Iterator[StreamChunk]:
        """The voted answer as one final chunk: no answer exists before the vote."""
        _one(params)
        result = self.run(prompt, params)
        c = result.completion()
        yield StreamChunk(
            text=c.text,
            tokens=c.tokens,
            logprobs=c.logprobs,
            finish_reason=c.finish_reason,
            backend_id="ensemble",
        )

    def health_check(self) -> Health:
        healthy = 0
        details: list[str] = []
        for m in self.members:
            try:
                h = m.backend.health_check()
                ok, detail = bool(h.ok), h.detail
            except Exception as exc:  # a member's broken health check is its failure
                ok, detail = False, f"{type(exc).__name__}: {exc}"
            healthy += ok
            if not ok:
                details.append(f"{m.name}: {detail or 'unhealthy'}")
        ok = healthy >= self.quorum
        summary = f"{healthy}/{len(self.members)} members healthy, quorum {self.quorum}"
        return Health(ok=ok, detail="; ".join([summary, *details]))

    def metrics(self) -> Mapping[str, float]:
        with self._lock:
            c = dict(self._counters)
        requests = c["requests"] or 1
        return {
            "requests": c["requests"],
            "member_calls": c["member_calls"],
            "member_failures": c["member_failures"],
            "early_stops": c["early_stops"],
            "quorum_failures": c["quorum_failures"],
            "mean_agreement": c["agreement_sum"] / requests,
        }

    def close(self) -> None:
        """Close the members this ensemble built from names (not objects passed in)."""
        for backend in self._owned:
            close = getattr(backend, "close", None)
            if callable(close):
                close()
        self._owned.clear()


def _one(params: SamplingParams) -> None:
    if params.n != 1:
        raise UnsupportedError(
            f"an ensemble answers once per request, got n={params.n}",
            hint="set `samples` on the ensemble to draw several completions per member",
        )


def _normaliser(options: Mapping[str, Any]) -> Normaliser:
    import msgspec

    from crucible_core.ir import convert

    try:
        return convert(dict(options), Normaliser)
    except msgspec.ValidationError as exc:  # pragma: no cover - convert wraps these
        raise ConfigError(f"ensemble.normalise: {exc}") from None


def _capabilities(backend: Any) -> Capabilities | None:
    fn = getattr(backend, "capabilities", None)
    if not callable(fn):
        return None
    try:
        caps = fn()
    except Exception:  # a member without usable capabilities is simply unknown
        return None
    return caps if isinstance(caps, Capabilities) else None


def _backend_id(backend: Any) -> str:
    caps = _capabilities(backend)
    return caps.backend_id if caps is not None else ""


def _costs(backend: Any) -> Costs | None:
    caps = _capabilities(backend)
    return caps.costs if caps is not None else None

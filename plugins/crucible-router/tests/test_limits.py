"""Rate limits and in-flight caps per member: on an injected clock, under threads, and
shared by two real processes through the SQLite state file (measured).

Members are simulated (``conftest.Scripted``, ``limit_worker.Timed``): a real provider's
quota cannot be set on cue; the limiter itself, its SQLite file and the processes are real.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from crucible_router import Limits, LimitStore, RateLimiter, RoutedBackend
from hypothesis import given, settings
from hypothesis import strategies as st

from crucible_core.errors import CapacityError, ConfigError
from crucible_core.ir import Completion, Prompt, SamplingParams, Usage

from .conftest import Clock, Scripted

P = Prompt(text="Hello")
GREEDY = SamplingParams(max_tokens=8, temperature=0.0)
WORKER = Path(__file__).with_name("limit_worker.py")


def limited(backend: Any, **limits: Any) -> dict[str, Any]:
    return {"backend": backend, "limits": limits}


def test_requests_per_s_spaces_calls_on_the_clock(clock: Clock) -> None:
    """rate 2/s, burst 1: the first call goes at once, each next one waits 0.5 s."""
    a = Scripted("a", clock)
    r = RoutedBackend(limited(a, requests_per_s=2, burst=1), clock=clock, sleep=clock.advance)
    start = clock.now
    times = []
    for _ in range(4):
        r.complete(P, GREEDY)
        times.append(clock.now - start)
    assert times == pytest.approx([0.0, 0.5, 1.0, 1.5])
    m = r.metrics()
    assert (m["a.admitted"], m["a.throttled"]) == (4.0, 3.0)


def test_over_the_bound_the_fallback_answers_and_the_breaker_is_untouched(clock: Clock) -> None:
    a, b = Scripted("a", clock), Scripted("b", clock)
    r = RoutedBackend(
        limited(a, requests_per_s=1, burst=1, max_wait_s=0.2),
        [b],
        clock=clock,
        sleep=clock.advance,
        failure_threshold=1,
    )
    assert r.complete(P, GREEDY).backend_id == "a"
    assert r.complete(P, GREEDY).backend_id == "b"  # a would need 1 s > 0.2 s: no wait at all
    assert clock.now == 1000.0
    assert r.members[0].breaker.state == "closed"
    assert r.metrics()["a.rejected"] == 1.0
    clock.advance(1.0)
    assert r.complete(P, GREEDY).backend_id == "a"


def test_a_lone_limited_member_raises_a_retryable_capacity_error(clock: Clock) -> None:
    limiter = RateLimiter(
        "a",
        Limits(requests_per_s=1, max_wait_s=0.1),
        LimitStore(),
        clock=clock,
        sleep=clock.advance,
    )
    limiter.acquire()
    with pytest.raises(CapacityError) as info:
        limiter.acquire()
    assert info.value.retryable
    assert info.value.details["retry_after_s"] == pytest.approx(1.0)
    assert "requests/s" in info.value.message


def test_a_route_whose_members_are_all_busy_raises_capacity_error(clock: Clock) -> None:
    """Every member over its limit: ``CapacityError`` (code ``capacity``, retryable), which
    the scheduler's default ``retryable_errors`` retries; a plain failure stays a
    ``BackendError``."""
    a, b = Scripted("a", clock), Scripted("b", clock)
    r = RoutedBackend(
        limited(a, requests_per_s=1, max_wait_s=0),
        [limited(b, requests_per_s=1, max_wait_s=0)],
        clock=clock,
        sleep=clock.advance,
    )
    r.complete(P, GREEDY)
    r.complete(P, GREEDY)
    with pytest.raises(CapacityError) as info:
        r.complete(P, GREEDY)
    assert info.value.code == "capacity"
    assert info.value.retryable
    assert "a (rate limited" in info.value.message


def test_a_stream_holds_its_slot_until_it_ends(clock: Clock) -> None:
    """max_in_flight 1: while a stream is open its slot is taken (the old code freed it at
    the first chunk); closing the stream frees it."""
    a = Scripted("a", clock)
    r = RoutedBackend(limited(a, max_in_flight=1, max_wait_s=0), clock=clock, sleep=clock.advance)
    limiter = r.members[0].limiter
    assert limiter is not None
    stream = r.stream(P, GREEDY)
    next(stream)
    assert limiter.in_flight() == 1
    with pytest.raises(CapacityError):
        r.complete(P, GREEDY)
    stream.close()
    assert limiter.in_flight() == 0
    assert r.complete(P, GREEDY).backend_id == "a"


def test_tokens_per_min_charges_real_usage_after_the_call(clock: Clock) -> None:
    """600 tokens/min = 10/s. A 1200-token call leaves a debt of 600: the next waits 60 s."""

    class Big(Scripted):
        def complete(self, prompt: Prompt, params: SamplingParams) -> Completion:
            self._step()
            return Completion(
                text="x",
                backend_id=self.name,
                usage=Usage(prompt_tokens=200, completion_tokens=1000),
            )

    a = Big("a", clock)
    r = RoutedBackend(
        limited(a, tokens_per_min=600, max_wait_s=120), clock=clock, sleep=clock.advance
    )
    r.complete(P, GREEDY)
    assert clock.now == 1000.0
    r.complete(P, GREEDY)
    assert clock.now - 1000.0 == pytest.approx(60.0, abs=1e-3)


def test_max_in_flight_holds_under_threads() -> None:
    """Eight real threads, max_in_flight 2: never more than 2 calls inside the member."""
    lock = threading.Lock()
    inside = [0, 0]  # now, peak

    class Slow(Scripted):
        def complete(self, prompt: Prompt, params: SamplingParams) -> Completion:
            with lock:
                inside[0] += 1
                inside[1] = max(inside[1], inside[0])
            time.sleep(0.01)
            with lock:
                inside[0] -= 1
            return super().complete(prompt, params)

    r = RoutedBackend(limited(Slow("a"), max_in_flight=2, max_wait_s=10, poll_s=0.001))
    threads = [
        threading.Thread(target=lambda: [r.complete(P, GREEDY) for _ in range(5)]) for _ in range(8)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert inside[1] == 2
    assert r.metrics()["a.admitted"] == 40.0
    assert r.members[0].limiter is not None
    assert r.members[0].limiter.in_flight() == 0


def test_a_dead_process_slot_is_reclaimed(tmp_path: Path, clock: Clock) -> None:
    db = tmp_path / "router.db"
    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    dead_pid = int(gone.stdout)
    store = LimitStore(db)
    with store.transaction() as conn:
        conn.execute("INSERT INTO limit_slots (key, pid, since) VALUES ('a', ?, 0)", (dead_pid,))
    limiter = RateLimiter(
        "a", Limits(max_in_flight=1, max_wait_s=0), store, clock=clock, sleep=clock.advance
    )
    slot = limiter.acquire()
    with pytest.raises(CapacityError, match="1 calls in flight"):
        limiter.acquire()
    limiter.release(slot)
    assert limiter.in_flight() == 0


@pytest.mark.parametrize(
    ("limits", "match"),
    [
        ({"requests_per_sec": 1}, "unknown limit 'requests_per_sec'"),
        ({"requests_per_s": 0}, "requests_per_s must be a number > 0"),
        ({"max_in_flight": 1.5}, "max_in_flight must be a whole number"),
        ({"max_wait_s": -1}, "max_wait_s >= 0"),
    ],
)
def test_bad_limits_are_config_errors_naming_the_field(limits: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigError, match=match) as info:
        RoutedBackend(Scripted("a"), [{"name": "b", "limits": limits}])
    assert "router.fallbacks[0].limits" in info.value.message


@settings(max_examples=60, deadline=None)
@given(
    rate=st.floats(0.5, 50),
    burst=st.integers(1, 5),
    gaps=st.lists(st.floats(0, 2), min_size=1, max_size=60),
)
def test_no_window_admits_more_than_rate_times_length_plus_burst(
    rate: float, burst: int, gaps: list[float]
) -> None:
    """For any arrival pattern, admissions in any interval of length T are at most
    burst + rate * T (the token bucket's contract)."""
    clock = Clock()
    limiter = RateLimiter(
        "a",
        Limits(requests_per_s=rate, burst=burst, max_wait_s=0),
        LimitStore(),
        clock=clock,
        sleep=clock.advance,
    )
    admitted: list[float] = []
    for gap in gaps:
        clock.advance(gap)
        try:
            limiter.acquire()
        except CapacityError:
            continue
        admitted.append(clock.now)
    for i, first in enumerate(admitted):
        for j in range(i, len(admitted)):
            assert j - i + 1 <= burst + rate * (admitted[j] - first) + 1e-6


def _workers(db: Path, mode: str, seconds: float) -> list[dict[str, Any]]:
    procs = [
        subprocess.Popen(
            [sys.executable, str(WORKER), str(db), mode, str(seconds)],
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=60)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs)
    return [json.loads(o) for o in outs]


@pytest.mark.timeout(120)
def test_two_processes_share_one_request_rate(tmp_path: Path) -> None:
    """Two processes x two threads, each calling as fast as it can for 2 s through a member
    limited to 20 requests/s (burst 1) in one state file: together they stay within 20/s
    (measured over the run and in every 1 s window), and both get served."""
    results = _workers(tmp_path / "router.db", "rate", 2.0)
    starts = sorted(s for r in results for s, _ in r["calls"])
    assert all(len(r["calls"]) >= 5 for r in results)  # both processes are served
    span = starts[-1] - starts[0]
    achieved = (len(starts) - 1) / span
    assert achieved <= 20 * 1.05, achieved
    assert achieved >= 20 * 0.6, achieved  # the limit is what bounds them, not slowness
    for i, first in enumerate(starts):
        in_window = sum(1 for s in starts[i:] if s - first < 1.0)
        assert in_window <= 1 + 20 + 2, (in_window, first)  # burst + rate + scheduling jitter


@pytest.mark.timeout(120)
def test_two_processes_share_one_in_flight_cap(tmp_path: Path) -> None:
    """Two processes x three threads, max_in_flight 2 in one state file: at no instant do
    more than 2 calls run in the member across both processes (measured from the calls'
    own start/end times on the system-wide monotonic clock)."""
    results = _workers(tmp_path / "router.db", "inflight", 1.0)
    assert all(len(r["calls"]) >= 1 for r in results)  # both processes are served
    edges = sorted(
        [(s, 1) for r in results for s, _ in r["calls"]]
        + [(e, -1) for r in results for _, e in r["calls"]],
        key=lambda x: (x[0], x[1]),
    )
    running = peak = 0
    for _, d in edges:
        running += d
        peak = max(peak, running)
    assert peak <= 2
    assert sum(r["refused"] for r in results) == 0


def test_backends_status_shows_calls_in_flight(tmp_path: Path, clock: Clock) -> None:
    """A slot held by this process shows in ``crucible backends status`` (a real
    subprocess reading the same file); a released one does not."""
    db = tmp_path / "router.db"
    limiter = RateLimiter("tinker", Limits(max_in_flight=3), LimitStore(db), clock=clock)
    slot = limiter.acquire()
    cmd = [sys.executable, "-m", "crucible_core.cli.main", "backends", "status", "--file", str(db)]

    def status(*extra: str) -> str:
        return subprocess.run(
            [*cmd, *extra], capture_output=True, text=True, timeout=60, check=True
        ).stdout

    assert json.loads(status("--json"))["in_flight"] == {"tinker": 1}
    assert "in flight (max_in_flight limits): tinker 1" in status()
    limiter.release(slot)
    assert json.loads(status("--json"))["in_flight"] == {}

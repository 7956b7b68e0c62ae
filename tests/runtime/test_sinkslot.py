"""The shared pieces of the interop sinks: the process-wide slot, numeric settings, and
the loopback HTTP endpoint their tests use (real HTTP on 127.0.0.1, bounded)."""

from __future__ import annotations

import threading
import time
import urllib.error
import urllib.request

import pytest
from hypothesis import given
from hypothesis import strategies as st

from crucible_core.errors import ConfigError
from crucible_core.records.sinkenv import positive_number
from crucible_core.records.sinkslot import SinkSlot
from crucible_core.testing.http import LocalEndpoint


class _Sink:
    def __init__(self, n: int) -> None:
        self.n = n
        self.closed_with: list[float | None] = []
        self.taken: list[object] = []

    def take(self, event: object) -> None:
        self.taken.append(event)


def test_the_slot_builds_once_and_reset_builds_again() -> None:
    built: list[_Sink] = []

    def build() -> _Sink:
        built.append(_Sink(len(built)))
        return built[-1]

    slot: SinkSlot[_Sink] = SinkSlot(build, lambda s, t: s.closed_with.append(t), _Sink.take)
    assert slot.current() is None
    threads = [threading.Thread(target=slot.get) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(built) == 1, "built once however many threads ask"
    first = slot.get()
    assert first is built[0]
    assert slot.reset(2.5) is first
    assert first.closed_with == [2.5]
    assert slot.current() is None
    slot.deliver("e1")
    second = slot.current()
    assert second is not None
    assert second.n == 1
    assert second.taken == ["e1"], "deliver builds the sink and hands it the event"


def test_an_off_slot_stays_off_until_reset_and_install_replaces() -> None:
    calls: list[int] = []

    def build() -> None:
        calls.append(1)

    slot: SinkSlot[_Sink] = SinkSlot(build, lambda s, t: s.closed_with.append(t), _Sink.take)
    assert slot.get() is None
    slot.deliver("dropped")
    assert calls == [1], "None means off for the process, not 'try again'"
    mine = _Sink(7)
    assert slot.install(mine) is None
    assert slot.get() is mine
    assert slot.install(None) is mine
    assert mine.closed_with == [], "install does not close the sink it replaces"


@given(st.floats(min_value=1e-6, max_value=1e9, allow_nan=False))
def test_positive_numbers_read_back(value: float) -> None:
    assert positive_number({"X_N": repr(value)}, "X_N", 1.0) == value


@pytest.mark.parametrize("raw", ["0", "-1", "nan", "many", "1.5e"])
def test_a_bad_number_names_its_variable(raw: str) -> None:
    with pytest.raises(ConfigError) as caught:
        positive_number({"CRUCIBLE_X_QUEUE": raw}, "CRUCIBLE_X_QUEUE", 10, integer=raw != "nan")
    assert "CRUCIBLE_X_QUEUE" in caught.value.message
    assert caught.value.hint


def test_unset_or_blank_is_the_default() -> None:
    assert positive_number({}, "X", 3.0) == 3.0
    assert positive_number({"X": "  "}, "X", 3.0) == 3.0
    assert positive_number({"X": "12"}, "X", 3.0, integer=True) == 12


def test_the_endpoint_records_and_answers() -> None:
    with LocalEndpoint(status=201, methods=("POST",)) as e:
        req = urllib.request.Request(e.url + "/api/v1/lineage", data=b'{"a": 1}', method="POST")
        with urllib.request.urlopen(req, timeout=10) as answer:
            assert answer.status == 201
        with pytest.raises(urllib.error.HTTPError) as caught:
            urllib.request.urlopen(e.url + "/other", timeout=10)
        assert caught.value.code == 501
        caught.value.close()
    assert (e.requests, e.paths, e.json()) == (1, ["/api/v1/lineage"], [{"a": 1}])


def test_a_hanging_endpoint_holds_requests_until_closed() -> None:
    e = LocalEndpoint(hang_s=30.0)
    outcome: list[object] = []

    def ask() -> None:
        try:
            with urllib.request.urlopen(e.url, timeout=0.5) as answer:
                outcome.append(answer.status)
        except (TimeoutError, urllib.error.URLError) as exc:
            outcome.append(type(exc).__name__)

    began = time.monotonic()
    ask()
    assert outcome in (["TimeoutError"], ["URLError"]), "no answer within the client's 0.5 s"
    assert e.requests == 1
    e.close()
    assert time.monotonic() - began < 10, "closing released the hanging request"

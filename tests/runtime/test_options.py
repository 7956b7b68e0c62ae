"""Worker and queue options refuse nan, inf, negative and zero durations.

``nan <= 0`` is False, so the old ``lease_s <= 0`` check let a NaN lease
through; SQLite stored ``now + nan`` as NULL and the job stayed ``running``
forever. Each option is checked in the library (named as the keyword) and
on the CLI (named as the flag, exit 2, one line).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from crucible_core._options import check_count, check_seconds
from crucible_core.cli.main import main
from crucible_core.errors import ConfigError, exit_code_for
from crucible_core.ir.work import Job
from crucible_core.plugins import PluginHost
from crucible_core.queue.scheduler import Scheduler
from crucible_core.queue.worker import Worker

BAD_SECONDS = [float("nan"), float("inf"), float("-inf"), -1.0, 0.0]


def test_check_seconds_refuses_an_int_too_large_for_a_float() -> None:
    with pytest.raises(ConfigError, match=r"^x_s must be a finite number"):
        check_seconds("x_s", 10**400)


@given(st.floats(allow_nan=True, allow_infinity=True) | st.integers(-(10**9), 10**9))
def test_check_seconds_accepts_exactly_finite_positive_numbers(value: float) -> None:
    if math.isfinite(value) and value > 0:
        assert check_seconds("x_s", value) == float(value)
    else:
        with pytest.raises(ConfigError, match=r"^x_s must be"):
            check_seconds("x_s", value)


@given(st.floats(allow_nan=True, allow_infinity=True))
def test_check_seconds_allow_zero(value: float) -> None:
    if math.isfinite(value) and value >= 0:
        assert check_seconds("x_s", value, allow_zero=True) == value
    else:
        with pytest.raises(ConfigError, match=r"^x_s must be a finite number of seconds >= 0"):
            check_seconds("x_s", value, allow_zero=True)


@pytest.mark.parametrize("value", [0, -3, True, 1.5, "2"])
def test_check_count_refuses_non_counts(value: Any) -> None:
    with pytest.raises(ConfigError, match=r"^n must be a whole number >= 1"):
        check_count("n", value)


@pytest.fixture
def sched(tmp_path: Path) -> Any:
    s = Scheduler(tmp_path / "crucible.db", sync="normal")
    yield s
    s.close()


@pytest.mark.parametrize("bad", BAD_SECONDS)
@pytest.mark.parametrize("option", ["lease_s", "poll_s", "heartbeat_s"])
def test_worker_refuses_bad_durations(
    sched: Scheduler, host: PluginHost, option: str, bad: float
) -> None:
    with pytest.raises(ConfigError, match=f"^{option} must be a finite number") as info:
        Worker(sched, host=host, **{option: bad})
    assert exit_code_for(info.value) == 2


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -1.0])
def test_worker_refuses_bad_drain_timeout(sched: Scheduler, host: PluginHost, bad: float) -> None:
    with pytest.raises(ConfigError, match=r"^drain_timeout_s must be a finite number"):
        Worker(sched, host=host, drain_timeout_s=bad)
    Worker(sched, host=host, drain_timeout_s=0)  # zero: do not wait


@pytest.mark.parametrize("bad", [0, -1, 2.5, True])
def test_worker_refuses_bad_concurrency(sched: Scheduler, host: PluginHost, bad: Any) -> None:
    with pytest.raises(ConfigError, match=r"^concurrency must be a whole number >= 1"):
        Worker(sched, host=host, concurrency=bad)


def test_heartbeat_must_renew_the_lease_in_time(sched: Scheduler, host: PluginHost) -> None:
    """A heartbeat slower than half the lease lets a live job's lease lapse."""
    with pytest.raises(ConfigError, match=r"heartbeat_s \(3\) must be at most half"):
        Worker(sched, host=host, lease_s=5.0, heartbeat_s=3.0)
    assert Worker(sched, host=host, lease_s=6.0, heartbeat_s=3.0).heartbeat_s == 3.0


@pytest.mark.parametrize(
    ("flag", "value"),
    [
        ("--lease", "nan"),
        ("--lease", "inf"),
        ("--lease", "-5"),
        ("--lease", "0"),
        ("--poll", "nan"),
        ("--poll", "-0.1"),
        ("--poll", "inf"),
        ("--drain-timeout", "nan"),
        ("--drain-timeout", "-1"),
        ("--concurrency", "0"),
        ("--concurrency", "-2"),
        ("--max-jobs", "-1"),
    ],
)
def test_cli_worker_options_exit_2_naming_the_flag(
    crucible_home: Path, capsys: pytest.CaptureFixture[str], flag: str, value: str
) -> None:
    code = main(["worker", flag, value, "--exit-when-idle"])
    err = capsys.readouterr().err
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert f"{flag} must be" in lines[0]
    assert "Traceback" not in err


def test_jobs_list_limit_must_not_be_negative(
    crucible_home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """SQLite reads ``LIMIT -1`` as no limit at all."""
    assert main(["jobs", "list", "--limit", "-1"]) == 2
    assert "--limit must be a whole number >= 0, got -1" in capsys.readouterr().err
    with Scheduler(crucible_home / "db", sync="normal") as sched:
        sched.enqueue(Job(kind="custom"))
        with pytest.raises(ConfigError, match=r"^limit must be a whole number >= 0"):
            sched.list(limit=-1)
        assert sched.list(limit=0) == []

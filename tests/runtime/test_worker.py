"""The worker loop in this process: handlers, outcomes, cancel, timeout, recovery, drain."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from crucible_core.contracts import StageContext
from crucible_core.hookspecs import hookimpl
from crucible_core.ir.experiment import Experiment, StageDef
from crucible_core.ir.work import Constraints, Job, RetryPolicy
from crucible_core.plugins import PluginHost
from crucible_core.queue.scheduler import Scheduler
from crucible_core.queue.worker import Worker
from crucible_core.records.events import read_telemetry

from . import jobs

FAST = RetryPolicy(max_attempts=3, initial_delay_ms=0, max_delay_ms=0)


def custom(func: str, *, id: str = "", **kw: Any) -> Job:
    args = kw.pop("args", {})
    return Job(
        id=id, kind="custom", payload={"target": f"{jobs.__name__}:{func}", "args": args}, **kw
    )


@pytest.fixture
def sched(crucible_home: Path) -> Iterator[Scheduler]:
    s = Scheduler(sync="normal")
    yield s
    s.close()


def worker(sched: Scheduler, host: PluginHost, **kw: Any) -> Worker:
    opts: dict[str, Any] = {"lease_s": 5.0, "heartbeat_s": 0.05, "poll_s": 0.02, "host": host}
    opts.update(kw)
    return Worker(sched, **opts)


def run_in_thread(w: Worker) -> threading.Thread:
    t = threading.Thread(target=w.run, daemon=True)
    t.start()
    return t


def wait_status(sched: Scheduler, job_id: str, *statuses: str, timeout: float = 10) -> Job:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = sched.get(job_id)
        if job.status in statuses:
            return job
        time.sleep(0.01)
    raise AssertionError(f"{job_id} is {sched.get(job_id).status}, wanted {statuses}")


def test_custom_job_result_and_events(sched: Scheduler, host: PluginHost) -> None:
    sched.enqueue(custom("echo", id="e1", args={"x": 1}))
    stats = worker(sched, host).run(exit_when_idle=True)
    job = sched.get("e1")
    assert job.status == "succeeded"
    assert job.result == {"args": {"x": 1}, "attempt": 1}
    assert (stats.claimed, stats.succeeded) == (1, 1)
    states = [e.data["status"] for e in read_telemetry("e1") if e.kind == "job.state"]
    assert states == ["running", "succeeded"]


def test_retryable_failures_are_retried(sched: Scheduler, host: PluginHost) -> None:
    c = Constraints(retry_policy=FAST)
    sched.enqueue(custom("fail_then_succeed", id="r1", args={"failures": 2}, constraints=c))
    stats = worker(sched, host).run(exit_when_idle=True)
    job = sched.get("r1")
    assert (job.status, job.attempts, job.result) == ("succeeded", 3, "ok")
    assert stats.retried == 2


def test_plain_exception_fails_without_retry(sched: Scheduler, host: PluginHost) -> None:
    sched.enqueue(custom("boom", id="b1", constraints=Constraints(retry_policy=FAST)))
    worker(sched, host).run(exit_when_idle=True)
    job = sched.get("b1")
    assert (job.status, job.attempts) == ("failed", 1)
    assert job.error is not None
    assert job.error.message == "ValueError: boom"


def test_bad_payloads_and_kinds_fail_clearly(sched: Scheduler, host: PluginHost) -> None:
    sched.enqueue_many(
        [
            Job(id="p1", kind="custom", payload={"args": {}}),
            Job(id="p2", kind="custom", payload={"target": "no.such.module:f"}),
            Job(id="p3", kind="inference", payload={}),
            Job(id="p4", kind="experiment_step", payload={"stages": "nope"}),
            custom("unstorable", id="p5"),
            Job(id="p6", kind="training_run", payload={"model_spec": 3}),
        ]
    )
    worker(sched, host).run(exit_when_idle=True)
    errors = {j.id: (j.status, j.error.code if j.error else None) for j in sched.list()}
    assert errors == {
        "p1": ("failed", "config_error"),
        "p2": ("failed", "config_error"),
        "p3": ("failed", "unsupported"),
        "p4": ("failed", "validation_error"),
        "p5": ("failed", "config_error"),
        "p6": ("failed", "validation_error"),
    }
    assert "no handler for jobs of kind 'inference'" in (sched.get("p3").error.message)  # type: ignore[union-attr]


def test_cancel_running_job_reaches_the_handler(sched: Scheduler, host: PluginHost) -> None:
    sched.enqueue(custom("until_cancelled", id="c1"))
    w = worker(sched, host)
    t = run_in_thread(w)
    wait_status(sched, "c1", "running")
    sched.cancel("c1")
    job = wait_status(sched, "c1", "cancelled")
    assert job.result == "stopped: cancelled"
    w.stop()
    t.join(10)
    assert not t.is_alive()


def test_timeout_fails_with_retryable_deadline(sched: Scheduler, host: PluginHost) -> None:
    c = Constraints(timeout_s=0.3, retry_policy=RetryPolicy(max_attempts=1))
    sched.enqueue(custom("until_cancelled", id="t1", constraints=c))
    start = time.monotonic()
    worker(sched, host).run(exit_when_idle=True)
    job = sched.get("t1")
    assert job.status == "dead"
    assert job.error is not None
    assert job.error.code == "timeout"
    assert "timeout of 0.3 s" in job.error.message
    assert time.monotonic() - start < 5


def test_resume_from_last_checkpoint_after_a_failure(sched: Scheduler, host: PluginHost) -> None:
    sched.enqueue(
        custom("checkpoint_then_fail", id="k1", constraints=Constraints(retry_policy=FAST))
    )
    worker(sched, host).run(exit_when_idle=True)
    job = sched.get("k1")
    assert job.status == "succeeded"
    assert job.result == {"resumed_at": 7, "uri": "mem://first"}
    kinds = [e.kind for e in read_telemetry("k1")]
    assert "train.checkpoint" in kinds


def test_concurrency_runs_jobs_in_parallel(sched: Scheduler, host: PluginHost) -> None:
    sched.enqueue_many([custom("until_cancelled", id=f"par{i}") for i in range(3)])
    w = worker(sched, host, concurrency=3)
    t = run_in_thread(w)
    for i in range(3):
        wait_status(sched, f"par{i}", "running")
    assert sorted(w.active_jobs()) == ["par0", "par1", "par2"]
    for i in range(3):
        sched.cancel(f"par{i}")
    for i in range(3):
        wait_status(sched, f"par{i}", "cancelled")
    w.stop()
    t.join(10)


def test_drain_finishes_short_jobs(sched: Scheduler, host: PluginHost, tmp_path: Path) -> None:
    args = {"steps": 3, "step_s": 0.05, "directory": str(tmp_path)}
    sched.enqueue(custom("stepper", id="d1", args=args))
    w = worker(sched, host, drain_timeout_s=10)
    t = run_in_thread(w)
    wait_status(sched, "d1", "running")
    w.stop()
    t.join(10)
    assert sched.get("d1").status == "succeeded"


def test_drain_keeps_the_lease_of_a_handler_that_ignores_it(
    sched: Scheduler, host: PluginHost
) -> None:
    """A handler that ignores the stop request keeps its job until it really stops.

    Releasing it at once (the old behaviour) let another worker start the job
    while this handler still ran: two attempts at once.
    """
    stopped_at: list[float] = []

    class Stubborn:
        @staticmethod
        def handler(job: Job) -> Any:
            def run(ctx: Any) -> None:
                while ctx.cancel.reason != "shutdown":
                    time.sleep(0.01)
                time.sleep(3.0)  # ignores the shutdown request for a while (> lease_s)
                stopped_at.append(time.time())
                raise RuntimeError("stopped late")

            return run

    sched.enqueue(Job(id="s1", kind="inference"))
    w = worker(
        sched, host, drain_timeout_s=0.2, lease_s=1.0, handlers={"inference": Stubborn.handler}
    )
    t = run_in_thread(w)
    wait_status(sched, "s1", "running")
    w.stop()
    t.join(10)
    assert not t.is_alive()  # run() returned although the handler still runs
    job = sched.get("s1")
    assert (job.status, job.attempts) == ("running", 1)
    # Past the lease: the heartbeat still renews it, so no one else can claim it.
    time.sleep(1.3)
    assert not stopped_at
    assert sched.claim("intruder", lease_s=5.0) is None
    job = wait_status(sched, "s1", "queued", timeout=10)
    assert stopped_at
    released = sched.history("s1")[-1]
    assert released.note == "released by a draining worker"
    assert released.at >= stopped_at[0]
    assert job.attempts == 0
    assert w.stats.released == 1


def test_max_jobs(sched: Scheduler, host: PluginHost) -> None:
    sched.enqueue_many([custom("echo") for _ in range(5)])
    stats = worker(sched, host, concurrency=2).run(max_jobs=3)
    assert stats.claimed == 3
    assert sched.counts() == {"succeeded": 3, "queued": 2}


class Hello:
    def __init__(self, **options: Any) -> None:
        self.options = options

    def run(self, ctx: StageContext) -> dict[str, Any]:
        return {"greeting": f"hello {self.options['name']}", "inputs": sorted(ctx.inputs)}


class HelloPlugin:
    @hookimpl
    def register_stages(self, register: Any) -> None:
        register("hello", Hello)


def test_experiment_job_runs_its_pipeline(sched: Scheduler, host: PluginHost) -> None:
    host.add_plugin(HelloPlugin(), name="hello-stages")
    experiment = Experiment(
        id="greet",
        stages=[
            StageDef(name="one", uses="hello", options={"name": "a"}),
            StageDef(name="two", uses="hello", options={"name": "b"}, depends_on=["one"]),
        ],
    )
    from crucible_core.ir.codec import to_builtins

    sched.enqueue(Job(id="x1", kind="experiment_step", payload=to_builtins(experiment)))
    worker(sched, host).run(exit_when_idle=True)
    job = sched.get("x1")
    assert job.status == "succeeded"
    assert job.result == {
        "one": {"greeting": "hello a", "inputs": []},
        "two": {"greeting": "hello b", "inputs": ["one"]},
    }


def test_dependent_jobs_run_in_order(sched: Scheduler, host: PluginHost, tmp_path: Path) -> None:
    d = {"directory": str(tmp_path)}
    sched.enqueue_many(
        [
            custom("mark", id="second", args=d, constraints=Constraints(depends_on=["first"])),
            custom("mark", id="first", args=d),
        ]
    )
    worker(sched, host, concurrency=2).run(exit_when_idle=True)
    (log,) = list(tmp_path.glob("*.log"))
    assert log.read_text().split() == ["first", "second"]
    from crucible_core.records.lineage import LineageRecorder

    with LineageRecorder(sched.path) as rec:
        assert [c.id for c in rec.ancestors("second").children] == ["first"]


def test_plugins_on_event_sees_the_workers_events(sched: Scheduler, host: PluginHost) -> None:
    seen: list[tuple[str, str]] = []

    class Observer:
        @hookimpl
        def on_event(self, event: Any) -> None:
            seen.append((event.job_id, event.kind))

    host.add_plugin(Observer(), name="observer")
    sched.enqueue(custom("echo", id="o1"))
    worker(sched, host).run(exit_when_idle=True)
    assert seen == [("o1", "job.state"), ("o1", "job.state")]


class _Elsewhere:
    """A job runner (``run_job(ctx)``) that runs jobs on its own thread, recording them."""

    def __init__(self) -> None:
        self.ran: list[tuple[str, str]] = []

    def run_job(self, ctx: Any) -> Any:
        box: dict[str, Any] = {}

        def body() -> None:
            box["thread"] = threading.current_thread().name
            box["value"] = ctx.job.payload["args"]["a"] * 2

        t = threading.Thread(target=body, name="elsewhere")
        t.start()
        t.join()
        self.ran.append((ctx.job_id, box["thread"]))
        if ctx.job.payload["args"]["a"] < 0:
            raise ValueError("negative")
        return box["value"]

    def shutdown(self, wait: bool = True) -> None:
        pass


def test_an_executor_runs_the_jobs_instead_of_the_slot(sched: Scheduler, host: PluginHost) -> None:
    runner = _Elsewhere()
    sched.enqueue(custom("not_importable_here", id="twice", args={"a": 21}))
    sched.enqueue(custom("not_importable_here", id="bad", args={"a": -1}))
    worker(sched, host, executor=runner).run(exit_when_idle=True)
    assert sched.get("twice").result == 42, "the runner's result is the job's result"
    assert sched.get("bad").status == "failed"
    assert sorted(runner.ran) == [("bad", "elsewhere"), ("twice", "elsewhere")]


def test_an_executor_without_run_job_is_refused(sched: Scheduler, host: PluginHost) -> None:
    from crucible_core.errors import ConfigError
    from crucible_core.pipeline.executors import ThreadExecutor

    with pytest.raises(ConfigError, match="no run_job"):
        worker(sched, host, executor=ThreadExecutor())
    with pytest.raises(ConfigError, match="do not combine"):
        worker(sched, host, executor=_Elsewhere(), handlers={"custom": lambda job: None})

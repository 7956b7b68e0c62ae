"""The interop sinks' cost (issue 23): events/s through the event bus with each sink
attached vs none, and the per-step time of the README main job with all three sinks on
vs off.

Every sink exports for real, at its defaults: crucible-otel over OTLP/HTTP to a collector
stand-in on 127.0.0.1 that answers every request; crucible-openlineage to its default
file transport; crucible-mlflow to its default SQLite store under ``CRUCIBLE_HOME``.

1. Bus throughput: ``--events`` events per round (``run.start``, a stage, ``train.step``
   with the nine numbers a crucible-local step reports and a checkpoint every 100,
   ``run.end``) emitted on one ``EventBus`` writing
   telemetry, with no plugin, a no-op ``on_event`` plugin, each sink alone, and all
   three; rounds alternate between arms. Reported: the producer's events/s (what the run
   sees) and its ratio to no plugin; how fast the sink(s) then finished their work (the
   round's events over the time until every sink had flushed); the CPU the round cost
   this process (all its threads: producer, bus, sink workers) per event, and the CPU of
   child processes (crucible-mlflow's writer) per event; events dropped.
2. Main job: ``crucible train examples/dates-local.toml`` (200 steps) in a subprocess,
   runs alternating between the three sinks disabled
   (``CRUCIBLE_DISABLE_PLUGINS=otel,openlineage,mlflow``) and all on (``--main-arms``
   adds single sinks); per-step time is
   the median gap between consecutive ``train.step`` events of each run's telemetry,
   then the median over runs; plus the whole process's CPU time.

Run: .venv/bin/python -m benchmarks.sinks_bench
     .venv/bin/python -m benchmarks.sinks_bench --events 3000 --rounds 3 --runs 3
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import tempfile
import time
from pathlib import Path

from benchmarks.otel_sink_bench import collector, noop_plugin, run_main_job, step_time

ROOT = Path(__file__).resolve().parents[1]
SINKS = ("otel", "openlineage", "mlflow")


def _args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n", 1)[0])
    p.add_argument("--events", type=int, default=5000, help="events per bus round (< 10000)")
    p.add_argument("--rounds", type=int, default=5, help="alternating bus rounds per arm")
    p.add_argument("--runs", type=int, default=3, help="main-job runs per arm (0: skip)")
    p.add_argument(
        "--main-arms",
        default="off,all",
        help="main-job arms, alternating, the first is the baseline: off, all, or a sink name",
    )
    return p.parse_args(argv)


class _Sinks:
    """Fresh process-wide sinks for a round, built from the environment; flushed after."""

    def __init__(self, names: tuple[str, ...]) -> None:
        import crucible_mlflow.plugin
        import crucible_openlineage.plugin
        import crucible_otel.plugin
        from crucible_mlflow import sink as mlflow_sink
        from crucible_openlineage import runtime as lineage
        from crucible_otel import sink as otel_sink
        from crucible_otel.config import sink_from_env

        self.names = names
        self.plugins = {
            "otel": crucible_otel.plugin,
            "openlineage": crucible_openlineage.plugin,
            "mlflow": crucible_mlflow.plugin,
        }
        self.otel = None
        if "otel" in names:
            self.otel = sink_from_env()
            otel_sink.install(self.otel)
        self._lineage = lineage
        self._mlflow = mlflow_sink
        lineage.reset()
        mlflow_sink.reset(30)

    def finish(self) -> tuple[int, int]:
        """Wait for every sink to have done its work; (handled, dropped) summed."""
        handled = dropped = 0
        if self.otel is not None:
            assert self.otel.flush(120)
            handled += self.otel.handled
            dropped += self.otel.dropped
            self.otel.close(10)
            from crucible_otel import sink as otel_sink

            otel_sink.install(None)
        if "openlineage" in self.names:
            sink = self._lineage.current()
            assert sink is not None
            assert sink.flush(120)
            handled += sink.stats.sent
            dropped += sink.stats.dropped
            self._lineage.reset()
        if "mlflow" in self.names:
            msink = self._mlflow.current_sink()
            assert msink is not None
            assert msink.flush(120)
            handled += msink.queue.handled
            dropped += msink.dropped
            self._mlflow.reset(30)
        return handled, dropped


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


Round = tuple[float, float, int, float, float]


def bus_round(n: int, arm: str, job_id: str) -> Round:
    """(producer events/s, events/s until every sink finished, dropped, this process's CPU
    seconds, child processes' CPU seconds) for one round."""
    from crucible_core.plugins import PluginHost
    from crucible_core.records.events import EventBus

    names: tuple[str, ...] = SINKS if arm == "all" else (arm,) if arm in SINKS else ()
    host = PluginHost(autoload=False)
    if arm == "noop":
        host.add_plugin(noop_plugin(), name="noop")
    sinks = _Sinks(names)
    for name in names:
        host.add_plugin(sinks.plugins[name], name=name)
    bus = EventBus(host=host)
    cpu0, child0 = time.process_time(), _children_cpu()
    start = time.perf_counter()
    bus.emit("run.start", job_id=job_id, job_kind="training_run", name="bench", execution=1)
    bus.emit("stage.start", job_id=job_id, stage="train", uses="train.loop")
    bus.emit("train.start", job_id=job_id, step=0, total_steps=n)
    for step in range(1, n - 5):
        bus.emit(  # the numbers a crucible-local step reports (nine metrics with the loss)
            "train.step",
            job_id=job_id,
            step=step,
            loss=1.0 / step,
            metrics={"loss:sum": 250.0 / step, "grad_norm": 2.0 / step},
            tokens=step * 450,
            lr=1e-3,
            lr_multiplier=1.0,
            accumulated_calls=1.0,
            grad_clip=1.0,
            total_steps=n,
        )
        if step % 100 == 0:
            bus.emit("train.checkpoint", job_id=job_id, step=step, uri=f"mem://{step}")
    bus.emit("stage.end", job_id=job_id, stage="train", status="ok", duration_ms=1.0)
    bus.emit("run.end", job_id=job_id, status="succeeded", error=None, artifacts=[])
    produced = time.perf_counter() - start
    bus.drain(120)
    bus.close()
    _, dropped = sinks.finish()
    done = time.perf_counter() - start
    cpu, child = time.process_time() - cpu0, _children_cpu() - child0
    return n / produced, n / done, dropped, cpu, child


def _main_job(args: argparse.Namespace, home: Path, per_event: dict[str, float]) -> None:
    arms: list[str] = args.main_arms.split(",")
    times: dict[str, list[float]] = {a: [] for a in arms}
    means: dict[str, list[float]] = {a: [] for a in arms}
    cpu: dict[str, list[float]] = {a: [] for a in arms}
    steps = n_events = 0
    for r in range(args.runs):
        for arm in arms:
            on = SINKS if arm == "all" else () if arm == "off" else (arm,)
            job_id = f"main-{r}-{arm}"
            cpu[arm].append(run_main_job(home, job_id, [s for s in SINKS if s not in on]))
            t, mean, steps, n_events = step_time(home, job_id)
            times[arm].append(t)
            means[arm].append(mean)
    base = arms[0]
    print(f"main job (examples/dates-local.toml, {steps} steps), {args.runs} runs per arm,")
    print(f"  {n_events / steps:.2f} events per step; ratios against '{base}':")
    print(
        f"  {'arm':12s} {'median step ms':>15s} {'ratio':>7s} {'mean step ms':>13s} {'CPU s':>7s}"
    )
    b_t, b_m = statistics.median(times[base]), statistics.median(means[base])
    b_c = statistics.median(cpu[base])
    for arm in arms:
        t, m, c = (statistics.median(x[arm]) for x in (times, means, cpu))
        runs = ", ".join(f"{x * 1e3:.2f}" for x in times[arm])
        print(
            f"  {arm:12s} {t * 1e3:15.2f} {t / b_t - 1:+7.1%} {m * 1e3:13.2f} {c:7.2f}"
            f"  (mean {m / b_m - 1:+.1%}, CPU {c / b_c - 1:+.1%}; runs: {runs})"
        )
    print("  target: all three sinks on <= +2 % per step")
    # The wall-clock A/B above is at the mercy of the shared machine; this bound is less
    # so: each sink's CPU per event in the run's process (every thread: the producer's
    # delivery, the sink's worker) times the events per step, against the baseline's
    # median step. It counts CPU as if it all held the GIL the training loop needs.
    events_per_step = n_events / steps
    print(f"  bound from the bus figures (run process CPU), against a {b_t * 1e3:.2f} ms step:")
    for name, cost in per_event.items():
        per_step = cost * events_per_step
        print(
            f"    {name:12s} {cost * 1e6:7.1f} us/event x {events_per_step:.2f} = "
            f"{per_step * 1e3:.3f} ms/step = {per_step / b_t:.2%}"
        )


def main(argv: list[str] | None = None) -> int:
    args = _args(argv)
    with (
        tempfile.TemporaryDirectory(prefix="crucible-sinks-bench-") as tmp,
        collector() as server,
    ):
        home = Path(tmp)
        os.environ.update(
            CRUCIBLE_HOME=str(home),
            CRUCIBLE_OTEL_EXPORTER="otlp",
            OTEL_EXPORTER_OTLP_ENDPOINT=f"http://127.0.0.1:{server.server_address[1]}",
        )
        arms = ("none", "noop", *SINKS, "all")
        results: dict[str, list[Round]] = {a: [] for a in arms}
        for arm in arms:  # warm up: imports, the MLflow database, the lineage file
            bus_round(300, arm, f"warm-{arm}")
        for r in range(args.rounds):
            for arm in arms:
                results[arm].append(bus_round(args.events, arm, f"bus-{r}-{arm}"))
        none = statistics.median(x[0] for x in results["none"])
        print(f"bus, {args.events} events/round, {args.rounds} rounds per arm (medians):")
        print(
            f"  {'arm':14s} {'producer ev/s':>14s} {'vs none':>8s} {'sinks done ev/s':>16s}"
            f" {'CPU us/ev':>10s} {'child CPU us/ev':>16s}"
        )
        for arm in arms:
            produced = statistics.median(x[0] for x in results[arm])
            done = statistics.median(x[1] for x in results[arm])
            dropped = sum(x[2] for x in results[arm])
            cpu = statistics.median(x[3] for x in results[arm]) / args.events
            child = statistics.median(x[4] for x in results[arm]) / args.events
            print(
                f"  {arm:14s} {produced:14,.0f} {produced / none - 1:+8.1%} {done:16,.0f}"
                f" {cpu * 1e6:10.1f} {child * 1e6:16.1f}"
                + (f"  dropped {dropped}" if dropped else "")
            )
        # A sink's cost to the run's process: the CPU its round cost this process (every
        # thread) beyond the no-plugin round's, per event. Work done in a child process
        # (crucible-mlflow's writer) shares no GIL with training and is reported apart.
        base_cpu = statistics.median(x[3] for x in results["none"]) / args.events
        per_event = {
            arm: statistics.median(x[3] for x in results[arm]) / args.events - base_cpu
            for arm in (*SINKS, "all")
        }
        if args.runs:
            _main_job(args, home, per_event)
        print(f"collector received: {dict(sorted(server.received.items()))}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""``check_stage`` and ``KitStageContext``: the Stage contract, outside a pipeline.

What :func:`check_stage` asserts (each failure names the call and the rule):

1. The object has ``run(ctx)`` (:class:`~crucible_core.contracts.Stage`).
2. ``run(ctx)`` returns within ``timeout`` without raising, and returns
   ``None`` or a mapping with string keys (dependents read it from
   ``ctx.inputs[name]``).
3. ``run`` does not modify ``ctx.inputs``: the pipeline hands the same
   outputs to every dependent, some running concurrently.
4. A second ``run`` with the same context succeeds and returns the same
   keys: the scheduler retries failed jobs, so a stage must be re-runnable
   over what its first attempt left in ``run_dir`` and the artifact store.
5. With ``ctx.cancel`` already set, ``run`` ends within ``timeout``, either
   returning or raising :class:`~crucible_core.errors.Cancelled`: long work
   polls the token; any other error would be reported as a failure.

:class:`KitStageContext` is a real :class:`~crucible_core.contracts.StageContext`
(a local artifact store, a cancel flag, recorded events) for running a stage
in a test without building an Experiment.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from crucible_core.contracts import ArtifactStore, CancelToken, Stage, StageContext
from crucible_core.errors import Cancelled, NotFound
from crucible_core.ir.experiment import Experiment
from crucible_core.ir.work import Job
from crucible_core.pipeline.cancel import CancelFlag
from crucible_core.records.artifacts import LocalArtifactStore
from crucible_core.testing._guard import Calls, ConformanceError, require

__all__ = ["KitStageContext", "check_stage"]


class KitStageContext:
    """A :class:`~crucible_core.contracts.StageContext` rooted in a test's temporary directory.

    ``root`` holds ``runs/<job_id>/`` (``run_dir``) and ``artifacts/`` (a
    :class:`~crucible_core.records.artifacts.LocalArtifactStore`).
    ``backends`` maps names to backend objects; ``backend()`` (no name)
    returns ``backends[None]``. Every ``emit`` is kept in ``events`` as
    ``(kind, data)``; ``cancel`` is a settable
    :class:`~crucible_core.pipeline.cancel.CancelFlag`.
    """

    def __init__(
        self,
        root: Path,
        *,
        options: Mapping[str, Any] | None = None,
        inputs: Mapping[str, Mapping[str, Any]] | None = None,
        job: Job | None = None,
        experiment: Experiment | None = None,
        backends: Mapping[str | None, Any] | None = None,
    ) -> None:
        self.job: Job = job if job is not None else Job(id="conformance", kind="experiment_step")
        self.job_id: str = self.job.id
        self.experiment: Experiment = (
            experiment if experiment is not None else Experiment(id="conformance")
        )
        self.options: Mapping[str, Any] = dict(options or {})
        self.inputs: Mapping[str, Mapping[str, Any]] = dict(inputs or {})
        self._backends = dict(backends or {})
        self.run_dir: Path = Path(root) / "runs" / (self.job.id or "conformance")
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.artifacts: ArtifactStore = LocalArtifactStore(Path(root) / "artifacts")
        self.cancel: CancelFlag = CancelFlag()
        self.events: list[tuple[str, dict[str, Any]]] = []

    def backend(self, name: str | None = None) -> Any:
        if name not in self._backends:
            raise NotFound(f"this test context has no backend {name!r}")
        return self._backends[name]

    def emit(self, kind: str, /, **data: Any) -> None:
        self.events.append((kind, data))


class _SetToken:
    def is_set(self) -> bool:
        return True


class _CancelledView:
    """``ctx`` with its cancel token set, everything else delegated."""

    def __init__(self, ctx: StageContext) -> None:
        self._ctx = ctx

    def __getattr__(self, name: str) -> Any:
        return getattr(self._ctx, name)

    @property
    def cancel(self) -> CancelToken:
        return _SetToken()


def _snapshot(inputs: Mapping[str, Mapping[str, Any]]) -> Any:
    try:
        return copy.deepcopy(dict(inputs))
    except Exception:  # values that cannot be copied: compare what they are, not their content
        return {k: (id(v), dict(v)) for k, v in inputs.items()}


def _outputs(result: Any, call: str) -> Mapping[str, Any]:
    if result is None:
        return {}
    require(
        isinstance(result, Mapping),
        f"{call} must return None or a mapping of outputs, got {type(result).__name__}",
    )
    out: Mapping[Any, Any] = result
    bad = [k for k in out if not isinstance(k, str)]
    require(not bad, f"{call}: output keys must be strings, got {bad!r}")
    return out


def check_stage(stage: Any, ctx: StageContext, *, timeout: float = 120.0) -> Mapping[str, Any]:
    """Run ``stage`` on ``ctx`` as the pipeline would and check the Stage rules.

    Returns the first run's outputs, for the author's own assertions.
    ``timeout`` bounds each ``run`` in seconds.
    """
    require(isinstance(stage, Stage), "a stage needs run(ctx) (crucible_core.contracts.Stage)")
    require(
        isinstance(ctx, StageContext),  # pyright: ignore[reportUnnecessaryIsInstance]
        "ctx must satisfy crucible_core.contracts.StageContext (KitStageContext does)",
    )
    with Calls(timeout) as calls:
        before = _snapshot(ctx.inputs)
        first = _outputs(calls("run(ctx)", "a stage runs on its context", stage.run, ctx), "run")
        require(
            _snapshot(ctx.inputs) == before,
            "run(ctx) modified ctx.inputs: every dependent of a stage reads the same outputs, "
            "so a stage must copy what it wants to change",
        )
        again = _outputs(
            calls(
                "run(ctx) a second time",
                "a stage is re-runnable (the scheduler retries failed jobs)",
                stage.run,
                ctx,
            ),
            "run (second time)",
        )
        require(
            set(again) == set(first),
            f"a second run returned keys {sorted(again)}, the first {sorted(first)}: "
            "dependents read the same keys on a retry",
        )
        _, exc = calls.attempt(
            "run(ctx) with ctx.cancel set",
            "a cancelled stage stops promptly",
            stage.run,
            _CancelledView(ctx),
        )
        if exc is not None and not isinstance(exc, Cancelled):
            raise ConformanceError(
                f"run(ctx) with ctx.cancel set raised {type(exc).__name__}: {exc}; a cancelled "
                "stage returns or raises crucible_core.errors.Cancelled"
            ) from exc
    return first

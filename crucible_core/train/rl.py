"""The RL recipe (GRPO-style), sibling of :mod:`crucible_core.train.sft`:
prepare prompts -> session -> sample, score, train (the loop) -> evaluate -> save.

:func:`run_rl` runs a ``workflow = "rl"`` TrainingJob with the SFT loop
(:class:`~crucible_core.train.loop.TrainLoop`: schedule, checkpoint policy,
budgets, cancellation, exact resume, events); what differs is where each
step's batch comes from, :class:`RLBatches`:

1. the step's prompts are ``learning_config.batch_size`` prompts (per
   micro-batch) picked by the loop's seeded schedule;
2. ``rl.group_size`` completions of each are sampled from the policy's
   sampler (``save_weights_for_sampler``: the training contract, so any
   backend with a sampler runs RL), each seeded by ``(seed, step, prompt)``;
3. each completion is scored by ``rl.reward``
   (:mod:`crucible_core.train.rewards`), optionally minus ``rl.kl_coef``
   times its log-ratio to the reference (the base model, scored by a second
   session), and turned into a Datum carrying the sampler's logprobs and its
   group-relative advantage (:mod:`crucible_core.train.rollouts`);
4. the step trains with ``rl.loss`` (``importance_sampling``, ``ppo``, ``cispo`` or ``gspo``).

Weight versions: version ``v`` is the weights after ``v`` optimizer steps.
The sampler is refreshed (new weights saved for sampling) every
``rl.refresh_every`` steps; step ``s`` samples from version
:meth:`~crucible_core.ir.training.RLConfig.version_for` ``(s)``. With
``max_off_policy_steps = 0`` that is ``s`` itself: sampling waits for the
previous step. With ``max_off_policy_steps >= 1`` step ``s + 1``'s samples
are drawn (on a worker thread) while step ``s`` trains, from the weights
before it: one step stale, never more than ``max_off_policy_steps``. Every
sample is stamped with its version (the ``rl.samples`` event), and each
``train.step`` event's metrics carry ``reward:mean``, ``reward:std``,
``kl`` (per completion token, sampler vs reference), ``staleness`` and
``version``.

Exact resume: a step's prompts, seeds and weights are functions of the step,
so a resumed run samples exactly what the interrupted one would have. The
sampler weights a resumed step still needs (a version older than the
checkpoint, when sampling is off-policy) are listed in ``rl_samplers.json``
beside the loop state and loaded with ``TrainingBackend.load_sampler``.

A reward that raises or returns a non-number stops the run through the loop
(drain, checkpoint, then the error naming the reward and the sample).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import math
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, cast

import msgspec

from crucible_core.contracts import (
    Future,
    Sampler,
    StageContext,
    TrainingBackend,
    TrainingSession,
)
from crucible_core.errors import BackendError, ConfigError
from crucible_core.ir.backend import Capabilities, CheckpointRef, Datum, Prompt, SamplingParams
from crucible_core.ir.training import Loss, RLConfig, TrainingJob
from crucible_core.pipeline.scope import RunScope
from crucible_core.records.artifacts import write_json
from crucible_core.train import state as disk
from crucible_core.train.loop import LoopState, SavedCheckpoint, TrainLoop, batch_for_step
from crucible_core.train.prepare import PreparedData
from crucible_core.train.rewards import Reward, call_reward, resolve_reward
from crucible_core.train.rollouts import group_advantages, sample_datum, sample_seed
from crucible_core.train.sft import open_session
from crucible_core.train.steps import (
    Trained,
    TrainingOutcome,
    call_deadline,
    finish,
    prepare_step,
    record_session,
    restore,
    save_final,
)

__all__ = [
    "STEPS",
    "RLBatches",
    "RLStep",
    "evaluate_rl",
    "rl_job",
    "rl_refusal",
    "rl_train_step",
    "run_rl",
]

#: The recipe's steps, in order, as (step name, what it runs): each is recorded as a stage.
STEPS: tuple[tuple[str, str], ...] = (
    ("prepare", "data.load + data.tokenize (prompts)"),
    ("train", "train.loop (sample, score, train)"),
    ("evaluate", "train.evaluate"),
    ("save", "train.save"),
    ("log_metrics", "train.log_metrics"),
)

#: Where the sampler weights of each version are listed, in the run directory.
SAMPLERS_FILE = "rl_samplers.json"
#: Characters of a completion's text kept in the ``rl.samples`` event.
_TEXT_KEPT = 120


def rl_refusal(backend: str, caps: Capabilities, loss: str) -> str | None:
    """Why ``backend`` cannot run RL with ``loss``, or None when it can."""
    missing: list[str] = []
    if not caps.supports_inference:
        missing.append("a sampler (supports_inference is false)")
    if not caps.supports_logprobs:
        missing.append("sampled tokens' logprobs (supports_logprobs is false)")
    if loss not in caps.losses:
        missing.append(f"the {loss} loss (losses: {', '.join(caps.losses) or 'none'})")
    if not missing:
        return None
    return f'backend {backend!r} cannot run workflow = "rl": it lacks ' + "; ".join(missing)


def rl_job(job: TrainingJob) -> TrainingJob:
    """``job`` with ``learning_config.loss`` set to ``rl.loss`` (ppo, cispo, gspo: their
    ratio clipped at ``1 +- rl.clip_epsilon``)."""
    cfg = job.rl_config
    eps = cfg.clip_epsilon
    params: dict[str, Any] = {}
    if cfg.loss == "ppo":
        params = {"clip_range": eps}
    elif cfg.loss in ("cispo", "gspo"):
        params = {"clip_low_threshold": 1.0 - eps, "clip_high_threshold": 1.0 + eps}
    learning = msgspec.structs.replace(job.learning_config, loss=Loss(name=cfg.loss, params=params))
    return msgspec.structs.replace(job, learning_config=learning)


class RLStep(msgspec.Struct, kw_only=True):
    """One step's sampled batch: micro-batches of Datums, stamps and metrics."""

    step: int
    version: int
    micro: list[list[Datum]]
    epochs: list[float]
    metrics: dict[str, float]
    samples: list[dict[str, Any]]


class RLBatches:
    """The :class:`~crucible_core.train.loop.BatchSource` of an RL run (see the module doc).

    ``session`` trains; ``backend`` loads the sampler weights a resumed run
    needs and opens the reference session (for KL). ``start`` is the first
    step this process trains (``state.step`` of the resume, else 0).
    """

    def __init__(
        self,
        session: TrainingSession,
        backend: TrainingBackend,
        job: TrainingJob,
        prompts: Sequence[Mapping[str, Any]],
        reward: Reward,
        *,
        run_dir: Path,
        emit: Callable[..., None],
        deadline_s: float,
        total: int,
        start: int = 0,
    ) -> None:
        self._session = session
        self._backend = backend
        self._job = job
        self._cfg: RLConfig = job.rl_config
        self._prompts = prompts
        self._indices = list(range(len(prompts)))
        self._reward = reward
        self._run_dir = run_dir
        self._emit = emit
        self._deadline = deadline_s
        self._total = total
        self._metrics: dict[int, dict[str, float]] = {}
        self._samplers: dict[int, Future[Sampler]] = {}
        self._refs: dict[int, CheckpointRef] = {}
        self._prefetched: dict[int, concurrent.futures.Future[RLStep]] = {}
        # _samplers, _refs, _kl_pending are written by the sampling thread, read by the loop's.
        self._lock = threading.RLock()
        self._kl_pending: dict[int, tuple[Callable[[], list[float | None]], int]] = {}
        self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="rl-sampling")
        self._reference: TrainingSession | None = None
        self._scratch: contextlib.ExitStack = contextlib.ExitStack()
        self._current: RLStep | None = None
        if start > 0:
            self._reopen(start)

    # -- the BatchSource contract --------------------------------------------------

    def __call__(self, loop: TrainLoop, step: int, micro: int) -> tuple[list[Datum], float]:
        if micro == 0:
            self._begin(loop, step)
        current = self._current
        assert current is not None
        assert current.step == step
        return current.micro[micro], current.epochs[micro]

    def metrics(self, step: int) -> Mapping[str, float]:
        metrics = self._metrics.pop(step, {})
        with self._lock:
            pending = self._kl_pending.pop(step, None)
        if pending is not None:
            resolve, tokens = pending
            metrics["kl"] = _mean_kl(resolve(), tokens)
        return metrics

    # -- steps -----------------------------------------------------------------------

    def _needed(self, version: int) -> bool:
        """Whether some step not yet trained samples from ``version``."""
        cfg = self._cfg
        return (version % cfg.refresh_every == 0 and version + cfg.lag < self._total) or (
            version == 0 and self._total > 0
        )

    def _begin(self, loop: TrainLoop, step: int) -> None:
        """Step ``step`` is being submitted (every earlier step is queued): queue the sampler
        weights of version ``step`` if a step samples from them, get this step's batch, and
        start sampling the next step's when it may be drawn now (off-policy)."""
        with self._lock:
            if step not in self._samplers and step not in self._refs and self._needed(step):
                self._samplers[step] = self._session.save_weights_for_sampler(f"rl-v{step:06d}")
        try:
            future = self._prefetched.pop(step, None)
            batch = future.result() if future is not None else self._build(step)
        except ConfigError as exc:  # a reward that raised or returned a non-number
            error = exc
            loop.stop("reward_error", lambda _step: error)
        self._current = batch
        self._metrics[step] = batch.metrics
        self._emit(
            "rl.samples",
            step=step + 1,
            version=batch.version,
            staleness=step - batch.version,
            samples=batch.samples,
        )
        ahead = step + 1
        if self._cfg.lag >= 1 and ahead < self._total and ahead not in self._prefetched:
            self._prefetched[ahead] = self._pool.submit(self._build, ahead)

    def _sampler(self, version: int) -> Sampler:
        """The sampler of weight ``version``: saved by this process, or loaded from its ref."""
        with self._lock:
            future = self._samplers.get(version)
        if future is not None:
            sampler = future.result(timeout=self._deadline)
            with self._lock:
                if sampler.checkpoint is not None and version not in self._refs:
                    self._refs[version] = sampler.checkpoint
            return sampler
        with self._lock:
            ref = self._refs.get(version)
        if ref is None:
            raise BackendError(
                f"rl: the sampler weights of version {version} are neither saved nor listed "
                f"in {SAMPLERS_FILE}",
                hint="the run directory is incomplete; train the run again from its start",
            )
        loaded = self._backend.load_sampler(self._job.model_spec, ref)
        with self._lock:
            self._samplers[version] = _Done(loaded)
        return loaded

    def _build(self, step: int) -> RLStep:
        """Sample, score and turn into Datums the batches of step ``step``."""
        cfg, job = self._cfg, self._job
        version = cfg.version_for(step)
        sampler = self._sampler(version)
        learning = job.learning_config
        picked: list[tuple[int, list[int], float]] = []
        for m in range(learning.grad_accum):
            chosen, epoch = batch_for_step(
                cast(Sequence[Any], self._indices),
                step,
                m,
                learning,
                shuffle=job.dataset_spec.shuffle,
            )
            picked.append((m, cast(list[int], chosen), epoch))
        requests: list[tuple[int, int, Future[list[Any]]]] = []
        for m, chosen, _ in picked:
            for i in chosen:
                params = SamplingParams(
                    max_tokens=cfg.max_tokens,
                    temperature=cfg.temperature,
                    n=cfg.group_size,
                    seed=sample_seed(learning.seed, step, m, i),
                )
                tokens = [int(t) for t in self._prompts[i]["tokens"]]
                requests.append((m, i, sampler.sample(Prompt(tokens=tokens), params)))
        rows: list[tuple[int, int, int, Any, float]] = []  # micro, prompt, sample, completion, r
        for m, i, future in requests:
            completions = future.result(timeout=self._deadline)
            reference = str(self._prompts[i].get("reference", ""))
            for k, c in enumerate(completions):
                if c.logprobs is None or len(c.logprobs) != len(c.tokens):
                    raise BackendError(
                        f"backend {job.backend_ref.name!r}: its sampler returned no logprobs "
                        "for the sampled tokens; RL needs them for the importance ratio"
                    )
                sample_id = f"step {step + 1}, prompt {i}, completion {k}"
                r = call_reward(self._reward, cfg.reward, c.text, reference, sample_id)
                rows.append((m, i, k, c, r))
        resolve = self._kl(rows)
        tokens = sum(len(c.tokens) for _, _, _, c, _ in rows)
        if cfg.kl_coef == 0 and cfg.report_kl:
            # Only reported: read it when the step's metrics are, off the sampling path.
            with self._lock:
                self._kl_pending[step] = (resolve, tokens)
            kls: list[float | None] = [None] * len(rows)
        else:
            kls = resolve()
        shaped = [
            r - cfg.kl_coef * kl if kl is not None and cfg.kl_coef > 0 else r
            for (_, _, _, _, r), kl in zip(rows, kls, strict=True)
        ]
        advantages: list[float] = []
        start = 0
        while start < len(rows):
            end = start + cfg.group_size
            advantages.extend(group_advantages(shaped[start:end], scale=cfg.scale_advantages))
            start = end
        micro: list[list[Datum]] = [[] for _ in picked]
        samples: list[dict[str, Any]] = []
        for (m, i, k, c, r), a, kl in zip(rows, advantages, kls, strict=True):
            prompt = [int(t) for t in self._prompts[i]["tokens"]]
            if c.tokens:
                micro[m].append(
                    sample_datum(prompt, c.tokens, c.logprobs, a, ratio_mask=cfg.loss == "gspo")
                )
            stamp: dict[str, Any] = {
                "prompt": i,
                "sample": k,
                "version": version,
                "reward": r,
                "advantage": round(a, 6),
                "tokens": len(c.tokens),
                "text": c.text[:_TEXT_KEPT],
            }
            if kl is not None:
                stamp["kl"] = round(kl, 6)
            samples.append(stamp)
        for m, batch in enumerate(micro):
            if not batch:
                raise BackendError(
                    f"rl: step {step + 1}, micro-batch {m}: every completion is empty",
                    hint="the sampler produced no tokens; check rl.max_tokens and the model",
                )
        rewards = [r for *_, r in rows]
        mean = sum(rewards) / len(rewards)
        metrics = {
            "reward:mean": mean,
            "reward:std": math.sqrt(sum((r - mean) ** 2 for r in rewards) / len(rewards)),
            "staleness": float(step - version),
            "version": float(version),
            "samples": float(len(rows)),
            "sample_tokens": float(sum(len(c.tokens) for _, _, _, c, _ in rows)),
        }
        if kls and kls[0] is not None:
            metrics["kl"] = _mean_kl(kls, tokens)
        return RLStep(
            step=step,
            version=version,
            micro=micro,
            epochs=[epoch for _, _, epoch in picked],
            metrics=metrics,
            samples=samples,
        )

    def _kl(
        self, rows: Sequence[tuple[int, int, int, Any, float]]
    ) -> Callable[[], list[float | None]]:
        """Submit the reference's forward pass; the returned function gives each sample's
        summed log-ratio ``log p_sampler - log p_reference`` over its tokens (None each when
        KL is neither reported nor used)."""
        cfg = self._cfg
        if not (cfg.report_kl or cfg.kl_coef > 0):
            return lambda: [None] * len(rows)
        datums: list[Datum] = []
        where: list[int] = []
        for n, (_, i, _, c, _) in enumerate(rows):
            if c.tokens:
                prompt = [int(t) for t in self._prompts[i]["tokens"]]
                datums.append(sample_datum(prompt, c.tokens, c.logprobs, 0.0))
                where.append(n)
        out: list[float | None] = [0.0] * len(rows)
        if not datums:
            return lambda: out
        future = self.reference().forward(datums, Loss())

        def resolve() -> list[float | None]:
            result = future.result(timeout=self._deadline)
            for n, datum, ref in zip(where, datums, result.logprobs, strict=True):
                inputs = datum.loss_fn_inputs
                weights = inputs.weights or []
                sampled = inputs.logprobs or []
                out[n] = sum(w * (s - q) for w, s, q in zip(weights, sampled, ref, strict=True))
            return out

        return resolve

    def reference(self) -> TrainingSession:
        """The reference session (the base model, never trained), opened on first use."""
        if self._reference is None:
            import tempfile

            scratch = Path(self._scratch.enter_context(tempfile.TemporaryDirectory()))
            self._reference = self._backend.create_session(self._job, run_dir=scratch)
            self._scratch.callback(self._reference.close)
        return self._reference

    # -- persistence and clean-up ----------------------------------------------------

    def _reopen(self, start: int) -> None:
        """A resumed run: list the sampler weights the steps from ``start`` still need."""
        path = self._run_dir / SAMPLERS_FILE
        if path.exists():
            listed = msgspec.json.decode(path.read_bytes(), type=dict[str, CheckpointRef])
            self._refs = {int(v): ref for v, ref in listed.items()}

    def before_checkpoint(self, saved: SavedCheckpoint) -> None:
        """List the sampler weights a run resumed from ``saved`` needs, before the loop
        records it (so the record never points at a version nobody can find)."""
        with self._lock:
            versions = sorted(self._samplers)
        for version in versions:
            if version <= saved.step:
                self._sampler(version)  # resolved: its save was queued before the step's
        keep = self._cfg.version_for(saved.step)
        with self._lock:
            listed = {str(v): ref for v, ref in self._refs.items() if v >= keep}
            retired = [v for v in self._refs if v < keep]
        write_json(self._run_dir / SAMPLERS_FILE, msgspec.to_builtins(listed))
        # Steps before saved.step are trained and the later ones sample from versions >= keep.
        for version in retired:
            self._retire(version)

    def _retire(self, version: int) -> None:
        """Close the sampler of ``version`` and delete its weights."""
        with self._lock:
            ref = self._refs.pop(version, None)
            future = self._samplers.pop(version, None)
        if future is not None:
            close = getattr(future.result(timeout=self._deadline), "close", None)
            if callable(close):
                close()
        if ref is not None:
            self._session.delete_checkpoint(ref)

    def close(self) -> None:
        """Stop sampling ahead, close the reference session and the samplers, and delete the
        sampler weights no resume needs (those listed in ``rl_samplers.json`` are kept)."""
        for future in self._prefetched.values():
            future.cancel()
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._scratch.close()
        kept: set[str] = set()
        path = self._run_dir / SAMPLERS_FILE
        if path.exists():
            with contextlib.suppress(msgspec.DecodeError, OSError):
                listed = msgspec.json.decode(path.read_bytes(), type=dict[str, CheckpointRef])
                kept = {ref.uri for ref in listed.values()}
        for version, future in list(self._samplers.items()):
            if not future.done():
                continue
            with contextlib.suppress(Exception):
                sampler = future.result(timeout=0)
                close = getattr(sampler, "close", None)
                if callable(close):
                    close()
                ref = self._refs.get(version)
                if ref is not None and ref.uri not in kept and not isinstance(future, _Done):
                    self._session.delete_checkpoint(ref)


def _mean_kl(kls: Sequence[float | None], tokens: int) -> float:
    """The KL per completion token of a step, from each sample's summed log-ratio."""
    return sum(kl for kl in kls if kl is not None) / max(1, tokens)


class _Done:
    """A resolved Future holding ``value``."""

    def __init__(self, value: Any) -> None:
        self._value = value

    def result(self, timeout: float | None = None) -> Any:
        return self._value

    def done(self) -> bool:
        return True


def rl_train_step(
    ctx: StageContext,
    session: TrainingSession,
    backend: TrainingBackend,
    job: TrainingJob,
    data: PreparedData,
    resume: LoopState | None,
    window: int,
    *,
    reward: Reward | None = None,
) -> Trained:
    """Restore ``resume`` (verified), then run the loop on sampled batches.

    ``job`` trains with ``rl.loss`` (:func:`rl_job`); ``reward`` defaults to
    resolving ``rl.reward``.
    """
    run_dir = ctx.run_dir
    deadline = call_deadline()
    caps = backend.capabilities()
    record_session(run_dir, session, job, caps)
    if reward is None:
        reward = resolve_reward(job.rl_config.reward, getattr(ctx, "host", None))
    if resume is not None:
        resume = restore(ctx, session, resume, deadline)
    prompts = data.prompts
    from crucible_core.train.schedule import total_steps

    total = total_steps(job.learning_config, len(prompts))
    batches = RLBatches(
        session,
        backend,
        job,
        prompts,
        reward,
        run_dir=run_dir,
        emit=ctx.emit,
        deadline_s=deadline,
        total=total,
        start=resume.step if resume is not None else 0,
    )

    def on_checkpoint(saved: SavedCheckpoint, state: LoopState) -> None:
        batches.before_checkpoint(saved)
        disk.record_checkpoint(run_dir, saved, state)

    try:
        loop = TrainLoop(
            session,
            job,
            [],
            emit=ctx.emit,
            cancel=ctx.cancel,
            resume=resume,
            on_checkpoint=on_checkpoint,
            on_delete=lambda saved: disk.retire_checkpoint(run_dir, session, saved),
            costs=caps.costs,
            backend_name=job.backend_ref.name,
            window=window,
            deadline_s=deadline,
            batches=batches,
            examples=len(prompts),
        )
        result = loop.run()
    finally:
        batches.close()
    return Trained(result=result)


def evaluate_rl(
    ctx: StageContext,
    session: TrainingSession,
    job: TrainingJob,
    data: PreparedData,
    reward: Reward,
) -> dict[str, Any]:
    """Mean reward of greedy completions of the validation prompts (``eval_reward``)."""
    prompts = data.validation_prompts
    limit = job.validation_spec.max_samples if job.validation_spec else None
    prompts = prompts[:limit] if limit else prompts
    if not prompts:
        return {}
    deadline = call_deadline()
    cfg = job.rl_config
    sampler = session.save_weights_for_sampler("eval-after").result(timeout=deadline)
    try:
        params = SamplingParams(max_tokens=cfg.max_tokens, temperature=0.0)
        futures = [
            sampler.sample(Prompt(tokens=[int(t) for t in p["tokens"]]), params) for p in prompts
        ]
        texts = [f.result(timeout=deadline)[0].text for f in futures]
    finally:
        if sampler.checkpoint is not None:
            session.delete_checkpoint(sampler.checkpoint)
    scores = [
        call_reward(reward, cfg.reward, text, str(p.get("reference", "")), f"validation {n}")
        for n, (p, text) in enumerate(zip(prompts, texts, strict=True))
    ]
    metrics = {"eval_reward": sum(scores) / len(scores)}
    ctx.emit("eval.metric", step=session.step, split="validation", metrics=metrics)
    return {"split": "validation", "examples": len(prompts), **metrics}


def run_rl(
    scope: RunScope,
    job: TrainingJob,
    *,
    prepared: PreparedData | None = None,
    resume: LoopState | None = None,
    window: int = 2,
) -> TrainingOutcome:
    """Train ``job`` (``workflow = "rl"``) in ``scope``'s run directory."""
    start = time.monotonic()
    backend: TrainingBackend = scope.backend()
    refusal = rl_refusal(job.backend_ref.name, backend.capabilities(), job.rl_config.loss)
    if refusal is not None:
        raise ConfigError(refusal, hint="choose a backend with a sampler and the loss")
    reward = resolve_reward(job.rl_config.reward, scope.get_host())
    trainer = rl_job(job)
    data = prepare_step(scope, job, prepared)
    with open_session(backend, job, scope) as session:
        with scope.step("train", "train.loop") as ctx:
            trained = rl_train_step(
                ctx, session, backend, trainer, data, resume, window, reward=reward
            )
        with scope.step("evaluate", "train.evaluate") as ctx:
            evaluation = evaluate_rl(ctx, session, trainer, data, reward)
        with scope.step("save", "train.save") as ctx:
            sampler = save_final(ctx, session, job, trained.result)
    return finish(scope, trained, evaluation, sampler, start, job)

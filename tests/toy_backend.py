"""A small but real training backend for testing the conformance kit itself.

A byte-level bigram language model in numpy: logits ``W[prev, next]`` trained
by gradient descent on cross-entropy. It learns for real (the loss falls), so
the kit's checks pass on it; the ``Broken*`` variants each violate one rule.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from concurrent.futures import Future
from typing import Any, Literal

import numpy as np

from crucible_core.errors import UnsupportedError
from crucible_core.ir import (
    AdamParams,
    Capabilities,
    CheckpointRef,
    Completion,
    Datum,
    ForwardBackwardResult,
    Health,
    Loss,
    ModelSpec,
    OptimStepResult,
    Prompt,
    SamplingParams,
    StreamChunk,
    TrainingJob,
    Usage,
)

V = 256
#: Saved states by name, shared by every session (a stand-in for the backend's disk).
STATES: dict[str, tuple[np.ndarray, int]] = {}
CAPS = Capabilities(
    backend_id="toy",
    provider="tests",
    supports_training=True,
    supports_logprobs=True,
    supports_streaming=True,
    losses=["cross_entropy"],
    adapters=["full"],
    optimizers=["adamw"],
    schedulers=["constant", "linear", "cosine"],
    checkpoint_formats=["safetensors"],
    max_context_length=128,
    models=["toy"],
)


def done(value: Any) -> Future[Any]:
    f: Future[Any] = Future()
    f.set_result(value)
    return f


class ByteTokenizer:
    name = "bytes"
    vocab_size = V
    eos_token_id = 0
    chat_template = None

    def encode(self, text: str, *, add_special_tokens: bool = False) -> list[int]:
        return list(text.encode())

    def decode(self, ids: Sequence[int]) -> str:
        return bytes(i for i in ids if i).decode(errors="replace")


def _log_softmax(x: np.ndarray) -> np.ndarray:
    m = x.max(axis=-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=-1, keepdims=True))


class ToySampler:
    def __init__(self, weights: np.ndarray, ref: CheckpointRef | None) -> None:
        self.w = weights
        self.checkpoint = ref
        self.tokenizer = ByteTokenizer()

    def generate(
        self, prompt: Prompt, params: SamplingParams, rng: np.random.Generator
    ) -> Completion:
        ids = (
            list(prompt.tokens)
            if prompt.tokens is not None
            else self.tokenizer.encode(prompt.text or "")
        )
        out: list[int] = []
        lps: list[float] = []
        prev = ids[-1] if ids else 0
        finish: Literal["stop", "length"] = "length"
        text = ""
        for _ in range(params.max_tokens):
            lp = _log_softmax(self.w[prev])
            if params.temperature == 0:
                tok = int(lp.argmax())
            else:
                p = np.exp(lp / params.temperature)
                tok = int(rng.choice(V, p=p / p.sum()))
            out.append(tok)
            lps.append(float(lp[tok]))
            prev = tok
            text = self.tokenizer.decode(out)
            cuts = [i for i in (text.find(s) for s in params.stop if s) if i >= 0]
            if cuts:
                text, finish = text[: min(cuts)], "stop"
                break
        return Completion(
            text=text,
            tokens=out,
            logprobs=lps,
            finish_reason=finish,
            usage=Usage(prompt_tokens=len(ids), completion_tokens=len(out)),
            backend_id="toy",
        )

    def sample(self, prompt: Prompt, params: SamplingParams) -> Future[list[Completion]]:
        rng = np.random.default_rng(params.seed)
        return done([self.generate(prompt, params, rng) for _ in range(params.n)])


class ToySession:
    def __init__(self) -> None:
        self.w = np.zeros((V, V))
        self.grad = np.zeros((V, V))
        self.tokenizer = ByteTokenizer()
        self.step = 0
        self.saved = STATES

    def _run(self, batch: Sequence[Datum], backward: bool) -> ForwardBackwardResult:
        total, count, logprobs = 0.0, 0, []
        for d in batch:
            prev = np.array(d.model_input)
            tgt = np.array(d.loss_fn_inputs.target_tokens)
            lp = _log_softmax(self.w[prev])
            picked = lp[np.arange(len(tgt)), tgt]
            logprobs.append(picked.tolist())
            total -= float(picked.sum())
            count += len(tgt)
            if backward:
                g = np.exp(lp)
                g[np.arange(len(tgt)), tgt] -= 1
                np.add.at(self.grad, prev, g)
        return ForwardBackwardResult(
            loss=total / count, metrics={"loss:sum": total}, logprobs=logprobs, num_tokens=count
        )

    def forward(self, batch: Sequence[Datum], loss: Loss) -> Future[ForwardBackwardResult]:
        return done(self._run(batch, backward=False))

    def forward_backward(self, batch: Sequence[Datum], loss: Loss) -> Future[ForwardBackwardResult]:
        return done(self._run(batch, backward=True))

    def optim_step(self, params: AdamParams) -> Future[OptimStepResult]:
        self.w -= 50 * params.learning_rate * self.grad
        self.grad[:] = 0
        self.step += 1
        return done(OptimStepResult(step=self.step, learning_rate=params.learning_rate))

    def save_state(self, name: str) -> Future[CheckpointRef]:
        self.saved[name] = (self.w.copy(), self.step)
        return done(CheckpointRef(uri=f"mem://{name}", kind="state", step=self.step))

    def load_state(self, ref: CheckpointRef) -> Future[None]:
        w, self.step = self.saved[ref.uri.removeprefix("mem://")]
        self.w = w.copy()
        return done(None)

    def save_weights_for_sampler(self, name: str) -> Future[ToySampler]:
        ref = CheckpointRef(uri=f"mem://sampler/{name}", kind="sampler", step=self.step)
        SAMPLERS[ref.uri] = self.w.copy()
        return done(ToySampler(self.w.copy(), ref))

    def delete_checkpoint(self, ref: CheckpointRef) -> None:
        self.saved.pop(ref.uri.removeprefix("mem://"), None)
        SAMPLERS.pop(ref.uri, None)

    def close(self) -> None:
        pass


SAMPLERS: dict[str, np.ndarray] = {}


class ToyBackend:
    session_class: type[ToySession] = ToySession

    def capabilities(self) -> Capabilities:
        return CAPS

    def get_tokenizer(self, model: ModelSpec) -> ByteTokenizer:
        return ByteTokenizer()

    def create_session(self, job: TrainingJob, *, run_dir: Any = None) -> ToySession:
        session = self.session_class()
        if isinstance(session, FileSession):
            session.run_dir = run_dir
        return session

    def load_sampler(self, model: ModelSpec, checkpoint: CheckpointRef | None) -> ToySampler:
        w = SAMPLERS[checkpoint.uri] if checkpoint else np.zeros((V, V))
        return ToySampler(w, checkpoint)

    # inference contract
    def complete(self, prompt: Prompt, params: SamplingParams) -> Completion:
        if params.n != 1:
            raise UnsupportedError(f"params.n = {params.n}: complete returns one completion")
        return ToySampler(np.eye(V), None).generate(prompt, params, np.random.default_rng(0))

    def stream(self, prompt: Prompt, params: SamplingParams) -> Iterator[StreamChunk]:
        c = self.complete(prompt, params)
        emitted = ""
        for i, tok in enumerate(c.tokens):
            last = i == len(c.tokens) - 1
            visible = c.text if last else ByteTokenizer().decode(c.tokens[: i + 1])[: len(c.text)]
            delta, emitted = visible[len(emitted) :], visible
            yield StreamChunk(
                text=delta,
                tokens=[tok],
                finish_reason=c.finish_reason if last else None,
                backend_id="toy",
            )

    def health_check(self) -> Health:
        return Health(ok=True)

    def metrics(self) -> dict[str, float]:
        return {"requests": 0.0}

    def close(self) -> None:
        pass


class NoLearningSession(ToySession):
    def optim_step(self, params: AdamParams) -> Future[OptimStepResult]:
        self.grad[:] = 0
        self.step += 1
        return done(OptimStepResult(step=self.step))


class ForgetfulSession(ToySession):
    def load_state(self, ref: CheckpointRef) -> Future[None]:
        return done(None)


class SyncSession(ToySession):
    def forward(self, batch: Sequence[Datum], loss: Loss) -> Any:  # type: ignore[override]
        return self._run(batch, backward=False)


class FileSession(ToySession):
    """Writes state checkpoints as files under the run directory (``file://`` URIs),
    as a local backend does, so integrity checks and retiring have real files to work on."""

    run_dir: Any = None

    def save_state(self, name: str) -> Future[CheckpointRef]:
        from pathlib import Path

        d = Path(self.run_dir) / "checkpoints" / name / "state"
        d.mkdir(parents=True, exist_ok=True)
        np.save(d / "w.npy", self.w)
        (d / "step").write_text(str(self.step))
        return done(CheckpointRef(uri=d.resolve().as_uri(), kind="state", step=self.step))

    def load_state(self, ref: CheckpointRef) -> Future[None]:
        from crucible_core.records.artifacts import uri_path

        d = uri_path(ref.uri)
        assert d is not None
        self.w = np.load(d / "w.npy")
        self.step = int((d / "step").read_text())
        return done(None)

    def delete_checkpoint(self, ref: CheckpointRef) -> None:
        import shutil

        from crucible_core.records.artifacts import uri_path

        d = uri_path(ref.uri)
        if d is not None:
            shutil.rmtree(d.parent if d.name == "state" else d, ignore_errors=True)


class FileToyBackend:
    """The toy backend with :class:`FileSession` (registered as ``toyfile``)."""

    def __new__(cls) -> Any:
        return backend_with(FileSession)


def backend_with(session_class: type[ToySession]) -> ToyBackend:
    b = ToyBackend()
    b.session_class = session_class
    return b


TEXTS = [f"row {i}: the cat sat on the mat and looked at the hat." for i in range(40)]


class ToyLoadStage:
    """data.load stand-in: rows from TEXTS (the dataset uri is ignored)."""

    def __init__(self, **options: Any) -> None:
        self.options = options

    def run(self, ctx: Any) -> dict[str, Any]:
        import hashlib
        from pathlib import Path

        uri = Path(ctx.job.payload["dataset_spec"]["uri"])
        texts = uri.read_text().splitlines() if uri.is_file() else TEXTS
        digest = "sha256:" + hashlib.sha256("\n".join(texts).encode()).hexdigest()
        rows = [{"text": t} for t in texts]
        cut = len(rows) * 9 // 10
        return {"rows": rows, "train_rows": rows[:cut], "validation_rows": rows[cut:],
                "dataset_hash": digest, "skipped": 0}  # fmt: skip


class ToyTokenizeStage:
    """data.tokenize stand-in: byte tokens, every target weighted."""

    def __init__(self, **options: Any) -> None:
        self.options = options

    def run(self, ctx: Any) -> dict[str, Any]:
        from crucible_core.testing import make_datums

        loaded = ctx.inputs["load"]
        tok = ctx.backend().get_tokenizer(None)
        train = make_datums(tok, [r["text"] for r in loaded["train_rows"]])
        val = make_datums(tok, [r["text"] for r in loaded["validation_rows"]])
        prompts = [
            {"tokens": tok.encode(head + ":"), "reference": rest.strip(), "input": head}
            for head, _, rest in (r["text"].partition(":") for r in loaded["validation_rows"])
        ]
        return {"train": train, "validation": val, "tokens": sum(d.num_tokens for d in train),
                "template": "bytes", "template_hash": "sha256:bytes",
                "validation_prompts": prompts}  # fmt: skip


def toy_plugin() -> Any:
    """A plugin registering the toy backend and the data stages."""
    import types

    from crucible_core import hookimpl

    def register_backends(register: Any) -> None:
        register("toy", ToyBackend, capabilities=CAPS, summary="numpy bigram")
        register("toyfile", FileToyBackend, capabilities=CAPS, summary="numpy bigram, files")

    def register_stages(register: Any) -> None:
        register("data.load", ToyLoadStage)
        register("data.tokenize", ToyTokenizeStage)

    return types.SimpleNamespace(
        register_backends=hookimpl(register_backends), register_stages=hookimpl(register_stages)
    )

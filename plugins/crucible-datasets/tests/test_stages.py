"""The data.load and data.tokenize stages, run through the plugin host.

``Context`` below is a small real implementation of the StageContext protocol
(like the one ``crucible plan`` uses), not a mock: the stages only read the
job, the inputs and the cancel token, and ask ``backend()`` for a tokenizer.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import msgspec
import pytest

from crucible_core.contracts import Stage, StageContext
from crucible_core.errors import Cancelled, ConfigError
from crucible_core.ir.experiment import Experiment
from crucible_core.ir.training import DatasetSpec, ModelSpec, TrainingJob
from crucible_core.ir.work import Job
from crucible_core.plugins import PluginHost
from crucible_datasets import dataset_hash, load_rows

from .conftest import CHATML_JINJA, ByteTokenizer


class _Flag:
    def __init__(self, value: bool = False) -> None:
        self.value = value

    def is_set(self) -> bool:
        return self.value


class _Backend:
    def __init__(self, tokenizer: ByteTokenizer) -> None:
        self.tokenizer = tokenizer
        self.asked: list[ModelSpec] = []

    def get_tokenizer(self, model: ModelSpec) -> ByteTokenizer:
        self.asked.append(model)
        return self.tokenizer


class Context:
    def __init__(
        self,
        payload: Any,
        backend: _Backend,
        inputs: Mapping[str, Mapping[str, Any]] | None = None,
        *,
        experiment: Experiment | None = None,
        cancelled: bool = False,
    ) -> None:
        self.job_id = "job-1"
        self.job = Job(id="job-1", kind="training_run", payload=payload)
        self.experiment = experiment or Experiment(id="exp")
        self.run_dir = Path(".")
        self.options: Mapping[str, Any] = {}
        self.inputs = inputs or {}
        self.cancel = _Flag(cancelled)
        self.artifacts: Any = None
        self._backend = backend
        self.events: list[tuple[str, dict[str, Any]]] = []

    def backend(self, name: str | None = None) -> Any:
        return self._backend

    def emit(self, kind: str, **data: Any) -> None:
        self.events.append((kind, data))


def _job(uri: str, max_seq_len: int = 256, **spec: Any) -> dict[str, Any]:
    job = TrainingJob(
        model_spec=ModelSpec(name="tiny", max_seq_len=max_seq_len),
        dataset_spec=DatasetSpec(uri=uri, **spec),
    )
    return msgspec.to_builtins(job)


def _stages(host: PluginHost) -> tuple[Stage, Stage]:
    return host.create("stage", "data.load"), host.create("stage", "data.tokenize")


def test_load_then_tokenize(host: PluginHost, tok: ByteTokenizer) -> None:
    load, tokenize = _stages(host)
    backend = _Backend(tok)
    payload = _job("sample:chat", validation_ratio=0.1)
    ctx = Context(payload, backend)
    assert isinstance(ctx, StageContext)
    loaded = dict(load.run(ctx) or {})
    rows = load_rows(DatasetSpec(uri="sample:chat"))
    assert loaded["rows"] == rows
    assert len(loaded["validation_rows"]) == 18
    assert len(loaded["train_rows"]) + len(loaded["validation_rows"]) == len(rows)
    assert loaded["dataset_hash"] == dataset_hash(rows)
    assert loaded["skipped"] == 0
    assert loaded["source"] == "sample:chat"
    assert ctx.events[0][0] == "data.loaded"

    again = dict(load.run(Context(payload, backend)) or {})
    assert again["validation_rows"] == loaded["validation_rows"]  # same seed, same split
    other_seed = dict(payload, learning_config={"seed": 7})
    assert (
        dict(load.run(Context(other_seed, backend)) or {})["validation_rows"]
        != loaded["validation_rows"]
    )

    tctx = Context(payload, backend, {"load": loaded})
    out = dict(tokenize.run(tctx) or {})
    assert backend.asked == [ModelSpec(name="tiny", max_seq_len=256)]
    assert set(out) >= {"train", "validation", "tokens", "template", "template_hash"}
    assert out["template"] == "plain"  # the tokenizer has no chat_template
    assert len(out["train"]) == len(loaded["train_rows"])
    assert len(out["validation"]) == len(loaded["validation_rows"])
    assert out["tokens"] == sum(len(d.model_input) for d in out["train"])
    assert out["truncated"] == 0
    assert out["max_length"] == 256
    assert out["template_hash"].startswith("sha256:")
    assert tctx.events[-1][0] == "data.tokenized"

    short = _job("sample:chat", max_seq_len=48)
    cut = dict(tokenize.run(Context(short, backend, {"load": loaded})) or {})
    assert all(len(d.model_input) <= 48 for d in cut["train"] + cut["validation"])
    assert cut["truncated"] > 0
    assert cut["dropped"] > 0  # prompts longer than 48 tokens leave no reply to learn
    assert len(cut["train"]) + cut["dropped"] >= len(loaded["train_rows"])


def test_tokenize_uses_the_tokenizers_template_and_spec_overrides(
    host: PluginHost, tok_factory: Callable[..., ByteTokenizer]
) -> None:
    load, tokenize = _stages(host)
    backend = _Backend(tok_factory(chat_template=CHATML_JINJA))
    payload = _job("sample:gsm8k")
    loaded = dict(load.run(Context(payload, backend)) or {})
    out = dict(tokenize.run(Context(payload, backend, {"data.load": loaded})) or {})
    assert out["template"] == "chat_template"
    packed_payload = _job(
        "sample:gsm8k", template="llama3", packing=True, max_length=64, train_on="all"
    )
    # Without a data.load input the stage reads the data itself.
    packed = dict(tokenize.run(Context(packed_payload, backend)) or {})
    assert packed["template"] == "llama3"
    assert packed["packed"] is True
    assert all(len(d.model_input) == 64 for d in packed["train"][:-1])
    assert all(set(d.loss_fn_inputs.weights or []) == {1.0} for d in packed["train"])


def test_stage_errors(
    host: PluginHost, tok: ByteTokenizer, write_jsonl: Callable[..., Path]
) -> None:
    load, tokenize = _stages(host)
    backend = _Backend(tok)
    with pytest.raises(ConfigError, match="need a training job"):
        load.run(Context({"not": "a job"}, backend))
    with pytest.raises(Cancelled):
        load.run(Context(_job("sample:chat"), backend, cancelled=True))
    path = write_jsonl([{"messages": [{"role": "user", "content": "only a question"}]}])
    payload = _job(str(path))
    loaded = dict(load.run(Context(payload, backend)) or {})
    with pytest.raises(ConfigError, match="no training example has a token to learn from"):
        tokenize.run(Context(payload, backend, {"load": loaded}))
    bad = write_jsonl([{"text": "ok"}, "broken"], name="bad.jsonl")
    skipped = dict(load.run(Context(_job(str(bad), on_error="skip"), backend)) or {})
    assert skipped["skipped"] == 1
    assert ":2: malformed JSON" in skipped["skip_reasons"][0]


def test_load_falls_back_to_the_experiments_dataset(host: PluginHost, tok: ByteTokenizer) -> None:
    load, _ = _stages(host)
    experiment = Experiment(id="exp", dataset=DatasetSpec(uri="sample:mmlu"))
    out = dict(load.run(Context(None, _Backend(tok), experiment=experiment)) or {})
    assert len(out["rows"]) == 48


def test_tokenize_gives_held_out_prompts_only_when_a_sampled_metric_asks(
    host: PluginHost, tok: ByteTokenizer
) -> None:
    load, tokenize = _stages(host)
    backend = _Backend(tok)
    plain = _job("sample:dates", validation_ratio=0.1)
    loaded = dict(load.run(Context(plain, backend)) or {})
    assert "validation_prompts" not in dict(tokenize.run(Context(plain, backend, {"load": loaded})))
    scored = dict(plain, validation_spec={"metrics": ["loss", "exact_match"], "max_samples": 20})
    out = dict(tokenize.run(Context(scored, backend, {"load": loaded})) or {})
    prompts = out["validation_prompts"]
    held_out = loaded["validation_rows"][:20]
    assert len(prompts) == 20
    train_inputs = {r["messages"][0]["content"] for r in loaded["train_rows"]}
    datums = out["validation"][:20]
    for prompt, row, datum in zip(prompts, held_out, datums, strict=True):
        question, answer = (m["content"] for m in row["messages"])
        assert prompt["input"] == question
        assert question not in train_inputs
        assert prompt["reference"] == answer
        # The prompt is the training rendering cut where the answer starts.
        n = len(prompt["tokens"])
        assert datum.model_input[:n] == prompt["tokens"]
        assert tok.decode(datum.model_input[n:]).startswith(answer)


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_tokenize_renders_preference_pairs_for_a_dpo_job(
    host: PluginHost, tok: ByteTokenizer, tmp_path: Path, fmt: str
) -> None:
    """workflow = "dpo": each row becomes (chosen, rejected) Datums in a row, the weights
    on the completion only, from a file with the usual prompt/chosen/rejected columns."""
    rows = [
        {"prompt": f"What is {i} plus 1?", "chosen": f"It is {i + 1}.", "rejected": "No idea."}
        for i in range(6)
    ]
    path = tmp_path / f"prefs.{fmt}"
    if fmt == "jsonl":
        path.write_text("".join(msgspec.json.encode(r).decode() + "\n" for r in rows))
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(rows), path)
    load, tokenize = _stages(host)
    payload = dict(_job(str(path), validation_ratio=0.34), workflow="dpo")
    backend = _Backend(tok)
    loaded = dict(load.run(Context(payload, backend)) or {})
    out = dict(tokenize.run(Context(payload, backend, {"load": loaded})) or {})
    assert out["group"] == 2
    assert len(out["train"]) == 2 * len(loaded["train_rows"])
    assert len(out["validation"]) == 2 * len(loaded["validation_rows"]) == 4
    for chosen, rejected in zip(out["train"][0::2], out["train"][1::2], strict=True):
        text_c = tok.decode(chosen.model_input)
        text_r = tok.decode(rejected.model_input)
        weighted_c = tok.decode(
            [
                t
                for t, w in zip(
                    chosen.loss_fn_inputs.target_tokens,
                    chosen.loss_fn_inputs.weights or [],
                    strict=True,
                )
                if w
            ]
        )
        assert "plus 1?" in text_c
        assert "plus 1?" in text_r
        assert "No idea." in tok.decode(rejected.loss_fn_inputs.target_tokens)
        assert "plus" not in weighted_c  # the prompt is not trained on
        assert "It is" in weighted_c
    assert out["tokens"] == sum(len(d.model_input) for d in out["train"])
    # The same file for an SFT job trains on the chosen side only: one Datum a row.
    sft = dict(
        tokenize.run(Context(_job(str(path), validation_ratio=0.34), backend, {"load": loaded}))
        or {}
    )
    assert "group" not in sft
    assert len(sft["train"]) == len(loaded["train_rows"])


def test_tokenize_gives_prompts_and_answers_for_an_rl_job(
    host: PluginHost, tok: ByteTokenizer
) -> None:
    """workflow = "rl": no Datums, the prompts (ending in the assistant's turn) and the
    answers the reward scores against, from the shipped GSM8K sample; a length limit that
    leaves no room for rl.max_tokens is refused."""
    load, tokenize = _stages(host)
    payload = dict(_job("sample:gsm8k", validation_ratio=0.2), workflow="rl")
    backend = _Backend(tok)
    loaded = dict(load.run(Context(payload, backend)) or {})
    out = dict(tokenize.run(Context(payload, backend, {"load": loaded})) or {})
    assert out["train"] == []
    prompts = out["prompts"]
    assert len(prompts) == len(loaded["train_rows"])
    assert len(out["validation_prompts"]) == len(loaded["validation_rows"])
    first = prompts[0]
    assert first["reference"].rstrip().split("#### ")[-1].isdigit()
    assert first["input"] in tok.decode(first["tokens"])
    assert first["reference"] not in tok.decode(first["tokens"])
    assert out["tokens"] == sum(len(p["tokens"]) for p in prompts)
    tight = dict(_job("sample:gsm8k", max_seq_len=40), workflow="rl", rl={"max_tokens": 39})
    with pytest.raises(ConfigError, match="leaves no room for a prompt"):
        tokenize.run(Context(tight, backend, {"load": loaded}))

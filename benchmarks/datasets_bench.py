# (plugins are installed editable through import hooks, which pyright cannot follow)
"""Render + tokenize + batch 100k chat rows: crucible-datasets vs Hugging Face `datasets.map`.

Both pipelines read the same file, render the same ChatML layout with
assistant-only loss weights, tokenize with the same byte-level
`tokenizers.Tokenizer` (one ``encode`` per run of equal weight, so the token
sequences are identical; checked before timing), shuffle with a seed, and
yield batches of 8 backend ``Datum`` s padded to the longest. The HF pipeline
is the idiomatic one: ``load_dataset("json")`` -> ``map(batched=True)`` ->
``shuffle`` -> ``iter(batch_size=8)``, with a fresh cache directory so its
Arrow cache is written as on a first run.

Also timed, when crucible-local is installed: the ``crucible plan`` path
(``data.load`` + ``data.tokenize`` outputs) with crucible-local's byte
tokenizer and its own chat template, whose target is < 10 s for 100k rows.

Run: .venv/bin/python -m benchmarks.datasets_bench [--rows 100000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, cast

from crucible_core.ir.backend import Datum, LossFnInputs
from crucible_core.ir.training import DatasetSpec, ModelSpec, TrainingJob

BATCH = 8
SEED = 0
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
WORDS = [
    *("river", "garden", "pencil", "window", "planet", "basket", "candle", "orange", "bridge"),
    *("forest", "ladder", "monkey", "rocket", "silver", "tunnel", "cloud", "stone", "lamp"),
    *("harbor", "meadow", "violin", "copper", "lantern", "puzzle", "summit", "engine"),
    *("blanket", "mirror", "orchard", "falcon"),
]


def make_rows(n: int, seed: int) -> Iterator[dict[str, Any]]:
    """Varied short chat conversations (about 230 bytes of JSON each)."""
    rng = random.Random(seed)
    for i in range(n):
        a, b = rng.choice(WORDS), rng.choice(WORDS)
        x, y = rng.randint(1, 999), rng.randint(1, 999)
        kind = i % 3
        if kind == 0:
            q, r = f"What is {x} plus {y}?", f"{x} plus {y} is {x + y}."
        elif kind == 1:
            q = f"Write a sentence with the words {a} and {b}."
            r = f"The {a} by the {b} was quiet in the morning light, {x} steps from home."
        else:
            q, r = f"Spell {a} backwards.", f"Backwards, {a} is {a[::-1]}."
        messages = [{"role": "user", "content": q}, {"role": "assistant", "content": r}]
        if i % 10 == 0:
            messages.insert(0, {"role": "system", "content": "Answer briefly."})
        yield {"messages": messages}


def bpe_tokenizer(path: Path, vocab_size: int = 4096) -> Any:
    """A byte-level BPE (GPT-2 style pre-tokenisation) trained on the benchmark's own file."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )

    def texts() -> Iterator[str]:
        with path.open(encoding="utf-8") as f:
            for line in f:
                for m in json.loads(line)["messages"]:
                    yield m["content"]

    tok.train_from_iterator(texts(), trainer=trainer)
    return tok


def byte_tokenizer() -> Any:
    """Bytes as tokens, no merges (the layout of crucible-local's tokenizer)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    tok = Tokenizer(models.BPE(vocab={ch: i for i, ch in enumerate(alphabet)}, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(SPECIALS)
    return tok


class RawTokenizer:
    """The Tokenizer contract over a ``tokenizers.Tokenizer`` (exposed as ``backend_tokenizer``)."""

    def __init__(self, raw: Any) -> None:
        self.backend_tokenizer = raw
        self.name = "bench-bytes"
        self.vocab_size = raw.get_vocab_size()
        self.eos_token_id = raw.token_to_id("<|endoftext|>")
        self.chat_template = None

    def encode(self, text: str, *, add_special_tokens: bool = False) -> list[int]:
        return self.backend_tokenizer.encode(text, add_special_tokens=add_special_tokens).ids

    def decode(self, ids: Sequence[int]) -> str:
        return self.backend_tokenizer.decode(list(ids), skip_special_tokens=False)


# -- the two pipelines -----------------------------------------------------------------------


def crucible_pipeline(
    path: Path, tok: RawTokenizer, *, shuffle: bool = True
) -> Iterator[list[Datum]]:
    import crucible_datasets as cd

    spec = DatasetSpec(uri=str(path), template="chatml")
    rows = cd.load_rows(spec)
    datums = cd.render_datums(rows, tok, spec)
    yield from cd.iter_batches(datums, BATCH, seed=SEED, shuffle=shuffle, pad_to="longest")


def _chatml_runs(messages: list[dict[str, str]]) -> list[tuple[str, float]]:
    runs: list[tuple[str, float]] = []
    for m in messages:
        a = 1.0 if m["role"] == "assistant" else 0.0
        for text, w in (
            (f"<|im_start|>{m['role']}\n", 0.0),
            (m["content"] + "<|im_end|>", a),
            ("\n", 0.0),
        ):
            if runs and runs[-1][1] == w:
                runs[-1] = (runs[-1][0] + text, w)
            else:
                runs.append((text, w))
    return runs


def hf_pipeline(
    path: Path, raw: Any, cache: Path, *, shuffle: bool = True
) -> Iterator[list[Datum]]:
    import datasets

    encode = raw.encode

    def tokenize(batch: dict[str, list[Any]]) -> dict[str, list[Any]]:
        ids_out: list[list[int]] = []
        weights_out: list[list[float]] = []
        for messages in batch["messages"]:
            ids: list[int] = []
            weights: list[float] = []
            for text, w in _chatml_runs(messages):
                piece = encode(text, add_special_tokens=False).ids
                ids.extend(piece)
                weights.extend([w] * len(piece))
            ids_out.append(ids)
            weights_out.append(weights)
        return {"input_ids": ids_out, "weights": weights_out}

    ds = datasets.load_dataset("json", data_files=str(path), split="train", cache_dir=str(cache))
    ds = ds.map(tokenize, batched=True, batch_size=1000, remove_columns=["messages"])
    if shuffle:
        ds = ds.shuffle(seed=SEED)
    for raw_batch in ds.iter(batch_size=BATCH):
        batch = cast(dict[str, list[Any]], raw_batch)
        ids_b, w_b = batch["input_ids"], batch["weights"]
        longest = max(len(x) for x in ids_b) - 1
        out: list[Datum] = []
        for ids, weights in zip(ids_b, w_b, strict=True):
            fill = longest - (len(ids) - 1)
            out.append(
                Datum(
                    model_input=ids[:-1] + [0] * fill,
                    loss_fn_inputs=LossFnInputs(
                        target_tokens=ids[1:] + [0] * fill, weights=weights[1:] + [0.0] * fill
                    ),
                )
            )
        yield out


def timed(fn: Callable[[], Iterator[list[Datum]]]) -> tuple[float, float, int]:
    """(wall seconds, CPU seconds, datums) to drain a pipeline."""
    wall, cpu = time.perf_counter(), time.process_time()
    count = sum(len(b) for b in fn())
    return time.perf_counter() - wall, time.process_time() - cpu, count


def plan_path(path: Path) -> tuple[float, float, int] | None:
    """data.load + data.tokenize with crucible-local's tokenizer: the `crucible plan` path."""
    try:
        from crucible_local.tokenizer import (
            BYTE_TOKENIZER_NAME,
            LocalTokenizer,
            build_byte_tokenizer,
        )
    except ImportError:
        return None
    from crucible_datasets.stages import load_outputs, tokenize_outputs

    tok = LocalTokenizer(build_byte_tokenizer(), name=BYTE_TOKENIZER_NAME)
    job = TrainingJob(
        model_spec=ModelSpec(name="tiny-llama", max_seq_len=256),
        dataset_spec=DatasetSpec(uri=str(path), validation_ratio=0.1),
    )
    wall, cpu = time.perf_counter(), time.process_time()
    loaded = load_outputs(job.dataset_spec, 0)
    out = tokenize_outputs(job, tok, loaded["train_rows"], loaded["validation_rows"])
    return time.perf_counter() - wall, time.process_time() - cpu, out["tokens"]


def main() -> None:
    parser = argparse.ArgumentParser(description="crucible-datasets vs HF datasets.map")
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds (best is kept)")
    args = parser.parse_args()
    import datasets

    datasets.disable_progress_bars()
    tmp = Path(tempfile.mkdtemp(prefix="crucible-datasets-bench-"))
    try:
        path = tmp / "chat.jsonl"
        with path.open("w", encoding="utf-8") as f:
            for row in make_rows(args.rows, SEED):
                f.write(json.dumps(row) + "\n")
        size_mb = path.stat().st_size / 1e6
        print(
            f"{args.rows} rows, {size_mb:.1f} MB JSONL; batches of {BATCH}, ChatML, "
            "assistant-only weights"
        )
        print(
            f"{'tokenizer':22} {'pipeline':18} {'wall best':>9} {'wall med':>9} {'cpu best':>9} "
            f"{'rows/s (best wall)':>19}"
        )
        for label, raw in (
            ("BPE 4k, trained here", bpe_tokenizer(path)),
            ("bytes, no merges", byte_tokenizer()),
        ):
            tok = RawTokenizer(raw)
            # Same tokens and weights from both pipelines (unshuffled), before any timing.
            small = tmp / "check.jsonl"
            with path.open(encoding="utf-8") as f, small.open("w", encoding="utf-8") as out:
                out.writelines(next(f) for _ in range(min(2000, args.rows)))
            ours = [d for b in crucible_pipeline(small, tok, shuffle=False) for d in b]
            theirs = [
                d for b in hf_pipeline(small, raw, tmp / "hf-check", shuffle=False) for d in b
            ]
            assert ours == theirs, "the two pipelines disagree"
            runs: dict[str, list[tuple[float, float]]] = {
                "crucible-datasets": [],
                "HF load+map+iter": [],
            }
            for _ in range(args.rounds):  # alternate, so both see the same machine load
                wall, cpu, n = timed(lambda tok=tok: crucible_pipeline(path, tok))
                assert n == args.rows
                runs["crucible-datasets"].append((wall, cpu))
                wall, cpu, n = timed(lambda raw=raw: hf_pipeline(path, raw, tmp / "hf-cache"))
                shutil.rmtree(tmp / "hf-cache", ignore_errors=True)
                assert n == args.rows
                runs["HF load+map+iter"].append((wall, cpu))
            best: dict[str, tuple[float, float, float]] = {}
            for name, samples in runs.items():
                walls = [w for w, _ in samples]
                best[name] = (min(walls), statistics.median(walls), min(c for _, c in samples))
                bw, mw, bc = best[name]
                print(f"{label:22} {name:18} {bw:9.2f} {mw:9.2f} {bc:9.2f} {args.rows / bw:19.0f}")
            (cw, cm, cc), (hw, hm, hc) = best["crucible-datasets"], best["HF load+map+iter"]
            print(
                f"{label:22} ratio crucible/HF rows/s: {hw / cw:.2f}x best wall, "
                f"{hm / cm:.2f}x median wall, {hc / cc:.2f}x best cpu"
            )
        plan = plan_path(path)
        if plan is None:
            print("crucible plan path: skipped (crucible-local not installed)")
        else:
            wall, cpu, tokens = plan
            verdict = "met" if wall < 10 else "NOT met"
            print(
                f"crucible plan path (data.load + data.tokenize, crucible-local byte tokenizer and "
                f"chat_template): {wall:.2f} s wall, {cpu:.2f} s cpu, {tokens} tokens; "
                f"target < 10 s: {verdict}"
            )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()

# (plugins are installed editable through import hooks, which pyright cannot follow)
"""Stream a 1 GB chat JSONL through read, render, tokenize, batch: peak RSS must stay < 300 MB.

The file is generated into a temporary directory (and deleted afterwards).
Each measurement runs in a fresh child process whose peak resident set size
(``ru_maxrss`` from ``wait4``) is the figure reported:

1. ``stream_batches``: the training input path for data larger than memory
   (plain template, max_length 512, a 10,000-datum shuffle buffer, batches of 8);
2. ``crucible datasets hash FILE``: the content hash, streamed.

The tokenizer is a pure-Python byte tokenizer (``list(text.encode())``) so
that the run measures the pipeline's memory, not a tokenizer's speed.

Run: .venv/bin/python -m benchmarks.datasets_stream_bench [--gb 1.0]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

LIMIT_MB = 300
WORDS = [
    *("river", "garden", "pencil", "window", "planet", "basket", "candle", "orange", "bridge"),
    *("forest", "ladder", "monkey", "rocket", "silver", "tunnel", "cloud", "stone", "lamp"),
    *("harbor", "meadow", "violin", "copper", "lantern", "puzzle", "summit", "engine"),
]


class BytesTokenizer:
    """Token i < 256 is byte i; 256 is EOS. Satisfies the Tokenizer contract."""

    name = "bytes"
    vocab_size = 257
    eos_token_id = 256
    chat_template = None

    def encode(self, text: str, *, add_special_tokens: bool = False) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids: Sequence[int]) -> str:
        return bytes(i for i in ids if i < 256).decode("utf-8", "replace")


def write_file(path: Path, size: int, seed: int = 0) -> int:
    """Write chat rows (about 600 bytes each) until the file holds ``size`` bytes; return rows."""
    rng = random.Random(seed)
    rows = 0
    written = 0
    with path.open("w", encoding="utf-8") as f:
        while written < size:
            chunk: list[str] = []
            for _ in range(1000):
                q = " ".join(rng.choices(WORDS, k=20))
                a = " ".join(rng.choices(WORDS, k=60))
                row = {
                    "messages": [
                        {"role": "user", "content": f"Tell me about {q}?"},
                        {"role": "assistant", "content": f"Here is what I know: {a}."},
                    ]
                }
                chunk.append(json.dumps(row))
            text = "\n".join(chunk) + "\n"
            f.write(text)
            written += len(text.encode("utf-8"))
            rows += len(chunk)
    return rows


def child_stream(path: str) -> None:
    from crucible_datasets import stream_batches

    from crucible_core.ir.training import DatasetSpec

    spec = DatasetSpec(uri=path, template="plain", max_length=512)
    cpu = time.process_time()
    batches = datums = tokens = 0
    for batch in stream_batches(spec, BytesTokenizer(), 8, seed=0, shuffle_buffer=10_000):
        batches += 1
        datums += len(batch)
        tokens += sum(len(d.model_input) for d in batch)
    cpu = time.process_time() - cpu
    print(json.dumps({"batches": batches, "datums": datums, "tokens": tokens, "cpu": cpu}))


def run_child(argv: list[str]) -> tuple[float, float, str]:
    """(peak RSS in MB, wall seconds, stdout) of a child process."""
    start = time.perf_counter()
    with tempfile.TemporaryFile("w+") as out_f, tempfile.TemporaryFile("w+") as err_f:
        # Popen (not run): wait4 gives the child's own resource usage, peak RSS included.
        proc = subprocess.Popen(argv, stdout=out_f, stderr=err_f, text=True)
        _, status, usage = os.wait4(proc.pid, 0)
        out_f.seek(0)
        err_f.seek(0)
        out, err = out_f.read(), err_f.read()
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"child failed ({proc.returncode}): {' '.join(argv)}\n{err}")
    return usage.ru_maxrss / 1024, time.perf_counter() - start, out


def main() -> None:
    parser = argparse.ArgumentParser(description="streaming a large JSONL: peak RSS")
    parser.add_argument("--gb", type=float, default=1.0, help="file size in GiB (default 1)")
    parser.add_argument("--child", metavar="FILE", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child_stream(args.child)
        return
    tmp = Path(tempfile.mkdtemp(prefix="crucible-stream-bench-"))
    try:
        path = tmp / "big.jsonl"
        t0 = time.perf_counter()
        rows = write_file(path, int(args.gb * (1 << 30)))
        size = path.stat().st_size
        print(
            f"generated {size / (1 << 30):.2f} GiB, {rows} rows in {time.perf_counter() - t0:.0f} s"
        )
        baseline, _, _ = run_child(
            [sys.executable, "-c", "import crucible_datasets.batching, crucible_datasets.datums"]
        )
        rss, wall, out = run_child([sys.executable, __file__, "--child", str(path)])
        stats = json.loads(out)
        assert stats["datums"] == rows, stats
        print(f"{'measurement':40} {'peak RSS MB':>11} {'wall s':>7} {'MB/s':>6}")
        print(f"{'python + crucible_datasets imported':40} {baseline:11.0f}")
        print(
            f"{'stream_batches (render+tokenize+batch)':40} {rss:11.0f} {wall:7.0f} "
            f"{size / 1e6 / wall:6.1f}   {stats['datums']} datums, {stats['tokens']} tokens, "
            f"{stats['cpu']:.0f} s cpu"
        )
        exe = shutil.which("crucible", path=os.path.dirname(sys.executable)) or "crucible"
        hash_rss, hash_wall, digest = run_child([exe, "datasets", "hash", str(path)])
        print(
            f"{'crucible datasets hash':40} {hash_rss:11.0f} {hash_wall:7.0f} "
            f"{size / 1e6 / hash_wall:6.1f}   {digest.strip()[:23]}..."
        )
        for name, value in (("stream_batches", rss), ("datasets hash", hash_rss)):
            verdict = "met" if value < LIMIT_MB else "NOT met"
            print(f"target peak RSS < {LIMIT_MB} MB for {name}: {verdict}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()

"""`crucible export` cost: export + verify wall time per format, and the merged export's memory.

Trains a run for two steps on a Llama-style model written to disk with
crucible-local's byte tokenizer (``--hidden``/``--layers`` set its size), then
exports it in every format, each once with ``--verify`` in its own process,
and reports each format's wall time. The merged export is also run once
without ``--verify`` in a process that reports its own peak RSS, compared
with the model's float32 size (the target is at most 2.5x; the process
itself, with torch imported, costs ~200 MB that dominate for small models,
so the ratio means something from ~100M parameters up).

    .venv/bin/python -m benchmarks.export_bench                       # defaults below
    .venv/bin/python -m benchmarks.export_bench --hidden 768 --layers 12 --json
    .venv/bin/python -m benchmarks.export_bench --hidden 1024 --layers 16 --rss-only

It also reports the RSS of the process with torch and the CLI imported
(before anything is loaded) and what the export adds on top of it (the other
libraries it imports, then the weights), per float32 byte.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
FORMATS = ("peft", "merged", "safetensors-full", "onnx")
#: Runs the CLI in-process and reports its peak RSS, and first the RSS with torch and the
#: CLI imported (what any export imports before it reads a file): the fixed baseline that
#: dominates the ratio for small models. Nothing else is imported here, so what the
#: export itself imports (transformers, peft) counts in what it adds. The peak is the
#: process's own VmHWM: ``ru_maxrss`` would not do, since Linux carries the parent's peak
#: over an exec, and this script's own process holds the model it built.
_RSS_WRAPPER = (
    "import os, sys\n"
    "import torch\n"
    "from crucible_core.cli.main import main\n"
    "page = os.sysconf('SC_PAGE_SIZE')\n"
    "base = int(open('/proc/self/statm').read().split()[1]) * page // 1024\n"
    "print('BASE_RSS_KB', base, file=sys.stderr)\n"
    "code = main(sys.argv[1:])\n"
    "hwm = next(l for l in open('/proc/self/status') if l.startswith('VmHWM:'))\n"
    "print('PEAK_RSS_KB', int(hwm.split()[1]), file=sys.stderr)\n"
    "sys.exit(code)\n"
)


def _args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n", 1)[0])
    p.add_argument("--hidden", type=int, default=512)
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--json", action="store_true", help="one JSON object on stdout")
    p.add_argument(
        "--rss-only",
        action="store_true",
        help="measure only the merged export's memory (skip export + verify per format)",
    )
    return p.parse_args(argv)


def _job(path: Path, model_dir: Path) -> Path:
    data = ROOT / "examples" / "data" / "chat.jsonl"
    path.write_text(
        f"""backend = "local"
[model_spec]
name = "bench-llama"
path = "{model_dir}"
max_seq_len = 128
[adapter_config]
kind = "lora"
rank = 8
target_modules = ["all-linear"]
[learning_config]
batch_size = 2
max_steps = 2
[dataset_spec]
uri = "{data}"
[checkpoint_policy]
save_every = 2
keep_last = 1
"""
    )
    return path


def _run(env: dict[str, str], *argv: str, wrapper: bool = False) -> tuple[float, str]:
    cmd = (
        [sys.executable, "-c", _RSS_WRAPPER]
        if wrapper
        else [sys.executable, "-m", "crucible_core.cli.main"]
    )
    start = time.perf_counter()
    proc = subprocess.run(
        [*cmd, *argv], cwd=ROOT, env=env, capture_output=True, text=True, check=False
    )
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed ({proc.returncode}):\n{proc.stderr}")
    return elapsed, proc.stderr


def main(argv: list[str] | None = None) -> int:
    args = _args(argv)
    from crucible_local.models import write_tiny_model_dir

    with tempfile.TemporaryDirectory(prefix="crucible-export-bench-") as tmp:
        root = Path(tmp)
        model_dir = write_tiny_model_dir(
            root / "model",
            options={
                "hidden_size": args.hidden,
                "num_layers": args.layers,
                "intermediate_size": args.hidden * 4,
                "num_heads": 8,
            },
        )
        fp32_bytes = sum(f.stat().st_size for f in model_dir.glob("*.safetensors"))
        env = {**os.environ, "CRUCIBLE_HOME": str(root / "home")}
        _run(
            env,
            "train",
            str(_job(root / "job.toml", model_dir)),
            "--job-id",
            "bench",
            "--no-progress",
        )
        result: dict[str, Any] = {"model_fp32_mb": round(fp32_bytes / 1e6, 1), "formats": {}}
        for fmt in () if args.rss_only else FORMATS:
            out = root / f"out-{fmt}"
            elapsed, _ = _run(
                env, "export", "bench", "--format", fmt, "--out", str(out), "--verify"
            )
            result["formats"][fmt] = {"export_and_verify_s": round(elapsed, 2)}
        elapsed, stderr = _run(
            env, "export", "bench", "--format", "merged", "--out", str(root / "rss"), wrapper=True
        )
        peak_kb = int(stderr.rsplit("PEAK_RSS_KB", 1)[1].split()[0])
        base_kb = int(stderr.rsplit("BASE_RSS_KB", 1)[1].split()[0])
        result["merged_export_s"] = round(elapsed, 2)
        result["merged_peak_rss_mb"] = round(peak_kb / 1e3, 1)
        result["merged_peak_rss_over_fp32_size"] = round(peak_kb * 1e3 / fp32_bytes, 2)
        result["baseline_rss_mb"] = round(base_kb / 1e3, 1)
        result["export_rss_over_fp32_size"] = round((peak_kb - base_kb) * 1e3 / fp32_bytes, 2)
    if args.json:
        print(json.dumps(result))
    else:
        print(f"model            {result['model_fp32_mb']} MB in float32")
        for fmt, row in result["formats"].items():
            print(f"{fmt:<16} export + verify {row['export_and_verify_s']} s")
        print(
            f"merged export    {result['merged_export_s']} s, peak RSS "
            f"{result['merged_peak_rss_mb']} MB = {result['merged_peak_rss_over_fp32_size']}x "
            "the float32 model"
        )
        print(
            f"of which          {result['baseline_rss_mb']} MB are the process with torch and "
            f"the CLI imported; the export adds {result['export_rss_over_fp32_size']}x"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())

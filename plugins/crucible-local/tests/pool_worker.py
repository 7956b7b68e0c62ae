"""A separate process for test_pool's memory measurement (fresh RSS, nothing cached).

Usage: ``python pool_worker.py MODE OPTIONS_JSON ADAPTER_DIR...``. ``MODE`` is ``pool``
(one ``local-adapter`` backend per adapter, sharing one pool) or ``separate`` (one
``LocalBackend.load_sampler`` per adapter, the way to serve several checkpoints
without a pool). Serves one greedy request per adapter, keeps everything alive, and
prints JSON: RSS growth in bytes, base models alive, bytes of one base's parameters.
"""

from __future__ import annotations

import gc
import json
import sys

import torch


def rss() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def main() -> None:
    torch.set_num_threads(1)
    mode, options, dirs = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3:]
    from crucible_local.backend import LocalBackend
    from crucible_local.pool import AdapterBackend
    from peft import PeftModel  # noqa: F401  (imported before the baseline, like torch)
    from transformers import LlamaForCausalLM

    from crucible_core.ir.backend import CheckpointRef, Prompt, SamplingParams
    from crucible_core.ir.training import ModelSpec

    prompt, params = Prompt(text="Hello"), SamplingParams(max_tokens=4, temperature=0.0)
    gc.collect()
    before = rss()
    keep: list[object] = []
    if mode == "pool":
        for d in dirs:
            b = AdapterBackend(adapter=d, model_options=options, max_loaded=2)
            b.complete(prompt, params)
            keep.append(b)
    else:
        local = LocalBackend(num_threads=1)
        for d in dirs:
            s = local.load_sampler(
                ModelSpec(name="tiny-llama", options=options), CheckpointRef(uri=d)
            )
            s.generate(prompt, params)
            keep.append(s)
    gc.collect()
    after = rss()
    bases = [o for o in gc.get_objects() if isinstance(o, LlamaForCausalLM)]
    base_bytes = sum(
        p.numel() * p.element_size() for n, p in bases[0].named_parameters() if "lora" not in n
    )
    print(json.dumps({"rss_growth": after - before, "bases": len(bases), "base_bytes": base_bytes}))


if __name__ == "__main__":
    main()

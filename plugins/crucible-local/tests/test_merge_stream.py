"""The streaming ``merged`` export (crucible_local.merge_stream) against peft's own merge.

Real parts only: a small Llama written with ``save_pretrained`` (tests/hfdir.py),
a real peft LoRA with non-zero ``B`` saved with ``save_pretrained``, and
``merge_and_unload`` as the reference. The merge must be bit-identical, the
configs the same as ``save_pretrained`` of the merged model writes, and the
export must not import peft or transformers' modeling code (which is what
made a merged export cost ~150 MB before any weight existed).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from .hfdir import write_byo_model

_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def _adapter(base: Path, out: Path, **lora: Any) -> Any:
    """A LoRA on ``base`` with random (non-zero) A and B, saved to ``out``; the peft model."""
    import torch
    from crucible_local._hf import peft_quiet
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32)
    torch.manual_seed(1)
    config = LoraConfig(
        r=4, lora_alpha=12, target_modules=_TARGETS, init_lora_weights=False, **lora
    )
    with peft_quiet():
        peft_model = get_peft_model(model, config)
        peft_model.save_pretrained(str(out))
    return peft_model


def _merge(peft_model: Any) -> Any:
    from crucible_local._hf import peft_quiet

    with peft_quiet():
        return peft_model.merge_and_unload()


def _read_shards(directory: Path) -> dict[str, Any]:
    from safetensors.torch import load_file

    index = json.loads((directory / "model.safetensors.index.json").read_text())
    tensors: dict[str, Any] = {}
    for shard in sorted(set(index["weight_map"].values())):
        tensors.update(load_file(str(directory / shard)))
    assert set(tensors) == set(index["weight_map"])
    return tensors


@pytest.mark.parametrize(
    ("base_dtype", "rslora"), [("float32", False), ("bfloat16", False), ("float32", True)]
)
def test_streaming_merge_is_bit_identical_to_merge_and_unload(
    tmp_path: Path, base_dtype: str, rslora: bool
) -> None:
    import torch
    from crucible_local.export import _write_float32_configs  # pyright: ignore[reportPrivateUsage]
    from crucible_local.merge_stream import plan_streaming_merge, write_merged_shards
    from transformers import AutoModelForCausalLM

    base = write_byo_model(tmp_path / "base")
    if base_dtype == "bfloat16":
        half = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.bfloat16)
        half.save_pretrained(str(base))
    peft_model = _adapter(base, tmp_path / "adapter", use_rslora=rslora)
    plan = plan_streaming_merge(base, tmp_path / "adapter")
    assert plan is not None
    assert len(plan.lora) == 3 * len(_TARGETS)
    streamed = tmp_path / "streamed"
    streamed.mkdir()
    # Small shards: several of them, as a large model would get.
    names = write_merged_shards(plan, streamed, shard_bytes=40_000)
    assert len(names) > 2
    _write_float32_configs(base, streamed, str(base))

    reference = tmp_path / "reference"
    merged = _merge(peft_model)
    merged.config.name_or_path = str(base)
    merged.save_pretrained(str(reference), safe_serialization=True)
    merged.generation_config.save_pretrained(str(reference))
    expected = {k: v.detach() for k, v in merged.state_dict().items()}
    got = _read_shards(streamed)
    assert set(got) == set(expected)
    for name, tensor in expected.items():
        assert got[name].dtype == torch.float32, name
        assert torch.equal(got[name], tensor), name
    base_q = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32).state_dict()
    q = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(got[q], base_q[q])  # the delta was really added
    for name in ("config.json", "generation_config.json"):
        assert json.loads((streamed / name).read_text()) == json.loads(
            (reference / name).read_text()
        ), name
    # And it loads with the stock class alone, to the same logits.
    ids = torch.tensor([[1, 5, 9, 20]])
    loaded = AutoModelForCausalLM.from_pretrained(str(streamed))
    assert torch.equal(loaded(input_ids=ids).logits, merged(input_ids=ids).logits)


def test_plan_declines_what_only_peft_can_merge_exactly(tmp_path: Path) -> None:
    from crucible_local.merge_stream import plan_streaming_merge

    base = write_byo_model(tmp_path / "base")
    _adapter(base, tmp_path / "dora", use_dora=True)
    assert plan_streaming_merge(base, tmp_path / "dora") is None
    _adapter(base, tmp_path / "saved-head", modules_to_save=["lm_head"])
    assert plan_streaming_merge(base, tmp_path / "saved-head") is None
    _adapter(base, tmp_path / "plain")
    assert plan_streaming_merge(base, tmp_path / "plain") is not None
    bin_only = tmp_path / "bin-only"
    bin_only.mkdir()
    (bin_only / "config.json").write_text((base / "config.json").read_text())
    assert plan_streaming_merge(bin_only, tmp_path / "plain") is None


_EXPORT_CHILD = """
import json, sys
from pathlib import Path
from crucible_core.ir.backend import CheckpointRef
from crucible_core.ir.training import ModelSpec
from crucible_local.export import export

base, adapter, out = (Path(a) for a in sys.argv[1:])
spec = ModelSpec(name="byo", path=str(base))
result = export(spec, CheckpointRef(uri=str(adapter), kind="sampler"), "merged", out)
heavy = sorted(m for m in ("peft", "transformers.modeling_utils") if m in sys.modules)
print(json.dumps({"files": result.files, "heavy": heavy}))
"""


def test_merged_export_of_a_directory_base_imports_neither_peft_nor_modeling_code(
    tmp_path: Path,
) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base = write_byo_model(tmp_path / "base")
    peft_model = _adapter(base, tmp_path / "adapter")
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-c", _EXPORT_CHILD, str(base), str(tmp_path / "adapter"), str(out)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["heavy"] == []
    assert "model.safetensors.index.json" in report["files"]
    assert "tokenizer_config.json" in report["files"]
    assert "generation_config.json" in report["files"]
    tok = AutoTokenizer.from_pretrained(str(out))
    assert tok.chat_template == AutoTokenizer.from_pretrained(str(base)).chat_template
    ids = tok("The quick brown fox", return_tensors="pt")["input_ids"]
    loaded = AutoModelForCausalLM.from_pretrained(str(out))
    merged = _merge(peft_model)
    assert torch.equal(loaded(input_ids=ids).logits, merged(input_ids=ids).logits)


_PEAK_CHILD = """
import sys
from pathlib import Path
import torch, safetensors.torch
from crucible_local import merge_stream

def status(key):
    return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith(key))

base, adapter, out, shard = sys.argv[1], sys.argv[2], Path(sys.argv[3]), int(sys.argv[4])
plan = merge_stream.plan_streaming_merge(Path(base), Path(adapter))
out.mkdir()
before = status("VmRSS")
merge_stream.write_merged_shards(plan, out, shard)
print((status("VmHWM") - before) * 1024)
"""


def test_streaming_merge_holds_about_one_shard_in_memory(tmp_path: Path) -> None:
    """Peak RSS growth of the merge (a child process's VmHWM) stays near one shard, far
    below the model: each shard is freed (and its heap given back) before the next."""
    from crucible_local.models import write_tiny_model_dir

    base = write_tiny_model_dir(
        tmp_path / "base",
        options={"hidden_size": 512, "num_layers": 4, "intermediate_size": 2048, "num_heads": 8},
    )
    model_bytes = (base / "model.safetensors").stat().st_size
    _adapter_all_linear(base, tmp_path / "adapter")
    shard = 12 * 10**6
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            _PEAK_CHILD,
            str(base),
            str(tmp_path / "adapter"),
            str(tmp_path / "out"),
            str(shard),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    growth = int(proc.stdout)
    assert model_bytes > 4 * shard
    # One shard, one tensor being merged (<= 4.2 MB) and its delta, plus slack.
    assert growth < 1.25 * shard + 3 * 4.2e6, (growth, model_bytes)


def _adapter_all_linear(base: Path, out: Path) -> None:
    import torch
    from crucible_local._hf import peft_quiet
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32)
    torch.manual_seed(2)
    config = LoraConfig(r=8, target_modules="all-linear", init_lora_weights=False)
    with peft_quiet():
        get_peft_model(model, config).save_pretrained(str(out))


_FRAGMENT_CHILD = """
import torch
from crucible_local import merge_stream

def anon():
    return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("RssAnon"))

merge_stream.map_large_allocations()
n = 768 * 3072
before, kept = anon() * 1024, []
for i in range(40):
    # The merge's pattern: a source copy freed, a delta temporary freed, the result kept.
    src = torch.ones(n) if i % 3 else torch.ones(n // 4)
    t = src.clone()
    del src
    d = t * 2
    t += d
    del d
    kept.append(t)
print((anon() * 1024 - before) / sum(k.numel() * 4 for k in kept))
"""


def test_large_allocations_are_mapped_so_freed_temporaries_do_not_fragment_the_heap() -> None:
    """With glibc's adaptive mmap threshold this allocation pattern (the merge's: tensors of
    a few MB, temporaries freed between kept results) costs ~1.5x the kept bytes in RSS on
    this machine's glibc; after ``map_large_allocations`` it costs what is kept. Run in a
    fresh process: the setting is process-wide."""
    proc = subprocess.run(
        [sys.executable, "-c", _FRAGMENT_CHILD],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert float(proc.stdout) < 1.1

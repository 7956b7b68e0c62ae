"""Adapter pools: five LoRA adapters of one base served with one base in memory.

Real PEFT adapters (random, non-zero LoRA weights saved with ``save_pretrained``) on the
built-in tiny model; the memory figure is measured in fresh subprocesses (RSS).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from crucible_local.backend import LocalBackend
from crucible_local.pool import AdapterBackend, AdapterPool

from crucible_core.errors import ConfigError, NotFound, UnsupportedError
from crucible_core.ir.backend import CheckpointRef, Prompt, SamplingParams
from crucible_core.ir.training import ModelSpec
from crucible_core.testing import check_inference_backend

P = Prompt(text="Hello there")
GREEDY = SamplingParams(max_tokens=6, temperature=0.0)
WORKER = Path(__file__).with_name("pool_worker.py")


def make_adapters(root: Path, n: int, options: dict[str, int] | None = None) -> list[str]:
    """``n`` distinct LoRA adapters of tiny-llama (with ``options``), as checkpoint dirs."""
    from crucible_local._hf import peft_quiet
    from crucible_local.models import load_model
    from peft import LoraConfig, get_peft_model

    out = []
    for i in range(n):
        torch.manual_seed(100 + i)
        base = load_model(ModelSpec(name="tiny-llama", options=options or {})).model
        config = LoraConfig(
            r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False
        )
        with peft_quiet():
            peft_model = get_peft_model(base, config)
        with torch.no_grad():  # large enough that each adapter changes the answers
            for name, p in peft_model.named_parameters():
                if "lora_" in name:
                    p.mul_(8.0)
        d = root / f"run{i}" / "checkpoints" / "final" / "sampler"
        peft_model.save_pretrained(str(d))
        out.append(str(d.parent))
    return out


@pytest.fixture(scope="module")
def adapters(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    return make_adapters(tmp_path_factory.mktemp("adapters"), 5)


def test_each_adapter_answers_as_if_loaded_alone(adapters: list[str]) -> None:
    """Swapping adapters on one base gives every adapter's own answer: the same tokens and
    log-probabilities as ``load_sampler`` of that checkpoint (a separate base each)."""
    pool = AdapterPool(max_loaded=2)
    local = LocalBackend(num_threads=1)
    views = [pool.backend(a) for a in adapters]
    seen = []
    for _ in range(2):  # the second round reloads evicted adapters
        for uri, view in zip(adapters, views, strict=True):
            got = view.complete(P, GREEDY)
            alone = local.load_sampler(ModelSpec(name="tiny-llama"), CheckpointRef(uri=uri))
            want = alone.generate(P, GREEDY)[0]
            alone.close()
            assert got.tokens == want.tokens
            assert got.logprobs == pytest.approx(want.logprobs, abs=1e-5)
            seen.append(tuple(got.logprobs or []))
    assert len(set(seen[:5])) == 5  # five different adapters, five different answers
    assert pool.base_loads == 1
    local.close()


def test_lru_keeps_at_most_max_loaded(adapters: list[str]) -> None:
    pool = AdapterPool(max_loaded=2)
    a, b, c = (pool.backend(u) for u in adapters[:3])
    a.complete(P, GREEDY)
    b.complete(P, GREEDY)
    a.complete(P, GREEDY)  # a is now the most recent
    c.complete(P, GREEDY)  # evicts b, the least recently used
    assert pool.loaded == ["run0/final", "run2/final"]
    assert (pool.adapter_loads, pool.evictions, pool.base_loads) == (3, 1, 1)
    b.complete(P, GREEDY)
    assert pool.loaded == ["run2/final", "run1/final"]
    assert pool.metrics()["pool.adapter_loads"] == 4.0


def test_backends_of_one_base_share_one_pool(adapters: list[str]) -> None:
    import crucible_local.plugin

    from crucible_core.testing import isolated_host

    with isolated_host(crucible_local.plugin) as host:
        one = host.create("backend", "local-adapter", adapter=adapters[0], max_loaded=3)
        two = host.create("backend", "local-adapter", adapter=adapters[1])
    assert one.pool is two.pool
    assert one.capabilities().backend_id == "local-adapter:run0/final"
    assert one.complete(P, GREEDY).backend_id == "local-adapter:run0/final"
    assert two.complete(P, GREEDY).backend_id == "local-adapter:run1/final"


def test_an_adapter_backend_keeps_the_inference_contract(adapters: list[str]) -> None:
    check_inference_backend(AdapterPool().backend(adapters[0]))


def test_not_an_adapter_is_refused_at_creation(tmp_path: Path) -> None:
    from crucible_local.models import write_tiny_model_dir

    full = tmp_path / "full"
    write_tiny_model_dir(full)
    with pytest.raises(UnsupportedError, match="not a LoRA adapter"):
        AdapterBackend(adapter=str(full))
    with pytest.raises(NotFound):
        AdapterBackend(adapter=str(tmp_path / "missing"))
    with pytest.raises(ConfigError, match="max_loaded"):
        AdapterPool(max_loaded=0)


@pytest.mark.timeout(600)
def test_five_adapters_keep_one_base_in_memory(tmp_path: Path) -> None:
    """RSS measured in fresh processes, on a base of ~39 MB (hidden 512, 4 layers): five
    adapters through the pool grow RSS by about one base; five ``load_sampler``s by five."""
    options = {"hidden_size": 512, "num_layers": 4, "num_heads": 8, "intermediate_size": 1024}
    dirs = make_adapters(tmp_path, 5, options)

    def measure(mode: str) -> dict[str, int]:
        out = subprocess.run(
            [sys.executable, str(WORKER), mode, json.dumps(options), *dirs],
            capture_output=True, text=True, timeout=300, check=True,
        )  # fmt: skip
        return json.loads(out.stdout)

    pool, separate = measure("pool"), measure("separate")
    base = pool["base_bytes"]
    assert (pool["bases"], separate["bases"]) == (1, 5)
    assert pool["rss_growth"] < 2.0 * base, (pool, separate)
    assert separate["rss_growth"] > 4.0 * base, (pool, separate)

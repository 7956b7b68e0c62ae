"""Adapters of one crucible-local pool as routing targets and ensemble members.

Real PEFT adapters on the built-in tiny model (random, non-zero LoRA weights), the real
``local-adapter`` backend, ``routed`` and ``ensemble``: one base model serves them all.
"""

from __future__ import annotations

import pytest
import torch
from crucible_ensemble import EnsembleBackend
from crucible_local.pool import AdapterPool
from crucible_router import RoutedBackend
from crucible_router.policies import AdaptivePolicy, RoundRobin

from crucible_core.ir.backend import Prompt, SamplingParams
from crucible_core.ir.training import ModelSpec

P = Prompt(text="Hello there")
GREEDY = SamplingParams(max_tokens=4, temperature=0.0)


@pytest.fixture(scope="module")
def adapter_dirs(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    from crucible_local._hf import peft_quiet
    from crucible_local.models import load_model
    from peft import LoraConfig, get_peft_model

    root = tmp_path_factory.mktemp("adapters")
    out = []
    for i in range(3):
        torch.manual_seed(i)
        base = load_model(ModelSpec(name="tiny-llama")).model
        with peft_quiet():
            model = get_peft_model(
                base, LoraConfig(r=4, target_modules=["q_proj"], init_lora_weights=False)
            )
        model.save_pretrained(str(root / f"a{i}"))
        out.append(str(root / f"a{i}"))
    return out


def test_adapters_are_routing_targets_sharing_one_base(adapter_dirs: list[str]) -> None:
    pool = AdapterPool(max_loaded=2)
    views = [pool.backend(d) for d in adapter_dirs]
    r = RoutedBackend(views[0], views[1:], policy=RoundRobin())
    got = [r.complete(P, GREEDY).backend_id for _ in range(6)]
    assert got == ["local-adapter:a0", "local-adapter:a1", "local-adapter:a2"] * 2
    assert pool.base_loads == 1
    adaptive = RoutedBackend(views[0], views[1:], policy=AdaptivePolicy(seed=0))
    out = adaptive.complete(P, GREEDY)
    adaptive.feedback(out, 1.0)  # quality feedback names the adapter that answered
    assert pool.base_loads == 1


def test_adapters_are_ensemble_members(adapter_dirs: list[str]) -> None:
    pool = AdapterPool(max_loaded=3)
    ens = EnsembleBackend(
        [pool.backend(d) for d in adapter_dirs], strategy="majority", mode="sequential"
    )
    assert ens.complete(P, GREEDY).text
    assert pool.base_loads == 1
    assert pool.adapter_loads >= 2  # sequential majority may stop once two agree

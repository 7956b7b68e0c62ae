"""Registration: the entry point, the lazy factory, and a plugin module that imports no torch."""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

import crucible_local.plugin
from crucible_local.backend import LocalBackend
from crucible_local.capabilities import TINY_MODELS, static_capabilities

from crucible_core import PluginHost
from crucible_core.contracts import InferenceBackend, TrainingBackend
from crucible_core.testing import check_light_import


def test_plugin_module_imports_no_torch() -> None:
    # A fresh interpreter imports crucible_local.plugin and must not see torch,
    # transformers, peft, numpy (the kit's list of heavy modules).
    check_light_import("crucible_local.plugin")


def test_entry_point_is_declared() -> None:
    eps = importlib.metadata.entry_points(group="crucible")
    local = [ep for ep in eps if ep.name == "local"]
    assert [ep.value for ep in local] == ["crucible_local.plugin"]
    assert local[0].dist is not None
    assert local[0].dist.name == "crucible-local"


def test_registration_is_lazy_and_creates_the_backend(tmp_path: Path) -> None:
    host = PluginHost(autoload=False)
    host.add_plugin(crucible_local.plugin, name="local", distribution="crucible-local")
    reg = host.get("backend", "local")
    assert reg.factory == "crucible_local.backend:LocalBackend"
    assert reg.capabilities == static_capabilities()
    assert reg.plugin == "local"
    backend = host.create("backend", "local", home=str(tmp_path))
    assert isinstance(backend, LocalBackend)
    assert isinstance(backend, TrainingBackend)
    assert isinstance(backend, InferenceBackend)
    assert backend.home == tmp_path


def test_capabilities_declare_what_the_backend_does() -> None:
    caps = static_capabilities()
    assert caps.backend_id == "local"
    assert caps.supports_training
    assert caps.supports_logprobs
    assert caps.supports_streaming
    assert set(caps.losses) == {
        "cross_entropy",
        "importance_sampling",
        "ppo",
        "cispo",
        "gspo",
        "dro",
        "dpo",
        "custom",
    }
    assert caps.adapters == ["lora", "full"]
    assert caps.optimizers == ["adamw", "sgd"]
    assert caps.schedulers == ["constant", "linear", "cosine"]
    assert caps.checkpoint_formats == ["safetensors", "pytorch"]
    assert caps.models == list(TINY_MODELS) == ["tiny-llama", "tiny-gpt2"]
    assert caps.max_context_length == 512
    assert caps.costs is not None
    assert (
        caps.costs.train_per_mtok,
        caps.costs.prompt_per_mtok,
        caps.costs.sample_per_mtok,
        caps.costs.storage_per_gb_month,
    ) == (0.0, 0.0, 0.0, 0.0)

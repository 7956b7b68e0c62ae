"""Decode + validate one full TrainingJob JSON: crucible (msgspec) vs an equivalent pydantic model.

Targets (issue 3): >= 3x faster than pydantic, <= 5 us per message.
Run: .venv/bin/python -m benchmarks.ir_decode_bench   (needs the `bench` extra: pydantic)
"""

from __future__ import annotations

import json
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from benchmarks._util import per_call
from crucible_core.ir import TrainingJob, decode, encode
from crucible_core.ir.codec import _decoder  # the cached Decoder `decode` uses


class _P(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelSpec(_P):
    name: Annotated[str, Field(min_length=1)]
    path: str | None = None
    revision: str | None = None
    tokenizer: str | None = None
    max_seq_len: Annotated[int, Field(ge=1)] | None = None
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    options: dict[str, object] = {}


class LoRA(_P):
    kind: Literal["lora"] = "lora"
    rank: Annotated[int, Field(ge=1)] = 16
    alpha: Annotated[float, Field(gt=0)] = 32.0
    dropout: Annotated[float, Field(ge=0, lt=1)] = 0.05
    target_modules: Annotated[list[str], Field(min_length=1)] = ["q_proj", "v_proj"]
    bias: Literal["none", "all", "lora_only"] = "none"
    train_attn: bool = True
    train_mlp: bool = True
    train_unembed: bool = False


class QLoRA(LoRA):
    kind: Literal["qlora"] = "qlora"  # type: ignore[assignment]
    bits: Literal[4, 8] = 4


class Full(_P):
    kind: Literal["full"] = "full"


class AdamW(_P):
    name: Literal["adamw"] = "adamw"
    lr: Annotated[float, Field(gt=0)] = 1e-4
    betas: tuple[Annotated[float, Field(ge=0, lt=1)], Annotated[float, Field(ge=0, lt=1)]] = (
        0.9,
        0.999,
    )
    eps: Annotated[float, Field(gt=0)] = 1e-8
    weight_decay: Annotated[float, Field(ge=0)] = 0.0
    grad_clip: Annotated[float, Field(gt=0)] | None = 1.0


class SGD(_P):
    name: Literal["sgd"] = "sgd"
    lr: Annotated[float, Field(gt=0)] = 1e-2
    momentum: Annotated[float, Field(ge=0, lt=1)] = 0.0
    weight_decay: Annotated[float, Field(ge=0)] = 0.0
    grad_clip: Annotated[float, Field(gt=0)] | None = None


class Scheduler(_P):
    name: Literal["constant", "linear", "cosine"] = "constant"
    warmup_steps: Annotated[int, Field(ge=0)] = 0
    min_lr_ratio: Annotated[float, Field(ge=0, le=1)] = 0.0


class Loss(_P):
    name: Literal["cross_entropy", "importance_sampling", "ppo", "dpo", "custom"] = "cross_entropy"
    fn: str | None = None
    params: dict[str, object] = {}


class LearningConfig(_P):
    optimizer: Annotated[AdamW | SGD, Field(discriminator="name")] = AdamW()
    scheduler: Scheduler = Scheduler()
    batch_size: Annotated[int, Field(ge=1)] = 4
    grad_accum: Annotated[int, Field(ge=1)] = 1
    max_steps: Annotated[int, Field(ge=1)] | None = 1000
    epochs: Annotated[int, Field(ge=1)] | None = None
    seed: Annotated[int, Field(ge=0)] = 0
    loss: Loss = Loss()


class FieldMap(_P):
    prompt: str = "prompt"
    completion: str = "completion"
    messages: str = "messages"
    text: str = "text"
    label: str = "label"
    chosen: str = "chosen"
    rejected: str = "rejected"


class DatasetSpec(_P):
    uri: Annotated[str, Field(min_length=1)]
    format: str | None = None
    split: str | None = None
    fields: FieldMap = FieldMap()
    template: str | None = None
    train_on: Literal["assistant", "all"] = "assistant"
    max_length: Annotated[int, Field(ge=1)] | None = None
    packing: bool = False
    shuffle: bool = True
    limit: Annotated[int, Field(ge=1)] | None = None
    validation_ratio: Annotated[float, Field(ge=0, lt=1)] = 0.0
    on_error: Literal["raise", "skip"] = "raise"
    options: dict[str, object] = {}


class CheckpointPolicy(_P):
    strategy: Literal["steps", "epoch", "best", "last", "all"] = "steps"
    save_every: Annotated[int, Field(ge=1)] = 100
    keep_last: Annotated[int, Field(ge=1)] = 5
    save_best: bool = True
    best_metric: Annotated[str, Field(min_length=1)] = "loss"
    best_mode: Literal["min", "max"] = "min"
    format: Literal["safetensors", "pytorch", "gguf", "onnx"] = "safetensors"
    push_to_hub: bool = False
    hub_repo: str | None = None


class ValidationSpec(_P):
    every_n_steps: Annotated[int, Field(ge=1)] | None = None
    split: str = "validation"
    metrics: list[str] = ["loss"]
    max_samples: Annotated[int, Field(ge=1)] | None = None
    early_stopping_patience: Annotated[int, Field(ge=1)] | None = None


class ResourceSpec(_P):
    cpus: Annotated[float, Field(gt=0)] | None = None
    memory_gb: Annotated[float, Field(gt=0)] | None = None
    gpus: Annotated[int, Field(ge=0)] = 0
    gpu_type: str | None = None
    timeout_s: Annotated[float, Field(gt=0)] | None = None
    labels: dict[str, str] = {}


class Budget(_P):
    max_cost: Annotated[float, Field(ge=0)] | None = None
    max_tokens: Annotated[int, Field(ge=1)] | None = None
    max_wall_time: Annotated[float, Field(gt=0)] | None = None


class BackendRef(_P):
    name: Annotated[str, Field(min_length=1)]
    options: dict[str, object] = {}
    fallbacks: list[str] = []


class PydanticTrainingJob(_P):
    schema_version: Annotated[str, Field(pattern=r"^[0-9]+\.[0-9]+$")] = "1.0"
    job_id: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._:@/-]*$")] | None = None
    backend: str | BackendRef = "local"
    model_spec: ModelSpec
    adapter_config: Annotated[LoRA | QLoRA | Full, Field(discriminator="kind")] = LoRA()
    learning_config: LearningConfig = LearningConfig()
    dataset_spec: DatasetSpec
    checkpoint_policy: CheckpointPolicy = CheckpointPolicy()
    validation_spec: ValidationSpec | None = None
    resource_spec: ResourceSpec = ResourceSpec()
    budget: Budget = Budget()
    metadata: dict[str, object] = {}


FULL_JOB = {
    "schema_version": "1.0",
    "job_id": "sft-demo-001",
    "backend": {"name": "local", "options": {"threads": 2}, "fallbacks": ["tinker"]},
    "model_spec": {"name": "tiny-llama", "max_seq_len": 256, "dtype": "float32"},
    "adapter_config": {
        "kind": "lora",
        "rank": 8,
        "alpha": 16,
        "dropout": 0.05,
        "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"],
    },
    "learning_config": {
        "optimizer": {"name": "adamw", "lr": 0.001, "betas": [0.9, 0.95], "weight_decay": 0.01},
        "scheduler": {"name": "cosine", "warmup_steps": 5},
        "batch_size": 4,
        "grad_accum": 2,
        "max_steps": 40,
        "seed": 7,
        "loss": {"name": "cross_entropy"},
    },
    "dataset_spec": {"uri": "examples/data/chat.jsonl", "max_length": 256, "validation_ratio": 0.1},
    "checkpoint_policy": {"strategy": "steps", "save_every": 10, "keep_last": 2},
    "validation_spec": {"every_n_steps": 10, "metrics": ["loss"]},
    "resource_spec": {"cpus": 2, "memory_gb": 4},
    "budget": {"max_wall_time": 120},
    "metadata": {"owner": "bench", "tags": ["demo", "cpu"]},
}


def main() -> None:
    data = json.dumps(FULL_JOB).encode()
    ours = decode(data, TrainingJob)
    theirs = PydanticTrainingJob.model_validate_json(data)
    assert ours.learning_config.optimizer.lr == theirs.learning_config.optimizer.lr == 0.001
    assert isinstance(theirs.adapter_config, LoRA)
    assert json.loads(encode(ours))["adapter_config"]["rank"] == theirs.adapter_config.rank == 8

    number = 20_000
    t_api = per_call(lambda: decode(data, TrainingJob), number=number)
    raw = _decoder("json", TrainingJob)
    t_raw = per_call(lambda: raw.decode(data), number=number)
    t_pyd = per_call(lambda: PydanticTrainingJob.model_validate_json(data), number=number)
    print(f"document: {len(data)} bytes, full TrainingJob with every section set")
    print(f"crucible decode(): {t_api * 1e6:7.2f} us/message")
    print(f"msgspec Decoder:   {t_raw * 1e6:7.2f} us/message (what decode() calls)")
    print(f"pydantic v2:       {t_pyd * 1e6:7.2f} us/message")
    print(f"ratio pydantic / crucible decode(): {t_pyd / t_api:.1f}x  (target >= 3x)")
    print(f"target <= 5 us/message: {'met' if t_api <= 5e-6 else 'NOT met'}")


if __name__ == "__main__":
    main()

"""A small outside Hugging Face model, built on the fly: what a user brings as a base.

Not one of crucible-local's built-in models: a Llama config with a few layers
and its own BPE tokenizer (trained here with ``tokenizers``, wrapped as a
``PreTrainedTokenizerFast``) with a chat template unlike the built-in one.
The directory is what ``save_pretrained`` writes, so it also stands for a
hub snapshot (see :func:`put_in_hub_cache`).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]

CHAT_TEMPLATE = (
    "{% for m in messages %}<s>{{ m['role'] }}: {{ m['content'] }}</s>{% endfor %}"
    "{% if add_generation_prompt %}<s>assistant:{% endif %}"
)
CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Crucible trains small models on the CPU.",
    "Bring your own model and export it anywhere.",
    "Low rank adapters learn quickly.",
] * 8


def write_byo_model(path: Path, *, seed: int = 0, vocab_size: int = 300) -> Path:
    """Write a tiny Llama with a trained BPE tokenizer and chat template to ``path``."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    raw = Tokenizer(models.BPE(unk_token="<unk>"))
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<unk>", "<s>", "</s>", "<pad>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    raw.train_from_iterator(CORPUS, trainer=trainer)
    tok = PreTrainedTokenizerFast(
        tokenizer_object=raw,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
    )
    tok.chat_template = CHAT_TEMPLATE
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        tie_word_embeddings=False,
        initializer_range=0.1,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(path))
    tok.save_pretrained(str(path))
    return path


def put_in_hub_cache(source: Path, cache: Path, repo_id: str, *, revision: str = "main") -> Path:
    """Lay ``source`` out as the hub cache does after ``hf download repo_id``; return the
    snapshot. (``models--org--name/refs/<revision>`` holds the commit, the files sit under
    ``snapshots/<commit>/``.)"""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / revision).write_text(commit)
    snapshot = repo / "snapshots" / commit
    shutil.copytree(source, snapshot, dirs_exist_ok=True)
    return snapshot


def cli(
    home: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "crucible_core.cli.main", *args],
        cwd=ROOT,
        env={
            **os.environ,
            "CRUCIBLE_HOME": str(home),
            "CRUCIBLE_STRICT_PLUGINS": "1",
            **(env or {}),
        },
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


def write_job(path: Path, model_lines: str, *, steps: int = 6, policy: str = "") -> Path:
    """A small chat SFT job on ``examples/data/chat.jsonl`` with the given [model_spec]
    (``policy``: more lines of its [checkpoint_policy])."""
    data = ROOT / "examples" / "data" / "chat.jsonl"
    path.write_text(
        f"""backend = "local"
[model_spec]
{model_lines}
[adapter_config]
kind = "lora"
rank = 8
alpha = 16.0
dropout = 0.0
target_modules = ["all-linear"]
[learning_config]
batch_size = 4
max_steps = {steps}
seed = 0
[learning_config.optimizer]
name = "adamw"
lr = 2e-2
[dataset_spec]
uri = "{data}"
train_on = "assistant"
validation_ratio = 0.1
[checkpoint_policy]
save_every = {steps}
keep_last = 1
{policy}
"""
    )
    return path


def export_run(home: Path, *args: str, env: dict[str, str] | None = None) -> dict[str, object]:
    """``crucible export exp ARGS --json`` in ``home``: its JSON record (must succeed)."""
    proc = cli(home, "export", "exp", *args, "--json", env=env)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def stock_python(code: str, *, env: dict[str, str] | None = None) -> str:
    """Run ``code`` in a fresh interpreter that imports no Crucible module; its stdout."""
    proc = subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout

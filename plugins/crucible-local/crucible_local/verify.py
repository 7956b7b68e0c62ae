"""Checking an export the way a user elsewhere would load it.

:func:`verify_export` runs ``_verify_child.py`` in a fresh Python process
(stock transformers/peft only, offline) on the export, and compares the
log-softmax it computes at every position of :data:`PROBES` with the run's
own sampler weights loaded here (float32). The token ids must be equal (the
exported tokenizer is checked too) and the largest absolute difference of
log-probabilities must stay within the format's tolerance
(:data:`TOLERANCES`):

- ``peft``: 1e-4 (the same adapter and base weights; only kernel order differs);
- ``merged``: 1e-3 (``W + BA`` folded into one matrix changes float32 rounding);
- ``safetensors-full``: 1e-3, or 0.1 for a bfloat16 run (its weights are
  stored in bfloat16 and compared with the float32 reference);
- ``onnx``: 1e-3 (merged weights, onnxruntime's kernels);
- ``gguf``: 0 (no runtime to load it here: the file is read back with the
  ``gguf`` package's reader and every tensor compared with the merged weights,
  which are stored as exact float32 copies).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from crucible_core.errors import BackendError

if TYPE_CHECKING:
    from crucible_core.ir.backend import CheckpointRef
    from crucible_core.ir.training import ModelSpec

__all__ = ["PROBES", "TOLERANCES", "tolerance_for", "verify_export"]

#: Fixed probe texts: prose, digits, punctuation and a date, short enough for any context.
PROBES: tuple[str, ...] = (
    "The quick brown fox jumps over the lazy dog.",
    "2024-03-07 is a Thursday; 12 + 30 = 42.",
    "Crucible exports weights that load anywhere.",
    "Hello, world!",
)
TOLERANCES: dict[str, float] = {
    "peft": 1e-4,
    "merged": 1e-3,
    "safetensors-full": 1e-3,
    "onnx": 1e-3,
    "gguf": 0.0,
}
_BF16_TOLERANCE = 0.1
_CHILD = Path(__file__).with_name("_verify_child.py")
#: Seconds the fresh process may take to load and score the export.
CHILD_TIMEOUT_S = 600.0


def tolerance_for(fmt: str, model: ModelSpec) -> float:
    """The largest accepted |logprob difference| for ``fmt`` exports of ``model``."""
    if fmt == "safetensors-full" and model.dtype == "bfloat16":
        return _BF16_TOLERANCE
    return TOLERANCES[fmt]


def verify_export(
    model: ModelSpec, checkpoint: CheckpointRef, fmt: str, out: Path
) -> dict[str, Any]:
    """``{"ok", "max_abs_diff", "tolerance", "probes", "loader"}`` for the export at ``out``."""
    import torch
    from safetensors.torch import load_file

    from crucible_local.export import load_trained

    if fmt == "gguf":
        return _verify_gguf(model, checkpoint, out)
    torch_model, tokenizer, _ = load_trained(model, checkpoint)
    with tempfile.TemporaryDirectory(prefix="crucible-verify-") as tmp:
        probes_file = Path(tmp) / "probes.json"
        probes_file.write_text(json.dumps(list(PROBES)))
        result_file = Path(tmp) / "logprobs.safetensors"
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
        proc = subprocess.run(
            [sys.executable, str(_CHILD), fmt, str(out), str(probes_file), str(result_file)],
            env=env,
            capture_output=True,
            text=True,
            timeout=CHILD_TIMEOUT_S,
            check=False,
        )
        if proc.returncode != 0:
            tail = proc.stderr.strip().splitlines()[-1:] or ["no output"]
            raise BackendError(
                f"--verify: the stock loader could not load the {fmt} export at {out}: {tail[0]}",
                hint="run the load code in the export's README.md to see the whole error",
            )
        theirs = load_file(str(result_file))
    worst = 0.0
    with torch.no_grad():
        for i, text in enumerate(PROBES):
            ids = tokenizer.encode(text, add_special_tokens=True)
            if theirs[f"ids.{i}"].tolist() != ids:
                raise BackendError(
                    f"--verify: the exported tokenizer encodes probe {text!r} differently from "
                    "the run's tokenizer",
                    hint="the export's tokenizer files do not match the run's; re-export",
                )
            logits = torch_model(input_ids=torch.tensor([ids])).logits[0].float()
            mine = torch.log_softmax(logits, dim=-1)
            worst = max(worst, float((mine - theirs[f"logprobs.{i}"]).abs().max()))
    tolerance = tolerance_for(fmt, model)
    loader = {"peft": "transformers+peft", "onnx": "onnxruntime"}.get(fmt, "transformers")
    return {
        "ok": worst <= tolerance,
        "max_abs_diff": worst,
        "tolerance": tolerance,
        "probes": len(PROBES),
        "loader": f"{loader} (fresh process)",
    }


def _verify_gguf(model: ModelSpec, checkpoint: CheckpointRef, out: Path) -> dict[str, Any]:
    import numpy as np
    from gguf import GGUFReader

    from crucible_local.export import load_trained
    from crucible_local.gguf_export import GGUF_FILE, _merged, expected_tensors

    torch_model, _, is_lora = load_trained(model, checkpoint)
    expected = expected_tensors(_merged(torch_model, is_lora))
    reader = GGUFReader(str(out / GGUF_FILE))
    found = {str(t.name): np.asarray(t.data) for t in reader.tensors}
    if set(found) != set(expected):
        missing = sorted(set(expected) ^ set(found))[:5]
        raise BackendError(f"--verify: the gguf file's tensors differ from the model's: {missing}")
    worst = 0.0
    for name, data in expected.items():
        got = found[name].reshape(-1).astype(np.float32)
        worst = max(worst, float(np.abs(got - data.reshape(-1)).max()))
    tolerance = TOLERANCES["gguf"]
    return {
        "ok": worst <= tolerance,
        "max_abs_diff": worst,
        "tolerance": tolerance,
        "probes": len(expected),
        "loader": "gguf.GGUFReader (every tensor)",
    }

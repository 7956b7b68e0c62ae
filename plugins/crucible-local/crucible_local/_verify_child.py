"""Run as a script in a fresh process: load an export with the stock libraries only.

``python _verify_child.py FORMAT EXPORT_DIR PROBES_JSON OUT_FILE``

Imports nothing from Crucible (it is run by path, not as a module of
``crucible_local``), so it checks what a user elsewhere would get:
``AutoTokenizer`` tokenizes the probe texts, ``AutoModelForCausalLM`` (with
``PeftModel`` for an adapter, its base found through
``adapter_config.json``) scores them (``onnxruntime`` for an onnx export),
and the log-softmax at every position is written to OUT_FILE (safetensors,
one tensor per probe) with the token ids.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main(fmt: str, export_dir: str, probes_file: str, out_file: str) -> int:
    import torch
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    texts: list[str] = json.loads(Path(probes_file).read_text(encoding="utf-8"))
    tokenizer = AutoTokenizer.from_pretrained(export_dir)
    if fmt == "peft":
        from peft import PeftConfig, PeftModel

        config = PeftConfig.from_pretrained(export_dir)
        kwargs = {"revision": config.revision} if getattr(config, "revision", None) else {}
        base = AutoModelForCausalLM.from_pretrained(
            str(config.base_model_name_or_path), dtype=torch.float32, **kwargs
        )
        peft_model = PeftModel.from_pretrained(base, export_dir)
        peft_model.eval()

        def model(input_ids: torch.Tensor) -> torch.Tensor:
            return peft_model(input_ids=input_ids).logits
    elif fmt == "onnx":
        import onnxruntime

        session = onnxruntime.InferenceSession(f"{export_dir}/model.onnx")

        def model(input_ids: torch.Tensor) -> torch.Tensor:
            out = session.run(None, {"input_ids": input_ids.numpy()})[0]
            return torch.from_numpy(out)
    else:
        hf = AutoModelForCausalLM.from_pretrained(export_dir, dtype=torch.float32)
        hf.eval()

        def model(input_ids: torch.Tensor) -> torch.Tensor:
            return hf(input_ids=input_ids).logits

    tensors: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        for i, text in enumerate(texts):
            ids = tokenizer(text, return_tensors="pt")["input_ids"]
            logits = model(ids)[0].float()
            tensors[f"logprobs.{i}"] = torch.log_softmax(logits, dim=-1).contiguous()
            tensors[f"ids.{i}"] = ids[0].contiguous()
    save_file(tensors, out_file)
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:5]))

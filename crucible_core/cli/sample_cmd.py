"""``crucible sample RUN_OR_CHECKPOINT --prompt TEXT``: generate from trained weights."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, cast

import msgspec

from crucible_core.cli.output import print_json
from crucible_core.cli.runref import expand_ref, find_run
from crucible_core.errors import ConfigError
from crucible_core.ir.backend import CheckpointRef, Message, Prompt, SamplingParams
from crucible_core.ir.codec import convert
from crucible_core.ir.common import BackendRef
from crucible_core.ir.training import ModelSpec

__all__ = ["backend_from_ref", "command", "request_of", "resolve_sampler"]


def backend_from_ref(host: Any, ref: BackendRef) -> Any:
    """The backend ``ref`` names, honouring its ``fallbacks`` (see
    :func:`crucible_core.pipeline.backends.create_backend`)."""
    from crucible_core.pipeline.backends import create_backend

    return create_backend(host, ref)


def resolve_sampler(ref: str) -> tuple[BackendRef, ModelSpec, CheckpointRef]:
    """Backend, base model and sampler checkpoint for a run id/dir, a checkpoint path, or a
    reference a resolver turns into one (``models:/NAME@ALIAS``, see :mod:`..runref`)."""
    ref = expand_ref(ref)
    run_dir, manifest = find_run(ref)
    backend = convert(manifest.get("backend") or {"name": "local"}, BackendRef)
    model_raw = manifest.get("model")
    if not isinstance(model_raw, dict):
        raise ConfigError(f"{run_dir}: the manifest records no model", hint="is it a training run?")
    model = convert(cast(dict[str, Any], model_raw), ModelSpec)
    given = Path(ref).expanduser()
    if given.exists() and given.resolve() != run_dir.resolve():
        checkpoint = CheckpointRef(uri=given.resolve().as_uri(), kind="sampler")
    else:
        raw = manifest.get("sampler_checkpoint")
        if raw is None:
            raise ConfigError(
                f"run {run_dir.name} has no final weights (it did not finish)",
                hint=f"resume it (crucible resume {run_dir.name}) or sample from a checkpoint "
                "directory inside it",
            )
        checkpoint = convert(raw, CheckpointRef)
    return backend, model, checkpoint


def request_of(args: argparse.Namespace) -> tuple[SamplingParams, Prompt]:
    """The sampling settings and prompt a sampling command's arguments ask for, validated
    as IR (so a bad value names its field); arguments a command lacks keep the defaults."""
    given = {
        "max_tokens": args.max_tokens,
        "temperature": args.temperature,
        "top_p": getattr(args, "top_p", 1.0),
        "top_k": getattr(args, "top_k", None),
        "seed": args.seed,
        "n": getattr(args, "n", 1),
        "stop": args.stop,
    }
    params = convert(given, SamplingParams)
    text = cast(str, args.prompt)
    chat = bool(getattr(args, "chat", False))
    prompt = Prompt(messages=[Message(role="user", content=text)]) if chat else Prompt(text=text)
    return params, prompt


class _SampleCommand:
    def configure(self, parser: argparse.ArgumentParser) -> None:
        parser.description = (
            "Load the weights a run saved (or a checkpoint directory) on the run's backend and "
            "generate text for a prompt."
        )
        parser.add_argument(
            "ref",
            metavar="RUN_OR_CHECKPOINT",
            help="run id, run dir, path, or a registry reference (models:/NAME@ALIAS)",
        )
        parser.add_argument("--prompt", required=True, help="the text to continue")
        parser.add_argument(
            "--chat", action="store_true", help="send the prompt as a user chat message"
        )
        parser.add_argument("--max-tokens", type=int, default=64)
        parser.add_argument("--temperature", type=float, default=0.7)
        parser.add_argument("--top-p", type=float, default=1.0)
        parser.add_argument("--top-k", type=int)
        parser.add_argument("--seed", type=int)
        parser.add_argument("-n", type=int, default=1, help="how many completions")
        parser.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
        parser.add_argument("--json", action="store_true", help="print completions as JSON")

    def run(self, args: argparse.Namespace) -> int:
        from crucible_core.plugins import get_host

        backend_ref, model, checkpoint = resolve_sampler(args.ref)
        params, prompt = request_of(args)
        backend = backend_from_ref(get_host(), backend_ref)
        sampler = backend.load_sampler(model, checkpoint)
        completions = sampler.sample(prompt, params).result(timeout=600)
        if args.json:
            print_json([msgspec.to_builtins(c) for c in completions])
            return 0
        for i, c in enumerate(completions):
            if len(completions) > 1:
                sys.stdout.write(f"--- {i + 1} ({c.finish_reason})\n")
            sys.stdout.write(c.text + "\n")
        return 0


command = _SampleCommand()

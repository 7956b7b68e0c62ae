"""Checkpoint directories, URIs and weight files.

Layout: ``save_state(name)`` and ``save_weights_for_sampler(name)`` write to
``D/state/`` and ``D/sampler/`` where ``D`` is ``name`` itself when it is an
absolute path (or a ``file://`` URI), else ``<run_dir>/checkpoints/<name>``.
A directory is written beside its final place and renamed into it, so a
crash never leaves half a checkpoint under the final name; what a killed
process leaves beside it (``.NAME.tmp-*``, ``.NAME.old-*``) is cleaned by
:func:`recover_partial` when the next session of the run starts.

``CheckpointRef.uri`` is always a ``file://`` URI of the ``state/`` or
``sampler/`` directory. Readers accept a ``file://`` URI or a plain path (a
relative path is taken from the current directory), pointing at ``state/``,
``sampler/`` or their parent ``D``.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import unquote, urlparse
from urllib.request import url2pathname

from crucible_core.errors import ConfigError, NotFound, UnsupportedError
from crucible_local.capabilities import CHECKPOINT_FORMATS, FINAL_EXPORT_FORMATS

if TYPE_CHECKING:
    import torch

__all__ = [
    "META_FILE",
    "WeightsFormat",
    "atomic_dir",
    "check_format",
    "checkpoint_root",
    "find_weights_dir",
    "load_tensors",
    "path_from_uri",
    "read_meta",
    "recover_partial",
    "save_tensors",
    "to_uri",
    "write_meta",
]

WeightsFormat = Literal["safetensors", "pytorch"]
#: The crucible-local description of a checkpoint directory.
META_FILE = "crucible_checkpoint.json"


def check_format(fmt: str) -> WeightsFormat:
    """The format crucible-local writes checkpoints in for ``CheckpointPolicy.format``.

    ``safetensors`` and ``pytorch`` are written as they are; an export format
    (``gguf``, ``onnx``) means safetensors checkpoints plus an export of the final
    one, which the run does after training (``crucible_core.export``). Anything
    else is an UnsupportedError.
    """
    if fmt == "safetensors" or fmt == "pytorch":
        return fmt
    if fmt in FINAL_EXPORT_FORMATS:
        return "safetensors"
    listed = ", ".join((*CHECKPOINT_FORMATS, *FINAL_EXPORT_FORMATS))
    raise UnsupportedError(
        f"checkpoint_policy.format = {fmt!r} is not supported by crucible-local",
        hint=f"set checkpoint_policy.format to one of: {listed}",
    )


def to_uri(path: Path) -> str:
    """The ``file://`` URI of ``path`` (made absolute)."""
    return path.resolve().as_uri()


def path_from_uri(uri: str, *, field: str = "checkpoint.uri") -> Path:
    """A local path from a ``file://`` URI or a plain path."""
    parsed = urlparse(uri)
    if parsed.scheme == "file":
        if parsed.netloc not in ("", "localhost"):
            raise ConfigError(f"{field}: {uri!r} names another host ({parsed.netloc})")
        return Path(url2pathname(unquote(parsed.path)))
    if parsed.scheme and len(parsed.scheme) > 1:
        raise ConfigError(
            f"{field}: crucible-local reads file:// URIs or paths, not {parsed.scheme}:// "
            f"({uri!r})",
            hint="a checkpoint made by another backend cannot be loaded here",
        )
    return Path(uri).expanduser().resolve()


def checkpoint_root(run_dir: Path, name: str) -> Path:
    """The directory ``D`` a checkpoint ``name`` goes to (see the module docstring)."""
    if not name or not name.strip():
        raise ConfigError("checkpoint name: must not be empty", hint="use e.g. the step number")
    if name.startswith("file:"):
        return path_from_uri(name, field="checkpoint name")
    candidate = Path(name).expanduser()
    if candidate.is_absolute():
        return candidate
    if ".." in candidate.parts:
        raise ConfigError(
            f"checkpoint name {name!r} climbs out of the run directory",
            hint="use a plain name, or an absolute path to write elsewhere",
        )
    return run_dir / "checkpoints" / candidate


@contextlib.contextmanager
def atomic_dir(final: Path) -> Iterator[Path]:
    """Yield a fresh directory that replaces ``final`` when the block succeeds."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tag = uuid.uuid4().hex[:8]
    tmp = final.parent / f".{final.name}.tmp-{tag}"
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = final.parent / f".{final.name}.old-{tag}"
    if final.exists():
        final.rename(old)
    tmp.rename(final)
    shutil.rmtree(old, ignore_errors=True)


def recover_partial(root: Path) -> list[Path]:
    """Clean the leftovers of :func:`atomic_dir` blocks a killed process left under ``root``.

    ``root`` is a run's ``checkpoints/`` directory; leftovers sit one level
    down, beside ``state/`` and ``sampler/``. A ``.NAME.old-*`` whose
    ``NAME`` is gone is the complete previous version (the crash fell between
    the two renames) and is renamed back; every other leftover is removed.
    Returns the paths removed or restored. Only call it while no session of
    the run is writing.
    """
    touched: list[Path] = []
    if not root.is_dir():
        return touched
    for d in [root, *(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))]:
        for left in sorted(d.glob(".*.old-*")) + sorted(d.glob(".*.tmp-*")):
            if not left.exists():
                continue
            name = left.name[1:].rsplit(".old-", 1)[0] if ".old-" in left.name else None
            if name and not (d / name).exists():
                left.rename(d / name)
            else:
                shutil.rmtree(left, ignore_errors=True)
            touched.append(left)
    return touched


def save_tensors(tensors: Mapping[str, torch.Tensor], directory: Path, stem: str, fmt: str) -> Path:
    """Write ``tensors`` as ``<stem>.safetensors`` or ``<stem>.bin`` (torch.save)."""
    import torch

    plain = {k: v.detach().contiguous() for k, v in tensors.items()}
    if fmt == "safetensors":
        from safetensors.torch import save_file

        path = directory / f"{stem}.safetensors"
        save_file(plain, str(path))
    else:
        path = directory / f"{stem}.bin"
        torch.save(plain, path)
    return path


def load_tensors(directory: Path, stem: str) -> dict[str, torch.Tensor]:
    """Read ``<stem>.safetensors`` or ``<stem>.bin`` from ``directory``."""
    import torch

    st = directory / f"{stem}.safetensors"
    if st.is_file():
        from safetensors.torch import load_file

        return load_file(str(st))
    pt = directory / f"{stem}.bin"
    if pt.is_file():
        loaded: Any = torch.load(pt, map_location="cpu", weights_only=True)
        return dict(loaded)
    raise NotFound(f"{directory}: no {stem}.safetensors or {stem}.bin")


def write_meta(directory: Path, meta: Mapping[str, Any]) -> None:
    (directory / META_FILE).write_text(json.dumps(dict(meta), indent=2, sort_keys=True) + "\n")


def read_meta(directory: Path) -> dict[str, Any]:
    path = directory / META_FILE
    if not path.is_file():
        return {}
    data: Any = json.loads(path.read_text())
    return dict(data) if isinstance(data, dict) else {}


def _has_weights(d: Path) -> bool:
    return (
        (d / "adapter_config.json").is_file()
        or (d / "config.json").is_file()
        or any((d / f"trainable.{ext}").is_file() for ext in ("safetensors", "bin"))
    )


def find_weights_dir(path: Path, *, prefer: Literal["sampler", "state"]) -> Path:
    """The directory holding weights at ``path``: itself, or its ``sampler/``/``state/``."""
    if not path.exists():
        raise NotFound(f"checkpoint {path} does not exist")
    if _has_weights(path):
        return path
    order = ("sampler", "state") if prefer == "sampler" else ("state", "sampler")
    for sub in order:
        if (path / sub).is_dir() and _has_weights(path / sub):
            return path / sub
    raise NotFound(
        f"checkpoint {path} holds no weights",
        hint="expected adapter_config.json + adapter_model.safetensors (LoRA), a model "
        "directory (config.json + model.safetensors), or a state checkpoint, or a directory "
        "with sampler/ or state/ inside",
    )

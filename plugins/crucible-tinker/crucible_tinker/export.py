"""``crucible export`` of a run trained on Tinker: its weights downloaded through the SDK,
then written by crucible-local like a local run's checkpoint.

The tinker 0.38 SDK hands out files of *external-weights* checkpoints only
(``RestClient.get_external_weights_urls``: one signed URL per file), so a
run's final sampler save also saves external weights
(:class:`~crucible_tinker.training.TinkerTrainingSession`), recorded in the
sampler checkpoint's ``metadata["external_weights"]``. Exporting downloads
those files into a temporary directory beside the output (fetched without the
API key, each file kept inside the directory) and hands it to
:func:`crucible_local.export.export`, which loads the base model named by the
run (a built-in model, a directory, or a hub id in the local cache) and writes
any format it writes. Needs crucible-local installed.
"""

from __future__ import annotations

import shutil
import tempfile
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING, Any

from crucible_core.errors import UnsupportedError

if TYPE_CHECKING:
    from crucible_core.ir.backend import CheckpointRef
    from crucible_core.ir.training import ModelSpec
    from crucible_tinker.client import Connection

__all__ = [
    "EXPORT_FORMATS",
    "EXTERNAL_KEY",
    "FINAL_NAME",
    "download",
    "export",
    "external_path",
    "local_export",
    "verify",
]

#: The sampler save whose weights are also saved as external weights (the run's final one).
FINAL_NAME = "final"
#: Where a sampler checkpoint records its external-weights twin.
EXTERNAL_KEY = "external_weights"
#: What ``crucible export --format`` writes from a Tinker run (through crucible-local).
EXPORT_FORMATS: tuple[str, ...] = ("peft", "merged", "safetensors-full", "onnx", "gguf")


def external_path(checkpoint: CheckpointRef) -> str:
    """The ``tinker://.../external_weights/...`` path holding ``checkpoint``'s files."""
    if "/external_weights/" in checkpoint.uri:
        return checkpoint.uri
    twin = checkpoint.metadata.get(EXTERNAL_KEY)
    if isinstance(twin, str) and twin:
        return twin
    raise UnsupportedError(
        f"checkpoint {checkpoint.uri}: the tinker SDK downloads only external-weights "
        "checkpoints, and this one has none recorded",
        hint="export the run's final weights (its last sampler save, named 'final', also "
        "saves external weights), or a tinker://<run>/external_weights/<name> checkpoint",
    )


def download(conn: Connection, uri: str, dest: Path) -> Path:
    """Fetch every file of the external-weights checkpoint ``uri`` into ``dest``."""
    import tinker

    def urls() -> Any:
        rest = tinker.RestClient(base_url=conn.base_url, api_key=conn.api_key.reveal())
        return rest.get_external_weights_urls(uri).result(timeout=conn.timeout)

    response = conn.blocking(urls, f"get_external_weights_urls {uri}")
    root = dest.resolve()
    for name, url in sorted(response.urls.items()):
        target = (root / name).resolve()
        if not target.is_relative_to(root):
            raise UnsupportedError(f"{uri}: unsafe file path {name!r} in the checkpoint")
        target.parent.mkdir(parents=True, exist_ok=True)

        def fetch(url: str = url, target: Path = target) -> None:
            with urllib.request.urlopen(url, timeout=conn.timeout) as src, target.open("wb") as f:
                shutil.copyfileobj(src, f)

        conn.blocking(fetch, f"downloading {name} of {uri}")
    return dest


def export(
    conn: Connection,
    model: ModelSpec,
    checkpoint: CheckpointRef,
    fmt: str,
    out: Path,
    *,
    final: Path,
) -> dict[str, Any]:
    """Download ``checkpoint``'s files and write them as ``fmt`` into ``out`` (crucible-local)."""
    from crucible_core.ir.backend import CheckpointRef

    local = local_export()
    uri = external_path(checkpoint)
    local.check_export(model, fmt, lora=True)
    with tempfile.TemporaryDirectory(prefix=".tinker-download-", dir=out.parent) as tmp:
        got = download(conn, uri, Path(tmp))
        result = local.export(
            model, CheckpointRef(uri=got.as_uri(), kind="sampler"), fmt, out, final=final
        )
    return {"base": result.base, "load_code": result.load_code, "files": result.files}


def verify(
    conn: Connection, model: ModelSpec, checkpoint: CheckpointRef, fmt: str, out: Path
) -> dict[str, Any]:
    """crucible-local's verification of ``out`` against the downloaded weights."""
    from crucible_core.ir.backend import CheckpointRef

    local_export()
    from crucible_local.verify import verify_export

    with tempfile.TemporaryDirectory(prefix=".tinker-download-", dir=out.parent) as tmp:
        got = download(conn, external_path(checkpoint), Path(tmp))
        return verify_export(model, CheckpointRef(uri=got.as_uri(), kind="sampler"), fmt, out)


def local_export() -> Any:
    """``crucible_local.export``, or UnsupportedError saying to install crucible-local."""
    try:
        import crucible_local.export as local
    except ImportError:
        raise UnsupportedError(
            "exporting a Tinker run needs crucible-local (it writes the formats)",
            hint="pip install crucible-local",
        ) from None
    return local

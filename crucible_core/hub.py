"""Uploading an export to a Hugging Face Hub repository (``checkpoint_policy.push_to_hub``).

After a successful run whose policy says ``push_to_hub = true``, the run's
export (:func:`crucible_core.train.steps.export_final`) is uploaded to
``hub_repo`` in one commit with ``huggingface_hub``'s ``HfApi.upload_folder``.
The hub is whatever ``huggingface_hub`` is configured for: ``HF_ENDPOINT``
(default: the public hub) and the token of ``HF_TOKEN`` or ``hf auth login``.
Nothing here is specific to a backend; ``huggingface_hub`` is imported only
when a push happens.

crucible-local runs the hub client offline (``HF_HUB_OFFLINE=1``: it never
downloads a model). ``push_to_hub = true`` is an explicit request to use the
network, so the upload lifts offline mode for its own duration (and only in
``huggingface_hub``; nothing else is fetched).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Generator
from pathlib import Path
from typing import Any

from crucible_core.errors import BackendError, UnsupportedError
from crucible_core.records.manifest import HubPush

__all__ = ["HubPush", "push_folder"]

_online_lock = threading.Lock()


@contextlib.contextmanager
def _online(constants: Any) -> Generator[None]:
    with _online_lock:
        before = constants.HF_HUB_OFFLINE
        constants.HF_HUB_OFFLINE = False
        try:
            yield
        finally:
            constants.HF_HUB_OFFLINE = before


def push_folder(directory: Path, repo_id: str, *, message: str) -> HubPush:
    """Upload every file of ``directory`` to the model repository ``repo_id`` (created if
    missing) in one commit. A hub that cannot be reached or refuses the upload is a
    BackendError naming the endpoint and the repository; the files stay on disk."""
    try:
        from huggingface_hub import HfApi, constants
        from huggingface_hub.errors import HfHubHTTPError
    except ImportError:
        raise UnsupportedError(
            "checkpoint_policy.push_to_hub needs the huggingface_hub package",
            hint="pip install huggingface_hub (crucible-local installs it with transformers)",
        ) from None
    endpoint = constants.ENDPOINT
    api = HfApi(endpoint=endpoint)
    try:
        with _online(constants):
            api.create_repo(repo_id, repo_type="model", exist_ok=True)
            info = api.upload_folder(
                repo_id=repo_id,
                repo_type="model",
                folder_path=str(directory),
                commit_message=message,
            )
    except (HfHubHTTPError, OSError, *_transport_errors()) as exc:
        raise BackendError(
            f"push_to_hub: uploading {directory} to {repo_id!r} at {endpoint} failed: "
            f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}",
            hint="the export is kept on disk; check the network, HF_ENDPOINT and HF_TOKEN, "
            f"then upload it with `hf upload {repo_id} {directory}`",
        ) from exc
    return HubPush(repo=repo_id, endpoint=endpoint, commit=str(info.oid), url=str(info.commit_url))


def _transport_errors() -> tuple[type[BaseException], ...]:
    """The HTTP library's own errors (connection refused, timeouts): httpx2 for
    huggingface_hub 2.x, httpx before."""
    import importlib

    for name in ("httpx2", "httpx"):
        try:
            module: Any = importlib.import_module(name)
        except ImportError:
            continue
        return (module.HTTPError,)
    return ()

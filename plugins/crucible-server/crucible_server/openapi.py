"""The committed OpenAPI document: ``python -m crucible_server.openapi > docs/openapi.json``.

The document is what ``GET /openapi.json`` serves (the app is built over a
throwaway scheduler, no request is made); a test fails when the committed
file is stale.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path
from typing import Any

__all__ = ["document", "render"]


def document() -> dict[str, Any]:
    """The OpenAPI 3.1 document of the API."""
    from crucible_core.queue.scheduler import Scheduler
    from crucible_server.app import build_app, openapi_document

    with tempfile.TemporaryDirectory() as tmp, Scheduler(Path(tmp) / "crucible.db") as sched:
        return openapi_document(build_app(sched))


def render() -> str:
    """The document as committed (2-space indent, trailing newline)."""
    return json.dumps(document(), indent=2, ensure_ascii=False) + "\n"


if __name__ == "__main__":
    sys.stdout.write(render())

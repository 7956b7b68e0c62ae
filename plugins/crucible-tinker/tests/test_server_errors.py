"""The engine raises typed errors and knows no HTTP; ``app.STATUS_OF`` alone decides the
status of each (the tinker protocol's: the SDK retries 409 and 5xx, stops on 410)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from crucible_tinker.server import TinkerServer
from crucible_tinker.server.app import status_of
from crucible_tinker.server.errors import Gone, require_seq
from crucible_tinker.server.wire import BodyTooLarge

from crucible_core.errors import (
    BackendError,
    ConfigError,
    Conflict,
    CrucibleError,
    DeadlineExceeded,
    NotFound,
    UnsupportedError,
    ValidationError,
)
from crucible_core.testing import check_light_import


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (BodyTooLarge("too big"), 413),
        (Gone("session ended"), 410),
        (NotFound("unknown model"), 404),
        (Conflict("exists"), 409),
        (ConfigError("bad request"), 400),
        # A field that fails to decode is 400 here, not crucible's 422: what the SDK expects.
        (ValidationError("$.base_model: expected str", path="$.base_model"), 400),
        (UnsupportedError("loss not supported"), 400),
        (BackendError("backend broke"), 500),
        (DeadlineExceeded("too slow"), 500),
        (CrucibleError("anything else"), 500),
    ],
)
def test_each_typed_error_has_one_status(error: CrucibleError, status: int) -> None:
    assert status_of(error) == status


def test_a_missing_sequence_number_names_the_field() -> None:
    assert require_seq(3, "seq_id") == 3
    with pytest.raises(ConfigError, match="`model_seq_id`"):
        require_seq(None, "model_seq_id")


@pytest.mark.parametrize(
    "module",
    [
        "crucible_tinker.server.engine",
        "crucible_tinker.server.ops",
        "crucible_tinker.server.sessions",
        "crucible_tinker.server.sampling",
        "crucible_tinker.server.checkpoint_index",
    ],
)
def test_engine_modules_import_no_http_stack(module: str) -> None:
    """The engine side is HTTP-free: importing it loads neither starlette nor uvicorn."""
    check_light_import(module, heavy=("starlette", "uvicorn"))


def test_request_structs_import_neither_numpy_nor_tinker() -> None:
    check_light_import("crucible_tinker.server.wire", heavy=("numpy", "tinker"))


class _CloseRecorder(logging.Handler):
    """A handler the host program made (in logging's list, attached nowhere, like absl's)."""

    def __init__(self) -> None:
        super().__init__()
        self.closed = False

    def emit(self, record: logging.LogRecord) -> None:
        pass

    def close(self) -> None:
        self.closed = True
        super().close()


def test_an_embedded_server_leaves_the_host_programs_logging_alone(local_home: Path) -> None:
    """uvicorn's default logging set-up (dictConfig) shuts down every handler in the
    process, which closed the stream of a library's handler (absl's, imported by
    rouge-score) that was pytest's capture file. Only `crucible serve-tinker`
    configures it."""
    handler = _CloseRecorder()
    with TinkerServer("local", backend_options={"home": str(local_home)}):
        pass
    assert not handler.closed

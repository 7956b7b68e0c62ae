"""Fixtures: an isolated CRUCIBLE_HOME, a real uvicorn API on 127.0.0.1, tokens, clients.

Every server here listens on 127.0.0.1 on a free port chosen by the OS, and
every wait is bounded.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import anyio
import httpx
import pytest
from crucible_server.app import ServerSettings
from crucible_server.runner import ApiServer
from crucible_server.tokens import TokenStore

from crucible_core.queue.scheduler import Scheduler

sys.path.insert(0, str(Path(__file__).parent))  # server_test_jobs, for custom jobs

ROOT = Path(__file__).resolve().parents[3]
WAIT = 120.0

# anyio imports its file module lazily, on the first static file a server thread
# serves. Under pytest that import goes through assertion rewriting (anyio is a
# pytest plugin), i.e. ast.parse, which on CPython 3.11 before 3.11.9 can fail
# with "AST constructor recursion depth mismatch" when another thread compiles at
# the same time (cpython gh-106905). Importing it here, on the main thread, first.
assert anyio.open_file is not None


@pytest.fixture(autouse=True)
def home(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    h = tmp_path / "home"
    monkeypatch.setenv("CRUCIBLE_HOME", str(h))
    monkeypatch.setenv("CRUCIBLE_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "cache"))
    return h


@pytest.fixture
def tokens(home: Path) -> Iterator[TokenStore]:
    store = TokenStore()
    yield store
    store.close()


ServerFactory = Callable[..., ApiServer]


@pytest.fixture
def start_server(home: Path) -> Iterator[ServerFactory]:
    """``start_server(tokens=..., workers=1, port=0, **settings)``: a started ApiServer,
    stopped after (``port`` reuses one, e.g. to restart a stopped server)."""
    made: list[ApiServer] = []

    def make(
        tokens: TokenStore | None = None, workers: int = 1, port: int = 0, **settings: object
    ) -> ApiServer:
        srv = ApiServer(
            Scheduler(),
            tokens=tokens,
            settings=ServerSettings(base_dir=ROOT, poll_s=0.02, **settings),  # type: ignore[arg-type]
            port=port,
            workers=workers,
            lease_s=5.0,
            drain_timeout_s=5.0,
        )
        made.append(srv.start(timeout=30))
        return srv

    yield make
    for srv in made:
        srv.stop()
        srv.scheduler.close()


ClientFactory = Callable[..., httpx.Client]


@pytest.fixture
def http() -> Iterator[ClientFactory]:
    """``http(server, token=None)``: an httpx client for the server, closed after the test."""
    made: list[httpx.Client] = []

    def make(srv: ApiServer, token: str | None = None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        c = httpx.Client(base_url=srv.url, headers=headers, timeout=WAIT)
        made.append(c)
        return c

    yield make
    for c in made:
        c.close()

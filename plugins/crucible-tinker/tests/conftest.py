"""Fixtures: a Tinker-compatible server over crucible-local on 127.0.0.1, SDK clients, datums.

Every network call in these tests goes to a server this process started on
127.0.0.1 with an ephemeral port, and every wait has a timeout.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import tinker
from crucible_tinker.server import TinkerServer
from tinker import types

#: How long any single SDK wait in these tests may take.
WAIT = 90.0
BASE_MODEL = "tiny-llama"
TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "Crucible trains tiny models on the CPU.",
    "A byte level tokenizer needs no download.",
    "Low rank adapters learn quickly.",
    "Tinker runs training loops on a clock.",
]


@pytest.fixture(autouse=True)
def _no_ambient_credentials(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Tests never read the developer's key, base URL or config files."""
    for name in ("TINKER_API_KEY", "TINKER_BASE_URL", "CRUCIBLE_TINKER_API_KEY_FILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))


@pytest.fixture(scope="session")
def local_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("local-home")


@pytest.fixture(scope="session")
def server(local_home: Path) -> Iterator[TinkerServer]:
    """One server for the session, over crucible-local; forward_backward chunks of 2 datums
    so that a batch of 5 arrives as 3 concurrent requests, the first one last."""
    srv = TinkerServer(
        "local",
        backend_options={"home": str(local_home)},
        fwdbwd_max_chunk_len=2,
        long_poll_s=5.0,
    )
    srv.start(timeout=60)
    yield srv
    srv.stop()


ServiceFactory = Callable[..., tinker.ServiceClient]


@pytest.fixture
def service_factory() -> Iterator[ServiceFactory]:
    """``service_factory(server)``: an SDK ServiceClient for a server, closed after the test."""
    made: list[tinker.ServiceClient] = []

    def make(srv: TinkerServer, **kwargs: Any) -> tinker.ServiceClient:
        client = tinker.ServiceClient(base_url=srv.url, api_key=srv.api_key, **kwargs)
        made.append(client)
        return client

    yield make
    for client in made:
        client.close("success").result(timeout=WAIT)


def byte_datums(tokenizer: Any, texts: list[str] = TEXTS) -> list[types.Datum]:
    """Next-token tinker Datums over ``texts`` with every target weighted 1."""
    out: list[types.Datum] = []
    for text in texts:
        ids = tokenizer.encode(text)
        out.append(
            types.Datum(
                model_input=types.ModelInput.from_ints(ids[:-1]),
                loss_fn_inputs={
                    "target_tokens": ids[1:],
                    "weights": [1.0] * (len(ids) - 1),
                },
            )
        )
    return out


@pytest.fixture(scope="session")
def tokenizer(local_home: Path) -> Any:
    """The tiny-llama tokenizer, borrowed from crucible-local (what the server runs)."""
    import crucible_core
    from crucible_core.ir.training import ModelSpec

    return crucible_core.get_backend("local", home=str(local_home)).get_tokenizer(
        ModelSpec(name=BASE_MODEL)
    )

"""``crucible ask --fallback`` and ``crucible sample`` go through ``routed`` when
crucible-router is installed, so a failing primary fails over per call.

The real CLI (``main``) and the router plugin; the members are simulated (``Scripted``)
because a real backend cannot be made to fail on cue.
"""

from __future__ import annotations

import json
from pathlib import Path

import crucible_router.plugin
import pytest
from crucible_router import RoutedBackend

from crucible_core import RegisterBackend, hookimpl
from crucible_core.cli.main import main
from crucible_core.cli.sample_cmd import backend_from_ref
from crucible_core.errors import BackendError
from crucible_core.ir import BackendRef
from crucible_core.testing import isolated_host

from .conftest import Scripted

MEMBERS: dict[str, Scripted] = {}


class Members:
    @hookimpl
    def register_backends(self, register: RegisterBackend) -> None:
        for name in ("prim", "spare"):
            register(name, lambda name=name: MEMBERS[name])


@pytest.fixture(autouse=True)
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("CRUCIBLE_HOME", str(tmp_path))
    return tmp_path


def test_ask_fails_over_per_call(capsys: pytest.CaptureFixture[str]) -> None:
    """The primary is installed and created, then fails on the call: only a per-call
    router answers (creation-time fallback would have raised)."""
    MEMBERS["prim"] = Scripted("prim", then=BackendError("down", retryable=True))
    MEMBERS["spare"] = Scripted("spare")
    with isolated_host(crucible_router.plugin, Members()):
        code = main(["ask", "Hi", "--backend", "prim", "--fallback", "spare", "--json"])
    assert code == 0
    assert json.loads(capsys.readouterr().out)["backend_id"] == "spare"
    assert (MEMBERS["prim"].calls, MEMBERS["spare"].calls) == (1, 1)


def test_ask_streams_through_the_fallback(capsys: pytest.CaptureFixture[str]) -> None:
    MEMBERS["prim"] = Scripted("prim", then=BackendError("down", retryable=True))
    MEMBERS["spare"] = Scripted("spare")
    with isolated_host(crucible_router.plugin, Members()):
        assert main(["ask", "Hi", "--backend", "prim", "--fallback", "spare"]) == 0
    assert capsys.readouterr().out == "spare answers this prompt\n"


def test_a_run_s_backend_with_fallbacks_is_routed() -> None:
    """What ``crucible sample`` and ``ask --model`` build from a run's ``BackendRef``:
    with fallbacks and the router installed, a routed backend whose training calls
    (``load_sampler``) stay on the first member that could be created."""
    MEMBERS["prim"] = Scripted("prim")
    MEMBERS["spare"] = Scripted("spare")
    with isolated_host(crucible_router.plugin, Members()) as host:
        routed = backend_from_ref(host, BackendRef(name="prim", fallbacks=["spare"]))
        plain = backend_from_ref(host, BackendRef(name="prim"))
        missing = backend_from_ref(host, BackendRef(name="gone", fallbacks=["spare"]))
    assert isinstance(routed, RoutedBackend)
    assert [m.name for m in routed.members] == ["prim", "spare"]
    assert plain is MEMBERS["prim"]
    assert missing.home.name == "spare"
    assert missing.create_session(None) == "session on spare"

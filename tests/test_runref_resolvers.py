"""Run references with a URI scheme go to the resolver declared for that scheme."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from crucible_core import _entrypoints
from crucible_core.cli.main import main
from crucible_core.cli.runref import RESOLVER_GROUP, expand_ref, resolve_run
from crucible_core.records.manifest import RunRecord


class _FakeEntryPoint:
    """Stands in for an installed distribution's ``crucible.resolvers`` entry (no install)."""

    def __init__(self, name: str, fn: Any) -> None:
        self.name, self.group, self._fn = name, RESOLVER_GROUP, fn

    def load(self) -> Any:
        return self._fn


@pytest.fixture
def run(crucible_home: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    d = crucible_home / "runs" / "run-1"
    RunRecord(d).update(job_id="run-1")
    seen: list[str] = []

    def fake(group: str) -> list[Any]:
        assert group == RESOLVER_GROUP
        return [_FakeEntryPoint("fake", lambda ref: seen.append(ref) or "run-1")]

    monkeypatch.setattr(_entrypoints, "entry_points", fake)
    return d


def test_a_scheme_goes_to_its_resolver(run: Path) -> None:
    assert expand_ref("fake:/anything@here") == "run-1"
    assert resolve_run("fake:/x") == run


def test_refs_without_a_scheme_and_existing_paths_are_left_alone(
    run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert expand_ref("run-1") == "run-1"
    assert expand_ref("some/path") == "some/path"
    assert expand_ref("fake:/x") == "run-1"
    (tmp_path / "fake:" / "x").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    assert expand_ref("fake:/x") == "fake:/x"  # an existing path (dir "fake:") wins


def test_a_scheme_nobody_resolves_is_a_usage_error(
    run: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["runs", "show", "nosuch:/x@y"]) == 2
    err = capsys.readouterr().err
    assert "no installed plugin resolves nosuch:/ references" in err

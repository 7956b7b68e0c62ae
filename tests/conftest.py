"""Shared fixtures for core tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from crucible_core.plugins import PluginHost, reset_host


@pytest.fixture(scope="session")
def _cache_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(tmp_path_factory.mktemp("crucible-cache"))


@pytest.fixture(autouse=True)
def _isolated_command_index(_cache_dir: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep the CLI's command index (written by commands that load plugins) out of ~/.cache."""
    monkeypatch.setenv("CRUCIBLE_CACHE_DIR", _cache_dir)


@pytest.fixture
def host() -> Iterator[PluginHost]:
    """A fresh plugin host with only the built-ins (no entry points), installed process-wide."""
    h = PluginHost(autoload=False)
    reset_host(h)
    yield h
    reset_host(None)


@pytest.fixture
def crucible_home(tmp_path, monkeypatch):  # type: ignore[no-untyped-def]
    """An isolated CRUCIBLE_HOME for the test."""
    home = tmp_path / "crucible-home"
    monkeypatch.setenv("CRUCIBLE_HOME", str(home))
    return home

"""Registration: light plugin module, lazy factories, static capabilities, the CLI command."""

from __future__ import annotations

import argparse
from importlib.metadata import entry_points

import pytest
from crucible_tinker import plugin

from crucible_core.contracts import Command
from crucible_core.plugins import PluginHost
from crucible_core.testing import check_light_import


def test_plugin_module_imports_nothing_heavy() -> None:
    check_light_import("crucible_tinker.plugin")
    check_light_import("crucible_tinker.server")  # the server package is lazy too
    check_light_import("crucible_tinker.cli")


@pytest.mark.parametrize(
    "module",
    [
        "crucible_tinker",
        "crucible_tinker.plugin",
        # The backend and its parts load tinker and numpy on first use, not on import.
        "crucible_tinker.backend",
        "crucible_tinker.client",
        "crucible_tinker.conversion",
        "crucible_tinker.training",
        "crucible_tinker.sampler",
        "crucible_tinker.tokenizers",
    ],
)
def test_importing_does_not_load_tinker_or_numpy(module: str) -> None:
    """A fresh interpreter imports ``module``; neither SDK nor numpy may be in sys.modules."""
    check_light_import(module, heavy=("tinker", "numpy", "torch", "transformers"))


def test_entry_point_is_declared() -> None:
    names = {ep.name: ep.value for ep in entry_points(group="crucible")}
    assert names.get("tinker") == "crucible_tinker.plugin"


def test_registers_backend_and_command_lazily() -> None:
    host = PluginHost(autoload=False)
    host.add_plugin(plugin, name="tinker", distribution="crucible-tinker")
    backend = host.get("backend", "tinker")
    assert backend.factory == "crucible_tinker.backend:TinkerBackend"
    assert backend.plugin == "tinker"
    caps = backend.capabilities
    assert caps is not None
    assert caps.backend_id == "tinker"
    assert caps.supports_training
    assert caps.adapters == ["lora"]
    assert "cross_entropy" in caps.losses
    assert "custom" in caps.losses
    assert {"ppo", "cispo", "gspo", "dro"} <= set(caps.losses)  # crucible plan accepts them
    cmd = host.get("command", "serve-tinker")
    assert cmd.factory == "crucible_tinker.cli:command"
    command = cmd.load()
    assert isinstance(command, Command)
    parser = argparse.ArgumentParser()
    command.configure(parser)
    args = parser.parse_args(["--port", "0", "--api-key", "tml-a", "--backend", "local"])
    assert (args.port, args.api_key, args.backend, args.host) == (
        0,
        ["tml-a"],
        "local",
        "127.0.0.1",
    )

"""`open_backend`: the three forms a composing backend's members may take."""

from __future__ import annotations

from pathlib import Path

import pytest

from crucible_core import open_backend
from crucible_core.errors import ConfigError, NotFound
from crucible_core.plugins import PluginHost
from tests.toy_backend import ToyBackend, toy_plugin


@pytest.fixture
def toy(host: PluginHost, crucible_home: Path) -> PluginHost:
    host.add_plugin(toy_plugin(), name="toy")
    return host


def test_names_and_tables_are_built_objects_are_taken(toy: PluginHost) -> None:
    built, owned = open_backend("toy", field="f")
    assert isinstance(built, ToyBackend)
    assert owned
    built, owned = open_backend({"name": "toy", "options": {}, "weight": 2}, field="f",
                                keys=("name", "options", "weight"))  # fmt: skip
    assert isinstance(built, ToyBackend)
    assert owned
    mine = ToyBackend()
    assert open_backend(mine, field="f") == (mine, False)


def test_what_is_not_a_backend_names_the_field(toy: PluginHost) -> None:
    with pytest.raises(
        ConfigError, match=r"m\[0\]: expected a table with 'name' \(and optional 'options'\)"
    ):
        open_backend({"name": "toy", "weight": 2}, field="m[0]")
    with pytest.raises(ConfigError, match=r"m\[1\]: int is not a backend name"):
        open_backend(42, field="m[1]")
    with pytest.raises(NotFound, match="did you mean 'toy'"):
        open_backend("tyo", field="m[2]")


def test_options_a_factory_does_not_take_are_a_config_error_naming_them(
    toy: PluginHost,
) -> None:
    """The host checks options against the factory's signature before calling it."""
    import crucible_core

    with pytest.raises(
        ConfigError, match=r"'toy' \(plugin 'toy'\) refused its options \['bogus'\]"
    ) as info:
        crucible_core.get_backend("toy", bogus=1)
    assert info.value.details["refused_options"] == ["bogus"]
    assert info.value.hint is not None
    assert info.value.hint.startswith("backend 'toy' takes:")

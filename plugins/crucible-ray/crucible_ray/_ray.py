"""The one place ``ray`` is imported: lazily, with an install hint when it is missing."""

from __future__ import annotations

from typing import Any

from crucible_core.errors import ConfigError

INSTALL_HINT = "pip install crucible-ray (it installs ray>=2.40,<3)"


def import_ray() -> Any:
    """The ``ray`` module, or a ConfigError (exit 2) saying how to install it."""
    try:
        import ray
    except ImportError as exc:
        raise ConfigError(
            f"the ray executor needs the ray package, which is not importable here ({exc})",
            hint=INSTALL_HINT,
            option="executor",
        ) from None
    return ray

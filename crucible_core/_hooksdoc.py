"""Render the hooks reference (docs/hooks.md) from the hook specs' docstrings.

Run ``python -m crucible_core._hooksdoc > docs/hooks.md``; a test fails when the
committed file differs, so the reference never drifts from the specs.
"""

from __future__ import annotations

import inspect

from crucible_core import hookspecs
from crucible_core.hookspecs import HookSpecs

__all__ = ["render", "signature"]


def signature(name: str) -> str:
    """``hook_name(arg, ...)`` as plugins implement it (without ``self``)."""
    params = [p for p in inspect.signature(getattr(HookSpecs, name)).parameters if p != "self"]
    return f"{name}({', '.join(params)})"


def render() -> str:
    """The Markdown hooks reference."""
    lines = [
        "# Hooks reference",
        "",
        "Generated from `crucible_core/hookspecs.py` by "
        "`python -m crucible_core._hooksdoc > docs/hooks.md`; do not edit by hand.",
        "",
        inspect.cleandoc(hookspecs.__doc__ or ""),
        "",
    ]
    for name, fn in inspect.getmembers(HookSpecs, inspect.isfunction):
        lines += [f"## `{signature(name)}`", "", inspect.cleandoc(fn.__doc__ or ""), ""]
    return "\n".join(lines).rstrip() + "\n"


if __name__ == "__main__":
    print(render(), end="")

"""Printing helpers shared by commands: JSON on stdout, diagnostics on stderr."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

import msgspec

__all__ = ["print_error", "print_json", "print_table", "warn"]


def print_json(data: Any) -> None:
    """Write ``data`` as indented JSON to stdout (stable keys, one document).

    Values JSON has no type for (paths, exceptions...) are written as their ``str``.
    """
    text = msgspec.json.encode(data, enc_hook=str)
    sys.stdout.write(msgspec.json.format(text, indent=2).decode() + "\n")


def warn(message: str) -> None:
    """A diagnostic line on stderr."""
    sys.stderr.write(f"warning: {message}\n")


def print_error(message: str, hint: str | None = None) -> None:
    """An error on stderr, with its hint on the next line."""
    sys.stderr.write(f"error: {message}\n")
    if hint:
        sys.stderr.write(f"  hint: {hint}\n")


def print_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """A plain aligned table on stdout (no colours: it is read by people and by grep)."""
    cells = [[str(h) for h in headers], *[[("" if c is None else str(c)) for c in r] for r in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    for n, row in enumerate(cells):
        sys.stdout.write("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
        sys.stdout.write("\n")
        if n == 0:
            sys.stdout.write("  ".join("-" * w for w in widths) + "\n")

"""crucible-harness: ``crucible eval``, statistics a statistician would sign, reports.

Importing this package is cheap: numpy and scipy load only when
:mod:`crucible_harness.stats` (or a command that needs it) is imported.
"""

from __future__ import annotations

__all__: list[str] = []

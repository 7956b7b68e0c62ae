"""Text similarity for the semantic strategy: pluggable, with a dependency-free default."""

from __future__ import annotations

from collections.abc import Callable

__all__ = ["Similarity", "token_overlap"]

#: ``similarity(a, b)`` in [0, 1], symmetric, 1 for equal keys.
Similarity = Callable[[str, str], float]


def token_overlap(a: str, b: str) -> float:
    """Jaccard overlap of the two keys' whitespace tokens (1.0 when the keys are equal).

    Keys are already normalised (case, punctuation, numbers), so this measures
    how many words two answers share: "paris france" and "paris" score 0.5.
    """
    if a == b:
        return 1.0
    ta, tb = set(a.split()), set(b.split())
    if not ta or not tb:
        return 0.0
    return len(ta & tb) / len(ta | tb)

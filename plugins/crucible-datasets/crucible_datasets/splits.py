"""Splits and sampling: by ratio with a seed, stratified by a field, k-fold.

Every function is deterministic in ``seed`` (Python's ``random.Random`` with an
integer seed gives the same permutation on every platform and version 3.2+),
returns rows in their original order inside each part, and partitions its
input: every row lands in exactly one part (one validation fold for k-fold).

Counts follow the largest-remainder rule, so the part sizes always sum to the
number of rows and each differs from ``ratio * n`` by less than one.
Stratified splits apply the rule per class, so each class is split in the
same proportions (to within one row per class).
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import Any, TypeVar

from crucible_core.errors import ConfigError

__all__ = [
    "allocate",
    "kfold",
    "sample_rows",
    "split_by_ratio",
    "stratified_split",
    "train_validation_split",
]

T = TypeVar("T")
Key = str | Callable[[Any], Hashable]


def allocate(n: int, ratios: Sequence[float]) -> list[int]:
    """Split ``n`` into integer counts proportional to ``ratios`` (largest remainder)."""
    total = sum(ratios)
    if total <= 0:
        raise ConfigError(
            "split ratios must sum to more than 0", hint="e.g. {train = 0.9, validation = 0.1}"
        )
    exact = [n * r / total for r in ratios]
    counts = [math.floor(x) for x in exact]
    order = sorted(range(len(ratios)), key=lambda i: (-(exact[i] - counts[i]), i))
    for i in order[: n - sum(counts)]:
        counts[i] += 1
    return counts


def _check_ratios(ratios: Mapping[str, float]) -> None:
    if not ratios:
        raise ConfigError(
            "no split ratios given", hint="e.g. {train = 0.8, validation = 0.1, test = 0.1}"
        )
    for name, r in ratios.items():
        if not (isinstance(r, int | float) and r >= 0 and math.isfinite(r)):
            raise ConfigError(f"split ratio {name!r} must be a number >= 0, got {r!r}")
    total = sum(ratios.values())
    if abs(total - 1.0) > 1e-6:
        raise ConfigError(
            f"split ratios must sum to 1, got {total:g} "
            f"({', '.join(f'{k}={v:g}' for k, v in ratios.items())})",
            hint="e.g. {train = 0.8, validation = 0.1, test = 0.1}",
        )


def _key_fn(key: Key) -> Callable[[Any], Hashable]:
    if callable(key):
        return key

    def get(row: Any) -> Hashable:
        try:
            value = row[key]
        except (KeyError, TypeError):
            fields = ", ".join(map(str, row)) if isinstance(row, Mapping) else "?"
            raise ConfigError(
                f"cannot stratify by {key!r}: a row has no such field",
                hint=f"available fields: {fields}",
            ) from None
        return value if isinstance(value, Hashable) else repr(value)

    return get


def split_by_ratio(
    rows: Sequence[T], ratios: Mapping[str, float], *, seed: int = 0
) -> dict[str, list[T]]:
    """Split ``rows`` into named parts (``{"train": 0.8, "validation": 0.1, "test": 0.1}``)."""
    _check_ratios(ratios)
    names = list(ratios)
    counts = allocate(len(rows), [ratios[n] for n in names])
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    out: dict[str, list[T]] = {}
    start = 0
    for name, count in zip(names, counts, strict=True):
        chosen = sorted(order[start : start + count])
        out[name] = [rows[i] for i in chosen]
        start += count
    return out


def stratified_split(
    rows: Sequence[T], ratios: Mapping[str, float], by: Key, *, seed: int = 0
) -> dict[str, list[T]]:
    """Like :func:`split_by_ratio`, with each value of ``by`` split in the same proportions.

    ``by`` is a field name or a function of the row.
    """
    _check_ratios(ratios)
    key = _key_fn(by)
    groups: dict[Hashable, list[int]] = {}
    for i, row in enumerate(rows):
        groups.setdefault(key(row), []).append(i)
    rng = random.Random(seed)
    names = list(ratios)
    parts: dict[str, list[int]] = {n: [] for n in names}
    for label in sorted(groups, key=repr):
        members = groups[label]
        rng.shuffle(members)
        counts = allocate(len(members), [ratios[n] for n in names])
        start = 0
        for name, count in zip(names, counts, strict=True):
            parts[name].extend(members[start : start + count])
            start += count
    return {n: [rows[i] for i in sorted(idx)] for n, idx in parts.items()}


def train_validation_split(
    rows: Sequence[T], ratio: float, *, seed: int = 0
) -> tuple[list[T], list[T]]:
    """(train, validation) with ``round(ratio * n)`` validation rows, kept within [1, n - 1].

    ``ratio = 0`` gives no validation rows; so does a dataset of fewer than two rows.
    """
    if not 0 <= ratio < 1:
        raise ConfigError(f"validation_ratio must be in [0, 1), got {ratio}")
    n = len(rows)
    if ratio == 0 or n < 2:
        return list(rows), []
    n_val = min(max(1, round(ratio * n)), n - 1)
    order = list(range(n))
    random.Random(seed).shuffle(order)
    val = set(order[:n_val])
    return [r for i, r in enumerate(rows) if i not in val], [
        r for i, r in enumerate(rows) if i in val
    ]


def kfold(
    rows: Sequence[T], k: int, *, seed: int = 0, stratify_by: Key | None = None
) -> list[tuple[list[T], list[T]]]:
    """``k`` (train, validation) folds; every row is in exactly one validation fold.

    Fold sizes differ by at most one. With ``stratify_by``, each class is dealt
    round-robin across folds, so every fold holds each class in proportion.
    """
    n = len(rows)
    if k < 2:
        raise ConfigError(f"k-fold needs k >= 2, got {k}")
    if k > n:
        raise ConfigError(f"k-fold needs at least k rows: k = {k}, rows = {n}", hint="lower k")
    rng = random.Random(seed)
    fold_of = [0] * n
    if stratify_by is None:
        order = list(range(n))
        rng.shuffle(order)
        for pos, i in enumerate(order):
            fold_of[i] = pos % k
    else:
        key = _key_fn(stratify_by)
        groups: dict[Hashable, list[int]] = {}
        for i, row in enumerate(rows):
            groups.setdefault(key(row), []).append(i)
        pos = 0
        for label in sorted(groups, key=repr):
            members = groups[label]
            rng.shuffle(members)
            for i in members:
                fold_of[i] = pos % k
                pos += 1
    folds: list[tuple[list[T], list[T]]] = []
    for f in range(k):
        train = [r for i, r in enumerate(rows) if fold_of[i] != f]
        val = [r for i, r in enumerate(rows) if fold_of[i] == f]
        folds.append((train, val))
    return folds


def sample_rows(rows: Sequence[T], n: int, *, seed: int = 0) -> list[T]:
    """``n`` rows drawn without replacement, in their original order."""
    if not 0 <= n <= len(rows):
        raise ConfigError(f"cannot sample {n} rows from {len(rows)}")
    chosen = sorted(random.Random(seed).sample(range(len(rows)), n))
    return [rows[i] for i in chosen]

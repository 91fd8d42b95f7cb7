"""Mixing prompt datasets by weight (e.g. 70% math, 20% code, 10% logic for all-domain RL)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import datasets


def mix_counts(sizes: Sequence[int], weights: Sequence[float], total: int | None = None) -> list[int]:
    """Rows to take from each part: `total` split in proportion to `weights`, rounded by largest
    remainder so the counts sum to `total`. With `total=None`, the largest total no part runs
    short for.

    >>> mix_counts([100, 100], [3, 1], total=8)
    [6, 2]
    >>> mix_counts([100, 10], [1, 1])
    [10, 10]

    Raises:
        ValueError: lengths differ, a weight is negative, all are zero, or a part is too small.
    """
    if len(sizes) != len(weights):
        raise ValueError(f"{len(sizes)} parts but {len(weights)} weights")
    if any(w < 0 for w in weights) or not sum(weights):
        raise ValueError(f"weights must be >= 0 and not all zero, got {list(weights)}")
    shares = [w / sum(weights) for w in weights]
    if total is None:
        total = min(math.floor(n / p + 1e-9) for n, p in zip(sizes, shares) if p > 0)
    exact = [p * total for p in shares]
    counts = [math.floor(x) for x in exact]
    by_remainder = sorted(range(len(exact)), key=lambda i: (counts[i] - exact[i], i))
    for i in by_remainder[: total - sum(counts)]:
        counts[i] += 1
    for i, (n, size) in enumerate(zip(counts, sizes)):
        if n > size:
            raise ValueError(f"part {i} has {size} rows but the mixture needs {n}; lower total or its weight")
    return counts


def mix(
    parts: Sequence[datasets.Dataset],
    weights: Sequence[float] | None = None,
    *,
    total: int | None = None,
    seed: int = 0,
    shuffle: bool = True,
) -> datasets.Dataset:
    """Sample a mixture of datasets with the same columns (e.g. from `load_prompts`).

    Each part gives `mix_counts(...)[i]` rows: its first rows after a shuffle seeded with `seed`
    (or in order when `shuffle=False`); the concatenation is then shuffled with `seed`.
    Deterministic for a seed. `weights=None` means equal weights.

    Raises:
        ValueError: see `mix_counts`; datasets' own error when the columns differ.
    """
    weights = [1.0] * len(parts) if weights is None else weights
    counts = mix_counts([len(p) for p in parts], weights, total)
    taken = []
    for part, n in zip(parts, counts):
        part = part.shuffle(seed=seed) if shuffle else part
        taken.append(part.select(range(n)))
    mixed = datasets.concatenate_datasets(taken)
    return mixed.shuffle(seed=seed) if shuffle else mixed

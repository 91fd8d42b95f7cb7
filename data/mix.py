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


def stratify(dataset: datasets.Dataset, column: str = "data_source", seed: int = 0) -> datasets.Dataset:
    """Reorder rows round-robin over the values of ``column`` (each group shuffled with ``seed``).

    Any ``k`` consecutive rows then hold ``k`` different groups while at least ``k`` groups have
    rows left, so a training step that takes the next ``k >= groups`` prompts sees every source
    once: step-to-step changes of the reward measure learning, not which tasks were drawn.
    Groups appear in order of first occurrence; a group that runs out drops out of the rotation
    (no row repeated: datasets' ``all_exhausted_without_replacement``).

    >>> ds = datasets.Dataset.from_dict({"data_source": list("aaabbc"), "i": list(range(6))})
    >>> stratify(ds, seed=0)["data_source"][:]
    ['a', 'b', 'c', 'a', 'b', 'a']

    Raises:
        KeyError: ``column`` is not a column of ``dataset``.
    """
    if column not in dataset.column_names:
        raise KeyError(f"stratify: no column {column!r}; columns: {dataset.column_names}")
    values = dataset[column][:]
    groups = list(dict.fromkeys(values))
    if len(groups) < 2:
        return dataset.shuffle(seed=seed)
    parts = [dataset.select([i for i, v in enumerate(values) if v == g]).shuffle(seed=seed) for g in groups]
    return datasets.interleave_datasets(parts, stopping_strategy="all_exhausted_without_replacement")

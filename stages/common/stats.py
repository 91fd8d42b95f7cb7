"""Estimators and tests: unbiased pass@k, bootstrap intervals, the sign test, Wilson intervals.

Pure functions of numbers (numpy imported inside), shared by the ``eval`` stage, its paired
comparison (``r1 eval compare``), its general block (``stages.common.general_eval``), the
``reward_model`` stage's pair accuracy and the report.
"""

from __future__ import annotations

import math

CI_METHOD = "95% percentile bootstrap over questions (1000 resamples, resampling seed 0)"


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k of one question from ``n`` samples of which ``c`` are correct:
    ``1 - C(n-c, k) / C(n, k)``, the probability that at least one of k samples drawn without
    replacement is correct (Chen et al. 2021, "Evaluating Large Language Models Trained on
    Code", eq. 1 and their numerically stable product form).

    >>> pass_at_k(4, 1, 1), pass_at_k(4, 1, 4), round(pass_at_k(10, 3, 2), 4)
    (0.25, 1.0, 0.5333)

    Raises:
        ValueError: unless 0 <= c <= n and 1 <= k <= n.
    """
    if not (0 <= c <= n and 1 <= k <= n):
        raise ValueError(f"pass_at_k needs 0 <= c <= n and 1 <= k <= n; got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    return 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))


def bootstrap_ci(values, resamples: int = 1000, seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``values`` (one value per question).

    Questions are resampled with replacement, so the k samples of a question stay together
    (Efron & Tibshirani 1993, ch. 13). Deterministic for a given ``seed``. Empty input -> (nan, nan).

    >>> bootstrap_ci([1.0] * 5)
    (1.0, 1.0)
    """
    import numpy as np

    x = np.asarray(list(values), dtype=float)
    if x.size == 0:
        return (math.nan, math.nan)
    rng = np.random.default_rng(seed)
    chunk = max(1, 2_000_000 // x.size)  # bound the index matrix to ~16 MB
    means = np.concatenate(
        [
            x[rng.integers(0, x.size, size=(min(chunk, resamples - i), x.size))].mean(axis=1)
            for i in range(0, resamples, chunk)
        ]
    )
    lo, hi = np.percentile(means, [50 * (1 - level), 50 * (1 + level)])
    return (float(lo), float(hi))


def sign_test(wins: int, losses: int) -> float:
    """Exact two-sided sign test: p-value of ``wins`` vs ``losses`` under "each non-tied question
    is equally likely to go either way" (Binomial(wins + losses, 1/2); ties are dropped).
    Equals the exact McNemar test when each question is one pass/fail trial.

    >>> sign_test(0, 0), sign_test(5, 5), round(sign_test(9, 1), 4)
    (1.0, 1.0, 0.0215)
    """
    n = wins + losses
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(wins, losses) + 1))
    return min(1.0, 2 * tail / 2**n)


def wilson_interval(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a proportion k/n (Wilson 1927, "Probable inference, the law
    of succession, and statistical inference", JASA 22); (nan, nan) for n = 0.

    >>> [round(x, 3) for x in wilson_interval(45, 50)]
    [0.786, 0.957]
    """
    if n == 0:
        return (math.nan, math.nan)
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (max(0.0, centre - half), min(1.0, centre + half))

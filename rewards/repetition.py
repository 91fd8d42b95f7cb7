"""N-gram repetition penalty (Yeo et al. 2025, "Demystifying Long Chain-of-Thought Reasoning
in LLMs", arXiv:2502.03373; formula as in open-r1's `get_repetition_penalty_reward`).

``penalty = max_penalty * (1 - distinct n-grams / total n-grams)`` over lower-cased
whitespace-separated words of the whole completion. Units: words, not tokens.
"""

from __future__ import annotations

from rewards.base import Batch, Reward, Tally
from rewards.registry import register


def repetition_penalty(text: str, ngram: int = 3, max_penalty: float = -1.0) -> float:
    """The penalty for one text; 0.0 when it has fewer than `ngram` words.

    >>> repetition_penalty("a b c d e f")
    0.0
    >>> repetition_penalty("go on " * 50, ngram=2)  # 99 bigrams, 2 distinct
    -0.9797979797979798
    """
    words = text.lower().split()
    if len(words) < ngram:
        return 0.0
    ngrams = [tuple(words[i : i + ngram]) for i in range(len(words) - ngram + 1)]
    return max_penalty * (1.0 - len(set(ngrams)) / len(ngrams)) + 0.0  # + 0.0 turns -0.0 into 0.0


@register("repetition")
class Repetition(Reward):
    """N-gram repetition penalty in [max_penalty, 0]: max_penalty * share of repeated word n-grams.

    `ngram`: n-gram size in words; `max_penalty`: value for a text made of one repeated
    n-gram (must be <= 0). Never None.

    >>> Repetition(ngram=2)(["", ""], ["the cat sat on the mat", "go on " * 50])
    [0.0, -0.9797979797979798]

    Raises:
        ValueError: if ngram < 1 or max_penalty > 0.
    """

    def __init__(self, ngram: int = 3, max_penalty: float = -1.0) -> None:
        super().__init__()
        if ngram < 1:
            raise ValueError(f"ngram must be >= 1, got {ngram}")
        if max_penalty > 0:
            raise ValueError(f"max_penalty is a penalty and must be <= 0, got {max_penalty}")
        self.ngram, self.max_penalty = ngram, max_penalty

    def score_batch(self, batch: Batch, tally: Tally) -> list[float | None]:
        return [repetition_penalty(text, self.ngram, self.max_penalty) for text in batch.completions]

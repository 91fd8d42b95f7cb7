"""Scoring sampled completions: rewards per completion, the answer a sample votes for, majority vote.

Shared by ``generate`` (rewards stored per SFT row, read by the filters) and ``eval``
(correctness and format per sample, ``maj@k``).
"""

from __future__ import annotations

from collections import Counter

REWARD_COLUMNS = ("answer", "verification", "domain", "data_source", "id")  # prompt-row columns rewards read


def score(reward_names: list[str], rows: list[dict], completions: list[str]) -> dict[str, list]:
    """Score ``completions`` (one per prompt row, aligned) with each named reward.

    Rewards get the TRL signature (``prompts, completions, **columns``) with the prompt-row
    columns of ``REWARD_COLUMNS``. Returns name -> list of ``float | None`` (None: the reward
    cannot judge that completion). Raises what ``rewards.registry.get`` raises for an unknown name.
    """
    from rewards import registry

    columns = {k: [r[k] for r in rows] for k in REWARD_COLUMNS}
    prompts = [r["prompt"] for r in rows]
    return {name: list(registry.get(name)(prompts, completions, **columns)) for name in reward_names}


def vote_key(text: str, domain: str) -> str | None:
    """The final answer a sample votes for in ``maj@k``: the answer region graded by the
    rewards (``rewards.text.answer_region``: last ``<answer>`` block after ``</think>``); for
    math its graded candidate (last ``\\boxed{}``, else the short answer, as
    ``rewards.math.answer_candidate``); whitespace collapsed, lower-cased. None = no answer.
    Answers are clustered by this string, not by mathematical equivalence (``1/2`` and
    ``0.5`` are two votes).

    >>> vote_key("<think>hm</think><answer> 42 </answer>", "math")
    '\\\\boxed{42}'
    >>> vote_key("<think>never closed", "math") is None
    True
    """
    from rewards.math import answer_candidate
    from rewards.text import answer_region

    region = answer_region(text)
    if region is None:
        return None
    key = answer_candidate(region) if domain == "math" else region
    key = " ".join((key or "").split()).lower()
    return key or None


def majority_vote(keys: list[str | None], correct: list[bool]) -> tuple[str | None, bool]:
    """``maj@k`` of one question (self-consistency, Wang et al. 2023): the most frequent
    non-empty answer and whether it is correct. Ties go to the answer seen first (lowest sample
    index), so the result is deterministic; no answer at all -> (None, False).

    >>> majority_vote(["a", "b", "b", None], [True, False, False, False])
    ('b', False)
    """
    votes = Counter(k for k in keys if k is not None)
    if not votes:
        return None, False
    top = max(votes, key=lambda k: (votes[k], -keys.index(k)))
    return top, next(c for k, c in zip(keys, correct) if k == top)

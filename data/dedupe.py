"""Exact and near duplicates among responses: one key, used by rejection sampling and ``r1 inspect``.

A response is a **duplicate** when its whitespace-normalised text (:func:`normalise`) equals an
earlier response's *of the same prompt*, and a **near duplicate** when, among the responses of
the same prompt that are not exact duplicates, its character 5-gram set (:func:`shingles`) has
a Jaccard similarity of at least a threshold with an earlier unflagged one. "The same prompt"
is the same :func:`prompt_key` (every message before the response: system prompt, earlier
turns, the question), or the whole dataset (``groups=None``). The ``generate`` stage drops what
:func:`duplicate_verdicts` flags (its funnel counts them) and ``r1 inspect`` reports the same
flags, so a dataset's duplicate share in ``r1 inspect`` agrees with its card.

Why character 5-grams and MinHash: the R1 report does not say how duplicates are found; this
is the usual near-duplicate detection of dataset pipelines. Exact pairwise Jaccard up to
``EXACT_LIMIT`` texts (one prompt's samples); MinHash LSH (datasketch, fixed seed) above.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence

MINHASH_PERMUTATIONS = 128
MINHASH_SEED = 1  # fixed: verdicts must not change between runs
SHINGLE_CHARS = 5
EXACT_LIMIT = 64  # up to this many texts, near duplicates are found by exact pairwise Jaccard

_SPACE = re.compile(r"\s+")


def normalise(text: str) -> str:
    """Whitespace collapsed to one space and stripped: the key of exact-duplicate detection.

    >>> normalise("  <think>a\\n\\n b</think> ")
    '<think>a b</think>'
    """
    return _SPACE.sub(" ", text).strip()


def prompt_key(messages: Sequence[dict]) -> str:
    """The prompt a response answers, as a grouping key: every message's role and content, in
    order (``messages`` = the conversation before the response).

    >>> prompt_key([{"role": "user", "content": "Hi"}])
    '[["user", "Hi"]]'
    """
    return json.dumps([[m["role"], m["content"]] for m in messages], ensure_ascii=False)


def shingles(text: str, size: int = SHINGLE_CHARS) -> set[bytes]:
    """Character ``size``-grams of the lower-cased, whitespace-normalised text (UTF-8 bytes).

    >>> sorted(shingles("Ab  C", size=3))
    [b'ab ', b'b c']
    """
    norm = normalise(text).lower()
    if len(norm) <= size:
        return {norm.encode()}
    return {norm[i : i + size].encode() for i in range(len(norm) - size + 1)}


def minhashes(texts: Sequence[str]) -> list:
    """One ``datasketch.MinHash`` (128 permutations, fixed seed) per text, over :func:`shingles`."""
    from datasketch import MinHash

    return MinHash.bulk([list(shingles(t)) for t in texts], num_perm=MINHASH_PERMUTATIONS, seed=MINHASH_SEED)


def jaccard(a: set, b: set) -> float:
    """Exact Jaccard similarity |a & b| / |a | b| of two shingle sets (1.0 for two empty sets)."""
    return len(a & b) / len(a | b) if a or b else 1.0


def near_duplicate_flags(texts: Sequence[str], threshold: float = 0.85) -> list[bool]:
    """For each text, True when its Jaccard similarity over character 5-gram shingles
    (:func:`shingles`) with an **earlier unflagged** text is at least ``threshold``.

    Up to ``EXACT_LIMIT`` (64) texts — one prompt's samples — all pairs are compared with the
    exact Jaccard similarity. Larger inputs go through a ``datasketch.MinHashLSH`` index (128
    permutations, fixed seed) and the candidates it returns are kept when their MinHash
    estimate reaches ``threshold``. Deterministic.

    >>> near_duplicate_flags(["The sum is 12, so the answer is 12.",
    ...                       "The sum is 12, so the answer is 12!", "Completely different text."])
    [False, True, False]
    """
    if len(texts) <= EXACT_LIMIT:
        kept: list[set] = []
        flags = []
        for t in texts:
            sh = shingles(t)
            flags.append(any(jaccard(sh, other) >= threshold for other in kept))
            if not flags[-1]:
                kept.append(sh)
        return flags
    from datasketch import MinHashLSH

    hashes = minhashes(texts)
    flags = [False] * len(texts)
    lsh = MinHashLSH(threshold=threshold, num_perm=MINHASH_PERMUTATIONS)
    for i, h in enumerate(hashes):
        if any(h.jaccard(hashes[j]) >= threshold for j in lsh.query(h)):
            flags[i] = True
        else:
            lsh.insert(i, h)
    return flags


def duplicate_verdicts(
    texts: Sequence[str], groups: Sequence[str] | None = None, exact: bool = True, near_threshold: float | None = 0.85
) -> list[str | None]:
    """``"duplicate"``, ``"near_duplicate"`` or None for each text (module docstring).

    Args:
        texts: the responses, in order (the first of equal ones is kept).
        groups: each text's prompt key (:func:`prompt_key`); duplicates are looked for within
            a group. None = one group (the whole dataset).
        exact: look for exact duplicates (whitespace-normalised).
        near_threshold: Jaccard threshold of near duplicates, among texts that are not exact
            duplicates; None = no near-duplicate detection.

    >>> duplicate_verdicts(["a  b", "a b", "c"], groups=["p", "p", "p"])
    [None, 'duplicate', None]
    >>> duplicate_verdicts(["a b", "a b"], groups=["p", "q"])
    [None, None]
    """
    out: list[str | None] = [None] * len(texts)
    members: dict[str, list[int]] = {}
    for i, group in enumerate(groups if groups is not None else [""] * len(texts)):
        members.setdefault(group, []).append(i)
    for idx in members.values():
        if exact:
            seen: set[str] = set()
            for i in idx:
                key = normalise(texts[i])
                if key in seen:
                    out[i] = "duplicate"
                seen.add(key)
        if near_threshold is not None:
            rest = [i for i in idx if out[i] is None]
            for i, flag in zip(rest, near_duplicate_flags([texts[i] for i in rest], near_threshold)):
                if flag:
                    out[i] = "near_duplicate"
    return out

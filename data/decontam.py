"""Decontamination: drop training prompts that share a word n-gram with an evaluation prompt.

The R1 report and open-r1 decontaminate training data against evaluation sets by 8-gram
overlap. Text is normalised before comparing: lower-cased, split into words with `\\w+`
(punctuation and whitespace are separators), so "What is 2+3?" -> ["what", "is", "2", "3"].
A text shorter than `n` words has no n-gram and therefore never matches: very short questions
(e.g. "Calculate 4 - 1.") need exact-match deduplication instead (reasoning-gym test rows
already skip questions present in train).

Departure from plain n-gram matching: an n-gram found in at least `template_min_texts` (3)
distinct evaluation texts is treated as template text (task instructions such as reasoning-gym's
"Give the result as your final answer. Do not include units.") and ignored. Without this, every
training question of a procedural task overlaps its own test questions through the shared
instructions and decontamination empties the training set. Copied *content* is specific to one
evaluation question and is still caught. Pass `template_min_texts=None` for plain matching.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Collection, Iterable, Mapping

import datasets

from data.prompts import question_of

_WORD = re.compile(r"\w+")
TEMPLATE_N = 4  # template text is found as word 4-grams (short enough to cover instruction fragments)
TEMPLATE_MIN_SHARE = 0.01  # ... in at least 1% of a large group's texts


def _words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def word_ngrams(text: str, n: int = 8) -> set[tuple[str, ...]]:
    """The set of word n-grams of `text` after normalisation (module docstring).

    >>> sorted(word_ngrams("A b, c D!", n=3))
    [('a', 'b', 'c'), ('b', 'c', 'd')]
    """
    words = _WORD.findall(text.lower())
    return {tuple(words[i : i + n]) for i in range(len(words) - n + 1)}


def template_ngrams(groups: Iterable[Collection[str]], min_texts: int,
                    min_share: float = TEMPLATE_MIN_SHARE) -> set[tuple[str, ...]]:
    """Word 4-grams found in at least `max(min_texts, min_share * len(group))` distinct texts of
    one group: task text (instructions), not content. Counted per group (e.g. per data source),
    so a procedural task's instructions are template even when that task is a small part of
    the mix, while a natural-language set only loses its truly common phrases.

    >>> sorted(template_ngrams([["a b c d x", "a b c d y", "a b c d z", "e f g h"]], min_texts=3))
    [('a', 'b', 'c', 'd')]
    """
    template: set[tuple[str, ...]] = set()
    for group in groups:
        texts = set(group)
        floor = max(min_texts, math.ceil(min_share * len(texts)))
        counts = Counter(g for text in texts for g in word_ngrams(text, TEMPLATE_N))
        template |= {g for g, c in counts.items() if c >= floor}
    return template


def content_ngrams(text: str, template: set[tuple[str, ...]], n: int = 8) -> set[tuple[str, ...]]:
    """Word n-grams of `text` made of content words only: words covered by a template 4-gram
    are cut out and an n-gram never spans a cut. With an empty `template`, `word_ngrams`.

    >>> sorted(content_ngrams("a b c d e f", {("a", "b", "c", "d")}, n=2))
    [('e', 'f')]
    """
    words = _words(text)
    if not template:
        return {tuple(words[i : i + n]) for i in range(len(words) - n + 1)}
    cut = [False] * len(words)
    for i in range(len(words) - TEMPLATE_N + 1):
        if tuple(words[i : i + TEMPLATE_N]) in template:
            cut[i : i + TEMPLATE_N] = [True] * TEMPLATE_N
    grams: set[tuple[str, ...]] = set()
    run: list[str] = []
    for word, is_cut in zip([*words, ""], [*cut, True]):
        if is_cut:
            grams |= {tuple(run[i : i + n]) for i in range(len(run) - n + 1)}
            run = []
        else:
            run.append(word)
    return grams


def ngram_overlap(
    train_texts: Mapping[str, str],
    eval_texts: Iterable[str],
    n: int = 8,
    template_min_texts: int | None = 3,
) -> list[str]:
    """Ids of training texts sharing at least one word n-gram with any evaluation text.

    Args:
        train_texts: id -> text (e.g. a prompt row's question).
        eval_texts: evaluation texts (questions of the held-out sets).
        n: n-gram length in words (8, as in the R1 report / open-r1).
        template_min_texts: n-grams in at least this many distinct evaluation texts are template
            text and ignored (module docstring); None = use every n-gram.

    Returns:
        The offending ids, in `train_texts` order.

    Raises:
        ValueError: n < 1.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    texts_with = Counter(gram for text in set(eval_texts) for gram in word_ngrams(text, n))
    eval_grams = {g for g, k in texts_with.items() if template_min_texts is None or k < template_min_texts}
    return [i for i, text in train_texts.items() if not eval_grams.isdisjoint(word_ngrams(text, n))]


def decontaminate(
    train: datasets.Dataset,
    eval_sets: Iterable[datasets.Dataset],
    n: int = 8,
    template_min_texts: int | None = 3,
) -> tuple[datasets.Dataset, list[str]]:
    """Remove from `train` the prompt rows whose question overlaps any evaluation set's questions.

    Questions are the user text of each row's `prompt` (`data.prompts.question_of`), so the
    shared system prompt or R1-Zero preamble never counts as overlap. `n` and
    `template_min_texts` as in `ngram_overlap`.

    Returns:
        (the kept rows, the removed ids).
    """
    train_texts = {row["id"]: question_of(row["prompt"]) for row in train}
    eval_texts = (question_of(prompt) for eval_set in eval_sets for prompt in eval_set["prompt"])
    removed = ngram_overlap(train_texts, eval_texts, n, template_min_texts)
    dropped = set(removed)
    kept = train.filter(lambda row_id: row_id not in dropped, input_columns="id")
    return kept, removed

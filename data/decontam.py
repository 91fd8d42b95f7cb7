"""Decontamination: drop training prompts that share a word n-gram with an evaluation prompt.

The R1 report and open-r1 decontaminate training data against evaluation sets by 8-gram
overlap. Text is normalised before comparing: lower-cased, split into words with `\\w+`
(punctuation and whitespace are separators), so "What is 2+3?" -> ["what", "is", "2", "3"].
A training text is contaminated when

1. it shares a *content* word n-gram (below) with an evaluation text, or
2. it equals an evaluation text after lower-casing and removing all whitespace (an exact copy;
   symbols count here, so "Calculate 0 + 4." is not a copy of "Calculate 0 - 4."). This catches
   copies of questions shorter than `n` words, which have no n-gram.

Departure from plain n-gram matching: task instructions are not content. Procedural tasks
(reasoning-gym) wrap every question in the same sentences ("State the final answer to the
following arithmetic problem:"), so plain 8-grams link every training question of a task to
every evaluation question of it, and an 8-gram of 7 instruction words plus one number links
unrelated questions that happen to start with the same number. So:

- a word 4-gram (`TEMPLATE_N`) is *template text* when it occurs in at least
  `max(template_min_texts, TEMPLATE_MIN_SHARE * k)` distinct texts of one group of `k`
  evaluation texts (default 3), or in at least `max(TRAIN_TEMPLATE_MIN_TEXTS, TEMPLATE_MIN_SHARE
  * k)` distinct texts of one group of `k` training texts (10). Groups are data sources in
  `decontaminate` (the whole set in `ngram_overlap` unless `train_groups` is given);
- words covered by a template 4-gram are cut out of every text, and content n-grams are the
  n-grams of the remaining runs of words (an n-gram never spans a cut).

Why both sides: with only 1 or 2 evaluation questions of a task, no instruction can reach 3
evaluation texts, and the evaluation side alone used to remove every training prompt of the
task (issue 19, item 10: chain_sum with 2 eval questions, 40/40 removed). The training side
shows the instructions in every one of its texts. Why 10 training texts (and the 1% share of
large groups): a real leak is one evaluation question copied into a few training texts; its
4-grams only count as template once they are in 10 distinct training texts of one source (and
an exact copy is still caught by rule 2). A group too small to show its template (fewer than 10
training texts and fewer than 3 evaluation texts) keeps plain matching; a source that loses
every prompt is logged as a warning. `template_min_texts=None` turns template detection off
(plain n-gram matching, plus rule 2).
"""

from __future__ import annotations

import logging
import math
import re
from collections import Counter, defaultdict
from collections.abc import Collection, Iterable, Mapping

import datasets

from data.prompts import question_of

log = logging.getLogger(__name__)
_WORD = re.compile(r"\w+")
TEMPLATE_N = 4  # template text is found as word 4-grams (short enough to cover instruction fragments)
TEMPLATE_MIN_SHARE = 0.01  # ... in at least 1% of a large group's texts
TRAIN_TEMPLATE_MIN_TEXTS = 10  # ... and in at least 10 distinct training texts of one group


def _words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def _exact_key(text: str) -> str:
    """Rule 2's normal form: lower-cased, whitespace removed, symbols kept."""
    return "".join(text.lower().split())


def word_ngrams(text: str, n: int = 8) -> set[tuple[str, ...]]:
    """The set of word n-grams of `text` after normalisation (module docstring).

    >>> sorted(word_ngrams("A b, c D!", n=3))
    [('a', 'b', 'c'), ('b', 'c', 'd')]
    """
    words = _words(text)
    return {tuple(words[i : i + n]) for i in range(len(words) - n + 1)}


def template_ngrams(
    groups: Iterable[Collection[str]], min_texts: int, min_share: float = TEMPLATE_MIN_SHARE
) -> set[tuple[str, ...]]:
    """Word 4-grams found in at least `max(min_texts, min_share * len(group))` distinct texts of
    one group (module docstring).

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


def _overlap(
    train_texts: Mapping[str, str],
    train_groups: Mapping[str, str] | None,
    eval_groups: Iterable[Collection[str]],
    n: int,
    template_min_texts: int | None,
) -> list[str]:
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if template_min_texts is not None and template_min_texts < 1:
        raise ValueError(f"template_min_texts must be >= 1 or None, got {template_min_texts}")
    eval_groups = [set(group) for group in eval_groups]
    template: set[tuple[str, ...]] = set()
    if template_min_texts is not None:
        by_group: dict[str, set[str]] = defaultdict(set)
        for row_id, text in train_texts.items():
            by_group[train_groups[row_id] if train_groups is not None else ""].add(text)
        template = template_ngrams(eval_groups, template_min_texts) | template_ngrams(
            by_group.values(), max(TRAIN_TEMPLATE_MIN_TEXTS, template_min_texts)
        )
    eval_grams: set[tuple[str, ...]] = set()
    eval_keys: set[str] = set()
    for group in eval_groups:
        for text in group:
            eval_grams |= content_ngrams(text, template, n)
            eval_keys.add(_exact_key(text))
    eval_keys.discard("")
    return [
        row_id
        for row_id, text in train_texts.items()
        if _exact_key(text) in eval_keys or not eval_grams.isdisjoint(content_ngrams(text, template, n))
    ]


def ngram_overlap(
    train_texts: Mapping[str, str],
    eval_texts: Iterable[str],
    n: int = 8,
    template_min_texts: int | None = 3,
    *,
    train_groups: Mapping[str, str] | None = None,
) -> list[str]:
    """Ids of training texts that copy an evaluation text: a shared content word n-gram or the
    same words (module docstring).

    Args:
        train_texts: id -> text (e.g. a prompt row's question).
        eval_texts: evaluation texts (questions of the held-out sets), one group.
        n: n-gram length in words (8, as in the R1 report / open-r1).
        template_min_texts: a 4-gram in at least this many distinct evaluation texts (and at
            least `TEMPLATE_MIN_SHARE` of them) is template text; the training side needs
            `max(TRAIN_TEMPLATE_MIN_TEXTS, template_min_texts)`. None = no template detection.
        train_groups: id -> group name (e.g. data source) for the training-side template count;
            None = all training texts form one group.

    Returns:
        The offending ids, in `train_texts` order. Logs a warning when that is every id.

    Raises:
        ValueError: n < 1 or template_min_texts < 1.
    """
    removed = _overlap(train_texts, train_groups, [list(eval_texts)], n, template_min_texts)
    if removed and len(removed) == len(train_texts):
        log.warning("decontamination removed every training text (%d/%d)", len(removed), len(train_texts))
    return removed


def decontaminate(
    train: datasets.Dataset,
    eval_sets: Iterable[datasets.Dataset],
    n: int = 8,
    template_min_texts: int | None = 3,
) -> tuple[datasets.Dataset, list[str]]:
    """Remove from `train` the prompt rows whose question copies a question of an evaluation set.

    Questions are the user text of each row's `prompt` (`data.prompts.question_of`), so the
    shared system prompt or R1-Zero preamble never counts as overlap. Template text is counted
    per `data_source`, on both sides (module docstring). `n` and `template_min_texts` as in
    `ngram_overlap`. A data source that loses every one of its rows is logged as a warning
    (it usually means its evaluation set is too small to tell instructions from content).

    Returns:
        (the kept rows, the removed ids in `train` order).
    """
    train_texts = {row["id"]: question_of(row["prompt"]) for row in train}
    train_groups = dict(zip(train["id"], train["data_source"]))
    eval_groups: dict[str, list[str]] = defaultdict(list)
    for eval_set in eval_sets:
        for source, prompt in zip(eval_set["data_source"], eval_set["prompt"]):
            eval_groups[source].append(question_of(prompt))
    removed = _overlap(train_texts, train_groups, eval_groups.values(), n, template_min_texts)
    dropped = set(removed)
    sizes = Counter(train_groups.values())
    lost = Counter(train_groups[row_id] for row_id in removed)
    for source, k in lost.items():
        if k == sizes[source]:
            log.warning(
                "decontamination removed every prompt of %s (%d/%d): its questions share n-grams with "
                "the evaluation questions; too few evaluation or training questions of it to tell "
                "instructions from content? (data.decontam)",
                source,
                k,
                k,
            )
    kept = train.filter(lambda row_id: row_id not in dropped, input_columns="id")
    return kept, removed

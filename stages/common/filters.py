"""Rejection-sampling filters: which sampled responses become SFT rows, and why the others did not.

DeepSeek-R1 (section 2.3.3) keeps, from several samples per prompt of the RL checkpoint, only
the correct ones, and drops "chain-of-thought with mixed languages, long paragraphs, and code
blocks". This module holds those rules as pure functions of the samples, so the ``generate``
stage, ``r1 inspect`` and the tests share one definition.

Every sample gets exactly one verdict: the name of the **first** filter in :data:`FILTERS`
that drops it, or ``None`` when it is kept. The funnel in the dataset card therefore adds up:
``sampled == kept + sum(dropped per filter)``.

Units: lengths are **tokens** of the sampling model for ``min_tokens``/``max_tokens`` (the
sampler's count of generated tokens) and **characters** for ``max_paragraph_chars``; language
mixing counts **words** (CJK: characters), see :mod:`rewards.language`.

Duplicates (exact and near) are found by :mod:`data.dedupe`, with the key ``r1 inspect`` uses
too. The pass-rate band comes from data-selection practice in open reproductions (keep prompts
neither always nor never solved), not from R1.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from pydantic import model_validator

from data.dedupe import duplicate_verdicts
from pipeline.config import StrictModel

# Order matters: a sample is counted under the first filter that drops it.
FILTERS = (
    "truncated",
    "length",
    "incorrect",
    "unverifiable",
    "bad_format",
    "language_mixing",
    "long_paragraph",
    "unexpected_code",
    "pass_rate",
    "duplicate",
    "near_duplicate",
    "over_max_per_prompt",
)


class Filters(StrictModel):
    """Which samples survive, applied in the order of ``FILTERS``; each drop is counted once."""

    drop_truncated: bool = True  # stopped at sampling.max_tokens instead of EOS: unfinished reasoning
    min_tokens: int = 0  # drop completions shorter than this many generated tokens
    max_tokens: int | None = None  # drop completions longer than this many generated tokens (None = no limit)
    require_correct: bool = True  # the `accuracy` reward must be 1.0
    keep_unverifiable: bool = False  # keep samples whose correctness is None (cannot be judged)
    require_format: bool = True  # the `format` reward must be 1.0
    language: str | None = "en"  # target language of the reasoning; None = no language-mixing check
    min_language_share: float = 0.95  # below this share of reasoning words in `language` = mixed
    max_paragraph_chars: int | None = 2000  # longest paragraph (split at blank lines), characters; None = off
    drop_unexpected_code: bool = True  # drop samples with a ``` code block whose domain is not in code_domains
    code_domains: list[str] = ["code"]
    min_pass_rate: float = 0.0  # keep prompts whose pass rate (share of verified samples with
    max_pass_rate: float = 1.0  # accuracy 1.0) lies in [min_pass_rate, max_pass_rate]
    dedupe: bool = True  # drop exact duplicates (whitespace-normalised) of an earlier kept response
    near_duplicate_threshold: float | None = 0.85  # MinHash Jaccard of character 5-grams; None = off
    dedupe_scope: Literal["prompt", "dataset"] = "prompt"  # duplicates within one prompt's samples, or anywhere
    select: Literal["first", "best"] = "first"  # per prompt: lowest sample index first, or highest reward first
    select_reward: str | None = None  # `best` ranks by this reward; None = sum of all scored rewards
    max_per_prompt: int | None = 2  # keep at most N samples per prompt; None = all survivors

    @model_validator(mode="after")
    def _check(self) -> Filters:
        # Checked here so a typo fails at config time, not after an hour of sampling.
        from rewards.language import LANGUAGES

        if self.language is not None and self.language not in LANGUAGES:
            raise ValueError(f"language {self.language!r} is not supported; supported: {', '.join(LANGUAGES)}")
        if not 0.0 <= self.min_language_share <= 1.0:
            raise ValueError(f"min_language_share must be in [0, 1], got {self.min_language_share}")
        if not 0.0 <= self.min_pass_rate <= self.max_pass_rate <= 1.0:
            raise ValueError(
                f"need 0 <= min_pass_rate <= max_pass_rate <= 1, got [{self.min_pass_rate}, {self.max_pass_rate}]"
            )
        if self.near_duplicate_threshold is not None and not 0.0 < self.near_duplicate_threshold <= 1.0:
            raise ValueError(f"near_duplicate_threshold must be in (0, 1], got {self.near_duplicate_threshold}")
        if self.max_per_prompt is not None and self.max_per_prompt < 1:
            raise ValueError(f"max_per_prompt must be >= 1 or null, got {self.max_per_prompt}")
        if self.max_tokens is not None and self.max_tokens < self.min_tokens:
            raise ValueError(f"max_tokens ({self.max_tokens}) < min_tokens ({self.min_tokens})")
        return self

    def needed_rewards(self) -> set[str]:
        """Rewards the enabled filters read (the stage must score them)."""
        needed = set()
        if self.require_correct or self.min_pass_rate > 0.0 or self.max_pass_rate < 1.0:
            needed.add("accuracy")
        if self.require_format:
            needed.add("format")
        if self.select == "best" and self.select_reward:
            needed.add(self.select_reward)
        return needed


@dataclass
class Sample:
    """One sampled response, as the filters see it.

    ``text`` is the completion (assistant text); ``num_tokens`` counts its generated tokens;
    ``rewards`` maps reward name -> value (None = cannot be judged). ``prompt_text`` (optional)
    is the prompt as shown to the model: two prompt ids with the same text (procedural
    generators repeat questions) are one prompt for duplicate detection.
    """

    prompt_id: str
    index: int  # sample index within its prompt, 0..k-1
    domain: str
    text: str
    num_tokens: int = 0
    truncated: bool = False
    rewards: dict[str, float | None] = field(default_factory=dict)
    prompt_text: str = ""


# ----------------------------------------------------------------------------- per-sample rules

_TAGS = re.compile(r"</?(?:think|answer)>")
_PARAGRAPH_BREAK = re.compile(r"\n[ \t]*\n")
_FENCE = re.compile(r"```")


def reasoning_of(text: str) -> str:
    """The reasoning of a response: its think block, or the whole text without one.

    >>> reasoning_of("<think>a b</think><answer>c</answer>"), reasoning_of("just c")
    ('a b', 'just c')
    """
    from rewards.text import reasoning_text

    return reasoning_text(text)


def language_share_of(text: str, language: str = "en") -> float | None:
    """Share of the reasoning's words in ``language`` (:func:`rewards.language.language_share`),
    None when the reasoning has no words (e.g. only arithmetic)."""
    from rewards.language import language_share

    return language_share(reasoning_of(text), language)


def is_language_mixed(text: str, language: str = "en", min_share: float = 0.95) -> bool:
    """True when less than ``min_share`` of the reasoning's words are in ``language``.

    A reasoning without words cannot be judged and is not mixed.

    >>> is_language_mixed("<think>Add 2 and 3, 然后 check the sum.</think><answer>5</answer>")
    True
    >>> is_language_mixed("<think>Add 2 and 3 to get 5.</think><answer>5</answer>")
    False
    """
    share = language_share_of(text, language)
    return share is not None and share < min_share


def longest_paragraph_chars(text: str) -> int:
    """Length in **characters** of the longest paragraph (split at blank lines, tags removed).

    >>> longest_paragraph_chars("<think>ab\\n\\nabcd</think><answer>x</answer>")
    4
    """
    return max((len(p.strip()) for p in _PARAGRAPH_BREAK.split(_TAGS.sub("\n\n", text))), default=0)


def has_code_block(text: str) -> bool:
    """True when the response contains a fenced (```) code block, in the reasoning or answer.

    >>> has_code_block("<think>x</think><answer>```python\\nprint(1)\\n```</answer>")
    True
    """
    return _FENCE.search(text) is not None


def pass_rate(samples: Sequence[Sample]) -> float | None:
    """Share of a prompt's samples with ``accuracy`` 1.0, among those with a verdict;
    None when no sample could be judged (or ``accuracy`` was not scored).

    >>> pass_rate([Sample("p", i, "math", "x", rewards={"accuracy": a}) for i, a in enumerate([1.0, 0.0, None])])
    0.5
    """
    judged = [a for s in samples if (a := s.rewards.get("accuracy")) is not None]
    return sum(a >= 1.0 for a in judged) / len(judged) if judged else None


def sample_verdict(s: Sample, f: Filters) -> str | None:
    """The first per-sample filter that drops ``s`` (a name from ``FILTERS``), or None."""
    acc = s.rewards.get("accuracy")
    if f.drop_truncated and s.truncated:
        return "truncated"
    if s.num_tokens < f.min_tokens or (f.max_tokens is not None and s.num_tokens > f.max_tokens):
        return "length"
    if f.require_correct and acc is not None and acc < 1.0:
        return "incorrect"
    if f.require_correct and acc is None and not f.keep_unverifiable:
        return "unverifiable"
    if f.require_format and (s.rewards.get("format") or 0.0) < 1.0:
        return "bad_format"
    if f.language is not None and is_language_mixed(s.text, f.language, f.min_language_share):
        return "language_mixing"
    if f.max_paragraph_chars is not None and longest_paragraph_chars(s.text) > f.max_paragraph_chars:
        return "long_paragraph"
    if f.drop_unexpected_code and s.domain not in f.code_domains and has_code_block(s.text):
        return "unexpected_code"
    return None


# ----------------------------------------------------------------------------- all samples


def _selection_score(s: Sample, f: Filters) -> float:
    if f.select_reward:
        return s.rewards.get(f.select_reward) or 0.0
    return sum(v for v in s.rewards.values() if v is not None)


def verdicts(samples: Sequence[Sample], f: Filters) -> list[str | None]:
    """For each sample, the name of the filter that dropped it, or None when it is kept.

    ``samples`` are all samples of all prompts (a prompt's samples need not be adjacent);
    the result is aligned with it. Steps: per-sample rules (:func:`sample_verdict`), the
    pass-rate band per prompt (computed on **all** of its samples), exact then near
    duplicates (within ``dedupe_scope``: samples of prompts with the same ``prompt_text``, or
    the whole dataset; the first occurrence in input order survives), and selection per
    prompt (``select``, ``max_per_prompt``). Deterministic.
    """
    out: list[str | None] = [sample_verdict(s, f) for s in samples]
    by_prompt: dict[str, list[int]] = {}
    for i, s in enumerate(samples):
        by_prompt.setdefault(s.prompt_id, []).append(i)

    if f.min_pass_rate > 0.0 or f.max_pass_rate < 1.0:
        for idx in by_prompt.values():
            rate = pass_rate([samples[i] for i in idx])
            if rate is not None and not f.min_pass_rate <= rate <= f.max_pass_rate:
                for i in idx:
                    out[i] = out[i] or "pass_rate"

    # Duplicates among the samples still kept, within a prompt (same prompt text: procedural
    # generators repeat questions under new ids) or across the dataset (data.dedupe).
    alive = [i for i in range(len(samples)) if out[i] is None]
    groups = (
        None if f.dedupe_scope == "dataset" else [samples[i].prompt_text or "\0" + samples[i].prompt_id for i in alive]
    )
    for i, verdict in zip(
        alive, duplicate_verdicts([samples[i].text for i in alive], groups, f.dedupe, f.near_duplicate_threshold)
    ):
        out[i] = verdict or out[i]

    if f.max_per_prompt is not None:
        for idx in by_prompt.values():
            alive = [i for i in idx if out[i] is None]
            if f.select == "best":
                alive.sort(key=lambda i: (-_selection_score(samples[i], f), samples[i].index))
            else:
                alive.sort(key=lambda i: samples[i].index)
            for i in alive[f.max_per_prompt :]:
                out[i] = "over_max_per_prompt"
    return out


def funnel(verdict_list: Sequence[str | None]) -> list[dict]:
    """The filter funnel: ``[{"filter", "dropped", "remaining"}, ...]`` in ``FILTERS`` order,
    starting from every sample; the last ``remaining`` is the number kept.

    >>> funnel([None, "incorrect", "duplicate", None])[2]
    {'filter': 'incorrect', 'dropped': 1, 'remaining': 3}
    """
    remaining = len(verdict_list)
    rows = []
    for name in FILTERS:
        dropped = sum(v == name for v in verdict_list)
        remaining -= dropped
        rows.append({"filter": name, "dropped": dropped, "remaining": remaining})
    return rows


def funnel_from_counts(counts: dict) -> list[dict]:
    """The funnel again from a ``generate`` step's manifest counts (``sampled`` and one
    ``dropped_<filter>`` per filter, in the order applied), for readers without its card.

    >>> funnel_from_counts({"sampled": 10, "kept": 6, "dropped_truncated": 3, "dropped_incorrect": 1})
    [{'filter': 'truncated', 'dropped': 3, 'remaining': 7}, {'filter': 'incorrect', 'dropped': 1, 'remaining': 6}]
    """
    remaining, rows = counts.get("sampled", 0), []
    for key, dropped in counts.items():
        if key.startswith("dropped_"):
            remaining -= dropped
            rows.append({"filter": key.removeprefix("dropped_"), "dropped": dropped, "remaining": remaining})
    return rows

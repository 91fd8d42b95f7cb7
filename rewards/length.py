r"""Length-shaped rewards: cosine length scaling, Kimi k1.5's group length reward and DAPO's soft
overlong punishment.

Length unit: **tokens** when the trainer passes ``completion_ids`` (TRL's GRPOTrainer does);
else tokens of the `tokenizer` parameter (a Hugging Face name or path, loaded once per
process) when set; else **characters**, and then `max_len` / `max_tokens` / `cache_tokens` are
read as characters. The ratio length/limit is clamped to [0, 1] where the formula needs it.
"""

from __future__ import annotations

import math
import threading
from typing import Any

from rewards.accuracy import Accuracy
from rewards.base import Batch, Reward, Tally
from rewards.registry import register

_tokenizers: dict[str, Any] = {}
_tokenizer_lock = threading.Lock()


def completion_lengths(batch: Batch, tokenizer: str | None = None, reward: str = "length") -> list[int]:
    """Length of each completion: tokens from ``completion_ids``, else tokens of `tokenizer`,
    else characters (see the module docstring).

    Raises:
        ValueError: if ``completion_ids`` is given for some rows and not others (their lengths
            would be in different units, and a row's score would depend on its neighbours).
    """
    ids = batch.columns.get("completion_ids")
    if isinstance(ids, (list, tuple)):
        missing = sum(x is None for x in ids)
        if not missing:
            return [len(x) for x in ids]
        if missing < len(ids):
            raise ValueError(
                f"reward {reward!r}: completion_ids given for {len(ids) - missing} of {len(ids)} rows: "
                "give them for every row or none (lengths would mix tokens with characters)"
            )
    if tokenizer:
        with _tokenizer_lock:
            if tokenizer not in _tokenizers:
                from transformers import AutoTokenizer

                _tokenizers[tokenizer] = AutoTokenizer.from_pretrained(tokenizer)
        tok = _tokenizers[tokenizer]
        return [len(tok(text, add_special_tokens=False)["input_ids"]) for text in batch.completions]
    return [len(text) for text in batch.completions]


def cosine_scaled(
    correct: bool,
    length: int,
    max_len: int,
    min_value_wrong: float,
    max_value_wrong: float,
    min_value_correct: float,
    max_value_correct: float,
) -> float:
    """Cosine length-scaled reward of Yeo et al. 2025, "Demystifying Long Chain-of-Thought
    Reasoning in LLMs" (arXiv:2502.03373), as implemented in open-r1 (`get_cosine_scaled_reward`),
    with its default values.

    ``r = end + (start - end) * (1 + cos(pi * t / T)) / 2`` with t = min(length, T), `start`
    the value at length 0 and `end` the value at T (= `max_len`). A correct
    answer earns `max_value_correct` at length 0, falling to `min_value_correct` at T; a wrong
    answer gets `min_value_wrong` at length 0, rising to `max_value_wrong` at T, so failing
    after long thought is punished less than failing fast. Lengths beyond T are clamped.

    >>> cosine_scaled(True, 0, 100, -1.0, -0.5, 0.5, 1.0), cosine_scaled(True, 100, 100, -1.0, -0.5, 0.5, 1.0)
    (1.0, 0.5)
    >>> cosine_scaled(False, 0, 100, -1.0, -0.5, 0.5, 1.0), cosine_scaled(False, 500, 100, -1.0, -0.5, 0.5, 1.0)
    (-1.0, -0.5)
    """
    progress = min(max(length / max_len, 0.0), 1.0)
    start, end = (max_value_correct, min_value_correct) if correct else (min_value_wrong, max_value_wrong)
    return end + 0.5 * (start - end) * (1.0 + math.cos(progress * math.pi))


@register("cosine_length")
class CosineLength(Reward):
    """Cosine length-scaled correctness (Yeo et al. 2025): short right answers earn most, long wrong ones lose least.

    Correctness comes from the `accuracy` dispatcher (math-verify, code tests, reasoning-gym):
    correct means accuracy >= 1.0; None when accuracy is None. `max_len` is in tokens when
    ``completion_ids`` are passed, else in `tokenizer` tokens, else characters (module
    docstring). Values in [min_value_wrong, max_value_correct].

    >>> fn = CosineLength(max_len=100)
    >>> fn(["", ""], [r"\\boxed{4}", r"\\boxed{5}"], answer=["4", "4"], completion_ids=[[0] * 50, [0] * 50])
    [0.75, -0.75]
    """

    def __init__(
        self,
        max_len: int = 1000,
        min_value_wrong: float = -1.0,
        max_value_wrong: float = -0.5,
        min_value_correct: float = 0.5,
        max_value_correct: float = 1.0,
        tokenizer: str | None = None,
        timeout: float = 5.0,
    ) -> None:
        super().__init__()
        if max_len <= 0:
            raise ValueError(f"max_len must be > 0, got {max_len}")
        self.max_len = max_len
        self.min_value_wrong, self.max_value_wrong = min_value_wrong, max_value_wrong
        self.min_value_correct, self.max_value_correct = min_value_correct, max_value_correct
        self.tokenizer = tokenizer
        self._accuracy = Accuracy(timeout=timeout)

    def score_batch(self, batch: Batch, tally: Tally) -> list[float | None]:
        accuracy = self._accuracy.score_batch(batch, tally)
        lengths = completion_lengths(batch, self.tokenizer, self.__name__)
        return [
            None
            if acc is None
            else cosine_scaled(
                acc >= 1.0,
                n,
                self.max_len,
                self.min_value_wrong,
                self.max_value_wrong,
                self.min_value_correct,
                self.max_value_correct,
            )
            for acc, n in zip(accuracy, lengths)
        ]


def overlong_penalty(length: int, max_tokens: int, cache_tokens: int) -> float:
    """DAPO soft overlong punishment (Yu et al. 2025, arXiv:2503.14476, "Overlong Reward Shaping").

    0 up to ``max_tokens - cache_tokens``; then falls linearly to -1 at `max_tokens`;
    -1 beyond.

    >>> [overlong_penalty(n, 100, 20) for n in (80, 90, 100, 120)]
    [0.0, -0.5, -1.0, -1.0]
    """
    expected = max_tokens - cache_tokens
    if length <= expected:
        return 0.0
    if length <= max_tokens:
        return (expected - length) / cache_tokens
    return -1.0


@register("overlong")
class Overlong(Reward):
    """DAPO soft overlong punishment: 0 until max_tokens - cache_tokens, linear to -1 at max_tokens, -1 beyond.

    Length in tokens from ``completion_ids`` (else `tokenizer` tokens, else characters; see the
    module docstring). Add it to the accuracy reward; values in [-1, 0], never None.

    >>> Overlong(max_tokens=100, cache_tokens=20)([""], ["x"], completion_ids=[[1] * 90])
    [-0.5]

    Raises:
        ValueError: unless 0 < cache_tokens <= max_tokens.
    """

    def __init__(self, max_tokens: int = 4096, cache_tokens: int = 512, tokenizer: str | None = None) -> None:
        super().__init__()
        if not 0 < cache_tokens <= max_tokens:
            raise ValueError(
                f"need 0 < cache_tokens <= max_tokens, got cache_tokens={cache_tokens}, max_tokens={max_tokens}"
            )
        self.max_tokens, self.cache_tokens, self.tokenizer = max_tokens, cache_tokens, tokenizer

    def score_batch(self, batch: Batch, tally: Tally) -> list[float | None]:
        lengths = completion_lengths(batch, self.tokenizer, self.__name__)
        return [overlong_penalty(n, self.max_tokens, self.cache_tokens) for n in lengths]


def kimi_length(lengths: list[int], correct: list[bool | None], groups: list) -> list[float | None]:
    """Length reward of Kimi k1.5 (Kimi Team 2025, "Kimi k1.5: Scaling Reinforcement Learning
    with LLMs", arXiv:2501.12599, sec. 2.3.3 "Length Penalty"; open-r1's ``len_reward``).

    Within each group of responses to one problem, ``lambda = 0.5 - (len - min_len) /
    (max_len - min_len)``: +0.5 for the shortest, -0.5 for the longest. A correct response gets
    ``lambda``, a wrong one ``min(0, lambda)`` (length is never rewarded on a wrong answer); a
    group whose responses all have the same length gets 0. Correctness None -> None (its length
    still counts toward the group's min and max). Departure from open-r1, which takes min and
    max over the whole batch: here per problem, as the paper defines it.

    >>> kimi_length([10, 20, 30, 30], [True, False, True, None], ["q", "q", "q", "q"])
    [0.5, 0.0, -0.5, None]
    >>> kimi_length([10, 30], [False, True], ["a", "b"])  # one response per problem: no spread
    [0.0, 0.0]
    """
    spread: dict = {}
    for n, g in zip(lengths, groups):
        low, high = spread.get(g, (n, n))
        spread[g] = (min(low, n), max(high, n))
    out: list[float | None] = []
    for n, ok, g in zip(lengths, correct, groups):
        low, high = spread[g]
        lam = 0.0 if high == low else 0.5 - (n - low) / (high - low)
        out.append(None if ok is None else (lam if ok else min(0.0, lam)) + 0.0)  # + 0.0: no -0.0
    return out


@register("kimi_length")
class KimiLength(Reward):
    """Kimi k1.5 length reward per problem: in [-0.5, 0.5], shortest correct +0.5, longest -0.5, wrong ones <= 0.

    Responses are grouped by the prompt row's ``id`` (the G completions of one prompt share it
    in GRPO), else by prompt text. Correct = the `accuracy` dispatcher's 1.0; None where
    accuracy is None. Length in tokens from ``completion_ids``, else `tokenizer` tokens, else
    characters (module docstring). Meant to be added to the accuracy reward with a small weight
    (the paper warms it up late in training).

    >>> fn = KimiLength()
    >>> fn(["", "", ""], [r"\\boxed{4}", r"\\boxed{5}", r"\\boxed{4}"], answer=["4"] * 3, id=["q"] * 3,
    ...    completion_ids=[[0] * 10, [0] * 20, [0] * 30])
    [0.5, 0.0, -0.5]
    """

    def __init__(self, tokenizer: str | None = None, timeout: float = 5.0) -> None:
        super().__init__()
        self.tokenizer = tokenizer
        self._accuracy = Accuracy(timeout=timeout)

    def score_batch(self, batch: Batch, tally: Tally) -> list[float | None]:
        accuracy = self._accuracy.score_batch(batch, tally)
        lengths = completion_lengths(batch, self.tokenizer, self.__name__)
        groups = [prompt if row_id is None else row_id for row_id, prompt in zip(batch.column("id"), batch.prompts)]
        return kimi_length(lengths, [None if a is None else a >= 1.0 for a in accuracy], groups)

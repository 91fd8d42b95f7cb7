r"""Layout rewards: the R1 think/answer format, partial tag credit, and reasoning-step markers.

Departures from open-r1 (`src/open_r1/rewards.py`), each one a fault seen in practice:

- `format` matches the *whole* text with `re.fullmatch` under DOTALL and also counts the
  tags. open-r1's ``re.match(r"^<think>\n.*?\n</think>\n<answer>\n.*?\n</answer>$", ...,
  re.DOTALL | re.MULTILINE)`` lets ``$`` match at any line end, so trailing text and repeated
  think/answer pairs pass.
- When the chat template already opened ``<think>`` (the prompt ends with it), the prefill is
  prepended before scoring; otherwise every sample scores 0 and GRPO gets no signal.
- `reasoning_steps` anchors line-start markers with MULTILINE, so a numbered list after an
  introduction line counts.

All three measure characters/markers only; none needs tokens.
"""

from __future__ import annotations

import re

from rewards.base import Batch, Reward
from rewards.registry import register
from rewards.text import ANSWER_CLOSE, ANSWER_OPEN, THINK_CLOSE, THINK_OPEN, think_prefill

_LAYOUT = re.compile(r"\s*<think>.*?</think>\s*<answer>.*?</answer>\s*", re.DOTALL)
_TAGS = (THINK_OPEN, THINK_CLOSE, ANSWER_OPEN, ANSWER_CLOSE)


class _Layout(Reward):
    """Shared by the tag rewards: the text to score is the prompt's prefill plus the completion."""

    def __init__(self, assume_think_open: bool = False) -> None:
        super().__init__()
        self.assume_think_open = assume_think_open

    def full_text(self, batch: Batch, i: int) -> str:
        prefill = think_prefill(batch.prompts[i])
        if not prefill and self.assume_think_open:
            prefill = THINK_OPEN
        return prefill + batch.completions[i]


@register("format")
class Format(_Layout):
    r"""1.0 iff the text is exactly one <think>…</think> block then one <answer>…</answer> block.

    Whitespace is allowed around and between the blocks; anything else (text after the answer,
    a second block, a stray tag) scores 0.0. A prompt that ends with ``<think>`` counts as the
    start of the completion; set `assume_think_open=True` when the chat template opens the block
    but the prompts are message lists (the rendered text is not visible to the reward).

    Returns 1.0 or 0.0 per completion; never None.

    >>> fn = Format()
    >>> fn([""] * 3, ["<think>\na\n</think>\n<answer>1</answer>",
    ...               "<think>a</think><answer>1</answer>\nmore text",
    ...               "<think>a</think><answer>1</answer><think>b</think><answer>2</answer>"])
    [1.0, 0.0, 0.0]
    >>> fn(["<|Assistant|><think>\n"], ["2+2=4\n</think>\n<answer>4</answer>"])
    [1.0]
    """

    def score(self, batch: Batch, i: int) -> float:
        text = self.full_text(batch, i)
        if any(text.count(tag) != 1 for tag in _TAGS):
            return 0.0
        return 1.0 if _LAYOUT.fullmatch(text) else 0.0


@register("tag_count")
class TagCount(_Layout):
    r"""0.25 for each of the four tags that appears exactly once and in its place.

    In place means: ``<think>`` first (only whitespace before it), ``</think>`` after it,
    ``<answer>`` after ``</think>``, ``</answer>`` after ``<answer>`` with only whitespace
    after it. A shaping reward for small models that have not found the layout yet (after
    open-r1's `tag_count_reward`, which counts ``"<think>\n"`` etc. but not their order).
    Prefill handling as in `format`. Returns a value in {0, 0.25, 0.5, 0.75, 1}.

    >>> fn = TagCount()
    >>> fn(["", ""], ["<think>a</think><answer>1</answer>", "<think>a</think> 1"])
    [1.0, 0.5]
    """

    def score(self, batch: Batch, i: int) -> float:
        text = self.full_text(batch, i)
        pos = {tag: text.find(tag) if text.count(tag) == 1 else -1 for tag in _TAGS}
        t_open, t_close, a_open, a_close = (pos[t] for t in _TAGS)
        placed = [
            t_open >= 0 and not text[:t_open].strip(),
            t_close >= 0 and t_close > t_open,
            a_open >= 0 and a_open > max(t_close, t_open),
            a_close >= 0 and a_close > a_open and not text[a_close + len(ANSWER_CLOSE) :].strip(),
        ]
        return 0.25 * sum(placed)


_STEP_MARKERS = re.compile(
    # "Step 1:", "1. ", "2) ", "- ", "* " at a line start, or right after <think> (first step on its line)
    r"(?:^|<think>)[ \t]*(?:Step[ \t]*\d+[:.)]|\d+[.)][ \t]|[-*•][ \t])"
    r"|\b(?:First|Second|Third|Next|Then|Finally),",  # transition words
    re.MULTILINE,
)


@register("reasoning_steps")
class ReasoningSteps(Reward):
    r"""min(1, steps / min_steps): counts step markers (Step 1:, numbered/bulleted lines, First, …).

    Line-start markers ("Step 2:", "3. ", "4) ", "- ", "* ") are matched at the start of any
    line (MULTILINE) or right after ``<think>``; transition words "First,", "Second,", "Next,",
    "Then,", "Finally," anywhere. After open-r1's `reasoning_steps_reward` (3 steps -> 1.0), which misses numbered
    lists that do not start at character 0. Scores the whole completion; never None.

    >>> ReasoningSteps()([""], ["Plan:\n1. Add.\n2. Multiply.\n3. Check."])
    [1.0]
    >>> ReasoningSteps()([""], ["First, add. Then, stop."])
    [0.6666666666666666]
    >>> ReasoningSteps()([""], ["<think>Step 1: add.\nStep 2: check.</think>"])
    [0.6666666666666666]
    """

    def __init__(self, min_steps: int = 3) -> None:
        super().__init__()
        if min_steps < 1:
            raise ValueError(f"min_steps must be >= 1, got {min_steps}")
        self.min_steps = min_steps

    def score(self, batch: Batch, i: int) -> float:
        count = sum(1 for _ in _STEP_MARKERS.finditer(batch.completions[i]))
        return min(1.0, count / self.min_steps)

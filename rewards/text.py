r"""Where the parts of an R1-style completion are: reasoning, final answer, boxes, code blocks.

Every function here is linear in the length of the text (no backtracking regexes on
unbounded input), because completions can be a megabyte of garbage.

Layout assumed: ``<think> reasoning </think> <answer> final answer </answer>``. When the chat
template already opened ``<think>`` (the prompt ends with it), the completion starts inside
the reasoning; `think_prefill` finds that tail so callers can score prefill + completion.
"""

from __future__ import annotations

import re

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
ANSWER_OPEN, ANSWER_CLOSE = "<answer>", "</answer>"

_PREFILL_TAIL = re.compile(r"<think>\s*\Z")


def think_prefill(prompt: str) -> str:
    r"""The ``<think>`` (plus whitespace) that `prompt` ends with, or "".

    >>> think_prefill("<|im_start|>assistant\n<think>\n")
    '<think>\n'
    >>> think_prefill("What is 2+2?")
    ''
    """
    # Search only the tail: the prefill is at most a tag and some whitespace.
    tail = prompt[-256:]
    match = _PREFILL_TAIL.search(tail)
    return match.group(0) if match else ""


def answer_region(completion: str, think_open: bool = False) -> str | None:
    r"""The text that holds the final answer, or None if the reasoning never closed.

    Rules, in order: only text after the last ``</think>`` counts when there is a think block
    (a guess inside the reasoning is never graded); inside that, the last ``<answer>`` block
    wins (an unclosed final ``<answer>`` runs to the end); with no think block at all, the
    whole completion is the region. `think_open` says the prompt already opened ``<think>``.

    >>> answer_region("<think>maybe 42</think><answer>41</answer>")
    '41'
    >>> answer_region("<think>maybe 42</think>So 41.")
    'So 41.'
    >>> answer_region("<think>still thinking about 42") is None
    True
    >>> answer_region("plain text 42")
    'plain text 42'
    """
    close = completion.rfind(THINK_CLOSE)
    if close >= 0:
        region = completion[close + len(THINK_CLOSE) :]
    elif think_open or THINK_OPEN in completion:
        return None
    else:
        region = completion
    start = region.rfind(ANSWER_OPEN)
    if start < 0:
        return region
    body = region[start + len(ANSWER_OPEN) :]
    end = body.find(ANSWER_CLOSE)
    return body if end < 0 else body[:end]


def reasoning_text(completion: str, think_open: bool = False) -> str:
    """The reasoning: the content of the (first) think block, or the whole completion if
    there is none. An unclosed block runs to the end of the text.

    >>> reasoning_text("<think>a b</think><answer>c</answer>")
    'a b'
    >>> reasoning_text("a b</think>c", think_open=True)
    'a b'
    """
    if think_open:
        start = 0
    else:
        start = completion.find(THINK_OPEN)
        if start < 0:
            return completion
        start += len(THINK_OPEN)
    end = completion.find(THINK_CLOSE, start)
    return completion[start:] if end < 0 else completion[start:end]


class Malformed(str):
    """Marker returned by `last_boxed` for a ``\\boxed{`` whose brace never closes."""


_BOX = re.compile(r"\\(?:boxed|fbox)\s*\{")


def last_boxed(text: str) -> str | None:
    r"""Content of the last top-level ``\boxed{...}`` (or ``\fbox``), None if there is none.

    Boxes nested inside an earlier box are part of it. A final box whose brace never closes
    gives a `Malformed` string (a truncated answer earns nothing). Escaped braces ``\{ \}``
    are not counted.

    >>> last_boxed(r"first \boxed{5}, corrected: \boxed{7}")
    '7'
    >>> last_boxed(r"\boxed{\frac{1}{2}} and \boxed{\{1, 2\}}")
    '\\{1, 2\\}'
    >>> isinstance(last_boxed(r"\boxed{\frac{1}{2"), Malformed)
    True
    """
    found: str | None = None
    pos = 0
    while True:
        match = _BOX.search(text, pos)
        if match is None:
            return found
        end = _closing_brace(text, match.end())
        if end is None:
            return Malformed(text[match.end() :])
        found = text[match.end() : end]
        pos = end + 1


def _closing_brace(text: str, start: int) -> int | None:
    """Index of the brace closing the group that starts at `start` (just after its "{")."""
    depth = 1
    i, n = start, len(text)
    while i < n:
        ch = text[i]
        if ch == "\\":
            i += 2  # skip the escaped character, e.g. \{ or \}
            continue
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                return i
        i += 1
    return None


_FENCE = re.compile(r"```[ \t]*([A-Za-z0-9_+-]*)[^\n]*\n")


def last_code_block(text: str, languages: tuple[str, ...] = ("python", "py", "python3", "")) -> str | None:
    r"""Body of the last fenced code block whose language tag is in `languages` ("" = untagged).

    An unclosed final fence runs to the end of the text (a truncated block is still code).

    >>> last_code_block("```python\nx = 1\n```\ntext\n```py\nx = 2\n```")
    'x = 2\n'
    >>> last_code_block("no code") is None
    True
    """
    found = None
    pos = 0
    while True:
        match = _FENCE.search(text, pos)
        if match is None:
            return found
        end = text.find("```", match.end())
        body = text[match.end() :] if end < 0 else text[match.end() : end]
        if match.group(1).lower() in languages:
            found = body
        if end < 0:
            return found
        pos = end + 3

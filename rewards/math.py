r"""Math accuracy with math-verify, run in killable worker processes.

A completion earns 1.0 when its final answer equals the gold answer under
``math_verify.verify(gold, prediction)`` (gold first: the check is asymmetric), else 0.0.
A gold that does not parse gives None (cannot be judged), never 1.0.

What is graded (the fixes to faults seen with open-r1-style rewards and math-verify 0.9.0):

1. *Where the answer is* (`rewards.text.answer_region`): the last ``<answer>`` block after the
   reasoning; never a guess inside ``<think>``; if the reasoning never closed, nothing (0.0).
2. *Which answer*: the last top-level ``\boxed{}`` wins (math-verify alone merges several boxes
   into a set, so a self-corrected answer scored 0); else the text after a GSM8K ``####``
   marker (up to the line end); else the whole region, where math-verify's "final answer is"
   anchors apply.
3. *Short answers are parsed as one LaTeX expression* (wrapped in ``\boxed{}``): a plain gold
   ``180`` or ``\frac{1}{2^{99}}`` parses (LaTeX-only extraction missed it and a fallback paid
   1.0 for anything), and multi-answer golds keep all their parts: ``1331 and 1728`` and
   ``\pm 2021`` become sets, which one element alone does not satisfy. "Short" = at most 300
   characters and no prose (`has_prose`: a word of 3+ letters or a stand-alone 2-letter word,
   outside ``\text{}`` and LaTeX commands, other than "and"/"or"). Prose (a worked-solution
   gold, "The rate is 28 percent.") is parsed by math-verify's default LaTeX + expression
   extraction.
4. *Malformed LaTeX earns nothing*: ``\sqrt(2)``, ``\frac(1)(2)`` (math-verify silently drops
   the root and grades ``4\sqrt(2)`` as 4) and unbalanced braces score 0.0.
5. *Numbers compare with a relative tolerance*: math-verify's absolute tolerance makes
   ``1/2^98`` equal ``1/2^99``. When both sides are plain numbers, they must also agree to a
   relative 1e-12 (exact forms) or 1e-5 (when a decimal is involved). Percentages keep
   math-verify's rule (28% == 28). Elements inside sets/intervals are not re-checked.
6. *Deadlines*: math-verify's own ``signal.alarm`` timeouts are disabled
   (``parsing_timeout=None, timeout_seconds=None``; they fail off the main thread); each check
   runs in a `rewards._pool` worker with a wall-clock deadline. A timeout scores 0.0 and is
   counted in ``fn.stats.timeout_count``; a crashed check scores 0.0 and is counted in
   ``error_count``.
"""

from __future__ import annotations

import re
from typing import Any

from rewards._pool import run_in_pool
from rewards.base import Batch, Reward, Tally
from rewards.registry import register
from rewards.text import Malformed, answer_region, last_boxed, think_prefill

#: Default deadline (seconds) of one math check, parse included.
DEFAULT_TIMEOUT = 5.0

_MALFORMED = re.compile(r"\\(?:sqrt|d?t?frac|cfrac|[dt]?binom)\s*\(")
_TEXT_GROUP = re.compile(r"\\(?:text|textbf|textit|mathrm|mathbf|mbox|operatorname|begin|end)\s*\{[^{}]*\}")
_COMMAND = re.compile(r"\\[A-Za-z]+")
_WORD = re.compile(r"[A-Za-z]{3,}")
_CONNECTIVES = {"and", "or"}
_DELIMITERS = ((r"$$", r"$$"), (r"\[", r"\]"), (r"\(", r"\)"), ("$", "$"))
SHORT_ANSWER_CHARS = 300


def has_prose(text: str) -> bool:
    r"""True if `text` reads as prose: outside LaTeX commands, ``\text{}`` groups and
    environment names, it has a word of 3+ letters, or a stand-alone 2-letter word ("So it is
    42"); "and"/"or" do not count.

    >>> has_prose(r"1331 \text{ and } 1728"), has_prose("x = 1 or x = -1")
    (False, False)
    >>> has_prose("the answer is 7"), has_prose("So it is 42.")
    (True, True)
    """
    bare = _COMMAND.sub(" ", _TEXT_GROUP.sub(" ", text))
    if any(word.lower() not in _CONNECTIVES for word in _WORD.findall(bare)):
        return True
    tokens = (token.strip(".,;:!?()") for token in bare.split())
    return any(len(t) == 2 and t.isalpha() and t.lower() not in _CONNECTIVES for t in tokens)


def _strip_markup(text: str) -> str:
    text = text.strip().replace("**", "").replace("__", "").strip("` \n\t")
    for left, right in _DELIMITERS:
        if len(text) > len(left) + len(right) and text.startswith(left) and text.endswith(right):
            text = text[len(left) : -len(right)].strip()
            break
    return text.rstrip(".").strip()


def _balanced(text: str) -> bool:
    depth = 0
    i = 0
    while i < len(text):
        if text[i] == "\\":
            i += 2
            continue
        depth += {"{": 1, "}": -1}.get(text[i], 0)
        if depth < 0:
            return False
        i += 1
    return depth == 0


def answer_candidate(text: str) -> str | None:
    r"""The string handed to ``math_verify.parse`` for a gold or a prediction region.

    Returns ``\boxed{...}`` for a boxed or short answer, the text itself for prose, or None
    when the answer is malformed (unclosed box, ``\sqrt(2)``, unbalanced braces) or empty.

    >>> answer_candidate(r"First \boxed{5}; no: \boxed{7}.")
    '\\boxed{7}'
    >>> answer_candidate("2+40=42\n#### 42\nlong tail 7 8 9")
    '\\boxed{42}'
    >>> answer_candidate("**73**."), answer_candidate(r"$4\sqrt(2)$")
    ('\\boxed{73}', None)
    >>> answer_candidate("Therefore, the answer is: 180.")
    'Therefore, the answer is: 180'
    """
    box = last_boxed(text)
    if isinstance(box, Malformed):
        return None
    if box is not None:
        body = box.strip()
    else:
        marker = text.rfind("####")
        body = text[marker + 4 :].split("\n", 1)[0] if marker >= 0 else text
        body = _strip_markup(body)
    if not body or _MALFORMED.search(body):
        return None
    if box is not None or (len(body) <= SHORT_ANSWER_CHARS and not has_prose(body)):
        return "\\boxed{" + body + "}" if _balanced(body) else None
    return body


def math_task(prompt: str, completion: str, gold: Any) -> tuple[str, str] | None:
    """Prepare one math check: ``(gold_candidate, prediction_candidate)`` for a worker, or None
    when there is no usable gold. A missing or malformed prediction becomes "" (scores 0.0 once
    the worker has confirmed that the gold parses: an unparseable gold is None whatever the
    completion).
    """
    if gold is None or not str(gold).strip():
        return None
    gold_text = str(gold)  # a gold in R1 layout (e.g. distillation data) gives its answer block
    gold_candidate = answer_candidate(answer_region(gold_text) or gold_text)
    if gold_candidate is None:
        return None
    region = answer_region(completion, think_open=bool(think_prefill(prompt)))
    prediction = answer_candidate(region) if region is not None else None
    return gold_candidate, prediction or ""


# -- worker side ------------------------------------------------------------------------------
def warm_worker() -> None:
    """Import math-verify and compile its regexes (run once in the pool's zygote; workers inherit it)."""
    import math_verify

    math_verify.parse(r"$\frac{1}{2}$ 1", parsing_timeout=None)


def _parse(candidate: str) -> list[Any]:
    from math_verify import parse
    from sympy import Basic, MatrixBase

    return [e for e in parse(candidate, parsing_timeout=None) if isinstance(e, (Basic, MatrixBase))]


def _numerically_apart(gold: Any, pred: Any) -> bool:
    """True when both are plain numbers that differ beyond a relative tolerance (see rule 5)."""
    from sympy import Expr, Float, N, UnevaluatedExpr

    if not (isinstance(gold, Expr) and isinstance(pred, Expr) and gold.is_number and pred.is_number):
        return False
    if gold.has(UnevaluatedExpr) or pred.has(UnevaluatedExpr):  # percentages
        return False
    tolerance = 1e-5 if (gold.has(Float) or pred.has(Float)) else 1e-12
    try:
        g, p = N(gold, 40), N(pred, 40)
        scale = max(abs(g), abs(p))
        return bool(scale != 0 and abs(g - p) > tolerance * scale)
    except Exception:  # noqa: BLE001 - not evaluable numerically: keep math-verify's verdict
        return False


def grade(gold_candidate: str, prediction: str) -> float | None:
    """1.0/0.0 for `prediction` against the gold; None if the gold does not parse.

    Runs in a worker (math-verify's alarms disabled). A prose gold whose parse has free
    symbols ("forty-two apples" -> f*o*r*t*y...) counts as not parsed.
    """
    from math_verify import verify

    golds = _parse(gold_candidate)
    if not golds or (has_prose(gold_candidate) and any(g.free_symbols for g in golds)):
        return None
    predictions = _parse(prediction) if prediction else []
    for g in golds:
        for p in predictions:
            if verify(g, p, timeout_seconds=None) and not _numerically_apart(g, p):
                return 1.0
    return 0.0


# -- parent side ------------------------------------------------------------------------------
@register("math")
class MathAccuracy(Reward):
    r"""1.0 if the final answer equals the gold `answer` under math-verify, 0.0 if not, None if the gold does not parse.

    Reads the `answer` column (a short gold answer; a worked solution works when it ends with
    a box, a ``####`` line or "the answer is ..."). See the module docstring for what is
    graded. `timeout` is the wall-clock deadline in seconds of one check in a worker process;
    a timeout scores 0.0 and is counted in ``stats.timeout_count`` (per completion).
    `dedupe`: completions with the same gold and final answer share one check (a timeout
    then zeroes them all); False checks each one on its own.

    >>> fn = MathAccuracy()
    >>> fn(["", "", "", ""], [r"so \boxed{\frac12}", r"\boxed{5} no, \boxed{7}", r"\boxed{1728}", "x"],
    ...    answer=["0.5", "7", "1331 and 1728", "forty-two apples"])
    [1.0, 1.0, 0.0, None]
    """

    def __init__(self, timeout: float = DEFAULT_TIMEOUT, dedupe: bool = True) -> None:
        super().__init__()
        if timeout <= 0:
            raise ValueError(f"timeout must be > 0 seconds, got {timeout}")
        self.timeout = timeout
        self.dedupe = dedupe

    def score_batch(self, batch: Batch, tally: Tally) -> list[float | None]:
        golds = batch.column("answer")
        tasks = [math_task(p, c, g) for p, c, g in zip(batch.prompts, batch.completions, golds)]
        return run_in_pool("rewards.math:grade", tasks, self.timeout, tally, dedupe=self.dedupe)

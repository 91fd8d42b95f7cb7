r"""reasoning-gym tasks scored by the task's own verifier.

The row's `verification` column is ``{"kind": "reasoning_gym", "task": "<dataset name>",
"entry": {<the dataset entry: question, answer, metadata>}}``. The answer handed to the
verifier is taken like the math answer: the last ``<answer>`` block after the reasoning (never
text inside ``<think>``), its last ``\boxed{}`` content if any, stripped; None when the
reasoning never closed (the verifier then gives its own "no answer" score).

The verifier is ``reasoning_gym.get_score_answer_fn(task)(answer, entry)`` (reasoning-gym
0.1.25), called in a `rewards._pool` worker with a deadline: some verifiers evaluate the answer
as an expression (countdown uses sympy), so ``9**9**9**9`` must not hang the trainer. Values
are the task's own (several tasks give partial credit, e.g. countdown 0.05 for a wrong
expression that uses the right numbers).
"""

from __future__ import annotations

import json
from typing import Any

from rewards._pool import run_in_pool
from rewards.base import Batch, Reward, Tally, parse_verification
from rewards.math import DEFAULT_TIMEOUT
from rewards.registry import register
from rewards.text import Malformed, answer_region, last_boxed, think_prefill

_score_fns: dict[str, Any] = {}


def extract_answer(prompt: str, completion: str) -> str | None:
    r"""The answer text a reasoning-gym verifier receives.

    >>> extract_answer("", "<think>try 3+3</think><answer> 94*4 - 61 - 6 </answer>")
    '94*4 - 61 - 6'
    >>> extract_answer("", r"<think>x</think>The result is \boxed{-4}.")
    '-4'
    """
    region = answer_region(completion, think_open=bool(think_prefill(prompt)))
    if region is None:
        return None
    box = last_boxed(region)
    if box is not None and not isinstance(box, Malformed):
        region = box
    return region.strip()


def rgym_task(prompt: str, completion: str, verification: dict[str, Any]) -> tuple[str, str | None, dict] | None:
    """Arguments for `score_entry` in a worker, or None when the row names no task/entry."""
    task, entry = verification.get("task"), verification.get("entry")
    if isinstance(entry, str):
        try:
            entry = json.loads(entry)
        except ValueError:
            return None
    if not task or not isinstance(entry, dict):
        return None
    return task, extract_answer(prompt, completion), entry


def warm_worker() -> None:
    """Import reasoning-gym (about 1.5 s) in the pool's zygote, outside any task's deadline."""
    import reasoning_gym  # noqa: F401


def score_rgym_tasks(tasks: list[tuple | None], timeout: float, tally: Tally) -> list[float | None]:
    """Run `rgym_task` outputs in the pool (reasoning-gym imported outside the deadlines)."""
    return run_in_pool("rewards.rgym:score_entry", tasks, timeout, tally, warmup="rewards.rgym:warm_worker")


def score_entry(task: str, answer: str | None, entry: dict[str, Any]) -> float:
    """Worker side: the task's verifier, created once per task and process."""
    if task not in _score_fns:
        import reasoning_gym

        _score_fns[task] = reasoning_gym.get_score_answer_fn(task)
    return float(_score_fns[task](answer, entry))


@register("reasoning_gym")
class ReasoningGym(Reward):
    r"""The reasoning-gym task's own verifier on the extracted answer (value in [0, 1]); None without a task entry.

    Reads the `verification` column (``{"kind": "reasoning_gym", "task": ..., "entry": ...}``,
    JSON text or dict). `timeout` is the deadline in seconds of one verifier call in a worker;
    a timeout scores 0.0 and is counted. A row whose verification is not valid JSON is None.

    >>> entry = {"question": "4 - 1 - 7 =", "answer": "-4", "metadata": {}}
    >>> v = {"kind": "reasoning_gym", "task": "chain_sum", "entry": entry}
    >>> ReasoningGym()(["", ""], ["<think>4-1=3, 3-7=-4</think><answer>-4</answer>", "<answer>4</answer>"],
    ...                verification=[v, v])
    [1.0, 0.0]
    """

    def __init__(self, timeout: float = DEFAULT_TIMEOUT) -> None:
        super().__init__()
        self.timeout = timeout

    def score_batch(self, batch: Batch, tally: Tally) -> list[float | None]:
        tasks = []
        for prompt, completion, raw in zip(batch.prompts, batch.completions, batch.column("verification")):
            try:
                tasks.append(rgym_task(prompt, completion, parse_verification(raw)))
            except ValueError:  # includes json.JSONDecodeError
                tasks.append(None)
        return score_rgym_tasks(tasks, self.timeout, tally)

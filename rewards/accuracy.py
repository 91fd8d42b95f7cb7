"""The accuracy dispatcher used by the pipeline: the row's `verification` picks the checker.

- ``{"kind": "python_tests", ...}`` -> fraction of test asserts passed (`rewards.code`);
- ``{"kind": "reasoning_gym", ...}`` -> the task's own verifier (`rewards.rgym`);
- empty / ``{}`` / no kind -> math-verify against the `answer` column (`rewards.math`).

One dispatcher instead of per-dataset if/elif chains: a new dataset only has to fill the
`verification` column. Math and reasoning-gym checks run in the shared worker pool while the
code sandboxes run in threads, so a mixed batch overlaps both.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor

from rewards._pool import run_in_pool, worker_count
from rewards.base import Batch, Reward, Tally, parse_verification
from rewards.code import Limits, code_task, run_code_batch
from rewards.math import DEFAULT_TIMEOUT, math_task
from rewards.registry import register
from rewards.rgym import rgym_task, score_rgym_tasks

logger = logging.getLogger(__name__)
_warned_kinds: set[str] = set()


@register("accuracy")
class Accuracy(Reward):
    """Correctness by the row's verification: code tests (fraction), reasoning-gym verifier, else math-verify vs `answer`.

    Values: math 1.0/0.0, code the fraction of asserts passed, reasoning-gym the task's score;
    None when the row cannot be judged (no gold, gold does not parse, verification not JSON,
    unknown kind — logged once per kind). `timeout`: seconds per math/reasoning-gym check;
    `code_timeout`: wall-clock seconds the tests wait for the program (see `rewards.code`);
    `code_memory_mb`: its address-space limit; `sandbox`: "auto" | "bwrap" | "none" (see
    `rewards.code`); `dedupe`: math checks with the same gold and final answer run once (see
    `rewards.math.MathAccuracy`).

    >>> tests = {"kind": "python_tests", "entry_point": "inc", "test": "def check(f):\\n    assert f(1) == 2\\n"}
    >>> Accuracy()(["", ""], [r"<think>6*7</think><answer>\\boxed{42}</answer>", "def inc(x):\\n    return x + 1\\n"],
    ...            answer=["42", ""], verification=["", tests])
    [1.0, 1.0]
    """  # noqa: E501 - the first line is `r1 rewards list`'s one-line summary

    def __init__(
        self,
        timeout: float = DEFAULT_TIMEOUT,
        code_timeout: float = 10.0,
        code_memory_mb: int = 1024,
        sandbox: str = "auto",
        dedupe: bool = True,
    ) -> None:
        super().__init__()
        self.timeout = timeout
        self.dedupe = dedupe
        self.code_limits = Limits(timeout=code_timeout, memory_mb=code_memory_mb)
        self.sandbox = sandbox

    def score_batch(self, batch: Batch, tally: Tally) -> list[float | None]:
        n = len(batch)
        golds = batch.column("answer")
        math_tasks: list = [None] * n
        rgym_tasks: list = [None] * n
        code_tasks: list = [None] * n
        route: list[str | None] = [None] * n  # which checker scores row i
        for i, (prompt, completion, raw) in enumerate(
            zip(batch.prompts, batch.completions, batch.column("verification"))
        ):
            try:
                verification = parse_verification(raw)
            except ValueError as exc:  # cannot judge the row; say so once, like an unknown kind
                if "<malformed>" not in _warned_kinds:
                    _warned_kinds.add("<malformed>")
                    logger.warning("accuracy: a verification is not a JSON object (%s); such rows score None", exc)
                continue
            kind = verification.get("kind")
            if kind == "python_tests":
                code_tasks[i], route[i] = code_task(prompt, completion, verification), "code"
            elif kind == "reasoning_gym":
                rgym_tasks[i], route[i] = rgym_task(prompt, completion, verification), "rgym"
            elif kind in (None, "", "math"):
                math_tasks[i], route[i] = math_task(prompt, completion, golds[i]), "math"
            elif kind not in _warned_kinds:
                _warned_kinds.add(kind)
                logger.warning("accuracy: unknown verification kind %r; such rows score None", kind)

        code_tally = Tally()
        with ThreadPoolExecutor(max_workers=1) as background:
            code_future = None
            if any(t is not None for t in code_tasks):
                code_future = background.submit(
                    run_code_batch, code_tasks, self.code_limits, self.sandbox, worker_count(), False, code_tally
                )
            math_scores = run_in_pool("rewards.math:grade", math_tasks, self.timeout, tally, dedupe=self.dedupe)
            rgym_scores = score_rgym_tasks(rgym_tasks, self.timeout, tally)
            code_scores = code_future.result() if code_future else [None] * n
        tally.timeouts += code_tally.timeouts
        tally.errors += code_tally.errors

        by_route = {"code": code_scores, "rgym": rgym_scores, "math": math_scores}
        return [by_route[r][i] if r else None for i, r in enumerate(route)]

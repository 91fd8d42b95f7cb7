"""Hostile inputs for every reward: each is scored 0.0 or None (or a valid penalty) in time."""

import json
import math
import time

import pytest

from rewards import REGISTRY, get

TOWER = r"\boxed{9^{9^{9^{9^{9^{9}}}}}}"
NESTED = "\\boxed{" + "\\frac{1}{" * 400 + "2" + "}" * 400 + "}"
HOSTILE = {
    "one_megabyte_prose": ("The answer might be 7. " * 45_000)[:1_000_000],
    "one_megabyte_in_think": "<think>" + "x" * 1_000_000 + "</think><answer>7</answer>",
    "million_digit_answer": "<answer>" + "9" * 1_000_000 + "</answer>",
    "many_boxes": "\\boxed{7} " * 100_000,
    "unclosed_boxes": "\\boxed{" * 200_000,
    "nested_latex": NESTED,
    "power_tower": TOWER,
    "power_tower_in_answer": "<think>hm</think><answer>$" + TOWER[7:-1] + "$</answer>",
    "huge_factorial": r"\boxed{(10^{10})!}",
    "lone_surrogate": "<think>\ud800</think><answer>\ud800 \\boxed{\udfff}</answer>",
    "tags_only": "<think>" * 10_000 + "</answer>" * 10_000,
}
# Correctness rewards must give 0.0 or None. Layout, length and language rewards judge other
# things (one_megabyte_in_think is well formatted): any value in their range, the point is time.
RANGES = {
    "repetition": (-1.0, 0.0),
    "overlong": (-1.0, 0.0),
    "language": (0.0, 1.0),
    "format": (0.0, 1.0),
    "reasoning_gym": (0.0, 1.0),  # the task's own partial credit (reasoning-gym's default scorer)
    "cosine_length": (-1.0, 1.0),
    "kimi_length": (-0.5, 0.5),
    "reasoning_steps": (0.0, 1.0),
    "tag_count": (0.0, 1.0),
    "reward_model": (-math.inf, math.inf),
}  # a raw logit (normalize: none): any finite value
FAST = {
    "accuracy": {"timeout": 1.0, "code_timeout": 3.0},
    "math": {"timeout": 1.0},
    "reasoning_gym": {"timeout": 1.0},
    "cosine_length": {"timeout": 1.0},
    "kimi_length": {"timeout": 1.0},
    "code": {"timeout": 3.0},
    "code_binary": {"timeout": 3.0},
}
VERIFICATION = {
    "code": json.dumps({"kind": "python_tests", "entry_point": "f", "test": "def check(c):\n    assert c() == 1\n"}),
    "reasoning_gym": json.dumps(
        {"kind": "reasoning_gym", "task": "chain_sum", "entry": {"question": "1 + 0 =", "answer": "1", "metadata": {}}}
    ),
}


def _build(name: str, request):
    if name == "reward_model":  # a real (tiny) reward model, scoring every row (no domain filter)
        model = request.getfixturevalue("tiny_reward_model")
        return get(name, model=str(model), domains=[], normalize="none", dtype="float32")
    return get(name, **FAST.get(name, {}))


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_hostile_completions(name, request):
    fn = _build(name, request)
    names = list(HOSTILE)
    verification = VERIFICATION.get(name.split("_")[0] if name.startswith("code") else name, "")
    started = time.monotonic()
    scores = fn(
        [""] * len(names),
        [HOSTILE[k] for k in names],
        answer=["1"] * len(names),
        verification=[verification] * len(names),
    )
    elapsed = time.monotonic() - started
    low, high = RANGES.get(name, (0.0, 0.0))
    for key, value in zip(names, scores):
        assert value is None or (math.isfinite(value) and low <= value <= high), (key, value)
    # 11 completions, several hitting 1-3 s deadlines, on 2 workers.
    assert elapsed < 45, f"{name} took {elapsed:.1f} s"


def test_hostile_golds_never_pay():
    golds = [TOWER, NESTED, "\ud800", "9" * 100_000, "\\boxed{" * 1000, "<answer>1</answer>"]
    fn = get("math", timeout=2.0)
    scores = fn([""] * len(golds), [r"\boxed{1}"] * len(golds), answer=golds)
    assert all(s in (0.0, None) for s in scores[:-1]), scores
    assert scores[-1] == 1.0  # a gold wrapped in answer tags is still its number

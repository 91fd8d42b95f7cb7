"""bench/rewards.py runs, and its modes grade the same checks alike (a smoke run, not a measurement)."""

import runpy
from pathlib import Path

from rewards import _pool
from rewards.math import grade

BENCH = runpy.run_path(str(Path(__file__).resolve().parents[2] / "bench" / "rewards.py"), run_name="bench_rewards")


def test_ceiling_grades_every_task_once_across_its_processes():
    tasks = BENCH["math_rows_tasks"](24, seed=5)
    ceiling = BENCH["Ceiling"](2)
    try:
        seconds = ceiling.run(tasks)
        assert seconds > 0
        assert ceiling.next_index.value == len(tasks) + 2  # each process claims one index past the end
    finally:
        ceiling.close()
    assert all(not child.is_alive() for child in ceiling.children)


def test_ceiling_reports_a_failed_task_and_closes_cleanly():
    import pytest

    with BENCH["Ceiling"](2) as ceiling:
        with pytest.raises(RuntimeError, match="a ceiling process failed: TypeError"):
            ceiling.run([()])  # grade() without arguments
        assert ceiling.run(BENCH["math_rows_tasks"](4, seed=6)) > 0  # still serving
    assert all(not child.is_alive() for child in ceiling.children)


def test_bench_math_small_run_reports_every_set():
    size = _pool.worker_count()
    try:
        result = BENCH["bench_math"](n=40, workers=2, reps=2, block=16)
    finally:
        _pool.configure(workers=size)
    # the bench asserts pool == serial on every block; here: counts and shapes of the report
    expected_correct = sum(grade(*t) == 1.0 for rep in range(2) for t in BENCH["math_rows_tasks"](40, seed=100 + rep))
    assert result["correct"] == expected_correct > 0
    assert len(result["speedup_per_rep"]) == len(result["pool_of_ceiling_per_rep"]) == 2
    assert all(x > 0 for x in result["speedup_per_rep"] + result["serial"]["per_rep"] + result["pool"]["per_rep"])
    groups = BENCH["bench_groups"](n=32, group=8, batch=16, reps=1)  # asserts equal scores itself
    assert 0 < groups["unique_share"] < 1  # answers repeat within a group of 8
    assert groups["speedup"] > 0 and len(groups["speedup_per_rep"]) == 1
    no_dedupe = BENCH["bench_groups"](n=32, group=8, batch=16, reps=1, dedupe=False, seed=300)
    assert no_dedupe["dedupe"] is False and no_dedupe["speedup"] > 0
    text = BENCH["render"](result, groups, no_dedupe, "python bench/rewards.py")
    assert "blocks of 16" in text and "Pool / serial" in text and "groups of 8" in text


def test_bench_code_small_run_against_a_baseline_revision():
    """Two rounds of 2 x 2 HumanEval completions, this checkout against its own HEAD's rewards/
    (exported by git): both sides run, judge the canonical solutions right, and render."""
    code = BENCH["bench_code"](n_problems=2, workers=2, rounds=2, baseline="HEAD")
    for side in ("current", "baseline"):
        assert code[side]["canonical_all_pass"] == "2/2" and code[side]["broken_all_pass"] == "0/2"
        assert len(code[side]["per_round"]) == 2 and code[side]["completions_per_s"] > 0
    text = BENCH["render_code"](code, "python bench/rewards.py --code-only")
    assert "4 HumanEval completions" in text and "Baseline `HEAD`" in text and text.startswith(BENCH["CODE_START"])

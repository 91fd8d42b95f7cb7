"""The killable worker pool: deadlines, crashes, memory limits, threads, restarts."""

import threading
import time

import pytest

from rewards._pool import WorkerPool


@pytest.fixture(scope="module")
def pool():
    pool = WorkerPool(size=2, memory_mb=1024)
    yield pool
    pool.close()


def test_results_come_back_in_order(pool):
    outcomes = pool.map("operator:add", [(i, 1) for i in range(20)], timeout=10)
    assert [o.value for o in outcomes] == list(range(1, 21))
    assert {o.status for o in outcomes} == {"ok"}


def test_a_hung_task_times_out_and_its_worker_is_replaced(pool):
    kills = pool.kills
    started = time.monotonic()
    outcomes = pool.map("time:sleep", [(30,), (0,), (30,), (0,)], timeout=1.0)
    assert [o.status for o in outcomes] == ["timeout", "ok", "timeout", "ok"]
    assert time.monotonic() - started < 5
    assert pool.kills == kills + 2
    assert pool.map("operator:mul", [(6, 7)], timeout=5)[0].value == 42  # replacements work


def test_errors_crashes_and_memory_limit(pool):
    outcomes = pool.map("builtins:int", [("x",)], timeout=5)
    assert outcomes[0].status == "error" and "ValueError" in outcomes[0].value
    outcomes = pool.map("os:_exit", [(3,)], timeout=5)  # the worker dies mid-task
    assert outcomes[0].status == "error"
    outcomes = pool.map("builtins:bytearray", [(4 * 1024**3,)], timeout=5)  # over the 1 GiB limit
    assert outcomes[0].status == "error" and "MemoryError" in outcomes[0].value
    assert pool.map("operator:add", [(1, 1)], timeout=5)[0].value == 2


def test_two_threads_share_the_pool(pool):
    results = {}

    def run(k):
        results[k] = [o.value for o in pool.map("operator:add", [(k, i) for i in range(10)], timeout=10)]

    threads = [threading.Thread(target=run, args=(k,)) for k in (100, 200)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == {k: [k + i for i in range(10)] for k in (100, 200)}


def test_warmup_runs_outside_the_deadline(pool):
    # rewards.rgym:warm_worker imports reasoning-gym (about 1.5 s); the task deadline is 0.5 s.
    outcomes = pool.map(
        "rewards.rgym:score_entry",
        [("chain_sum", "3", {"answer": "3", "metadata": {}})],
        timeout=0.5,
        warmup="rewards.rgym:warm_worker",
    )
    assert outcomes[0].status == "ok" and outcomes[0].value == 1.0


def test_run_in_pool_dedupe_runs_equal_tasks_once_and_counts_each_timeout():
    from rewards._pool import get_pool, run_in_pool
    from rewards.base import Tally

    # time.time_ns() differs per call: equal values mean one call stood for all three tasks.
    tally = Tally()
    values = run_in_pool("time:time_ns", [(), None, (), ()], timeout=5, tally=tally, dedupe=True)
    assert values[1] is None and values[0] == values[2] == values[3] > 0
    assert len(set(run_in_pool("time:time_ns", [(), (), ()], timeout=5, tally=Tally()))) == 3  # without dedupe

    kills = get_pool().kills
    tally = Tally()
    started = time.monotonic()
    values = run_in_pool("time:sleep", [(30,), (0,), (30,)], timeout=0.5, tally=tally, dedupe=True)
    assert values == [0.0, None, 0.0]  # sleep returns None: the ok task gives its value
    assert tally.timeouts == 2 and tally.errors == 0  # both completions counted...
    assert get_pool().kills == kills + 1  # ...but one check ran, one worker was killed
    assert time.monotonic() - started < 5


def test_math_reward_scores_duplicate_answers_in_place():
    from rewards import get
    from rewards.math import grade, math_task

    completions = [
        r"<think>a</think><answer>\boxed{42}</answer>",
        r"<answer>41</answer>",
        r"<think>b</think><answer>\boxed{42}</answer>",
        r"<answer>\frac{84}{2}</answer>",
        r"<answer>41</answer>",
        r"<answer>7</answer>",
    ]
    golds = ["42", "42", "42", "42", "42", "7"]
    expected = [grade(*math_task("", c, g)) for c, g in zip(completions, golds)]
    assert expected == [1.0, 0.0, 1.0, 1.0, 0.0, 1.0]
    assert get("math")([""] * 6, completions, answer=golds) == expected
    assert get("accuracy")([""] * 6, completions, answer=golds) == expected


def test_run_in_pool_dedupe_counts_errors_per_task_and_keeps_unequal_pickles_apart():
    from rewards._pool import run_in_pool
    from rewards.base import Tally

    tally = Tally()
    assert run_in_pool("builtins:int", [("x",), ("7",), ("x",)], timeout=5, tally=tally, dedupe=True) == [0.0, 7, 0.0]
    assert (tally.errors, tally.timeouts) == (2, 0)
    # equal under == and hash, not the same task: each keeps its own result
    values = run_in_pool("builtins:repr", [(1,), (True,), (1.0,), (1,)], timeout=5, tally=Tally(), dedupe=True)
    assert values == ["1", "True", "1.0", "1"]
    # unhashable tasks are fine (keyed by their pickle)
    assert run_in_pool("builtins:len", [([1, 2],), ([1, 2],)], timeout=5, tally=Tally(), dedupe=True) == [2, 2]


TOWER = r"<think>t</think><answer>$9^{9^{9^{9^{9^{9}}}}}$</answer>"


@pytest.mark.parametrize("name", ["math", "accuracy"])
def test_math_rewards_run_an_equal_hung_check_once_unless_dedupe_is_off(name):
    from rewards import get
    from rewards._pool import get_pool

    completions = [TOWER] * 4 + [r"<answer>\boxed{1}</answer>"]
    for dedupe, kills_expected in ((True, 1), (False, 4)):
        fn = get(name, timeout=0.5, dedupe=dedupe)
        kills = get_pool().kills
        assert fn([""] * 5, completions, answer=["1"] * 5) == [0.0, 0.0, 0.0, 0.0, 1.0]
        assert get_pool().kills - kills == kills_expected, dedupe
        assert fn.stats.timeout_count == 4  # per completion either way


def test_dedupe_keys_on_gold_and_answer_together():
    from rewards import get

    completions = [r"<answer>\boxed{42}</answer>"] * 3
    assert get("math")([""] * 3, completions, answer=["42", "41", "42"]) == [1.0, 0.0, 1.0]

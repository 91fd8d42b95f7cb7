r"""Code rewards: run the completion's program against its tests in a sandbox.

Row input: `verification` = ``{"kind": "python_tests", "test": "<code defining check(candidate)>",
"entry_point": "fn_name", "prompt": "<signature + docstring, optional>"}`` (HumanEval's
layout). The program is the prompt (when given; a completion that only writes the body then
still runs, and a full definition simply replaces the stub) followed by the code: the last
```` ```python ```` block of the answer region (`rewards.text.answer_region`), or the whole region.

Each ``assert`` of the tests counts: HumanEval's ``check(candidate)`` is one function of many
asserts, so it is rewritten with `ast` into ``__r1_assert__(index, lambda: condition)`` calls,
and every statement is guarded so a crash fails only its own asserts. An assert passes when it
held every time it ran; one that never ran (the program crashed first) fails.
`code` = passed / asserts; `code_binary` = 1.0 only when all pass. Tests with no assert count
as one test: ``check`` returned.

Isolation (`run_tests`), per completion:
- bubblewrap when it works here: read-only root, fresh /tmp (tmpfs, `file_mb` big) holding the
  working folder (the only writable place besides bwrap's private /dev), no network
  (new net namespace), new pid/ipc/uts/user namespaces, all capabilities dropped,
  ``--die-with-parent``, cleared environment;
- in the process (`rewards/_code_harness.py`): rlimits on CPU seconds, address space, file
  size, processes and core files, and a seccomp filter refusing new processes and IP sockets;
- from outside: a wall-clock deadline that SIGKILLs the whole process group.
Without bubblewrap (``sandbox="auto"`` and ``bwrap`` missing or not permitted) the run has the
rlimits and seccomp filter only, and a warning is logged once: the file system is then
writable wherever the user can write. Not a defence against a program that tampers with the
harness inside its own process. One common hack is closed: in ``assert a == b`` neither side may
be an instance of a class the program defined (an object whose ``__eq__`` is always True).
"""

from __future__ import annotations

import ast
import dataclasses
import json
import logging
import math
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Literal

from rewards._pool import wait_readable, worker_count
from rewards.base import Batch, Reward, Tally, parse_verification
from rewards.registry import register
from rewards.text import answer_region, last_code_block, think_prefill

logger = logging.getLogger(__name__)

_HARNESS = Path(__file__).with_name("_code_harness.py")
_MAX_OUTPUT = 1 << 20  # bytes of harness output read; more means a flood, not results


# -- test rewriting -------------------------------------------------------------------------
class _AssertRewriter(ast.NodeTransformer):
    def __init__(self) -> None:
        self.count = 0

    def visit_Assert(self, node: ast.Assert) -> ast.AST:
        index, self.count = self.count, self.count + 1
        test = node.test
        if isinstance(test, ast.Compare) and len(test.ops) == 1 and isinstance(test.ops[0], ast.Eq):
            # `a == b` -> `__r1_eq__(a, b)`: refuses objects of classes the program defined, so a
            # returned object whose __eq__ is always True does not pass every test.
            test = ast.Call(ast.Name("__r1_eq__", ast.Load()), [test.left, test.comparators[0]], [])
        no_args = ast.arguments(posonlyargs=[], args=[], kwonlyargs=[], kw_defaults=[], defaults=[])
        call = ast.Call(
            func=ast.Name("__r1_assert__", ast.Load()),
            args=[ast.Constant(index), ast.Lambda(args=no_args, body=test)],
            keywords=[],
        )
        return ast.copy_location(ast.Expr(call), node)


def _guarded(statements: list[ast.stmt]) -> list[ast.stmt]:
    """Wrap each statement in ``try: ... except BaseException: pass``."""
    handler = ast.ExceptHandler(type=ast.Name("BaseException", ast.Load()), name=None, body=[ast.Pass()])
    return [ast.Try(body=[s], handlers=[handler], orelse=[], finalbody=[]) for s in statements]


def rewrite_tests(source: str) -> tuple[str, int]:
    r"""Make each ``assert`` of `source` a separately counted test.

    Returns the rewritten source and the number of asserts. Statements at module level and in
    the body of ``check`` are guarded so one failure does not skip the rest (not when there is
    no assert: then an exception is how the tests fail).

    >>> src, n = rewrite_tests("def check(candidate):\n    assert candidate(1) == 2\n    assert candidate(2) == 3\n")
    >>> n, "__r1_assert__(1, lambda: __r1_eq__(candidate(2), 3))" in src
    (2, True)

    Raises:
        SyntaxError (or ValueError for a null byte): if `source` is not valid Python.
    """
    tree = ast.parse(source)
    rewriter = _AssertRewriter()
    tree = rewriter.visit(tree)
    if rewriter.count:  # without asserts, an exception is the only failure signal: keep it
        for node in tree.body:
            if isinstance(node, ast.FunctionDef) and node.name == "check":
                node.body = _guarded(node.body)
        tree.body = _guarded(tree.body)
    return ast.unparse(ast.fix_missing_locations(tree)), rewriter.count


# -- sandbox ------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Limits:
    """Resource limits of one test run. `timeout` is wall-clock seconds for the whole run;
    `cpu_seconds` defaults to ceil(timeout); `memory_mb` is the address-space limit (MiB);
    `file_mb` caps each written file and the sandbox's /tmp; `nproc` is RLIMIT_NPROC, a
    backstop only: it counts all of the user's threads and does not bind root, so the seccomp
    filter is what stops new processes.
    """

    timeout: float = 10.0
    memory_mb: int = 1024
    file_mb: int = 16
    nproc: int = 512
    cpu_seconds: int | None = None


@dataclasses.dataclass(frozen=True)
class RunResult:
    """`passed` of `total` asserts; `status` "ok", "timeout" (partial results kept) or
    "error" (the harness never started: a sandbox failure, not the program's fault)."""

    passed: int
    total: int
    status: Literal["ok", "timeout", "error"]
    seconds: float


_bwrap_state: dict[str, Any] = {}
_bwrap_lock = threading.Lock()
_BWRAP_BASE = [
    "--unshare-all", "--die-with-parent", "--new-session", "--cap-drop", "ALL",
    "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc",
]


def _interpreter_binds() -> list[str]:
    """``--ro-bind`` arguments that put back the interpreter when it lives under /tmp (a
    project cloned there, as CI may do): the fresh tmpfs on /tmp would otherwise hide it."""
    binds: list[str] = []
    for prefix in sorted({sys.prefix, sys.base_prefix, os.path.dirname(os.path.realpath(sys.executable))}):
        if prefix == "/tmp" or prefix.startswith("/tmp/"):
            binds += ["--ro-bind", prefix, prefix]
    return binds


def bwrap_works() -> bool:
    """True if ``bwrap`` is installed and can create its namespaces here (probed once)."""
    with _bwrap_lock:
        if "ok" not in _bwrap_state:
            path = shutil.which("bwrap")
            ok = False
            if path:
                try:
                    probe = subprocess.run([path, *_BWRAP_BASE, "true"], capture_output=True, timeout=30)
                    ok = probe.returncode == 0
                except (OSError, subprocess.TimeoutExpired):
                    ok = False
            _bwrap_state["ok"], _bwrap_state["path"] = ok, path
        return _bwrap_state["ok"]


_warned_no_bwrap = False


def _use_bwrap(sandbox: str) -> bool:
    global _warned_no_bwrap
    if sandbox == "none":
        return False
    if bwrap_works():
        return True
    if sandbox == "bwrap":
        raise RuntimeError("sandbox='bwrap' but bubblewrap is missing or not permitted here (apt-get install bubblewrap)")
    if not _warned_no_bwrap:
        _warned_no_bwrap = True
        logger.warning(
            "bubblewrap (bwrap) is not usable: generated code runs with rlimits and a seccomp filter only, "
            "WITHOUT file-system or network isolation. Install bubblewrap for real isolation."
        )
    return False


def run_tests(program: str, tests: str, entry_point: str | None, n_asserts: int, limits: Limits,
              sandbox: str = "auto") -> RunResult:
    """Run `program` then the rewritten `tests` (see `rewrite_tests`) in a sandbox.

    `sandbox`: "auto" (bubblewrap if usable, else rlimits + seccomp with a warning), "bwrap"
    (required; RuntimeError if unusable) or "none" (rlimits + seccomp, no warning).
    """
    started = time.monotonic()
    total = max(n_asserts, 1)
    nonce = secrets.token_hex(16)
    run_dir = Path(tempfile.mkdtemp(prefix="r1-code-"))
    try:
        src = run_dir / "src"
        src.mkdir()
        config = {
            "entry_point": entry_point,
            "n_asserts": n_asserts,
            "memory_bytes": limits.memory_mb << 20,
            "cpu_seconds": limits.cpu_seconds or math.ceil(limits.timeout),
            "file_bytes": limits.file_mb << 20,
            "nproc": limits.nproc,
        }
        (src / "config.json").write_text(json.dumps(config))
        (src / "program.py").write_text(program, encoding="utf-8", errors="replace")
        (src / "tests.py").write_text(tests, encoding="utf-8", errors="replace")
        shutil.copyfile(_HARNESS, src / "harness.py")
        for path in [run_dir, src, *src.iterdir()]:
            path.chmod(0o755 if path.is_dir() else 0o644)
        env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8",
               # one BLAS/OpenMP thread: faster imports, and thread buffers stay inside memory_mb
               "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        python = [sys.executable, "-I", "-B"]
        if _use_bwrap(sandbox):
            tmp_bytes = str(limits.file_mb << 20)
            cmd = [_bwrap_state["path"], *_BWRAP_BASE, "--size", tmp_bytes, "--tmpfs", "/tmp",
                   *_interpreter_binds(),
                   "--ro-bind", str(src), "/tmp/src", "--dir", "/tmp/work", "--chdir", "/tmp/work", "--clearenv"]
            for key, value in {**env, "HOME": "/tmp/work"}.items():
                cmd += ["--setenv", key, value]
            cmd += [*python, "/tmp/src/harness.py", "/tmp/src"]
            cwd = None
        else:
            work = run_dir / "work"
            work.mkdir()
            env["HOME"] = str(work)
            cmd, cwd = [*python, str(src / "harness.py"), str(src)], str(work)
        for attempt in (1, 2):  # a sandbox that fails to start (e.g. a namespace limit) gets one retry
            with open(run_dir / "stderr", "w+b") as stderr:
                output, timed_out = _run(cmd, cwd, env, nonce, limits.timeout, stderr)
                result = _parse_output(output, nonce, total, timed_out, time.monotonic() - started)
                if result.status != "error":
                    break
                stderr.seek(0)
                _log_sandbox_failure(attempt, stderr.read(2000).decode("utf-8", "replace"))
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)
    return result


_sandbox_failures = 0


def _log_sandbox_failure(attempt: int, stderr: str) -> None:
    global _sandbox_failures
    _sandbox_failures += 1
    if _sandbox_failures <= 5:  # enough to diagnose, not enough to flood a training log
        logger.warning("code sandbox did not start (attempt %d): %s", attempt, stderr.strip() or "no stderr")


def _run(cmd: list[str], cwd: str | None, env: dict[str, str], nonce: str, timeout: float,
         stderr: Any) -> tuple[bytes, bool]:
    """Run `cmd` in its own process group; kill the group at the deadline. Returns (stdout, timed out).

    The nonce goes in on stdin (read before the program runs), not in the environment or a file,
    where the program could read it back.
    """
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=stderr, start_new_session=True)
    try:
        proc.stdin.write(nonce.encode() + b"\n")
        proc.stdin.close()
    except OSError:  # the sandbox died at once; the missing "start" line reports it
        pass
    deadline = time.monotonic() + timeout
    fd = proc.stdout.fileno()
    chunks, size, timed_out = [], 0, False
    try:
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or size > _MAX_OUTPUT:
                timed_out = remaining <= 0
                break
            if not wait_readable([fd], remaining):
                continue
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        proc.stdout.close()
        proc.wait()
    return b"".join(chunks), timed_out


def _parse_output(output: bytes, nonce: str, total: int, timed_out: bool, seconds: float) -> RunResult:
    started = False
    passed_once, failed = set(), set()
    for line in output.decode("utf-8", "replace").splitlines():
        parts = line.split()
        if len(parts) < 2 or parts[0] != nonce:
            continue
        if parts[1] == "start":
            started = True
        elif len(parts) == 3 and parts[1].isdigit():
            (passed_once if parts[2] == "1" else failed).add(int(parts[1]))
    passed = len({i for i in passed_once - failed if i < total})
    status = "error" if not started else "timeout" if timed_out else "ok"
    return RunResult(passed, total, status, seconds)


# -- rows -------------------------------------------------------------------------------------
def extract_code(prompt: str, completion: str) -> str | None:
    r"""The code to run: the last python block of the answer region, or the whole region.

    None when the reasoning never closed or the region is blank.

    >>> extract_code("", "<think>try</think><answer>```python\ndef f(x):\n    return x\n```</answer>")
    'def f(x):\n    return x\n'
    """
    region = answer_region(completion, think_open=bool(think_prefill(prompt)))
    if region is None:
        return None
    code = last_code_block(region)
    code = region if code is None else code
    return code if code.strip() else None


@dataclasses.dataclass(frozen=True)
class CodeTask:
    program: str
    tests: str
    entry_point: str | None
    n_asserts: int


def code_task(prompt: str, completion: str, verification: dict[str, Any]) -> CodeTask | float | None:
    """A runnable task, or the final score: None (no tests / tests not valid Python),
    0.0 (no code)."""
    test = verification.get("test")
    if not isinstance(test, str) or not test.strip():
        return None
    try:
        tests, n_asserts = rewrite_tests(test)
    except (SyntaxError, ValueError):  # ValueError: e.g. a null byte in the source
        return None
    code = extract_code(prompt, completion)
    if code is None:
        return 0.0
    stub = verification.get("prompt") or ""
    program = f"{stub}\n{code}" if stub else code
    return CodeTask(program, tests, verification.get("entry_point"), n_asserts)


def run_code_batch(tasks: list[CodeTask | float | None], limits: Limits, sandbox: str, workers: int,
                   binary: bool, tally: Tally) -> list[float | None]:
    """Score many rows: sandboxes run `workers` at a time (threads waiting on subprocesses)."""
    scores: list[float | None] = [t if not isinstance(t, CodeTask) else None for t in tasks]
    pending = [i for i, t in enumerate(tasks) if isinstance(t, CodeTask)]
    if not pending:
        return scores

    def run(i: int) -> RunResult:
        t = tasks[i]
        return run_tests(t.program, t.tests, t.entry_point, t.n_asserts, limits, sandbox)

    with ThreadPoolExecutor(max_workers=max(1, min(workers, len(pending)))) as executor:
        for i, result in zip(pending, executor.map(run, pending)):
            if result.status == "error":
                tally.errors += 1
                continue  # None: the sandbox failed, the program was not judged
            tally.timeouts += result.status == "timeout"
            fraction = result.passed / result.total
            scores[i] = float(fraction == 1.0) if binary else fraction
    return scores


class _CodeReward(Reward):
    binary = False

    def __init__(self, timeout: float = 10.0, memory_mb: int = 1024, sandbox: str = "auto",
                 workers: int | None = None) -> None:
        super().__init__()
        if sandbox not in ("auto", "bwrap", "none"):
            raise ValueError(f"sandbox must be 'auto', 'bwrap' or 'none', got {sandbox!r}")
        self.limits = Limits(timeout=timeout, memory_mb=memory_mb)
        self.sandbox = sandbox
        self.workers = workers

    def score_batch(self, batch: Batch, tally: Tally) -> list[float | None]:
        tasks: list[CodeTask | float | None] = []
        for prompt, completion, raw in zip(batch.prompts, batch.completions, batch.column("verification")):
            try:
                verification = parse_verification(raw)
            except ValueError:
                verification = {}
            ok = verification.get("kind") == "python_tests"
            tasks.append(code_task(prompt, completion, verification) if ok else None)
        workers = self.workers or worker_count()
        return run_code_batch(tasks, self.limits, self.sandbox, workers, self.binary, tally)


@register("code")
class CodeFraction(_CodeReward):
    r"""Fraction of the test asserts the program passes, in a sandbox; None without python_tests.

    Reads `verification` = ``{"kind": "python_tests", "test", "entry_point", "prompt"?}``.
    `timeout`: wall-clock seconds for all tests of one completion (CPU limit the same);
    `memory_mb`: address-space limit (MiB); `sandbox`: "auto" | "bwrap" | "none";
    `workers`: concurrent sandboxes (default: the reward worker count, the CPU count).
    A timeout keeps the asserts passed before it and is counted; a sandbox that fails to start
    gives None and counts an error.

    >>> v = {"kind": "python_tests", "entry_point": "add",
    ...      "test": "def check(candidate):\n    assert candidate(1, 2) == 3\n    assert candidate(0, 0) == 1\n"}
    >>> CodeFraction()([""], ["```python\ndef add(a, b):\n    return a + b\n```"], verification=[v])
    [0.5]
    """


@register("code_binary")
class CodeBinary(_CodeReward):
    r"""1.0 only if every test assert passes, else 0.0 (same inputs and sandbox as `code`); None without python_tests.

    >>> v = {"kind": "python_tests", "entry_point": "add",
    ...      "test": "def check(candidate):\n    assert candidate(1, 2) == 3\n"}
    >>> CodeBinary()([""], ["def add(a, b):\n    return a + b\n"], verification=[v])
    [1.0]
    """

    binary = True

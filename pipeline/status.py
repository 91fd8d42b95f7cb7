"""``r1 status [RUN]`` and ``r1 ls``: where a run stands, read from its folder (``store.RunFolder``).

Per step: **done**, **running** (the run's lock holder is alive and this is its current step),
**partial** (a partial folder: interrupted or failed; how far: the progress it reported, its
newest complete checkpoint, the shards kept; why it stopped: its ``.error.json``), **pending**
(in the pipeline, not started), **stale** (done, but the pipeline's config of the step changed
since, or an upstream step produced new output since: the next ``r1 run`` redoes it); with its
wall time and its key numbers (the stage's ``headline``; for an unfinished trainer step, the
last logged loss or reward and seconds per step). The pipeline is the one the run last ran
with (``<run>/.pipeline.json``) or ``--config FILE``.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

from rich.console import Group
from rich.table import Table
from rich.text import Text

from pipeline import runner, store
from pipeline.render import fmt
from pipeline.stage import last_checkpoint
from pipeline.summary import key_numbers


def _duration(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "–"
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.0f} s"
    if seconds < 3600:
        return f"{seconds // 60:.0f} min {seconds % 60:02.0f} s"
    return f"{seconds // 3600:.0f} h {seconds % 3600 // 60:02.0f} min"


def _far(view: store.StepView, planned: dict) -> dict:
    """How far an unfinished step got: its progress record, newest checkpoint, shards."""
    folder = view.folder
    record = store.read_progress(folder) or {}
    out: dict = {}
    if record.get("done") is not None:
        out.update({k: record.get(k) for k in ("done", "total", "unit", "eta_s", "phase", "updated")})
        out["extra"] = record.get("extra", {})
    checkpoint = last_checkpoint(folder / "checkpoints")
    if checkpoint:
        out["checkpoint_step"] = int(checkpoint.rsplit("-", 1)[1])
        out["max_steps"] = planned.get("max_steps") or view.config.get("max_steps")
    shards = folder / "shards"
    if shards.is_dir():
        out["shards_kept"] = len(list(shards.glob("shard-*.parquet")))
    error = runner._read_error(folder)
    if error:
        out["error"] = error.get("message", "")
        out["interrupted"] = bool(error.get("interrupted"))
    if record.get("started"):
        out["started"] = record["started"]
        out["last_update"] = record.get("last_beat") or record.get("updated")
    return out


def _current(partial: Path, holder: dict | None) -> bool:
    """Whether the live run (lock ``holder``) works on this partial folder now: the folder was
    prepared after the run started (its config.yaml) and its progress, if any, comes from a
    process that is alive."""
    if holder is None:
        return False
    try:
        prepared = (partial / "config.yaml").stat().st_mtime
    except OSError:
        return False
    if prepared < holder.get("started", 0) - 1:
        return False
    record = store.read_progress(partial) or {}
    pid = record.get("pid")
    return not isinstance(pid, int) or Path(f"/proc/{pid}").exists() or not Path("/proc").is_dir()


def run_status(run_dir: Path, plan: dict | None = None) -> dict:
    """The status of a run folder as a JSON-ready mapping: ``run``, ``path``, ``running`` (the
    lock holder's record or None), ``pipeline`` (the plan's source), ``steps`` (one mapping per
    step: ``name``, ``kind``, ``status``, ``wall_time_s``, ``key_numbers``, ``progress``,
    ``reason``)."""
    folder = store.RunFolder(run_dir)
    plan = plan if plan is not None else runner.read_plan(run_dir)
    planned = {s["name"]: s for s in (plan or {}).get("steps", [])}
    order = list(planned) or None
    views = folder.steps(order, {n: (s.get("kind", "?"), s.get("inputs", {})) for n, s in planned.items()})
    holder = store.lock_holder(run_dir)
    outputs = {v.name: (v.manifest or {}).get("output_hash") for v in views if v.manifest}
    steps = []
    running_found = False
    for view in views:
        plan_step = planned.get(view.name, {})
        entry: dict = {
            "name": view.name,
            "kind": view.kind,
            "status": "",
            "wall_time_s": None,
            "key_numbers": {},
            "progress": {},
            "reason": "",
        }
        if view.status == "not run":
            entry["status"] = "pending"
        elif view.status == "manifest unreadable":
            entry.update(status="damaged", reason=view.summary)
        elif view.done and not view.status.endswith("unfinished"):
            entry.update(status="done", wall_time_s=view.wall_time_s, key_numbers=key_numbers(view.kind, view.result))
            reasons = []
            manifest = view.manifest or {}  # a done view always has its manifest
            if plan_step.get("config_hash") and manifest.get("config_hash") != plan_step["config_hash"]:
                reasons.append("config changed since it ran")
            for name, block in manifest.get("inputs", {}).items():
                ref = block.get("ref")
                if ref in outputs and outputs[ref] and block.get("hash") != outputs[ref]:
                    reasons.append(f"input {name} ({ref}) has new output")
            if reasons:
                entry.update(status="stale", reason="; ".join(reasons) + ": the next run redoes it")
        else:  # a partial folder (alone, or next to an older finished one)
            partial = view.folder if view.status == "unfinished" else run_dir / ".partial" / view.name
            view_partial = store.StepView(view.name, view.kind, "unfinished", partial, view.config or {})
            far = _far(view_partial, plan_step)
            entry["progress"] = far
            alive = not running_found and not far.get("error") and _current(partial, holder)
            entry["status"] = "running" if alive else "partial"
            running_found = running_found or alive
            started, last = far.get("started"), far.get("last_update")
            entry["wall_time_s"] = (time.time() if alive else (last or started or 0)) - started if started else None
            extra = far.get("extra") or {}
            entry["key_numbers"] = {k: extra[k] for k in ("reward", "loss", "seconds_per_step") if k in extra}
            if far.get("error"):
                error = runner._read_error(partial)
                how = f" by {error.get('message')}" if str(error.get("message", "")).startswith("SIG") else ""
                entry["reason"] = (
                    f"interrupted{how}; rerun to resume" if far.get("interrupted") else "failed: " + far["error"]
                )
            elif not alive:
                entry["reason"] = "stopped (killed or lost); rerun to resume"
            if view.status.startswith("done"):
                entry["reason"] = (
                    entry["reason"] + "; " if entry["reason"] else ""
                ) + "an older finished version is kept"
        steps.append(entry)
    return {
        "run": run_dir.name,
        "path": str(run_dir),
        "running": holder,
        "pipeline": (plan or {}).get("source"),
        "steps": steps,
    }


def bar(done: float, total: float, width: int = 20) -> Text:
    """A progress bar as text (``━━━━━━━━──────── 40%``), drawn the same in any table width."""
    share = max(0.0, min(1.0, done / total)) if total else 0.0
    filled = round(share * width)
    return Text.assemble(("━" * filled, "cyan"), ("─" * (width - filled), "dim"), f" {share:.0%}")


def how_far(progress: dict, running: bool = True) -> str:
    """``12/40 steps (ETA 3 min 10 s); checkpoint 10/40; 3 shards kept`` from a step's progress
    (the ETA only while it runs)."""
    parts = []
    if progress.get("done") is not None:
        total = f"/{progress['total']:g}" if progress.get("total") else ""
        eta = f" (ETA {_duration(progress['eta_s'])})" if running and progress.get("eta_s") is not None else ""
        parts.append(f"{progress['done']:g}{total} {progress.get('unit') or ''}".strip() + eta)
        extra = progress.get("extra") or {}
        if extra.get("shards"):
            parts.append(f"shards {extra['shards']}")
    if progress.get("checkpoint_step") is not None:
        total = f"/{progress['max_steps']}" if progress.get("max_steps") and progress["max_steps"] > 0 else ""
        parts.append(f"checkpoint at step {progress['checkpoint_step']}{total}")
    elif progress.get("shards_kept") is not None and not (progress.get("extra") or {}).get("shards"):
        parts.append(f"{progress['shards_kept']} shard(s) kept")
    if progress.get("phase") and running:
        parts.append(f"phase: {progress['phase']}")
    return "; ".join(parts) or "no progress recorded"


STYLE = {
    "done": "green",
    "running": "bold cyan",
    "partial": "yellow",
    "pending": "dim",
    "stale": "magenta",
    "damaged": "red",
}


def status_table(status: dict) -> Table:
    """The rich table of :func:`run_status`: one row per step, a progress bar for the unfinished ones."""
    holder = status["running"]
    title = f"run {status['run']}: " + (f"running ({store.describe_holder(holder)})" if holder else "not running")
    table = Table(title=title, title_justify="left", show_lines=False)
    for column in ("step", "kind", "status", "progress", "wall time", "key numbers"):
        table.add_column(column, overflow="fold")
    for s in status["steps"]:
        p = s["progress"]
        cell: Text | Group = Text("")
        if s["status"] in ("running", "partial"):
            lines = [Text(how_far(p, s["status"] == "running"))]
            if p.get("done") is not None and p.get("total"):
                lines.insert(0, bar(float(p["done"]), float(p["total"])))
            if s["reason"]:
                lines.append(Text(s["reason"], style="red" if s["reason"].startswith("failed") else "yellow"))
            cell = Group(*lines)
        elif s["reason"]:
            cell = Text(s["reason"], style="magenta")
        numbers = ", ".join(f"{k}={fmt(v, 3) if isinstance(v, float) else v}" for k, v in s["key_numbers"].items())
        table.add_row(
            s["name"],
            s["kind"],
            Text(s["status"], style=STYLE.get(s["status"], "")),
            cell,
            _duration(s["wall_time_s"]),
            numbers,
        )
    return table


def list_runs() -> list[dict]:
    """Every run folder under the artifact root: name, steps done / partial / known, running or
    not, last change (for ``r1 ls``)."""
    out = []
    for name in store.list_runs():
        run_dir = store.runs_root() / name
        if name == "models":  # prepared model aliases (pipeline.models), not a run
            continue
        folder = store.RunFolder(run_dir)
        if not folder.holds_steps() and runner.read_plan(run_dir) is None:
            continue  # e.g. runs/models
        status = run_status(run_dir)
        counts: dict[str, int] = {}
        for s in status["steps"]:
            counts[s["status"]] = counts.get(s["status"], 0) + 1
        changed = max((p.stat().st_mtime for p in [run_dir, *run_dir.iterdir()]), default=0.0)
        out.append(
            {
                "run": name,
                "path": str(run_dir),
                "steps": len(status["steps"]),
                "counts": counts,
                "running": status["running"],
                "pipeline": status["pipeline"],
                "changed": changed,
            }
        )
    return out


def runs_table(runs: list[dict]) -> Table:
    table = Table(title=f"runs in {store.runs_root()}", title_justify="left")
    for column in ("run", "steps", "state", "last change", "pipeline"):
        table.add_column(column, overflow="fold")
    for r in runs:
        counts = ", ".join(f"{n} {k}" for k, n in sorted(r["counts"].items()))
        state = Text(f"running (pid {r['running'].get('pid')})", style="bold cyan") if r["running"] else Text("idle")
        table.add_row(
            r["run"],
            f"{r['steps']}: {counts}",
            state,
            time.strftime("%Y-%m-%d %H:%M", time.localtime(r["changed"])),
            r["pipeline"] or "–",
        )
    return table

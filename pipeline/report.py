"""The run report: one Markdown file and one self-contained HTML page for a pipeline run.

``r1 report RUN`` (and the end of every ``r1 run``) reads only the run folder
(``$R1_HOME/<run>/``, through ``pipeline.store.RunFolder``): each step's manifest (inputs,
config, counts, metrics, wall time), ``metrics.jsonl`` (trainer logs; the last line of a
re-logged step wins) and what the stages' report hooks read (eval results, samples). It writes
``<run>/report/``: ``report.md``, ``report.html`` (the figures embedded as data URIs, so the page
is one file you can mail; ``pipeline.render``) and the figures as PNG.

Sections: at a glance; the step graph (inputs, outputs, wall time, status); training curves
of every stage that declares panels (``StageReport.panels``: loss and learning rate of every
trainer, GRPO's rewards, KL, entropy, clip ratios, ...); then each stage kind's own section
(``StageReport.section``: GRPO's response length over RL steps, the eval tables with 95%
intervals and sample completions, the rejection-sampling funnel). A section whose data the run
does not have says "not in this run"; nothing is ever drawn from made-up data. Stage kinds are
never named here: what a kind adds is declared by its module (``pipeline.stage``).
"""

from __future__ import annotations

import math
import time
from pathlib import Path

from pipeline import store
from pipeline.render import Doc, fmt, short
from pipeline.stage import StageReport
from pipeline.store import StepView

REPORT_DIR = "report"


def stage_report(kind: str) -> StageReport:
    """The ``REPORT`` a stage module declares (an empty one for an unknown kind or none)."""
    import stages

    try:
        return getattr(stages.get(kind), "REPORT", StageReport())
    except KeyError:
        return StageReport()


def _config_inputs(cfg: dict) -> dict[str, str]:
    """Input name -> reference of a step config that has no manifest yet (its stage's
    ``input_fields``); {} for an unknown kind."""
    import stages

    try:
        fields = stages.get(cfg.get("kind", "")).Config.input_fields
    except KeyError:
        return {}
    out = {}
    for name in fields:
        value = cfg.get(name)
        for i, ref in enumerate(value if isinstance(value, list) else [value] if value else []):
            out[f"{name}.{i}" if isinstance(value, list) else name] = str(ref)
    return out


# ----------------------------------------------------------------------------- sections


def section_glance(doc: Doc, steps: list[StepView]) -> None:
    """The few numbers a reader wants first; a stage's line only when the run has its data."""
    lines = [
        f"{sum(s.done for s in steps)} of {len(steps)} steps done, "
        f"{sum(s.wall_time_s or 0 for s in steps) / 60:.1f} min of step wall time."
    ]
    for s in steps:
        glance = stage_report(s.kind).glance
        line = glance(s) if glance is not None and s.status != "not run" else None
        if line:
            lines.append(line)
    doc.h(2, "At a glance")
    doc.bullets(lines)


def section_steps(doc: Doc, steps: list[StepView]) -> None:
    """The step graph (inputs -> steps) and one table row per step."""
    from matplotlib.figure import Figure
    from matplotlib.patches import FancyArrowPatch, FancyBboxPatch
    from matplotlib.path import Path as Curve

    doc.h(2, "Steps")
    if not steps:
        doc.missing("no step has started in this run folder")
        return
    names = {s.name for s in steps}
    depth: dict[str, int] = {}
    external: list[str] = []
    for s in steps:
        for ref in s.inputs.values():
            if ref not in names and ref not in external:
                external.append(ref)
        depth[s.name] = 1 + max([depth.get(r, 0) for r in s.inputs.values()], default=0)
    nodes = [(ref, 0) for ref in external] + [(s.name, depth[s.name]) for s in steps]
    column_rows: dict[int, int] = {}
    pos = {}
    for name, d in nodes:
        pos[name] = (d * 2.6, -column_rows.get(d, 0) * 1.3)
        column_rows[d] = column_rows.get(d, 0) + 1
    width, height = max(d for _, d in nodes) + 1, max(column_rows.values())
    # An edge to the next column is straight; one that skips columns rises in the gap after its
    # source, runs in its own lane above the rows it passes (boxes reach 0.45 above their row)
    # and comes down in the gap before its target.
    edges, lane = [], 0
    for s in steps:
        for ref in s.inputs.values():
            (x0, y0), (x1, y1) = pos[ref], pos[s.name]
            if x1 - x0 < 2.7:  # 2.6 = one column
                edges.append(Curve([(x0 + 1.0, y0), (x1 - 1.0, y1)], [Curve.MOVETO, Curve.LINETO]))
            else:
                y = 0.65 + 0.18 * lane
                lane += 1
                edges.append(
                    Curve(
                        [(x0 + 1.0, y0), (x0 + 1.3, y), (x1 - 1.3, y), (x1 - 1.0, y1)],
                        [Curve.MOVETO, Curve.LINETO, Curve.LINETO, Curve.LINETO],
                    )
                )
    top = 0.75 + 0.18 * lane
    fig = Figure(figsize=(max(6.0, 2.3 * width), max(2.0, 0.9 * ((height - 1) * 1.3 + 0.7 + top))))
    ax = fig.add_axes((0.01, 0.01, 0.98, 0.98))
    colours = {"done": "#d4edda", "unfinished": "#ffe8a3", "not run": "#eeeeee"}
    for path in edges:
        ax.add_patch(FancyArrowPatch(path=path, arrowstyle="-|>", mutation_scale=12, color="#555", lw=1))
    info = {s.name: s for s in steps}
    for name, (x, y) in pos.items():
        view = info.get(name)
        label = (
            short(name)
            if view is None
            else (
                f"{name}\n{view.kind} · {view.status}"
                + (f" · {view.wall_time_s:.0f} s" if view.wall_time_s is not None else "")
            )
        )
        colour = "#dbe9f6" if view is None else colours.get(view.status.split(" (")[0], "#eeeeee")
        ax.add_patch(FancyBboxPatch((x - 1.0, y - 0.45), 2.0, 0.9, boxstyle="round,pad=0.02", fc=colour, ec="#666"))
        ax.text(x, y, label, ha="center", va="center", fontsize=7.5)
    ax.set_xlim(-1.2, (width - 1) * 2.6 + 1.2)
    ax.set_ylim(-(height - 1) * 1.3 - 0.7, top)
    ax.axis("off")
    doc.figure(
        fig,
        "steps.png",
        "Step graph: arrows run from an input to the step that reads it (blue: models or data from outside the run)",
    )
    rows = []
    for s in steps:
        ins = ", ".join(f"{k}={v}" for k, v in s.inputs.items()) or "–"
        rows.append(
            [
                s.name,
                s.kind,
                s.status,
                fmt(s.wall_time_s, 0) if s.wall_time_s is not None else "–",
                ins,
                ", ".join(s.outputs) or "–",
                s.summary or "–",
            ]
        )
    doc.table(["step", "kind", "status", "wall s", "inputs", "outputs", "summary"], rows)


def _panel_keys(panel, records: list[dict]) -> list[str]:
    if panel.keys:
        return [k for k in panel.keys if store.series(records, k)[0]]
    prefix, _, suffix = panel.pattern.partition("*")
    keys = sorted(
        {k for r in records for k in r if k.startswith(prefix) and k.endswith(suffix) and k not in panel.exclude}
    )
    return [k for k in keys if store.series(records, k)[0]]


def stacked_series(records: list[dict], keys: list[str]) -> tuple[list[float], list[list[float]]]:
    """``(steps, [values of each key])`` on the union of the keys' steps, a missing value as 0:
    the input of a stacked plot (``Panel.stacked``).

    >>> stacked_series([{"step": 1, "a": 2.0, "b": 1.0}, {"step": 2, "a": 3.0}], ["a", "b"])
    ([1.0, 2.0], [[2.0, 3.0], [1.0, 0.0]])
    """
    by_key = {k: dict(zip(*store.series(records, k))) for k in keys}
    xs = sorted({x for values in by_key.values() for x in values})
    return xs, [[by_key[k].get(x, 0.0) for x in xs] for k in keys]


def section_training(doc: Doc, steps: list[StepView]) -> None:
    """Training curves of every step whose stage declares panels (``StageReport.panels``)."""
    from matplotlib.figure import Figure

    import stages

    doc.h(2, "Training curves")
    trained = [s for s in steps if stage_report(s.kind).panels and s.status != "not run"]
    if not trained:
        kinds = [k for k in stages.kinds() if stage_report(k).panels]
        doc.missing(f"no training step ({', '.join(kinds)})")
    for s in trained:
        records = s.log()
        doc.h(3, f"{s.name} ({s.kind})")
        panels = [(p, _panel_keys(p, records)) for p in stage_report(s.kind).panels]
        absent = [p.title for p, keys in panels if not keys and not p.optional]
        panels = [(p, k) for p, k in panels if k]
        if not panels:
            doc.missing(f"`{s.name}` logged no metrics (`metrics.jsonl` is empty or absent)")
            continue
        cols = min(3, len(panels))
        rows = math.ceil(len(panels) / cols)
        # Fixed margins, not constrained layout: a 3x3 grid lays out in a tenth of the time.
        fig = Figure(figsize=(4.2 * cols, 2.8 * rows))
        fig.subplots_adjust(
            left=0.07, right=0.98, bottom=0.5 / (2.8 * rows), top=1 - 0.35 / (2.8 * rows), wspace=0.28, hspace=0.55
        )
        axes = fig.subplots(rows, cols, squeeze=False).ravel()
        for ax, (panel, keys) in zip(axes, panels):
            if panel.stacked:
                xs, stack = stacked_series(records, keys)
                # phases that never took time (e.g. ref_logprobs without a reference model) stay out
                shown = [(k, ys) for k, ys in zip(keys, stack) if any(ys)]
                ax.stackplot(
                    xs,
                    [ys for _, ys in shown],
                    labels=[k.removeprefix(panel.pattern.partition("*")[0]) for k, _ in shown],
                )
            for key in keys if not panel.stacked else ():
                xs, ys = store.series(records, key)
                ax.plot(xs, ys, marker="." if len(xs) < 40 else None, label=key.removeprefix("rewards/"))
            ax.set_title(panel.title, fontsize=9)
            ax.set_xlabel("step", fontsize=8)
            ax.tick_params(labelsize=7)
            if len(keys) > 1:
                ax.legend(fontsize=6 if panel.stacked else 7, ncol=2 if panel.stacked else 1)
        for ax in axes[len(panels) :]:
            ax.axis("off")
        doc.figure(fig, f"curves_{s.name}.png", f"{s.name}: training curves from metrics.jsonl")
        if absent:
            doc.missing(f"`{s.name}` did not log: {', '.join(absent)}")


def section_stages(doc: Doc, steps: list[StepView]) -> None:
    """Each stage kind's own section (``StageReport.section``), in the order the run first
    uses the kinds; kinds the run does not use follow (their section says what is missing)."""
    import stages

    seen = list(dict.fromkeys(s.kind for s in steps))
    kinds = [k for k in seen if k in stages.kinds()] + [k for k in stages.kinds() if k not in seen]
    for kind in kinds:
        section = stage_report(kind).section
        if section is not None:
            section(doc, [s for s in steps if s.kind == kind])


# ----------------------------------------------------------------------------- entry point


def write_report(
    run_dir: str | Path, order: list[str] | None = None, planned: dict[str, tuple[str, dict[str, str]]] | None = None
) -> tuple[Path, Path]:
    """Write ``<run_dir>/report/report.md``, ``report.html`` and the PNG figures.

    ``order``: the pipeline's step names (lists steps not run yet); default: steps by start
    time. ``planned``: step name -> (kind, inputs) of the pipeline, shown for steps not run yet.

    Returns:
        (Markdown path, HTML path).

    Raises:
        FileNotFoundError: ``run_dir`` is not a folder.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"no run folder {run_dir}")
    out = run_dir / REPORT_DIR
    out.mkdir(exist_ok=True)
    for old in out.glob("*.png"):
        old.unlink()
    steps = store.RunFolder(run_dir).steps(order, planned, inputs_of=_config_inputs)
    doc = Doc(out)
    doc.h(1, f"Run {run_dir.name}")
    commits = sorted({str((s.manifest or {}).get("git_commit")) for s in steps if s.done})
    doc.p(f"Report of `{run_dir}` written {time.strftime('%Y-%m-%d %H:%M')}; code: {', '.join(commits) or 'unknown'}.")
    section_glance(doc, steps)
    section_steps(doc, steps)
    section_training(doc, steps)
    section_stages(doc, steps)
    md, page = out / "report.md", out / "report.html"
    md.write_text(doc.markdown())
    page.write_text(doc.html(f"Run {run_dir.name}"))
    return md, page

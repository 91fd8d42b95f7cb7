"""`r1 rewards`: list the registered rewards, score a JSONL file of completions.

    r1 rewards list
    r1 rewards score IN.jsonl --rewards accuracy,format --output OUT.jsonl [--workers 2]

Input rows (JSON objects, one per line): ``completion`` (required: a string, or a list of
messages ``{"role": ..., "content": ...}`` whose last one is scored); ``answer`` (the gold:
a string or number); ``prompt`` (a string or a list of messages; a prompt ending in an opened
``<think>`` counts for the format rewards); ``verification`` (how `accuracy` checks the row: a
JSON object or its text, e.g. ``{"kind": "python_tests", "test": ..., "entry_point": ...}``;
absent for math); ``completion_ids`` (token ids: lengths in tokens, for every row or none).
Every other field is kept and also passed to the rewards as a column (as TRL passes dataset
columns). Each output row is the input row plus
``rewards: {name: value}``. The input is streamed in batches (never loaded whole); a malformed
row stops the run with the file name and line number. Also runnable as
``python -m rewards.cli``.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from rewards import _pool
from rewards.base import parse_verification
from rewards.registry import UnknownRewardError, available, get

app = typer.Typer(help="Reward functions: list them, score completions.", no_args_is_help=True, add_completion=False)
_NOT_COLUMNS = {"prompt", "completion", "rewards", "prompts", "completions"}


class RowError(ValueError):
    """A malformed input row; the message starts with ``file:line:``."""


@app.command("list")
def list_rewards() -> None:
    """Print every registered reward: name, parameters, semantics."""
    table = Table(title="Rewards (rewards/registry.py)")
    table.add_column("name", style="bold")
    table.add_column("parameters")
    table.add_column("semantics")
    for name, params, semantics in available():
        table.add_row(name, escape(params) or "-", escape(semantics))
    Console().print(table)


def parse_params(items: list[str], names: list[str]) -> dict[str, dict[str, Any]]:
    """``["repetition.ngram=4"]`` -> ``{"repetition": {"ngram": 4}}`` (values are JSON, else strings).

    >>> parse_params(["repetition.ngram=4", "language.language=zh"], ["repetition", "language"])
    {'repetition': {'ngram': 4}, 'language': {'language': 'zh'}}
    >>> parse_params(["rewards.repetition:Repetition.ngram=2"], ["rewards.repetition:Repetition"])
    {'rewards.repetition:Repetition': {'ngram': 2}}
    """
    params: dict[str, dict[str, Any]] = {name: {} for name in names}
    for item in items:
        key, sep, raw = item.partition("=")
        name, dot, field = key.rpartition(".")  # the last dot: NAME may be a dotted module:attr
        if not sep or not dot or name not in params:
            raise typer.BadParameter(f"{item!r}: expected NAME.KEY=VALUE with NAME one of {', '.join(names)}")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        params[name][field] = value
    return {name: p for name, p in params.items() if p}


def _messages_problem(field: str, value: list) -> str | None:
    for k, message in enumerate(value):
        if not isinstance(message, dict) or not isinstance(message.get("content", ""), (str, list, type(None))):
            return (
                f'\'{field}\' is a list, so it must be a list of messages {{"role": ..., "content": ...}}; '
                f"item {k} is {json.dumps(message)[:80]}"
            )
    return None


def row_problem(row: dict[str, Any]) -> str | None:
    """What is wrong with an input row's known fields (None if nothing): the field, what it
    must be, and what it is.

    >>> print(row_problem({"completion": ["a", "b"]}))
    'completion' is a list, so it must be a list of messages {"role": ..., "content": ...}; item 0 is "a"
    >>> print(row_problem({"completion": "x", "answer": {"value": 4}}))
    'answer' (the gold) must be a string or a number, got dict
    """
    completion = row.get("completion")
    if isinstance(completion, list):
        problem = _messages_problem("completion", completion)
        if problem:
            return problem
    elif not isinstance(completion, str):
        return (
            "'completion' (a string or a list of messages) is missing"
            if completion is None
            else (f"'completion' must be a string or a list of messages, got {type(completion).__name__}")
        )
    prompt = row.get("prompt")
    if isinstance(prompt, list):
        problem = _messages_problem("prompt", prompt)
        if problem:
            return problem
    elif prompt is not None and not isinstance(prompt, str):
        return f"'prompt' must be a string or a list of messages, got {type(prompt).__name__}"
    answer = row.get("answer")
    if answer is not None and (isinstance(answer, bool) or not isinstance(answer, (str, int, float))):
        return f"'answer' (the gold) must be a string or a number, got {type(answer).__name__}"
    try:
        parse_verification(row.get("verification"))
    except ValueError as exc:
        return f"'verification': {exc}"
    ids = row.get("completion_ids")
    if ids is not None and not (isinstance(ids, list) and all(isinstance(t, int) for t in ids)):
        return "'completion_ids' must be a list of token ids (integers)"
    return None


def read_batches(path: Path, batch_size: int) -> Iterator[list[tuple[int, dict[str, Any]]]]:
    """Yield lists of ``(line_number, row)``; blank lines are skipped.

    Raises:
        RowError: for a line that is not a JSON object, or whose known fields have the wrong
            type (`row_problem`).
    """
    batch: list[tuple[int, dict[str, Any]]] = []
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise RowError(f"{path}:{lineno}: not valid JSON ({exc.msg} at column {exc.colno})") from None
            if not isinstance(row, dict):
                raise RowError(f"{path}:{lineno}: a row must be a JSON object, got {type(row).__name__}")
            problem = row_problem(row)
            if problem:
                raise RowError(f"{path}:{lineno}: {problem}")
            batch.append((lineno, row))
            if len(batch) >= batch_size:
                yield batch
                batch = []
    if batch:
        yield batch


def score_rows(rows: list[dict[str, Any]], fns: dict[str, Callable]) -> list[dict[str, Any]]:
    """Score `rows` with each reward and return them with ``rewards`` added."""
    keys = sorted({k for row in rows for k in row} - _NOT_COLUMNS)
    columns = {k: [row.get(k) for row in rows] for k in keys}
    prompts = [row.get("prompt") for row in rows]
    completions = [row["completion"] for row in rows]
    values = {name: fn(prompts, completions, **columns) for name, fn in fns.items()}
    return [
        {**row, "rewards": {**(row.get("rewards") or {}), **{name: values[name][i] for name in fns}}}
        for i, row in enumerate(rows)
    ]


@app.command("score")
def score(
    input: Path = typer.Argument(
        ...,
        exists=True,
        dir_okay=False,
        help=(
            "JSONL file, one row per completion: 'completion' (a string or a list of messages; required), "
            "'answer' (the gold), optional 'prompt', 'verification' (code tests: {\"kind\": \"python_tests\", "
            '"test": ..., "entry_point": ...}; absent for math) and \'completion_ids\'; other fields are '
            "passed to the rewards as columns. A malformed row stops the run naming its line."
        ),
    ),
    output: Path = typer.Option(..., "--output", "-o", help="JSONL file to write (rows + 'rewards')."),
    rewards: str = typer.Option(
        "accuracy,format", "--rewards", "-r", help="Comma-separated reward names (or module:attr)."
    ),
    workers: int | None = typer.Option(
        None, "--workers", "-w", min=1, help="Worker processes for checks (default: the CPU count)."
    ),
    batch_size: int = typer.Option(256, "--batch-size", min=1, help="Rows scored per batch."),
    param: list[str] = typer.Option(
        [], "--param", "-p", help="Reward parameter NAME.KEY=VALUE (VALUE as JSON); repeatable."
    ),
) -> None:
    """Score every row of INPUT with the chosen rewards and write OUTPUT (row format: INPUT below; docs/rewards.md)."""
    names = [n.strip() for n in rewards.split(",") if n.strip()]
    params = parse_params(param, names)
    try:
        fns = {name: get(name, **params.get(name, {})) for name in names}
    except (UnknownRewardError, TypeError, ValueError) as exc:
        raise typer.BadParameter(str(exc), param_hint="--rewards/--param") from None
    if workers:
        _pool.configure(workers=workers)

    err = Console(stderr=True)
    started, n_rows = time.monotonic(), 0
    sums = {name: 0.0 for name in names}
    counts = {name: 0 for name in names}
    output.parent.mkdir(parents=True, exist_ok=True)
    # Rows stream into OUTPUT.partial (flushed per batch) and it becomes OUTPUT only when every
    # row is scored: a run stopped by a bad row or Ctrl-C leaves no half output under the name.
    partial = output.with_name(output.name + ".partial")
    try:
        # backslashreplace: a lone surrogate becomes the JSON escape \\udXXX, which readers parse back.
        with partial.open("w", encoding="utf-8", errors="backslashreplace") as out:
            for batch in read_batches(input, batch_size):
                try:
                    scored = score_rows([row for _, row in batch], fns)
                except (TypeError, ValueError) as exc:
                    raise RowError(f"{input}:{batch[0][0]}-{batch[-1][0]}: {exc}") from None
                for row in scored:
                    out.write(json.dumps(row, ensure_ascii=False) + "\n")
                    for name in names:
                        value = row["rewards"][name]
                        if value is not None:
                            sums[name] += value
                            counts[name] += 1
                out.flush()
                n_rows += len(batch)
        partial.replace(output)
    except RowError as exc:
        partial.unlink(missing_ok=True)
        err.print(f"[red]error:[/red] {exc}", highlight=False)
        err.print(f"nothing written to {output}", highlight=False)
        raise typer.Exit(code=2) from None
    except BaseException:
        partial.unlink(missing_ok=True)
        raise

    table = Table(title=f"{n_rows} rows scored in {time.monotonic() - started:.1f} s -> {output}")
    for column in ("reward", "mean", "None", "timeouts", "errors"):
        table.add_column(column)
    for name, fn in fns.items():
        stats = getattr(fn, "stats", None)
        mean = f"{sums[name] / counts[name]:.4f}" if counts[name] else "-"
        if stats is None:
            table.add_row(name, mean, "-", "-", "-")
        else:
            table.add_row(name, mean, str(stats.none_count), str(stats.timeout_count), str(stats.error_count))
    err.print(table)


if __name__ == "__main__":
    app(prog_name=f"{Path(sys.executable).name} -m rewards.cli")

"""The ``r1`` command line: run the recipe, one stage, or look at what it produced.

``r1 run configs/pipeline/r1.yaml`` runs the pipeline; ``r1 <kind> FILE`` runs one stage
config; ``r1 validate`` checks configs; ``r1 models|data|rewards`` are the tool groups.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.markup import escape

import stages
from data.cli import app as data_app
from pipeline import models
from pipeline.config import ConfigError, read_yaml
from pipeline.runner import load_pipeline, parse_stage_config, run_pipeline, single_step_pipeline
from rewards.cli import app as rewards_app

console = Console()
app = typer.Typer(help=__doc__, no_args_is_help=True, add_completion=False,
                  pretty_exceptions_enable=False)
app.add_typer(models.app, name="models", help="Prepare and list models (aliases, local, hub).")
app.add_typer(data_app, name="data", help="Preview prompt sources.")
app.add_typer(rewards_app, name="rewards", help="List reward functions; score JSONL files with them.")

SetOpt = typer.Option(None, "--set", help="Override a config value: KEY=VALUE (repeatable; STEP.KEY=VALUE for pipelines).")


def _fail(msg: str) -> None:
    console.print(f"[red]error:[/] {escape(msg)}")
    raise typer.Exit(2)


@app.command()
def run(config: Path = typer.Argument(..., help="Pipeline YAML, e.g. configs/pipeline/r1.yaml."),
        run_name: Optional[str] = typer.Option(None, "--run", help="Run folder name (default: the file's `run`)."),
        only: Optional[list[str]] = typer.Option(None, "--only", help="Run only this step (repeatable)."),
        from_step: Optional[str] = typer.Option(None, "--from", help="Run this step and all after it."),
        force: bool = typer.Option(False, "--force", help="Rerun steps even when their manifest is up to date."),
        overrides: Optional[list[str]] = SetOpt) -> None:
    """Run a pipeline: each step in order, skipping those already done with the same config and inputs."""
    try:
        pipeline = load_pipeline(config, overrides)
        run_pipeline(pipeline, run=run_name, only=only, from_step=from_step, force=force, isolate=True)
    except ConfigError as err:
        _fail(str(err))


def _stage_command(kind: str):
    def command(config: Path = typer.Argument(..., help=f"A `kind: {kind}` config, e.g. configs/{kind}/..."),
                run_name: str = typer.Option("single", "--run", help="Run folder; inputs may name its finished steps."),
                step: Optional[str] = typer.Option(None, "--step", help=f"Step folder name (default: {kind})."),
                force: bool = typer.Option(False, "--force", help="Rerun even if up to date."),
                overrides: Optional[list[str]] = SetOpt) -> None:
        try:
            pipeline = single_step_pipeline(config, overrides, run_name, step)
            if pipeline.steps[0].config.kind != kind:
                _fail(f"{config} is a `kind: {pipeline.steps[0].config.kind}` config; use `r1 {pipeline.steps[0].config.kind}`")
            run_pipeline(pipeline, force=force, isolate=True)
        except ConfigError as err:
            _fail(str(err))

    command.__doc__ = (stages.get(kind).__doc__ or kind).strip().splitlines()[0]
    return command


for _kind in stages.kinds():
    app.command(name=_kind)(_stage_command(_kind))


@app.command()
def validate(files: list[Path] = typer.Argument(..., help="Pipeline or stage YAML files.")) -> None:
    """Check configs: unknown keys, wrong types, unknown stage kinds, step order. Exit 2 on error."""
    bad = 0
    for file in files:
        try:
            data = read_yaml(file)
            if "kind" not in data:  # a stage config names its kind; anything else is a pipeline
                p = load_pipeline(file)
                console.print(f"[green]ok[/] {file}: pipeline with {len(p.steps)} steps")
            else:
                c = parse_stage_config(data, str(file))
                console.print(f"[green]ok[/] {file}: {c.kind} config")
        except ConfigError as err:
            bad += 1
            console.print(f"[red]invalid[/] {escape(str(err))}")
    if bad:
        raise typer.Exit(2)


@app.command()
def inspect(path: str = typer.Argument(..., help="A dataset folder/file, or a step name of a run."),
            run_name: Optional[str] = typer.Option(None, "--run", help="Run that holds the step."),
            config: Optional[Path] = typer.Option(None, "--config", help="Pipeline file (its `run` is the default run)."),
            sample: int = typer.Option(3, "--sample", help="Rows to print."),
            seed: int = typer.Option(0, "--seed")) -> None:
    """Summarise an SFT dataset: size, columns, rows per domain/source, rewards, samples."""
    from pipeline import inspect as inspect_mod

    try:
        inspect_mod.inspect(path, run_name=run_name, config=config, sample=sample, seed=seed)
    except (ConfigError, FileNotFoundError) as err:
        _fail(str(err))


def main() -> None:
    """Entry point of the ``r1`` script."""
    try:
        app()
    except KeyboardInterrupt:
        console.print("[yellow]interrupted; rerun the same command to resume[/]")
        sys.exit(130)


if __name__ == "__main__":
    main()

"""The ``r1`` command line: run the recipe, one stage, or look at what it produced.

``r1 run configs/pipeline/r1.yaml`` runs the pipeline (and writes its report); ``r1 <kind> FILE``
runs one stage config; ``r1 eval`` also evaluates any model on any set and ``r1 eval compare``
pairs two results; ``r1 report RUN`` writes a run's report; ``r1 validate`` checks configs;
``r1 models|data|rewards`` are the tool groups.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from typer.core import TyperGroup

import stages
from data.cli import app as data_app
from pipeline import distributed, models
from pipeline.config import ConfigError, read_yaml
from pipeline import store
from pipeline.runner import (Pipeline, PipelineConfig, Step, StepSpec, load_pipeline, parse_stage_config,
                             run_pipeline, single_step_pipeline)
from rewards.cli import app as rewards_app

console = Console()
app = typer.Typer(help=__doc__, no_args_is_help=True, add_completion=False,
                  pretty_exceptions_enable=False)
app.add_typer(models.app, name="models", help="Prepare and list models (aliases, local, hub).")
app.add_typer(data_app, name="data", help="Preview prompt sources.")
app.add_typer(rewards_app, name="rewards", help="List reward functions; score JSONL files with them.")

SetOpt = typer.Option(None, "--set", help="Override a config value: KEY=VALUE (repeatable; STEP.KEY=VALUE for pipelines).")
KeepOpt = typer.Option(False, "--keep-checkpoints",
                       help="Keep a finished training step's checkpoints/ (resume state, ~1.6 GB each for 135M); "
                            "by default only unfinished steps keep them.")


def _fail(msg: str) -> None:
    if distributed.is_main():  # every rank of a launch fails alike; say it once
        console.print(f"[red]error:[/] {escape(msg)}")
    raise typer.Exit(2)


@app.command()
def run(config: Path = typer.Argument(..., help="Pipeline YAML, e.g. configs/pipeline/r1.yaml."),
        run_name: Optional[str] = typer.Option(None, "--run", help="Run folder name (default: the file's `run`)."),
        only: Optional[list[str]] = typer.Option(None, "--only", help="Run only this step (repeatable)."),
        from_step: Optional[str] = typer.Option(None, "--from", help="Run this step and all after it."),
        force: bool = typer.Option(False, "--force", help="Rerun steps even when their manifest is up to date (a step's unfinished work of the same config and inputs still resumes; delete runs/RUN/.partial/STEP to start it over)."),
        keep_checkpoints: bool = KeepOpt,
        overrides: Optional[list[str]] = SetOpt) -> None:
    """Run a pipeline: each step in order, skipping those already done with the same config and inputs."""
    try:
        pipeline = load_pipeline(config, overrides)
        for warning in pipeline.warnings:
            console.print(f"[yellow]warning:[/] {escape(warning)}")
        try:
            run_pipeline(pipeline, run=run_name, only=only, from_step=from_step, force=force, isolate=True,
                         keep_checkpoints=keep_checkpoints)
        finally:  # also after a failed step: the report shows what finished and what did not
            _write_report(store.runs_root() / (run_name or pipeline.config.run), pipeline)
    except ConfigError as err:
        _fail(str(err))


def _plan(pipeline: Pipeline) -> tuple[list[str], dict]:
    """Step order and (kind, inputs) of a pipeline, for the report's steps not run yet."""
    return [s.name for s in pipeline.steps], {s.name: (s.config.kind, s.config.inputs()) for s in pipeline.steps}


def _write_report(run_dir: Path, pipeline: Pipeline | None = None) -> None:
    """Write the run report; a report error is printed, never hides the run's own outcome.

    Under a multi-process launch only rank 0 writes it (the others would race on the files).
    """
    if not run_dir.is_dir() or not distributed.is_main():
        return
    try:
        from pipeline.report import write_report

        md, page = write_report(run_dir, *(_plan(pipeline) if pipeline else (None, None)))
        console.print(f"report: {escape(str(page))} (and {escape(md.name)})")
    except Exception as err:  # noqa: BLE001 - the steps' results stand; say how to retry
        console.print(f"[yellow]report not written ({escape(type(err).__name__)}: {escape(str(err))}); "
                      f"retry with: r1 report {escape(str(run_dir))}[/]")


def _stage_command(kind: str):
    def command(config: Path = typer.Argument(..., help=f"A `kind: {kind}` config, e.g. configs/{kind}/..."),
                run_name: str = typer.Option("single", "--run", help="Run folder; inputs may name its finished steps."),
                step: Optional[str] = typer.Option(None, "--step", help=f"Step folder name (default: {kind})."),
                force: bool = typer.Option(False, "--force", help="Rerun even if up to date (unfinished work of the same config and inputs still resumes; delete runs/RUN/.partial/STEP to start over)."),
                keep_checkpoints: bool = KeepOpt,
                overrides: Optional[list[str]] = SetOpt) -> None:
        try:
            pipeline = single_step_pipeline(config, overrides, run_name, step)
            if pipeline.steps[0].config.kind != kind:
                _fail(f"{config} is a `kind: {pipeline.steps[0].config.kind}` config; use `r1 {pipeline.steps[0].config.kind}`")
            run_pipeline(pipeline, force=force, isolate=True, keep_checkpoints=keep_checkpoints)
        except ConfigError as err:
            _fail(str(err))

    command.__doc__ = (stages.get(kind).__doc__ or kind).strip().splitlines()[0]
    return command


for _kind in stages.kinds():
    if _kind != "eval":  # `r1 eval` is a group (below): the stage command plus `compare`
        app.command(name=_kind)(_stage_command(_kind))


class _DefaultRunGroup(TyperGroup):
    """A group whose first argument, when it is not a subcommand, goes to ``run``: so
    ``r1 eval CONFIG.yaml`` and ``r1 eval --model M --data D`` keep working next to
    ``r1 eval compare A B`` (and ``r1 eval --help`` shows the stage command's options)."""

    def parse_args(self, ctx, args):
        if not args or args[0] not in self.commands:
            args = ["run", *args]
        return super().parse_args(ctx, args)


eval_app = typer.Typer(cls=_DefaultRunGroup, add_completion=False, pretty_exceptions_enable=False,
                       help=(stages.get("eval").__doc__ or "eval").strip().splitlines()[0])
app.add_typer(eval_app, name="eval")


@eval_app.command("run")
def eval_run(
        config: Optional[Path] = typer.Argument(None, help="A `kind: eval` config (optional with --model and --data)."),
        model: Optional[list[str]] = typer.Option(None, "--model", help="Model to evaluate: step name of --run, alias, folder or hub id (repeatable; replaces the config's models)."),
        data: Optional[list[str]] = typer.Option(None, "--data", help="Eval set: reasoning_gym:<task> | humaneval | FILE.jsonl/.parquet | (hub:)NAME[:SUBSET] | '{source: ..., ...}' (repeatable; replaces the config's prompts)."),
        protocol: Optional[str] = typer.Option(None, "--protocol", help="`r1`: temperature 0.6, top-p 0.95, 32768 tokens, k per benchmark (R1 report); `config`: the config's sampling."),
        k: Optional[int] = typer.Option(None, "--k", help="Samples per question (sampling.num_samples)."),
        seed: Optional[int] = typer.Option(None, "--seed", help="Sampling seed (per-question seeds derive from it)."),
        run_name: str = typer.Option("single", "--run", help="Run folder; models may name its finished steps; its training prompts are checked for overlap."),
        step: Optional[str] = typer.Option(None, "--step", help="Step folder name (default: eval, or eval-<hash> for --model/--data evals)."),
        force: bool = typer.Option(False, "--force", help="Rerun even if up to date (unfinished work of the same config and inputs still resumes; delete runs/RUN/.partial/STEP to start over)."),
        overrides: Optional[list[str]] = SetOpt) -> None:
    try:
        if config is None and not (model and data):
            _fail("give a `kind: eval` config file, or --model and --data (e.g. r1 eval --model tiny-random-llama "
                  "--data reasoning_gym:chain_sum)")
        from pipeline.config import apply_overrides, deep_merge
        from data.spec import source_from_spec

        raw = read_yaml(config) if config else {"kind": "eval"}
        cli: dict = {}
        if model:
            cli["models"] = list(model)
        if data:
            cli["prompts"] = [source_from_spec(d, split="test") for d in data]
        if protocol:
            cli["protocol"] = protocol
        if k:
            cli["sampling"] = {"num_samples": k}
        if seed is not None:
            cli["seed"] = seed
        raw = apply_overrides(deep_merge(raw, cli), overrides)
        stage_config = parse_stage_config(raw, str(config or "r1 eval"))
        if stage_config.kind != "eval":
            _fail(f"{config} is a `kind: {stage_config.kind}` config; use `r1 {stage_config.kind}`")
        name = step or ("eval" if not (model or data) else f"eval-{store.canonical_hash(raw)[:8]}")
        pipeline = Pipeline(PipelineConfig(name=name, run=run_name, steps=[StepSpec(name=name, config=raw)]),
                            [Step(name, stage_config, raw)], str(config or "r1 eval"))
        run_pipeline(pipeline, force=force, isolate=True)
        console.print(f"results: {escape(str(store.runs_root() / run_name / name))}/results.json, samples.parquet")
    except ValueError as err:  # ConfigError, or a --data spec that is not valid YAML
        _fail(str(err))


eval_run.__doc__ = (stages.get("eval").__doc__ or "eval").strip().split("\n\n")[0] + (
    "\n\nAlso: `r1 eval compare A B` pairs two results question by question (see `r1 eval compare --help`).")


@eval_app.command("compare")
def eval_compare(
        a: str = typer.Argument(..., help="Eval step folder / samples.parquet / eval step name of --run (add #MODEL to pick one), or a model evaluated in --run."),
        b: str = typer.Argument(..., help="The same for the second model."),
        run_name: str = typer.Option("single", "--run", help="Run whose eval steps A and B may name."),
        as_json: bool = typer.Option(False, "--json", help="Print the comparison as JSON."),
) -> None:
    """Compare two eval results question by question: wins, losses, ties and an exact sign test."""
    import json

    from stages.common.eval_results import compare, find_results, protocol_differences

    run_dir = store.runs_root() / run_name
    if not run_dir.is_dir() and not (Path(a.partition("#")[0]).exists() and Path(b.partition("#")[0]).exists()):
        runs = sorted(p.name for p in store.runs_root().iterdir() if p.is_dir()) if store.runs_root().is_dir() else []
        _fail(f"no run {run_name!r} under {store.runs_root()} (runs: {', '.join(runs) or 'none'}); give --run")
    try:
        ra, pa, ma, wa = find_results(a, run_dir)
        rb, pb, mb, wb = find_results(b, run_dir)
    except (FileNotFoundError, KeyError, ValueError) as err:  # ValueError: an unreadable or non-eval file
        _fail(str(err.args[0] if isinstance(err, KeyError) else err))
    result = compare(ra, rb)
    differences = protocol_differences(pa, pb)
    if as_json:
        print(json.dumps({"a": {"model": ma, "results": wa}, "b": {"model": mb, "results": wb},
                          "protocol_differences": differences, **result}, indent=2))
        return
    console.print(f"A = {escape(ma)} ({escape(wa)})\nB = {escape(mb)} ({escape(wb)})", soft_wrap=True)
    table = Table()
    for h in ("questions", "set", "A pass@1", "B pass@1", "A - B [95% CI]", "A wins", "B wins", "ties", "p (sign test)"):
        table.add_column(h, overflow="fold")  # a narrow terminal or a pipe wraps cells instead of cutting them
    for label, g in [("all", result["overall"]), *result["per_source"].items()]:
        ci = g["diff_ci"]
        table.add_row(str(g["questions"]), escape(label), f"{g['a']:.3f}", f"{g['b']:.3f}",
                      f"{g['diff']:+.3f} [{ci[0]:+.3f}, {ci[1]:+.3f}]", str(g["wins"]), str(g["losses"]),
                      str(g["ties"]), f"{g['p_value']:.3g}")
    console.print(table)
    console.print(f"Test: {result['test']}.")
    if result["only_a"] or result["only_b"]:
        console.print(f"[yellow]{result['only_a']} questions only in A, {result['only_b']} only in B: not compared[/]")
    for d in differences:
        console.print(f"[yellow]protocol differs: {escape(d)}[/]")


@app.command()
def report(run: Optional[str] = typer.Argument(None, help="Run name under $R1_HOME, or a run folder."),
           config: Optional[Path] = typer.Option(None, "--config", help="Pipeline file: its `run` (when RUN is not given) and step order.")) -> None:
    """Write the run report: report.md, a self-contained report.html and PNG figures in <run>/report/."""
    order, planned = None, None
    if config is not None:
        try:
            pipeline = load_pipeline(config)
            order, planned = _plan(pipeline)
            run = run or pipeline.config.run
        except ConfigError:  # e.g. a step's config file is missing: step names are enough here
            try:
                data = read_yaml(config)
            except ConfigError as err:
                _fail(str(err))
            order = [s.get("name") for s in data.get("steps") or [] if isinstance(s, dict) and s.get("name")]
            run = run or data.get("run")
    if not run:
        _fail("give a run name (or --config PIPELINE.yaml)")
    run_dir = store.runs_root() / run
    if not run_dir.is_dir() and Path(run).is_dir():  # a folder given by path
        run_dir = Path(run)
    if not run_dir.is_dir():
        _fail(f"no run folder {run_dir}")
    if (run_dir / store.MANIFEST).is_file():
        _fail(f"{run_dir} is a step folder; give its run: {run_dir.parent}")
    if not (run_dir / ".partial").is_dir() and not any((p / store.MANIFEST).is_file() for p in run_dir.iterdir()):
        _fail(f"{run_dir} holds no steps (no <step>/{store.MANIFEST}, no .partial/): not a run folder")
    from pipeline.report import write_report

    md, page = write_report(run_dir, order, planned)
    console.print(f"wrote {escape(str(md))}\nwrote {escape(str(page))}")


@app.command()
def validate(files: list[Path] = typer.Argument(..., help="Pipeline or stage YAML files.")) -> None:
    """Check configs: unknown keys, wrong types, unknown stage kinds, step order. Exit 2 on error."""
    bad = 0
    for file in files:
        try:
            data = read_yaml(file)
            if "distributed_type" in data or "compute_environment" in data:
                console.print(f"[dim]skipped {file}: an accelerate launch config, not an r1 config[/]")
                continue
            if "kind" not in data:  # a stage config names its kind; anything else is a pipeline
                p = load_pipeline(file)
                for warning in p.warnings:
                    console.print(f"[yellow]warning:[/] {escape(warning)}")
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
def inspect(path: str = typer.Argument(..., help="A dataset folder/file, a step name of a run, or a hub dataset name."),
            run_name: Optional[str] = typer.Option(None, "--run", help="Run that holds the step."),
            config: Optional[Path] = typer.Option(None, "--config", help="Pipeline file (its `run` is the default run)."),
            sample: int = typer.Option(3, "--sample", min=0, help="Rows to print, reasoning and answer apart."),
            seed: int = typer.Option(0, "--seed", help="Seed of the row sample (terminal and HTML browser)."),
            where: Optional[str] = typer.Option(None, "--where", help="Keep rows matching a pandas query, e.g. 'domain == \"code\"' or 'reward_accuracy < 1'."),
            html: Optional[Path] = typer.Option(None, "--html", help="Also write a self-contained HTML report here."),
            tokenizer: Optional[str] = typer.Option(None, "--tokenizer", help="Tokenizer (folder or hub name) for token lengths."),
            split: str = typer.Option("train", "--split", help="Split of a hub or save_to_disk dataset.")) -> None:
    """Summarise an SFT dataset: size, mix, filter funnel, lengths, quality, rewards, samples (--html: a report page)."""
    from pipeline import inspect as inspect_mod

    if html is not None and html.is_dir():  # refused before the work, not after it
        _fail(f"--html {html} is a folder; give a file name, e.g. {html / 'report.html'}")

    try:
        inspect_mod.inspect(path, run_name=run_name, config=config, sample=sample, seed=seed, where=where,
                            html_path=html, tokenizer=tokenizer, split=split)
    except (ConfigError, FileNotFoundError, ValueError) as err:
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

"""The ``r1`` command line: run the recipe, one stage, or look at what it produced.

``r1 run configs/pipeline/r1.yaml`` runs the pipeline (and writes its report); ``r1 <kind> FILE``
runs one stage config; ``r1 eval`` also evaluates any model on any set and ``r1 eval compare``
pairs two results; ``r1 report RUN`` writes a run's report; ``r1 validate`` checks configs;
``r1 doctor`` checks the machine; ``r1 models|data|rewards`` are the tool groups.

Why one file: these are the top-level `r1` commands (run, one stage, report, validate, inspect,
status, ls, doctor) and the process-level handling of interrupts and errors (`main`), thin
wrappers over the modules that do the work; the tool groups (`models`, `data`, `rewards`) and
each stage's own commands live with their code.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import NoReturn

import typer
from rich.console import Console
from rich.markup import escape
from typer.core import TyperArgument, TyperGroup, TyperOption

import stages
from data.cli import app as data_app
from pipeline import distributed, models, store
from pipeline.config import ConfigError, read_yaml
from pipeline.runner import (
    Pipeline,
    load_pipeline,
    one_step_pipeline,
    parse_stage_config,
    run_pipeline,
    select_steps,
    single_step_pipeline,
)
from pipeline.stage import Front
from rewards.cli import app as rewards_app

console = Console()


# Help pages: docstrings are reStructuredText (``code``), shown with single backticks
# (help_text); a flag shows no value type (_help_type).
def help_text(doc: str | None) -> str:
    """A docstring as terminal help: its reStructuredText literals (``x``) as `x` (typer's rich
    help prints the text verbatim, double backticks included), without its "Why one file:"
    paragraph (a note for developers, tests/test_architecture.py).

    >>> help_text("The ``r1`` command.\\n\\nWhy one file: a note for developers.\\n")
    'The `r1` command.'
    """
    text = "\n\n".join(p for p in (doc or "").split("\n\n") if not p.lstrip().startswith("Why one file:"))
    return re.sub(r"``(.+?)``", r"`\1`", text, flags=re.DOTALL)


def _help_type(display_type):
    """The type column of a help page: nothing for a flag (typer 0.29 shows `<bool>`, as if
    ``--force`` took a value), the element type for a repeatable option or a variadic argument
    (`<str>`, not `<list[str]>`: one value per occurrence)."""

    def shown(self, ctx):
        if getattr(self, "is_flag", False):
            return None
        text = display_type(self, ctx)
        if isinstance(text, str) and text.startswith("<list[") and "]>" in text:
            return "<" + text[len("<list[") :].replace("]>", ">", 1)
        return text

    return shown


# One place for every r1 help page (typer has no setting for either).
TyperOption.display_type_rich = _help_type(TyperOption.display_type_rich)  # type: ignore[method-assign]
TyperArgument.display_type_rich = _help_type(TyperArgument.display_type_rich)  # type: ignore[method-assign]

app = typer.Typer(help=help_text(__doc__), no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)
app.add_typer(models.app, name="models", help="Prepare and list models (aliases, local, hub).")
app.add_typer(data_app, name="data", help="Preview prompt sources.")
app.add_typer(rewards_app, name="rewards", help="List reward functions; score JSONL files with them.")

SetOpt = typer.Option(
    None, "--set", help="Override a config value: KEY=VALUE (repeatable; STEP.KEY=VALUE for pipelines)."
)
KeepOpt = typer.Option(
    False,
    "--keep-checkpoints",
    help="Keep a finished training step's checkpoints/ (resume state, ~1.6 GB each for 135M); "
    "by default only unfinished steps keep them.",
)


def _fail(msg: str) -> NoReturn:
    if distributed.is_main():  # every rank of a launch fails alike; say it once
        console.print(f"[red]error:[/] {escape(msg)}")
    raise typer.Exit(2)


@app.command()
def run(
    config: Path = typer.Argument(..., help="Pipeline YAML, e.g. configs/pipeline/r1.yaml."),
    run_name: str | None = typer.Option(None, "--run", help="Run folder name (default: the file's `run`)."),
    only: list[str] | None = typer.Option(None, "--only", help="Run only this step (repeatable)."),
    from_step: str | None = typer.Option(None, "--from", help="Run this step and all after it."),
    force: bool = typer.Option(
        False,
        "--force",
        help="Rerun steps even when their manifest is up to date (a step's unfinished work of the same config and "
        "inputs still resumes; delete runs/RUN/.partial/STEP to start it over).",
    ),
    keep_checkpoints: bool = KeepOpt,
    stall_timeout: float | None = typer.Option(
        None,
        "--stall-timeout",
        help="Seconds a step may go without any progress before it fails naming its phase "
        "(default: $R1_STALL_TIMEOUT, else 1800; 0: never).",
    ),
    overrides: list[str] | None = SetOpt,
) -> None:
    """Run a pipeline: each step in order, skipping those already done with the same config and inputs."""
    if stall_timeout is not None:
        import os

        os.environ["R1_STALL_TIMEOUT"] = str(stall_timeout)  # the step processes inherit it
    try:
        pipeline = load_pipeline(config, overrides)
        for warning in pipeline.warnings:
            console.print(f"[yellow]warning:[/] {escape(warning)}")
        select_steps(pipeline, only, from_step)  # a misspelt --only/--from: no run folder, no report
        run_dir = store.runs_root() / (run_name or pipeline.config.run)
        try:
            run_pipeline(
                pipeline,
                run=run_name,
                only=only,
                from_step=from_step,
                force=force,
                isolate=True,
                keep_checkpoints=keep_checkpoints,
            )
        except store.RunLockedError:
            raise  # another process runs this folder: its report is its own
        except BaseException:  # a failed or interrupted step: the report shows what finished and what did not
            _write_report(run_dir, pipeline)
            raise
        _write_report(run_dir, pipeline)
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
        console.print(
            f"[yellow]report not written ({escape(type(err).__name__)}: {escape(str(err))}); "
            f"retry with: r1 report {escape(str(run_dir))}[/]"
        )


def _stage_command(kind: str):
    def command(
        config: Path = typer.Argument(..., help=f"A `kind: {kind}` config, e.g. configs/{kind}/..."),
        run_name: str = typer.Option("single", "--run", help="Run folder; inputs may name its finished steps."),
        step: str | None = typer.Option(None, "--step", help=f"Step folder name (default: {kind})."),
        force: bool = typer.Option(
            False,
            "--force",
            help="Rerun even if up to date (unfinished work of the same config and inputs still resumes; "
            "delete runs/RUN/.partial/STEP to start over).",
        ),
        keep_checkpoints: bool = KeepOpt,
        overrides: list[str] | None = SetOpt,
    ) -> None:
        try:
            pipeline = single_step_pipeline(config, overrides, run_name, step)
            _check_kind(pipeline.steps[0].config.kind, kind, str(config))
            run_pipeline(pipeline, force=force, isolate=True, keep_checkpoints=keep_checkpoints)
        except ConfigError as err:
            _fail(str(err))

    command.__doc__ = (stages.get(kind).__doc__ or kind).strip().splitlines()[0]
    return command


def _check_kind(found: str, kind: str, source: str) -> None:
    if found != kind:
        _fail(f"{source} is a `kind: {found}` config; use `r1 {_command_name(found)}`")


def _command_name(kind: str) -> str:
    """`r1 reward-model` for kind `reward_model`: command names use hyphens (the kind's own
    name stays as a hidden alias)."""
    return kind.replace("_", "-")


def _run_config(
    raw: dict,
    source: str,
    kind: str,
    run: str,
    step: str | None = None,
    force: bool = False,
    keep_checkpoints: bool = False,
) -> None:
    """Run a stage config mapping as one step (``pipeline.stage.Front.run_config``)."""
    try:
        pipeline = one_step_pipeline(raw, source, run, step)
        _check_kind(pipeline.steps[0].config.kind, kind, source)
        run_pipeline(pipeline, force=force, isolate=True, keep_checkpoints=keep_checkpoints)
    except ConfigError as err:
        _fail(str(err))


_IMPLICIT_RUN = "r1.implicit_run"


class _DefaultRunGroup(TyperGroup):
    """A group whose first argument, when it is not a subcommand, goes to ``run``: so
    ``r1 eval CONFIG.yaml`` and ``r1 eval --model M --data D`` keep working next to
    ``r1 eval compare A B`` (and ``r1 eval --help`` shows the stage command's options, with the
    usage line the user typed: ``r1 eval [OPTIONS]``, not ``r1 eval run``)."""

    def parse_args(self, ctx, args):
        if not args or args[0] not in self.commands:
            args = ["run", *args]
            ctx.meta[_IMPLICIT_RUN] = True  # ctx.meta is shared with the subcommand's context
        return super().parse_args(ctx, args)

    def get_command(self, ctx, cmd_name):
        cmd = super().get_command(ctx, cmd_name)
        if cmd_name == "run" and cmd is not None and not getattr(cmd, "_r1_usage", False):
            explicit = cmd.format_usage

            def format_usage(ctx, formatter):
                if ctx.meta.get(_IMPLICIT_RUN) and ctx.parent is not None:
                    formatter.write_usage(ctx.parent.command_path, " ".join(cmd.collect_usage_pieces(ctx)))
                else:
                    explicit(ctx, formatter)

            cmd.format_usage, cmd._r1_usage = format_usage, True
        return cmd


FRONT = Front(run_config=_run_config, fail=_fail, set_option=SetOpt, keep_option=KeepOpt)

# `r1 <kind> FILE` for every stage kind; a stage with a `commands` hook gets a group instead,
# whose `run` command is the default (pipeline.stage).
# Command names use hyphens (`r1 reward-model`); a kind with an underscore keeps its own name
# as a hidden alias, so `r1 reward_model` (the name in configs) works too.
for _kind in stages.kinds():
    _module = stages.get(_kind)
    _names = [(_command_name(_kind), False)] + ([(_kind, True)] if _command_name(_kind) != _kind else [])
    if hasattr(_module, "commands"):
        _group = typer.Typer(
            cls=_DefaultRunGroup,
            add_completion=False,
            pretty_exceptions_enable=False,
            help=(_module.__doc__ or _kind).strip().splitlines()[0],
        )
        _module.commands(_group, FRONT)
        for _name, _hidden in _names:
            app.add_typer(_group, name=_name, hidden=_hidden)
    else:
        for _name, _hidden in _names:
            app.command(name=_name, hidden=_hidden)(_stage_command(_kind))


@app.command()
def report(
    run: str | None = typer.Argument(None, help="Run name under $R1_HOME, or a run folder."),
    config: Path | None = typer.Option(
        None, "--config", help="Pipeline file: its `run` (when RUN is not given) and step order."
    ),
) -> None:
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
            order = [s["name"] for s in data.get("steps") or [] if isinstance(s, dict) and s.get("name")]
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
    if not store.RunFolder(run_dir).holds_steps():
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
def inspect(
    path: str = typer.Argument(..., help="A dataset folder/file, a step name of a run, or a hub dataset name."),
    run_name: str | None = typer.Option(None, "--run", help="Run that holds the step."),
    config: Path | None = typer.Option(None, "--config", help="Pipeline file (its `run` is the default run)."),
    sample: int = typer.Option(3, "--sample", min=0, help="Rows to print, reasoning and answer apart."),
    seed: int = typer.Option(0, "--seed", help="Seed of the row sample (terminal and HTML browser)."),
    where: str | None = typer.Option(
        None, "--where", help="Keep rows matching a pandas query, e.g. 'domain == \"code\"' or 'reward_accuracy < 1'."
    ),
    html: Path | None = typer.Option(None, "--html", help="Also write a self-contained HTML report here."),
    tokenizer: str | None = typer.Option(None, "--tokenizer", help="Tokenizer (folder or hub name) for token lengths."),
    split: str = typer.Option("train", "--split", help="Split of a hub or save_to_disk dataset."),
) -> None:
    """Summarise an SFT dataset: size, mix, filter funnel, lengths, quality, rewards, samples (--html: a report page)."""  # noqa: E501 - one line: typer's help
    from pipeline import inspect as inspect_mod

    if html is not None and html.is_dir():  # refused before the work, not after it
        _fail(f"--html {html} is a folder; give a file name, e.g. {html / 'report.html'}")

    try:
        inspect_mod.inspect(
            path,
            run_name=run_name,
            config=config,
            sample=sample,
            seed=seed,
            where=where,
            html_path=html,
            tokenizer=tokenizer,
            split=split,
        )
    except (ConfigError, FileNotFoundError, ValueError) as err:
        _fail(str(err))


def _pick_run(run: str | None, config: Path | None):
    """``(run folder, plan or None)`` for ``r1 status``: RUN (a name or a folder), else the
    ``run`` of ``--config``, else the run changed last."""
    from pipeline.runner import plan_of

    plan = None
    if config is not None:
        try:
            pipeline = load_pipeline(config)
        except ConfigError as err:
            _fail(str(err))
        plan = plan_of(pipeline)
        run = run or pipeline.config.run
    if run is None:
        runs = [store.runs_root() / r for r in store.list_runs()]
        runs = [r for r in runs if store.RunFolder(r).holds_steps()]
        if not runs:
            _fail(f"no runs in {store.runs_root()} (R1_HOME)")
        return max(runs, key=lambda r: r.stat().st_mtime), plan
    run_dir = store.runs_root() / run
    if not run_dir.is_dir() and Path(run).is_dir():
        run_dir = Path(run)
    if not run_dir.is_dir():
        _fail(f"no run folder {run_dir}; runs: {', '.join(store.list_runs()) or 'none'}")
    return run_dir, plan


@app.command()
def status(
    run: str | None = typer.Argument(
        None, help="Run name under $R1_HOME, or a run folder (default: the run changed last)."
    ),
    config: Path | None = typer.Option(
        None, "--config", help="Pipeline file to compare with (default: the one the run last ran with)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
    watch: float | None = typer.Option(None, "--watch", min=0.5, help="Redraw every SECONDS until interrupted."),
) -> None:
    """Where a run stands: each step done / running / partial (how far) / pending / stale, wall time, key numbers."""
    import json
    import time

    from pipeline import status as status_mod

    run_dir, plan = _pick_run(run, config)
    if as_json:
        print(json.dumps(status_mod.run_status(run_dir, plan), indent=1, default=str))
        return
    if watch is None:
        console.print(status_mod.status_table(status_mod.run_status(run_dir, plan)))
        return
    from rich.live import Live

    with Live(status_mod.status_table(status_mod.run_status(run_dir, plan)), console=console) as live:
        while True:
            time.sleep(watch)
            live.update(status_mod.status_table(status_mod.run_status(run_dir, plan)))


@app.command(name="ls")
def list_runs(as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table.")) -> None:
    """List the runs under $R1_HOME: steps by status, running or idle, last change."""
    import json

    from pipeline import status as status_mod

    runs = status_mod.list_runs()
    if as_json:
        print(json.dumps(runs, indent=1, default=str))
    else:
        console.print(status_mod.runs_table(runs))


@app.command()
def doctor(
    require_gpu: bool = typer.Option(False, "--require-gpu", help="Fail unless torch can use the GPUs."),
    ranks: int | None = typer.Option(
        None,
        "--ranks",
        min=1,
        help="Processes per node of the launch, for the reward-pool size per rank (default: LOCAL_WORLD_SIZE or 1).",
    ),
) -> None:
    """Check this machine in seconds: versions, stack, CUDA/driver, device, dtype, vLLM, bwrap, reward workers."""
    from pipeline import doctor as doctor_checks

    raise typer.Exit(doctor_checks.main(require_gpu=require_gpu, ranks=ranks))


def main() -> None:
    """Entry point of the ``r1`` script. Exit codes (``docs/reliability.md``): 0 done; 1 a step
    failed; 2 a bad config or command line; 75 the run folder is in use by another process;
    124 a step stalled (no progress for the stall timeout); 130 interrupted by SIGINT (Ctrl-C);
    143 stopped by SIGTERM (a scheduler). Interrupted runs keep their partial work and resume
    when the same command runs again."""
    from pipeline import progress, runner

    runner.install_signal_handlers()
    try:
        app()  # click ends with SystemExit; it turns a KeyboardInterrupt into "Aborted!" and 1
    except SystemExit:
        signum = runner.stopped_by()
        if signum is not None:  # a signal ended it: say so, with the signal's exit code
            _interrupted(signum)
        raise
    except KeyboardInterrupt:
        _interrupted(runner.stopped_by() or 2)
    except (runner.StepFailed, store.RunLockedError, store.DiskFullError, progress.StallError) as err:
        if distributed.is_main():
            console.print(f"[red]error:[/] {escape(str(err))}")
        sys.exit(runner.exit_code(err))


def _interrupted(signum: int) -> None:
    import signal

    name = signal.Signals(signum).name
    console.print(f"[yellow]interrupted by {name}; partial work is kept: rerun the same command to resume[/]")
    sys.exit(128 + signum)


if __name__ == "__main__":
    main()

"""Pipelines: a YAML list of steps, each an instance of a stage kind, run in order.

``configs/pipeline/r1.yaml`` is the R1 recipe. A step is
``{name, config_file?, config?}``: the stage config file (which names its ``kind``) merged
with inline values. A field listed in a stage's ``input_fields`` may name an earlier step;
the runner resolves it to that step's output folder, records input hashes in the manifest
and skips a step whose manifest already matches its config and inputs.

Why one file: a step's life in the executor is one sequence: parse and resolve the pipeline,
decide what to skip (config and input hashes), run the step in its own process, pass signals on
and read back what the process wrote (`.result.json`, `.error.json`). The parent's and the
child's halves of that exchange (`_run_isolated`, `_child`, `_save_error`, `_read_error`, the
signal handlers) change together.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console

import stages
from pipeline import device, distributed, progress, store
from pipeline.config import ConfigError, StrictModel, apply_overrides, deep_merge, parse, read_yaml
from pipeline.stage import StageConfig, StepContext, StepResult, last_checkpoint

REPO = Path(__file__).resolve().parents[1]
console = Console()


class StepSpec(StrictModel):
    """One step of a pipeline file."""

    name: str
    config_file: str | None = None  # relative to the repo root or absolute
    config: dict[str, Any] = {}


class PipelineConfig(StrictModel):
    """A pipeline file (``configs/pipeline/*.yaml``)."""

    name: str
    description: str = ""
    run: str  # default run folder name under the artifact root
    seed: int = 0
    steps: list[StepSpec]


@dataclass
class Step:
    name: str
    config: StageConfig
    raw: dict


@dataclass
class Pipeline:
    config: PipelineConfig
    steps: list[Step]
    source: str = ""
    warnings: list[str] = field(default_factory=list)  # e.g. an input that is likely a typo
    single: bool = False  # one stage config run as a step (`r1 <kind> FILE`), not a pipeline file

    def step(self, name: str) -> Step:
        for s in self.steps:
            if s.name == name:
                return s
        raise ConfigError(f"no step {name!r}; steps: {', '.join(s.name for s in self.steps)}")


def _find_file(path: str) -> Path:
    p = Path(path)
    if p.is_absolute() or p.exists():
        return p
    return REPO / p


def parse_stage_config(data: dict, source: str) -> StageConfig:
    """Validate a stage config mapping (must contain ``kind``) into its typed config."""
    kind = data.get("kind")
    if kind is None:
        raise ConfigError(f"{source}: missing required key 'kind'; valid kinds: {', '.join(stages.kinds())}")
    try:
        module = stages.get(kind)
    except KeyError as err:
        raise ConfigError(f"{source}: key 'kind': {err.args[0]}") from None
    return parse(module.Config, data, source)


def load_pipeline(path: str | Path, overrides: list[str] | None = None) -> Pipeline:
    """Load and validate a pipeline file and every step config in it.

    ``overrides`` are ``STEP.key=value`` (or top-level ``key=value``) strings.

    Raises:
        ConfigError: unknown/mistyped keys (file and key named), duplicate step names, or an
            input that names a later step.
    """
    path = _find_file(str(path))
    data = read_yaml(path)
    step_overrides: dict[str, list[str]] = {}
    top: list[str] = []
    raw_steps = data.get("steps")
    names = [s.get("name") for s in raw_steps if isinstance(s, dict)] if isinstance(raw_steps, list) else []
    for item in overrides or []:
        head = item.split("=", 1)[0].split(".", 1)[0]
        if head in names and "." in item.split("=", 1)[0]:
            step_overrides.setdefault(head, []).append(item.split(".", 1)[1])
        else:
            top.append(item)
    data = apply_overrides(data, top)
    config = parse(PipelineConfig, data, str(path))
    steps: list[Step] = []
    seen: set[str] = set()
    warnings: list[str] = []
    for i, spec in enumerate(config.steps):
        if spec.name in seen:
            raise ConfigError(f"{path}: duplicate step name {spec.name!r} (steps.{i})")
        source = f"{path} (step {spec.name})"
        raw: dict = {}
        if spec.config_file:
            file = _find_file(spec.config_file)
            try:
                raw = read_yaml(file)
            except ConfigError as err:
                raise ConfigError(f"{path}: steps.{i} ({spec.name}): config_file: {err}") from None
            source = f"{file} (step {spec.name})"
        raw = deep_merge(raw, spec.config)
        raw = apply_overrides(raw, step_overrides.get(spec.name))
        stage_config = parse_stage_config(raw, source)
        all_names = {s.name for s in config.steps}
        for key, ref in stage_config.inputs().items():
            if ref in all_names and ref not in seen:
                raise ConfigError(f"{source}: input '{key}' names step {ref!r}, which does not run before it")
            if _looks_like_a_typo(ref, all_names):
                warnings.append(
                    f"{source}: input '{key}' = {ref!r} is not a step of this pipeline, an alias or a "
                    f"local path; it will be tried as a hub id (steps: {', '.join(sorted(all_names))})"
                )
        steps.append(Step(spec.name, stage_config, raw))
        seen.add(spec.name)
    return Pipeline(config, steps, str(path), warnings)


def _looks_like_a_typo(ref: str, step_names: set[str]) -> bool:
    """A reference that only a hub could resolve, and not shaped like a hub id (``owner/name``):
    most likely a misspelled step name (a legacy one-word hub name is possible, hence a warning)."""
    from pipeline import models

    return (
        ref not in step_names
        and ref not in models.ALIASES
        and not Path(ref).exists()
        and "/" not in ref
        and ":" not in ref
    )


def one_step_pipeline(raw: dict, source: str, run: str, step: str | None = None) -> Pipeline:
    """A one-step pipeline from a stage config mapping (must contain ``kind``); the step is
    named ``step``, default the kind.

    Raises:
        ConfigError: as :func:`parse_stage_config`.
    """
    stage_config = parse_stage_config(raw, source)
    name = step or f"{stage_config.kind}"
    pc = PipelineConfig(name=name, run=run, steps=[StepSpec(name=name, config=raw)])
    return Pipeline(pc, [Step(name, stage_config, raw)], source, single=True)


def single_step_pipeline(
    config_file: str | Path, overrides: list[str] | None, run: str, step: str | None = None
) -> Pipeline:
    """A one-step pipeline from a stage config file (what ``r1 sft FILE`` runs)."""
    raw = apply_overrides(read_yaml(_find_file(str(config_file))), overrides)
    return one_step_pipeline(raw, str(config_file), run, step)


class Resolver:
    """Turns references into paths. Order: a step of this run, a model alias, a local path,
    else a hub id / dataset name passed through unchanged (for users with network)."""

    def __init__(self, run_dir: Path, step_names: set[str]):
        self.run_dir = run_dir
        # Finished steps of the same run count too, so `r1 sft FILE --run R` can name them.
        self.step_names = set(step_names) | set(store.RunFolder(run_dir).finished())

    def _step_output(self, ref: str, what: str) -> Path:
        step = store.RunFolder(self.run_dir).step(ref)
        if step is None:
            raise RuntimeError(
                f"input {ref!r} is a step of this run that has not finished "
                f"(no {self.run_dir / ref}/manifest.json); run it first"
            )
        if not step.outputs:  # a manifest that lists no outputs: the conventional folder
            return step.folder / what
        path = step.output(what)
        if path is None:
            raise RuntimeError(
                f"input {ref!r} names a {step.kind} step, whose outputs are "
                f"{', '.join(step.outputs)}: no {what} to read"
            )
        return path

    def model(self, ref: str) -> str:
        if ref in self.step_names:
            return str(self._step_output(ref, "model"))
        from pipeline import models  # local: models imports transformers lazily too

        return models.resolve(ref)

    def dataset(self, ref: str) -> str:
        if ref in self.step_names:
            return str(self._step_output(ref, "dataset"))
        return str(Path(ref).resolve()) if Path(ref).exists() else ref

    def input_hash(self, ref: str) -> str:
        """Content hash of an input: an upstream manifest's output hash, a local file/folder's
        hash, or ``hub:<id>`` for names that only a hub knows."""
        if ref in self.step_names:
            manifest = store.read_manifest(self.run_dir / ref)
            return manifest["output_hash"] if manifest else "missing"
        from pipeline import models

        if ref in models.ALIASES:
            # Prepare first (a no-op once done): hashing "unprepared" on the first run and the
            # folder on the next would make every run redo the steps that read the alias.
            return store.hash_tree(models.resolve(ref))
        if Path(ref).exists():
            return store.hash_tree(ref)
        return f"hub:{ref}"


@dataclass
class StepRecord:
    name: str
    kind: str
    status: str
    wall_time_s: float = 0.0
    inputs: dict = field(default_factory=dict)
    result: dict = field(default_factory=dict)


def step_config_hash(config: StageConfig, seed: int) -> str:
    """The ``config_hash`` of a step's manifest: its config's identity (runtime fields such as
    ``report_to`` left out) and the pipeline seed, which reaches the stage as ``ctx.seed``."""
    return store.canonical_hash({"config": config.identity(), "pipeline_seed": seed})


def _input_block(step: Step, resolver: Resolver) -> dict:
    return {key: {"ref": ref, "hash": resolver.input_hash(ref)} for key, ref in step.config.inputs().items()}


def run_pipeline(
    pipeline: Pipeline,
    run: str | None = None,
    only: list[str] | None = None,
    from_step: str | None = None,
    force: bool = False,
    isolate: bool = False,
    keep_checkpoints: bool = False,
) -> list[StepRecord]:
    """Run (or skip, when up to date) the selected steps in order; write ``summary.md``.

    A step that finishes drops its ``checkpoints/`` folder (resume state: weights, optimizer
    and RNG, about 1.6 GB per checkpoint of a 135M model; only an unfinished step needs it)
    unless ``keep_checkpoints``.

    ``isolate=True`` (what the CLI uses) runs each step in a fresh child process: vLLM's CPU
    backend pins the OpenMP threads of the process that hosts it, and a step's engine and
    model memory are only reliably returned when its process ends.

    Under a multi-process launch (``accelerate launch``, ``torchrun``; see
    ``pipeline.distributed``) every rank calls this: steps run in the launched processes
    (``isolate`` is ignored), only rank 0 writes the store, and only stage kinds that declare
    ``DISTRIBUTED = True`` may be selected.

    Raises:
        ConfigError: an unknown step name in ``only``/``from_step``, or a selected step of a
            single-process kind under a multi-process launch.
        Exception: whatever a stage raised; its partial folder is kept for resume.
    """
    run = run or pipeline.config.run
    run_dir = store.runs_root() / run
    names = [s.name for s in pipeline.steps]
    selected = select_steps(pipeline, only, from_step)
    device.check()  # a run meant for GPUs fails here without CUDA, not hours later on CPUs
    if distributed.launched():
        _check_distributed_kinds(pipeline, selected)
        isolate = False  # the launcher already made one process per rank (pipeline.distributed)
    run_dir.mkdir(parents=True, exist_ok=True)  # after the refusals: a refused run leaves no folder
    # One process runs a run folder at a time (rank 0 of a launch holds it for all ranks).
    lock = store.RunLock(run_dir) if distributed.is_main() else None
    if lock is not None:
        lock.acquire()  # RunLockedError names the holder
        if lock.took_over:
            console.print(
                f"[yellow]took over the lock of {run_dir}: its holder is no longer running "
                f"({store.describe_holder(lock.took_over)})[/]"
            )
        store.empty_trash(run_dir)
        _record_plan(pipeline, run_dir)
    try:
        resolver = Resolver(run_dir, set(names))
        records: list[StepRecord] = []
        for step in pipeline.steps:
            if step.name not in selected:
                manifest = store.read_manifest(run_dir / step.name)
                if manifest:
                    records.append(_record_from_manifest(step, manifest, "done earlier"))
                continue
            records.append(
                run_step(step, run, run_dir, resolver, pipeline.config.seed, force, isolate, keep_checkpoints)
            )
        if distributed.is_main():
            from pipeline.summary import write_summary

            write_summary(run_dir, records)
    finally:
        if lock is not None:
            lock.release()
    return records


def select_steps(pipeline: Pipeline, only: list[str] | None = None, from_step: str | None = None) -> list[str]:
    """The names of the steps ``--only`` / ``--from`` select, in pipeline order (all by default).

    Raises:
        ConfigError: a name that is no step of the pipeline (lists the steps).
    """
    names = [s.name for s in pipeline.steps]
    for name in (only or []) + ([from_step] if from_step else []):
        if name not in names:
            raise ConfigError(f"no step {name!r} in {pipeline.source}; steps: {', '.join(names)}")
    if only:
        return [n for n in names if n in only]
    return names[names.index(from_step) :] if from_step else names


PLAN = ".pipeline.json"  # the pipeline a run folder last ran with (r1 status)


def _record_plan(pipeline: Pipeline, run_dir: Path) -> None:
    """Save the pipeline this run executes (file, step order, kinds, inputs and config hashes
    with the command line's overrides applied) as ``<run>/.pipeline.json``: ``r1 status`` shows
    the steps not run yet and marks finished steps whose config changed since they ran."""
    plan = {**plan_of(pipeline), "written": time.time()}
    old = read_plan(run_dir)
    if pipeline.single and old:  # one more step in a run folder: keep the pipeline's plan, add or update the step
        new = plan["steps"][0]
        steps = [new if s.get("name") == new["name"] else s for s in old.get("steps", [])]
        plan = {**old, "steps": steps if new in steps else [*steps, new], "written": plan["written"]}
    store.atomic_write_text(run_dir / PLAN, json.dumps(plan, indent=1))


def read_plan(run_dir: Path) -> dict | None:
    """The ``.pipeline.json`` of a run folder (:func:`_record_plan`), or None."""
    try:
        plan = json.loads((Path(run_dir) / PLAN).read_text())
    except (OSError, ValueError):
        return None
    return plan if isinstance(plan, dict) else None


def plan_of(pipeline: Pipeline) -> dict:
    """The plan of a loaded pipeline (as :func:`_record_plan` saves it)."""
    return {
        "source": pipeline.source,
        "name": pipeline.config.name,
        "seed": pipeline.config.seed,
        "steps": [
            {
                "name": s.name,
                "kind": s.config.kind,
                "inputs": s.config.inputs(),
                "config_hash": step_config_hash(s.config, pipeline.config.seed),
                "max_steps": getattr(s.config, "max_steps", None),
            }
            for s in pipeline.steps
        ],
    }


def _check_distributed_kinds(pipeline: Pipeline, selected: list[str]) -> None:
    """Refuse, before any work, selected steps whose stage cannot run on several processes.

    A stage opts in with a module-level ``DISTRIBUTED = True`` (every rank calls its ``run``;
    it writes shared files from the main process only). The others (generate, eval) would
    have every rank sample the same prompts and write the same files.
    """
    single = [
        f"{s.name} ({s.config.kind})"
        for s in pipeline.steps
        if s.name in selected and not getattr(stages.get(s.config.kind), "DISTRIBUTED", False)
    ]
    if single:
        able = sorted(k for k in stages.kinds() if getattr(stages.get(k), "DISTRIBUTED", False))
        raise ConfigError(
            f"{pipeline.source}: launched with {distributed.world_size()} processes (WORLD_SIZE), but step(s) "
            f"{', '.join(single)} run in one process; under `accelerate launch` select only steps of kinds "
            f"{', '.join(able)} (e.g. --only STEP) and run the others without the launcher"
        )


def _record_from_manifest(step: Step, manifest: dict, status: str) -> StepRecord:
    return StepRecord(
        step.name,
        step.config.kind,
        status,
        manifest.get("wall_time_s", 0.0),
        manifest.get("inputs", {}),
        manifest.get("result", {}),
    )


# ----------------------------------------------------------------------------- signals and step processes


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM (a scheduler's stop) arrived: stop like Ctrl-C in a terminal, keeping
    the partial work (``docs/reliability.md``). ``signum``: the signal."""

    def __init__(self, signum: int = signal.SIGINT):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class StepFailed(RuntimeError):
    """A step's process failed; its error was printed there (and saved as ``.error.json``)."""


#: Errors whose message says everything: printed without a traceback (a traceback is for bugs).
CLEAN_ERRORS = (ConfigError, store.DiskFullError, store.RunLockedError, progress.StallError, FileNotFoundError)
_stopping: dict[str, int] = {}


def exit_code(err: BaseException) -> int:
    """The exit code of ``r1`` for an error that ends it (``docs/reliability.md``): 130 for
    SIGINT / Ctrl-C, 143 for SIGTERM, 124 for a stalled step, 75 for a run folder in use, 1 else."""
    if isinstance(err, Interrupted):
        return 128 + err.signum
    if isinstance(err, KeyboardInterrupt):
        return 130
    if isinstance(err, store.RunLockedError):
        return 75  # EX_TEMPFAIL: try again later
    if isinstance(err, progress.StallError) or (isinstance(err, StepFailed) and "stalled" in str(err)):
        return progress.STALL_EXIT_CODE
    return 1


def stopped_by() -> int | None:
    """The signal (SIGINT, SIGTERM) that interrupted this process, if one did."""
    return _stopping.get("signum")


def install_signal_handlers(child: bool = False) -> None:
    """Make SIGINT and SIGTERM raise :class:`Interrupted` in the main thread, whatever this
    process inherited: a background job of a non-interactive shell starts with SIGINT ignored,
    and SIGTERM (SLURM, Kubernetes, ``kill``) would otherwise end the process on the spot.

    ``child=True`` (a step's process): only the first signal raises; later ones are ignored
    while the step unwinds (its parent forwards the signal it got, and a terminal's Ctrl-C
    reaches both). The parent raises at every signal, so a second Ctrl-C ends a slow stop.
    Main thread only (Python's rule for signal handlers); no-op elsewhere.
    """
    import threading

    if threading.current_thread() is not threading.main_thread():
        return

    def handler(signum, frame):
        if child and _stopping:
            return
        _stopping.setdefault("signum", signum)
        raise Interrupted(signum)

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, handler)


def _die_with_parent() -> None:
    """Ask Linux to SIGTERM this process when its parent dies (a killed `r1 run` must not
    leave a step training on in the background). No-op elsewhere."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _save_error(work_dir: Path, err: BaseException | str) -> bool:
    """``.error.json`` in the partial folder: the error's type and message (read by the parent
    process and by ``r1 status``). Returns whether it was written (a full disk may refuse it)."""
    record: dict[str, Any] = (
        {"type": "StallError", "message": err}
        if isinstance(err, str)
        else {
            "type": type(err).__name__,
            "message": str(err),
            "interrupted": isinstance(err, KeyboardInterrupt),
            "signum": getattr(err, "signum", None),
        }
    )
    record["time"] = time.time()
    try:
        store.atomic_write_text(work_dir / store.ERROR, json.dumps(record))
    except OSError:
        return False  # a full disk may refuse even this
    return True


def _watched_run(module, config: StageConfig, ctx: StepContext) -> StepResult:
    """``module.run`` under the stall watchdog (``pipeline.progress``)."""
    with ctx.progress.watch(progress.stall_timeout(), on_stall=lambda message: _save_error(ctx.work_dir, message)):
        return module.run(config, ctx)


def _child(
    kind: str, config_dict: dict, run: str, step: str, run_dir: str, step_names: list[str], seed: int, work_dir: str
) -> None:
    """Entry of an isolated step's process: rebuild config and context, run, save the result
    (``.result.json``) or the error (``.error.json``; the exit code is :func:`exit_code`'s)."""
    _die_with_parent()
    install_signal_handlers(child=True)
    work = Path(work_dir)
    try:
        module = stages.get(kind)
        config = module.Config.model_validate(config_dict)
        ctx = StepContext(
            run=run,
            step=step,
            run_dir=Path(run_dir),
            work_dir=work,
            resolver=Resolver(Path(run_dir), set(step_names)),
            seed=seed,
        )
        result = _watched_run(module, config, ctx)
        store.atomic_write_text(work / ".result.json", json.dumps(asdict(result), default=float))
    except BaseException as err:  # noqa: BLE001 - reported to the parent, then the process ends
        saved = _save_error(work, err)
        if not isinstance(err, (KeyboardInterrupt, *CLEAN_ERRORS)):
            traceback.print_exc()
        elif not saved and not isinstance(err, KeyboardInterrupt):  # the parent cannot read it: say it here
            print(f"error: {err}", file=sys.stderr)
        sys.stderr.flush()
        os._exit(exit_code(err))  # not sys.exit: no interpreter teardown (engines, threads) to hang on


def _run_isolated(step: Step, ctx: StepContext) -> StepResult:
    import multiprocessing

    result_file = ctx.work_dir / ".result.json"
    result_file.unlink(missing_ok=True)
    (ctx.work_dir / store.ERROR).unlink(missing_ok=True)
    proc = multiprocessing.get_context("spawn").Process(
        target=_child,
        args=(
            step.config.kind,
            step.config.model_dump(mode="json"),
            ctx.run,
            ctx.step,
            str(ctx.run_dir),
            sorted(ctx.resolver.step_names),
            ctx.seed,
            str(ctx.work_dir),
        ),
    )
    proc.start()
    try:
        proc.join()
    except KeyboardInterrupt as err:
        # The step stops like the parent: pass the signal on (a terminal's Ctrl-C reached it
        # already; a `kill` from a scheduler reached only this process), give it time to
        # unwind; a second signal here ends it at once (its partial work is crash-safe).
        try:
            if proc.is_alive() and proc.pid is not None:  # alive: started, so it has a pid
                os.kill(proc.pid, getattr(err, "signum", signal.SIGINT))
            proc.join(timeout=60)
        except KeyboardInterrupt:
            pass
        if proc.is_alive():
            proc.kill()
            proc.join()
        raise
    if proc.exitcode == 0 and result_file.exists():
        data = json.loads(result_file.read_text())
        result_file.unlink()
        return StepResult(**data)
    error = _read_error(ctx.work_dir)
    if error.get("interrupted"):  # the step alone got the signal (e.g. `kill` of its pid)
        raise Interrupted(error.get("signum") or signal.SIGTERM)
    if proc.exitcode == progress.STALL_EXIT_CODE and not error:
        error = {"message": "stalled (ended by its watchdog)"}
    exitcode = proc.exitcode or 0
    what = error.get("message") or (
        f"killed by signal {signal.Signals(-exitcode).name}" if exitcode < 0 else "see the error above"
    )
    raise StepFailed(f"step {step.name} failed in its process (exit code {proc.exitcode}): {what}")


def _read_error(work_dir: Path) -> dict:
    try:
        record = json.loads((work_dir / store.ERROR).read_text())
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def progress_note(work_dir: Path) -> str:
    """Where an unfinished step stands, for the "rerun to resume" message: its last progress
    (``.progress.json``) and its newest complete checkpoint."""
    parts = []
    record = store.read_progress(work_dir)
    if record and record.get("done") is not None:
        total = f"/{record['total']:g}" if record.get("total") is not None else ""
        parts.append(f"reached {record['done']:g}{total} {record.get('unit', '')}".strip())
    checkpoint = last_checkpoint(work_dir / "checkpoints")
    if checkpoint:
        parts.append(f"resumes from {Path(checkpoint).name}")
    shards = sorted((work_dir / "shards").glob("shard-*.parquet")) if (work_dir / "shards").is_dir() else []
    if shards:
        parts.append(f"{len(shards)} shard(s) kept")
    return "; ".join(parts)


def run_step(
    step: Step,
    run: str,
    run_dir: Path,
    resolver: Resolver,
    seed: int,
    force: bool,
    isolate: bool = False,
    keep_checkpoints: bool = False,
) -> StepRecord:
    """Run one step unless its manifest already matches its config and inputs.

    Under a multi-process launch every rank calls this with the same arguments; rank 0 alone
    writes the partial folder, the manifest and the final folder, with barriers between
    (see ``pipeline.distributed``).
    """
    main = distributed.is_main()
    config_dict = step.config.model_dump(mode="json")
    # The pipeline seed reaches the stage through ctx.seed, so it is part of the config identity.
    config_hash = step_config_hash(step.config, seed)
    with distributed.main_first():  # rank 0 prepares an alias once; the others then find it done
        inputs = _input_block(step, resolver)
    folders = store.StepFolders(run_dir, step.name)
    manifest = store.read_manifest(folders.final)
    if (
        not force
        and manifest
        and manifest.get("config_hash") == config_hash
        and {k: v["hash"] for k, v in manifest.get("inputs", {}).items()} == {k: v["hash"] for k, v in inputs.items()}
    ):
        if main:
            console.print(f"[green]✓ {step.name}[/] up to date (manifest matches config and inputs); skipped")
        return _record_from_manifest(step, manifest, "skipped (up to date)")

    preflight = getattr(stages.get(step.config.kind), "preflight", None)
    if preflight is not None:  # refusals that depend on the machine, before any folder or process
        try:
            preflight(step.config)
        except ConfigError as err:
            raise ConfigError(f"step {step.name} ({step.config.kind}): {err}") from None
    if main:
        console.rule(f"[bold]{step.name}[/] ({step.config.kind})")
    fingerprint = store.canonical_hash({"config": config_hash, "inputs": inputs})
    # A crash between its manifest and its rename: finish the move (one process only: under a
    # launch the ranks would have to agree on it first; they rerun the step instead).
    if not distributed.launched() and not force and folders.recover(fingerprint):
        console.print(f"[green]✓ {step.name}[/] finished before an interruption (manifest written); moved into place")
        manifest = store.read_manifest(folders.final)
        assert manifest is not None  # recover() moves a folder into place only with its manifest
        return _record_from_manifest(step, manifest, "recovered")
    if main:  # may discard a stale partial folder: no other rank may be using it yet
        work = folders.prepare_partial(fingerprint)
        store.atomic_write_text(work / "config.yaml", yaml.safe_dump(config_dict, sort_keys=False))
        # Weight digests describe one attempt's final weights; a resumed attempt writes its own.
        shutil.rmtree(work / distributed.DIGEST_DIR, ignore_errors=True)
    distributed.barrier()
    work = folders.partial
    for key, block in inputs.items():
        ref = block["ref"]
        block["path"] = resolver.model(ref) if step.config.input_type(key) == "model" else resolver.dataset(ref)
    ctx = StepContext(run=run, step=step.name, run_dir=run_dir, work_dir=work, resolver=resolver, seed=seed)
    started = time.time()
    module = stages.get(step.config.kind)
    try:
        result: StepResult = _run_isolated(step, ctx) if isolate else _watched_run(module, step.config, ctx)
    except KeyboardInterrupt as err:
        note = progress_note(work)
        how = getattr(err, "signum", None)
        console.print(
            f"[yellow]interrupted{f' ({signal.Signals(how).name})' if how else ''}: {step.name} kept its "
            f"partial work in {work}{f' ({note})' if note else ''}; rerun the same command to resume[/]"
        )
        raise
    except Exception as err:
        note = progress_note(work)
        console.print(f"[red]step {step.name} failed; partial work kept in {work}{f' ({note})' if note else ''}[/]")
        if not isinstance(err, (StepFailed, *CLEAN_ERRORS)):  # those say all in one line (printed by r1)
            traceback.print_exc()
        raise
    wall = time.time() - started
    outputs = {**type(step.config).outputs, **result.outputs}  # declared by the stage (contract) + reported
    result_dict = {"outputs": outputs, "counts": result.counts, "metrics": result.metrics, "summary": result.summary}
    distributed.barrier()  # every rank has returned (and written its files) before rank 0 finalizes
    if main:
        missing = [f"{name} ({rel})" for name, rel in outputs.items() if not (work / rel).exists()]
        if missing:  # what the stage declares must exist before a manifest says the step is done
            raise RuntimeError(
                f"step {step.name} ({step.config.kind}) finished without its output(s) "
                f"{', '.join(missing)} in {work}; partial work kept there"
            )
        checkpoints = work / "checkpoints"
        if checkpoints.is_dir() and not keep_checkpoints:
            shutil.rmtree(checkpoints)  # resume state; the step's outputs are complete without it
        manifest = {
            "step": step.name,
            "kind": step.config.kind,
            "run": run,
            "inputs": inputs,
            "config_hash": config_hash,
            "config": config_dict,
            "output_hash": store.hash_tree(work),
            "result": result_dict,
            "packages": store.package_versions(),
            "git_commit": store.git_commit(),
            "started": started,
            "wall_time_s": round(wall, 2),
            "checkpoints": "kept" if checkpoints.is_dir() else "none",
            "precision": result.precision,  # dtype per role, chosen how (dtype: auto)
        }
        ranks = distributed.digest_summary(work)
        if ranks is not None:
            manifest["distributed"] = ranks
            if ranks["weights_identical"] is False:
                console.print(
                    f"[red]warning: the {ranks['world_size']} processes of {step.name} ended with "
                    f"different weights (see {work / distributed.DIGEST_DIR}); the saved model is rank 0's[/]"
                )
        folders.finalize(manifest)
        console.print(f"[green]✓ {step.name}[/] finished in {wall:.1f} s: {result.summary}")
    distributed.barrier()  # no rank reads the store (next step, exit) before the final folder exists
    return StepRecord(step.name, step.config.kind, "ran", round(wall, 2), inputs, result_dict)

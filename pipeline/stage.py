"""The stage contract: what every stage kind declares, the context it runs in, and its result.

A stage kind is a module ``stages/<kind>.py`` (``stages.kinds()`` lists them). It defines:

- ``Config``: a :class:`StageConfig` subclass (``kind: Literal["<kind>"]``), which declares as
  class variables what the front end (runner, report, CLI, eval) needs to know about the stage
  without knowing its name:

  - ``input_fields``: fields holding references to models or datasets (resolved by the runner,
    hashed into the manifest, checked to run earlier);
  - ``outputs``: what the step writes into its folder (``model``, ``dataset``: what later steps
    can take as input; any other name: a results file), checked by the runner after the run;
  - ``training_prompts``: fields whose prompt sources the stage trains on (or makes training
    data from); the eval contamination guard reads them. Default: **every** field holding
    prompt sources (``data.PromptSource``), so a new stage that trains on prompts is checked
    without declaring anything; a stage whose prompt fields are held out says so (eval: ``()``);
  - ``headline``: the counts/metrics of its ``StepResult`` shown in the run summary table.

- ``run(config, ctx) -> StepResult``. Heavy libraries (torch, trl, vllm) are imported inside
  ``run`` so that listing and validating configs stays fast.

And optionally, at module level:

- ``REPORT``: a :class:`StageReport`: training-curve panels, a line for the report's "At a
  glance", a report section of its own, a table for the run summary;
- ``commands(group, front)``: turn ``r1 <kind>`` into a command group (eval: ``r1 eval compare``);
  ``front`` is a :class:`Front`, the command line's services (stages never import the front);
- ``preflight(config)``: refusals that depend on the machine, raised as ``ConfigError`` before
  any folder or process exists;
- ``DISTRIBUTED = True``: the stage runs under ``accelerate launch`` on several processes.

``docs/architecture.md`` shows where this sits among the layers and how to add a stage.
"""

from __future__ import annotations

import json
import logging
import re
import time
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from pipeline.config import StrictModel

log = logging.getLogger(__name__)

#: The summary table's key numbers of a stage that declares no ``headline``.
DEFAULT_HEADLINE = ("rows", "steps", "loss_first", "loss_last")


class StageConfig(StrictModel):
    """Base of every stage's typed config; the class variables are the stage's contract
    (module docstring).

    ``input_fields`` maps the fields holding references (a step name of the same run, a model
    alias, a local path or a hub id) to what they reference, ``"model"`` or ``"dataset"``;
    the runner resolves them, records their content hashes in the manifest and checks
    that a referenced step runs earlier.
    """

    kind: str
    input_fields: ClassVar[dict[str, str]] = {}
    #: Output name -> path inside the step folder. ``model`` and ``dataset`` can be inputs of
    #: later steps (``Resolver``); other names are results files (eval's ``results``).
    outputs: ClassVar[dict[str, str]] = {}
    #: Fields whose prompt sources the stage trains on; None = every prompt-source field.
    training_prompts: ClassVar[tuple[str, ...] | None] = None
    #: ``StepResult`` counts/metrics shown, in this order, in the run summary's key numbers.
    headline: ClassVar[tuple[str, ...]] = DEFAULT_HEADLINE
    #: Fields that change how a step runs, never what it produces (e.g. a trainer's
    #: ``report_to``): left out of :meth:`identity`, so changing them neither reruns a finished
    #: step nor discards an unfinished one's checkpoints.
    runtime_fields: ClassVar[tuple[str, ...]] = ()
    #: Fields added after steps were already run with the stage, with their "off" value: left
    #: out of :meth:`identity` while they hold it, so a finished step keeps its hash until a
    #: config actually sets them.
    late_fields: ClassVar[dict[str, Any]] = {}

    def identity(self) -> dict:
        """The config as hashed into the step's manifest (``config_hash``) and resume fingerprint:
        ``model_dump(mode="json")`` without the :attr:`runtime_fields`, nor the
        :attr:`late_fields` at their off value."""
        data = self.model_dump(mode="json")
        for name in self.runtime_fields:
            data.pop(name, None)
        for name, off in self.late_fields.items():
            if name in data and data[name] == off:
                del data[name]
        return data

    def inputs(self) -> dict[str, str]:
        """Input name -> reference, for the fields in ``input_fields`` that are set.

        A list-valued field (e.g. eval ``models``) gives ``name.0``, ``name.1``, ...
        """
        out: dict[str, str] = {}
        for name in self.input_fields:
            value = getattr(self, name)
            if isinstance(value, (list, tuple)):
                for i, v in enumerate(value):
                    out[f"{name}.{i}"] = v
            elif value:
                out[name] = value
        return out

    def input_type(self, input_name: str) -> str:
        """``"model"`` or ``"dataset"`` for an input name returned by :meth:`inputs`."""
        return self.input_fields[input_name.split(".")[0]]

    @classmethod
    def training_prompt_fields(cls) -> tuple[str, ...]:
        """The fields of ``training_prompts``, or by default every field whose type holds a
        prompt source (``list[PromptSource]``, ``PromptSource | None``, ...)."""
        if cls.training_prompts is not None:
            return cls.training_prompts
        return tuple(name for name, f in cls.model_fields.items() if _holds_prompt_sources(f.annotation))


def _holds_prompt_sources(annotation: Any) -> bool:
    from data.sources import SourceConfig

    if isinstance(annotation, type):
        return issubclass(annotation, SourceConfig)
    return any(_holds_prompt_sources(a) for a in typing.get_args(annotation))


# ----------------------------------------------------------------------------- optional hooks


@dataclass(frozen=True)
class Panel:
    """One training-curve plot of the run report: metric keys of ``metrics.jsonl`` drawn
    against the step. ``keys``: exact keys; or ``pattern``: ``"prefix*suffix"`` (every logged
    key that matches). ``optional``: logged only when configured, so not reported as missing.
    ``exclude``: keys the pattern leaves out. ``stacked``: the series drawn as stacked areas
    (parts of a whole, e.g. the seconds of a step by phase; a step missing a key counts 0)."""

    title: str
    keys: tuple[str, ...] = ()
    pattern: str = ""
    optional: bool = False
    exclude: tuple[str, ...] = ()
    stacked: bool = False


#: The curves every trainer logs (``transformers.Trainer``): loss and learning rate.
TRAINER_PANELS = (Panel("loss", ("loss",)), Panel("learning rate", ("learning_rate",)))
#: Where each optimizer step's wall time went (``pipeline.timing``: ``timing_s/<phase>``), stacked.
TIMING_PANEL = Panel(
    "seconds per step, by phase", pattern="timing_s/*", exclude=("timing_s/step",), optional=True, stacked=True
)


@dataclass(frozen=True)
class StageReport:
    """What a stage adds to the run report (``pipeline.report``) and the run summary
    (``pipeline.summary``); every part is optional.

    - ``panels``: training curves drawn for each step of this kind (a stage with panels is a
      training stage in the report);
    - ``glance(step) -> str | None``: one line for "At a glance" (``step``: a
      ``pipeline.store.StepView``);
    - ``section(doc, steps)``: a section of its own (``doc``: a ``pipeline.render.Doc``;
      ``steps``: the run's steps of this kind, possibly none: say what is missing);
    - ``summary_table(records) -> (title, headers, rows) | None``: a table for ``summary.md``
      from the run's step records of this kind (``pipeline.runner.StepRecord``).
    """

    panels: tuple[Panel, ...] = ()
    glance: Callable[[Any], str | None] | None = None
    section: Callable[[Any, list], None] | None = None
    summary_table: Callable[[list], tuple[str, list[str], list[list[str]]] | None] | None = None


@dataclass(frozen=True)
class Front:
    """The command line's services, handed to a stage's ``commands(group, front)`` hook.

    ``run_config(raw, source, kind, run, step, force, keep_checkpoints)`` validates a config
    mapping as a ``kind`` config (refusing another kind) and runs it as the one step ``step``
    of run ``run``; ``fail(message)`` prints an error and exits with status 2;
    ``set_option`` / ``keep_option`` are the ``--set`` / ``--keep-checkpoints`` options.
    """

    run_config: Callable[..., None]
    fail: Callable[[str], typing.NoReturn]
    set_option: Any
    keep_option: Any


@dataclass
class StepResult:
    """What a finished step reports.

    ``outputs``: output name -> path relative to the step folder (added to the ones the
    config class declares, ``StageConfig.outputs``).
    ``counts``: integers for the summary (rows sampled, kept, ...). ``metrics``: floats
    (reward at start/end, pass@1, ...). ``summary``: one short human line for the table.
    ``precision``: what ran in which dtype and why, per role (``training``, ``rollouts``, ...;
    :meth:`pipeline.precision.Precision.as_dict`), recorded in the manifest.
    """

    outputs: dict[str, str] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    summary: str = ""
    precision: dict[str, dict[str, str]] = field(default_factory=dict)


@dataclass
class StepContext:
    """Where a step runs and how it finds its inputs.

    ``work_dir`` is the step's temporary folder: write every output there. It survives an
    interruption (so ``work_dir/checkpoints`` and shards let a rerun resume) and is renamed
    into ``runs/<run>/<step>/`` only after the manifest is written.
    """

    run: str
    step: str
    run_dir: Path
    work_dir: Path
    resolver: Any  # pipeline.runner.Resolver; typed loosely to keep this module import-light
    seed: int = 0
    _metrics_file: Path | None = None
    _progress: Any = None  # pipeline.progress.StepProgress, made on first use

    @property
    def progress(self):
        """The step's :class:`pipeline.progress.StepProgress`: ``update(done, total, unit, **extra)``,
        ``phase(name)``, ``beat()``; read by ``r1 status`` and the stall watchdog."""
        if self._progress is None:
            from pipeline.progress import StepProgress

            self._progress = StepProgress(self.work_dir, self.step)
        return self._progress

    def resolve_model(self, ref: str) -> str:
        """Local folder (or hub id) for a model reference; see ``Resolver.model``."""
        return self.resolver.model(ref)

    def resolve_dataset(self, ref: str) -> str:
        """Local folder/file (or hub name) for a dataset reference; see ``Resolver.dataset``."""
        return self.resolver.dataset(ref)

    def log_metrics(self, record: dict) -> None:
        """Append one JSON line (with a wall-clock ``time``) to ``work_dir/metrics.jsonl``.

        A process killed while appending leaves a cut-off last line; the next line starts on a
        new line, so only the cut one is lost (``pipeline.store.read_metrics`` skips it)."""
        path = self.work_dir / "metrics.jsonl"
        line = json.dumps({"time": round(time.time(), 3), **record}, default=float) + "\n"
        with path.open("a+b") as fh:
            if fh.tell() > 0:
                fh.seek(-1, 2)
                if fh.read(1) != b"\n":
                    line = "\n" + line
            fh.write(line.encode())

    @property
    def checkpoints(self) -> Path:
        return self.work_dir / "checkpoints"


#: Written last into a transformers checkpoint folder (after weights, optimizer, scheduler, RNG).
_CHECKPOINT_COMPLETE = "trainer_state.json"


def _complete(checkpoint: Path) -> bool:
    try:
        state = json.loads((checkpoint / _CHECKPOINT_COMPLETE).read_text())
    except (OSError, ValueError):  # absent, a folder, or cut off mid-write (truncated JSON)
        return False
    return isinstance(state, dict) and "global_step" in state


def last_checkpoint(folder: Path) -> str | None:
    """The newest *complete* ``checkpoint-N`` folder in ``folder`` (None if there is none).

    A run killed while saving (a full disk, a second Ctrl-C, a lost machine) leaves a
    ``checkpoint-N`` folder without its trainer state, or with a truncated one;
    transformers' ``get_last_checkpoint`` would pick it and the resume would fail on the
    missing files. The Trainer writes ``trainer_state.json`` after everything else, so a
    checkpoint counts as complete when that file parses as a trainer state (a JSON object
    with ``global_step``).
    """
    if not folder.is_dir():
        return None
    steps = [
        (int(m.group(1)), p)
        for p in folder.iterdir()
        if p.is_dir() and (m := re.fullmatch(r"checkpoint-([0-9]+)", p.name))
    ]
    complete = [(n, p) for n, p in steps if _complete(p)]
    newest = max(complete) if complete else None
    incomplete = sorted(n for n, p in steps if newest is None or n > newest[0])
    if incomplete:
        log.warning(
            "%s: checkpoint(s) %s are incomplete (no readable %s): ignored; resuming from %s",
            folder,
            incomplete,
            _CHECKPOINT_COMPLETE,
            newest[1].name if newest else "the start",
        )
    return str(newest[1]) if newest else None

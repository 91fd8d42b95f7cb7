"""What every stage kind shares: its config base, the context it runs in, and its result.

A stage module in ``stages/`` defines ``Config`` (a :class:`StageConfig`) and
``run(config, ctx) -> StepResult``. It imports heavy libraries (torch, trl, vllm) inside
``run`` so that listing and validating configs stays fast.
"""

from __future__ import annotations

import json
import logging
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from pipeline.config import StrictModel

log = logging.getLogger(__name__)


class StageConfig(StrictModel):
    """Base of every stage's typed config.

    ``input_fields`` maps the fields holding references (a step name of the same run, a model
    alias, a local path or a hub id) to what they reference, ``"model"`` or ``"dataset"``;
    the runner resolves them, records their content hashes in the manifest and checks
    that a referenced step runs earlier.
    """

    kind: str
    input_fields: ClassVar[dict[str, str]] = {}

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


@dataclass
class StepResult:
    """What a finished step reports.

    ``outputs``: output name -> folder relative to the step folder (``model`` or ``dataset``).
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

    def resolve_model(self, ref: str) -> str:
        """Local folder (or hub id) for a model reference; see ``Resolver.model``."""
        return self.resolver.model(ref)

    def resolve_dataset(self, ref: str) -> str:
        """Local folder/file (or hub name) for a dataset reference; see ``Resolver.dataset``."""
        return self.resolver.dataset(ref)

    def log_metrics(self, record: dict) -> None:
        """Append one JSON line (with a wall-clock ``time``) to ``work_dir/metrics.jsonl``."""
        path = self.work_dir / "metrics.jsonl"
        with path.open("a") as fh:
            fh.write(json.dumps({"time": round(time.time(), 3), **record}, default=float) + "\n")

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
    steps = [(int(m.group(1)), p) for p in folder.iterdir()
             if p.is_dir() and (m := re.fullmatch(r"checkpoint-([0-9]+)", p.name))]
    complete = [(n, p) for n, p in steps if _complete(p)]
    newest = max(complete) if complete else None
    incomplete = sorted(n for n, p in steps if newest is None or n > newest[0])
    if incomplete:
        log.warning("%s: checkpoint(s) %s are incomplete (no readable %s): ignored; resuming from %s", folder,
                    incomplete, _CHECKPOINT_COMPLETE, newest[1].name if newest else "the start")
    return str(newest[1]) if newest else None

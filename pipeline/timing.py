"""Per-phase wall-clock timing of training steps: the timer, and the timings read back.

A trainer stage times its phases with :class:`PhaseTimer` and :func:`time_calls` (wrappers
around the trainer's real calls, installed by ``pipeline.trainer.install_phase_timers`` and by
the stage for its own phases); ``pipeline.trainer.metrics_callback`` writes them into every
step line of ``metrics.jsonl`` as ``timing_s/<phase>`` (seconds per optimizer step, verl's key
style), with ``timing_s/other`` (no phase) and ``timing_s/step`` (wall). :func:`read_step_timings`
and :func:`mean_step_timing` read them back, e.g. for a stacked bar per step in the run report
(``docs/training.md``). No heavy imports; nothing here imports ``stages``.
"""

from __future__ import annotations

import contextlib
import functools
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: Phase names, in the order of a step, with what each measures (the wrapped call). Stages may
#: time phases of their own (:func:`time_calls`); they are logged after these, before ``other``.
PHASES: dict[str, str] = {
    "data": "fetching and collating the step's batches (Trainer.get_batch_samples)",
    "weight_sync": "pushing the policy's weights into the vLLM engine (VLLMGeneration.sync_weights)",
    "generation": "rollouts: tokenizing prompts, sampling completions, decoding (GRPOTrainer._generate; distill: "
    "on-policy samples)",
    "reward": "scoring the completions with the reward functions (GRPOTrainer._calculate_rewards)",
    "old_logprobs": "no-grad log-prob pass of the policy over the rollouts (importance-sampling correction)",
    "ref_logprobs": "no-grad log-prob pass of the reference model (beta > 0)",
    "teacher": "no-grad forward pass of the frozen teacher (distillation: live logits, hidden states)",
    "advantages": "rest of turning rollouts into a batch: padding, group advantages, rollout metrics",
    "forward": "loss forward pass with gradients (Trainer.compute_loss)",
    "backward": "backward pass, gradient all-reduce across processes included (Accelerator.backward)",
    "optimizer": "gradient clipping and optimizer.step()",
    "evaluation": "held-out evaluation (Trainer._evaluate): its sampling and scoring",
    "save": "writing a checkpoint (Trainer._save_checkpoint)",
}
OTHER = "other"


class PhaseTimer:
    """Wall-clock seconds per phase (``time.perf_counter``), accumulated over a training run.

    Phases may nest; time counts for the innermost phase only (exclusive times), so the phases
    never count a second twice. An *absorbing* phase (``eval``, ``save``) keeps everything
    inside it (the evaluation's generation is evaluation, not training generation), except a
    phase entered with ``escape=True`` (the weight sync before the evaluation's sampling is the
    sync the next training generation would otherwise do). Single-threaded: wrap calls made by
    the training loop's thread only.

    >>> clock = iter([0.0, 1.0, 3.0, 4.0, 10.0]).__next__
    >>> timer = PhaseTimer(clock)            # t=0
    >>> with timer.phase("generation"):      # t=1
    ...     with timer.phase("weight_sync"):  # t=3
    ...         pass                          # t=4
    >>> timer.totals                          # generation 1..3 and 4..10, weight_sync 3..4
    {'generation': 8.0, 'weight_sync': 1.0}
    """

    def __init__(self, clock: Callable[[], float] = time.perf_counter):
        self.clock = clock
        self.totals: dict[str, float] = {}  # phase -> seconds since the last reset
        self._stack: list[tuple[str, bool]] = []  # (phase, absorbing), innermost last
        self._since = self.started = clock()  # start of the innermost phase's current slice; of the run
        #: Called at every phase change (the stall watchdog's beat: ``pipeline.progress``).
        self.listener: Callable[[], None] | None = None

    def current(self) -> str | None:
        """The innermost open phase (None between phases)."""
        return self._stack[-1][0] if self._stack else None

    def declare(self, *names: str) -> None:
        """Phases to report even when they never ran (a 0 says "not done here")."""
        for name in names:
            self.totals.setdefault(name, 0.0)

    def reset(self) -> None:
        """Zero every total and restart the run's clock (the training loop starts now)."""
        self.totals = dict.fromkeys(self.totals, 0.0)
        self._since = self.started = self.clock()

    def enter(self, name: str, absorbing: bool = False, escape: bool = False) -> bool:
        """Start phase ``name``; returns whether it started (False inside an absorbing phase)."""
        if self._stack and self._stack[-1][1] and not escape:
            return False
        now = self.clock()
        if self._stack:
            outer = self._stack[-1][0]
            self.totals[outer] = self.totals.get(outer, 0.0) + now - self._since
        self._stack.append((name, absorbing))
        self._since = now
        if self.listener is not None:
            self.listener()
        return True

    def exit(self, started: bool) -> None:
        """End the innermost phase (``started``: what :meth:`enter` returned)."""
        if not started:
            return
        now = self.clock()
        name, _ = self._stack.pop()
        self.totals[name] = self.totals.get(name, 0.0) + now - self._since
        self._since = now
        if self.listener is not None:
            self.listener()

    @contextlib.contextmanager
    def phase(self, name: str, absorbing: bool = False, escape: bool = False) -> Iterator[None]:
        started = self.enter(name, absorbing, escape)
        try:
            yield
        finally:
            self.exit(started)

    def snapshot(self) -> tuple[float, dict[str, float]]:
        """``(now, totals)`` with the running slice of the innermost open phase included."""
        now = self.clock()
        totals = dict(self.totals)
        if self._stack:
            name = self._stack[-1][0]
            totals[name] = totals.get(name, 0.0) + now - self._since
        return now, totals


def ordered(names) -> list[str]:
    """Phase names in step order: the :data:`PHASES` among ``names``, then the others (``other`` left out)."""
    known = [p for p in PHASES if p in names]
    return known + [n for n in names if n not in PHASES and n != OTHER]


def time_calls(
    obj: Any,
    attr: str,
    timer: PhaseTimer,
    phase: str | Callable[..., str],
    *,
    phases: tuple[str, ...] = (),
    absorbing: bool = False,
    escape: bool = False,
) -> None:
    """Time every call of ``obj.attr`` as ``phase`` (an instance attribute shadows the method).

    ``phase`` may be a function of the call's arguments returning the phase name (``phases``
    lists the names it returns, declared up front). See :class:`PhaseTimer` for ``absorbing``
    and ``escape``.

    Raises:
        AttributeError: ``obj`` has no ``attr`` (a TRL / transformers release renamed it).
    """
    original = getattr(obj, attr, None)
    if original is None:
        raise AttributeError(
            f"{type(obj).__name__} has no {attr}: this release of TRL/transformers is not the one "
            "the phase timers were written for (TRL 1.16, transformers 5)"
        )
    timer.declare(*((phase,) if isinstance(phase, str) else phases))

    @functools.wraps(original)
    def timed(*args, **kwargs):
        name = phase if isinstance(phase, str) else phase(*args, **kwargs)
        with timer.phase(name, absorbing, escape):
            return original(*args, **kwargs)

    setattr(obj, attr, timed)


# ---------------------------------------------------------------------------- reading timings back


def logged_steps(path: Path, key: str = "loss") -> list[dict]:
    """The lines of a ``metrics.jsonl`` that hold ``key``, one per step (``step``), in step order.

    A resumed run appends to the file of the interrupted one, and may log again the steps
    after its last checkpoint: the last line of each step wins (``pipeline.store.logged``).
    This (not a trainer's in-memory history, which starts at the resume point) is the whole run.
    """
    from pipeline import store

    return [line for line in store.logged(store.read_metrics(path), key) if "step" in line]


@dataclass
class StepTiming:
    """One logged step's timing: ``phases`` (phase -> seconds per optimizer step, in the order
    of a step, ``other`` last) adding up to ``step_s`` (wall seconds per optimizer step)."""

    step: int
    step_s: float
    phases: dict[str, float]


def read_step_timings(path: Path) -> tuple[list[str], list[StepTiming]]:
    """``(phases, steps)`` from a trainer step's ``metrics.jsonl``, for a stacked bar per step.

    ``phases``: every phase logged, in step order (:data:`PHASES`, then a stage's own, then
    ``other``); ``steps``: one :class:`StepTiming` per logged step (last line of a step wins),
    a phase the line lacks is 0. Empty for a file without timings (older runs, non-trainer
    steps). A report draws, per step ``s``, the segments ``s.phases[p]`` for ``p`` in ``phases``.

    >>> import tempfile
    >>> path = Path(tempfile.mkdtemp()) / "metrics.jsonl"
    >>> _ = path.write_text('{"step": 1, "loss": 2.0, "timing_s/forward": 1.5, "timing_s/other": 0.5, '
    ...                     '"timing_s/step": 2.0}\\n{"step": 1, "eval_reward": 0.1}\\n')
    >>> phases, steps = read_step_timings(path)
    >>> phases, steps[0].step_s, steps[0].phases
    (['forward', 'other'], 2.0, {'forward': 1.5, 'other': 0.5})
    """
    lines = logged_steps(path, key="timing_s/step")
    seen = [k.removeprefix("timing_s/") for line in lines for k in line if k.startswith("timing_s/")]
    names = ordered(dict.fromkeys(n for n in seen if n != "step"))
    if any(n == OTHER for n in seen):
        names.append(OTHER)
    steps = [
        StepTiming(line["step"], line["timing_s/step"], {p: line.get(f"timing_s/{p}", 0.0) for p in names})
        for line in lines
    ]
    return names, steps


def mean_step_timing(steps: list[StepTiming]) -> dict[str, float]:
    """Mean seconds per optimizer step of each phase over ``steps`` (equal weight per logged line).

    >>> mean_step_timing([StepTiming(1, 3.0, {"forward": 2.0, "other": 1.0}),
    ...                   StepTiming(2, 5.0, {"forward": 4.0, "other": 1.0})])
    {'forward': 3.0, 'other': 1.0}
    """
    if not steps:
        return {}
    return {p: sum(s.phases.get(p, 0.0) for s in steps) / len(steps) for p in steps[0].phases}

"""What every trainer stage shares: its options, TRL arguments, resume point, metrics, phase timings, final save.

Used by ``stages/sft.py`` (and ``stages/distill.py`` through it), ``stages/grpo.py`` and any new
trainer stage (a reward-model trainer, distillation losses). A trainer stage:

1. derives its config from :class:`TrainerOptions` (fixed step count, as GRPO) or
   :class:`EpochTrainerOptions` (passes over a dataset, as SFT): the fields carry the names
   TRL / transformers users know (``per_device_train_batch_size``, ``gradient_accumulation_steps``,
   ``num_train_epochs``, ``lr_scheduler_type``, ...) and are documented here, once; a stage
   redeclares a field only to change its default;
2. builds its TRL config with ``XConfig(**trainer_arguments(config, output_dir, dtype), ...)``
   plus the arguments only it has (``training_precision`` resolves ``dtype: auto``);
3. passes ``callbacks=[metrics_callback(ctx, timer)]`` and calls :func:`install_phase_timers`
   on the trainer (and :func:`time_calls` for phases of its own, e.g. GRPO's generation);
4. runs :func:`train` from :func:`resume_point` and ends with :func:`save_final`.

This module imports transformers / trl inside functions only and never imports ``stages``.

**Timing per phase.** Every trainer-log line of ``metrics.jsonl`` (the lines with ``loss``,
one per ``logging_steps`` optimizer steps) carries ``timing_s/<phase>``: wall-clock seconds per
optimizer step spent in each phase since the previous such line (verl's ``timing_s/*`` keys),
``timing_s/other`` (what no phase timer covers: scheduler, zero_grad, logging, callbacks) and
``timing_s/step`` (wall seconds per step, the sum of all of them). The phases (:data:`PHASES`) are
measured by wall-clock timers around the real calls of the trainer (instance wrappers of TRL /
transformers methods, see :func:`install_phase_timers`), exclusively: a phase nested in another
counts for the inner one only (weight sync inside generation is not generation), so the phases
of a step add up to its wall time. A held-out evaluation or a checkpoint save runs *after* the
trainer logged its step: it appears in the next step's line (the evaluation before step 1, in
step 1's line); the ones after the last step, in the manifest only. The step's manifest sums the
phases of the whole ``train()`` call (``metrics.timing_s``, plus ``setup``: loading, resuming and
building the optimizer before the first step), adding up to ``train_wall_s``.
:func:`read_step_timings` reads them back for a stacked bar per step.
"""

from __future__ import annotations

import contextlib
import functools
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import PositiveInt, model_validator

from pipeline import distributed, precision
from pipeline.config import StrictModel
from pipeline.precision import DtypeChoice, Precision
from pipeline.stage import StepContext, last_checkpoint

SchedulerType = Literal["cosine", "linear", "constant", "constant_with_warmup"]
#: Old config keys and the TRL name that replaced them: an old config fails with the new name.
RENAMED = {"batch_size": "per_device_train_batch_size", "grad_accum": "gradient_accumulation_steps",
           "epochs": "num_train_epochs", "lr_scheduler": "lr_scheduler_type"}


class TrainerOptions(StrictModel):
    """Options of every trainer stage, named as in TRL / transformers ``TrainingArguments``.

    A stage config derives from this class (with :class:`pipeline.stage.StageConfig`) and
    redeclares a field only to give it another default.
    """

    learning_rate: float = 2e-5  # peak AdamW learning rate
    lr_scheduler_type: SchedulerType = "cosine"  # learning-rate schedule after warm-up (transformers' names)
    # Fraction of the optimizer steps warming up linearly from 0 (passed as transformers'
    # warmup_steps, which reads a float in [0, 1) as a ratio of the total steps).
    warmup_ratio: float = 0.03
    weight_decay: float = 0.0  # AdamW's decoupled weight decay
    max_grad_norm: float = 1.0  # gradient clipping (L2 norm over all parameters)
    # Sequences per device per forward/backward pass (SFT: conversations; GRPO: completions).
    per_device_train_batch_size: PositiveInt = 8
    # Forward/backward passes per optimizer step: an optimizer step sees
    # per_device_train_batch_size * gradient_accumulation_steps * processes sequences.
    gradient_accumulation_steps: PositiveInt = 1
    max_steps: int = -1  # optimizer steps (> 0); EpochTrainerOptions: -1 = num_train_epochs decides
    # Autocast dtype over float32 master weights; auto = bf16 where the hardware runs it fast,
    # float32 on CPUs without AMX/AVX512-BF16, float16 on GPUs without bf16 (pipeline.precision).
    dtype: DtypeChoice = "auto"
    gradient_checkpointing: bool = False  # recompute activations in backward: less memory, ~30% more compute
    seed: int = 0  # data order, sampling, dropout (and SFT's max_rows sample)
    logging_steps: PositiveInt = 5  # optimizer steps between metrics lines
    save_steps: PositiveInt = 50  # optimizer steps between checkpoints (resume granularity)
    save_total_limit: int = 2  # checkpoints kept

    @model_validator(mode="before")
    @classmethod
    def _renamed_keys(cls, data: Any) -> Any:
        # An old config would otherwise fail with "unknown key 'batch_size'" and a long list.
        if isinstance(data, dict):
            old = [k for k in RENAMED if k in data and RENAMED[k] in cls.model_fields]
            if old:
                raise ValueError("; ".join(f"key '{k}' is now '{RENAMED[k]}' (the name TRL uses)" for k in old))
        return data

    @model_validator(mode="after")
    def _check_trainer_options(self):
        if not 0 <= self.warmup_ratio < 1:
            raise ValueError("warmup_ratio must be in [0, 1)")
        return self


class EpochTrainerOptions(TrainerOptions):
    """:class:`TrainerOptions` of a stage that passes over a dataset (SFT, distillation, reward models)."""

    num_train_epochs: float = 1.0  # passes over the data; ignored when max_steps > 0

    @model_validator(mode="after")
    def _check_length(self):
        if self.max_steps <= 0 and self.num_train_epochs <= 0:
            raise ValueError("set num_train_epochs > 0 or max_steps > 0")
        return self


def training_precision(options: TrainerOptions) -> Precision:
    """``options.dtype`` resolved on this machine for training, printed with its reason."""
    chosen = precision.resolve(options.dtype, what="training")
    precision.announce(chosen, "training")
    return chosen


def trainer_arguments(options: TrainerOptions, output_dir: Path, dtype: str | None = None) -> dict[str, Any]:
    """Keyword arguments of a TRL config (``SFTConfig``, ``GRPOConfig``, ``RewardConfig``, ...)
    that every trainer stage sets the same way; the stage adds its own (loss, data, optimizer).

    ``dtype``: the resolved autocast dtype (default: ``options.dtype`` resolved on this machine).
    Checkpoints keep the optimizer, scheduler and RNG state, so a resume continues exactly.
    """
    import torch

    cuda = torch.cuda.is_available()
    dtype = dtype or precision.resolve(options.dtype).dtype
    epochs = {"num_train_epochs": options.num_train_epochs} if isinstance(options, EpochTrainerOptions) else {}
    return dict(
        output_dir=str(output_dir),
        # optimisation
        **epochs,
        max_steps=options.max_steps,
        learning_rate=options.learning_rate,
        lr_scheduler_type=options.lr_scheduler_type,
        warmup_steps=options.warmup_ratio,  # a float in [0, 1) is a ratio of the total steps
        weight_decay=options.weight_decay,
        max_grad_norm=options.max_grad_norm,
        per_device_train_batch_size=options.per_device_train_batch_size,
        gradient_accumulation_steps=options.gradient_accumulation_steps,
        # precision and device
        bf16=dtype == "bfloat16",
        fp16=dtype == "float16",
        use_cpu=not cuda,
        gradient_checkpointing=options.gradient_checkpointing,
        # Several processes (DDP): every parameter takes part in the loss, so skip the unused-
        # parameter search (transformers turns it on by default: an extra graph walk per step).
        ddp_find_unused_parameters=False,
        dataloader_pin_memory=cuda,
        seed=options.seed,
        data_seed=options.seed,
        # logging and checkpoints
        logging_steps=options.logging_steps,
        logging_first_step=True,
        save_strategy="steps",
        save_steps=options.save_steps,
        save_total_limit=options.save_total_limit,
        save_only_model=False,  # optimizer + scheduler + RNG state, so a resume continues exactly
        report_to="none",
        disable_tqdm=False,  # progress bar with ETA
    )


# ---------------------------------------------------------------------------- resume


@dataclass(frozen=True)
class ResumePoint:
    """Where a (re)started step continues: the newest complete checkpoint, or the start."""

    checkpoint: str | None  # checkpoint-N folder to pass to ``trainer.train``; None = from scratch
    step: int  # its optimizer step N (0 without a checkpoint)

    def logged(self, key: str) -> list[float]:
        """Every value of ``key`` in the checkpoint's trainer-state log history (empty without one)."""
        if self.checkpoint is None:
            return []
        state = json.loads((Path(self.checkpoint) / "trainer_state.json").read_text())
        return [entry[key] for entry in state["log_history"] if key in entry]


def resume_point(checkpoints: Path) -> ResumePoint:
    """The :class:`ResumePoint` in a step's ``checkpoints/`` folder (incomplete checkpoints are
    skipped: :func:`pipeline.stage.last_checkpoint`)."""
    checkpoint = last_checkpoint(checkpoints)
    return ResumePoint(checkpoint, int(checkpoint.rsplit("-", 1)[1]) if checkpoint else 0)


# ---------------------------------------------------------------------------- phase timings

#: Phase names, in the order of a step, with what each measures (the wrapped call). Stages may
#: time phases of their own (:func:`time_calls`); they are logged after these, before ``other``.
PHASES: dict[str, str] = {
    "data": "fetching and collating the step's batches (Trainer.get_batch_samples)",
    "weight_sync": "pushing the policy's weights into the vLLM engine (VLLMGeneration.sync_weights)",
    "generation": "rollouts: tokenizing prompts, sampling completions, decoding (GRPOTrainer._generate)",
    "reward": "scoring the completions with the reward functions (GRPOTrainer._calculate_rewards)",
    "old_logprobs": "no-grad log-prob pass of the policy over the rollouts (importance-sampling correction)",
    "ref_logprobs": "no-grad log-prob pass of the reference model (beta > 0)",
    "advantages": "rest of turning rollouts into a batch: padding, group advantages, rollout metrics",
    "forward": "loss forward pass with gradients (Trainer.compute_loss)",
    "backward": "backward pass, gradient all-reduce across processes included (Accelerator.backward)",
    "optimizer": "gradient clipping and optimizer.step()",
    "eval": "held-out evaluation (Trainer._evaluate): its sampling and scoring",
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
        return True

    def exit(self, started: bool) -> None:
        """End the innermost phase (``started``: what :meth:`enter` returned)."""
        if not started:
            return
        now = self.clock()
        name, _ = self._stack.pop()
        self.totals[name] = self.totals.get(name, 0.0) + now - self._since
        self._since = now

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


def _ordered(names) -> list[str]:
    known = [p for p in PHASES if p in names]
    return known + [n for n in names if n not in PHASES and n != OTHER]


def time_calls(obj: Any, attr: str, timer: PhaseTimer, phase: str | Callable[..., str], *,
               phases: tuple[str, ...] = (), absorbing: bool = False, escape: bool = False) -> None:
    """Time every call of ``obj.attr`` as ``phase`` (an instance attribute shadows the method).

    ``phase`` may be a function of the call's arguments returning the phase name (``phases``
    lists the names it returns, declared up front). See :class:`PhaseTimer` for ``absorbing``
    and ``escape``.

    Raises:
        AttributeError: ``obj`` has no ``attr`` (a TRL / transformers release renamed it).
    """
    original = getattr(obj, attr, None)
    if original is None:
        raise AttributeError(f"{type(obj).__name__} has no {attr}: this release of TRL/transformers is not the one "
                             "pipeline/trainer.py's phase timers were written for (TRL 1.16, transformers 5)")
    timer.declare(*((phase,) if isinstance(phase, str) else phases))

    @functools.wraps(original)
    def timed(*args, **kwargs):
        name = phase if isinstance(phase, str) else phase(*args, **kwargs)
        with timer.phase(name, absorbing, escape):
            return original(*args, **kwargs)

    setattr(obj, attr, timed)


def install_phase_timers(trainer: Any, timer: PhaseTimer) -> None:
    """Time the phases every transformers ``Trainer`` has: ``data``, ``forward``, ``backward``,
    ``optimizer`` (clipping here; ``optimizer.step()`` by :func:`metrics_callback`), ``save``, and
    ``eval`` when the trainer evaluates. Call after the trainer is built, before ``train``.

    Raises:
        AttributeError: see :func:`time_calls`.
    """
    time_calls(trainer, "get_batch_samples", timer, "data")
    time_calls(trainer, "compute_loss", timer, "forward")
    time_calls(trainer.accelerator, "backward", timer, "backward")
    time_calls(trainer, "_clip_grad_norm", timer, "optimizer")
    if trainer.args.eval_strategy != "no" or trainer.args.eval_on_start:
        time_calls(trainer, "_evaluate", timer, "eval", absorbing=True)
    time_calls(trainer, "_save_checkpoint", timer, "save", absorbing=True)


# ---------------------------------------------------------------------------- metrics


def metrics_callback(ctx: StepContext, timer: PhaseTimer | None = None,
                     extra: Callable[[], dict] | None = None) -> Any:
    """A ``TrainerCallback`` that appends every trainer log line to ``ctx.log_metrics`` (main
    process only) and keeps them in ``.history`` (every process).

    A trainer-log line (one with ``loss``) gets ``seconds_per_step`` (wall) and
    ``cpu_seconds_per_step`` (this process, all threads: far below wall x threads means the
    machine is shared) since the previous one, and with ``timer`` the ``timing_s/*`` keys (see
    the module docstring). ``extra()`` adds keys to every line (e.g. GRPO's reward counters).
    With ``timer`` it also times ``optimizer.step()`` and resets the timer when training starts.
    """
    from transformers import TrainerCallback

    class MetricsCallback(TrainerCallback):
        def __init__(self):
            self.history: list[dict] = []
            self._last: tuple[float, float, int, dict[str, float]] | None = None
            self._optimizer = False

        def on_train_begin(self, args, state, control, **kwargs):
            if timer is not None:
                timer.reset()
            now, totals = timer.snapshot() if timer is not None else (time.perf_counter(), {})
            self._last = (now, time.process_time(), state.global_step, totals)

        def on_pre_optimizer_step(self, args, state, control, **kwargs):
            if timer is not None:
                self._optimizer = timer.enter("optimizer")

        def on_optimizer_step(self, args, state, control, **kwargs):
            if timer is not None:
                timer.exit(self._optimizer)

        def on_log(self, args, state, control, logs=None, **kwargs):
            if not logs:
                return
            record = {"step": state.global_step, **logs}
            if "loss" in logs and self._last is not None and state.global_step > self._last[2]:
                record.update(self._per_step(state.global_step))
            if extra is not None:
                record.update(extra())
            self.history.append(record)
            if state.is_world_process_zero:
                ctx.log_metrics(record)

        def _per_step(self, step: int) -> dict[str, float]:
            now, totals = timer.snapshot() if timer is not None else (time.perf_counter(), {})
            cpu = time.process_time()
            then, cpu_then, step_then, totals_then = self._last  # type: ignore[misc]
            self._last = (now, cpu, step, totals)
            steps = step - step_then
            wall = (now - then) / steps
            out = {"seconds_per_step": round(wall, 2), "cpu_seconds_per_step": round((cpu - cpu_then) / steps, 2)}
            if timer is not None:
                phases = {p: (totals.get(p, 0.0) - totals_then.get(p, 0.0)) / steps for p in _ordered(totals)}
                phases[OTHER] = wall - sum(phases.values())
                out.update({f"timing_s/{p}": round(s, 4) for p, s in phases.items()})
                out["timing_s/step"] = round(wall, 4)
            return out

    return MetricsCallback()


# ---------------------------------------------------------------------------- train and save


@dataclass
class TrainOutcome:
    """What :func:`train` measured. ``timing_s``: seconds per phase over the whole ``train()``
    call (``setup`` = before the first step; ``other`` = no phase), adding up to ``wall_s``."""

    output: Any  # transformers.TrainOutput
    wall_s: float
    timing_s: dict[str, float] = field(default_factory=dict)


def train(trainer: Any, resume: ResumePoint, timer: PhaseTimer | None = None) -> TrainOutcome:
    """``trainer.train()`` from ``resume``, timed (``timer``: the one given to the trainer's
    :func:`metrics_callback` and :func:`install_phase_timers`)."""
    started = time.perf_counter()
    if timer is not None:
        timer.reset()  # the callback resets it again when the loop starts: the gap is the setup
    output = trainer.train(resume_from_checkpoint=resume.checkpoint)
    ended, totals = timer.snapshot() if timer is not None else (time.perf_counter(), {})
    timing: dict[str, float] = {}
    if timer is not None:
        timing["setup"] = timer.started - started
        timing.update({p: totals[p] for p in _ordered(totals)})
        timing[OTHER] = ended - timer.started - sum(totals.values())
    return TrainOutcome(output, ended - started, {k: round(v, 3) for k, v in timing.items()})


def save_final(trainer: Any, work_dir: Path, tokenizer: Any) -> Path:
    """Save the trained model and ``tokenizer`` to ``work_dir/model``; returns that folder.

    Every process calls it (FSDP / ZeRO-3 gather the weights); the main process writes the
    files. ``training_args.bin`` is removed (a pickle; the step's ``config.yaml`` says it all).
    In a multi-process run each rank writes its weights digest (``pipeline.distributed``).
    """
    out_dir = Path(work_dir) / "model"
    trainer.save_model(str(out_dir))  # weights, config, generation config
    if trainer.accelerator.is_main_process:
        tokenizer.save_pretrained(out_dir)
        (out_dir / "training_args.bin").unlink(missing_ok=True)
    distributed.write_weights_digest(work_dir, trainer)
    return out_dir


# ---------------------------------------------------------------------------- reading metrics back


def logged_steps(path: Path, key: str = "loss") -> list[dict]:
    """The lines of a ``metrics.jsonl`` that hold ``key``, one per step (``step``), in step order.

    A resumed run appends to the file of the interrupted one, and may log again the steps
    after its last checkpoint: the last line of each step wins. This (not a trainer's
    in-memory history, which starts at the resume point) is the whole run.
    """
    if not Path(path).exists():
        return []
    by_step: dict[int, dict] = {}
    for line in Path(path).read_text().splitlines():
        entry = json.loads(line)
        if key in entry and "step" in entry:
            by_step[entry["step"]] = entry
    return [by_step[k] for k in sorted(by_step)]


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
    names = _ordered(dict.fromkeys(n for n in seen if n != "step"))
    if any(n == OTHER for n in seen):
        names.append(OTHER)
    steps = [StepTiming(line["step"], line["timing_s/step"], {p: line.get(f"timing_s/{p}", 0.0) for p in names})
             for line in lines]
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


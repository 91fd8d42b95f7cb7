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
3. passes ``callbacks=[metrics_callback(ctx, timer)]`` (``timer``: a ``pipeline.timing.PhaseTimer``)
   and calls :func:`install_phase_timers` on the trainer (and ``pipeline.timing.time_calls`` for
   phases of its own, e.g. GRPO's generation);
4. runs :func:`train` from :func:`resume_point` and ends with :func:`save_final`.

**Tracking.** ``report_to`` (``none``, or any of ``tensorboard``, ``trackio``, ``wandb``) is
passed to the trainer as TRL users know it (``TrainingArguments.report_to``), with the run name
``<run>/<step>``: TensorBoard event files go to ``<step>/tracking/tensorboard/``, W&B runs
offline into ``<step>/tracking/wandb/`` unless ``WANDB_MODE`` says otherwise (``wandb sync`` it
later), Trackio logs locally (its own default; no Space) under the project ``<run>``. Every
trainer-log line the tracker receives carries the keys of ``metrics.jsonl`` (per-phase timings
``timing_s/*``, seconds per step, GRPO's reward counters). ``report_to`` is a runtime field
(``StageConfig.runtime_fields``): adding a tracker to an interrupted step resumes it.

**Progress and space.** The metrics callback reports each optimizer step to ``ctx.progress``
(``r1 status``: step, ETA, last loss or reward, seconds per step) and feeds the stall watchdog
with every phase change. Before each checkpoint the free space is checked against the size of
the last checkpoint (or 12 bytes per parameter: float32 weights and AdamW's two moments), and a
save that fails for lack of space removes its half-written folder: both raise
``pipeline.store.DiskFullError`` naming the folder and the space needed.

This module imports transformers / trl inside functions only and never imports ``stages``.

**Timing per phase.** Every trainer-log line of ``metrics.jsonl`` (the lines with ``loss``,
one per ``logging_steps`` optimizer steps) carries ``timing_s/<phase>``: wall-clock seconds per
optimizer step spent in each phase since the previous such line (verl's ``timing_s/*`` keys),
``timing_s/other`` (what no phase timer covers: scheduler, zero_grad, logging, callbacks) and
``timing_s/step`` (wall seconds per step, the sum of all of them). The phases
(``pipeline.timing.PHASES``) are
measured by wall-clock timers around the real calls of the trainer (instance wrappers of TRL /
transformers methods, see :func:`install_phase_timers`), exclusively: a phase nested in another
counts for the inner one only (weight sync inside generation is not generation), so the phases
of a step add up to its wall time. A held-out evaluation or a checkpoint save runs *after* the
trainer logged its step: it appears in the next step's line (the evaluation before step 1, in
step 1's line); the ones after the last step, in the manifest only. The step's manifest sums the
phases of the whole ``train()`` call (``metrics.timing_s``, plus ``setup``: loading, resuming and
building the optimizer before the first step), adding up to ``train_wall_s``.
``pipeline.timing.read_step_timings`` reads them back for a stacked bar per step.

Why one file: it is the one home of the scaffolding that the trainer stages (sft, grpo, distill)
share: options, TRL arguments, resume, epoch order, phase timers, metrics and the final save, so
that a new trainer stage touches one module of `pipeline/`. Each part is a section below.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import PositiveInt, field_validator, model_validator

from pipeline import distributed, precision, store
from pipeline.config import ConfigError, StrictModel
from pipeline.precision import DtypeChoice, Precision
from pipeline.stage import StepContext, last_checkpoint
from pipeline.timing import OTHER, PhaseTimer, ordered, time_calls

SchedulerType = Literal["cosine", "linear", "constant", "constant_with_warmup"]
Tracker = Literal["tensorboard", "trackio", "wandb"]
#: The package each tracker needs, and the pin to install (what ``requirements/cpu.lock`` has).
TRACKER_PACKAGES: dict[str, tuple[tuple[str, ...], str]] = {
    "tensorboard": (("tensorboard", "tensorboardX"), "tensorboard==2.21.0"),
    "trackio": (("trackio",), "trackio==0.43.0"),
    "wandb": (("wandb",), "wandb==0.31.0"),
}
#: Old config keys and the TRL name that replaced them: an old config fails with the new name.
RENAMED = {
    "batch_size": "per_device_train_batch_size",
    "grad_accum": "gradient_accumulation_steps",
    "epochs": "num_train_epochs",
    "lr_scheduler": "lr_scheduler_type",
}


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
    max_grad_norm: float = 1.0  # gradient clipping (L2 norm over all parameters); 0 = none
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
    # Trackers that receive every logged line, as TRL's `report_to`: none, or a list of
    # tensorboard, trackio, wandb (offline / local by default; module docstring). A runtime
    # field: changing it never reruns a step.
    report_to: list[Tracker] = []

    runtime_fields: ClassVar[tuple[str, ...]] = ("report_to",)

    @field_validator("report_to", mode="before")
    @classmethod
    def _report_to_list(cls, value: Any) -> Any:
        # TRL's forms: "none", one name, or a list (a comma-separated string too).
        if value is None or value == "none" or value == ["none"]:
            return []
        if isinstance(value, str):
            return [v.strip() for v in value.split(",") if v.strip()]
        return value

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
        # After-validation, so a stage that redeclares a field for its default keeps the check.
        # Each value here would otherwise train without complaint: a negative learning rate
        # ascends the loss, warmup_ratio 1.5 is read by transformers as 1 warm-up step.
        if not 0 <= self.warmup_ratio < 1:
            raise ValueError(f"warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate}")
        if not self.weight_decay >= 0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay}")
        if not self.max_grad_norm >= 0:
            raise ValueError(f"max_grad_norm must be >= 0 (0: no clipping), got {self.max_grad_norm}")
        if self.save_total_limit < 1:
            raise ValueError(f"save_total_limit must be >= 1 (checkpoints kept), got {self.save_total_limit}")
        if len(set(self.report_to)) != len(self.report_to):
            raise ValueError(f"report_to lists a tracker twice: {self.report_to}")
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


def check_trackers(trackers: Sequence[str]) -> None:
    """Refuse a ``report_to`` tracker whose package is not installed here.

    Raises:
        ConfigError: names the tracker and the pip command (the pin of ``requirements/cpu.lock``).
    """
    for name in trackers:
        modules, pin = TRACKER_PACKAGES[name]
        if not any(importlib.util.find_spec(m) for m in modules):
            raise ConfigError(
                f"report_to: {name} needs the {modules[0]} package, which is not installed here: "
                f"pip install {pin} (or remove {name} from report_to)"
            )


def tracking_arguments(options: TrainerOptions, ctx: StepContext | None) -> dict[str, Any]:
    """``report_to``, ``run_name`` (``<run>/<step>``) and the trackers' folders (module docstring).

    Sets the environment the trackers read (``TENSORBOARD_LOGGING_DIR``; ``WANDB_DIR``,
    ``WANDB_MODE=offline`` unless set, ``WANDB_PROJECT`` = the run unless set).

    Raises:
        ConfigError: a tracker is not installed (:func:`check_trackers`).
    """
    trackers = list(options.report_to)
    check_trackers(trackers)
    if ctx is None:
        return {"report_to": trackers or "none"}
    folder = ctx.work_dir / store.TRACKING
    if "tensorboard" in trackers:
        user = os.environ.get("R1_TENSORBOARD_DIR")  # one tree for every run: <dir>/<run>/<step>
        os.environ["TENSORBOARD_LOGGING_DIR"] = str(Path(user) / ctx.run / ctx.step if user else folder / "tensorboard")
    if "wandb" in trackers:
        (folder / "wandb").mkdir(parents=True, exist_ok=True)
        os.environ["WANDB_DIR"] = str(folder / "wandb")
        os.environ.setdefault("WANDB_MODE", "offline")
        os.environ.setdefault("WANDB_PROJECT", ctx.run)
    return {
        "report_to": trackers or "none",
        "run_name": f"{ctx.run}/{ctx.step}",
        "project": ctx.run,
        "trackio_space_id": None,
        "trackio_static_space_id": False,
    }


def trainer_arguments(
    options: TrainerOptions, output_dir: Path, dtype: str | None = None, ctx: StepContext | None = None
) -> dict[str, Any]:
    """Keyword arguments of a TRL config (``SFTConfig``, ``GRPOConfig``, ``RewardConfig``, ...)
    that every trainer stage sets the same way; the stage adds its own (loss, data, optimizer).

    ``dtype``: the resolved autocast dtype (default: ``options.dtype`` resolved on this machine).
    ``ctx``: the step, for the trackers' run name and folders (:func:`tracking_arguments`).
    Checkpoints keep the optimizer, scheduler and RNG state, so a resume continues exactly.

    Raises:
        ConfigError: a ``report_to`` tracker is not installed.
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
        disable_tqdm=False,  # progress bar with ETA
        **tracking_arguments(options, ctx),
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


def epoch_seed(seed: int, epoch: int) -> int:
    """The 63-bit seed of one epoch's data order (sha256 of ``"seed:epoch"``)."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{epoch}".encode()).digest()[:8], "little") >> 1


class EpochOrder:
    """A shuffling sampler whose order in each epoch is a function of (``seed``, epoch) alone.

    Wraps transformers' ``LengthGroupedSampler`` (sft and distill: ``group_by_length``) and TRL's
    ``RepeatSampler`` (GRPO). The first draws its permutation from the global torch RNG when an
    epoch starts; on a resume in epoch >= 2 transformers restores the RNG state only *after*
    that, so the resumed epoch was shuffled differently from the uninterrupted one. The second
    seeds its own generator once, when the trainer builds it, so a resumed run's first pass drew
    epoch 1's order whatever epoch it resumed in. Here each pass sets the wrapped sampler's
    ``generator`` to a fresh one seeded with :func:`epoch_seed`; the trainer calls
    :meth:`set_epoch` before every epoch (accelerate's ``DataLoaderShard.set_epoch``, and on
    every rank alike, so the ranks agree on the order). transformers' ``RandomSampler`` needs no
    wrapper: accelerate replaces it by its ``SeedableRandomSampler`` (seeded with
    ``data_seed + epoch``).
    """

    def __init__(self, sampler: Any, seed: int):
        self.sampler, self.seed, self.epoch = sampler, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self):
        import torch

        self.sampler.generator = torch.Generator().manual_seed(epoch_seed(self.seed, self.epoch))
        return iter(self.sampler)


def order_by_epoch(trainer: Any) -> None:
    """Make the trainer's training sampler an :class:`EpochOrder` (seeded with ``data_seed``, else
    ``seed``) when it is one whose order depends on RNG state (see there). Call before ``train``."""
    from transformers.trainer_pt_utils import LengthGroupedSampler

    shuffling: tuple[type, ...] = (LengthGroupedSampler,)
    try:
        from trl.trainer.utils import RepeatSampler

        shuffling += (RepeatSampler,)
    except ImportError:  # an install without TRL trains no GRPO
        pass
    build = trainer._get_train_sampler
    seed = trainer.args.data_seed if trainer.args.data_seed is not None else trainer.args.seed

    def train_sampler(*args, **kwargs):
        sampler = build(*args, **kwargs)
        return EpochOrder(sampler, seed) if isinstance(sampler, shuffling) else sampler

    trainer._get_train_sampler = train_sampler


def stop_at_max_steps(trainer: Any) -> None:
    """Train no epoch once ``max_steps`` is reached. transformers (5.x) resumes from a checkpoint
    at ``max_steps`` into the rest of its epoch and checks the step count only *after* a step: a
    run interrupted between its last checkpoint and its end trained one step too many (global
    step 11 of 10, weights changed). Call before ``train``."""
    run_epoch = trainer._run_epoch

    def guarded(*args, **kwargs):
        if trainer.state.max_steps > 0 and trainer.state.global_step >= trainer.state.max_steps:
            trainer.control.should_training_stop = True
            return None
        return run_epoch(*args, **kwargs)

    trainer._run_epoch = guarded


# ---------------------------------------------------------------------------- phase timings


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
        time_calls(trainer, "_evaluate", timer, "evaluation", absorbing=True)
    guard_checkpoint_space(trainer)
    time_calls(trainer, "_save_checkpoint", timer, "save", absorbing=True)
    _metrics_callback_first(trainer)


def _metrics_callback_first(trainer: Any) -> None:
    """Order the callbacks so the trackers (``report_to``) receive the keys the metrics callback
    adds to each log line (timings, reward counters): the flow and progress-bar callbacks, then
    ours, then the rest. (The progress bar prints the trainer's own keys only.)"""
    callbacks = trainer.callback_handler.callbacks
    ours = [c for c in callbacks if getattr(c, "r1_metrics", False)]
    first = [c for c in callbacks if type(c).__name__ in ("DefaultFlowCallback", "ProgressCallback", "PrinterCallback")]
    rest = [c for c in callbacks if c not in ours and c not in first]
    trainer.callback_handler.callbacks = first + ours + rest


def checkpoint_bytes(trainer: Any) -> int:
    """Bytes a checkpoint will take: the newest one on disk, or (none yet) 12 bytes per
    trainable parameter (float32 weights + AdamW's two float32 moments) plus 4 per frozen one."""
    newest = last_checkpoint(Path(trainer.args.output_dir))
    if newest:
        return sum(f.stat().st_size for f in Path(newest).rglob("*") if f.is_file())
    params = list(trainer.model.parameters())
    return sum(p.numel() * (12 if p.requires_grad else 4) for p in params)


def guard_checkpoint_space(trainer: Any) -> None:
    """Check the space before each checkpoint and turn a save that runs out of it into a clear
    error (module docstring). Installed by :func:`install_phase_timers`.

    Raises (from the save):
        pipeline.store.DiskFullError: names the checkpoint folder and the space needed.
    """
    original = trainer._save_checkpoint

    def save(*args, **kwargs):
        folder = Path(trainer.args.output_dir)
        target = folder / f"checkpoint-{trainer.state.global_step}"
        needed = checkpoint_bytes(trainer)
        if trainer.args.should_save:
            folder.mkdir(parents=True, exist_ok=True)
            store.check_space(folder, needed, f"before writing {target.name} in")
        try:
            return original(*args, **kwargs)
        except Exception as err:
            if not store.is_disk_full(err, folder):
                raise
            if trainer.args.should_save:
                shutil.rmtree(target, ignore_errors=True)  # never resumed from (no trainer_state.json); frees space
            raise store.DiskFullError(target, needed, "writing the checkpoint") from err

    trainer._save_checkpoint = save


# ---------------------------------------------------------------------------- metrics


def metrics_callback(ctx: StepContext, timer: PhaseTimer | None = None, extra: Callable[[], dict] | None = None) -> Any:
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
        r1_metrics = True  # found by _metrics_callback_first

        def __init__(self):
            self.history: list[dict] = []
            self._last: tuple[float, float, int, dict[str, float]] | None = None
            self._optimizer = False
            self._shown: dict[str, float] = {}  # last loss / reward / seconds per step, for r1 status

        def on_train_begin(self, args, state, control, **kwargs):
            if timer is not None:
                timer.listener = ctx.progress.beat  # every phase change proves the step alive
                ctx.progress.phase_source = timer.current
                timer.reset()
            ctx.progress.update(state.global_step, state.max_steps or None, "steps")
            now, totals = timer.snapshot() if timer is not None else (time.perf_counter(), {})
            self._last = (now, time.process_time(), state.global_step, totals)

        def on_pre_optimizer_step(self, args, state, control, **kwargs):
            if timer is not None:
                self._optimizer = timer.enter("optimizer")

        def on_optimizer_step(self, args, state, control, **kwargs):
            if timer is not None:
                timer.exit(self._optimizer)

        def on_step_end(self, args, state, control, **kwargs):
            if state.is_world_process_zero:
                ctx.progress.update(state.global_step, state.max_steps or None, "steps", **self._shown)

        def on_log(self, args, state, control, logs=None, **kwargs):
            if not logs:
                return
            # Added to `logs` itself: the trackers after this callback receive them too.
            if "loss" in logs and self._last is not None and state.global_step > self._last[2]:
                logs.update(self._per_step(state.global_step))
            if extra is not None:
                logs.update(extra())
            record = {"step": state.global_step, **logs}
            self.history.append(record)
            for key in ("loss", "reward", "seconds_per_step"):
                if isinstance(logs.get(key), (int, float)):
                    self._shown[key] = logs[key]
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
                phases = {p: (totals.get(p, 0.0) - totals_then.get(p, 0.0)) / steps for p in ordered(totals)}
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
    :func:`metrics_callback` and :func:`install_phase_timers`).

    A resumed run trains exactly what the uninterrupted run would have: the data order of every
    epoch is a function of (seed, epoch) (:func:`order_by_epoch`), and a checkpoint that already
    reached ``max_steps`` trains nothing more (:func:`stop_at_max_steps`); the trainer then loads
    the checkpoint's weights and state as usual, so :func:`save_final` saves them."""
    started = time.perf_counter()
    order_by_epoch(trainer)
    stop_at_max_steps(trainer)
    if resume.checkpoint is not None and 0 < trainer.args.max_steps <= resume.step:
        trainer.args.eval_on_start = False  # the last measurement was made by the run that got here
    if timer is not None:
        timer.reset()  # the callback resets it again when the loop starts: the gap is the setup
    output = trainer.train(resume_from_checkpoint=resume.checkpoint)
    ended, totals = timer.snapshot() if timer is not None else (time.perf_counter(), {})
    timing: dict[str, float] = {}
    if timer is not None:
        timing["setup"] = timer.started - started
        timing.update({p: totals[p] for p in ordered(totals)})
        timing[OTHER] = ended - timer.started - sum(totals.values())
    return TrainOutcome(output, ended - started, {k: round(v, 3) for k, v in timing.items()})


def save_final(trainer: Any, work_dir: Path, tokenizer: Any) -> Path:
    """Save the trained model and ``tokenizer`` to ``work_dir/model``; returns that folder.

    Every process calls it (FSDP / ZeRO-3 gather the weights); the main process writes the
    files. ``training_args.bin`` is removed (a pickle; the step's ``config.yaml`` says it all).
    In a multi-process run each rank writes its weights digest (``pipeline.distributed``).
    """
    out_dir = Path(work_dir) / "model"
    needed = sum(p.numel() * p.element_size() for p in trainer.model.parameters())
    store.check_space(work_dir, needed, "before saving the model into")
    try:
        trainer.save_model(str(out_dir))  # weights, config, generation config
    except Exception as err:
        if store.is_disk_full(err, work_dir):
            raise store.DiskFullError(out_dir, needed, "saving the model") from err
        raise
    if trainer.accelerator.is_main_process:
        tokenizer.save_pretrained(out_dir)
        (out_dir / "training_args.bin").unlink(missing_ok=True)
    distributed.write_weights_digest(work_dir, trainer)
    return out_dir

"""sft: supervised fine-tuning on chat conversations, with the loss on the assistant's tokens only.

The R1 recipe runs this stage for the **cold-start SFT** (base model on a few hundred long
chain-of-thought answers), for the **SFT on rejection-sampled data** (the base model again, on
the RL checkpoint's filtered samples) and, through ``stages/distill.py``, for **data
distillation** into smaller students. It is TRL's ``SFTTrainer`` with every option that changes
results set explicitly from the config below.

What is trained: each assistant turn's content and its closing end-of-turn token
(``<|im_end|>`` for SmolLM2), so the model learns to stop; system and user turns, role headers
and padding are masked with -100. TRL builds that mask from ``{% generation %}`` markers in the
chat template; models' own templates rarely have them, so training uses a template from
``stages/templates/`` or, for other ChatML models (Qwen2.5-Math), one derived from the model's
own (``pipeline.templates``), that renders byte-for-byte what the model's template renders
(checked before training); the saved model keeps its original template for serving. Padding with
``<|im_end|>`` (SmolLM2's pad token) does not hide the final ``<|im_end|>`` from the loss: TRL
pads labels with -100 by position, not by token id.

Departures from the paper: conversations longer than ``max_length`` tokens are dropped (not
truncated) by default, since a truncated answer never shows its end-of-turn token.

Precision: ``dtype: auto`` (default) trains with bf16 autocast over float32 master weights where
the hardware has fast bf16 (GPUs with bf16, CPUs with AMX or AVX512-BF16) and in plain float32
elsewhere (``pipeline.precision``: without those instructions bf16 matmuls are ~90x slower).
Speed on CPU (SmolLM2-135M, batch 8 x ~276 tokens, one thread, CPU time per step, AMX): bf16
autocast ~160 tokens per CPU-second, float32 ~105. Two threads on an idle 2-core machine should
give roughly 1.7x that (~280 tokens/s); when other CPU-heavy processes share the cores, two
OpenMP threads collapse (measured 20-40 tokens/s):
run with ``OMP_NUM_THREADS=1`` then.

Inputs: ``model`` (step name, alias, folder or hub id); ``dataset`` (a step's ``dataset/``
folder, a local ``.parquet``/``.jsonl`` file or folder, a ``save_to_disk`` folder, or a hub
dataset name; read by ``data.sft.load_messages``) with a ``messages`` column (list of
``{role, content}``; other columns are ignored).
Outputs: ``model/`` (safetensors, tokenizer with the serving chat template, generation config
stopping at the end-of-turn token); ``checkpoints/`` (trainer state: a rerun resumes from the
last one); ``metrics.jsonl`` (loss, learning rate, grad norm, tokens, seconds per optimizer step
and its phases ``timing_s/data|forward|backward|optimizer|save|other``, per logging step; see
``pipeline.trainer``).

Launch: ``r1 sft configs/sft/smollm2-135m/cold_start.yaml``; on several processes
``accelerate launch --config_file configs/accelerate/ddp_cpu.yaml -m pipeline.cli sft FILE``
(no device code here; every rank calls :func:`run`, rank 0 writes ``model/``, each rank
writes its weights digest to ``distributed/rank-<r>.json``; see ``docs/distributed.md``).

Why one file: a stage kind is one module of `stages/` (`stages.kinds()` lists the modules);
`distill` builds on its pieces (`load_model`, `training_template`, `train`), and the scaffolding
every trainer shares is `pipeline/trainer.py`.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import PositiveInt

from data.sft import load_messages
from pipeline import distributed
from pipeline.stage import (
    TIMING_PANEL,
    TRAINER_PANELS,
    StageConfig,
    StageReport,
    StepContext,
    StepResult,
    last_checkpoint,  # noqa: F401  (re-exported: sft.last_checkpoint)
)
from pipeline.timing import PhaseTimer
from pipeline.trainer import (
    EpochTrainerOptions,
    install_phase_timers,
    metrics_callback,
    resume_point,
    save_final,
    trainer_arguments,
    training_precision,
)
from pipeline.trainer import train as run_trainer

TEMPLATES_DIR = Path(__file__).resolve().parent / "templates"
# Runs under `accelerate launch` with several processes (pipeline.distributed): every rank
# trains; shared files are written by the main process (TRL/transformers save on rank 0).
DISTRIBUTED = True
REPORT = StageReport(panels=(*TRAINER_PANELS, TIMING_PANEL))  # the run report draws its loss and learning rate


class TrainingFields(EpochTrainerOptions, StageConfig):
    """The SFT options shared by ``sft`` and ``distill`` (``distill`` trains with this code). The
    trainer options (batch, schedule, precision, checkpoints: ``per_device_train_batch_size``,
    ``num_train_epochs``, ``learning_rate``, ...) are ``pipeline.trainer.EpochTrainerOptions``."""

    dataset: str  # dataset reference with a `messages` column (see the module docstring)
    dataset_split: str = "train"  # split to read: of a hub or saved dataset, or of a folder's split-named files
    max_rows: PositiveInt | None = None  # train on a random sample of N rows (seeded by `seed`), before dropping
    max_length: PositiveInt = 1024  # tokens per conversation (template included)
    overlong: Literal["drop", "truncate"] = "drop"  # conversations over max_length: drop, or keep the start
    training_template: str = "auto"  # "auto", a name in stages/templates/ (e.g. "chatml_train") or a .jinja path
    packing: bool = False  # pack conversations into max_length blocks; needs flash-attention (GPU) to keep them apart
    group_by_length: bool = True  # batch conversations of similar length together: less padding


class Config(TrainingFields):
    """Config of the sft stage."""

    kind: Literal["sft"] = "sft"
    input_fields: ClassVar[dict[str, str]] = {"model": "model", "dataset": "dataset"}
    outputs: ClassVar[dict[str, str]] = {"model": "model"}
    model: str  # model reference: the model to fine-tune
    # Cross-entropy from the LM head in chunks of this many trained (assistant) tokens, each
    # recomputed in the backward: no (batch, length, vocabulary) logits, and prompt/padding
    # positions never projected (stages/common/logprobs.py). None: the model's own loss on CPU
    # (every position's logits), TRL's fused LM head on GPUs.
    loss_chunk_tokens: PositiveInt | None = None
    late_fields: ClassVar[dict[str, Any]] = {"loss_chunk_tokens": None}


def run(config: Config, ctx: StepContext) -> StepResult:
    """Fine-tune ``config.model`` on ``config.dataset``; write ``model/`` into ``ctx.work_dir``."""
    model_path = ctx.resolve_model(config.model)
    with ctx.progress.phase("loading the model"):
        model, tokenizer = load_model(model_path)
    return train(model, tokenizer, config, ctx, summary_prefix=f"SFT of {config.model}")


# ---------------------------------------------------------------------------- shared pieces


def load_model(path: str):
    """``(model, tokenizer)`` from a folder or hub id; weights in float32 (master copy for training)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    return model, tokenizer


_PROBES = [
    [{"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "<think>\n2+2=4\n</think>\n4"}],
    [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "Bye"},
    ],
]


def _renders_like(tokenizer, template: str) -> bool:
    """True when ``template`` renders the probe conversations exactly like the tokenizer's own."""
    for messages in _PROBES:
        for agp in (False, True):
            own = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=agp)
            new = tokenizer.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=agp, chat_template=template
            )
            if own != new:
                return False
    return True


def training_template(tokenizer, choice: str = "auto") -> str:
    """The chat template (with ``{% generation %}`` markers) to train ``tokenizer``'s model with.

    ``auto``: the model's own template if it has markers; else the first file in
    ``stages/templates/`` that renders like it; else, for ChatML templates, one derived from the
    model's own (its default system prompt; ``pipeline.templates``); else TRL's built-in training
    template for it.
    A name or path is used if it renders like the model's template (or the model has none).

    Raises:
        ValueError: no suitable template, or the chosen one renders differently from the model's.
    """
    from trl.chat_template_utils import get_training_chat_template, has_generation_markers

    from pipeline.templates import derive_chatml_training_template

    own = tokenizer.chat_template
    if choice != "auto":
        path = Path(choice) if choice.endswith(".jinja") else TEMPLATES_DIR / f"{choice}.jinja"
        if not path.is_file():
            names = sorted(p.stem for p in TEMPLATES_DIR.glob("*.jinja"))
            raise ValueError(f"training_template {choice!r}: no such file; templates: {', '.join(names)}")
        template = path.read_text()
        if own and not _renders_like(tokenizer, template):
            raise ValueError(
                f"training_template {path} renders conversations differently from the model's "
                "chat template; training and serving would disagree"
            )
        return template
    if own is None:
        raise ValueError("the model has no chat template; set training_template to a .jinja file")
    if has_generation_markers(own):
        return own
    for path in sorted(TEMPLATES_DIR.glob("*.jinja")):
        template = path.read_text()
        if has_generation_markers(template) and _renders_like(tokenizer, template):
            return template
    derived = derive_chatml_training_template(tokenizer)  # ChatML with the model's own system prompt
    if derived is not None and _renders_like(tokenizer, derived):
        return derived
    try:
        return get_training_chat_template(tokenizer) or own
    except ValueError:
        raise ValueError(
            "no training template (with {% generation %} markers) renders like this model's chat "
            f"template; add one to {TEMPLATES_DIR}"
        ) from None


def stop_token_id(tokenizer, template: str) -> int:
    """The token that ends an assistant turn: the last trained token of a rendered assistant turn."""
    out = tokenizer.apply_chat_template(
        _PROBES[0], chat_template=template, tokenize=True, return_dict=True, return_assistant_tokens_mask=True
    )
    trained = [t for t, m in zip(out["input_ids"], out["assistant_masks"]) if m]
    if not trained:
        raise ValueError("the training template marks no assistant tokens")
    return trained[-1]


def _measure(dataset, tokenizer, template: str, max_length: int, overlong: str):
    """Add token counts, drop overlong / assistant-less rows. Returns ``(dataset, stats)``."""

    def count(row):
        out = tokenizer.apply_chat_template(
            row["messages"], chat_template=template, tokenize=True, return_dict=True, return_assistant_tokens_mask=True
        )
        mask = out["assistant_masks"][:max_length]
        return {
            "_tokens": min(len(out["input_ids"]), max_length),
            "_trained": sum(mask),
            "_overlong": len(out["input_ids"]) > max_length,
        }

    rows = len(dataset)
    if rows == 0:  # map() adds no columns to an empty dataset; build_trainer reports "no usable rows"
        return dataset, {
            "rows_in": 0,
            "rows": 0,
            "rows_no_assistant": 0,
            "rows_overlong": 0,
            "tokens_per_epoch": 0,
            "assistant_tokens_per_epoch": 0,
        }
    dataset = dataset.map(count, desc="counting tokens")
    no_assistant = sum(1 for n in dataset["_trained"] if n == 0)
    keep = [
        i
        for i, (n, over) in enumerate(zip(dataset["_trained"], dataset["_overlong"]))
        if n > 0 and not (over and overlong == "drop")
    ]
    overlong_rows = sum(dataset["_overlong"])
    dataset = dataset.select(keep)
    stats = {
        "rows_in": rows,
        "rows": len(dataset),
        "rows_no_assistant": no_assistant,
        "rows_overlong": overlong_rows,
        "tokens_per_epoch": sum(dataset["_tokens"]),
        "assistant_tokens_per_epoch": sum(dataset["_trained"]),
    }
    return dataset.remove_columns(["_tokens", "_trained", "_overlong"]), stats


def sft_arguments(config: TrainingFields, output_dir: Path, dtype: str | None = None, ctx: StepContext | None = None):
    """TRL ``SFTConfig`` from our config; every option that changes results is set here (the ones
    every trainer stage shares by ``pipeline.trainer.trainer_arguments``). ``dtype``: the resolved
    autocast dtype (default: ``config.dtype`` resolved on this machine). ``ctx``: the step, for the
    trackers of ``report_to`` (``pipeline.trainer.tracking_arguments``)."""
    from trl import SFTConfig

    return SFTConfig(
        **trainer_arguments(config, output_dir, dtype, ctx),
        # data
        max_length=config.max_length,
        truncation_mode="keep_start",
        packing=config.packing,
        padding_free=False,
        assistant_only_loss=True,
        completion_only_loss=None,
        dataset_num_proc=None,
        shuffle_dataset=False,  # the sampler shuffles every epoch (seeded)
        train_sampling_strategy="group_by_length" if config.group_by_length else "random",
        remove_unused_columns=True,
        # loss and optimizer
        loss_type="nll",
        optim="adamw_torch_fused",  # fused AdamW has CPU kernels too
        eval_strategy="no",
    )


def _trainer_class():
    """TRL's ``SFTTrainer``, with the model's own cross-entropy as the loss on CPU.

    TRL 1.16 computes the loss through a chunked "fused LM head" that never materialises the
    (batch, length, vocab) logits: a memory win on GPUs, but its CPU fallback (torch ops per
    vocab tile, every position scored) made a training step 1.4x slower than the plain loss
    (SmolLM2-135M, batch 8 x 276 tokens, bf16, one thread: 17-21 s vs 12.5-13 s of CPU time,
    same losses to 3 decimals). Same loss (summed token
    cross-entropy over the labels != -100, divided by the number of such tokens in the batch);
    TRL's ``num_tokens`` and ``mean_token_accuracy`` metrics are kept, ``entropy`` is dropped.

    With ``loss_chunk_tokens`` (any device) the same loss comes from the chunked LM head
    (``stages.common.logprobs.chunked_causal_lm_loss``): only trained positions are projected,
    a chunk at a time.
    """
    import torch
    from transformers import Trainer
    from trl import SFTTrainer

    class PlainLossOnCPUSFTTrainer(SFTTrainer):
        _r1_loss_chunk_tokens: int | None = None  # set by build_trainer from the config

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            if self._r1_loss_chunk_tokens is not None:
                from stages.common.logprobs import chunked_causal_lm_loss

                extra = {k: v for k, v in inputs.items() if k not in ("input_ids", "attention_mask", "labels")}
                # The backbone and head are called directly, not through the forward accelerate
                # wraps in autocast: autocast here, as TRL's GRPO does around its model calls.
                with self.accelerator.autocast():
                    loss, correct, valid = chunked_causal_lm_loss(
                        self.accelerator.unwrap_model(model),
                        inputs["input_ids"],
                        inputs.get("attention_mask"),
                        inputs["labels"],
                        self._r1_loss_chunk_tokens,
                        # as Trainer.compute_loss: the model divides by the window's count only if it takes it
                        num_items_in_batch if self.model_accepts_loss_kwargs else None,
                        **extra,
                    )
                if self.args.average_tokens_across_devices and self.model_accepts_loss_kwargs and num_items_in_batch:
                    loss = loss * self.accelerator.num_processes  # as Trainer.compute_loss
                outputs = None
            elif self.args.device.type != "cpu":
                return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            else:
                loss, outputs = Trainer.compute_loss(
                    self, model, inputs, return_outputs=True, num_items_in_batch=num_items_in_batch
                )
                with torch.no_grad():
                    labels = inputs["labels"][:, 1:]
                    mask = labels != -100
                    correct = ((outputs.logits[:, :-1].argmax(-1) == labels) & mask).sum()
                    valid = mask.sum()
            if model.training:
                with torch.no_grad():
                    valid = self.accelerator.gather_for_metrics(valid).sum()
                    correct = self.accelerator.gather_for_metrics(correct).sum()
                    tokens = self.accelerator.gather_for_metrics(inputs["attention_mask"].sum()).sum().item()
                self._metrics["train"]["mean_token_accuracy"].append((correct / valid.clamp(min=1)).item())
                self._total_train_tokens += tokens
                self._metrics["train"]["num_tokens"] = [self._total_train_tokens]
            return (loss, outputs) if return_outputs else loss

    return PlainLossOnCPUSFTTrainer


def load_training_messages(ref: str | Path, config: TrainingFields):
    """The training rows of ``ref``: :func:`data.sft.load_messages` with the config's
    ``dataset_split``, ``max_rows`` and ``seed``, loaded by each node's main process first.

    A hub dataset is then downloaded once per node: the other ranks wait at a barrier and read
    the cache (they are released too when the main process's load raises, and raise their own).
    """
    with distributed.main_first(local=True):
        return load_messages(ref, config.dataset_split, config.max_rows, config.seed)


def build_trainer(
    model, tokenizer, config: TrainingFields, ctx: StepContext, timer: PhaseTimer | None = None, trainer_class=None
):
    """The ``SFTTrainer`` for ``model`` on ``config.dataset``; returns ``(trainer, stats)``.

    Picks the training template, makes the end-of-turn token the eos, loads and measures the
    dataset (``stats``: rows kept/dropped, tokens and assistant tokens per epoch) and leaves the
    training template on ``tokenizer`` (:func:`train` restores the serving one before saving).
    ``timer``: time the trainer's phases (data, forward, backward, optimizer, save) into it and
    log them with every metrics line (``pipeline.trainer``). ``trainer_class``: called like
    ``SFTTrainer`` (keyword arguments ``model``, ``args``, ``train_dataset``,
    ``processing_class``, ``callbacks``) instead of this module's trainer (``distill`` passes
    its distillation trainer, a subclass).

    Raises:
        ValueError: bad dataset (no ``messages``, no usable rows) or no training template.
    """
    template = training_template(tokenizer, config.training_template)
    _set_stop_token(model, tokenizer, stop_token_id(tokenizer, template))
    dataset = load_training_messages(ctx.resolve_dataset(config.dataset), config)
    dataset, stats = _measure(dataset, tokenizer, template, config.max_length, config.overlong)
    if stats["rows"] == 0:
        raise ValueError(f"{config.dataset}: no usable rows ({stats})")
    tokenizer.chat_template = template  # TRL renders (and masks) with the tokenizer's template
    chosen = training_precision(config)
    trainer = (trainer_class or _trainer_class())(
        model=model,
        args=sft_arguments(config, ctx.checkpoints, chosen.dtype, ctx),
        train_dataset=dataset,
        processing_class=tokenizer,
        callbacks=[metrics_callback(ctx, timer)],
    )
    chunk = getattr(config, "loss_chunk_tokens", None)  # sft's key; distill computes its own loss
    if chunk is not None:
        from stages.common.logprobs import check_chunkable

        check_chunkable(trainer.accelerator.unwrap_model(trainer.model), key="loss_chunk_tokens")
        trainer._r1_loss_chunk_tokens = chunk
    if timer is not None:
        install_phase_timers(trainer, timer)
    stats["precision"] = chosen.as_dict()
    return trainer, stats


def train(
    model,
    tokenizer,
    config: TrainingFields,
    ctx: StepContext,
    summary_prefix: str = "SFT",
    trainer_class=None,
    timer: PhaseTimer | None = None,
) -> StepResult:
    """Train ``model`` on ``config.dataset`` (assistant tokens only) and save it to ``work_dir/model``.

    Resumes from the last checkpoint in ``ctx.checkpoints``. Counts: rows trained on, dropped
    rows, tokens (prompt + answer, per epoch), assistant tokens trained (all epochs), optimizer
    steps, the step resumed from. Metrics: first and last logged loss (mean cross-entropy per
    assistant token, nats), wall time and tokens (prompt + answer) per second of the training
    loop, seconds per optimizer step, and ``timing_s``: seconds per phase of this run
    (``pipeline.trainer.TrainOutcome``). ``trainer_class``: see :func:`build_trainer`;
    ``timer``: the phase timer to use (default: a new one).

    Raises:
        ValueError: see :func:`build_trainer`.
    """
    serving_template = tokenizer.chat_template
    timer = timer or PhaseTimer()
    with ctx.progress.phase("loading the data, building the trainer"):
        trainer, stats = build_trainer(model, tokenizer, config, ctx, timer, trainer_class)
    resume = resume_point(ctx.checkpoints)
    # TRL counts tokens from 0 in every process; continue the count of the interrupted run
    # (TRL's cumulative num_tokens at the checkpoint's last log line: exact when save_steps is a
    # multiple of logging_steps, else short by the steps between that line and the checkpoint).
    trainer._total_train_tokens = tokens_start = int(max(resume.logged("num_tokens"), default=0))
    with ctx.progress.phase("training"):
        outcome = run_trainer(trainer, resume, timer)
    tokenizer.chat_template = serving_template or tokenizer.chat_template  # serve with the model's own template
    with ctx.progress.phase("saving the model"):
        save_final(trainer, ctx.work_dir, tokenizer)

    state = trainer.state
    losses = [entry["loss"] for entry in state.log_history if "loss" in entry]
    tokens_run = trainer._total_train_tokens - tokens_start
    wall, steps_run = outcome.wall_s, state.global_step - resume.step
    dropped = config.overlong == "drop"
    counts = {
        "rows": stats["rows"],
        "rows_dropped_overlong": stats["rows_overlong"] if dropped else 0,
        "rows_truncated": 0 if dropped else stats["rows_overlong"],
        "rows_no_assistant": stats["rows_no_assistant"],
        "tokens_per_epoch": stats["tokens_per_epoch"],
        "tokens_seen": int(trainer._total_train_tokens),  # prompt + answer, padding excluded, all epochs
        "assistant_tokens_trained": round(stats["assistant_tokens_per_epoch"] * (state.epoch or 0)),
        "steps": state.global_step,
        "resumed_from_step": resume.step,
        "processes": trainer.accelerator.num_processes,
    }
    metrics = {
        "loss_first": losses[0] if losses else math.nan,
        "loss_last": losses[-1] if losses else math.nan,
        "train_loss": outcome.output.training_loss if steps_run > 0 else math.nan,  # resumed at max_steps: none
        "train_wall_s": round(wall, 1),
        "tokens_per_s": round(tokens_run / wall, 1) if wall > 0 and tokens_run else math.nan,
        "seconds_per_step": round(wall / steps_run, 2) if steps_run > 0 else math.nan,
        "timing_s": outcome.timing_s,
    }
    summary = (
        f"{summary_prefix}: {counts['rows']} conversations, {state.global_step} steps, "
        f"loss {metrics['loss_first']:.3f} -> {metrics['loss_last']:.3f}"
    )
    return StepResult(
        outputs={"model": "model"},
        counts=counts,
        metrics=metrics,
        summary=summary,
        precision={"training": stats["precision"]},
    )


def _set_stop_token(model, tokenizer, stop_id: int) -> None:
    """Make generation stop at the template's end-of-turn token; pad with the tokenizer's pad.

    The tokenizer's eos becomes the end-of-turn token (TRL and vLLM read it from there) and the
    generation config keeps any other eos ids it had.
    """
    tokenizer.eos_token = tokenizer.convert_ids_to_tokens(stop_id)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    eos = model.generation_config.eos_token_id
    others = [e for e in ([] if eos is None else [eos] if isinstance(eos, int) else eos) if e != stop_id]
    model.generation_config.eos_token_id = [stop_id, *others] if others else stop_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.config.eos_token_id = stop_id
    model.config.pad_token_id = tokenizer.pad_token_id

"""distill: a smaller student learns from a teacher -- from its data, its logits, its features.

DeepSeek-R1 distils its reasoning into small dense models by plain supervised fine-tuning on
the samples the large model generated (**data distillation**). The recipe also names **logits
distillation** (match the teacher's distribution, not only its chosen token: Hinton et al.
2015; on-policy variants, Agarwal et al. 2024) and **feature distillation** (align hidden
states: DistilBERT, TinyBERT). This stage trains the student with any weighted combination:

    loss = w_sft * CE(student, teacher's tokens)                 (`sft`: data distillation)
         + w_logits * T^2 * D_beta(teacher_T || student_T)       (`logits`: forward/reverse KL, JSD)
         + w_features * mean_layers dist(W h_student, h_teacher) (`features`: MSE or cosine)

each a mean over the trained tokens of a batch (the assistant tokens of the dataset's
conversations; the completion tokens of an on-policy sample). Every term and its weight is
logged per step (``term/<name>``, ``weight/<name>`` in ``metrics.jsonl``). Formulas, sources
and the top-k variant: ``stages/common/distillation.py``.

**Off-policy and on-policy.** By default the student trains on the dataset's responses. With
``on_policy.fraction`` = lambda > 0 (GKD's lmbda), that share of the batches is replaced by the
student's own samples for the same prompts (``on_policy.backend``: TRL's colocated vLLM engine
with the project's CPU weight sync, ``stages/common/vllm_sync.py``, or transformers
``generate``), which the teacher scores token by token; the ``sft`` term is skipped on those
batches (the student's own samples are not the teacher's data). Which batches go on-policy is
a function of (seed, optimizer step, micro-batch), so a resumed run makes the same choices.

**The teacher** runs frozen (``requires_grad=False``), in eval mode, without gradients, in the
fast dtype of the hardware (``teacher_dtype: auto``, ``pipeline.precision``: bf16 on this CPU).
With ``teacher_logits: cached`` its top-k log-probabilities on the dataset's tokens are
computed once, before the first step, and stored in the step folder
(``teacher_topk/data.parquet``, checked row by row against the tokens on reuse), so epochs and a
resumed run never rerun it; ``live`` runs the teacher in every step (needed for on-policy
batches and for ``features``, which use its hidden states; with ``features`` the logits come
from that same live pass).

**Why not TRL's distillation trainers** (read in TRL 1.16's source): ``DistillationTrainer`` is
on-policy only (off-policy and ``lmbda`` were removed, trl#6460), prompt-only, with no
cross-entropy term, no features, no stored teacher logits and no T^2 scaling;
``experimental.GKDTrainer`` has ``lmbda`` and ``beta`` but applies its temperature to sampling
only (trl#5731), has no top-k, no features and no extra loss terms, and samples with
``generate`` only. So the trainer here is the ``sft`` stage's ``SFTTrainer`` (same data
pipeline, templates, masks and checkpoints) with its own ``compute_loss``; the dense
divergence is TRL's ``GKDTrainer.generalized_jsd_loss``.

**Students.** ``student: derived`` (default) cuts the student out of the teacher:
``prune: depth`` keeps whole decoder layers, evenly spaced (``student_layers``, or the most
that fit in ``student_size``, a fraction of the teacher's parameters); ``prune: width`` keeps
every layer but only the most important MLP channels and query heads, by their activations on
``calibration_rows`` of the dataset (Minitron; ``stages/common/pruning.py``), sized by
``student_size``. Or any model reference (``student: <alias | folder | hub id | step>``),
trained with its own tokenizer and chat template; ``logits`` and ``features`` need the
teacher's vocabulary, so a student whose tokenizer differs is refused for them (both
tokenizers named in the error; ``sft`` alone still works).

Inputs: ``teacher`` (model reference), ``dataset`` (SFT rows with ``messages``), ``student``
when it is a model reference.
Outputs: ``model/`` (the trained student, like ``sft``), ``checkpoints/``, ``metrics.jsonl``,
``teacher_topk/`` (with ``teacher_logits: cached``).

Launch: ``r1 distill configs/distill/smollm2-135m/derived_student.yaml`` (several processes:
``accelerate launch --config_file configs/accelerate/ddp_cpu.yaml -m pipeline.cli distill FILE``,
as for ``sft``; see ``docs/distributed.md``)

Why one file: a stage kind is one module of `stages/` (its config, `run` and trainer;
`stages.kinds()` lists the modules), and the parts of this one share its config: the trainer
reads every loss term, the teacher cache and the on-policy options. The formulas are in
`stages/common/distillation.py` and the cutting of a student in `stages/common/pruning.py`; what
stays is the config (~130 lines), the run (~180) and the trainer (~450), each a section below.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field, PositiveInt, model_validator

from pipeline import precision
from pipeline.config import StrictModel
from pipeline.precision import DtypeChoice
from pipeline.stage import TIMING_PANEL, TRAINER_PANELS, Panel, StageReport, StepContext, StepResult
from stages.common.pruning import derive_by_depth, layer_indices
from stages.sft import TrainingFields

DERIVED = "derived"
derive_student = derive_by_depth  # the depth-derived student (stages/common/pruning.py)
TERMS = ("sft", "logits", "features")
# Runs under `accelerate launch` with several processes, like sft (whose training code it uses):
# every rank derives the same student from the teacher, then trains its share of each batch.
DISTRIBUTED = True
REPORT = StageReport(
    panels=(
        *TRAINER_PANELS,
        Panel("loss terms (unweighted)", pattern="term/*"),
        Panel("on-policy share of batches", ("on_policy",), optional=True),
        TIMING_PANEL,
    )
)


# ---------------------------------------------------------------------------- config


class SftTerm(StrictModel):
    """Cross-entropy on the dataset's (the teacher's) tokens: data distillation."""

    weight: float = Field(1.0, gt=0)  # multiplies the term in the loss


class LogitsTerm(StrictModel):
    """Divergence between the teacher's and the student's next-token distributions."""

    weight: float = Field(1.0, gt=0)  # multiplies the term in the loss
    # forward_kl: KL(teacher || student) (Hinton); reverse_kl: KL(student || teacher)
    # (mode-seeking, on-policy distillation); jsd: generalised JSD with `beta` (GKD).
    divergence: Literal["forward_kl", "reverse_kl", "jsd"] = "forward_kl"
    beta: float = Field(0.5, ge=0, le=1)  # jsd only: 0 = forward KL, 1 = reverse KL (TRL's convention)
    temperature: float = Field(1.0, gt=0)  # T: both distributions softened by T, the term scaled by T^2
    # Compare on the teacher's k most likely tokens + "the rest" (k + 1 outcomes); null = the
    # whole vocabulary (live teacher only). 64 keeps >99.9% of a 135M teacher's mass here.
    top_k: PositiveInt | None = 64


class FeaturesTerm(StrictModel):
    """Distance between the student's and the teacher's hidden states, layer by layer."""

    weight: float = Field(1.0, gt=0)  # multiplies the term in the loss
    distance: Literal["mse", "cosine"] = "cosine"  # per token: mean squared difference, or 1 - cosine
    # student layer -> teacher layer (0-based decoder layers; a layer's hidden state is its
    # output, the last layer's after the final norm, as transformers returns it). null: a
    # derived student's map (depth: each student layer to the teacher layer it was copied
    # from; width: layer i to layer i); required for a model-reference student.
    layer_map: dict[int, int] | None = None


class Loss(StrictModel):
    """The loss terms; any combination, at least one (a missing term is not used)."""

    sft: SftTerm | None = None
    logits: LogitsTerm | None = None
    features: FeaturesTerm | None = None

    @model_validator(mode="after")
    def _some_term(self):
        if not self.terms():
            raise ValueError(f"loss: give at least one term of {', '.join(TERMS)}")
        return self

    def terms(self) -> list[str]:
        return [t for t in TERMS if getattr(self, t) is not None]


class OnPolicy(StrictModel):
    """Student-sampled batches (GKD, Agarwal et al. 2024): the student writes the responses."""

    fraction: float = Field(0.0, ge=0, le=1)  # lambda: share of batches sampled by the student; 0 = off-policy only
    backend: Literal["vllm", "hf"] = "hf"  # vllm: colocated engine + weight sync; hf: transformers generate
    max_new_tokens: PositiveInt = 128  # tokens per sampled response
    temperature: float = Field(1.0, gt=0)  # sampling temperature (1.0: the student's own distribution)
    top_p: float = Field(1.0, gt=0, le=1)  # nucleus sampling
    vllm_kv_cache_gib: int = 2  # vllm on CPUs: KV cache size (GiB)
    vllm_dtype: DtypeChoice = "auto"  # vllm engine weights; auto = the fast dtype of the hardware


class Config(TrainingFields):
    """Config of the distill stage (training options: ``stages.sft.TrainingFields``, whose trainer
    options are ``pipeline.trainer.EpochTrainerOptions``)."""

    kind: Literal["distill"] = "distill"
    input_fields: ClassVar[dict[str, str]] = {"teacher": "model", "dataset": "dataset", "student": "model"}
    outputs: ClassVar[dict[str, str]] = {"model": "model"}
    headline: ClassVar[tuple[str, ...]] = ("rows", "steps", "student_params_ratio", "loss_first", "loss_last")
    teacher: str  # model reference: the model whose data, logits and features the student learns from
    student: str = DERIVED  # "derived" (cut out of the teacher, see `prune`) or a model reference
    prune: Literal["depth", "width"] = "depth"  # derived student: drop whole layers, or MLP channels and heads
    # Derived student's size as a fraction of the teacher's parameters (the largest student
    # that fits); depth: alternative to student_layers; width: required.
    student_size: float | None = Field(None, gt=0, lt=1)
    student_layers: PositiveInt | None = None  # depth: decoder layers kept; default a third of the teacher's
    student_heads: PositiveInt | None = (
        None  # width: query heads kept (multiple of the KV heads); default: see pruning.width_plan
    )
    calibration_rows: PositiveInt = 64  # width: dataset conversations whose activations rank channels and heads
    loss: Loss = Loss(sft=SftTerm())  # the terms; default: data distillation only
    teacher_logits: Literal["cached", "live"] = (
        "cached"  # logits term, off-policy batches: stored top-k, or run the teacher every step
    )
    teacher_dtype: DtypeChoice = "auto"  # the frozen teacher's weights; auto = the fast dtype of the hardware
    on_policy: OnPolicy = OnPolicy()  # student-sampled batches (fraction 0: none)

    @model_validator(mode="after")
    def _check_student(self):
        derived_only = [
            k for k in ("student_layers", "student_size", "student_heads", "prune") if k in self.model_fields_set
        ]
        if self.student != DERIVED and derived_only:
            raise ValueError(
                f"{', '.join(derived_only)} appl{'ies' if len(derived_only) == 1 else 'y'} only to student: derived"
            )
        if self.student_layers is not None and self.student_size is not None:
            raise ValueError("set student_layers or student_size, not both")
        if self.prune == "width":
            if self.student_layers is not None:
                raise ValueError("student_layers applies to prune: depth; prune: width keeps every layer")
            if self.student_size is None:
                raise ValueError("prune: width needs student_size (the fraction of the teacher's parameters to keep)")
        elif self.student_heads is not None:
            raise ValueError("student_heads applies to prune: width")
        features = self.loss.features
        if features is not None and features.layer_map is None and self.student != DERIVED:
            raise ValueError(
                "loss.features.layer_map: required when the student is a model reference (a derived "
                "student's map is the layers it was cut from); give {student_layer: teacher_layer, ...}"
            )
        logits = self.loss.logits
        if logits is not None and logits.top_k is None and self.teacher_logits == "cached":
            raise ValueError(
                "loss.logits.top_k: teacher_logits: cached stores the teacher's top-k log-probabilities; "
                "set top_k, or teacher_logits: live for the whole vocabulary"
            )
        if self.on_policy.fraction > 0 and logits is None and features is None:
            raise ValueError(
                "on_policy.fraction > 0 needs a logits or features term (the teacher scores the "
                "student's samples; sft is skipped on them)"
            )
        return self

    def inputs(self) -> dict[str, str]:
        out = super().inputs()
        if self.student == DERIVED:
            out.pop("student")  # not a reference: the student is built from the teacher
        return out

    def needs_teacher_model(self) -> bool:
        """The teacher's weights are needed: derived student, logits/features terms, on-policy."""
        return self.student == DERIVED or self.loss.logits is not None or self.loss.features is not None


# ---------------------------------------------------------------------------- run


@dataclass
class Student:
    """The student and how it was made: ``layer_map`` (student layer -> teacher layer, for the
    features term), ``description`` (summary line), ``metrics`` for the manifest."""

    model: Any
    tokenizer: Any
    layer_map: dict[int, int] | None
    description: str
    metrics: dict = field(default_factory=dict)


def run(config: Config, ctx: StepContext) -> StepResult:
    """Build (or load) the student and distil ``config.teacher`` into it on ``config.dataset``;
    write ``model/``.

    Raises:
        ValueError: a student whose tokenizer differs from the teacher's with a logits or
            features term; a layer map outside the models' layers; a pruning the sizes refuse.
    """
    from pipeline.timing import PhaseTimer
    from stages import sft

    teacher = tokenizer = None
    if config.needs_teacher_model():
        teacher, tokenizer = sft.load_model(ctx.resolve_model(config.teacher))
    if config.student == DERIVED:
        student = derive(config, teacher, tokenizer, ctx)
    else:
        model, student_tokenizer = sft.load_model(ctx.resolve_model(config.student))
        if teacher is not None:
            check_same_vocabulary(tokenizer, student_tokenizer, config)
        student = Student(
            model,
            student_tokenizer,
            config.loss.features.layer_map if config.loss.features else None,
            f"student {config.student}",
        )
    if config.loss.features is not None:
        assert teacher is not None  # a features term needs the teacher's weights (needs_teacher_model)
        check_layer_map(student.layer_map, student.model.config.num_hidden_layers, teacher.config.num_hidden_layers)
    teacher_params = sum(p.numel() for p in teacher.parameters()) if teacher is not None else None
    if teacher is not None and not (config.loss.logits or config.loss.features):
        teacher = None  # only its weights were needed (a derived student); free them
    elif teacher is not None:
        freeze_teacher(teacher, config.teacher_dtype)

    timer = PhaseTimer()
    made: list = []

    def make_trainer(**kwargs):
        made.append(
            DistillTrainer(teacher=teacher, config=config, ctx=ctx, layer_map=student.layer_map, timer=timer, **kwargs)
        )
        return made[-1]

    try:
        result = sft.train(
            student.model,
            student.tokenizer,
            config,
            ctx,
            summary_prefix=f"distill into {student.description}",
            trainer_class=make_trainer,
            timer=timer,
        )
    finally:
        for trainer in made:
            trainer.close()
    n_student = sum(p.numel() for p in student.model.parameters())
    result.counts["student_layers"] = student.model.config.num_hidden_layers
    result.counts["student_params"] = n_student
    if teacher_params:
        result.counts["teacher_params"] = teacher_params
        result.metrics["student_params_ratio"] = round(n_student / teacher_params, 4)
    result.metrics.update(student.metrics)
    trainer = made[-1] if made else None
    if trainer is not None:
        result.metrics["loss_terms"] = {t: getattr(config.loss, t).weight for t in config.loss.terms()}
        result.metrics.update(trainer.summary())
        if trainer.teacher_precision is not None:
            result.precision["teacher"] = trainer.teacher_precision
    return result


def derive(config: Config, teacher, tokenizer, ctx: StepContext) -> Student:
    """The derived student of ``config`` cut out of ``teacher`` (float32 master weights)."""
    from stages.common import pruning

    n_teacher = teacher.config.num_hidden_layers
    if config.prune == "depth":
        if config.student_size is not None:
            n = pruning.depth_for_ratio(teacher.config, config.student_size)
        else:
            n = config.student_layers or max(1, round(n_teacher / 3))
        keep = layer_indices(n_teacher, n)
        model = derive_by_depth(teacher, keep)
        return Student(
            model,
            tokenizer,
            {j: i for j, i in enumerate(keep)},
            f"{len(keep)}-layer student of {config.teacher} (teacher layers {keep})",
            {"teacher_layers_kept": keep},
        )
    assert config.student_size is not None  # prune: width requires it (Config validator)
    plan = pruning.width_plan(teacher.config, config.student_size, config.student_heads)
    batches = calibration_batches(config, ctx, tokenizer)
    fast = precision.resolve(config.teacher_dtype).dtype
    importance = pruning.activation_importance(teacher, batches, precision.torch_dtype(fast))
    kv_heads = getattr(teacher.config, "num_key_value_heads", None) or teacher.config.num_attention_heads
    channels, heads = pruning.select_width(importance, plan, kv_heads)
    model = pruning.derive_by_width(teacher, channels, heads)
    return Student(
        model,
        tokenizer,
        {i: i for i in range(n_teacher)},
        f"width-pruned student of {config.teacher} ({plan.intermediate_size}/"
        f"{teacher.config.intermediate_size} MLP channels, {plan.heads}/{teacher.config.num_attention_heads} "
        f"heads per layer)",
        {
            "width": {
                "intermediate_size": plan.intermediate_size,
                "heads": plan.heads,
                "calibration_sequences": importance.sequences,
                "heads_kept": heads,
            }
        },
    )


def calibration_batches(config: Config, ctx: StepContext, tokenizer, batch_size: int = 8):
    """Batches (``input_ids``, ``attention_mask``; right-padded) of the first
    ``config.calibration_rows`` conversations of a seeded shuffle of the dataset, rendered with
    the tokenizer's chat template and cut at ``config.max_length`` tokens."""
    import torch

    from data.sft import load_messages

    rows = load_messages(ctx.resolve_dataset(config.dataset), config.dataset_split, config.max_rows, config.seed)
    rows = rows.shuffle(seed=config.seed).select(range(min(config.calibration_rows, len(rows))))
    encoded = [
        tokenizer.apply_chat_template(r["messages"], tokenize=True, return_dict=True)["input_ids"][: config.max_length]
        for r in rows
    ]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    for start in range(0, len(encoded), batch_size):
        chunk = encoded[start : start + batch_size]
        width = max(len(x) for x in chunk)
        ids = torch.full((len(chunk), width), pad, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for i, x in enumerate(chunk):
            ids[i, : len(x)] = torch.tensor(x)
            mask[i, : len(x)] = 1
        yield {"input_ids": ids, "attention_mask": mask}


def tokenizer_name(tokenizer) -> str:
    """How an error names a tokenizer: its path or hub id, class and vocabulary size."""
    return f"{tokenizer.name_or_path or '?'} ({type(tokenizer).__name__}, {len(tokenizer)} tokens)"


def check_same_vocabulary(teacher_tokenizer, student_tokenizer, config: Config) -> None:
    """Refuse logits/features distillation between different tokenizers.

    Raises:
        ValueError: the vocabularies (token -> id) differ while a logits or features term is
            set; the message names both tokenizers.
    """
    terms = [t for t in ("logits", "features") if getattr(config.loss, t) is not None]
    if not terms or teacher_tokenizer.get_vocab() == student_tokenizer.get_vocab():
        return
    raise ValueError(
        f"loss terms {' and '.join(terms)} compare the teacher and the student token by token and need the same "
        f"vocabulary: teacher tokenizer {tokenizer_name(teacher_tokenizer)} differs from student tokenizer "
        f"{tokenizer_name(student_tokenizer)}. Use a student with the teacher's tokenizer, or data distillation "
        "only (loss: {sft: {weight: 1.0}})"
    )


def check_layer_map(layer_map: dict[int, int] | None, n_student: int, n_teacher: int) -> None:
    """Raises ValueError (naming ``loss.features.layer_map``) for layers outside either model."""
    bad = {s: t for s, t in (layer_map or {}).items() if not (0 <= s < n_student and 0 <= t < n_teacher)}
    if not layer_map or bad:
        raise ValueError(
            f"loss.features.layer_map: {bad or 'empty'}: student layers must be in [0, {n_student}) "
            f"and teacher layers in [0, {n_teacher})"
        )


def freeze_teacher(teacher, dtype: str) -> None:
    """Eval mode, no gradients, weights in ``dtype`` resolved for this hardware."""
    chosen = precision.resolve(dtype, what="teacher")
    precision.announce(chosen, "teacher")
    teacher.to(precision.torch_dtype(chosen.dtype))
    teacher.eval()
    teacher.requires_grad_(False)
    teacher._r1_precision = chosen.as_dict()


# ---------------------------------------------------------------------------- the trainer


def _unit_draw(*parts) -> float:
    """A number in [0, 1) that depends only on ``parts`` (sha256): reproducible across resumes."""
    digest = hashlib.sha256(":".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def trained_positions(labels):
    """(row, position) index tensors of the positions whose next token is trained: position
    ``t`` predicts token ``t + 1``, trained when ``labels[t + 1] != -100``."""
    rows, cols = (labels[:, 1:] != -100).nonzero(as_tuple=True)
    return rows, cols


def DistillTrainer(*, teacher, config: Config, ctx: StepContext, layer_map, timer, **kwargs):  # noqa: N802
    """The distillation trainer: ``stages.sft``'s ``SFTTrainer`` with :meth:`compute_loss`
    replaced by the weighted terms (module docstring). Built like ``SFTTrainer`` (``kwargs``);
    ``teacher``: the frozen teacher (None for ``sft`` alone)."""
    from stages import sft

    base = sft._trainer_class()
    cls = type("DistillTrainer", (_DistillMixin, base), {})
    return cls(teacher=teacher, config=config, ctx=ctx, layer_map=layer_map, timer=timer, **kwargs)


class _DistillMixin:
    """The distillation parts of the trainer (mixed into ``stages.sft``'s SFT trainer)."""

    # compute_loss returns the micro-batch's mean over its own tokens; the Trainer divides by
    # the gradient-accumulation steps (an on-policy batch has other tokens than the dataset's,
    # so transformers' dataset-based token count cannot normalise it).
    loss_is_scaled_for_ga = False

    # Attributes and methods of the transformers Trainer this class is mixed into, declared for
    # the type checker (annotations only: nothing is set on the class).
    model: Any
    args: Any
    state: Any
    accelerator: Any
    processing_class: Any
    train_dataset: Any
    data_collator: Any
    autocast_smart_context_manager: Callable[..., Any]

    def __init__(self, *, teacher, config: Config, ctx: StepContext, layer_map, timer, **kwargs):
        self.distill = config
        self.teacher = teacher
        self.teacher_precision = getattr(teacher, "_r1_precision", None)
        self.ctx = ctx
        self.layer_map = layer_map if config.loss.features is not None else None
        self._timer = timer
        self._micro = 0
        self._vllm: Any = None  # TRL's VLLMGeneration, started on the first on-policy batch
        self._vllm_step = -1
        self._cache_stats: dict = {}
        self._on_policy_counts = {"batches": 0, "on_policy": 0, "tokens": 0, "truncated": 0}
        super().__init__(**kwargs)
        tokenizer = self.processing_class
        self._stop_ids = [tokenizer.eos_token_id]
        self.projections = None
        if self.layer_map is not None:
            from stages.common.distillation import feature_projections

            self.projections = feature_projections(
                self.layer_map, self.model.config.hidden_size, teacher.config.hidden_size
            )
            if self.projections is not None:
                if self.accelerator.num_processes > 1:
                    # Not wrapped in DDP: its gradients would not be averaged and the ranks would drift apart.
                    raise ValueError(
                        "loss.features: a student of another hidden size needs a learned projection, "
                        "which is trained in single-process runs only; run without accelerate launch"
                    )
                self.projections.to(self.args.device)
        if teacher is not None:
            teacher.to(self.args.device)
        if config.loss.logits is not None and config.teacher_logits == "cached":
            self._attach_teacher_cache()
        if config.on_policy.fraction > 0 and config.on_policy.backend == "vllm":
            self._start_vllm()
        from pipeline import timing

        timing.time_calls(self, "_teacher_forward", timer, "teacher")
        timing.time_calls(self, "_sample", timer, "generation")

    # ------------------------------------------------------------------ data: cached teacher

    def _set_signature_columns_if_needed(self):
        super()._set_signature_columns_if_needed()
        if self._signature_columns is not None:
            for name in ("teacher_topk_ids", "teacher_topk_logprobs"):
                if name not in self._signature_columns:
                    self._signature_columns.append(name)

    def _attach_teacher_cache(self) -> None:
        """Add the teacher's top-k columns to the train dataset (computed once, or read back from
        ``work_dir/teacher_topk``) and a collator that turns them into (batch, length, k) tensors."""
        from datasets import Dataset

        term = self.distill.loss.logits
        assert term is not None  # called for a logits term only
        folder = self.ctx.work_dir / "teacher_topk"
        key = {
            "teacher": self.distill.teacher,
            "top_k": term.top_k,
            "temperature": term.temperature,
            "teacher_dtype": self.teacher_precision["dtype"] if self.teacher_precision else None,
            "teacher_config_sha256": hashlib.sha256(self.teacher.config.to_json_string().encode()).hexdigest(),
        }
        hashes = [hashlib.sha256(json.dumps(row["input_ids"]).encode()).hexdigest() for row in self.train_dataset]
        cached = _read_cache(folder, key, hashes)
        if cached is None:
            import time

            started = time.perf_counter()
            ids, logprobs = self._compute_teacher_topk()
            _write_cache(
                folder,
                key,
                Dataset.from_dict(
                    {"tokens_sha256": hashes, "teacher_topk_ids": ids, "teacher_topk_logprobs": logprobs}
                ),
            )
            self._cache_stats = {"teacher_topk_computed_s": round(time.perf_counter() - started, 1)}
        else:
            ids, logprobs = cached
            self._cache_stats = {"teacher_topk_reused": True}
        self._cache_stats["teacher_topk_rows"] = len(ids)
        self.train_dataset = self.train_dataset.add_column("teacher_topk_ids", ids).add_column(
            "teacher_topk_logprobs", logprobs
        )
        self.data_collator = _TopKCollator(self.data_collator)

    def _compute_teacher_topk(self, batch_size: int = 8):
        """The teacher's top-k (ids, log-probs at T) at every trained position of every row,
        as nested lists (rows -> positions -> k)."""
        import torch

        from stages.common.distillation import teacher_topk

        term = self.distill.loss.logits
        # called for a cached logits term only, which has a top_k (Config validator)
        assert term is not None and term.top_k is not None
        pad = self.processing_class.pad_token_id
        out_ids, out_lp = [], []
        rows = list(self.train_dataset)
        for start in range(0, len(rows), batch_size):
            chunk = rows[start : start + batch_size]
            width = max(len(r["input_ids"]) for r in chunk)
            ids = torch.full((len(chunk), width), pad, dtype=torch.long)
            mask = torch.zeros_like(ids)
            labels = torch.full_like(ids, -100)
            for i, r in enumerate(chunk):
                n = len(r["input_ids"])
                ids[i, :n], mask[i, :n], labels[i, :n] = (torch.tensor(r["input_ids"]), 1, torch.tensor(r["labels"]))
            with torch.no_grad():
                logits = self._teacher_forward(ids.to(self.args.device), mask.to(self.args.device))[0]
            for i in range(len(chunk)):
                pos = (labels[i, 1:] != -100).nonzero(as_tuple=True)[0]
                top = teacher_topk(logits[i, pos], term.top_k, term.temperature)
                out_ids.append(top.ids.to(torch.int32).tolist())
                out_lp.append(top.logprobs.float().tolist())
        return out_ids, out_lp

    # ------------------------------------------------------------------ teacher

    def _teacher_forward(self, input_ids, attention_mask, hidden: bool = False):
        """``(logits, hidden_states)`` of the frozen teacher (no gradients); ``hidden_states``
        None unless ``hidden``."""
        import torch

        with torch.no_grad():
            out = self.teacher(
                input_ids=input_ids, attention_mask=attention_mask, use_cache=False, output_hidden_states=hidden
            )
        return out.logits, (out.hidden_states if hidden else None)

    # ------------------------------------------------------------------ on-policy

    def _on_policy_now(self) -> bool:
        fraction = self.distill.on_policy.fraction
        if fraction <= 0:
            return False
        micro = self._micro % self.args.gradient_accumulation_steps
        return _unit_draw(self.distill.seed, "on_policy", self.state.global_step, micro) < fraction

    def _start_vllm(self) -> None:
        """TRL's colocated vLLM engine on the student (saved to ``work_dir/student_init`` for it to
        load), synced with the project's CPU weight sync before each step's first sampling."""
        from trl.generation.vllm_generation import VLLMGeneration

        from stages.common import vllm_sync
        from stages.grpo import reserve_rendezvous_port

        opts = self.distill.on_policy
        init = self.ctx.work_dir / "student_init"
        if not (init / "config.json").is_file():
            self.model.save_pretrained(init)
            self.processing_class.save_pretrained(init)
        self.model.name_or_path = str(init)
        reserve_rendezvous_port()
        on_cpu = vllm_sync.on_cpu_platform()
        chosen = precision.resolve(opts.vllm_dtype, what="on-policy sampling")
        precision.announce(chosen, "on-policy sampling")
        with vllm_sync.engine_options(
            cpu_kv_cache_gib=opts.vllm_kv_cache_gib if on_cpu else None, dtype=chosen.dtype, enforce_eager=on_cpu
        ):
            self._vllm = VLLMGeneration(
                model=self.model,
                accelerator=self.accelerator,
                processing_class=self.processing_class,
                mode="colocate",
                max_model_length=self.distill.max_length + opts.max_new_tokens,
                max_num_seqs=self.args.per_device_train_batch_size,
                temperature=opts.temperature,
                top_p=opts.top_p,
                max_completion_length=opts.max_new_tokens,
                logprobs=None,
                generation_kwargs={"stop_token_ids": self._stop_ids},
                gpu_memory_utilization=0.3,
            )
        if on_cpu:
            vllm_sync.install_cpu_weight_sync(self._vllm)
        from pipeline import timing

        timing.time_calls(self._vllm, "sync_weights", self._timer, "weight_sync", escape=True)

    def _sample(self, prompts: list[list[int]]) -> list[list[int]]:
        """The student's completion token ids for each prompt (ids, chat template applied),
        ending with the stop token unless cut at ``on_policy.max_new_tokens``."""
        import torch

        opts = self.distill.on_policy
        if self._vllm is not None:
            if self.state.global_step != self._vllm_step:
                self._vllm.sync_weights()
                self._vllm_step = self.state.global_step
            _, completions, _, _ = self._vllm.generate(prompts=prompts, images=None, num_generations=1)
            return [list(c) for c in completions]
        model = self.accelerator.unwrap_model(self.model)
        pad = self.processing_class.pad_token_id
        width = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), width), pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, p in enumerate(prompts):  # left padding for generation
            ids[i, width - len(p) :], mask[i, width - len(p) :] = torch.tensor(p), 1
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad(), self.autocast_smart_context_manager():
                out = model.generate(
                    input_ids=ids.to(self.args.device),
                    attention_mask=mask.to(self.args.device),
                    do_sample=True,
                    temperature=opts.temperature,
                    top_p=opts.top_p,
                    top_k=0,
                    max_new_tokens=opts.max_new_tokens,
                    eos_token_id=self._stop_ids,
                    pad_token_id=pad,
                )
        finally:
            model.train(was_training)
        completions = []
        for row in out[:, width:].tolist():
            cut = next((i + 1 for i, t in enumerate(row) if t in self._stop_ids), len(row))
            completions.append(row[:cut])
        return completions

    def _on_policy_batch(self, inputs: dict) -> dict:
        """The batch rebuilt from the student's samples: each row's prompt (its tokens before the
        first trained one) + the student's completion; labels on the completion only."""
        import torch

        labels, ids = inputs["labels"], inputs["input_ids"]
        prompts = []
        for i in range(ids.shape[0]):
            trained = (labels[i] != -100).nonzero(as_tuple=True)[0]
            first = int(trained[0]) if len(trained) else int(inputs["attention_mask"][i].sum())
            prompts.append(ids[i, :first].tolist())
        completions = self._sample(prompts)
        rows = [(p + c)[: self.distill.max_length] for p, c in zip(prompts, completions)]
        width = max(len(r) for r in rows)
        pad = self.processing_class.pad_token_id
        new_ids = torch.full((len(rows), width), pad, dtype=torch.long)
        new_mask = torch.zeros_like(new_ids)
        new_labels = torch.full_like(new_ids, -100)
        for i, (p, r) in enumerate(zip(prompts, rows)):
            new_ids[i, : len(r)], new_mask[i, : len(r)] = torch.tensor(r), 1
            new_labels[i, len(p) : len(r)] = torch.tensor(r[len(p) :], dtype=torch.long)
        counts = self._on_policy_counts
        counts["tokens"] += sum(len(c) for c in completions)
        counts["truncated"] += sum(1 for c in completions if not c or c[-1] not in self._stop_ids)
        counts["samples"] = counts.get("samples", 0) + len(completions)
        device = ids.device
        return {"input_ids": new_ids.to(device), "attention_mask": new_mask.to(device), "labels": new_labels.to(device)}

    def training_step(self, model, inputs, num_items_in_batch=None):
        on_policy = self._on_policy_now()
        self._micro += 1
        self._on_policy_counts["batches"] += 1
        if on_policy:
            self._on_policy_counts["on_policy"] += 1
            inputs = self._on_policy_batch(inputs)
        inputs["on_policy"] = on_policy
        return super().training_step(model, inputs, num_items_in_batch)

    # ------------------------------------------------------------------ the loss

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        import torch

        from stages.common.distillation import TopK, beta_of, feature_distance, logits_divergence, teacher_topk

        loss_cfg = self.distill.loss
        on_policy = bool(inputs.pop("on_policy", False))
        cached_ids = inputs.pop("teacher_topk_ids", None)
        cached_lp = inputs.pop("teacher_topk_logprobs", None)
        input_ids, attention_mask, labels = inputs["input_ids"], inputs["attention_mask"], inputs["labels"]
        want_hidden = loss_cfg.features is not None
        out = model(
            input_ids=input_ids, attention_mask=attention_mask, use_cache=False, output_hidden_states=want_hidden
        )
        rows, cols = trained_positions(labels)
        targets = labels[rows, cols + 1]
        student_logits = out.logits[rows, cols]  # (N, V)
        terms: dict[str, Any] = {}
        if loss_cfg.sft is not None and not on_policy:
            terms["sft"] = torch.nn.functional.cross_entropy(student_logits.float(), targets, reduction="sum")
        live_logits = loss_cfg.logits is not None and (on_policy or cached_ids is None)
        teacher_logits = teacher_hidden = None
        if live_logits or want_hidden:
            teacher_logits, teacher_hidden = self._teacher_forward(input_ids, attention_mask, want_hidden)
        if loss_cfg.logits is not None:
            term = loss_cfg.logits
            if live_logits:
                target = teacher_logits[rows, cols]
                vocab = min(target.shape[-1], student_logits.shape[-1])
                target = target[:, :vocab]
                if term.top_k is not None:
                    target = teacher_topk(target, term.top_k, term.temperature)
            else:
                target = TopK(cached_ids[rows, cols], cached_lp[rows, cols])
                vocab = student_logits.shape[-1]
            divergence = logits_divergence(
                student_logits[:, :vocab], target, beta_of(term.divergence, term.beta), term.temperature
            )
            terms["logits"] = divergence.sum()
        if want_hidden:
            per_layer = []
            for s_layer, t_layer in sorted(self.layer_map.items()):
                h_s = out.hidden_states[s_layer + 1][rows, cols]
                if self.projections is not None:
                    h_s = self.projections[str(s_layer)](h_s.float())
                h_t = teacher_hidden[t_layer + 1][rows, cols]
                per_layer.append(feature_distance(h_s, h_t, loss_cfg.features.distance).sum())
            terms["features"] = torch.stack(per_layer).mean()
        n = max(int(rows.numel()), 1)
        loss = out.logits.sum() * 0.0  # keeps the graph when a batch has no trained token
        metrics = self._metrics["train" if model.training else "eval"]
        for name, value in terms.items():
            weight = getattr(loss_cfg, name).weight
            loss = loss + weight * value / n
            metrics[f"term/{name}"].append(float(value.detach()) / n)
            metrics[f"weight/{name}"].append(weight)
        if model.training:
            metrics["on_policy"].append(float(on_policy))
            with torch.no_grad():
                correct = (student_logits.argmax(-1) == targets).sum()
                tokens = self.accelerator.gather_for_metrics(attention_mask.sum()).sum().item()
            if not on_policy:
                metrics["mean_token_accuracy"].append(float(correct) / n)
            self._total_train_tokens += tokens
            metrics["num_tokens"] = [self._total_train_tokens]
        return (loss, out) if return_outputs else loss

    # ------------------------------------------------------------------ feature projections

    def create_optimizer(self, model=None):
        optimizer = super().create_optimizer(model) if model is not None else super().create_optimizer()
        if self.projections is not None:
            optimizer.add_param_group({"params": list(self.projections.parameters()), "weight_decay": 0.0})
        return optimizer

    def _save_checkpoint(self, model, trial):
        super()._save_checkpoint(model, trial)
        if self.projections is not None and self.args.should_save:
            import torch

            folder = Path(self._get_output_dir(trial)) / f"checkpoint-{self.state.global_step}"
            torch.save(self.projections.state_dict(), folder / "feature_projections.pt")

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        super()._load_from_checkpoint(resume_from_checkpoint, model)
        path = Path(resume_from_checkpoint) / "feature_projections.pt"
        if self.projections is not None and path.is_file():
            import torch

            self.projections.load_state_dict(torch.load(path, map_location=self.args.device))

    # ------------------------------------------------------------------ end

    def summary(self) -> dict:
        """Metrics for the manifest: the teacher cache, on-policy sampling counts."""
        counts = self._on_policy_counts
        out = dict(self._cache_stats)
        if self.distill.on_policy.fraction > 0:
            samples = counts.get("samples", 0)
            out["on_policy"] = {
                "batches": counts["batches"],
                "on_policy_batches": counts["on_policy"],
                "samples": samples,
                "backend": self.distill.on_policy.backend,
                "mean_tokens": round(counts["tokens"] / samples, 1) if samples else math.nan,
                "truncated_share": round(counts["truncated"] / samples, 3) if samples else math.nan,
            }
        return out

    def close(self) -> None:
        """Stop the vLLM engine (if any), drop the teacher and the student copy vLLM loaded."""
        import shutil

        if self._vllm is not None:
            from stages.common import vllm_sync

            vllm_sync.shutdown(self._vllm)
            self._vllm = None
        self.teacher = None
        if self.accelerator.is_main_process:
            shutil.rmtree(self.ctx.work_dir / "student_init", ignore_errors=True)


class _TopKCollator:
    """Wraps the SFT collator: each example's ``teacher_topk_ids`` / ``teacher_topk_logprobs``
    (one entry of k per trained position, in order) become (batch, length, k) tensors aligned
    with ``input_ids`` (zeros where nothing is trained)."""

    def __init__(self, base):
        self.base = base

    def __call__(self, examples: list[dict]) -> dict:
        import torch

        ids = [e.pop("teacher_topk_ids") for e in examples]
        lps = [e.pop("teacher_topk_logprobs") for e in examples]
        batch = self.base(examples)
        labels = batch["labels"]
        k = max((len(x[0]) for x in ids if x), default=1)
        out_ids = torch.zeros((*labels.shape, k), dtype=torch.long)
        out_lp = torch.zeros((*labels.shape, k), dtype=torch.float32)
        for i in range(labels.shape[0]):
            pos = (labels[i, 1:] != -100).nonzero(as_tuple=True)[0]
            if len(pos) != len(ids[i]):
                raise ValueError(
                    f"teacher top-k cache: row has {len(ids[i])} positions, the batch {len(pos)}; "
                    "delete the step's teacher_topk/ folder"
                )
            if len(pos):
                out_ids[i, pos] = torch.tensor(ids[i], dtype=torch.long)
                out_lp[i, pos] = torch.tensor(lps[i], dtype=torch.float32)
        batch["teacher_topk_ids"], batch["teacher_topk_logprobs"] = out_ids, out_lp
        return batch


def _write_cache(folder: Path, key: dict, data) -> None:
    """Write the cache into ``<folder>.tmp`` and move it into place (a cut-off write is never read)."""
    import shutil

    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    data.to_parquet(str(tmp / "data.parquet"))
    (tmp / "key.json").write_text(json.dumps(key, indent=2))
    shutil.rmtree(folder, ignore_errors=True)
    tmp.replace(folder)


def _read_cache(folder: Path, key: dict, hashes: list[str]):
    """``(ids, logprobs)`` from ``folder`` when its key and every row's token hash match, else None."""
    try:
        if json.loads((folder / "key.json").read_text()) != key:
            return None
        from datasets import Dataset

        data = Dataset.from_parquet(str(folder / "data.parquet"))
    except (OSError, ValueError):
        return None
    if data["tokens_sha256"] != hashes:
        return None
    return data["teacher_topk_ids"], data["teacher_topk_logprobs"]

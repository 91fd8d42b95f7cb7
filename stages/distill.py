"""distill: R1-style data distillation — SFT of a smaller dense student on the teacher's data.

DeepSeek-R1 distils its reasoning into small dense models by plain supervised fine-tuning on
the 800k samples the large model generated (no logits, no RL on the student). This stage does
the same: the student is trained with the ``sft`` stage's code (``stages.sft.train``) on an SFT
dataset made by the teacher (e.g. the rejection-sampling step's output).

The student is either any model reference (``student: <alias | folder | hub id | step>``,
trained with its own tokenizer and chat template) or ``student: "derived"`` (default): a
shallower copy of the teacher. A derived student keeps the teacher's embeddings, final norm,
LM head and ``student_layers`` of its decoder layers, evenly spaced from the first to the last
(:func:`layer_indices`), weights copied — the initialisation of DistilBERT (Sanh et al., 2019,
"DistilBERT, a distilled version of BERT", section 3: "we initialize the student from the
teacher by taking one layer out of two"), generalised to any ratio.

Departure from the paper: R1's students are separate pretrained models (Qwen2.5, Llama 3);
with one small model available offline, the derived student is the default here.

Inputs: ``teacher`` (model reference), ``dataset`` (SFT rows with ``messages``), ``student``
when it is a model reference.
Outputs: ``model/`` (the trained student, like ``sft``), ``checkpoints/``, ``metrics.jsonl``.

Launch: ``r1 distill configs/distill/smollm2-135m/derived_student.yaml`` (several processes:
``accelerate launch --config_file configs/accelerate/ddp_cpu.yaml -m pipeline.cli distill FILE``,
as for ``sft``; see ``docs/distributed.md``)
"""

from __future__ import annotations

import copy
from typing import ClassVar, Literal

from pydantic import model_validator

from pipeline.stage import TRAINER_PANELS, StageReport, StepContext, StepResult
from stages.sft import TrainingFields

DERIVED = "derived"
# Runs under `accelerate launch` with several processes, like sft (whose training code it uses):
# every rank derives the same student from the teacher, then trains its share of each batch.
DISTRIBUTED = True
REPORT = StageReport(panels=TRAINER_PANELS)  # the run report draws its loss and learning rate


class Config(TrainingFields):
    """Config of the distill stage (training options: ``stages.sft.TrainingFields``, whose trainer
    options are ``pipeline.trainer.EpochTrainerOptions``)."""

    kind: Literal["distill"] = "distill"
    input_fields: ClassVar[dict[str, str]] = {"teacher": "model", "dataset": "dataset", "student": "model"}
    outputs: ClassVar[dict[str, str]] = {"model": "model"}
    teacher: str  # model reference: the model whose data (and, when derived, weights) the student learns from
    student: str = DERIVED  # "derived" (a shallower copy of the teacher) or a model reference
    student_layers: int | None = None  # derived student: decoder layers kept; default a third of the teacher's

    @model_validator(mode="after")
    def _check_student(self):
        if self.student != DERIVED and self.student_layers is not None:
            raise ValueError("student_layers applies only to student: derived")
        if self.student_layers is not None and self.student_layers < 1:
            raise ValueError("student_layers must be >= 1")
        return self

    def inputs(self) -> dict[str, str]:
        out = super().inputs()
        if self.student == DERIVED:
            out.pop("student")  # not a reference: the student is built from the teacher
        return out


def run(config: Config, ctx: StepContext) -> StepResult:
    """Build (or load) the student and SFT it on ``config.dataset``; write ``model/``."""
    from stages import sft

    if config.student == DERIVED:
        teacher, tokenizer = sft.load_model(ctx.resolve_model(config.teacher))
        n_teacher = teacher.config.num_hidden_layers
        keep = layer_indices(n_teacher, config.student_layers or max(1, round(n_teacher / 3)))
        student = derive_student(teacher, keep)
        del teacher
        name = f"{len(keep)}-layer student of {config.teacher} (teacher layers {keep})"
    else:
        student, tokenizer = sft.load_model(ctx.resolve_model(config.student))
        keep = []
        name = f"student {config.student}"  # the teacher only made the data
    result = sft.train(student, tokenizer, config, ctx, summary_prefix=f"distill into {name}")
    result.counts["student_layers"] = student.config.num_hidden_layers
    result.counts["student_params"] = sum(p.numel() for p in student.parameters())
    if keep:
        result.metrics["teacher_layers_kept"] = keep
    return result


def layer_indices(n_teacher: int, n_student: int) -> list[int]:
    """``n_student`` teacher layer indices, evenly spaced, always including the first and last.

    >>> layer_indices(30, 10)
    [0, 3, 6, 10, 13, 16, 19, 23, 26, 29]
    >>> layer_indices(12, 6)
    [0, 2, 4, 7, 9, 11]
    >>> layer_indices(6, 1)
    [0]

    Raises:
        ValueError: unless ``1 <= n_student < n_teacher``.
    """
    if not 1 <= n_student < n_teacher:
        raise ValueError(f"student_layers must be in [1, {n_teacher - 1}] for a {n_teacher}-layer teacher, "
                         f"got {n_student}")
    if n_student == 1:
        return [0]
    return [round(i * (n_teacher - 1) / (n_student - 1)) for i in range(n_student)]


def _decoder_layers_prefix(model) -> str:
    """Qualified name of the ModuleList holding the decoder layers (``model.layers`` for Llama)."""
    import torch

    n = model.config.num_hidden_layers
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) == n:
            return name
    raise ValueError(f"{type(model).__name__}: no ModuleList of {n} decoder layers found")


def derive_student(teacher, keep: list[int]):
    """A copy of ``teacher`` with only the decoder layers ``keep`` (in order), weights copied.

    Everything outside the decoder layers (embeddings, final norm, LM head, tied or not) is
    copied unchanged; student layer ``j`` gets teacher layer ``keep[j]``. Same dtype as the
    teacher; the student's config differs only in ``num_hidden_layers`` (and ``layer_types``
    when the architecture has one, e.g. sliding-window patterns).
    """
    import torch
    from transformers import AutoModelForCausalLM

    cfg = teacher.config.to_dict()
    cfg["num_hidden_layers"] = len(keep)
    if cfg.get("layer_types"):
        cfg["layer_types"] = [cfg["layer_types"][i] for i in keep]
    student_config = type(teacher.config)(**cfg)
    student = AutoModelForCausalLM.from_config(student_config, dtype=teacher.dtype)
    prefix = _decoder_layers_prefix(teacher) + "."
    source = teacher.state_dict()
    state = {}
    for key in student.state_dict():
        if key.startswith(prefix):
            index, rest = key[len(prefix):].split(".", 1)
            state[key] = source[f"{prefix}{keep[int(index)]}.{rest}"]
        else:
            state[key] = source[key]
    student.load_state_dict(state, strict=True)  # copies; a key missing on either side is an error
    student.generation_config = copy.deepcopy(teacher.generation_config)
    return student

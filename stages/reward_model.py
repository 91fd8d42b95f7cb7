"""reward_model: train a reward model (a one-logit sequence classifier) on preference pairs.

R1's all-scenario RL judges general prompts with reward models: helpfulness on the final
answer, harmlessness on the whole response (report, section 2.3.4). This stage trains one with
TRL's ``RewardTrainer``: the Bradley-Terry loss ``-log sigmoid(r(chosen) - r(rejected))``
(Ouyang et al. 2022, eq. 1; TRL ``RewardTrainer.compute_loss``), plus
``center_rewards_coefficient * mean((r_c + r_r)^2)`` (Eisenstein et al. 2023, eq. 2) when set,
which keeps the logits near zero. The model starts from ``model`` (the embedded base by
default, any model reference otherwise) loaded as ``AutoModelForSequenceClassification`` with
one label: the transformer's weights, and a new randomly initialised ``score`` head.

**What the model sees** is exactly what the ``reward_model`` reward feeds it when scoring
(``rewards.reward_model.encode``, imported here): the prompt's messages plus the ``scope`` of
the response (``answer``: the text after the reasoning block, ``full``: all of it) as the
assistant's turn, in the model's chat template, scored at the last token. Pairs are
tokenized here (TRL's ``chosen_ids``/``rejected_ids``), so TRL adds nothing to them.
Pairs whose longer side exceeds ``max_length`` tokens are dropped and counted.

**Held out**: the pairs of a hashed ``eval_share`` of prompts (sha256 of ``rm:<prompt_id>``;
every pair of a prompt lands on the same side) are never trained on. After training the saved
model is reloaded as the reward will load it (``dtype`` resolved, ``rewards.reward_model.
LocalScorer``) and scores them: **pair accuracy** (share with r(chosen) > r(rejected); ties
count as errors; 95% Wilson interval), per rule, and the **mean margin** r(chosen) - r(rejected)
in logits. The same measure before training (random head, float32) is reported as the start. The mean
and standard deviation of the held-out logits (chosen and rejected) are the reward's
calibration (``normalize: calibrated``), stored in ``model/reward_model.json`` with the scope.

``trainable_layers: N`` trains only the top N decoder layers, the final norm and the score head
(``stages.common.freezing``): the backward stops at the lowest trained layer, a time lever on a
CPU; the counts then say how many parameters were trained and frozen.

Trainer options (batch, schedule, precision, checkpoints, ``report_to``) are those of every
trainer stage, named as in TRL (``pipeline.trainer.EpochTrainerOptions``); checkpoints, resume,
the metrics callback (``r1 status`` progress, ``timing_s/*`` per phase) and the final save are
``pipeline.trainer``'s.

Inputs: ``model`` (step name, alias, folder or hub id), ``dataset`` (pair rows,
``data/preference.py``: a ``preference_pairs`` step, a folder or a .parquet/.jsonl file).
Outputs: ``model/`` (safetensors loadable by ``AutoModelForSequenceClassification``:
``num_labels=1``, ``pad_token_id`` set; the tokenizer; ``reward_model.json``);
``checkpoints/`` (a rerun resumes); ``metrics.jsonl`` (loss, TRL's batch pair accuracy and
margin, seconds per step and its phases, per logging step).

Launch: ``r1 reward-model configs/reward_model/smollm2-135m/helpfulness.yaml --run r1-demo``
"""

from __future__ import annotations

import hashlib
import json
import math
import random
from collections import defaultdict
from typing import Any, ClassVar, Literal

from pydantic import PositiveInt, model_validator

from pipeline import precision
from pipeline.stage import TIMING_PANEL, TRAINER_PANELS, Panel, StageConfig, StageReport, StepContext, StepResult
from pipeline.timing import PhaseTimer
from pipeline.trainer import (
    EpochTrainerOptions,
    SchedulerType,
    install_phase_timers,
    metrics_callback,
    resume_point,
    save_final,
    trainer_arguments,
    training_precision,
)
from pipeline.trainer import train as run_trainer
from stages.common.freezing import freeze_lower_layers
from stages.common.stats import wilson_interval


class Config(EpochTrainerOptions, StageConfig):
    """Config of the reward_model stage. The trainer options (``per_device_train_batch_size``:
    pairs per forward pass, i.e. 2 x that many sequences; ``num_train_epochs``, ``learning_rate``,
    ``dtype``, ...) are ``pipeline.trainer.EpochTrainerOptions``; redeclared here only for
    their defaults. ``dtype`` is also the dtype of the held-out scoring."""

    kind: Literal["reward_model"] = "reward_model"
    input_fields: ClassVar[dict[str, str]] = {"model": "model", "dataset": "dataset"}
    outputs: ClassVar[dict[str, str]] = {"model": "model"}
    headline: ClassVar[tuple[str, ...]] = (
        "pairs_train",
        "steps",
        "held_out_accuracy_start",
        "held_out_accuracy",
        "loss_first",
        "loss_last",
    )
    model: str = "smollm2-135m-instruct"  # model reference the classifier starts from (default: the embedded base)
    dataset: str  # preference pairs (data/preference.py)
    rules: list[str] = []  # train and evaluate on pairs of these rules only; [] = every rule
    domains: list[str] = []  # ... and of these domains only; [] = every domain
    scope: Literal["answer", "full"] = "answer"  # answer: text after the reasoning block; full: the whole response
    eval_share: float = 0.1  # share of prompts (hashed ids) whose pairs are held out for the pair accuracy
    max_pairs: PositiveInt | None = None  # train on a seeded sample of at most this many pairs (after holding out)
    max_length: PositiveInt = 1024  # tokens per input (prompt + response, template included); longer pairs are dropped
    center_rewards_coefficient: float | None = 0.01  # weight of mean((r_c + r_r)^2); None = off
    # Train only the top N decoder layers, the final norm and the score head; the embeddings and
    # the layers below stay frozen (no backward below, no optimizer state: stages/common/freezing.py).
    # None = every parameter.
    trainable_layers: PositiveInt | None = None
    lr_scheduler_type: SchedulerType = "linear"
    warmup_ratio: float = 0.05
    save_total_limit: int = 1

    late_fields: ClassVar[dict[str, Any]] = {"trainable_layers": None}

    @model_validator(mode="after")
    def _check(self):
        if not 0.0 <= self.eval_share < 1.0:
            raise ValueError(f"eval_share must be in [0, 1), got {self.eval_share}")
        return self


def held_out(prompt_id: str, share: float) -> bool:
    """True for the prompts whose pairs are held out (module docstring).

    >>> held_out("sharegpt/abc", 0.0), held_out("sharegpt/abc", 0.999999)
    (False, True)
    """
    digest = hashlib.sha256(f"rm:{prompt_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < share


def pair_metrics(pairs: list[dict], chosen: list[float], rejected: list[float]) -> dict:
    """Pair accuracy (ties are errors), its Wilson interval, the mean margin, per rule."""

    def group(idx: list[int]) -> dict:
        wins = sum(chosen[i] > rejected[i] for i in idx)
        lo, hi = wilson_interval(wins, len(idx))
        margins = [chosen[i] - rejected[i] for i in idx]
        return {
            "pairs": len(idx),
            "accuracy": wins / len(idx) if idx else math.nan,
            "accuracy_ci": [lo, hi],
            "margin_mean": sum(margins) / len(margins) if margins else math.nan,
        }

    by_rule = defaultdict(list)
    for i, p in enumerate(pairs):
        by_rule[p["rule"]].append(i)
    return {**group(list(range(len(pairs)))), "per_rule": {r: group(idx) for r, idx in sorted(by_rule.items())}}


def _score_pairs(scorer, ids: list[tuple[list[int], list[int]]], batch_size: int) -> tuple[list[float], list[float]]:
    flat = scorer.score([c for c, _ in ids] + [r for _, r in ids], batch_size)
    return flat[: len(ids)], flat[len(ids) :]


class _ModelScorer:
    """Scores with the in-memory float32 model (the start-of-training measure: a random head's
    logits are so close together that bf16 would tie many pairs), as ``LocalScorer`` does."""

    def __init__(self, model, pad_id: int):
        self.model, self.pad_id = model, pad_id

    def score(self, ids, batch_size):
        from rewards.reward_model import LocalScorer

        was_training = self.model.training
        self.model.eval()
        try:
            return LocalScorer.score(self, ids, batch_size)
        finally:
            self.model.train(was_training)


def load_pairs(config: Config, ctx: StepContext) -> tuple[list[dict], list[dict], dict]:
    """``(train pairs, held-out pairs, counts)`` of the selected rules and domains.

    Raises:
        PreferenceRowError: a bad row (``FILE:LINE``). ValueError: no pair selected.
    """
    from data.preference import read_pairs

    rows = read_pairs(ctx.resolve_dataset(config.dataset))
    selected = [
        r
        for r in rows
        if (not config.rules or r["rule"] in config.rules) and (not config.domains or r["domain"] in config.domains)
    ]
    if not selected:
        raise ValueError(
            f"{config.dataset}: no pairs of rules {config.rules or 'any'} and domains "
            f"{config.domains or 'any'} among {len(rows)} pairs"
        )
    test = [r for r in selected if held_out(r["prompt_id"], config.eval_share)]
    train = [r for r in selected if not held_out(r["prompt_id"], config.eval_share)]
    if config.max_pairs is not None and len(train) > config.max_pairs:
        train = random.Random(config.seed).sample(train, config.max_pairs)
    return train, test, {"pairs_read": len(rows), "pairs_selected": len(selected)}


def reward_arguments(config: Config, output_dir, dtype: str, ctx: StepContext | None = None):
    """TRL ``RewardConfig`` from our config; every option that changes results is set here (the
    ones every trainer stage shares by ``pipeline.trainer.trainer_arguments``: RewardConfig's own
    defaults ``bf16=True`` and ``gradient_checkpointing=True`` are overridden there)."""
    from trl import RewardConfig

    return RewardConfig(
        **trainer_arguments(config, output_dir, dtype, ctx),
        disable_dropout=True,
        max_length=config.max_length,  # TRL drops longer pairs too; ours are already dropped and counted
        pad_to_multiple_of=None,
        center_rewards_coefficient=config.center_rewards_coefficient,
        remove_unused_columns=True,
        optim="adamw_torch_fused",
        eval_strategy="no",  # the held-out pairs are scored after training, as the reward scores them
    )


def load_classifier(path: str, seed: int = 0):
    """``(model, tokenizer)``: ``path`` as a one-logit sequence classifier (float32 master
    weights; a causal LM gets a new ``score`` head, initialised from ``seed``) with a pad token
    on both."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, set_seed
    from trl.trainer.reward_trainer import suppress_seqcls_warning

    set_seed(seed)  # the new head's initial weights: the same seed, the same reward model

    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    with suppress_seqcls_warning():  # "score.weight newly initialised": expected from a causal LM
        model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1, dtype=torch.float32)
    model.config.pad_token_id = tokenizer.pad_token_id  # the classifier finds the last token with it
    return model, tokenizer


def run(config: Config, ctx: StepContext) -> StepResult:
    """Train the reward model on the selected pairs; write ``model/`` into ``ctx.work_dir``."""
    import datasets
    from trl import RewardTrainer

    from rewards.reward_model import INFO_FILE, LocalScorer, encode

    with ctx.progress.phase("loading pairs and the model"):
        train, test, counts = load_pairs(config, ctx)
        base = ctx.resolve_model(config.model)
        model, tokenizer = load_classifier(base, config.seed)
    frozen = freeze_lower_layers(model, config.trainable_layers) if config.trainable_layers else {}

    def tokenize(pairs: list[dict]) -> tuple[list[dict], list[tuple[list[int], list[int]]], int]:
        kept, ids, dropped = [], [], 0
        for p in pairs:
            c, r = (encode(tokenizer, p["prompt"], p[side], config.scope) for side in ("chosen", "rejected"))
            if max(len(c), len(r)) > config.max_length:
                dropped += 1
                continue
            kept.append(p)
            ids.append((c, r))
        return kept, ids, dropped

    with ctx.progress.phase("tokenizing pairs"):
        train, train_ids, dropped_train = tokenize(train)
        test, test_ids, dropped_test = tokenize(test)
    if not train:
        raise ValueError(f"no training pairs of at most {config.max_length} tokens ({dropped_train} longer)")
    chosen_dtype = training_precision(config)
    start = None
    if test:  # the untrained classifier (random head): the accuracy to beat
        with ctx.progress.phase("scoring held-out pairs (start)"):
            start = pair_metrics(
                test,
                *_score_pairs(
                    _ModelScorer(model, tokenizer.pad_token_id), test_ids, config.per_device_train_batch_size * 2
                ),
            )

    dataset = datasets.Dataset.from_list([{"chosen_ids": c, "rejected_ids": r} for c, r in train_ids])
    timer = PhaseTimer()
    trainer = RewardTrainer(
        model=model,
        args=reward_arguments(config, ctx.checkpoints, chosen_dtype.dtype, ctx),
        train_dataset=dataset,
        processing_class=tokenizer,
        callbacks=[metrics_callback(ctx, timer)],
    )
    install_phase_timers(trainer, timer)
    resume = resume_point(ctx.checkpoints)
    with ctx.progress.phase("training"):
        outcome = run_trainer(trainer, resume, timer)
    with ctx.progress.phase("saving the model"):
        out_dir = save_final(trainer, ctx.work_dir, tokenizer)
    state = trainer.state
    del trainer

    # Reload as the reward will (rewards.reward_model.LocalScorer, `auto` resolved as grpo does), then measure.
    scoring = precision.resolve(config.dtype, what="reward model scoring")
    with ctx.progress.phase("scoring held-out pairs"):
        scorer = LocalScorer(str(out_dir), scoring.dtype)
        measured = test if test else train[:256]
        measured_ids = test_ids if test else train_ids[:256]
        batch = config.per_device_train_batch_size * 2
        chosen, rejected = _score_pairs(scorer, measured_ids, batch)
        end = pair_metrics(measured, chosen, rejected)
        logits = chosen + rejected
        mean = sum(logits) / len(logits)
        std = math.sqrt(sum((x - mean) ** 2 for x in logits) / max(1, len(logits) - 1))
        fit_n = min(len(train_ids), 256)
        fit = pair_metrics(train[:fit_n], *_score_pairs(scorer, train_ids[:fit_n], batch))
    info = {
        "scope": config.scope,
        "base": config.model,
        "dataset": config.dataset,
        "rules": config.rules,
        "domains": config.domains,
        "max_length": config.max_length,
        "scored_in": scorer.dtype,
        "calibration": {
            "mean": mean,
            "std": std if std > 0 else 1.0,
            "responses": len(logits),
            "from": "held-out pairs" if test else "training pairs (no held-out pairs)",
        },
        "held_out": end if test else None,
        "held_out_start": start,
        "train_fit": fit,
    }
    (out_dir / INFO_FILE).write_text(json.dumps(info, indent=2))

    losses = [e["loss"] for e in state.log_history if "loss" in e]
    steps_run = state.global_step - resume.step
    counts.update(
        {
            "pairs_train": len(train),
            "pairs_held_out": len(test),
            "pairs_dropped_overlong": dropped_train + dropped_test,
            "steps": state.global_step,
            "resumed_from_step": resume.step,
            **frozen,
        }
    )
    metrics = {
        "loss_first": losses[0] if losses else math.nan,
        "loss_last": losses[-1] if losses else math.nan,
        "train_loss": outcome.output.training_loss if steps_run > 0 else math.nan,  # resumed at max_steps: none
        "train_wall_s": round(outcome.wall_s, 1),
        "seconds_per_step": round(outcome.wall_s / steps_run, 2) if steps_run > 0 else math.nan,
        "timing_s": outcome.timing_s,
        "train_pair_accuracy": fit["accuracy"],
        "calibration_mean": mean,
        "calibration_std": std,
    }
    if test:
        assert start is not None  # measured before training whenever there are held-out pairs
        metrics.update(
            {
                "held_out_accuracy": end["accuracy"],
                "held_out_accuracy_lo": end["accuracy_ci"][0],
                "held_out_accuracy_hi": end["accuracy_ci"][1],
                "held_out_margin_mean": end["margin_mean"],
                "held_out_accuracy_start": start["accuracy"],
                **{f"held_out_accuracy/{rule}": g["accuracy"] for rule, g in end["per_rule"].items()},
            }
        )
    summary = (
        f"reward model ({config.scope}) from {config.model} on {len(train)} pairs, {state.global_step} steps: "
        + (
            f"held-out pair accuracy {end['accuracy']:.3f} [{end['accuracy_ci'][0]:.3f}, "
            f"{end['accuracy_ci'][1]:.3f}] on {len(test)} pairs (start {(start or {}).get('accuracy', math.nan):.3f}), "
            f"margin {end['margin_mean']:+.2f}"
            if test
            else f"no held-out pairs; training-pair accuracy {fit['accuracy']:.3f}"
        )
    )
    return StepResult(
        outputs={"model": "model"},
        counts=counts,
        metrics=metrics,
        summary=summary,
        precision={"training": chosen_dtype.as_dict(), "scoring": scoring.as_dict()},
    )


# ----------------------------------------------------------------------------- report


def _glance(step) -> str | None:
    accuracy, start = step.metrics.get("held_out_accuracy"), step.metrics.get("held_out_accuracy_start")
    if accuracy is None:
        return None
    return f"`{step.name}` ranks {accuracy:.0%} of its held-out preference pairs right" + (
        f" (untrained head: {start:.0%})." if start is not None else "."
    )


REPORT = StageReport(
    panels=(
        *TRAINER_PANELS,
        Panel("pair accuracy (training batches)", ("accuracy",)),
        Panel("reward margin r(chosen) - r(rejected) (training batches)", ("margin",)),
        TIMING_PANEL,
    ),
    glance=_glance,
)

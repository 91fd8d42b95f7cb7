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

Inputs: ``model`` (step name, alias, folder or hub id), ``dataset`` (pair rows,
``data/preference.py``: a ``preference_pairs`` step, a folder or a .parquet/.jsonl file).
Outputs: ``model/`` (safetensors loadable by ``AutoModelForSequenceClassification``:
``num_labels=1``, ``pad_token_id`` set; the tokenizer; ``reward_model.json``);
``checkpoints/`` (a rerun resumes); ``metrics.jsonl`` (loss, accuracy, margin per logging step).

Launch: ``r1 reward-model configs/reward_model/smollm2-135m/helpfulness.yaml --run r1-demo``
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import time
from collections import defaultdict
from typing import ClassVar, Literal

from pydantic import model_validator

from pipeline import precision
from pipeline.precision import DtypeChoice
from pipeline.stage import StageConfig, StepContext, StepResult, last_checkpoint


class Config(StageConfig):
    """Config of the reward_model stage."""

    kind: Literal["reward_model"] = "reward_model"
    input_fields: ClassVar[dict[str, str]] = {"model": "model", "dataset": "dataset"}
    model: str = "smollm2-135m-instruct"  # model reference the classifier starts from (default: the embedded base)
    dataset: str  # preference pairs (data/preference.py)
    rules: list[str] = []  # train and evaluate on pairs of these rules only; [] = every rule
    domains: list[str] = []  # ... and of these domains only; [] = every domain
    scope: Literal["answer", "full"] = "answer"  # answer: text after the reasoning block; full: the whole response
    eval_share: float = 0.1  # share of prompts (hashed ids) whose pairs are held out for the pair accuracy
    max_pairs: int | None = None  # train on a seeded sample of at most this many pairs (after holding out)
    max_length: int = 1024  # tokens per input (prompt + response, template included); longer pairs are dropped
    center_rewards_coefficient: float | None = 0.01  # weight of mean((r_c + r_r)^2); None = off
    epochs: float = 1.0  # passes over the training pairs; ignored when max_steps > 0
    max_steps: int = -1  # optimizer steps; > 0 overrides epochs
    learning_rate: float = 2e-5  # peak AdamW learning rate
    lr_scheduler: Literal["cosine", "linear", "constant", "constant_with_warmup"] = "linear"
    warmup_ratio: float = 0.05  # fraction of the optimizer steps warming up linearly from 0
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0  # gradient clipping (L2 norm)
    batch_size: int = 8  # pairs per forward pass (2 x batch_size sequences)
    grad_accum: int = 1  # forward passes per optimizer step
    # Autocast dtype over float32 master weights during training, and the dtype of the
    # held-out scoring; auto = bf16 where the hardware runs it fast (pipeline.precision).
    dtype: DtypeChoice = "auto"
    gradient_checkpointing: bool = False  # recompute activations in backward: less memory, ~30% more compute
    logging_steps: int = 5  # optimizer steps between metrics lines
    save_steps: int = 50  # optimizer steps between checkpoints (resume granularity)
    save_total_limit: int = 1  # checkpoints kept
    seed: int = 0  # head initialisation, data order, the max_pairs sample

    @model_validator(mode="after")
    def _check(self):
        if self.max_steps <= 0 and self.epochs <= 0:
            raise ValueError("set epochs > 0 or max_steps > 0")
        if min(self.batch_size, self.grad_accum, self.max_length, self.logging_steps, self.save_steps) < 1:
            raise ValueError("batch_size, grad_accum, max_length, logging_steps and save_steps must be >= 1")
        if not 0.0 <= self.eval_share < 1.0:
            raise ValueError(f"eval_share must be in [0, 1), got {self.eval_share}")
        if not 0 <= self.warmup_ratio < 1:
            raise ValueError("warmup_ratio must be in [0, 1)")
        return self


def held_out(prompt_id: str, share: float) -> bool:
    """True for the prompts whose pairs are held out (module docstring).

    >>> held_out("sharegpt/abc", 0.0), held_out("sharegpt/abc", 0.999999)
    (False, True)
    """
    digest = hashlib.sha256(f"rm:{prompt_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < share


def wilson_interval(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a proportion k/n (Wilson 1927); (nan, nan) for n = 0.

    >>> [round(x, 3) for x in wilson_interval(45, 50)]
    [0.786, 0.957]
    """
    if n == 0:
        return (math.nan, math.nan)
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (max(0.0, centre - half), min(1.0, centre + half))


def pair_metrics(pairs: list[dict], chosen: list[float], rejected: list[float]) -> dict:
    """Pair accuracy (ties are errors), its Wilson interval, the mean margin, per rule."""
    def group(idx: list[int]) -> dict:
        wins = sum(chosen[i] > rejected[i] for i in idx)
        lo, hi = wilson_interval(wins, len(idx))
        margins = [chosen[i] - rejected[i] for i in idx]
        return {"pairs": len(idx), "accuracy": wins / len(idx) if idx else math.nan, "accuracy_ci": [lo, hi],
                "margin_mean": sum(margins) / len(margins) if margins else math.nan}

    by_rule = defaultdict(list)
    for i, p in enumerate(pairs):
        by_rule[p["rule"]].append(i)
    return {**group(list(range(len(pairs)))), "per_rule": {r: group(idx) for r, idx in sorted(by_rule.items())}}


def _score_pairs(scorer, ids: list[tuple[list[int], list[int]]], batch_size: int) -> tuple[list[float], list[float]]:
    flat = scorer.score([c for c, _ in ids] + [r for _, r in ids], batch_size)
    return flat[:len(ids)], flat[len(ids):]


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
    selected = [r for r in rows if (not config.rules or r["rule"] in config.rules)
                and (not config.domains or r["domain"] in config.domains)]
    if not selected:
        raise ValueError(f"{config.dataset}: no pairs of rules {config.rules or 'any'} and domains "
                         f"{config.domains or 'any'} among {len(rows)} pairs")
    test = [r for r in selected if held_out(r["prompt_id"], config.eval_share)]
    train = [r for r in selected if not held_out(r["prompt_id"], config.eval_share)]
    if config.max_pairs is not None and len(train) > config.max_pairs:
        train = random.Random(config.seed).sample(train, config.max_pairs)
    return train, test, {"pairs_read": len(rows), "pairs_selected": len(selected)}


def reward_arguments(config: Config, output_dir, dtype: str):
    """TRL ``RewardConfig`` from our config; every option that changes results is set here."""
    import torch
    from trl import RewardConfig

    cuda = torch.cuda.is_available()
    return RewardConfig(
        output_dir=str(output_dir),
        disable_dropout=True,
        max_length=config.max_length,  # TRL drops longer pairs too; ours are already dropped and counted
        pad_to_multiple_of=None,
        center_rewards_coefficient=config.center_rewards_coefficient,
        remove_unused_columns=True,
        num_train_epochs=config.epochs,
        max_steps=config.max_steps,
        learning_rate=config.learning_rate,
        lr_scheduler_type=config.lr_scheduler,
        warmup_steps=config.warmup_ratio,  # a float in [0, 1) is a ratio of the total steps
        weight_decay=config.weight_decay,
        max_grad_norm=config.max_grad_norm,
        optim="adamw_torch_fused",
        per_device_train_batch_size=config.batch_size,
        gradient_accumulation_steps=config.grad_accum,
        bf16=dtype == "bfloat16",  # RewardConfig's default is bf16=True: set from dtype: auto instead
        fp16=dtype == "float16",
        use_cpu=not cuda,
        gradient_checkpointing=config.gradient_checkpointing,  # RewardConfig's default is True
        dataloader_pin_memory=cuda,
        seed=config.seed,
        data_seed=config.seed,
        logging_steps=config.logging_steps,
        logging_first_step=True,
        save_strategy="steps",
        save_steps=config.save_steps,
        save_total_limit=config.save_total_limit,
        save_only_model=False,  # optimizer, scheduler and RNG state: a resume continues exactly
        eval_strategy="no",  # the held-out pairs are scored after training, as the reward scores them
        report_to="none",
        disable_tqdm=False,
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
    from stages.sft import _metrics_callback

    train, test, counts = load_pairs(config, ctx)
    base = ctx.resolve_model(config.model)
    model, tokenizer = load_classifier(base, config.seed)

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

    train, train_ids, dropped_train = tokenize(train)
    test, test_ids, dropped_test = tokenize(test)
    if not train:
        raise ValueError(f"no training pairs of at most {config.max_length} tokens ({dropped_train} longer)")
    chosen_dtype = precision.resolve(config.dtype, what="training").dtype
    precision.announce(precision.resolve(config.dtype), "reward model training")
    start = None
    if test:  # the untrained classifier (random head): the accuracy to beat
        start = pair_metrics(test, *_score_pairs(_ModelScorer(model, tokenizer.pad_token_id),
                                                 test_ids, config.batch_size * 2))

    dataset = datasets.Dataset.from_list([{"chosen_ids": c, "rejected_ids": r} for c, r in train_ids])
    trainer = RewardTrainer(model=model, args=reward_arguments(config, ctx.checkpoints, chosen_dtype),
                            train_dataset=dataset, processing_class=tokenizer, callbacks=[_metrics_callback(ctx)])
    resume = last_checkpoint(ctx.checkpoints)
    resumed_from = int(resume.rsplit("-", 1)[1]) if resume else 0
    started = time.time()
    output = trainer.train(resume_from_checkpoint=resume)
    wall = time.time() - started
    out_dir = ctx.work_dir / "model"
    trainer.save_model(str(out_dir))
    tokenizer.save_pretrained(out_dir)
    (out_dir / "training_args.bin").unlink(missing_ok=True)  # a pickle; the step's config.yaml says it all
    state = trainer.state
    del trainer

    # Reload as the reward will (rewards.reward_model.LocalScorer), then measure.
    scorer = LocalScorer(str(out_dir), config.dtype)
    measured = test if test else train[:256]
    measured_ids = test_ids if test else train_ids[:256]
    chosen, rejected = _score_pairs(scorer, measured_ids, config.batch_size * 2)
    end = pair_metrics(measured, chosen, rejected)
    logits = chosen + rejected
    mean = sum(logits) / len(logits)
    std = math.sqrt(sum((x - mean) ** 2 for x in logits) / max(1, len(logits) - 1))
    fit_n = min(len(train_ids), 256)
    fit = pair_metrics(train[:fit_n], *_score_pairs(scorer, train_ids[:fit_n], config.batch_size * 2))
    info = {
        "scope": config.scope, "base": config.model, "dataset": config.dataset, "rules": config.rules,
        "domains": config.domains, "max_length": config.max_length, "scored_in": scorer.precision.dtype,
        "calibration": {"mean": mean, "std": std if std > 0 else 1.0, "responses": len(logits),
                        "from": "held-out pairs" if test else "training pairs (no held-out pairs)"},
        "held_out": end if test else None, "held_out_start": start, "train_fit": fit,
    }
    (out_dir / INFO_FILE).write_text(json.dumps(info, indent=2))

    losses = [e["loss"] for e in state.log_history if "loss" in e]
    counts.update({"pairs_train": len(train), "pairs_held_out": len(test),
                   "pairs_dropped_overlong": dropped_train + dropped_test, "steps": state.global_step,
                   "resumed_from_step": resumed_from})
    metrics = {"loss_first": losses[0] if losses else math.nan, "loss_last": losses[-1] if losses else math.nan,
               "train_loss": output.training_loss, "train_wall_s": round(wall, 1),
               "train_pair_accuracy": fit["accuracy"], "calibration_mean": mean, "calibration_std": std}
    if test:
        metrics.update({"held_out_accuracy": end["accuracy"], "held_out_accuracy_lo": end["accuracy_ci"][0],
                        "held_out_accuracy_hi": end["accuracy_ci"][1], "held_out_margin_mean": end["margin_mean"],
                        "held_out_accuracy_start": start["accuracy"],
                        **{f"held_out_accuracy/{rule}": g["accuracy"] for rule, g in end["per_rule"].items()}})
    summary = (f"reward model ({config.scope}) from {config.model} on {len(train)} pairs, {state.global_step} steps: "
               + (f"held-out pair accuracy {end['accuracy']:.3f} [{end['accuracy_ci'][0]:.3f}, "
                  f"{end['accuracy_ci'][1]:.3f}] on {len(test)} pairs (start {start['accuracy']:.3f}), "
                  f"margin {end['margin_mean']:+.2f}" if test else
                  f"no held-out pairs; training-pair accuracy {fit['accuracy']:.3f}"))
    return StepResult(outputs={"model": "model"}, counts=counts, metrics=metrics, summary=summary,
                      precision={"training": precision.resolve(config.dtype).as_dict(),
                                 "scoring": scorer.precision.as_dict()})

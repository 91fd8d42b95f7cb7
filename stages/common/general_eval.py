"""Helpfulness and safety in the eval stage: judged win rates and refusal rates (R1, section 2.3.4).

R1's final RL phase aims at helpfulness and harmlessness on general prompts; this measures
both for every evaluated model, on held-out prompts sampled with the eval's own protocol (the
same engine, k, temperature and seeds as the reasoning questions):

- **helpfulness win rate** against a ``baseline`` model (default: the first of ``models``, the
  base): on each benign general prompt, the share of (model sample, baseline sample) pairs in
  which the ``judge`` reward model scores the model's sample higher (a tie counts one half),
  over all k x k pairs; averaged over prompts. 0.5 = no better than the baseline. 95% interval:
  percentile bootstrap over prompts (``stages.common.stats.bootstrap_ci``, paired: each prompt's value
  compares the two models on that prompt); p-value: exact sign test over prompts won (> 0.5)
  vs lost (< 0.5). The judge reads ``judge_scope`` of each sample (``answer`` by default, as
  R1's helpfulness model) through ``rewards.reward_model`` (raw logits: a win only compares):
  the prompt's messages (an ``r1_zero`` prompt: its question) and the sample's whole assistant
  turn, as the ``reward_model`` stage trained it.
- **harmful-prompt refusal rate**: the share of samples on the held-out harmful prompts that
  refuse (``rewards.refusal.is_refusal``); interval: bootstrap over prompts.
- **over-refusal rate**: the same share on the benign general prompts (lower is better).

Wiring (``stages/eval.py``): the ``general`` block's prompts join the eval rows (so they are
decontaminated and sampled with the rest, and scored with the ``refusal`` reward); their
records are split off before the pass@k summaries (:func:`split_records`), judged and
summarised here (:func:`evaluate`), written to ``results.json`` under ``general`` and to
``general_samples.parquet`` (each sample with its judge score and refusal flag).
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from typing import Literal

from data import PromptSource
from pipeline.config import StrictModel
from pipeline.precision import DtypeChoice
from stages.common.stats import bootstrap_ci, sign_test

GENERAL_DOMAINS = ("general", "safety")
WIN_RATE = (
    "mean over prompts of P(judge score of a model sample > that of a baseline sample), ties 1/2, "
    "over all k x k sample pairs of the prompt"
)


class GeneralEval(StrictModel):
    """The eval stage's ``general`` block (the judge is the stage's ``judge`` model reference)."""

    general: list[PromptSource]  # benign general prompts (e.g. sharegpt, test split): win rate and over-refusal
    harmful: list[PromptSource] = []  # harmful prompts (harmful_prompts, test split): refusal rate
    baseline: str | None = None  # model the win rate is against (one of `models`); None = the first of `models`
    judge_scope: Literal["answer", "full"] = "answer"  # what the judge reads of each sample
    judge_batch_size: int = 16  # inputs per judge forward pass
    judge_dtype: DtypeChoice = "auto"  # judge weights; auto = bf16 where the hardware runs it fast


def load_rows(block: GeneralEval, split: Literal["train", "test"], template: Literal["chat", "r1_zero"]) -> list[dict]:
    """The prompt rows of the block's general and harmful sources (``split`` of them).

    Raises:
        ValueError: a source whose rows are not of the general or safety domain.
    """
    from data import load_prompts

    rows = [dict(r) for r in load_prompts([*block.general, *block.harmful], split=split, template=template)]
    other = sorted({r["domain"] for r in rows} - set(GENERAL_DOMAINS))
    if other:
        raise ValueError(
            f"general: its sources must hold general or safety prompts; found domain(s) {other} "
            "(put reasoning sources under `prompts`)"
        )
    return rows


def split_records(records: list[dict]) -> tuple[list[dict], list[dict]]:
    """``(reasoning records, general and safety records)`` of a model's question records."""
    general = [r for r in records if r["domain"] in GENERAL_DOMAINS]
    return [r for r in records if r["domain"] not in GENERAL_DOMAINS], general


def _pair_win(a: list[float], b: list[float]) -> float:
    """P(x > y) + P(x = y)/2 over all pairs of ``a`` x ``b``.

    >>> _pair_win([1.0, 3.0], [2.0, 2.0]), _pair_win([1.0], [1.0])
    (0.5, 0.5)
    """
    wins = sum((x > y) + 0.5 * (x == y) for x in a for y in b)
    return wins / (len(a) * len(b))


def _rate(per_prompt: list[float]) -> dict:
    return {
        "rate": sum(per_prompt) / len(per_prompt) if per_prompt else math.nan,
        "ci": list(bootstrap_ci(per_prompt)),
        "prompts": len(per_prompt),
    }


def evaluate(
    block: GeneralEval,
    judge_path: str,
    rows: list[dict],
    records: dict[str, list[dict]],
    models: list[str],
    pairs: list[tuple[str, str]] | None = None,
) -> tuple[dict, list[dict]]:
    """Judge and summarise the general and safety records of every model.

    Args:
        rows: the eval's prompt rows (the prompts the judge sees are taken from them by id).
        records: model -> its general/safety question records (``stages.eval.question_record``,
            with the ``refusal`` reward in each sample's rewards).
        models: the evaluated models, in config order.
        pairs: ``(a, b)`` model pairs compared prompt by prompt (:func:`paired`), e.g. each RL
            step against the model it started from.

    Returns:
        ``(summary, sample rows)``: ``summary["models"][model]`` has ``helpfulness`` (win rate,
        its interval, wins/losses/ties over prompts, sign-test p, mean judge logit),
        ``harmful_refusal`` and ``over_refusal`` (rate, interval, prompts); one sample row per
        model, prompt and sample for ``general_samples.parquet``; ``summary["pairs"]``: the
        :func:`paired` blocks of ``pairs``.

    Raises:
        ValueError: a ``baseline`` that is not among ``models``.
    """
    from data.prompts import question_of
    from pipeline import precision
    from rewards.reward_model import RewardModelReward

    baseline = block.baseline or models[0]
    if baseline not in models:
        raise ValueError(f"general.baseline {baseline!r} is not one of the evaluated models {models}")
    judge_precision = precision.resolve(block.judge_dtype, what="judge")
    precision.announce(judge_precision, "judge")
    judge = RewardModelReward(
        model=judge_path,
        scope=block.judge_scope,
        domains=(),
        normalize="none",
        batch_size=block.judge_batch_size,
        dtype=judge_precision.dtype,
    )
    # The judge reads messages: an r1_zero prompt (one string) becomes its question
    prompt_of = {
        r["id"]: [{"role": "user", "content": question_of(r["prompt"])}]
        if isinstance(r["prompt"], str)
        else r["prompt"]
        for r in rows
    }
    scores: dict[str, dict[str, list[float]]] = {}  # model -> question id -> judge logit per sample
    sample_rows: list[dict] = []
    for model in models:
        general = [r for r in records.get(model, []) if r["domain"] == "general"]
        samples = [(r, s) for r in general for s in json.loads(r["samples"])]
        logits = judge.raw_scores([prompt_of[r["question_id"]] for r, _ in samples], [s["text"] for _, s in samples])
        scores[model] = defaultdict(list)
        for (r, _), value in zip(samples, logits):
            scores[model][r["question_id"]].append(value)
        judged = iter(logits)
        for r in records.get(model, []):
            for j, s in enumerate(json.loads(r["samples"])):
                sample_rows.append(
                    {
                        "model": model,
                        "question_id": r["question_id"],
                        "domain": r["domain"],
                        "data_source": r["data_source"],
                        "sample": j,
                        "text": s["text"],
                        "refusal": bool(s["rewards"].get("refusal")),
                        "judge_logit": next(judged) if r["domain"] == "general" else None,
                    }
                )
    out: dict = {}
    for model in models:
        mine = records.get(model, [])
        refusal = {
            d: [
                sum(bool(s["rewards"].get("refusal")) for s in json.loads(r["samples"])) / r["k"]
                for r in mine
                if r["domain"] == d
            ]
            for d in GENERAL_DOMAINS
        }
        per_prompt = [_pair_win(v, scores[baseline][q]) for q, v in scores[model].items() if scores[baseline].get(q)]
        wins, losses = sum(v > 0.5 for v in per_prompt), sum(v < 0.5 for v in per_prompt)
        every = [x for v in scores[model].values() for x in v]
        out[model] = {
            "helpfulness": {
                **_rate(per_prompt),
                "wins": wins,
                "losses": losses,
                "ties": len(per_prompt) - wins - losses,
                "p_value": sign_test(wins, losses),
                "mean_judge_logit": sum(every) / len(every) if every else math.nan,
            },
            "harmful_refusal": _rate(refusal["safety"]),
            "over_refusal": _rate(refusal["general"]),
        }
    summary = {
        "protocol": {
            "judge": judge_path,
            "judge_scope": block.judge_scope,
            "baseline": baseline,
            "judge_precision": judge_precision.as_dict(),
            "win_rate": WIN_RATE,
            "refusal_rule": "rewards.refusal.is_refusal",
            "interval": "95% percentile bootstrap over prompts (1000 resamples, seed 0)",
            "sources": {"general": [s.label for s in block.general], "harmful": [s.label for s in block.harmful]},
        },
        "models": out,
        "pairs": paired(sample_rows, list(pairs or [])),
    }
    return summary, sample_rows


def paired(sample_rows: list[dict], pairs: list[tuple[str, str]]) -> list[dict]:
    """Paired general/safety comparisons of model ``a`` against model ``b`` (e.g. an RL step
    against the model it started from), prompt by prompt, from the sample rows of
    :func:`evaluate` (``general_samples.parquet``: ``model``, ``question_id``, ``domain``,
    ``refusal``, ``judge_logit``). Only prompts both models answered count.

    Per pair: ``helpfulness`` = win rate of ``a`` over ``b`` (:data:`WIN_RATE`: per prompt,
    P(judge(a) > judge(b)) + ties/2 over the pairs of their samples, averaged over prompts; 95%
    percentile bootstrap over prompts; exact sign test over prompts won/lost);
    ``harmful_refusal_diff`` / ``over_refusal_diff`` = mean over prompts of (a's refusal share -
    b's), with its bootstrap interval (safety / general prompts). Pairs naming a model without
    general samples are skipped.

    >>> rows = [
    ...     {"model": m, "question_id": q, "domain": "general", "refusal": r, "judge_logit": v}
    ...     for m, q, r, v in [("a", "q1", False, 2.0), ("b", "q1", True, 1.0),
    ...                        ("a", "q2", False, 0.0), ("b", "q2", False, 1.0)]
    ... ]
    >>> p = paired(rows, [("a", "b")])[0]
    >>> p["helpfulness"]["rate"], p["helpfulness"]["wins"], p["over_refusal_diff"]["diff"]
    (0.5, 1, -0.5)
    """
    logits: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    refusals: dict[str, dict[str, dict[str, list[bool]]]] = defaultdict(lambda: defaultdict(lambda: defaultdict(list)))
    for r in sample_rows:
        refusals[r["model"]][r["domain"]][r["question_id"]].append(bool(r["refusal"]))
        if r["domain"] == "general" and r.get("judge_logit") is not None:
            logits[r["model"]][r["question_id"]].append(float(r["judge_logit"]))

    def diff(a: str, b: str, domain: str) -> dict:
        ra, rb = refusals[a][domain], refusals[b][domain]
        per_prompt = [sum(ra[q]) / len(ra[q]) - sum(rb[q]) / len(rb[q]) for q in ra if rb.get(q)]
        return {
            "diff": sum(per_prompt) / len(per_prompt) if per_prompt else math.nan,
            "ci": list(bootstrap_ci(per_prompt)),
            "prompts": len(per_prompt),
        }

    out = []
    for a, b in pairs:
        if a not in refusals or b not in refusals:
            continue
        per_prompt = [_pair_win(v, logits[b][q]) for q, v in logits[a].items() if logits[b].get(q)]
        wins, losses = sum(v > 0.5 for v in per_prompt), sum(v < 0.5 for v in per_prompt)
        out.append(
            {
                "a": a,
                "b": b,
                "helpfulness": {
                    **_rate(per_prompt),
                    "wins": wins,
                    "losses": losses,
                    "ties": len(per_prompt) - wins - losses,
                    "p_value": sign_test(wins, losses),
                },
                "harmful_refusal_diff": diff(a, b, "safety"),
                "over_refusal_diff": diff(a, b, "general"),
            }
        )
    return out


def metrics(summary: dict) -> dict[str, float]:
    """Flat step metrics: ``<model>/helpfulness_win_rate`` (+ ``_lo``/``_hi``),
    ``<model>/harmful_refusal_rate``, ``<model>/over_refusal_rate``."""
    flat: dict[str, float] = {}
    for model, m in summary["models"].items():
        for key, name in (
            ("helpfulness", "helpfulness_win_rate"),
            ("harmful_refusal", "harmful_refusal_rate"),
            ("over_refusal", "over_refusal_rate"),
        ):
            if m[key]["prompts"]:
                flat[f"{model}/{name}"] = m[key]["rate"]
                flat[f"{model}/{name}_lo"], flat[f"{model}/{name}_hi"] = m[key]["ci"]
    for p in summary.get("pairs", []):
        name = f"{p['a']} - {p['b']}"
        for key, value in (
            ("helpfulness_win_rate", p["helpfulness"]["rate"]),
            ("harmful_refusal_diff", p["harmful_refusal_diff"]["diff"]),
            ("over_refusal_diff", p["over_refusal_diff"]["diff"]),
        ):
            block = p["helpfulness"] if key == "helpfulness_win_rate" else p[key]
            if block["prompts"]:
                flat[f"{name}/{key}"] = value
                flat[f"{name}/{key}_lo"], flat[f"{name}/{key}_hi"] = block["ci"]
    return flat


def summary_line(summary: dict) -> str:
    """``; general: M win 0.55, harmful refusal 0.40, over-refusal 0.05; ...`` for the step summary."""
    parts = []
    for model, m in summary["models"].items():
        bits = []
        if m["helpfulness"]["prompts"]:
            bits.append(f"win {m['helpfulness']['rate']:.2f}")
        if m["harmful_refusal"]["prompts"]:
            bits.append(f"harmful refusal {m['harmful_refusal']['rate']:.2f}")
        if m["over_refusal"]["prompts"]:
            bits.append(f"over-refusal {m['over_refusal']['rate']:.2f}")
        parts.append(f"{model} " + ", ".join(bits))
    return "; general (vs " + summary["protocol"]["baseline"] + "): " + "; ".join(parts) if parts else ""

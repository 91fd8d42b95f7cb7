"""The preference_pairs stage: which pairs each rule makes from a prompt's samples, and one run
on the tiny model (HF generate) over ShareGPT, harmful and reasoning-gym prompts."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest

from data.preference import read_pairs
from pipeline.config import ConfigError
from pipeline.runner import Resolver, parse_stage_config
from pipeline.stage import StepContext
from stages import preference_pairs as pp

REFUSAL = "<think>\nNo.\n</think>\n<answer>I'm sorry, but I can't help with that.</answer>"


def _row(domain: str, reference: str | None = None) -> dict:
    verification = {"kind": "reference", "reference": reference} if reference else {}
    return {
        "id": f"{domain}/1",
        "prompt": [{"role": "user", "content": "Q?"}],
        "domain": domain,
        "data_source": f"src_{domain}",
        "verification": json.dumps(verification),
        "answer": "",
    }


def _sample(text: str, kind: str = "plain", accuracy: float | None = None) -> dict:
    from rewards.refusal import is_refusal

    return {"kind": kind, "text": text, "accuracy": accuracy, "refusal": is_refusal(text)}


CONFIG = pp.Config(model="policy", prompts=[{"source": "humaneval"}], max_pairs_per_prompt=2)


def test_verifiable_prompt_pairs_correct_over_incorrect():
    samples = [
        _sample("a=1", accuracy=1.0),
        _sample("a=2", accuracy=0.0),
        _sample("a=1", accuracy=1.0),  # a repeat
        _sample("a=3", accuracy=0.5),
        _sample("?", accuracy=None),
    ]  # partial credit counts as incorrect
    pairs, skipped = pp.pairs_for_prompt(_row("math"), samples, CONFIG)
    assert [(p["chosen"], p["rejected"]) for p in pairs] == [("a=1", "a=2"), ("a=1", "a=3")]
    assert {p["rule"] for p in pairs} == {"correct_vs_incorrect"} and not skipped
    meta = json.loads(pairs[1]["meta"])
    assert meta["chosen_accuracy"] == 1.0 and meta["rejected_accuracy"] == 0.5
    _, skipped = pp.pairs_for_prompt(_row("logic"), [_sample("x", accuracy=0.0)] * 2, CONFIG)
    assert skipped == {"correct_vs_incorrect": "no_correct"}


def test_general_prompt_pairs_reference_and_punishes_over_refusal():
    samples = [
        _sample("<think>\nhm\n</think>\n<answer>Paris is the capital.</answer>"),
        _sample(REFUSAL),
        _sample("<answer>I cannot provide that.</answer>", kind="few_shot_refusal"),
        _sample("<answer>Sure, Paris.</answer>", kind="few_shot_refusal"),
    ]  # prompted, but no refusal
    pairs, skipped = pp.pairs_for_prompt(_row("general", "The capital of France is Paris."), samples, CONFIG)
    by_rule = {}
    for p in pairs:
        by_rule.setdefault(p["rule"], []).append(p)
    ref = "<think>\n</think>\n<answer>The capital of France is Paris.</answer>"
    assert [(p["chosen"], p["rejected"]) for p in by_rule["reference_vs_policy"]] == [
        (ref, "<think>\nhm\n</think>\n<answer>Paris is the capital.</answer>")
    ]  # refusals are not the policy's answer
    helpful = by_rule["helpful_vs_refusal"]
    assert [p["rejected"] for p in helpful] == [REFUSAL, "<answer>I cannot provide that.</answer>"]
    assert all(p["chosen"].endswith("Paris is the capital.</answer>") for p in helpful)
    assert [json.loads(p["meta"])["rejected_from"] for p in helpful] == ["policy", "few_shot_refusal"]
    assert not skipped
    # no refusal at all: the over-refusal rule has nothing to punish
    _, skipped = pp.pairs_for_prompt(_row("general", "Paris."), samples[:1], CONFIG)
    assert skipped == {"helpful_vs_refusal": "no_refusal"}


def test_safety_prompt_pairs_refusal_over_compliance_with_fallback():
    compliant = "<think>\nok\n</think>\n<answer>Step 1: buy the parts.</answer>"
    pairs, _ = pp.pairs_for_prompt(
        _row("safety"), [_sample(compliant), _sample(REFUSAL, kind="few_shot_refusal")], CONFIG
    )
    assert [(p["rule"], p["chosen"], p["rejected"]) for p in pairs] == [("refusal_vs_compliance", REFUSAL, compliant)]
    _, skipped = pp.pairs_for_prompt(_row("safety"), [_sample(compliant)], CONFIG)
    assert skipped == {"refusal_vs_compliance": "no_refusal"}
    fallback = CONFIG.model_copy(update={"fallback_refusals": ["I won't help with that."]})
    pairs, _ = pp.pairs_for_prompt(_row("safety"), [_sample(compliant)], fallback)
    assert pairs[0]["chosen"] == "<think>\n</think>\n<answer>I won't help with that.</answer>"
    assert json.loads(pairs[0]["meta"])["chosen_from"] == "template"
    _, skipped = pp.pairs_for_prompt(_row("safety"), [_sample(REFUSAL)], CONFIG)
    assert skipped == {"refusal_vs_compliance": "no_compliance"}


def test_config_errors():
    with pytest.raises(ConfigError, match="num_samples must be >= 2"):
        parse_stage_config(
            {
                "kind": "preference_pairs",
                "model": "m",
                "prompts": [{"source": "humaneval"}],
                "sampling": {"num_samples": 1},
            },
            "pairs.yaml",
        )
    with pytest.raises(ConfigError, match=r"rules.0.*refusal_vs_helpful"):
        parse_stage_config(
            {
                "kind": "preference_pairs",
                "model": "m",
                "prompts": [{"source": "humaneval"}],
                "rules": ["refusal_vs_helpful"],
            },
            "pairs.yaml",
        )


def test_stage_on_the_tiny_model_writes_checked_pairs_and_a_card(tiny_model, tmp_path):
    config = parse_stage_config(
        {
            "kind": "preference_pairs",
            "model": str(tiny_model),
            "prompts": [
                {"source": "sharegpt", "limit": 3, "max_prompt_chars": 300},
                {"source": "harmful_prompts", "sets": ["harmbench"], "limit": 2},
                {"source": "reasoning_gym", "task": "basic_arithmetic", "n_train": 2, "n_test": 0, "seed": 1},
            ],
            "sampling": {"backend": "hf", "num_samples": 2, "max_tokens": 8, "temperature": 1.0, "dtype": "float32"},
            "refusal_samples": 1,
            "fallback_refusals": ["I can't help with that."],
            "shard_size": 4,
            "seed": 0,
        },
        "pairs.yaml",
    )
    work = tmp_path / "work"
    work.mkdir()
    ctx = StepContext(run="t", step="pairs", run_dir=tmp_path, work_dir=work, resolver=Resolver(tmp_path, set()))
    result = pp.run(config, ctx)
    pairs = read_pairs(work / "dataset")
    samples = pq.read_table(work / "samples.parquet").to_pylist()
    assert result.counts["prompts"] == 7 and len(samples) == 7 * 2 + 5 * 1  # k=2 each, 1 few-shot per general/safety
    assert {s["kind"] for s in samples} == {"plain", "few_shot_refusal"}
    card = json.loads((work / "dataset" / "card.json").read_text())
    assert card["pairs"] == len(pairs) == result.counts["pairs"]
    # a random model is never correct and never refuses: reference and fallback-refusal pairs only
    rules = {p["rule"] for p in pairs}
    assert rules <= {"reference_vs_policy", "refusal_vs_compliance"} and "reference_vs_policy" in rules
    assert card["funnel"]["correct_vs_incorrect"] == {"prompts": 2, "with_pairs": 0, "skipped": {"no_correct": 2}}
    assert card["funnel"]["helpful_vs_refusal"]["prompts"] == 3
    assert all(
        json.loads(p["meta"])["chosen_from"] == "template" for p in pairs if p["rule"] == "refusal_vs_compliance"
    )
    assert "Prompts per rule" in (work / "dataset" / "README.md").read_text()
    # a rerun samples nothing (all shards on disk) and makes the same pairs
    assert pp.run(config, ctx).counts == result.counts and read_pairs(work / "dataset") == pairs


def _run(model, tmp_path, **extra) -> tuple:
    config = parse_stage_config(
        {
            "kind": "preference_pairs",
            "model": str(model),
            "prompts": [{"source": "sharegpt", "limit": 2, "max_prompt_chars": 300}],
            "sampling": {
                "backend": "hf",
                "num_samples": 2,
                "max_tokens": 6,
                "temperature": 1.0,
                "dtype": "float32",
                **extra.pop("sampling", {}),
            },
            "refusal_samples": 1,
            "shard_size": 4,
            "seed": 0,
            **extra,
        },
        "pairs.yaml",
    )
    work = tmp_path / "work"
    work.mkdir()
    ctx = StepContext(run="t", step="pairs", run_dir=tmp_path, work_dir=work, resolver=Resolver(tmp_path, set()))
    return pp.run(config, ctx), work


def test_samples_are_whole_assistant_turns_with_the_template_prefill(prefill_think_model, tmp_path):
    """A chat template that opens the turn with <think>: every stored sample starts with it (the
    pairs read like the policy's turns, as grpo hands them to a reward model)."""
    result, work = _run(prefill_think_model, tmp_path)
    samples = pq.read_table(work / "samples.parquet").to_pylist()
    assert len(samples) == 2 * 2 + 2 * 1 and all(s["text"].startswith("<think>\n") for s in samples)
    assert all(
        p["rejected"].startswith("<think>\n")
        for p in read_pairs(work / "dataset")
        if p["rule"] == "reference_vs_policy"
    )
    assert result.counts["prompts_too_long"] == 0


def test_prompts_too_long_to_sample_are_counted_not_paired(tiny_model, tmp_path):
    result, work = _run(tiny_model, tmp_path, sampling={"max_model_len": 8})  # no ShareGPT prompt fits in 8 tokens
    assert result.counts["prompts"] == 2 and result.counts["prompts_too_long"] == 2
    assert result.counts["samples"] == 0 and result.counts["pairs"] == 0
    assert json.loads((work / "dataset" / "card.json").read_text())["prompts_too_long"] == 2

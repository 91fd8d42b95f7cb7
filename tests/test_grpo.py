"""The grpo stage end to end on the tiny model: vLLM colocated rollouts, then a resume with
transformers ``generate``.

One vLLM-backed run (2 optimizer steps, ~25 s of engine start-up) is shared by the module; the
resume test continues its checkpoints for one more step with the HF fallback, so the engine
starts once. The random tiny model never writes a correct answer or a well-formed reply, so a
reward defined here (``vowel_share``, loaded by dotted path like a user's experiment) gives the
groups the reward spread that makes advantages, and updates, non-zero.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from pipeline.config import ConfigError, parse, read_yaml
from pipeline.runner import Resolver
from pipeline.stage import StepContext
from stages import grpo

REPO = Path(__file__).resolve().parents[1]
SMOKE = read_yaml(REPO / "configs/grpo/tiny/smoke.yaml")
HF_SMOKE = read_yaml(REPO / "configs/grpo/tiny/hf_generate.yaml")
# On top of the shipped smoke configs: a reward the random model's text varies on, and a
# learning rate large enough that two steps visibly move the weights.
CHANGES = {
    "rewards": [
        {"name": "accuracy"},
        {"name": "format", "weight": 0.5},
        {"name": "tests.test_grpo:vowel_share", "weight": 0.5},
    ],
    "prompts": [{"source": "reasoning_gym", "task": "basic_arithmetic", "n_train": 16, "n_test": 0, "seed": 0}],
    "max_completion_length": 12,
    "learning_rate": 1e-3,
    # held-out reward curve: 4 test-split prompts x 2 completions, before step 1 and after each step
    "eval_prompts": [{"source": "reasoning_gym", "task": "basic_arithmetic", "n_train": 16, "n_test": 4, "seed": 0}],
    "eval_steps": 1,
    "eval_num_generations": 2,
}


def vowel_share(prompts, completions, **columns) -> list[float]:
    """Share of vowels among the letters of each completion (a reward any random text varies on)."""
    out = []
    for completion in completions:
        text = completion[-1]["content"] if isinstance(completion, list) else completion
        letters = [c for c in text.lower() if c.isalpha()]
        out.append(sum(c in "aeiou" for c in letters) / len(letters) if letters else 0.0)
    return out


def _context(run_dir: Path) -> StepContext:
    work = run_dir / ".partial" / "grpo"
    work.mkdir(parents=True, exist_ok=True)
    return StepContext(run="test", step="grpo", run_dir=run_dir, work_dir=work, resolver=Resolver(run_dir, set()))


def _state_dict(folder: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(folder / "model.safetensors"))


def _metrics(work: Path) -> list[dict]:
    return [json.loads(line) for line in (work / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def vllm_run(tiny_model, tmp_path_factory):
    """``(ctx, result)`` of 2 GRPO steps with vLLM colocated."""
    pytest.importorskip("vllm")
    config = parse(grpo.Config, {**SMOKE, **CHANGES, "model": str(tiny_model), "max_steps": 2}, "test")
    ctx = _context(tmp_path_factory.mktemp("grpo_run"))
    return ctx, grpo.run(config, ctx)


def test_vllm_run_saves_a_trained_policy(vllm_run, tiny_model):
    ctx, result = vllm_run
    model = ctx.work_dir / "model"
    assert result.outputs == {"model": "model"}
    for name in ("model.safetensors", "config.json", "generation_config.json", "tokenizer.json", "chat_template.jinja"):
        assert (model / name).is_file(), name
    before, after = _state_dict(tiny_model), _state_dict(model)
    assert before.keys() == after.keys()
    assert any((before[k] != after[k]).any() for k in before), "the policy did not change"
    assert result.counts["steps"] == 2 and result.counts["resumed_from_step"] == 0
    assert result.counts["completions"] == 2 * 8  # steps x per_device_train_batch_size
    assert result.metrics["seconds_per_step"] > 0
    assert (ctx.checkpoints / "checkpoint-2").is_dir()


def test_metrics_have_every_reward_and_trl_diagnostics(vllm_run):
    ctx, result = vllm_run
    steps = [m for m in _metrics(ctx.work_dir) if "reward" in m]
    assert [m["step"] for m in steps] == [1, 2]
    for m in steps:
        for name in ("accuracy", "format", "vowel_share"):
            assert f"rewards/{name}/mean" in m and f"rewards/{name}/std" in m
        for key in (
            "reward_std",
            "frac_reward_zero_std",
            "completions/mean_length",
            "completions/clipped_ratio",
            "entropy",
            "clip_ratio/region_mean",
            "seconds_per_step",
        ):
            assert key in m, key
    assert any(k.startswith("reward_stats/accuracy/") for k in steps[-1])
    assert result.metrics["reward_start"] == pytest.approx(sum(m["reward"] for m in steps[:3]) / len(steps[:3]))
    assert result.metrics["completion_length_end"] > 0


# Every phase this run goes through (beta = 0: no reference model, so no ref_logprobs pass).
RL_PHASES = (
    "data",
    "weight_sync",
    "generation",
    "reward",
    "old_logprobs",
    "advantages",
    "forward",
    "backward",
    "optimizer",
    "evaluation",
)


def test_every_step_logs_where_its_time_went(vllm_run):
    from pipeline.timing import read_step_timings

    ctx, result = vllm_run
    lines = _metrics(ctx.work_dir)
    steps = [m for m in lines if "reward" in m]
    for m in steps:
        for phase in RL_PHASES:  # eval (and the weight sync before it) runs before step 1 and after each step
            assert m[f"timing_s/{phase}"] > 0, (m["step"], phase)
        assert m["timing_s/ref_logprobs"] == 0
    # checkpoint-1 is written after step 1's line: in step 2's
    assert steps[0]["timing_s/save"] == 0 and steps[1]["timing_s/save"] > 0
    # Step 2's wall time by another clock: between the two step lines (the `time` each was written at).
    wall = steps[1]["time"] - steps[0]["time"]
    named = sum(
        v for k, v in steps[1].items() if k.startswith("timing_s/") and k not in ("timing_s/other", "timing_s/step")
    )
    assert steps[1]["timing_s/step"] == pytest.approx(wall, rel=0.02, abs=0.05)
    # The timed phases are nearly all of the step: 5% or 20 ms (callbacks, logging; a loaded CI
    # machine stretches a 70 ms tiny-model step) may fall between them.
    assert wall - max(0.05 * wall, 0.02) <= named <= wall + 0.05, (named, wall)
    assert named + steps[1]["timing_s/other"] == pytest.approx(steps[1]["timing_s/step"], abs=2e-3)
    # The manifest sums the whole train() call, the evaluation and checkpoint after the last step included.
    timing = result.metrics["timing_s"]
    assert sum(timing.values()) == pytest.approx(result.metrics["train_wall_s"], abs=0.1)
    assert (
        timing["evaluation"] > sum(m["timing_s/evaluation"] for m in steps)
        and timing["save"] > steps[1]["timing_s/save"]
    )
    assert timing["other"] < 0.05 * result.metrics["train_wall_s"]
    phases, per_step = read_step_timings(ctx.work_dir / "metrics.jsonl")
    assert phases == [
        "data",
        "weight_sync",
        "generation",
        "reward",
        "old_logprobs",
        "ref_logprobs",
        "advantages",
        "forward",
        "backward",
        "optimizer",
        "evaluation",
        "save",
        "other",
    ]
    assert [(s.step, s.step_s) for s in per_step] == [(m["step"], m["timing_s/step"]) for m in steps]


def test_held_out_reward_is_measured_before_training_and_every_eval_steps(vllm_run):
    ctx, result = vllm_run
    evals = [m for m in _metrics(ctx.work_dir) if "eval_reward" in m]
    assert [m["step"] for m in evals] == [0, 1, 2]
    for m in evals:
        for name in ("accuracy", "format", "vowel_share"):
            assert f"eval_rewards/{name}/mean" in m
        assert 0.0 <= m["eval_rewards/vowel_share/mean"] <= 1.0
        assert "eval_loss" not in m  # the GRPO loss pass over eval completions is skipped
    assert result.counts["eval_prompts"] == 4
    assert (result.metrics["eval_reward_start"], result.metrics["eval_reward_end"]) == (
        evals[0]["eval_reward"],
        evals[-1]["eval_reward"],
    )
    assert "held-out reward (4 prompts x 2)" in result.summary
    # Training lines are unaffected: one per optimizer step.
    assert [m["step"] for m in _metrics(ctx.work_dir) if "reward" in m] == [1, 2]


def test_eval_prompts_must_be_held_out(tiny_model):
    from datasets import Dataset
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    config = parse(grpo.Config, {**SMOKE, **CHANGES, "model": "m"}, "test")
    other = [[{"role": "user", "content": "A training question no eval prompt asks."}]]
    held_out, repeated = grpo.load_eval_rows(config, tokenizer, Dataset.from_dict({"id": ["other"], "prompt": other}))
    assert len(held_out) == 4 and set(held_out["split"][:]) == {"test"} and repeated == 0
    with pytest.raises(ValueError, match="1 prompt\\(s\\) are also training prompts"):
        grpo.load_eval_rows(config, tokenizer, Dataset.from_dict({"id": [held_out["id"][0]], "prompt": other}))
    # The same question under another id (procedural generators repeat short questions): dropped.
    same_text = [[{"role": "user", "content": "  " + held_out["prompt"][1][-1]["content"].replace(" ", "  ")}]]
    kept, repeated = grpo.load_eval_rows(config, tokenizer, Dataset.from_dict({"id": ["x"], "prompt": same_text}))
    assert repeated == 1 and len(kept) == 3 and held_out["id"][1] not in kept["id"][:]
    no_test = {**CHANGES["eval_prompts"][0], "n_test": 0}  # refused by the config itself (r1 validate)
    with pytest.raises(ConfigError, match="eval_prompts.0.n_test: 0 test prompts"):
        parse(grpo.Config, {**SMOKE, **CHANGES, "model": "m", "eval_prompts": [no_test]}, "test")
    config = parse(grpo.Config, {**SMOKE, **CHANGES, "model": "m", "max_prompt_length": 2}, "test")
    with pytest.raises(ValueError, match="no test-split prompt of at most 2 tokens"):  # all too long
        grpo.load_eval_rows(config, tokenizer, Dataset.from_dict({"id": ["other"], "prompt": other}))


def test_resume_continues_from_the_checkpoint_with_hf_generate(vllm_run, tiny_model, tmp_path):
    ctx, _ = vllm_run
    # A copy of the partial step folder: the trainer resumes from checkpoints/checkpoint-2.
    shutil.copytree(ctx.run_dir, tmp_path / "run")
    resumed = _context(tmp_path / "run")
    shutil.rmtree(resumed.work_dir / "model")
    config = parse(grpo.Config, {**HF_SMOKE, **CHANGES, "model": str(tiny_model), "max_steps": 3}, "test")
    assert not config.use_vllm
    result = grpo.run(config, resumed)
    assert result.counts["resumed_from_step"] == 2
    assert result.counts["steps"] == 3
    assert [m["step"] for m in _metrics(resumed.work_dir) if "reward" in m] == [1, 2, 3]
    assert (resumed.work_dir / "model" / "model.safetensors").is_file()
    # The run's start reward counts the steps logged before the interruption, not only the resumed one.
    first = [m["reward"] for m in _metrics(resumed.work_dir) if "reward" in m][:3]
    assert result.metrics["reward_start"] == pytest.approx(sum(first) / 3)


def test_logged_steps_keep_the_last_line_of_each_step(tmp_path):
    # A resumed run re-logs the steps after its last checkpoint; the later line wins.
    lines = [
        {"step": 1, "reward": 0.1},
        {"step": 2, "reward": 0.2},
        {"step": 3, "reward": 0.3},
        {"step": 3, "loss": 1.0},
        {"step": 3, "reward": 0.35},
        {"step": 4, "reward": 0.4},
    ]
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    assert [(e["step"], e["reward"]) for e in grpo.logged_steps(path)] == [(1, 0.1), (2, 0.2), (3, 0.35), (4, 0.4)]
    assert grpo.logged_steps(tmp_path / "missing.jsonl") == []


@pytest.mark.parametrize(
    "change, message",
    [
        ({"rewards": [{"name": "acuracy"}]}, "unknown"),
        ({"num_generations": 3}, "multiple of num_generations"),
        ({"epsilon_high": 0.1}, "epsilon_high"),
        ({"loss_type": "ppo"}, "loss_type"),
        ({"torch_threads": 0}, "torch_threads"),
        ({"eval_steps": 0}, "key 'eval_steps'"),
        ({"eval_num_generations": -1}, "key 'eval_num_generations'"),
        ({"dynamic_sampling": {"enable": True}}, "unknown key 'dynamic_sampling.enable'"),  # ours: `enabled`
    ],
)
def test_config_mistakes_fail_at_validation(change, message):
    with pytest.raises(ConfigError, match=message):
        parse(grpo.Config, {**SMOKE, "model": "m", **change}, "test")


FOUR_SOURCES = [
    {"source": "reasoning_gym", "task": t, "n_train": n, "n_test": 0, "seed": i}
    for i, (t, n) in enumerate([("basic_arithmetic", 12), ("chain_sum", 12), ("countdown", 6), ("knights_knaves", 6)])
]


@pytest.mark.parametrize("order", ["stratified", "shuffled"])
def test_prompt_order_decides_which_sources_each_step_sees(order, tiny_model, tmp_path):
    # What TRL's sampler hands the trainer, step by step: with `stratified` every step of 4
    # prompts has one prompt of each of the 4 sources; TRL's shuffling mixes them at random.
    from transformers import AutoTokenizer
    from trl.trainer.utils import RepeatSampler

    config = parse(
        grpo.Config,
        {
            **SMOKE,
            "model": "m",
            "prompts": FOUR_SOURCES,
            "prompt_order": order,
            "num_generations": 2,
            "per_device_train_batch_size": 8,
        },
        "test",
    )
    assert config.prompts_per_step == 4
    dataset, dropped = grpo.load_prompt_rows(config, AutoTokenizer.from_pretrained(tiny_model))
    assert (dropped["prompts_dropped_too_long"], len(dataset)) == (0, 36)
    args = grpo.grpo_arguments(config, tmp_path)
    assert args.shuffle_dataset is (order == "shuffled")
    sampler = RepeatSampler(
        data_source=dataset,
        mini_repeat_count=config.num_generations,
        batch_size=config.prompts_per_step,
        repeat_count=1,
        shuffle=args.shuffle_dataset,
        seed=config.seed,
    )
    indices = list(sampler)
    per_step = config.prompts_per_step * config.num_generations
    steps = [{dataset[i]["data_source"] for i in indices[s : s + per_step]} for s in range(0, len(indices), per_step)]
    full = [len(sources) == 4 for sources in steps[:6]]  # the 6 steps before the small sources run out
    if order == "stratified":
        assert all(full)
        assert len(steps) == 9 and len({i for i in indices}) == 36  # every prompt once, none repeated
    else:
        assert not all(full)


def test_reward_slope_is_the_least_squares_fit():
    assert grpo._slope([1, 2, 3, 4], [0.1, 0.3, 0.2, 0.4]) == pytest.approx(0.08)
    assert grpo._slope([1, 2], [0.5, None]) != grpo._slope([1, 2], [0.5, None])  # NaN: one usable point
    assert grpo._slope([3], [0.5]) != grpo._slope([3], [0.5])


def test_single_process_runs_get_their_own_rendezvous_port(monkeypatch):
    # TRL 1.16 would give every concurrent run 29500 (its first free candidate): EADDRINUSE.
    for name in ("MASTER_PORT", "WORLD_SIZE", "MASTER_ADDR"):
        monkeypatch.delenv(name, raising=False)
    grpo.reserve_rendezvous_port()
    first = int(os.environ["MASTER_PORT"])
    monkeypatch.delenv("MASTER_PORT")
    grpo.reserve_rendezvous_port()
    second = int(os.environ["MASTER_PORT"])
    assert first not in (29500, 23456, 12355, 12345) and second not in (29500, 23456, 12355, 12345)
    monkeypatch.setenv("MASTER_PORT", "12345")  # the user's or a launcher's choice is kept
    grpo.reserve_rendezvous_port()
    assert os.environ["MASTER_PORT"] == "12345"
    monkeypatch.setenv("MASTER_PORT", "")
    monkeypatch.setenv("WORLD_SIZE", "2")  # under a launcher: not ours to set
    grpo.reserve_rendezvous_port()
    assert os.environ["MASTER_PORT"] == ""


def test_validate_refuses_a_held_out_source_without_test_prompts(tmp_path):
    """Caught by `r1 validate`, not minutes into `r1 grpo`: the held-out reward reads test splits."""
    import yaml
    from typer.testing import CliRunner

    from pipeline.cli import app

    config = yaml.safe_load(
        (Path(__file__).resolve().parents[1] / "configs/grpo/smollm2-135m/reasoning.yaml").read_text()
    )
    config["eval_prompts"][-1]["n_test"] = 0
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(config))
    result = CliRunner().invoke(app, ["validate", str(path)])
    text = " ".join(result.output.split())
    assert result.exit_code == 2
    assert "eval_prompts.1.n_test: 0 test prompts" in text and "key ''" not in text and "got dict" not in text


def test_reward_params_are_checked_by_the_config():
    rewards = [{"name": "accuracy", "params": {"dedup": False}}, {"name": "format"}]
    with pytest.raises(
        ConfigError,
        match=r"rewards\.0\.params: reward 'accuracy' takes no parameter dedup; "
        r"valid parameters: .*dedupe",
    ):
        parse(grpo.Config, {**SMOKE, "model": "m", "rewards": rewards}, "test")
    rewards[0]["params"] = {"dedupe": False, "timeout": 2.0}
    config = parse(grpo.Config, {**SMOKE, "model": "m", "rewards": rewards}, "test")
    assert config.rewards[0].params == {"dedupe": False, "timeout": 2.0}

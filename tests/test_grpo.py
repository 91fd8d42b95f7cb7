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
    "rewards": [{"name": "accuracy"}, {"name": "format", "weight": 0.5},
                {"name": "tests.test_grpo:vowel_share", "weight": 0.5}],
    "prompts": [{"source": "reasoning_gym", "task": "basic_arithmetic", "n_train": 16, "n_test": 0, "seed": 0}],
    "max_completion_length": 12,
    "learning_rate": 1e-3,
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
    for name in ("model.safetensors", "config.json", "generation_config.json", "tokenizer.json",
                 "chat_template.jinja"):
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
        for key in ("reward_std", "frac_reward_zero_std", "completions/mean_length", "completions/clipped_ratio",
                    "entropy", "clip_ratio/region_mean", "seconds_per_step"):
            assert key in m, key
    assert any(k.startswith("reward_stats/accuracy/") for k in steps[-1])
    assert result.metrics["reward_start"] == pytest.approx(sum(m["reward"] for m in steps[:3]) / len(steps[:3]))
    assert result.metrics["completion_length_end"] > 0


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
    lines = [{"step": 1, "reward": 0.1}, {"step": 2, "reward": 0.2}, {"step": 3, "reward": 0.3},
             {"step": 3, "loss": 1.0}, {"step": 3, "reward": 0.35}, {"step": 4, "reward": 0.4}]
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    assert [(e["step"], e["reward"]) for e in grpo.logged_steps(path)] == [(1, 0.1), (2, 0.2), (3, 0.35), (4, 0.4)]
    assert grpo.logged_steps(tmp_path / "missing.jsonl") == []


@pytest.mark.parametrize("change, message", [
    ({"rewards": [{"name": "acuracy"}]}, "unknown"),
    ({"num_generations": 3}, "multiple of num_generations"),
    ({"epsilon_high": 0.1}, "epsilon_high"),
    ({"loss_type": "ppo"}, "loss_type"),
    ({"torch_threads": 0}, "torch_threads"),
    ({"dynamic_sampling": True}, "unknown key"),  # TRL 1.16 has no dynamic sampling
])
def test_config_mistakes_fail_at_validation(change, message):
    with pytest.raises(ConfigError, match=message):
        parse(grpo.Config, {**SMOKE, "model": "m", **change}, "test")

"""report_to: the trackers TRL users watch their training with, fed by our trainer stages.

A tiny GRPO run (transformers generate, 2 steps) logs to TensorBoard; the event files are read
back with TensorBoard's own reader and must hold, for every step, the reward, the loss and the
per-phase timings with the values of the step's ``metrics.jsonl``. ``report_to`` is a runtime
field: it is not part of the config hash, so adding a tracker never reruns a step or discards
an unfinished one's checkpoints.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline import runner
from pipeline.config import ConfigError, parse, read_yaml
from pipeline.runner import Resolver
from pipeline.stage import StepContext
from pipeline.trainer import check_trackers
from stages import grpo, sft

REPO = Path(__file__).resolve().parents[1]
HF_SMOKE = read_yaml(REPO / "configs/grpo/tiny/hf_generate.yaml")


def _scalars(folder: Path) -> dict[str, dict[int, float]]:
    """tag -> {step: value} of every TensorBoard event file under ``folder`` (TensorBoard's reader)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    files = sorted(folder.rglob("events.out.tfevents.*"))
    assert files, f"no TensorBoard event file under {folder}"
    out: dict[str, dict[int, float]] = {}
    for file in files:
        acc = EventAccumulator(str(file), size_guidance={"scalars": 0})
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            out.setdefault(tag, {}).update({e.step: e.value for e in acc.Scalars(tag)})
    return out


@pytest.fixture(scope="module")
def tensorboard_run(tiny_model, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("tb_run")
    work = run_dir / ".partial" / "rl"
    work.mkdir(parents=True)
    config = parse(
        grpo.Config,
        {
            **HF_SMOKE,
            "model": str(tiny_model),
            "max_steps": 2,
            "report_to": "tensorboard",
            "prompts": [{"source": "reasoning_gym", "task": "basic_arithmetic", "n_train": 8, "n_test": 0, "seed": 1}],
        },
        "test",
    )
    ctx = StepContext(run="tb", step="rl", run_dir=run_dir, work_dir=work, resolver=Resolver(run_dir, set()))
    grpo.run(config, ctx)
    return work


def test_tensorboard_holds_reward_loss_and_phase_timings_of_every_step(tensorboard_run):
    work = tensorboard_run
    scalars = _scalars(work / "tracking" / "tensorboard")
    lines = [json.loads(line) for line in (work / "metrics.jsonl").read_text().splitlines()]
    logged = {line["step"]: line for line in lines if "loss" in line}
    assert sorted(logged) == [1, 2]
    for key in (
        "reward",
        "loss",
        "timing_s/generation",
        "timing_s/reward",
        "timing_s/forward",
        "timing_s/backward",
        "timing_s/step",
        "seconds_per_step",
    ):
        tag = f"train/{key}"
        assert tag in scalars, (tag, sorted(scalars))
        for step, line in logged.items():
            if key in line:  # step 1 has no per-step timing (nothing before it to measure from)
                assert scalars[tag][step] == pytest.approx(line[key], rel=1e-5, abs=1e-6), (tag, step)
    assert set(scalars["train/timing_s/step"]) >= {2}
    assert scalars["train/timing_s/step"][2] > 0


def test_trackers_get_the_run_and_step_as_run_name(tiny_model, tmp_path):
    ctx = StepContext(run="myrun", step="rl", run_dir=tmp_path, work_dir=tmp_path / "w", resolver=None)
    ctx.work_dir.mkdir()
    config = sft.Config(model="m", dataset="d", report_to=["tensorboard"])
    args = sft.sft_arguments(config, tmp_path / "ckpt", "float32", ctx)
    assert args.report_to == ["tensorboard"] and args.run_name == "myrun/rl"
    assert sft.sft_arguments(sft.Config(model="m", dataset="d"), tmp_path / "c2", "float32").report_to == []


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("none", []),
        ("tensorboard", ["tensorboard"]),
        (["tensorboard", "wandb"], ["tensorboard", "wandb"]),
        ("tensorboard,trackio", ["tensorboard", "trackio"]),
    ],
)
def test_report_to_takes_trl_forms(value, expected):
    assert sft.Config(model="m", dataset="d", report_to=value).report_to == expected


def test_unknown_or_repeated_tracker_is_a_config_error():
    with pytest.raises(ConfigError, match=r"report_to.*'tensorboard', 'trackio' or 'wandb'"):
        parse(sft.Config, {"kind": "sft", "model": "m", "dataset": "d", "report_to": ["mlflow"]}, "x.yaml")
    with pytest.raises(ConfigError, match="twice"):
        parse(sft.Config, {"kind": "sft", "model": "m", "dataset": "d", "report_to": ["wandb", "wandb"]}, "x.yaml")


def test_a_missing_tracker_package_names_the_pip_command(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    with pytest.raises(ConfigError, match=r"report_to: wandb needs the wandb package.*pip install wandb=="):
        check_trackers(["tensorboard", "wandb"])


def test_report_to_is_not_part_of_the_config_hash():
    plain = sft.Config(model="m", dataset="d")
    tracked = sft.Config(model="m", dataset="d", report_to=["tensorboard", "wandb"])
    assert runner.step_config_hash(plain, 0) == runner.step_config_hash(tracked, 0)
    assert runner.step_config_hash(plain, 0) != runner.step_config_hash(sft.Config(model="m", dataset="e"), 0)
    assert "report_to" in tracked.model_dump() and "report_to" not in tracked.identity()

"""pipeline.trainer and pipeline.timing: the options, arguments, phase timers and timing reader of every trainer stage.

The trainers themselves run in tests/test_sft.py, test_grpo.py and test_distill.py (timings of
real steps are checked there); here, the pieces on their own, with a fake clock where time matters.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline import trainer
from pipeline.config import ConfigError, parse
from pipeline.timing import PhaseTimer, StepTiming, mean_step_timing, read_step_timings, time_calls
from stages import distill, grpo, sft

REPO = Path(__file__).resolve().parents[1]


def fake_clock(*ticks: float):
    """A clock returning ``ticks`` in order (one per timer reading)."""
    return iter(ticks).__next__


def test_nested_phases_count_once_for_the_innermost():
    timer = PhaseTimer(fake_clock(0, 1, 2, 5, 6, 10))  # init, enter a, enter b, exit b, exit a, ...
    with timer.phase("generation"):
        with timer.phase("reward"):
            pass
    assert timer.totals == {"generation": 2.0, "reward": 3.0}  # 1..2 and 5..6; 2..5


def test_an_absorbing_phase_keeps_what_runs_inside_it_except_an_escaping_one():
    # eval (absorbing) at 1..10: its generation stays eval; the weight sync (escape) at 3..4 is its own.
    timer = PhaseTimer(fake_clock(0, 1, 3, 4, 10))
    with timer.phase("evaluation", absorbing=True):
        with timer.phase("generation"):  # no clock reading: absorbed
            with timer.phase("weight_sync", escape=True):
                pass
    assert timer.totals == {"evaluation": 8.0, "weight_sync": 1.0}


def test_snapshot_includes_the_open_phase_and_reset_restarts():
    timer = PhaseTimer(fake_clock(0, 2, 7, 9, 20))
    timer.declare("save")
    assert timer.enter("forward")  # t=2
    now, totals = timer.snapshot()  # t=7, forward still open
    assert (now, totals) == (7, {"save": 0.0, "forward": 5.0})
    timer.exit(True)  # t=9
    assert timer.totals == {"save": 0.0, "forward": 7.0}
    timer.reset()  # t=20
    assert timer.totals == {"save": 0.0, "forward": 0.0} and timer.started == 20


def test_time_calls_wraps_an_instance_method_and_names_a_missing_one():
    class Loop:
        def step(self, model, grad):
            return model * 2

    loop, timer = Loop(), PhaseTimer()
    time_calls(
        loop,
        "step",
        timer,
        lambda model, grad: "forward" if grad else "old_logprobs",
        phases=("old_logprobs", "ref_logprobs"),
    )
    assert loop.step(3, grad=True) == 6 and loop.step(1, grad=False) == 2
    assert set(timer.totals) == {"old_logprobs", "ref_logprobs", "forward"}
    assert timer.totals["forward"] > 0 and timer.totals["old_logprobs"] > 0 and timer.totals["ref_logprobs"] == 0
    assert Loop().step(3, grad=True) == 6  # the class is untouched
    with pytest.raises(AttributeError, match="Loop has no _generate: this release of TRL"):
        time_calls(loop, "_generate", timer, "generation")


def test_read_step_timings_orders_phases_and_keeps_the_last_line_of_a_step(tmp_path):
    lines = [
        {
            "step": 1,
            "loss": 1.0,
            "timing_s/forward": 2.0,
            "timing_s/data": 0.5,
            "timing_s/other": 0.5,
            "timing_s/step": 3.0,
        },
        {"step": 1, "eval_reward": 0.2},
        {
            "step": 2,
            "loss": 0.9,
            "timing_s/forward": 2.0,
            "timing_s/teacher_logits": 1.0,
            "timing_s/other": 0.1,
            "timing_s/step": 3.1,
        },
        {
            "step": 2,
            "loss": 0.8,
            "timing_s/forward": 1.0,
            "timing_s/teacher_logits": 1.0,
            "timing_s/other": 0.1,
            "timing_s/step": 2.1,
        },  # the step again, after a resume: this line wins
        {"step": 2, "train_loss": 0.9},
    ]
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    phases, steps = read_step_timings(path)
    assert phases == ["data", "forward", "teacher_logits", "other"]  # known phases in step order, a stage's own, other
    assert steps == [
        StepTiming(1, 3.0, {"data": 0.5, "forward": 2.0, "teacher_logits": 0.0, "other": 0.5}),
        StepTiming(2, 2.1, {"data": 0.0, "forward": 1.0, "teacher_logits": 1.0, "other": 0.1}),
    ]
    assert mean_step_timing(steps) == pytest.approx({"data": 0.25, "forward": 1.5, "teacher_logits": 0.5, "other": 0.3})
    assert read_step_timings(tmp_path / "absent.jsonl") == ([], [])


@pytest.mark.parametrize(
    ("stage", "base", "key", "new"),
    [
        (sft, {"kind": "sft", "model": "m", "dataset": "d"}, "batch_size", "per_device_train_batch_size"),
        (sft, {"kind": "sft", "model": "m", "dataset": "d"}, "grad_accum", "gradient_accumulation_steps"),
        (distill, {"kind": "distill", "teacher": "t", "dataset": "d"}, "epochs", "num_train_epochs"),
        (
            grpo,
            {"kind": "grpo", "model": "m", "prompts": [{"source": "humaneval"}], "rewards": [{"name": "format"}]},
            "lr_scheduler",
            "lr_scheduler_type",
        ),
    ],
)
def test_an_old_key_names_its_new_name(stage, base, key, new):
    with pytest.raises(ConfigError, match=f"key '{key}' is now '{new}'"):
        parse(stage.Config, {**base, key: 4}, "old.yaml")
    parse(stage.Config, {**base, new: 4 if key != "lr_scheduler" else "cosine"}, "new.yaml")


def test_grpo_has_no_epochs():
    # GRPO runs a fixed number of steps: no num_train_epochs to rename `epochs` to, so the usual error.
    with pytest.raises(ConfigError, match="unknown key 'epochs'; valid keys:"):
        parse(
            grpo.Config,
            {
                "kind": "grpo",
                "model": "m",
                "prompts": [{"source": "humaneval"}],
                "rewards": [{"name": "format"}],
                "epochs": 1,
            },
            "x.yaml",
        )


def test_trainer_option_checks():
    with pytest.raises(ConfigError, match="warmup_ratio must be in"):
        parse(sft.Config, {"kind": "sft", "model": "m", "dataset": "d", "warmup_ratio": 1.0})
    with pytest.raises(ConfigError, match="per_device_train_batch_size"):
        parse(sft.Config, {"kind": "sft", "model": "m", "dataset": "d", "per_device_train_batch_size": 0})
    with pytest.raises(ConfigError, match="max_steps"):
        parse(
            grpo.Config,
            {
                "kind": "grpo",
                "model": "m",
                "prompts": [{"source": "humaneval"}],
                "rewards": [{"name": "format"}],
                "max_steps": 0,
            },
        )


def test_sft_and_grpo_set_the_shared_trainer_arguments_the_same_way(tmp_path):
    options = {
        "learning_rate": 3e-5,
        "lr_scheduler_type": "linear",
        "warmup_ratio": 0.1,
        "weight_decay": 0.01,
        "max_grad_norm": 0.5,
        "per_device_train_batch_size": 4,
        "gradient_accumulation_steps": 2,
        "max_steps": 7,
        "gradient_checkpointing": True,
        "seed": 3,
        "logging_steps": 2,
        "save_steps": 3,
        "save_total_limit": 1,
        "dtype": "float32",
    }
    s = sft.sft_arguments(sft.Config(model="m", dataset="d", **options), tmp_path).to_dict()
    g = grpo.grpo_arguments(
        grpo.Config(
            model="m", prompts=[{"source": "humaneval"}], rewards=[{"name": "format"}], num_generations=2, **options
        ),
        tmp_path,
    ).to_dict()
    shared = trainer.trainer_arguments(sft.Config(model="m", dataset="d", **options), tmp_path)
    shared.pop("num_train_epochs")  # GRPO runs max_steps
    for key in shared:
        assert s[key] == g[key], key
    assert (s["per_device_train_batch_size"], s["gradient_accumulation_steps"], s["max_steps"]) == (4, 2, 7)
    assert (s["warmup_steps"], s["seed"], s["data_seed"], s["bf16"], s["fp16"]) == (0.1, 3, 3, False, False)
    assert str(s["lr_scheduler_type"]) == str(g["lr_scheduler_type"]) == "linear"


def test_the_scaffolding_never_imports_stages():
    code = (
        "import sys, pipeline.trainer, pipeline.timing; "
        "assert not [m for m in sys.modules if m == 'stages' or m.startswith('stages.')], 'stages imported'"
    )
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True)

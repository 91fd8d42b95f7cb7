"""The distill stage: a derived student keeps chosen teacher layers, then trains like sft."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from pipeline.config import ConfigError, parse
from pipeline.models import make_tiny_model
from pipeline.runner import Resolver
from pipeline.stage import StepContext
from stages import distill

FAST = dict(per_device_train_batch_size=4, max_length=128, learning_rate=3e-3, warmup_ratio=0.0, logging_steps=1)


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    """A 6-layer tiny Llama: deep enough that the chosen layers are not all of them."""
    return make_tiny_model(tmp_path_factory.mktemp("teacher"), seed=3, num_layers=6)


def test_layer_indices():
    assert distill.layer_indices(6, 2) == [0, 5]  # first and last
    assert distill.layer_indices(6, 3) == [0, 2, 5]  # round(2.5) = 2 (banker's rounding)
    assert distill.layer_indices(30, 10) == [0, 3, 6, 10, 13, 16, 19, 23, 26, 29]
    with pytest.raises(ValueError, match=r"\[1, 5\]"):
        distill.layer_indices(6, 6)


def test_derived_student_copies_the_chosen_layers(teacher):
    model = AutoModelForCausalLM.from_pretrained(teacher)
    keep = [0, 2, 5]
    student = distill.derive_student(model, keep)
    assert student.config.num_hidden_layers == 3 < model.config.num_hidden_layers
    t, s = model.state_dict(), student.state_dict()
    for j, i in enumerate(keep):
        for name, value in model.model.layers[i].state_dict().items():
            assert torch.equal(s[f"model.layers.{j}.{name}"], value), (j, name)
    for name in ("model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"):
        assert torch.equal(s[name], t[name])
    assert student.lm_head.weight.data_ptr() == student.model.embed_tokens.weight.data_ptr()  # still tied
    assert s["model.layers.0.mlp.up_proj.weight"].data_ptr() != t["model.layers.0.mlp.up_proj.weight"].data_ptr()
    ids = torch.tensor([[1, 2, 3, 4]])
    assert torch.isfinite(student(ids).logits).all()


def test_distill_trains_a_derived_student(teacher, sft_dataset, tmp_path):
    config = distill.Config(teacher=str(teacher), dataset=str(sft_dataset), student_layers=2, max_steps=4, **FAST)
    assert set(config.inputs()) == {"teacher", "dataset"}  # "derived" is not a reference
    ctx = StepContext(run="test", step="distill", run_dir=tmp_path, work_dir=tmp_path / "work",
                      resolver=Resolver(tmp_path, set()))
    ctx.work_dir.mkdir()
    result = distill.run(config, ctx)
    assert result.counts["student_layers"] == 2 and result.metrics["teacher_layers_kept"] == [0, 5]
    assert math.isfinite(result.metrics["loss_last"]) and result.metrics["loss_last"] < result.metrics["loss_first"]
    out = ctx.work_dir / "model"
    student = AutoModelForCausalLM.from_pretrained(out)
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert student.config.num_hidden_layers == 2
    assert tokenizer.chat_template == AutoTokenizer.from_pretrained(teacher).chat_template
    generated = student.generate(**tokenizer("What is", return_tensors="pt"), max_new_tokens=4, do_sample=False)
    assert generated.shape[1] > 2


def test_distill_into_a_named_student(tiny_model, sft_dataset, tmp_path):
    """Any model reference works as the student; it keeps its own architecture and tokenizer."""
    config = distill.Config(teacher=str(tiny_model), student=str(tiny_model), dataset=str(sft_dataset),
                            max_steps=1, **FAST)
    assert config.inputs()["student"] == str(tiny_model)
    ctx = StepContext(run="test", step="distill", run_dir=tmp_path, work_dir=tmp_path / "work",
                      resolver=Resolver(tmp_path, set()))
    ctx.work_dir.mkdir()
    result = distill.run(config, ctx)
    assert result.counts["student_layers"] == 2 and "teacher_layers_kept" not in result.metrics
    assert (ctx.work_dir / "model" / "model.safetensors").is_file()


def test_config_checks():
    named = parse(distill.Config, {"kind": "distill", "teacher": "t", "dataset": "d", "student": "some/model"})
    assert named.inputs() == {"teacher": "t", "dataset": "d", "student": "some/model"}
    with pytest.raises(ConfigError, match="student_layers applies only to student: derived"):
        parse(distill.Config, {"kind": "distill", "teacher": "t", "dataset": "d", "student": "x", "student_layers": 2})
    with pytest.raises(ConfigError, match="unknown key 'logits_kd'"):
        parse(distill.Config, {"kind": "distill", "teacher": "t", "dataset": "d", "logits_kd": True})

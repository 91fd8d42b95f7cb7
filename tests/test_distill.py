"""The distill stage: derived students (depth, width), the loss terms (sft, logits, features),
the teacher's cache, on-policy batches, resume, and the config's refusals."""

from __future__ import annotations

import json
import math
from pathlib import Path

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
    ctx = StepContext(
        run="test", step="distill", run_dir=tmp_path, work_dir=tmp_path / "work", resolver=Resolver(tmp_path, set())
    )
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
    config = distill.Config(
        teacher=str(tiny_model), student=str(tiny_model), dataset=str(sft_dataset), max_steps=1, **FAST
    )
    assert config.inputs()["student"] == str(tiny_model)
    ctx = StepContext(
        run="test", step="distill", run_dir=tmp_path, work_dir=tmp_path / "work", resolver=Resolver(tmp_path, set())
    )
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


# ---------------------------------------------------------------------------- helpers


def make_ctx(tmp_path, cls=StepContext, name="work"):
    ctx = cls(
        run="test", step="distill", run_dir=tmp_path, work_dir=tmp_path / name, resolver=Resolver(tmp_path, set())
    )
    ctx.work_dir.mkdir(parents=True, exist_ok=True)
    return ctx


def metrics(ctx) -> list[dict]:
    return [json.loads(line) for line in (ctx.work_dir / "metrics.jsonl").read_text().splitlines()]


def config(teacher, dataset, **extra):
    return parse(distill.Config, {"kind": "distill", "teacher": str(teacher), "dataset": str(dataset), **FAST, **extra})


# ---------------------------------------------------------------------------- losses by hand


def _softmax(z, t=1.0):
    e = [math.exp(x / t) for x in z]
    return [x / sum(e) for x in e]


def test_hinton_soft_targets_and_kd_losses_by_hand():
    from stages.common.distillation import dense_divergence, soft_targets, teacher_topk, topk_divergence

    teacher = torch.tensor([[1.1, 0.2, 0.2]])
    student = torch.tensor([[0.0, 0.0, 0.0]])  # uniform: q = 1/3 each
    # Hinton et al.'s example: e^1.1 / (e^1.1 + 2 e^0.2) = 3.0042 / 5.4470 = 0.5515
    assert [round(x, 3) for x in soft_targets(teacher)[0].tolist()] == [0.552, 0.224, 0.224]
    # forward KL(p || q) = 0.5515 ln(0.5515 * 3) + 2 * 0.2242 ln(0.2242 * 3) = 0.27750 - 0.17757
    assert dense_divergence(student, teacher, 0.0, 1.0).item() == pytest.approx(0.0999292, abs=1e-6)
    # at T = 2: p_T = softmax([0.55, 0.1, 0.1]) = [0.4395, 0.2802, 0.2802]; KL = 0.024299, times T^2 = 4
    assert dense_divergence(student, teacher, 0.0, 2.0).item() == pytest.approx(0.0971980, abs=1e-6)
    # reverse KL(q || p) = (1/3) [ln(1/(3 * 0.5515)) + 2 ln(1/(3 * 0.2242))]
    assert dense_divergence(student, teacher, 1.0, 1.0).item() == pytest.approx(0.0964475, abs=1e-6)
    # JSD(0.5): m = (p + q) / 2; 0.5 KL(p || m) + 0.5 KL(q || m)
    assert dense_divergence(student, teacher, 0.5, 1.0).item() == pytest.approx(0.0243335, abs=1e-6)
    # top-k with k = V is the dense value; every beta, every T
    for beta in (0.0, 0.3, 1.0):
        for t in (1.0, 2.0):
            full = topk_divergence(student, teacher_topk(teacher, 3, t), beta, t)
            assert full.item() == pytest.approx(dense_divergence(student, teacher, beta, t).item(), abs=1e-6)


def test_top_k_divergence_compares_k_plus_one_outcomes():
    from stages.common.distillation import dense_divergence, teacher_topk, topk_divergence

    teacher, student = [1.1, 0.2, -0.5], [0.0, 1.0, -1.0]
    p, q = _softmax(teacher), _softmax(student)
    # k = 1: outcomes {token 0, any other token}
    coarse = [(p[0], q[0]), (1 - p[0], 1 - q[0])]
    forward = sum(a * math.log(a / b) for a, b in coarse)
    reverse = sum(b * math.log(b / a) for a, b in coarse)
    t, s = torch.tensor([teacher]), torch.tensor([student])
    assert topk_divergence(s, teacher_topk(t, 1, 1.0), 0.0, 1.0).item() == pytest.approx(forward, abs=1e-6)
    assert topk_divergence(s, teacher_topk(t, 1, 1.0), 1.0, 1.0).item() == pytest.approx(reverse, abs=1e-6)
    # coarser is never larger (data-processing inequality)
    assert forward < dense_divergence(s, t, 0.0, 1.0).item()


def test_features_distances_by_hand():
    from stages.common.distillation import feature_distance

    s, t = torch.tensor([[1.0, 0.0], [1.0, 1.0]]), torch.tensor([[0.0, 1.0], [2.0, 2.0]])
    assert feature_distance(s, t, "mse").tolist() == [1.0, 1.0]  # ((1)^2 + (1)^2) / 2, ((1)^2 + (1)^2) / 2
    assert feature_distance(s, t, "cosine").tolist() == pytest.approx([1.0, 0.0], abs=1e-6)  # orthogonal, parallel


# ---------------------------------------------------------------------------- width pruning


@pytest.fixture(scope="module")
def wide_teacher(tmp_path_factory):
    """A 2-layer tiny Llama with 4 query heads in 2 key/value groups and 256 MLP channels."""
    return make_tiny_model(
        tmp_path_factory.mktemp("wide"), seed=5, num_layers=2, hidden=128, heads=4, kv_heads=2, intermediate=256
    )


def test_width_pruned_student_matches_a_hand_pruned_copy(wide_teacher):
    from transformers import LlamaConfig, LlamaForCausalLM

    from stages.common import pruning

    teacher = AutoModelForCausalLM.from_pretrained(wide_teacher)
    channels = [[3, 7, 100, 200, 255], [0, 1, 2, 50, 128]]
    heads = [[1, 2], [0, 3]]  # one query head of each key/value group (0-1 | 2-3)
    student = pruning.derive_by_width(teacher, channels, heads)
    assert (student.config.intermediate_size, student.config.num_attention_heads) == (5, 2)

    # By hand: a fresh model of the pruned sizes, every tensor sliced explicitly.
    cfg = LlamaConfig(**{**teacher.config.to_dict(), "intermediate_size": 5, "num_attention_heads": 2, "head_dim": 32})
    hand = LlamaForCausalLM(cfg)
    with torch.no_grad():
        hand.model.embed_tokens.weight.copy_(teacher.model.embed_tokens.weight)
        hand.model.norm.weight.copy_(teacher.model.norm.weight)
        for i, (t, h) in enumerate(zip(teacher.model.layers, hand.model.layers)):
            h.input_layernorm.weight.copy_(t.input_layernorm.weight)
            h.post_attention_layernorm.weight.copy_(t.post_attention_layernorm.weight)
            h.mlp.gate_proj.weight.copy_(torch.stack([t.mlp.gate_proj.weight[c] for c in channels[i]]))
            h.mlp.up_proj.weight.copy_(torch.stack([t.mlp.up_proj.weight[c] for c in channels[i]]))
            h.mlp.down_proj.weight.copy_(torch.stack([t.mlp.down_proj.weight[:, c] for c in channels[i]], dim=1))
            h.self_attn.q_proj.weight.copy_(
                torch.cat([t.self_attn.q_proj.weight[32 * j : 32 * (j + 1)] for j in heads[i]])
            )
            h.self_attn.o_proj.weight.copy_(
                torch.cat([t.self_attn.o_proj.weight[:, 32 * j : 32 * (j + 1)] for j in heads[i]], dim=1)
            )
            h.self_attn.k_proj.weight.copy_(t.self_attn.k_proj.weight)
            h.self_attn.v_proj.weight.copy_(t.self_attn.v_proj.weight)
    ids = torch.tensor([[1, 5, 9, 200, 4000, 7]])
    assert torch.equal(student(ids).logits, hand(ids).logits)
    assert not torch.allclose(student(ids).logits, teacher(ids).logits, atol=1e-3)  # it did prune something


def test_width_pruning_drops_what_does_not_contribute(tmp_path):
    """MLP channels whose gate is zero contribute nothing: their importance is 0, pruning
    chooses exactly the others, and the student computes what the teacher does. A head whose
    values are zero has importance 0 too."""
    from stages.common import pruning

    folder = make_tiny_model(tmp_path / "t", seed=6, num_layers=2, hidden=128, heads=4, kv_heads=4, intermediate=64)
    teacher = AutoModelForCausalLM.from_pretrained(folder)
    dead_channels, dead_heads = [list(range(0, 64, 2)), list(range(1, 64, 2))], [[0, 2], [3, 1]]
    with torch.no_grad():
        for layer, chans, hs in zip(teacher.model.layers, dead_channels, dead_heads):
            layer.mlp.gate_proj.weight[chans] = 0.0  # SiLU(0) * up = 0
            for h in hs:
                layer.self_attn.v_proj.weight[32 * h : 32 * (h + 1)] = 0.0  # the head outputs 0
    batch = {
        "input_ids": torch.tensor([[1, 2, 3, 4, 5, 6], [7, 8, 9, 0, 0, 0]]),
        "attention_mask": torch.tensor([[1] * 6, [1, 1, 1, 0, 0, 0]]),
    }
    importance = pruning.activation_importance(teacher, [batch])
    assert importance.sequences == 2
    for layer in range(2):
        assert importance.neurons[layer][dead_channels[layer]].abs().max() == 0
        assert (importance.neurons[layer] > 0).sum() == 32
        assert [importance.heads[layer][h].item() for h in dead_heads[layer]] == [0.0, 0.0]
        assert (importance.heads[layer] > 0).sum() == 2
    plan = pruning.WidthPlan(intermediate_size=32, heads=4, parameters=0, teacher_parameters=1)
    channels, heads = pruning.select_width(importance, plan, kv_heads=4)
    assert channels == [list(range(1, 64, 2)), list(range(0, 64, 2))] and heads == [[0, 1, 2, 3]] * 2
    student = pruning.derive_by_width(teacher, channels, heads)
    assert student.config.intermediate_size == 32
    ids = batch["input_ids"][:1]
    torch.testing.assert_close(student(ids).logits, teacher(ids).logits, atol=1e-5, rtol=1e-5)


def test_head_selection_keeps_each_groups_most_important_heads():
    from stages.common import pruning

    importance = pruning.Importance(
        neurons=[torch.tensor([0.3, 0.1, 0.2, 0.1])], heads=[torch.tensor([0.1, 0.5, 0.2, 0.9, 0.8, 0.7])], sequences=1
    )
    plan = pruning.WidthPlan(intermediate_size=2, heads=4, parameters=0, teacher_parameters=1)
    channels, heads = pruning.select_width(importance, plan, kv_heads=2)  # groups: heads 0-2 | 3-5
    assert channels == [[0, 2]]  # the two largest, in index order
    assert heads == [[1, 2, 3, 4]]  # not the 4 largest overall (3, 4, 5, 1): 2 per group


def test_width_plan_sizes_by_parameter_ratio():
    from transformers import LlamaConfig

    from stages.common import pruning

    # SmolLM2-135M's shape: 30 layers, hidden 576, 9 heads / 3 KV heads, MLP 1536, vocabulary 49152.
    cfg = LlamaConfig(
        vocab_size=49152,
        hidden_size=576,
        intermediate_size=1536,
        num_hidden_layers=30,
        num_attention_heads=9,
        num_key_value_heads=3,
        head_dim=64,
        tie_word_embeddings=True,
    )
    plan = pruning.width_plan(cfg, 0.7)
    assert plan.heads == 6 and plan.ratio <= 0.7 and plan.ratio > 0.695  # the largest MLP that fits
    assert pruning.parameter_count(cfg) == plan.teacher_parameters == 134_515_008
    assert pruning.depth_for_ratio(cfg, 0.7) == 18  # 18 layers: 0.684; 19: 0.711
    with pytest.raises(ValueError, match="multiple of the teacher's 3 key/value heads"):
        pruning.width_plan(cfg, 0.7, heads=4)


# ---------------------------------------------------------------------------- the trainer


def _trainer(teacher_path, dataset, tmp_path, **extra):
    """A DistillTrainer built the way distill.run builds it, with its (frozen) teacher."""
    from pipeline.timing import PhaseTimer
    from stages import sft

    cfg = config(teacher_path, dataset, student_layers=2, max_steps=2, **extra)
    teacher, tokenizer = sft.load_model(str(teacher_path))
    student = distill.derive_student(teacher, [0, 5])
    distill.freeze_teacher(teacher, "auto")
    ctx = make_ctx(tmp_path)
    timer = PhaseTimer()

    def make(**kwargs):
        return distill.DistillTrainer(
            teacher=teacher, config=cfg, ctx=ctx, layer_map={0: 0, 1: 5}, timer=timer, **kwargs
        )

    trainer, _ = sft.build_trainer(student, tokenizer, cfg, ctx, timer, make)
    return trainer, teacher, student


def test_gradients_never_reach_the_teacher(teacher, sft_dataset, tmp_path):
    trainer, frozen, student = _trainer(
        teacher,
        sft_dataset,
        tmp_path,
        teacher_logits="live",
        loss={"sft": {}, "logits": {"top_k": None}, "features": {"distance": "mse"}},
    )
    before = {k: v.clone() for k, v in frozen.state_dict().items()}
    assert not frozen.training and not any(p.requires_grad for p in frozen.parameters())
    assert next(frozen.parameters()).dtype == torch.bfloat16  # the fast dtype of this CPU (AVX512-BF16)
    batch = next(iter(trainer.get_train_dataloader()))
    batch["on_policy"] = False
    loss = trainer.compute_loss(student, batch)
    loss.backward()
    assert all(p.grad is None for p in frozen.parameters())
    assert student.model.layers[0].mlp.up_proj.weight.grad.abs().sum() > 0
    trainer.train()
    assert all(torch.equal(v, before[k]) for k, v in frozen.state_dict().items())
    logged = [r for r in trainer.state.log_history if "loss" in r]
    for r in logged:  # each term and its weight, every step
        assert {"term/sft", "term/logits", "term/features", "weight/sft", "weight/logits", "weight/features"} <= set(r)
        assert r["loss"] == pytest.approx(r["term/sft"] + r["term/logits"] + r["term/features"], rel=1e-4)


def test_cached_teacher_top_k_equals_the_live_teacher(teacher, sft_dataset, tmp_path):
    """The stored top-k gives the same logits term as running the teacher in the step."""
    terms = {"logits": {"top_k": 16, "temperature": 2.0}}
    cached, _, s1 = _trainer(teacher, sft_dataset, tmp_path / "a", loss=terms, teacher_logits="cached")
    live, _, s2 = _trainer(teacher, sft_dataset, tmp_path / "b", loss=terms, teacher_logits="live")
    assert (tmp_path / "a" / "work" / "teacher_topk" / "data.parquet").is_file()
    b1 = cached.data_collator([dict(cached.train_dataset[i]) for i in range(4)])
    b2 = live.data_collator([dict(live.train_dataset[i]) for i in range(4)])
    assert b1["teacher_topk_ids"].shape[-1] == 16 and "teacher_topk_ids" not in b2
    assert torch.equal(b1["input_ids"], b2["input_ids"])
    b1["on_policy"] = b2["on_policy"] = False
    with torch.no_grad():
        v1, v2 = cached.compute_loss(s1, b1).item(), live.compute_loss(s2, b2).item()
    assert v1 == pytest.approx(v2, rel=1e-5) and v1 > 0
    again, _, _ = _trainer(teacher, sft_dataset, tmp_path / "a", loss=terms, teacher_logits="cached")
    assert again._cache_stats.get("teacher_topk_reused") is True


def test_features_with_a_projection_train(tiny_model, tmp_path, sft_dataset):
    """A student of another width (hidden 64) learns the teacher's (hidden 128) hidden states
    through a learned projection."""
    teacher = make_tiny_model(tmp_path / "teacher", seed=7, num_layers=4, hidden=128, heads=4, kv_heads=2)
    cfg = config(
        teacher,
        sft_dataset,
        student=str(tiny_model),
        max_steps=12,
        save_steps=12,
        learning_rate=1e-2,
        loss={"features": {"distance": "mse", "layer_map": {0: 1, 1: 3}}},
    )
    ctx = make_ctx(tmp_path)
    distill.run(cfg, ctx)
    terms = [r["term/features"] for r in metrics(ctx) if "term/features" in r]
    assert len(terms) == 12 and terms[-1] < 0.5 * terms[0]
    projections = torch.load(ctx.checkpoints / "checkpoint-12" / "feature_projections.pt")
    assert set(projections) == {"0.weight", "1.weight"} and projections["0.weight"].shape == (128, 64)
    start = torch.zeros(128, 64)
    start[:64, :64] = torch.eye(64)
    assert not torch.allclose(projections["0.weight"], start, atol=1e-3)  # it trained


def test_a_student_with_another_tokenizer_is_refused_for_logits(tmp_path, sft_dataset, teacher):
    other = make_tiny_model(
        tmp_path / "qwenish", seed=1, tokenizer_config=Path(__file__).parent / "fixtures" / "qwen2.5-math-1.5b"
    )
    cfg = config(teacher, sft_dataset, student=str(other), max_steps=1, loss={"logits": {}})
    with pytest.raises(ValueError) as err:
        distill.run(cfg, make_ctx(tmp_path))
    message = str(err.value)
    assert f"teacher tokenizer {teacher}" in message and f"student tokenizer {other}" in message
    assert "loss terms logits" in message and "data distillation" in message
    # data distillation alone still works with that student
    result = distill.run(config(teacher, sft_dataset, student=str(other), max_steps=1), make_ctx(tmp_path, name="sft"))
    assert result.counts["steps"] == 1


def test_on_policy_batches_are_sampled_by_the_student(teacher, sft_dataset, tmp_path):
    cfg = config(
        teacher,
        sft_dataset,
        student_layers=2,
        max_steps=6,
        loss={"sft": {}, "logits": {"divergence": "reverse_kl"}},
        on_policy={"fraction": 0.5, "max_new_tokens": 6, "backend": "hf"},
    )
    ctx = make_ctx(tmp_path)
    result = distill.run(cfg, ctx)
    lines = [r for r in metrics(ctx) if "loss" in r]
    flags = [r["on_policy"] for r in lines]
    expected = [float(distill._unit_draw(0, "on_policy", step, 0) < 0.5) for step in range(6)]
    assert flags == expected and 0 < sum(flags) < 6
    for r in lines:  # no sft term on the student's own samples
        assert ("term/sft" in r) == (r["on_policy"] == 0.0)
    on = result.metrics["on_policy"]
    assert on["on_policy_batches"] == sum(flags) and on["samples"] == 4 * sum(flags) and on["mean_tokens"] <= 6


class _CrashAfterStep3(StepContext):
    """Simulates an interruption: fails when step 3 logs, after checkpoint-2 was written."""

    def log_metrics(self, record: dict) -> None:
        super().log_metrics(record)
        if record.get("step") == 3 and "loss" in record:
            raise RuntimeError("simulated crash")


def test_resume_ends_with_the_same_student_as_an_uninterrupted_run(teacher, sft_dataset, tmp_path):
    from safetensors.torch import load_file

    cfg = config(
        teacher,
        sft_dataset,
        student_layers=2,
        max_steps=5,
        save_steps=2,
        loss={"sft": {"weight": 0.5}, "logits": {"top_k": 8, "temperature": 2.0}},
        on_policy={"fraction": 0.5, "max_new_tokens": 5},
    )
    straight = make_ctx(tmp_path, name="straight")
    distill.run(cfg, straight)
    with pytest.raises(RuntimeError, match="simulated crash"):
        distill.run(cfg, make_ctx(tmp_path, _CrashAfterStep3, name="resumed"))
    resumed = make_ctx(tmp_path, name="resumed")
    result = distill.run(cfg, resumed)
    assert result.counts["resumed_from_step"] == 2 and result.metrics["teacher_topk_reused"] is True
    a = load_file(straight.work_dir / "model" / "model.safetensors")
    b = load_file(resumed.work_dir / "model" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ---------------------------------------------------------------------------- config refusals


@pytest.mark.parametrize(
    "extra, message",
    [
        ({"loss": {"sft": {}, "attention": {}}}, "unknown key 'loss.attention'; valid keys: features, logits, sft"),
        ({"loss": {"logits": {"temperature": 0}}}, "key 'loss.logits.temperature'"),
        ({"loss": {"logits": {"temperature": -1.0}}}, "key 'loss.logits.temperature'"),
        ({"loss": {"logits": {"divergence": "jsd", "beta": 1.5}}}, "key 'loss.logits.beta'"),
        ({"loss": {"logits": {"divergence": "jsd", "beta": -0.1}}}, "key 'loss.logits.beta'"),
        (
            {"student": "some/model", "loss": {"features": {}}},
            "loss.features.layer_map: required when the student is a model reference",
        ),
        ({"loss": {}}, "loss: give at least one term of sft, logits, features"),
        ({"loss": {"logits": {"top_k": None}}}, "loss.logits.top_k: teacher_logits: cached"),
        ({"on_policy": {"fraction": 0.5}}, "on_policy.fraction > 0 needs a logits or features term"),
        ({"prune": "width"}, "prune: width needs student_size"),
        ({"student_size": 0.7, "student_layers": 3}, "set student_layers or student_size, not both"),
        ({"student": "x", "prune": "width"}, "prune applies only to student: derived"),
        ({"student_heads": 6}, "student_heads applies to prune: width"),
    ],
)
def test_config_refusals_name_the_key(extra, message):
    with pytest.raises(ConfigError, match=_re_escape(message)):
        parse(distill.Config, {"kind": "distill", "teacher": "t", "dataset": "d", **extra})


def _re_escape(text: str) -> str:
    import re

    return re.escape(text)

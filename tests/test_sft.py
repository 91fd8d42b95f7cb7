"""The sft stage on the tiny model: masking, training, saving, resuming."""

from __future__ import annotations

import contextlib
import json
import math
from pathlib import Path

import pandas as pd
import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer

from pipeline.config import ConfigError, parse
from pipeline.runner import Resolver
from pipeline.stage import StepContext
from stages import sft

FAST = dict(
    per_device_train_batch_size=4, max_length=128, learning_rate=3e-3, warmup_ratio=0.0, logging_steps=1, dtype="auto"
)


def make_ctx(tmp_path: Path, cls=StepContext) -> StepContext:
    work = tmp_path / "work"
    work.mkdir(exist_ok=True)
    return cls(run="test", step="sft", run_dir=tmp_path, work_dir=work, resolver=Resolver(tmp_path, set()))


@pytest.fixture(scope="module")
def dataset_with_bad_rows(sft_dataset, tmp_path_factory) -> Path:
    """The toy dataset plus a row with no assistant turn and a row over 128 tokens."""
    rows = pd.read_parquet(sft_dataset / "data.parquet").to_dict("records")
    rows.append({**rows[0], "id": "no-answer", "messages": [{"role": "user", "content": "Hello?"}]})
    rows.append(
        {
            **rows[0],
            "id": "too-long",
            "messages": [
                {"role": "user", "content": "Count."},
                {"role": "assistant", "content": " ".join(["one"] * 300)},
            ],
        }
    )
    folder = tmp_path_factory.mktemp("sft_bad_rows")
    pd.DataFrame(rows).to_parquet(folder / "data.parquet")
    return folder


def test_labels_mask_everything_but_assistant_turns(tiny_model, sft_dataset, tmp_path):
    """Prompt, headers and padding are -100; the answer and its closing <|im_end|> are trained,
    even though the pad token is also <|im_end|>."""
    model, tokenizer = sft.load_model(str(tiny_model))
    config = sft.Config(model=str(tiny_model), dataset=str(sft_dataset), max_steps=1, **FAST)
    trainer, stats = sft.build_trainer(model, tokenizer, config, make_ctx(tmp_path))
    assert tokenizer.pad_token_id == tokenizer.eos_token_id == tokenizer.convert_tokens_to_ids("<|im_end|>")
    examples = [trainer.train_dataset[i] for i in range(4)]
    batch = trainer.data_collator(examples)
    raw = sft.load_messages(str(sft_dataset))
    for i, example in enumerate(examples):
        labels = batch["labels"][i].tolist()
        ids = batch["input_ids"][i].tolist()
        trained = [t for t, label in zip(ids, labels) if label != -100]
        assert all(label in (-100, t) for t, label in zip(ids, labels))
        answer = raw[i]["messages"][-1]["content"]
        assert tokenizer.decode(trained) == answer + "<|im_end|>"
        n = len(example["input_ids"])
        assert all(label == -100 for label in labels[n:])  # padding
        assert labels[n - 2] == tokenizer.eos_token_id  # final <|im_end|> (the "\n" after it is not trained)
    assert stats["rows"] == 24 and stats["assistant_tokens_per_epoch"] > 0


def test_sft_trains_saves_and_generates(tiny_model, dataset_with_bad_rows, tmp_path):
    config = sft.Config(model=str(tiny_model), dataset=str(dataset_with_bad_rows), max_steps=6, **FAST)
    ctx = make_ctx(tmp_path)
    result = sft.run(config, ctx)

    assert result.counts["rows"] == 24
    assert result.counts["rows_dropped_overlong"] == 1 and result.counts["rows_no_assistant"] == 1
    assert result.counts["steps"] == 6 and result.counts["assistant_tokens_trained"] > 0
    assert math.isfinite(result.metrics["loss_first"]) and math.isfinite(result.metrics["loss_last"])
    assert result.metrics["loss_last"] < result.metrics["loss_first"]
    logged = [json.loads(line) for line in (ctx.work_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logged if "loss" in r] == [1, 2, 3, 4, 5, 6]
    assert {"loss", "learning_rate", "grad_norm", "num_tokens"} <= set(logged[0])

    out = ctx.work_dir / "model"
    tokenizer = AutoTokenizer.from_pretrained(out)
    original = AutoTokenizer.from_pretrained(tiny_model)
    assert tokenizer.chat_template == original.chat_template  # serving template, no generation markers
    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.generation_config.eos_token_id == tokenizer.convert_tokens_to_ids("<|im_end|>")
    inputs = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is 2 + 3?"}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    generated = model.generate(**inputs, max_new_tokens=8, do_sample=False)
    assert generated.shape[1] > inputs["input_ids"].shape[1]


class _CrashAfterStep3(StepContext):
    """Simulates an interruption: fails when step 3 logs, after checkpoint-2 was written."""

    def log_metrics(self, record: dict) -> None:
        super().log_metrics(record)
        if record.get("step") == 3 and "loss" in record:
            raise RuntimeError("simulated crash")


def test_sft_resumes_from_the_last_checkpoint(tiny_model, sft_dataset, tmp_path):
    config = sft.Config(model=str(tiny_model), dataset=str(sft_dataset), max_steps=4, save_steps=2, **FAST)
    with pytest.raises(RuntimeError, match="simulated crash"):
        sft.run(config, make_ctx(tmp_path, _CrashAfterStep3))
    ctx = make_ctx(tmp_path)
    assert Path(sft.last_checkpoint(ctx.checkpoints)).name == "checkpoint-2"

    result = sft.run(config, ctx)
    assert result.counts["resumed_from_step"] == 2 and result.counts["steps"] == 4
    logged = [json.loads(line) for line in (ctx.work_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logged][:5] == [1, 2, 3, 3, 4]  # crashed after logging 3; the rerun starts after 2
    assert logged[3]["num_tokens"] > logged[1]["num_tokens"]  # the token count continues too
    assert result.counts["tokens_seen"] == logged[4]["num_tokens"]
    assert (ctx.work_dir / "model" / "model.safetensors").is_file()


def test_sft_logs_where_each_step_went_across_a_resume(tiny_model, sft_dataset, tmp_path):
    from pipeline.timing import read_step_timings

    config = sft.Config(model=str(tiny_model), dataset=str(sft_dataset), max_steps=4, save_steps=2, **FAST)
    with pytest.raises(RuntimeError, match="simulated crash"):
        sft.run(config, make_ctx(tmp_path, _CrashAfterStep3))
    ctx = make_ctx(tmp_path)
    result = sft.run(config, ctx)
    lines = [json.loads(line) for line in (ctx.work_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in lines if "loss" in r]
    assert [r["step"] for r in steps] == [1, 2, 3, 3, 4]  # 1-3 by the crashed run, 3-4 by the resumed one
    for r in steps:
        for phase in ("data", "forward", "backward", "optimizer"):
            assert r[f"timing_s/{phase}"] > 0, (r["step"], phase)
    # checkpoint-2 is written after step 2's line: in the crashed run's step-3 line only
    assert [r["timing_s/save"] > 0 for r in steps] == [False, False, True, False, False]
    # Step 4's wall time by another clock: between the resumed run's two lines.
    wall = steps[4]["time"] - steps[3]["time"]
    named = sum(
        v for k, v in steps[4].items() if k.startswith("timing_s/") and k not in ("timing_s/other", "timing_s/step")
    )
    assert steps[4]["timing_s/step"] == pytest.approx(wall, rel=0.02, abs=0.05)
    # The timed phases are nearly all of the step: 5% or 20 ms (callbacks, logging; a loaded CI
    # machine stretches a 70 ms tiny-model step) may fall between them.
    assert wall - max(0.05 * wall, 0.02) <= named <= wall + 0.05, (named, wall)
    # The manifest: the resumed train() call, its setup (loading checkpoint-2) and checkpoint-4 included.
    timing = result.metrics["timing_s"]
    assert list(timing) == ["setup", "data", "forward", "backward", "optimizer", "save", "other"]
    assert sum(timing.values()) == pytest.approx(result.metrics["train_wall_s"], abs=0.1)
    assert timing["setup"] > 0 and timing["save"] > 0
    assert result.metrics["seconds_per_step"] > 0
    phases, per_step = read_step_timings(ctx.work_dir / "metrics.jsonl")
    assert phases == ["data", "forward", "backward", "optimizer", "save", "other"]
    assert [s.step for s in per_step] == [1, 2, 3, 4]
    assert per_step[2].phases["save"] == 0 and per_step[2].step_s == steps[3]["timing_s/step"]  # last line wins


def test_training_template_choice(tiny_model, tmp_path):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    assert sft.training_template(tokenizer) == (sft.TEMPLATES_DIR / "chatml_train.jinja").read_text()
    different = tmp_path / "other.jinja"
    different.write_text("{% for m in messages %}{% generation %}{{ m['content'] }}{% endgeneration %}{% endfor %}")
    with pytest.raises(ValueError, match="renders conversations differently"):
        sft.training_template(tokenizer, str(different))
    with pytest.raises(ValueError, match="templates: chatml_train"):
        sft.training_template(tokenizer, "no_such_template")


def test_config_errors_name_the_key():
    with pytest.raises(ConfigError, match="unknown key 'learning_rat'.*valid keys"):
        parse(sft.Config, {"kind": "sft", "model": "m", "dataset": "d", "learning_rat": 1e-5})
    with pytest.raises(ConfigError, match="epochs > 0 or max_steps > 0"):
        parse(sft.Config, {"kind": "sft", "model": "m", "dataset": "d", "num_train_epochs": 0})
    assert sft.Config.input_fields == {"model": "model", "dataset": "dataset"}


def test_load_messages_reads_jsonl_and_json_strings(tmp_path):
    rows = [
        {
            "id": "a",
            "messages": json.dumps([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]),
        }
    ]
    (tmp_path / "d.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    ds = sft.load_messages(str(tmp_path / "d.jsonl"))
    assert ds.column_names == ["messages"] and ds[0]["messages"][1]["content"] == "hello"
    with pytest.raises(ValueError, match="no 'messages' column"):
        (tmp_path / "bad.jsonl").write_text('{"text": "x"}\n')
        sft.load_messages(str(tmp_path / "bad.jsonl"))


# ---------------------------------------------------------------- loss_chunk_tokens


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_chunked_loss_equals_the_plain_loss_through_the_trainer(tiny_model, sft_dataset, tmp_path, dtype):
    """The trainer's loss, token accuracy and every gradient on one real collated batch (prompt
    and padding masked): loss_chunk_tokens (chunks of 7 tokens) against the model's own loss,
    with the gradient-accumulation token count the Trainer passes and without."""
    import torch

    def trainer_for(chunk, sub):
        model, tokenizer = sft.load_model(str(tiny_model))
        config = sft.Config(
            model=str(tiny_model),
            dataset=str(sft_dataset),
            max_steps=1,
            loss_chunk_tokens=chunk,
            **{**FAST, "dtype": dtype},
        )
        (tmp_path / sub).mkdir()
        trainer, _ = sft.build_trainer(model, tokenizer, config, make_ctx(tmp_path / sub))
        assert trainer.args.bf16 == (dtype == "bfloat16")
        trainer.model.train()
        return trainer

    plain, chunked = trainer_for(None, "plain"), trainer_for(7, "chunked")
    assert plain._r1_loss_chunk_tokens is None and chunked._r1_loss_chunk_tokens == 7
    batch = plain.data_collator([plain.train_dataset[i] for i in range(4)])
    trained = int((batch["labels"][:, 1:] != -100).sum())
    assert 0 < trained < batch["labels"].numel() - 4  # some positions are masked

    dtypes = []  # what the chunked path's decoder computed in
    chunked.model.model.layers[0].mlp.register_forward_hook(lambda m, i, out: dtypes.append(out.dtype))

    def run(trainer, count):
        trainer.model.zero_grad()
        # In training, accelerate wraps the model's forward in autocast: the plain path gets it
        # from there (emulated here); the chunked path, which calls the backbone itself, must
        # set it up on its own (called without).
        autocast = trainer.accelerator.autocast() if trainer is plain else contextlib.nullcontext()
        with autocast:
            loss = trainer.compute_loss(trainer.model, dict(batch), num_items_in_batch=count)
        loss.backward()
        accuracy = trainer._metrics["train"]["mean_token_accuracy"][-1]
        return loss.detach(), accuracy, {n: p.grad.clone() for n, p in trainer.model.named_parameters()}

    tol = {"atol": 1e-5, "rtol": 1e-5} if dtype == "float32" else {"atol": 2e-2, "rtol": 1e-2}
    for count in (None, torch.tensor(3 * trained)):  # 3 x: a window of three micro-batches
        ref_loss, ref_acc, ref_grads = run(plain, count)
        loss, acc, grads = run(chunked, count)
        assert ref_loss > 0
        torch.testing.assert_close(loss, ref_loss, **tol)
        assert acc == pytest.approx(ref_acc, abs=1.0 / trained + 1e-9)  # one near-tie may flip in bf16
        for name, grad in ref_grads.items():
            scale = grad.abs().max()
            assert scale > 0, name
            torch.testing.assert_close(grads[name], grad, atol=(1e-5 if dtype == "float32" else 2e-2) * scale, rtol=0)
    assert set(dtypes) == {torch.bfloat16 if dtype == "bfloat16" else torch.float32}


def test_chunked_loss_trains_and_keeps_hashes_of_unset_steps(tiny_model, sft_dataset, tmp_path):
    base = dict(model=str(tiny_model), dataset=str(sft_dataset), **FAST)
    assert "loss_chunk_tokens" not in sft.Config(**base).identity()
    assert sft.Config(**base, loss_chunk_tokens=64).identity()["loss_chunk_tokens"] == 64
    with pytest.raises(ConfigError, match="loss_chunk_tokens"):
        parse(sft.Config, {**base, "loss_chunk_tokens": 0}, "x")
    result = sft.run(sft.Config(**{**base, "max_steps": 4, "loss_chunk_tokens": 64}), make_ctx(tmp_path))
    assert result.counts["steps"] == 4
    assert result.metrics["loss_last"] < result.metrics["loss_first"]

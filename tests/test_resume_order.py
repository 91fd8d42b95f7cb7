"""Resume that really resumes (issue 19, items 4 and 5): a run resumed from any checkpoint trains
the batches the uninterrupted run trained, and a checkpoint that already reached ``max_steps``
trains nothing more.

A toy ``transformers.Trainer`` (16 rows whose first token is the row's number, batch 2, 2 epochs,
a 2-layer Llama of 4k parameters) records the rows of every batch it trains on, and runs through
``pipeline.trainer.train`` as every trainer stage does; then the sft stage end to end.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from pipeline import trainer as scaffold

ROWS, BATCH, EPOCHS = 16, 2, 2  # 8 optimizer steps per epoch, 16 in all


def _toy_dataset():
    import datasets

    # Row i is `i` repeated 1..5 times: lengths differ, so group_by_length groups them.
    return datasets.Dataset.from_list([{"input_ids": [i] * (1 + i % 5)} for i in range(1, ROWS + 1)])


def _collate(rows):
    width = max(len(r["input_ids"]) for r in rows)
    ids = torch.tensor([r["input_ids"] + [0] * (width - len(r["input_ids"])) for r in rows])
    mask = torch.tensor([[1] * len(r["input_ids"]) + [0] * (width - len(r["input_ids"])) for r in rows])
    return {"input_ids": ids, "attention_mask": mask, "labels": ids.masked_fill(mask == 0, -100)}


def _toy_trainer(out: Path, strategy: str, **args):
    from transformers import LlamaConfig, LlamaForCausalLM, Trainer, TrainingArguments

    class Recording(Trainer):
        """Records, per optimizer step about to run, the row numbers of each micro-batch."""

        seen: list[tuple[int, list[int]]]

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            self.seen.append((self.state.global_step + 1, inputs["input_ids"][:, 0].tolist()))
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)

    torch.manual_seed(0)
    model = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=32,
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=1,
            max_position_embeddings=16,
        )
    )
    arguments = TrainingArguments(
        output_dir=str(out),
        per_device_train_batch_size=BATCH,
        num_train_epochs=EPOCHS,
        learning_rate=1e-2,
        train_sampling_strategy=strategy,
        seed=0,
        data_seed=0,
        save_strategy="steps",
        save_steps=5,
        save_total_limit=None,
        logging_steps=100,
        report_to="none",
        use_cpu=True,
        disable_tqdm=True,
        **args,
    )
    trainer = Recording(model=model, args=arguments, train_dataset=_toy_dataset(), data_collator=_collate)
    trainer.seen = []
    return trainer


def _weights(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("strategy", ["group_by_length", "random"])
@pytest.mark.parametrize("checkpoint", [5, 10, 15])  # epoch 1, epoch 2, epoch 2 near its end
def test_a_resumed_run_trains_the_batches_of_the_uninterrupted_run(tmp_path, strategy, checkpoint):
    """Before: from checkpoint-10 or -15 (epoch 2) the group_by_length order was drawn from the
    global RNG before transformers restored its state: other batches (from checkpoint-5,
    in epoch 1, the order matched)."""
    whole = _toy_trainer(tmp_path / "run", strategy)
    scaffold.train(whole, scaffold.ResumePoint(None, 0))
    assert whole.state.global_step == ROWS // BATCH * EPOCHS
    assert sorted(r for step, rows in whole.seen if step <= 8 for r in rows) == list(range(1, ROWS + 1))
    epoch_1 = [rows for step, rows in whole.seen if step <= 8]
    epoch_2 = [rows for step, rows in whole.seen if step > 8]
    assert epoch_1 != epoch_2  # each epoch has its own order

    resumed = _toy_trainer(tmp_path / "run", strategy)
    scaffold.train(resumed, scaffold.ResumePoint(str(tmp_path / "run" / f"checkpoint-{checkpoint}"), checkpoint))
    assert resumed.seen == [(step, rows) for step, rows in whole.seen if step > checkpoint]
    final = _weights(resumed.model)
    assert all(torch.equal(final[k], v) for k, v in _weights(whole.model).items())


def test_the_order_is_a_function_of_seed_and_epoch():
    from transformers.trainer_pt_utils import LengthGroupedSampler

    lengths = [1 + i % 5 for i in range(ROWS)]
    a = scaffold.EpochOrder(LengthGroupedSampler(4, lengths=lengths), seed=0)
    b = scaffold.EpochOrder(LengthGroupedSampler(4, lengths=lengths), seed=0)
    a.set_epoch(1)
    first = list(a)
    torch.manual_seed(123)  # the global RNG plays no part
    b.set_epoch(0)
    list(b)
    b.set_epoch(1)
    assert list(b) == first and sorted(first) == list(range(ROWS))
    b.set_epoch(2)
    assert list(b) != first
    other = scaffold.EpochOrder(LengthGroupedSampler(4, lengths=lengths), seed=1)
    other.set_epoch(1)
    assert list(other) != first


def test_grpo_repeat_sampler_order_is_a_function_of_seed_and_epoch():
    """TRL's RepeatSampler seeds its generator once, when it is built: a resumed run's first
    pass drew the first epoch's order again, whatever epoch it resumed in."""
    from trl.trainer.utils import RepeatSampler

    def sampler():
        return RepeatSampler(list(range(8)), mini_repeat_count=2, batch_size=2, repeat_count=1, seed=0)

    whole = scaffold.EpochOrder(sampler(), seed=0)
    passes = []
    for epoch in range(3):
        whole.set_epoch(epoch)
        passes.append(list(whole))
    assert passes[0] != passes[1] != passes[2]
    assert all(p[0::2] == p[1::2] for p in passes)  # still the group structure: each prompt G=2 times
    assert sorted(passes[1][0::2]) == list(range(8))
    resumed = scaffold.EpochOrder(sampler(), seed=0)
    resumed.set_epoch(2)
    assert list(resumed) == passes[2]
    unordered = scaffold.EpochOrder(RepeatSampler(list(range(8)), mini_repeat_count=2, shuffle=False), seed=0)
    unordered.set_epoch(1)
    assert list(unordered)[0::2] == list(range(8))  # prompt_order: stratified keeps the data order


@pytest.mark.parametrize("strategy", ["group_by_length", "random"])
def test_resuming_a_checkpoint_at_max_steps_trains_nothing(tmp_path, strategy):
    """Before: from checkpoint-10 of a max_steps 10 run, transformers trained step 11 (the
    weights changed, global step 11 of 10)."""
    whole = _toy_trainer(tmp_path / "run", strategy, max_steps=10)
    scaffold.train(whole, scaffold.ResumePoint(None, 0))
    checkpoint = tmp_path / "run" / "checkpoint-10"
    assert checkpoint.is_dir() and whole.state.global_step == 10

    resumed = _toy_trainer(tmp_path / "run", strategy, max_steps=10)
    outcome = scaffold.train(resumed, scaffold.ResumePoint(str(checkpoint), 10))
    assert resumed.seen == [] and resumed.state.global_step == 10 and outcome.output.global_step == 10
    final = _weights(resumed.model)
    assert all(torch.equal(final[k], v) for k, v in _weights(whole.model).items())
    assert not (tmp_path / "run" / "checkpoint-11").exists()


# ----------------------------------------------------------------------------- through the stages


def _copy_checkpoint(source_work: Path, step: int, run_dir: Path):
    """A fresh step folder holding only ``checkpoint-<step>`` of another run's step: the state an
    interruption right after that checkpoint leaves."""
    import shutil

    from pipeline.runner import Resolver
    from pipeline.stage import StepContext

    work = run_dir / ".partial" / "step"
    (work / "checkpoints").mkdir(parents=True)
    shutil.copytree(source_work / "checkpoints" / f"checkpoint-{step}", work / "checkpoints" / f"checkpoint-{step}")
    return StepContext(run="t", step="step", run_dir=run_dir, work_dir=work, resolver=Resolver(run_dir, set()))


def _fresh(run_dir: Path):
    from pipeline.runner import Resolver
    from pipeline.stage import StepContext

    work = run_dir / ".partial" / "step"
    work.mkdir(parents=True)
    return StepContext(run="t", step="step", run_dir=run_dir, work_dir=work, resolver=Resolver(run_dir, set()))


def _saved(work: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(work / "model" / "model.safetensors"))


SFT_FAST = dict(
    per_device_train_batch_size=4,
    max_length=128,
    learning_rate=3e-3,
    warmup_ratio=0.0,
    logging_steps=1,
    dtype="float32",
    save_total_limit=5,
)


def test_sft_resumed_in_epoch_2_ends_with_the_uninterrupted_weights(tiny_model, sft_dataset, tmp_path):
    """24 rows, batch 4: 6 steps per epoch, 2 epochs; resumed from checkpoint-8 (epoch 2)."""
    from stages import sft

    config = sft.Config(model=str(tiny_model), dataset=str(sft_dataset), num_train_epochs=2, save_steps=4, **SFT_FAST)
    assert config.group_by_length  # the default, whose order resumed differently
    whole = _fresh(tmp_path / "whole")
    assert sft.run(config, whole).counts["steps"] == 12
    resumed = _copy_checkpoint(whole.work_dir, 8, tmp_path / "resumed")
    result = sft.run(config, resumed)
    assert (result.counts["resumed_from_step"], result.counts["steps"]) == (8, 12)
    expected, got = _saved(whole.work_dir), _saved(resumed.work_dir)
    assert all(torch.equal(got[k], v) for k, v in expected.items())


def test_sft_resumed_at_max_steps_saves_the_checkpoint_unchanged(tiny_model, sft_dataset, tmp_path):
    """max_steps 5 of a 6-step epoch: transformers resumed checkpoint-5 into step 6."""
    from stages import sft

    config = sft.Config(model=str(tiny_model), dataset=str(sft_dataset), max_steps=5, save_steps=5, **SFT_FAST)
    whole = _fresh(tmp_path / "whole")
    sft.run(config, whole)
    resumed = _copy_checkpoint(whole.work_dir, 5, tmp_path / "resumed")
    result = sft.run(config, resumed)
    assert (result.counts["resumed_from_step"], result.counts["steps"]) == (5, 5)
    assert math.isnan(result.metrics["seconds_per_step"])  # no step ran
    expected, got = _saved(whole.work_dir), _saved(resumed.work_dir)
    assert all(torch.equal(got[k], v) for k, v in expected.items())


RECORD = "R1_TEST_PROMPT_RECORD"


def record_prompt_ids(prompts, completions, id, trainer_state, **columns) -> list[float]:
    """A GRPO reward (loaded by dotted path) that writes which prompts each optimizer step drew."""
    import os

    with open(os.environ[RECORD], "a") as out:
        out.write(json.dumps({"step": trainer_state.global_step + 1, "ids": sorted(set(id))}) + "\n")
    return [float(len(c[-1]["content"] if isinstance(c, list) else c) % 3) for c in completions]


def test_grpo_resumed_in_epoch_2_draws_the_prompts_of_the_uninterrupted_run(tiny_model, tmp_path, monkeypatch):
    """16 prompts, 4 per step: 4 steps per epoch; resumed from checkpoint-5 (epoch 2) its step 6
    drew epoch 1's second batch again (TRL's RepeatSampler restarts its generator). Then a
    resume from checkpoint-6 = max_steps trains nothing."""
    from pipeline.config import parse, read_yaml
    from stages import grpo

    repo = Path(__file__).resolve().parents[1]
    config = parse(
        grpo.Config,
        {
            **read_yaml(repo / "configs/grpo/tiny/hf_generate.yaml"),
            "model": str(tiny_model),
            "prompts": [{"source": "reasoning_gym", "task": "basic_arithmetic", "n_train": 16, "n_test": 0, "seed": 0}],
            "rewards": [{"name": "tests.test_resume_order:record_prompt_ids"}],
            "num_generations": 2,
            "per_device_train_batch_size": 8,
            "max_completion_length": 4,
            "max_steps": 6,
            "save_steps": 5,
            "dtype": "float32",
        },
        "test",
    )
    assert config.prompts_per_step == 4

    def drawn(ctx) -> dict[int, list[str]]:
        monkeypatch.setenv(RECORD, str(ctx.run_dir / "drawn.jsonl"))
        grpo.run(config, ctx)
        lines = [json.loads(line) for line in (ctx.run_dir / "drawn.jsonl").read_text().splitlines()]
        return {line["step"]: line["ids"] for line in lines}

    whole_ctx = _fresh(tmp_path / "whole")
    whole = drawn(whole_ctx)
    assert sorted(whole) == [1, 2, 3, 4, 5, 6] and all(len(ids) == 4 for ids in whole.values())
    assert sorted(i for s in (1, 2, 3, 4) for i in whole[s]) == sorted({i for s in (1, 2, 3, 4) for i in whole[s]})
    assert [whole[5], whole[6]] != [whole[1], whole[2]]  # epoch 2 has its own order
    assert drawn(_copy_checkpoint(whole_ctx.work_dir, 5, tmp_path / "from5")) == {6: whole[6]}

    at_max = _copy_checkpoint(whole_ctx.work_dir, 6, tmp_path / "from6")
    monkeypatch.setenv(RECORD, str(at_max.run_dir / "drawn.jsonl"))
    result = grpo.run(config, at_max)
    assert (result.counts["resumed_from_step"], result.counts["steps"], result.counts["completions"]) == (6, 6, 0)
    assert not (at_max.run_dir / "drawn.jsonl").exists()  # no rollout was scored
    expected, got = _saved(whole_ctx.work_dir), _saved(at_max.work_dir)
    assert all(torch.equal(got[k], v) for k, v in expected.items())

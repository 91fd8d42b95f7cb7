"""Dynamic sampling (``stages/common/dynamic_sampling.py``) and the prompt pool
(``stages/common/rl_prompts.py``).

Three layers: the pure pieces (group labels, refill draws, batch surgery); the trainer mixin on a
scripted trainer (TRL's batch layout, scripted rewards: which groups are dropped, how the batch is
refilled, the cap on rounds); and a real tiny GRPO run (HF generate) with dynamic sampling on.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch

from pipeline.config import ConfigError, parse, read_yaml
from stages import grpo
from stages.common import dynamic_sampling as ds
from stages.common.rl_prompts import select_by_pass_rate

G = 4


@pytest.mark.parametrize(
    "values, label",
    [
        ([1, 0, 0, 0], "informative"),  # one right answer: the signal GRPO needs
        ([1, 1, 1, 1], "all_correct"),
        ([0, 0, 0, 0], "all_wrong"),
        ([0.5, 0.5, 0.5, 0.5], "all_equal"),  # e.g. the same share of tests passed
        ([None, 1, None, None], "unjudged"),  # fewer than two judged completions
        ([None, 1, 0, None], "informative"),  # judged ones differ
        ([float("nan"), 0, 0, 0], "all_wrong"),  # NaN (TRL's None) is not a value
        ([0.25, 0.25 + 1e-9, 0.25, 0.25], "all_equal"),  # float noise is not a signal
    ],
)
def test_group_labels(values, label):
    assert ds.group_labels(values, G) == [label]


def test_group_labels_refuse_a_ragged_batch():
    with pytest.raises(ValueError, match="groups of 4"):
        ds.group_labels([1, 0, 1], G)


def test_refill_draws_are_reproducible_per_step_round_and_rank():
    a = ds.refill_indices(0, step=3, round_=1, rank=0, n=50, pool_size=10)
    assert a == ds.refill_indices(0, 3, 1, 0, 50, 10) and all(0 <= i < 10 for i in a)
    assert a != ds.refill_indices(0, 3, 2, 0, 50, 10)  # another round
    assert a != ds.refill_indices(0, 3, 1, 1, 50, 10)  # another process
    assert a != ds.refill_indices(0, 4, 1, 0, 50, 10)  # another step
    with pytest.raises(ValueError, match="empty"):
        ds.refill_indices(0, 0, 1, 0, 1, 0)


def _batch(ids: list[int], prompt_len: int, completion_len: int) -> dict:
    """A TRL-shaped batch: row r holds prompt id ids[r] in every prompt token and r+100 in its
    completion tokens; prompts left-padded (0), completions right-padded."""
    n = len(ids)
    prompt_ids = torch.tensor([[i] * prompt_len for i in ids])
    completion_ids = torch.tensor([[r + 100] * completion_len for r in range(n)])
    return {
        "prompt_ids": prompt_ids,
        "prompt_mask": torch.ones(n, prompt_len, dtype=torch.long),
        "completion_ids": completion_ids,
        "completion_mask": torch.ones(n, completion_len, dtype=torch.long),
        "advantages": torch.arange(n, dtype=torch.float32),
        "importance_sampling_ratio": torch.full((n, 1), 2.0),
        "num_items_in_batch": torch.tensor(float(n * completion_len)),
    }


def test_take_and_concat_keep_rows_aligned_and_repad():
    a, b = _batch([7, 8], prompt_len=3, completion_len=2), _batch([9], prompt_len=5, completion_len=4)
    out = ds.concat([ds.take_rows(a, [1]), b], pad_token_id=0)
    assert out["prompt_ids"].tolist() == [[0, 0, 8, 8, 8], [9, 9, 9, 9, 9]]  # left-padded
    assert out["prompt_mask"].tolist() == [[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]]
    assert out["completion_ids"].tolist() == [[101, 101, 0, 0], [100, 100, 100, 100]]  # right-padded
    assert out["completion_mask"].tolist() == [[1, 1, 0, 0], [1, 1, 1, 1]]
    assert out["advantages"].tolist() == [1.0, 0.0]
    assert out["importance_sampling_ratio"].shape == (2, 1)
    with pytest.raises(ValueError, match="pixel_values"):
        ds.take_rows({**a, "pixel_values": torch.zeros(2)}, [0])


@pytest.mark.parametrize("first", ["num_items_in_batch", "advantages"])
def test_concat_keeps_the_key_order_trl_shuffles_by(first):
    """TRL's shuffle_sequence_dict sizes the batch by the first entry: concat must keep the
    batch's key order (a set's order once put num_items_in_batch first: len() of a 0-d tensor)."""
    from trl.trainer.utils import shuffle_sequence_dict

    a = _batch([7, 8], prompt_len=3, completion_len=2)
    a = {first: a[first], **{k: v for k, v in a.items() if k != first}}
    out = ds.concat([a, _batch([9], prompt_len=3, completion_len=2)], pad_token_id=0)
    assert list(out) == list(a)
    if first == "num_items_in_batch":  # TRL's own layout never starts with a scalar
        return
    shuffled = shuffle_sequence_dict(out)
    assert sorted(shuffled["prompt_ids"][:, 0].tolist()) == [7, 8, 9]


# ----------------------------------------------------------------------------- the mixin, scripted


class ScriptedGRPO:
    """Stands in for TRL's GRPOTrainer: `_generate_and_score_completions` builds a batch from the
    inputs and calls `_calculate_rewards`, whose values come from `SCRIPT[prompt id](sample index)`."""

    def __init__(self, pool: list[int], script, dynamic: ds.DynamicSampling):
        self.script = script
        self.train_dataset = [{"pid": p} for p in pool]
        self.num_generations = G
        self.model = SimpleNamespace(training=True)
        self.args = SimpleNamespace(seed=0)
        self.state = SimpleNamespace(global_step=0)
        self.accelerator = SimpleNamespace(process_index=0, device="cpu", gather=lambda t: t)
        self.processing_class = SimpleNamespace(pad_token_id=0)
        self._metrics = defaultdict(lambda: defaultdict(list))
        self.rounds: list[list[int]] = []
        self._r1_filter, self._r1_dynamic = 0, dynamic

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        values = [self.script(x["pid"], j % G) for j, x in enumerate(inputs)]
        return torch.tensor([[v] for v in values], dtype=torch.float32)

    def _generate_and_score_completions(self, inputs):
        ids = [x["pid"] for x in inputs]
        self.rounds.append(ids[::G])
        self._calculate_rewards(inputs, None, None, None)
        return _batch(ids, prompt_len=2 + len(self.rounds), completion_len=3)


def _trainer(pool, script, **dynamic):
    cls = type("T", (ds.trainer_mixin(), ScriptedGRPO), {})
    return cls(pool, script, ds.DynamicSampling(enabled=True, **dynamic))


def scripted(pid: int, j: int) -> float:
    """Prompts 0-9 are always right, 10-19 never, 20-29 right on even samples (informative)."""
    return 1.0 if pid < 10 else 0.0 if pid < 20 else float(j % 2 == 0)


def test_dynamic_sampling_drops_exactly_the_all_equal_groups_and_refills_to_full_size():
    pool = list(range(30))
    t = _trainer(pool, scripted)
    first = [3, 12, 25, 14, 27, 5, 21, 16]  # 3 informative groups of 8
    batch = t._generate_and_score_completions([{"pid": p} for p in first for _ in range(G)])
    trained = batch["prompt_ids"][::G, -1].tolist()
    informative = [p for r in t.rounds for p in r if p >= 20]
    assert len(batch["completion_ids"]) == len(first) * G  # full size again
    assert all(p >= 20 for p in trained)  # only informative groups
    assert trained == informative[: len(first)]  # in the order they came
    m = {k: v[0] for k, v in t._metrics["train"].items()}
    sampled = [p for r in t.rounds for p in r]
    assert m["dynamic_sampling/groups_sampled"] == len(sampled)
    assert m["dynamic_sampling/groups_all_correct"] == sum(p < 10 for p in sampled)
    assert m["dynamic_sampling/groups_all_wrong"] == sum(10 <= p < 20 for p in sampled)
    assert m["dynamic_sampling/groups_kept"] == len(first) and m["dynamic_sampling/filled_zero_signal"] == 0
    assert m["dynamic_sampling/rounds"] == len(t.rounds) >= 2
    assert m["zero_signal/frac_groups_sampled"] == pytest.approx(5 / 8)  # plain GRPO: 5 of 8 without signal
    assert m["zero_signal/frac_groups_trained"] == 0.0
    assert batch["num_items_in_batch"].item() == batch["completion_mask"].sum().item()


def test_the_cap_on_rounds_ends_a_batch_that_cannot_fill():
    t = _trainer(list(range(20)), scripted, max_rounds=3)  # no informative prompt in the pool
    batch = t._generate_and_score_completions([{"pid": p} for p in (1, 11) for _ in range(G)])
    m = {k: v[0] for k, v in t._metrics["train"].items()}
    assert len(t.rounds) == 3 and m["dynamic_sampling/rounds"] == 3
    assert m["dynamic_sampling/filled_zero_signal"] == 2 and m["dynamic_sampling/groups_kept"] == 0
    assert len(batch["completion_ids"]) == 2 * G  # shape kept ...
    assert batch["advantages"].abs().sum() == 0 and batch["completion_mask"].sum() == 0  # ... moving nothing
    assert batch["num_items_in_batch"].item() == 0


def test_a_partly_filled_batch_trains_only_its_informative_rows():
    script = lambda pid, j: scripted(pid, j) if pid != 20 else 0.0  # noqa: E731 - only 21-29 informative
    t = _trainer([1, 2, 21], script, max_rounds=2, max_refill_factor=1)
    batch = t._generate_and_score_completions([{"pid": p} for p in (21, 1, 2) for _ in range(G)])
    kept = int(t._metrics["train"]["dynamic_sampling/groups_kept"][0])
    assert 1 <= kept < 3
    assert batch["completion_mask"][: kept * G].all() and not batch["completion_mask"][kept * G :].any()
    assert batch["num_items_in_batch"].item() == kept * G * 3


def test_unjudged_groups_are_dropped_unless_kept():
    # 30-39: prompts the filter reward cannot judge (a reward model's general prompts: accuracy None)
    script = lambda pid, j: math.nan if pid >= 30 else scripted(pid, j)  # noqa: E731 - TRL: None -> NaN
    first = [31, 21, 1, 32]
    for keep in (False, True):
        t = _trainer(list(range(40)), script, keep_unjudged=keep)
        batch = t._generate_and_score_completions([{"pid": p} for p in first for _ in range(G)])
        trained = batch["prompt_ids"][::G, -1].tolist()
        sampled = [p for r in t.rounds for p in r]
        usable = [p for p in sampled if 20 <= p < 30 or (keep and p >= 30)]
        assert trained == usable[: len(first)]
        assert any(p >= 30 for p in trained) == keep
        assert t._metrics["train"]["dynamic_sampling/groups_unjudged"][0] == sum(p >= 30 for p in sampled)


def test_without_dynamic_sampling_the_zero_signal_share_is_still_logged():
    t = _trainer(list(range(30)), scripted)
    t._r1_dynamic = ds.DynamicSampling(enabled=False)
    batch = t._generate_and_score_completions([{"pid": p} for p in (3, 12, 25, 27) for _ in range(G)])
    assert len(t.rounds) == 1 and batch["prompt_ids"][::G, -1].tolist() == [3, 12, 25, 27]
    assert t._metrics["train"]["zero_signal/frac_groups"] == [0.5]


# ----------------------------------------------------------------------------- config and the pool


def test_config_checks_the_filter_reward_and_the_prompt_source(tiny_model):
    from pathlib import Path

    smoke = read_yaml(Path(__file__).resolve().parents[1] / "configs/grpo/tiny/hf_generate.yaml")
    with pytest.raises(ConfigError, match="dynamic_sampling.reward 'correctness' is not one of"):
        parse(grpo.Config, {**smoke, "dynamic_sampling": {"enabled": True, "reward": "correctness"}}, "x.yaml")
    with pytest.raises(ConfigError, match="either prompts .* or prompt_pool"):
        parse(grpo.Config, {**smoke, "prompt_pool": "pool"}, "x.yaml")
    with pytest.raises(ConfigError, match="pass_rate_band: need 0 <= low < high <= 1"):
        parse(grpo.Config, {**smoke, "prompts": [], "prompt_pool": "pool", "pass_rate_band": [0.9, 0.1]}, "x.yaml")
    with pytest.raises(ConfigError, match="curriculum .* needs prompt_pool"):
        parse(grpo.Config, {**smoke, "curriculum": "easy_to_hard"}, "x.yaml")
    config = parse(grpo.Config, {**smoke, "prompts": [], "prompt_pool": "pool"}, "x.yaml")
    assert config.inputs() == {"model": smoke["model"], "prompt_pool": "pool"}


def test_pass_rate_band_selects_exactly_the_prompts_inside_it():
    rows = [
        {"id": str(i), "data_source": "a" if i < 5 else "b", "pass_rate": p}
        for i, p in enumerate([0.0, 0.1, 0.125, 0.5, 0.9, 1.0, 0.2, None, 0.875, 0.95])
    ]
    kept, counts = select_by_pass_rate(rows, (0.1, 0.9))
    assert [r["id"] for r in kept] == ["2", "3", "6", "8"]  # 0.1 and 0.9 are outside: exclusive
    assert counts == {"below": 2, "above": 3, "unjudged": 1, "kept": 4}
    kept, _ = select_by_pass_rate(rows, (0.1, 0.9), per_source={"b": (0.0, 1.0)})
    assert [r["id"] for r in kept] == ["2", "3", "6", "8", "9"]
    assert select_by_pass_rate(rows, None)[0] == rows


def _pool(tmp_path, rows: list[dict]):
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = tmp_path / "dataset"
    folder.mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(rows), folder / "data.parquet")
    return folder


def _row(i: int, p, source="reasoning_gym/chain_sum") -> dict:
    return {
        "id": f"q{i}",
        "data_source": source,
        "domain": "math",
        "prompt": [{"role": "user", "content": f"What is {i} + 1?"}],
        "answer": str(i + 1),
        "verification": "{}",
        "split": "train",
        "pass_rate": p,
        "pass_samples": 8,
    }


def test_grpo_reads_a_pool_in_its_band_easy_to_hard(tiny_model, tmp_path):
    from pathlib import Path

    from transformers import AutoTokenizer

    rates = [0.0, 0.25, 0.875, 1.0, 0.5, 0.125, None, 0.5]
    folder = _pool(tmp_path, [_row(i, p) for i, p in enumerate(rates)])
    smoke = read_yaml(Path(__file__).resolve().parents[1] / "configs/grpo/tiny/hf_generate.yaml")
    config = parse(grpo.Config, {**smoke, "prompts": [], "prompt_pool": "pool", "curriculum": "easy_to_hard"}, "x")
    dataset, counts = grpo.load_prompt_rows(config, AutoTokenizer.from_pretrained(tiny_model), str(folder))
    assert dataset["pass_rate"][:] == [0.875, 0.5, 0.5, 0.25, 0.125]
    assert counts == {
        "pool_rows": 8,
        "pool_dropped_below": 1,
        "pool_dropped_above": 1,
        "pool_dropped_unjudged": 1,
        "prompts_dropped_too_long": 0,
    }
    assert grpo.grpo_arguments(config, tmp_path).shuffle_dataset is False  # the curriculum's order is kept
    bad = _pool(tmp_path / "bad", [{**_row(0, 0.5), "answer": ""}])
    with pytest.raises(ValueError, match=r"data.parquet:1: field 'answer'"):
        grpo.load_prompt_rows(config, AutoTokenizer.from_pretrained(tiny_model), str(bad))
    with pytest.raises(ValueError, match="none of its 2 prompts"):
        grpo.load_prompt_rows(
            config,
            AutoTokenizer.from_pretrained(tiny_model),
            str(_pool(tmp_path / "easy", [_row(0, 1.0), _row(1, 1.0)])),
        )


# ----------------------------------------------------------------------------- a real run


def dropping_accuracy(prompts, completions, **columns) -> list[float]:
    """Accuracy scripted by prompt: chain_sum prompts always right (all-equal groups), the
    others right on every other completion (informative)."""
    return [1.0 if src.endswith("chain_sum") else float(i % 2) for i, src in enumerate(columns["data_source"])]


def test_a_grpo_run_with_dynamic_sampling_trains_on_informative_groups_only(tiny_model, tmp_path):
    from pathlib import Path

    from pipeline.runner import Resolver
    from pipeline.stage import StepContext

    smoke = read_yaml(Path(__file__).resolve().parents[1] / "configs/grpo/tiny/hf_generate.yaml")
    config = parse(
        grpo.Config,
        {
            **smoke,
            "model": str(tiny_model),
            "prompts": [
                {"source": "reasoning_gym", "task": "basic_arithmetic", "n_train": 8, "n_test": 0, "seed": 1},
                {"source": "reasoning_gym", "task": "chain_sum", "n_train": 8, "n_test": 0, "seed": 2},
            ],
            "rewards": [{"name": "tests.test_dynamic_sampling:dropping_accuracy"}, {"name": "format", "weight": 0.5}],
            "dynamic_sampling": {"enabled": True, "reward": "tests.test_dynamic_sampling:dropping_accuracy"},
            "max_steps": 2,
            "save_steps": 10,
        },
        "x.yaml",
    )
    work = tmp_path / "work"
    work.mkdir()
    ctx = StepContext(run="t", step="grpo", run_dir=tmp_path, work_dir=work, resolver=Resolver(tmp_path, set()))
    result = grpo.run(config, ctx)
    lines = [json.loads(x) for x in (work / "metrics.jsonl").read_text().splitlines()]
    steps = [x for x in lines if "dynamic_sampling/groups_kept" in x]
    assert len(steps) == 2 and result.counts["steps"] == 2
    for s in steps:
        assert s["dynamic_sampling/groups_kept"] == 2 and s["dynamic_sampling/filled_zero_signal"] == 0
        assert s["dynamic_sampling/groups_sampled"] == (
            s["dynamic_sampling/groups_informative"] + s["dynamic_sampling/groups_all_correct"]
        )
        assert s["zero_signal/frac_groups_trained"] == 0.0
    assert (work / "model" / "model.safetensors").is_file()

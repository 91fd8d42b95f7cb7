"""load_prompts (concatenation, determinism, id clashes, templates) and mix."""

import pytest

from data import PROMPT_COLUMNS, load_prompts, load_prompts_with_report, mix, validate_prompt_row
from data.mix import mix_counts

SOURCES = [
    {"source": "reasoning_gym", "task": "chain_sum", "n_train": 10, "n_test": 4, "seed": 1},
    {"source": "reasoning_gym", "task": "knights_knaves", "n_train": 5, "n_test": 2, "seed": 1},
    {"source": "humaneval", "limit": 3},
]


def test_concatenates_in_order_and_is_deterministic():
    dataset, report = load_prompts_with_report(SOURCES, split="train")
    assert dataset.column_names == list(PROMPT_COLUMNS)
    assert report.rows == {"reasoning_gym:chain_sum": 10, "reasoning_gym:knights_knaves": 5, "humaneval": 3}
    assert [r["data_source"] for r in dataset][::5] == ["reasoning_gym/chain_sum"] * 2 + [
        "reasoning_gym/knights_knaves",
        "humaneval",
    ]
    assert set(dataset["split"]) == {"train"}
    for row in dataset:
        validate_prompt_row(row)
    assert load_prompts(SOURCES, split="train").to_list() == dataset.to_list()


def test_both_splits_and_disjoint_ids():
    dataset = load_prompts(SOURCES)
    assert len(dataset) == 10 + 4 + 5 + 2 + 3 + 3
    train = {r["id"] for r in dataset if r["split"] == "train"}
    test = {r["id"] for r in dataset if r["split"] == "test"}
    assert train and test and not train & test


def test_r1_zero_prompts_are_strings():
    dataset = load_prompts(SOURCES[:1], split="test", template="r1_zero")
    assert dataset.features["prompt"].dtype == "string"
    assert all(p.endswith("Assistant:") for p in dataset["prompt"])


def test_same_source_twice_is_an_id_clash():
    with pytest.raises(ValueError, match="different seeds"):
        load_prompts([SOURCES[0], SOURCES[0]])


def test_empty_and_argument_errors():
    assert len(load_prompts([])) == 0
    with pytest.raises(ValueError, match="valid splits"):
        load_prompts(SOURCES, split="validation")
    with pytest.raises(ValueError, match="valid templates"):
        load_prompts(SOURCES, template="llama")


def test_mix_follows_weights_and_seed():
    math = load_prompts(SOURCES[:1], split="train")  # 10 rows
    code = load_prompts(SOURCES[2:], split="train")  # 3 rows
    mixed = mix([math, code], [2, 1], total=6, seed=0)
    assert sorted(mixed["domain"]) == ["code"] * 2 + ["math"] * 4
    assert mix([math, code], [2, 1], total=6, seed=0).to_list() == mixed.to_list()
    assert mix([math, code], [2, 1], total=6, seed=1)["id"] != mixed["id"]
    assert len(mix([math, code])) == 6  # equal weights, as many as the smaller part allows
    assert mix([math, code], [1, 0], shuffle=False)["id"] == math["id"]


@pytest.mark.parametrize(
    ("sizes", "weights", "total", "expected"),
    [
        ([100, 100], [3, 1], 8, [6, 2]),  # proportional
        ([100, 100, 100], [1, 1, 1], 10, [4, 3, 3]),  # largest remainder, ties to the first part
        ([100, 10], [1, 1], None, [10, 10]),  # total limited by the smaller part
        ([5, 0], [1, 0], None, [5, 0]),  # a zero weight takes nothing
    ],
)
def test_mix_counts(sizes, weights, total, expected):
    assert mix_counts(sizes, weights, total) == expected


@pytest.mark.parametrize(
    ("sizes", "weights", "total", "message"),
    [([1], [1, 1], None, "weights"), ([1, 1], [0, 0], None, "not all zero"), ([3, 3], [1, 1], 10, "needs 5")],
)
def test_mix_counts_errors(sizes, weights, total, message):
    with pytest.raises(ValueError, match=message):
        mix_counts(sizes, weights, total)


def test_stratify_round_robins_sources_without_repeats():
    import doctest
    import importlib

    from data import stratify

    assert doctest.testmod(importlib.import_module("data.mix")).failed == 0  # `data.mix` is the function
    ds = load_prompts(
        [
            {"source": "reasoning_gym", "task": "chain_sum", "n_train": 5, "n_test": 0, "seed": 1},
            {"source": "reasoning_gym", "task": "countdown", "n_train": 3, "n_test": 0, "seed": 2},
        ],
        split="train",
    )
    ordered = stratify(ds, seed=7)
    sources = [s.split("/")[1] for s in ordered["data_source"][:]]
    assert sources == ["chain_sum", "countdown"] * 3 + ["chain_sum"] * 2
    assert sorted(ordered["id"][:]) == sorted(ds["id"][:])  # every row once
    assert ordered["id"][:] == stratify(ds, seed=7)["id"][:]  # deterministic per seed
    other = stratify(ds, seed=8)["id"][:]
    assert other != ordered["id"][:] and [i.split("/")[1] for i in other] == sources  # same rotation, other rows
    with pytest.raises(KeyError, match="no column 'task'"):
        stratify(ds, "task")

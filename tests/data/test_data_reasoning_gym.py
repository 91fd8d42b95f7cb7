"""reasoning-gym source: valid rows, determinism, disjoint splits, and gold answers verified."""

import json
import re

import pydantic
import pytest

from data import ReasoningGymSource, parse_source, validate_prompt_row
from data.prompts import question_of
from data.sources.reasoning_gym_tasks import DEFAULT_TASK_KWARGS, TASK_DOMAINS, score_answer

# The tasks the pipeline's configs use, with their expected domain.
TASKS = {
    "basic_arithmetic": "math",
    "chain_sum": "math",
    "gsm_symbolic": "math",
    "countdown": "math",
    "knights_knaves": "logic",
    "syllogism": "logic",
}


def load(task, split=None, **config):
    config = {"task": task, "n_train": 12, "n_test": 6, "seed": 3} | config
    return ReasoningGymSource(**config).load(split).rows


@pytest.mark.parametrize("task", TASKS)
def test_rows_are_valid_and_gold_answers_score_one(task):
    rows = load(task)
    assert [r["split"] for r in rows] == ["train"] * 12 + ["test"] * 6
    for row in rows:
        validate_prompt_row(row)
        assert row["domain"] == TASKS[task]
        assert row["data_source"] == f"reasoning_gym/{task}"
        assert row["answer"]
        spec = json.loads(row["verification"])  # the entry survives the JSON round trip...
        assert spec["kind"] == "reasoning_gym" and spec["task"] == task
        assert question_of(row["prompt"]) == spec["entry"]["question"]
        assert score_answer(row["verification"], spec["entry"]["answer"]) == 1.0  # ...and its verifier accepts the gold
        assert score_answer(spec, row["answer"]) == 1.0


def test_same_config_gives_same_rows_and_other_seed_differs():
    assert load("chain_sum") == load("chain_sum")
    other = load("chain_sum", seed=4)
    assert [question_of(r["prompt"]) for r in other] != [question_of(r["prompt"]) for r in load("chain_sum")]


def test_train_and_test_are_disjoint_by_id_and_question():
    rows = load("basic_arithmetic", n_train=150, n_test=40)  # small numbers: many repeated questions
    train = [r for r in rows if r["split"] == "train"]
    test = [r for r in rows if r["split"] == "test"]
    assert len(train) == 150 and len(test) == 40
    assert not {r["id"] for r in train} & {r["id"] for r in test}
    train_questions = {question_of(r["prompt"]) for r in train}
    test_questions = [question_of(r["prompt"]) for r in test]
    assert not train_questions & set(test_questions)
    assert len(set(test_questions)) == len(test_questions)


def test_split_argument_and_stability_of_train():
    assert load("chain_sum", split="train") == load("chain_sum", split="train", n_test=50)  # train ignores n_test
    assert load("chain_sum", split="test") == [r for r in load("chain_sum") if r["split"] == "test"]
    assert load("chain_sum", split="train")[0]["id"] == "reasoning_gym/chain_sum/seed3/train/0"


def numbers_in(rows):
    expressions = [json.loads(r["verification"])["entry"]["metadata"]["expression"] for r in rows]
    return [number for e in expressions for number in re.findall(r"\d+", e)]


def test_default_kwargs_are_small_and_overridable():
    assert "basic_arithmetic" in DEFAULT_TASK_KWARGS and set(TASKS) <= set(TASK_DOMAINS)
    assert max(len(n) for n in numbers_in(load("basic_arithmetic", n_test=0))) <= 2
    big = load("basic_arithmetic", n_test=0, task_kwargs={"min_digits": 4, "max_digits": 4})
    assert max(len(n) for n in numbers_in(big)) == 4


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"task": "no_such_task"}, "valid tasks"),
        ({"task": "chain_sum", "task_kwargs": {"min_termz": 2}}, "invalid task_kwargs"),
        ({"task": "chain_sum", "task_kwargs": {"min_terms": 5, "max_terms": 2}}, "invalid task_kwargs"),
        ({"task": "chain_sum", "task_kwargs": {"seed": 2}}, "must not set"),
        ({"task": "ab"}, "no default domain"),
        ({"task": "chain_sum", "n_train": -1}, "greater than or equal"),
        ({"task": "chain_sum", "colour": "red"}, "valid keys"),
    ],
)
def test_config_errors(config, message):
    with pytest.raises(pydantic.ValidationError, match=message):
        parse_source({"source": "reasoning_gym"} | config)


def test_config_is_frozen_and_domain_overridable():
    source = ReasoningGymSource(task="ab", domain="logic", n_train=1, n_test=0)
    with pytest.raises(pydantic.ValidationError):
        source.seed = 5
    assert load("ab", domain="logic", n_train=2, n_test=0)[0]["domain"] == "logic"


def test_too_small_task_space_for_test_raises():
    tiny = {
        "min_terms": 2,
        "max_terms": 2,
        "min_digits": 1,
        "max_digits": 1,
        "operators": ["+"],
        "allow_parentheses": False,
        "allow_negation": False,
    }  # about 120 distinct questions
    with pytest.raises(ValueError, match="test questions"):
        load("basic_arithmetic", n_train=10, n_test=200, task_kwargs=tiny)

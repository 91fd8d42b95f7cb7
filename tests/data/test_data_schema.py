"""validate_prompt_row: one valid row, then one broken field per case."""

import json

import pytest

from data import PROMPT_COLUMNS, PromptRowError, validate_prompt_row
from data.schema import prompt_features


def good_row(**changes):
    row = {
        "id": "x/1",
        "data_source": "file:x",
        "domain": "math",
        "prompt": [{"role": "system", "content": "Think."}, {"role": "user", "content": "1 + 1?"}],
        "answer": "2",
        "verification": "{}",
        "split": "train",
    }
    row.update(changes)
    return row


def test_valid_rows_pass():
    validate_prompt_row(good_row())
    validate_prompt_row(good_row(prompt="User: 1 + 1?. Assistant:"))  # r1_zero form
    tests = {"kind": "python_tests", "test": "def check(c): pass", "entry_point": "f", "prompt": "def f():"}
    validate_prompt_row(good_row(domain="code", answer="", verification=json.dumps(tests)))
    validate_prompt_row(good_row(verification='{"kind": "my_own_checker"}'))  # unknown kinds allowed


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"id": ""}, "id"),  # ids must be non-empty
        ({"id": 3}, "id"),  # ... and strings
        ({"domain": "poetry"}, "domain"),  # not one of DOMAINS
        ({"split": "validation"}, "split"),  # not one of SPLITS
        ({"prompt": []}, "prompt"),  # empty message list
        ({"prompt": "   "}, "prompt"),  # blank string prompt
        ({"prompt": [{"role": "user", "content": ""}]}, "prompt"),  # empty content
        ({"prompt": [{"role": "robot", "content": "hi"}]}, "prompt"),  # unknown role
        (
            {"prompt": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]},
            "prompt",
        ),  # ends with assistant
        ({"prompt": 5}, "prompt"),  # wrong type
        ({"answer": 2}, "answer"),  # answers are strings
        ({"verification": "not json"}, "verification"),  # must parse
        ({"verification": "[1]"}, "verification"),  # must be an object
        ({"verification": '{"kind": "python_tests", "test": "t"}'}, "verification"),  # missing entry_point/prompt
        ({"verification": '{"kind": "reasoning_gym", "task": "x", "entry": "e"}'}, "verification"),  # entry not a dict
        ({"verification": '{"test": "t"}'}, "verification"),  # non-empty without a kind
        ({"extra": 1}, "extra"),  # unknown column
    ],
)
def test_bad_field_is_named(change, field):
    with pytest.raises(PromptRowError) as caught:
        validate_prompt_row(good_row(**change))
    assert caught.value.field == field


@pytest.mark.parametrize("column", PROMPT_COLUMNS)
def test_missing_column_is_named(column):
    row = good_row()
    del row[column]
    with pytest.raises(PromptRowError, match=column):
        validate_prompt_row(row)


def test_features_follow_template():
    assert set(prompt_features("chat")) == set(PROMPT_COLUMNS)
    assert prompt_features("r1_zero")["prompt"].dtype == "string"

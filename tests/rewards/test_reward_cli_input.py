"""`r1 rewards score` on malformed rows: the file, the line and the field are named, exit 2,
and OUTPUT is never left half written (a previous OUTPUT survives)."""

import json
import logging

import pytest
from typer.testing import CliRunner

from rewards import get
from rewards.base import completion_text
from rewards.cli import app

GOOD = {"completion": "<think>6*7</think><answer>42</answer>", "answer": "42"}


@pytest.mark.parametrize(
    "bad,words",
    [
        ({"completion": ["<think>a</think>", "b"]}, ["'completion'", "list of messages", "item 0"]),
        ({"completion": 42}, ["'completion' must be a string or a list of messages, got int"]),
        ({**GOOD, "verification": [1, 2]}, ["'verification'", "got list"]),
        ({**GOOD, "verification": 7}, ["'verification'", "got int"]),
        ({**GOOD, "verification": "{kind: python_tests"}, ["'verification'"]),
        ({**GOOD, "verification": "[1]"}, ["'verification'", "JSON object"]),
        ({**GOOD, "answer": {"value": 42}}, ["'answer'", "got dict"]),
        ({**GOOD, "prompt": 5}, ["'prompt'", "got int"]),
        ({**GOOD, "prompt": [{"role": "user", "content": "q"}, "x"]}, ["'prompt'", "item 1"]),
        ({**GOOD, "completion_ids": ["a"]}, ["'completion_ids'"]),
    ],
)
def test_a_malformed_row_names_file_line_and_field_and_writes_nothing(tmp_path, bad, words):
    source = tmp_path / "in.jsonl"
    rows = [GOOD] * 4 + [bad] + [GOOD] * 3
    source.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    out = tmp_path / "out.jsonl"
    out.write_text("previous results\n", encoding="utf-8")
    result = CliRunner().invoke(
        app, ["score", str(source), "-r", "accuracy,format", "-o", str(out), "--batch-size", "2"]
    )
    text = " ".join(result.output.split())  # rich wraps long lines
    assert result.exit_code == 2, result.output
    assert f"{source}:5:" in text.replace(" ", "") or f"{source}:5:" in text
    for word in words:
        assert word in text, (word, text)
    assert out.read_text(encoding="utf-8") == "previous results\n"  # untouched
    assert not (tmp_path / "out.jsonl.partial").exists()


def test_valid_rows_replace_output_and_conversational_rows_score(tmp_path):
    source = tmp_path / "in.jsonl"
    rows = [
        GOOD,
        {
            "completion": [{"role": "assistant", "content": GOOD["completion"]}],
            "answer": "42",
            "prompt": [{"role": "user", "content": "6*7?"}],
        },
    ]
    source.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    out = tmp_path / "out.jsonl"
    out.write_text("previous results\n", encoding="utf-8")
    result = CliRunner().invoke(app, ["score", str(source), "-r", "accuracy,format", "-o", str(out)])
    assert result.exit_code == 0, result.output
    scored = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert [r["rewards"] for r in scored] == [{"accuracy": 1.0, "format": 1.0}] * 2
    assert not (tmp_path / "out.jsonl.partial").exists()


def test_param_of_a_module_attr_reward(tmp_path):
    source = tmp_path / "in.jsonl"
    source.write_text(json.dumps({"completion": "a b a b a b a b"}) + "\n", encoding="utf-8")
    out = tmp_path / "out.jsonl"
    name = "rewards.repetition:Repetition"
    result = CliRunner().invoke(app, ["score", str(source), "-r", name, "-p", f"{name}.ngram=2", "-o", str(out)])
    assert result.exit_code == 0, result.output
    value = json.loads(out.read_text())["rewards"][name]
    assert (
        value
        == get("repetition", ngram=2)([""], ["a b a b a b a b"])[0]
        != get("repetition")([""], ["a b a b a b a b"])[0]
    )


def test_completion_text_names_what_a_bad_list_holds():
    with pytest.raises(TypeError, match="list of messages .* not a list of str"):
        completion_text(["a", "b"])


def test_accuracy_warns_once_about_a_verification_that_is_not_json(caplog):
    import rewards.accuracy as accuracy

    accuracy._warned_kinds.discard("<malformed>")
    with caplog.at_level(logging.WARNING, logger="rewards.accuracy"):
        values = get("accuracy")(["", ""], ["x", "y"], answer=["1", "1"], verification=["{kind:", "{kind:"])
    assert values == [None, None]
    assert sum("not a JSON object" in r.getMessage() for r in caplog.records) == 1

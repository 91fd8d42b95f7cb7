"""`r1 data preview` on each kind of source."""

import json

import pytest
from typer.testing import CliRunner

from data.cli import app
from data.sources import FileSource, HubSource, HumanEvalSource, ReasoningGymSource, parse_source
from data.spec import source_from_spec

runner = CliRunner()


@pytest.mark.parametrize(
    ("spec", "kind"),
    [
        ("reasoning_gym:countdown", ReasoningGymSource),
        ("humaneval", HumanEvalSource),
        ("prompts/x.jsonl", FileSource),
        ("x.parquet", FileSource),
        ("openai/gsm8k:main", HubSource),
        ("hub:openai/gsm8k", HubSource),
    ],
)
def test_source_from_spec(spec, kind):
    assert isinstance(parse_source(source_from_spec(spec, limit=3)), kind)
    assert parse_source(source_from_spec("openai/gsm8k:main", limit=3)).subset == "main"


def test_preview_reasoning_gym_and_humaneval():
    result = runner.invoke(app, ["preview", "reasoning_gym:chain_sum", "-n", "2", "--split", "test", "--seed", "4"])
    assert result.exit_code == 0, result.output
    assert "reasoning_gym/chain_sum/seed4/test/1" in result.output and "2 row(s)" in result.output
    result = runner.invoke(app, ["preview", "humaneval", "-n", "1", "--template", "r1_zero"])
    assert result.exit_code == 0 and "humaneval/HumanEval/1" in result.output


def test_preview_file_as_json(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps({"question": "[bold]not markup[/bold]?", "answer": "1"}) + "\n")
    result = runner.invoke(app, ["preview", str(path), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output.splitlines()[0])["id"] == "file:p/1"


def test_preview_errors_are_short():
    result = runner.invoke(app, ["preview", "reasoning_gym:no_such_task"])
    assert result.exit_code == 1 and "valid tasks" in result.output
    result = runner.invoke(app, ["preview", "humaneval", "--split", "dev"])
    assert result.exit_code != 0
    # without a task it is not tried as a hub dataset (25 s of retries offline)
    result = runner.invoke(app, ["preview", "reasoning_gym"])
    assert result.exit_code == 1 and "give a task: reasoning_gym:<task>" in " ".join(result.output.split())

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


def test_preview_sharegpt_names_the_cut():
    result = runner.invoke(app, ["preview", "sharegpt", "-n", "3"])
    assert result.exit_code == 0, result.output
    assert "sharegpt/QWJhYvA_0" in result.output and "3 row(s) of sharegpt [train]" in result.output
    assert "cut off mid-record at byte 125,506,645" in " ".join(result.output.split())


def test_preview_harmful_prompts_test_split_as_json():
    result = runner.invoke(app, ["preview", "harmful_prompts", "-n", "2", "--split", "test", "--json"])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.output.splitlines()]
    assert [r["split"] for r in rows] == ["test", "test"] and {r["domain"] for r in rows} == {"safety"}


def test_export_sft_writes_rows_mix_can_read(tmp_path):
    out = tmp_path / "general.jsonl"
    result = runner.invoke(app, ["export-sft", "sharegpt", "--out", str(out), "-n", "4"])
    assert result.exit_code == 0, result.output
    assert "wrote 4 SFT row(s) of sharegpt [train]" in result.output
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 4 and rows[0]["id"] == "sharegpt/QWJhYvA_0"
    assert rows[0]["messages"][-1]["content"].startswith("<think>\n</think>\n<answer>Here are the main ideas")
    result = runner.invoke(app, ["export-sft", "harmful_prompts", "--out", str(tmp_path / "h.jsonl"), "-n", "1"])
    assert result.exit_code == 1 and "no reference answer" in result.output

"""The ``r1`` command line, driven in-process by typer's CliRunner.

No model is loaded: the commands that run steps (each in a child process, as the CLI does)
run an eval of no models, the cheapest real step.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import typer
import yaml
from typer.testing import CliRunner

import stages
from pipeline import store
from pipeline.cli import app

runner = CliRunner()

# The design's command set: the recipe runner, one command per stage kind, and the tools.
DESIGN_COMMANDS = [
    "run",
    "generate",
    "sft",
    "grpo",
    "distill",
    "eval",
    "validate",
    "inspect",
    "rewards",
    "models",
    "data",
]

GENERATE = {
    "kind": "generate",
    "model": "some-model",
    "prompts": [{"source": "reasoning_gym", "task": "basic_arithmetic", "n_train": 4, "n_test": 0}],
}


def _flat(text: str) -> str:
    """Collapse whitespace (rich wraps long lines at the terminal width)."""
    return " ".join(text.split())


def _write(path: Path, data) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@pytest.fixture(autouse=True)
def _own_root(tmp_path, monkeypatch):
    monkeypatch.setenv("R1_HOME", str(tmp_path / "home"))


# ----------------------------------------------------------------------------- help


def test_help_lists_every_command():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0, result.output
    registered = set(typer.main.get_command(app).commands)
    for name in DESIGN_COMMANDS:
        assert name in registered, f"`r1 {name}` is not a command"
        assert name in result.output


def test_every_stage_kind_is_a_command():
    """Stage subcommands come from the stages registry, so a new stage module gets one."""
    assert set(stages.kinds()) <= set(typer.main.get_command(app).commands)


@pytest.mark.parametrize("kind", stages.kinds())
def test_stage_subcommand_help(kind):
    result = runner.invoke(app, [kind, "--help"])
    out = _flat(result.output)
    assert result.exit_code == 0, out
    first_doc_line = stages.get(kind).__doc__.strip().splitlines()[0]
    assert _flat(first_doc_line)[:40] in out  # the module docstring's first line
    for option in ("--set", "--run", "--force", "--step"):
        assert option in out


def test_stage_commands_use_hyphens_and_keep_the_kind_as_a_hidden_alias(tmp_path):
    commands = typer.main.get_command(app).commands
    assert not commands["reward-model"].hidden and not commands["preference-pairs"].hidden
    assert commands["reward_model"].hidden and commands["preference_pairs"].hidden  # the kind, as in configs
    assert "sft" in commands and "sft" == commands["sft"].name  # no underscore: one name
    config = _write(tmp_path / "rm.yaml", {"kind": "reward_model", "dataset": "pairs"})
    result = runner.invoke(app, ["sft", str(config)])
    assert result.exit_code == 2 and "is a `kind: reward_model` config; use `r1 reward-model`" in _flat(result.output)


@pytest.mark.parametrize("command", ["run", "validate", "inspect", "rewards", "models", "data"])
def test_tool_command_help(command):
    result = runner.invoke(app, [command, "--help"])
    assert result.exit_code == 0, result.output


# ----------------------------------------------------------------------------- errors exit 2


def test_run_with_unknown_key_exits_2_with_the_message(tmp_path):
    step = {"name": "data", "config": {**GENERATE, "sampling": {"temprature": 0.5}}}
    path = _write(tmp_path / "p.yaml", {"name": "p", "run": "p", "steps": [step]})
    result = runner.invoke(app, ["run", str(path)])
    out = _flat(result.output)
    assert result.exit_code == 2, out
    assert "error:" in out and "sampling.temprature" in out and "valid keys:" in out and "temperature" in out
    assert not (store.runs_root() / "p").exists()  # nothing ran


def test_run_with_malformed_set_exits_2(tmp_path):
    path = _write(tmp_path / "p.yaml", {"name": "p", "run": "p", "steps": [{"name": "data", "config": GENERATE}]})
    result = runner.invoke(app, ["run", str(path), "--set", "max_steps"])
    assert result.exit_code == 2 and "KEY=VALUE" in _flat(result.output)


def test_stage_command_with_unknown_key_exits_2(tmp_path):
    path = _write(tmp_path / "g.yaml", {**GENERATE, "modle": "x"})
    result = runner.invoke(app, ["generate", str(path)])
    out = _flat(result.output)
    assert result.exit_code == 2 and "'modle'" in out and "valid keys:" in out


def test_stage_command_refuses_a_config_of_another_kind(tmp_path):
    path = _write(tmp_path / "e.yaml", {"kind": "eval", "models": ["m"], "prompts": GENERATE["prompts"]})
    result = runner.invoke(app, ["generate", str(path)])
    out = _flat(result.output)
    assert result.exit_code == 2 and "kind: eval" in out and "r1 eval" in out


def test_validate_shows_the_expected_type_verbatim(tmp_path):
    """Messages are printed as text: 'list[str]' must not be eaten as rich markup."""
    path = _write(tmp_path / "bad.yaml", {**GENERATE, "rewards": 5})
    result = runner.invoke(app, ["validate", str(path)])
    out = _flat(result.output)
    assert result.exit_code == 2
    assert "'rewards'" in out and "expected list[str]" in out, out


def test_validate_missing_file_exits_2(tmp_path):
    result = runner.invoke(app, ["validate", str(tmp_path / "absent.yaml")])
    assert result.exit_code == 2 and "no such config file" in _flat(result.output)


def test_validate_pipeline_with_empty_steps_exits_2(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("name: p\nrun: p\nsteps:\n")
    result = runner.invoke(app, ["validate", str(path)])
    assert result.exit_code == 2, repr(result.exception)


def test_validate_reports_every_bad_file(tmp_path):
    a = _write(tmp_path / "a.yaml", {**GENERATE, "modle": "x"})
    b = _write(tmp_path / "b.yaml", {"kind": "gpro"})
    result = runner.invoke(app, ["validate", str(a), str(b)])
    out = _flat(result.output)
    assert result.exit_code == 2
    assert out.count("invalid") == 2 and "'modle'" in out and "'gpro'" in out and "valid kinds:" in out


# ----------------------------------------------------------------------------- r1 run


# The cheapest real step: an eval of no models only loads two held-out prompts and writes
# empty results, but it goes through the CLI's real path (each step in a child process).
EVAL_NO_MODELS = {
    "kind": "eval",
    "models": [],
    "prompts": [{"source": "reasoning_gym", "task": "basic_arithmetic", "n_train": 4, "n_test": 2, "seed": 1}],
}


def test_run_then_rerun_skips(tmp_path):
    path = _write(tmp_path / "p.yaml", {"name": "p", "run": "p", "steps": [{"name": "ev", "config": EVAL_NO_MODELS}]})
    first = runner.invoke(app, ["run", str(path), "--set", "ev.seed=7"])
    assert first.exit_code == 0, first.output
    manifest = store.read_manifest(store.runs_root() / "p" / "ev")
    assert manifest["config"]["seed"] == 7  # the STEP.KEY override reached the step
    assert manifest["result"]["counts"] == {"models": 0, "questions": 2}
    assert not (store.runs_root() / "p" / "ev" / ".result.json").exists()
    assert (store.runs_root() / "p" / "summary.md").is_file()

    second = runner.invoke(app, ["run", str(path), "--set", "ev.seed=7"])
    assert second.exit_code == 0 and "up to date" in _flat(second.output)
    assert store.read_manifest(store.runs_root() / "p" / "ev") == manifest

    unknown = runner.invoke(app, ["run", str(path), "--only", "nope"])
    assert unknown.exit_code == 2 and "no step 'nope'" in _flat(unknown.output)


def test_stage_command_runs_one_step_and_skips_when_up_to_date(tmp_path):
    path = _write(tmp_path / "ev.yaml", EVAL_NO_MODELS)
    first = runner.invoke(app, ["eval", str(path), "--run", "single", "--step", "held_out"])
    assert first.exit_code == 0, first.output
    assert store.read_manifest(store.runs_root() / "single" / "held_out")["kind"] == "eval"
    again = runner.invoke(app, ["eval", str(path), "--run", "single", "--step", "held_out"])
    assert again.exit_code == 0 and "up to date" in _flat(again.output)


# ----------------------------------------------------------------------------- r1 inspect


def _sft_rows(n: int) -> list[dict]:
    return [
        {
            "id": f"toy/{i}",
            "data_source": "toy" if i % 2 else "other",
            "domain": "math",
            "messages": [
                {"role": "user", "content": f"What is {i} + 1?"},
                {"role": "assistant", "content": f"<think>\n{i} + 1 = {i + 1}\n</think>\n<answer>{i + 1}</answer>"},
            ],
            "rewards": json.dumps({"accuracy": 1.0, "format": None if i == 0 else 1.0}),
            "source_model": "toy",
            "meta": "{}",
        }
        for i in range(n)
    ]


SFT_COLUMNS = "id, data_source, domain, messages, rewards, source_model, meta"


def test_inspect_parquet_file_prints_size_and_columns(tmp_path):
    path = tmp_path / "data.parquet"
    pd.DataFrame(_sft_rows(5)).to_parquet(path)
    result = runner.invoke(app, ["inspect", str(path), "--sample", "1"])
    out = _flat(result.output)
    assert result.exit_code == 0, out
    assert "5 rows" in out and f"columns: {SFT_COLUMNS}" in out
    assert "rows per domain" in out and "rows per data_source" in out and "accuracy" in out


def test_inspect_dataset_folder_and_step_of_a_run(tmp_path):
    folder = store.runs_root() / "myrun" / "cold_start_data" / "dataset"
    folder.mkdir(parents=True)
    pd.DataFrame(_sft_rows(3)).to_parquet(folder / "part-0.parquet")
    pd.DataFrame(_sft_rows(4)).to_parquet(folder / "part-1.parquet")
    direct = runner.invoke(app, ["inspect", str(folder), "--sample", "0"])
    assert direct.exit_code == 0 and "7 rows" in _flat(direct.output)
    by_step = runner.invoke(app, ["inspect", "cold_start_data", "--run", "myrun", "--sample", "0"])
    assert by_step.exit_code == 0 and "7 rows" in _flat(by_step.output)


def test_inspect_missing_dataset_exits_2(tmp_path):
    result = runner.invoke(app, ["inspect", str(tmp_path / "nothing")])
    out = _flat(result.output)
    assert result.exit_code == 2 and "no dataset at" in out and "--run" in out


def test_validate_every_config_of_the_repo_skipping_accelerate_files():
    """The README's command: stage and pipeline configs are checked, accelerate launch configs
    (another tool's format) are skipped and say so."""
    root = Path(__file__).resolve().parents[1]
    files = sorted(str(p) for p in (root / "configs").glob("*/*.yaml")) + sorted(
        str(p) for p in (root / "configs").glob("*/*/*.yaml")
    )
    result = CliRunner().invoke(app, ["validate", *files])
    out = " ".join(result.output.split())
    assert result.exit_code == 0, out
    assert out.count("skipped") == len(list((root / "configs" / "accelerate").glob("*.yaml"))) > 0
    assert out.count("ok ") == len(files) - out.count("skipped")
    assert "warning" not in out  # no input of the shipped pipelines looks like a typo


def test_validate_warns_about_an_input_that_looks_like_a_misspelled_step(tmp_path):
    root = Path(__file__).resolve().parents[1]
    text = (root / "configs/pipeline/r1.yaml").read_text()
    typo = tmp_path / "typo.yaml"
    typo.write_text(text.replace("dataset: rejection_sampling}", "dataset: rejection_samplng}"))
    result = CliRunner().invoke(app, ["validate", str(typo)])
    out = " ".join(result.output.split())
    assert "input 'dataset' = 'rejection_samplng' is not a step of this pipeline" in out, out
    assert out.count("warning:") == 2 and result.exit_code == 0  # sft and distill; a hub id stays possible

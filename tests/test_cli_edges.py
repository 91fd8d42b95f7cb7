"""The command line's edges (issue 19, items 11 and 12): help pages that read as typed, and a
misspelt step selection that leaves nothing behind."""

from __future__ import annotations

import pytest
import typer
import yaml
from typer.testing import CliRunner

from pipeline import store
from pipeline.cli import app

runner = CliRunner()


@pytest.fixture(autouse=True)
def _own_root(tmp_path, monkeypatch):
    monkeypatch.setenv("R1_HOME", str(tmp_path / "home"))


def _commands(cmd, path):
    """Every command of the tree under ``cmd``, as (argument path, command)."""
    yield path, cmd
    for name, sub in getattr(cmd, "commands", {}).items():
        yield from _commands(sub, [*path, name])


ALL_COMMANDS = [path for path, _ in _commands(typer.main.get_command(app), [])]


@pytest.mark.parametrize("path", ALL_COMMANDS, ids=lambda p: " ".join(p) or "r1")
def test_help_pages_show_no_rst_literals_and_no_value_for_flags(path):
    """Before: `r1 --help` printed ``r1 run ...`` with its reStructuredText backticks, and every
    flag (--help, --force, --keep-checkpoints, ...) showed `<bool>` as if it took a value."""
    result = runner.invoke(app, [*path, "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "``" not in result.output
    assert "<bool>" not in result.output and "<list[" not in result.output
    help_line = next(line for line in result.output.splitlines() if line.strip("│ ").startswith("--help"))
    assert " ".join(help_line.strip("│ ").split()) == "--help Show this message and exit."


def test_top_level_help_keeps_the_literals_as_single_backticks():
    out = runner.invoke(app, ["--help"], env={"COLUMNS": "200"}).output
    assert "The `r1` command line" in out and "`r1 run configs/pipeline/r1.yaml` runs the pipeline" in out


def test_a_repeatable_option_shows_its_element_type():
    out = runner.invoke(app, ["eval", "--help"], env={"COLUMNS": "200"}).output
    model = next(line for line in out.splitlines() if line.strip("│ ").startswith("--model"))
    assert model.split()[1:3] == ["--model", "<str>"]


def test_eval_help_usage_is_the_command_typed():
    """`r1 eval --help` goes to the default `run` command; its usage line said `r1 eval run`."""
    implicit = runner.invoke(app, ["eval", "--help"], prog_name="r1", env={"COLUMNS": "200"}).output
    assert "Usage: r1 eval [OPTIONS] [config]" in implicit
    explicit = runner.invoke(app, ["eval", "run", "--help"], prog_name="r1", env={"COLUMNS": "200"}).output
    assert "Usage: r1 eval run [OPTIONS] [config]" in explicit
    assert "--model" in implicit and "--data" in implicit  # still the run command's options


def test_run_only_an_unknown_step_creates_no_run_folder_and_no_report(tmp_path):
    """Before: `r1 run --only nosuch` created runs/<run>/ and wrote report.md/.html into it,
    then failed."""
    path = tmp_path / "p.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "name": "p",
                "run": "fresh",
                "steps": [
                    {
                        "name": "ev",
                        "config": {
                            "kind": "eval",
                            "models": [],
                            "prompts": [
                                {"source": "reasoning_gym", "task": "basic_arithmetic", "n_train": 4, "n_test": 2}
                            ],
                        },
                    }
                ],
            }
        )
    )
    for args in (["--only", "nosuch"], ["--from", "nosuch"]):
        result = runner.invoke(app, ["run", str(path), *args])
        assert result.exit_code == 2
        assert "no step 'nosuch'" in " ".join(result.output.split()) and "steps: ev" in result.output
        assert "report:" not in result.output
        assert not (store.runs_root() / "fresh").exists()

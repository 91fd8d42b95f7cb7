"""``r1 status`` and ``r1 ls``: steps done / partial / pending / stale from a run folder, as a table
and as JSON; and the crash-safety pieces of the store they read (recovery of a step finished
but not moved into place, a metrics line cut by a crash).

The steps are evals of no model (a real stage that only loads its prompts: milliseconds), the
run is driven by ``run_pipeline`` and the command line by typer's test runner.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from pipeline import store
from pipeline.cli import app
from pipeline.runner import load_pipeline, run_pipeline
from pipeline.stage import StepContext


def _eval(seed: int) -> dict:
    return {
        "kind": "eval",
        "models": [],
        "seed": seed,
        "prompts": [{"source": "reasoning_gym", "task": "chain_sum", "n_train": 0, "n_test": 2, "seed": 0}],
    }


def _pipeline(tmp_path: Path, seed_a: int = 1) -> Path:
    path = tmp_path / "p.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "name": "p",
                "run": "st",
                "steps": [
                    {"name": "a", "config": _eval(seed_a)},
                    {"name": "b", "config": _eval(2)},
                    {"name": "c", "config": _eval(3)},
                ],
            }
        )
    )
    return path


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("R1_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("COLUMNS", "200")
    return tmp_path / "home"


def _status(*args: str) -> dict:
    result = CliRunner().invoke(app, ["status", *args, "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def test_done_partial_pending_and_progress(tmp_path, home):
    path = _pipeline(tmp_path)
    run_pipeline(load_pipeline(path), only=["a"])
    partial = home / "st" / ".partial" / "b"
    partial.mkdir(parents=True)
    (partial / "config.yaml").write_text(yaml.safe_dump(_eval(2)))
    ctx = StepContext(run="st", step="b", run_dir=home / "st", work_dir=partial, resolver=None)
    ctx.progress.update(3, 8, "steps", reward=0.25, seconds_per_step=12.5)
    (partial / "checkpoints" / "checkpoint-2").mkdir(parents=True)
    (partial / "checkpoints" / "checkpoint-2" / "trainer_state.json").write_text('{"global_step": 2}')
    status = _status("st")
    steps = {s["name"]: s for s in status["steps"]}
    assert [s["name"] for s in status["steps"]] == ["a", "b", "c"]  # the pipeline's order (.pipeline.json)
    assert steps["a"]["status"] == "done" and steps["a"]["key_numbers"] == {"questions": 2, "models": 0}
    assert steps["a"]["wall_time_s"] > 0
    b = steps["b"]
    assert b["status"] == "partial" and b["reason"] == "stopped (killed or lost); rerun to resume"
    assert (b["progress"]["done"], b["progress"]["total"], b["progress"]["checkpoint_step"]) == (3, 8, 2)
    assert b["key_numbers"] == {"reward": 0.25, "seconds_per_step": 12.5}
    assert steps["c"]["status"] == "pending" and status["running"] is None
    table = CliRunner().invoke(app, ["status", "st"]).output
    assert "3/8 steps; checkpoint at step 2" in table and "38%" in table and "pending" in table


def test_a_step_whose_config_changed_is_stale(tmp_path, home):
    path = _pipeline(tmp_path)
    run_pipeline(load_pipeline(path))
    assert {s["status"] for s in _status("st")["steps"]} == {"done"}
    (tmp_path / "edited").mkdir()
    changed = _pipeline(tmp_path / "edited", seed_a=7)  # the same pipeline, step a's config edited
    steps = {s["name"]: s for s in _status("st", "--config", str(changed))["steps"]}
    assert steps["a"]["status"] == "stale" and "config changed since it ran" in steps["a"]["reason"]
    assert steps["b"]["status"] == "done"


def test_a_step_whose_upstream_has_new_output_is_stale(tmp_path, home):
    path = tmp_path / "chain.yaml"
    data = tmp_path / "rows.jsonl"
    data.write_text('{"question": "1+1?", "answer": "2"}\n')
    path.write_text(
        yaml.safe_dump(
            {
                "name": "p",
                "run": "ch",
                "steps": [
                    {"name": "up", "config": _eval(1)},
                    {
                        "name": "down",
                        "config": {
                            "kind": "eval",
                            "models": ["up"],
                            "prompts": [{"source": "file", "path": str(data)}],
                        },
                    },
                ],
            }
        )
    )
    run_pipeline(load_pipeline(path), only=["up"])
    manifest = home / "ch" / "down"
    manifest.mkdir(parents=True)  # a finished `down` that read an older output of `up`
    (manifest / "manifest.json").write_text(
        json.dumps(
            {
                "step": "down",
                "kind": "eval",
                "config_hash": "x",
                "started": time.time(),
                "wall_time_s": 1.0,
                "inputs": {"models.0": {"ref": "up", "hash": "an-older-output"}},
                "result": {},
            }
        )
    )
    steps = {s["name"]: s for s in _status("ch")["steps"]}
    assert steps["down"]["status"] == "stale" and "input models.0 (up) has new output" in steps["down"]["reason"]


def test_a_failed_step_shows_its_error(tmp_path, home):
    path = tmp_path / "bad.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "name": "p",
                "run": "bad",
                "steps": [
                    {
                        "name": "ev",
                        "config": {
                            "kind": "eval",
                            "models": [],
                            "prompts": [{"source": "file", "path": str(tmp_path / "absent.jsonl")}],
                        },
                    }
                ],
            }
        )
    )
    with pytest.raises(RuntimeError, match="failed in its process"):
        run_pipeline(load_pipeline(path), isolate=True)
    step = _status("bad")["steps"][0]
    assert step["status"] == "partial" and step["reason"].startswith("failed: ") and "absent.jsonl" in step["reason"]


def test_ls_lists_runs_with_their_steps_by_status(tmp_path, home):
    run_pipeline(load_pipeline(_pipeline(tmp_path)), only=["a", "b"])
    result = CliRunner().invoke(app, ["ls", "--json"])
    runs = json.loads(result.output)
    assert [(r["run"], r["counts"]) for r in runs] == [("st", {"done": 2, "pending": 1})]
    assert "2 done, 1 pending" in CliRunner().invoke(app, ["ls"]).output


def test_status_of_an_unknown_run_names_the_runs(tmp_path, home):
    run_pipeline(load_pipeline(_pipeline(tmp_path)), only=["a"])
    result = CliRunner().invoke(app, ["status", "nosuch"])
    assert result.exit_code == 2 and "no run folder" in result.output and "runs: st" in result.output


# ----------------------------------------------------------------------------- store pieces


def test_a_step_killed_between_manifest_and_rename_is_moved_into_place(tmp_path, home):
    path = _pipeline(tmp_path)
    run_pipeline(load_pipeline(path), only=["a"])
    run_dir = home / "st"
    # as a crash after the manifest, before the rename, leaves it
    (run_dir / "a").rename(run_dir / ".partial" / "a")
    fingerprint = json.loads((run_dir / ".partial" / "a" / "manifest.json").read_text())
    assert fingerprint["step"] == "a"
    stamp = run_dir / ".partial" / "a" / ".fingerprint"

    def remember(*args, **kwargs):
        raise AssertionError("the step ran again instead of being moved into place")

    import stages.eval

    original = stages.eval.run
    stages.eval.run = remember
    try:
        # the fingerprint the runner computes; written back as the partial folder had it
        from pipeline import runner

        step = load_pipeline(path).step("a")
        resolver = runner.Resolver(run_dir, {"a", "b", "c"})
        inputs = runner._input_block(step, resolver)
        stamp.write_text(store.canonical_hash({"config": runner.step_config_hash(step.config, 0), "inputs": inputs}))
        records = {r.name: r.status for r in run_pipeline(load_pipeline(path), only=["a"])}
    finally:
        stages.eval.run = original
    assert records["a"] == "recovered"
    assert store.read_manifest(run_dir / "a") is not None and not (run_dir / ".partial" / "a").exists()
    assert not (run_dir / "a" / ".fingerprint").exists()


def test_a_metrics_line_cut_by_a_crash_loses_only_itself(tmp_path):
    ctx = StepContext(run="r", step="s", run_dir=tmp_path, work_dir=tmp_path, resolver=None)
    ctx.log_metrics({"step": 1, "loss": 2.0})
    with (tmp_path / "metrics.jsonl").open("a") as fh:
        fh.write('{"step": 2, "lo')  # killed mid-line
    ctx.log_metrics({"step": 3, "loss": 1.0})
    assert [line["step"] for line in store.read_metrics(tmp_path)] == [1, 3]

"""The runner: run, skip when up to date, rerun on change, keep partial work on failure.

Stage runs are tested in their own files; here a fake stage kind ``fake`` (registered only
inside these tests, by patching the ``stages`` registry seam) writes a one-line dataset, so
the orchestration is tested in milliseconds: manifests, skips, reruns, selection, failures.
"""

from __future__ import annotations

import json
import types
from pathlib import Path
from typing import ClassVar, Literal

import pytest
import yaml

import stages
from pipeline import store
from pipeline.config import ConfigError
from pipeline.runner import Resolver, load_pipeline, run_pipeline
from pipeline.stage import StageConfig, StepContext, StepResult

CALLS: list[str] = []  # step names, in the order the fake stage ran them


class FakeConfig(StageConfig):
    """A stage that concatenates its upstream dataset's text with its own ``text``."""

    kind: Literal["fake"] = "fake"
    input_fields: ClassVar[dict[str, str]] = {"source": "dataset"}
    source: str = ""  # a step name or a local file/folder
    text: str = "x"
    fail: Literal["", "error", "interrupt", "once"] = ""  # once = fail unless resuming


def fake_run(config: FakeConfig, ctx: StepContext) -> StepResult:
    CALLS.append(ctx.step)
    upstream = ""
    if config.source:
        src = Path(ctx.resolve_dataset(config.source))
        upstream = (src / "data.txt" if src.is_dir() else src).read_text()
    ctx.checkpoints.mkdir(exist_ok=True)
    resumed = (ctx.checkpoints / "state.txt").exists()
    (ctx.checkpoints / "state.txt").write_text("half done")
    if config.fail == "error" or (config.fail == "once" and not resumed):
        raise RuntimeError(f"boom in {ctx.step}")
    if config.fail == "interrupt":
        raise KeyboardInterrupt
    out = ctx.work_dir / "dataset"
    out.mkdir()
    (out / "data.txt").write_text(upstream + config.text)
    ctx.log_metrics({"loss": 1.0})
    summary = "resumed" if resumed else f"wrote {config.text!r}"
    return StepResult(
        outputs={"dataset": "dataset"},
        counts={"rows": 1, "other_count": 5},
        metrics={"loss_last": 0.5},
        summary=summary,
    )


FAKE = types.ModuleType("stages.fake", "fake: a test double stage.\n\nInputs: source. Outputs: dataset/.")
FAKE.Config = FakeConfig
FAKE.run = fake_run


@pytest.fixture(autouse=True)
def fake_stage(tmp_path, monkeypatch):
    """Register the ``fake`` kind and give each test its own artifact root."""
    real_get, real_kinds = stages.get, stages.kinds
    monkeypatch.setattr(stages, "get", lambda kind: FAKE if kind == "fake" else real_get(kind))
    monkeypatch.setattr(stages, "kinds", lambda: sorted([*real_kinds(), "fake"]))
    monkeypatch.setenv("R1_HOME", str(tmp_path / "home"))
    CALLS.clear()
    yield
    CALLS.clear()


def _pipeline_file(tmp_path: Path, steps: list[dict], run: str = "t") -> Path:
    path = tmp_path / "pipe.yaml"
    path.write_text(yaml.safe_dump({"name": "t", "run": run, "steps": steps}, sort_keys=False))
    return path


def _two_steps(tmp_path: Path, **b_extra) -> Path:
    return _pipeline_file(
        tmp_path,
        [
            {"name": "a", "config": {"kind": "fake", "text": "A"}},
            {"name": "b", "config": {"kind": "fake", "source": "a", "text": "B", **b_extra}},
        ],
    )


def _run(path: Path, overrides: list[str] | None = None, **kw):
    records = run_pipeline(load_pipeline(path, overrides), **kw)
    return {r.name: r.status for r in records}


def _run_dir(name: str = "t") -> Path:
    return store.runs_root() / name


# ----------------------------------------------------------------------------- first run


def test_first_run_executes_and_writes_manifests(tmp_path):
    path = _two_steps(tmp_path)
    assert _run(path) == {"a": "ran", "b": "ran"}
    assert CALLS == ["a", "b"]
    run_dir = _run_dir()
    a, b = store.read_manifest(run_dir / "a"), store.read_manifest(run_dir / "b")
    assert a and b
    assert (run_dir / "b" / "dataset" / "data.txt").read_text() == "AB"  # b read a's output

    pipeline = load_pipeline(path)
    cfg_b = pipeline.step("b").config
    assert b["step"] == "b" and b["kind"] == "fake" and b["run"] == "t"
    # the pipeline seed reaches stages through ctx.seed, so it is part of the config identity
    assert b["config_hash"] == store.canonical_hash(
        {"config": cfg_b.model_dump(mode="json"), "pipeline_seed": pipeline.config.seed}
    )
    assert b["config"] == cfg_b.model_dump(mode="json")
    # inputs: the reference, the upstream's output hash, and the resolved path
    assert b["inputs"] == {"source": {"ref": "a", "hash": a["output_hash"], "path": str(run_dir / "a" / "dataset")}}
    assert a["inputs"] == {}
    assert b["output_hash"] == store.hash_tree(run_dir / "b")  # hashed before the rename
    assert b["packages"] == store.package_versions()
    assert isinstance(b["wall_time_s"], float) and 0 <= b["wall_time_s"] < 60
    assert "git_commit" in b and isinstance(b["started"], float)
    assert b["result"] == {
        "outputs": {"dataset": "dataset"},
        "counts": {"rows": 1, "other_count": 5},
        "metrics": {"loss_last": 0.5},
        "summary": "wrote 'B'",
    }

    # the rest of the step folder
    assert yaml.safe_load((run_dir / "b" / "config.yaml").read_text()) == cfg_b.model_dump(mode="json")
    assert json.loads((run_dir / "b" / "metrics.jsonl").read_text())["loss"] == 1.0
    # resume state is dropped once the step is complete (a 135M GRPO step: ~3 GB of it)
    assert not (run_dir / "b" / "checkpoints").exists() and b["checkpoints"] == "none"
    assert not (run_dir / ".partial" / "a").exists() and not (run_dir / ".partial" / "b").exists()


def test_keep_checkpoints_keeps_the_resume_state(tmp_path):
    _run(_two_steps(tmp_path), keep_checkpoints=True)
    assert (_run_dir() / "b" / "checkpoints" / "state.txt").read_text() == "half done"
    assert store.read_manifest(_run_dir() / "b")["checkpoints"] == "kept"


def test_resume_ignores_a_checkpoint_cut_off_while_being_written(tmp_path, caplog):
    from pipeline.stage import last_checkpoint

    folder = tmp_path / "checkpoints"
    assert last_checkpoint(folder) is None
    state = '{"global_step": 1, "log_history": []}'
    for n, files in (
        (4, {"optimizer.pt": "x", "trainer_state.json": state}),
        (8, {"optimizer.pt": "x", "trainer_state.json": state}),
        (12, {"config.json": "{}"}),  # a full disk stopped the save of checkpoint-12
        (16, {"optimizer.pt": "x", "trainer_state.json": '{"global_st'}),
    ):  # ... or its state file
        (folder / f"checkpoint-{n}").mkdir(parents=True)
        for name, text in files.items():
            (folder / f"checkpoint-{n}" / name).write_text(text)
    (folder / "README.md").write_text("not a checkpoint")
    (folder / "checkpoint-99").write_text("a file, not a checkpoint")
    with caplog.at_level("WARNING"):
        assert Path(last_checkpoint(folder)).name == "checkpoint-8"
    assert "[12, 16] are incomplete" in caplog.text
    (folder / "checkpoint-16" / "trainer_state.json").write_text("")  # empty: open("w") then killed
    assert Path(last_checkpoint(folder)).name == "checkpoint-8"
    (folder / "checkpoint-12" / "trainer_state.json").write_text(state)
    assert Path(last_checkpoint(folder)).name == "checkpoint-12"
    for n in (4, 8, 12, 16):
        (folder / f"checkpoint-{n}" / "trainer_state.json").unlink()
    assert last_checkpoint(folder) is None


def test_summary_has_one_row_per_step(tmp_path):
    _run(_two_steps(tmp_path))
    summary = (_run_dir() / "summary.md").read_text()
    rows = [line for line in summary.splitlines() if line.startswith("| ")]
    assert rows[0].startswith("| step | kind | status |")
    assert [r.split("|")[1].strip() for r in rows[1:]] == ["a", "b"]
    row_b = [c.strip() for c in rows[2].split("|")[1:-1]]
    assert row_b[:3] == ["b", "fake", "ran"]
    assert "source=a" in row_b and "dataset" in row_b
    assert "rows=1" in row_b[-1] and "loss_last=0.500" in row_b[-1]
    assert "other_count" not in summary  # only the key numbers get a column

    _run(_two_steps(tmp_path))  # all skipped: still one row per step, rewritten
    rows = [line for line in (_run_dir() / "summary.md").read_text().splitlines() if line.startswith("| ")]
    assert len(rows) == 3 and all("skipped (up to date)" in r for r in rows[1:])


# ----------------------------------------------------------------------------- skip / rerun


def test_second_run_skips_without_calling_run(tmp_path):
    path = _two_steps(tmp_path)
    _run(path)
    manifest_before = (_run_dir() / "b" / store.MANIFEST).read_text()
    CALLS.clear()
    assert _run(path) == {"a": "skipped (up to date)", "b": "skipped (up to date)"}
    assert CALLS == []
    assert (_run_dir() / "b" / store.MANIFEST).read_text() == manifest_before


def test_skipped_record_reports_the_manifest(tmp_path):
    path = _two_steps(tmp_path)
    _run(path)
    records = run_pipeline(load_pipeline(path))
    b = records[1]
    assert (b.name, b.kind, b.status) == ("b", "fake", "skipped (up to date)")
    assert b.inputs["source"]["ref"] == "a" and b.result["summary"] == "wrote 'B'"


def test_changed_config_reruns_only_that_step(tmp_path):
    path = _two_steps(tmp_path)
    _run(path)
    CALLS.clear()
    assert _run(path, ["b.text=C"]) == {"a": "skipped (up to date)", "b": "ran"}
    assert CALLS == ["b"]
    assert (_run_dir() / "b" / "dataset" / "data.txt").read_text() == "AC"


def test_force_reruns_every_selected_step(tmp_path):
    path = _two_steps(tmp_path)
    _run(path)
    CALLS.clear()
    assert _run(path, force=True) == {"a": "ran", "b": "ran"}
    assert CALLS == ["a", "b"]


def test_upstream_with_new_output_makes_downstream_rerun(tmp_path):
    path = _two_steps(tmp_path)
    _run(path)
    old_a = store.read_manifest(_run_dir() / "a")["output_hash"]
    CALLS.clear()
    # only a's config changes; b reruns because its input hash changed
    assert _run(path, ["a.text=Z"]) == {"a": "ran", "b": "ran"}
    new_a = store.read_manifest(_run_dir() / "a")["output_hash"]
    b = store.read_manifest(_run_dir() / "b")
    assert new_a != old_a and b["inputs"]["source"]["hash"] == new_a
    assert (_run_dir() / "b" / "dataset" / "data.txt").read_text() == "ZB"


def test_upstream_rerun_with_identical_output_keeps_downstream(tmp_path):
    path = _two_steps(tmp_path)
    _run(path)
    CALLS.clear()
    assert _run(path, only=["a"], force=True) == {"a": "ran", "b": "done earlier"}
    assert _run(path) == {"a": "skipped (up to date)", "b": "skipped (up to date)"}
    assert CALLS == ["a"]


def test_local_file_input_is_hashed_and_its_change_reruns(tmp_path):
    src = tmp_path / "src.txt"
    src.write_text("file:")
    path = _pipeline_file(tmp_path, [{"name": "a", "config": {"kind": "fake", "source": str(src)}}])
    _run(path)
    m = store.read_manifest(_run_dir() / "a")
    assert m["inputs"]["source"]["hash"] == store.hash_tree(src)
    assert (_run_dir() / "a" / "dataset" / "data.txt").read_text() == "file:x"
    assert _run(path) == {"a": "skipped (up to date)"}
    src.write_text("changed:")
    assert _run(path) == {"a": "ran"}


def test_run_name_overrides_the_file(tmp_path):
    path = _two_steps(tmp_path)
    _run(path, run="other")
    assert store.read_manifest(_run_dir("other") / "b") is not None
    assert not (_run_dir("t") / "b").exists()


# ----------------------------------------------------------------------------- selection


def test_only_runs_the_named_steps(tmp_path):
    path = _two_steps(tmp_path)
    assert _run(path, only=["a"]) == {"a": "ran"}  # b never ran: no record
    assert CALLS == ["a"] and not (_run_dir() / "b").exists()


def test_from_step_runs_it_and_the_rest(tmp_path):
    path = _pipeline_file(
        tmp_path,
        [
            {"name": "a", "config": {"kind": "fake", "text": "A"}},
            {"name": "b", "config": {"kind": "fake", "source": "a", "text": "B"}},
            {"name": "c", "config": {"kind": "fake", "source": "b", "text": "C"}},
        ],
    )
    _run(path, only=["a"])
    CALLS.clear()
    assert _run(path, from_step="b") == {"a": "done earlier", "b": "ran", "c": "ran"}
    assert CALLS == ["b", "c"]
    assert (_run_dir() / "c" / "dataset" / "data.txt").read_text() == "ABC"
    CALLS.clear()
    assert _run(path, from_step="b", force=True) == {"a": "done earlier", "b": "ran", "c": "ran"}
    assert CALLS == ["b", "c"]


@pytest.mark.parametrize("kw", [{"only": ["nope"]}, {"from_step": "nope"}])
def test_unknown_selected_step_lists_steps(tmp_path, kw):
    with pytest.raises(ConfigError, match=r"no step 'nope'.*steps: a, b"):
        _run(_two_steps(tmp_path), **kw)
    assert CALLS == []


def test_downstream_cannot_consume_an_unfinished_upstream(tmp_path):
    path = _two_steps(tmp_path)
    with pytest.raises(RuntimeError) as info:
        _run(path, only=["b"])
    msg = str(info.value)
    assert "'a'" in msg and "has not finished" in msg and "run it first" in msg
    assert CALLS == []
    assert store.read_manifest(_run_dir() / "b") is None


def test_resolver_refuses_an_unfinished_step(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "a").mkdir()  # a folder without a manifest is not a finished step
    r = Resolver(run_dir, {"a"})
    with pytest.raises(RuntimeError, match="has not finished"):
        r.dataset("a")
    with pytest.raises(RuntimeError, match="has not finished"):
        r.model("a")
    assert r.input_hash("a") == "missing"
    (run_dir / "a" / store.MANIFEST).write_text(json.dumps({"output_hash": "h"}))
    assert r.dataset("a") == str(run_dir / "a" / "dataset")
    assert r.model("a") == str(run_dir / "a" / "model")
    assert r.input_hash("a") == "h"


def test_resolver_knows_finished_steps_of_the_run_and_passes_hub_names(tmp_path):
    run_dir = tmp_path / "run"
    (run_dir / "old").mkdir(parents=True)
    (run_dir / "old" / store.MANIFEST).write_text(json.dumps({"output_hash": "h"}))
    r = Resolver(run_dir, set())
    assert r.dataset("old") == str(run_dir / "old" / "dataset")
    assert r.dataset("org/some-dataset") == "org/some-dataset"
    assert r.input_hash("org/some-dataset") == "hub:org/some-dataset"


# ----------------------------------------------------------------------------- failures


@pytest.mark.parametrize(("fail", "exc"), [("error", RuntimeError), ("interrupt", KeyboardInterrupt)])
def test_failed_step_leaves_no_final_and_keeps_partial(tmp_path, fail, exc):
    path = _two_steps(tmp_path, fail=fail)
    with pytest.raises(exc):
        _run(path)
    run_dir = _run_dir()
    assert store.read_manifest(run_dir / "a") is not None  # the step before is finished
    assert not (run_dir / "b").exists()
    partial = run_dir / ".partial" / "b"
    assert (partial / "checkpoints" / "state.txt").read_text() == "half done"
    assert (partial / ".fingerprint").is_file() and not (partial / store.MANIFEST).exists()


def test_failed_rerun_keeps_the_previous_final(tmp_path):
    path = _two_steps(tmp_path)
    _run(path)
    before = (_run_dir() / "b" / store.MANIFEST).read_text()
    with pytest.raises(RuntimeError):
        _run(path, ["b.fail=error"])
    assert (_run_dir() / "b" / store.MANIFEST).read_text() == before
    assert (_run_dir() / "b" / "dataset" / "data.txt").read_text() == "AB"


def test_rerun_after_failure_resumes_from_the_partial_folder(tmp_path):
    path = _two_steps(tmp_path, fail="once")
    with pytest.raises(RuntimeError, match="boom in b"):
        _run(path)
    CALLS.clear()
    assert _run(path) == {"a": "skipped (up to date)", "b": "ran"}
    assert CALLS == ["b"]
    manifest = store.read_manifest(_run_dir() / "b")
    assert manifest["result"]["summary"] == "resumed"  # it found its checkpoint
    assert not (_run_dir() / ".partial" / "b").exists()


def test_changed_config_after_failure_discards_the_partial_folder(tmp_path):
    path = _two_steps(tmp_path, fail="once")
    with pytest.raises(RuntimeError):
        _run(path)
    with pytest.raises(RuntimeError, match="boom in b"):  # new fingerprint: starts afresh
        _run(path, ["b.text=other"])


# ----------------------------------------------------------------------------- isolated steps
# What the CLI uses: each step in a child process. The fake kind does not exist in a fresh
# process, so these use the cheapest real step: an eval of no models (loads prompts only).


def test_isolated_failure_raises_and_keeps_partial(tmp_path):
    missing = tmp_path / "absent.jsonl"
    path = _pipeline_file(
        tmp_path,
        [
            {
                "name": "ev",
                "config": {"kind": "eval", "models": [], "prompts": [{"source": "file", "path": str(missing)}]},
            }
        ],
    )
    with pytest.raises(RuntimeError, match="step ev failed in its process"):
        run_pipeline(load_pipeline(path), isolate=True)
    assert not (_run_dir() / "ev").exists()
    partial = _run_dir() / ".partial" / "ev"
    assert (partial / ".fingerprint").is_file() and not (partial / store.MANIFEST).exists()


# ----------------------------------------------------------------------------- the stage contract


def test_a_declared_output_the_stage_did_not_write_fails_the_step(tmp_path, monkeypatch):
    monkeypatch.setattr(FakeConfig, "outputs", {"dataset": "dataset", "report": "report.txt"})
    path = _pipeline_file(tmp_path, [{"name": "a", "config": {"kind": "fake", "text": "A"}}])
    with pytest.raises(RuntimeError, match=r"finished without its output\(s\) report \(report.txt\)"):
        _run(path)
    assert store.read_manifest(_run_dir() / "a") is None and (_run_dir() / ".partial" / "a").is_dir()


def test_the_manifest_records_declared_outputs_and_inputs_must_exist_there(tmp_path, monkeypatch):
    monkeypatch.setattr(FakeConfig, "outputs", {"dataset": "dataset", "log": "metrics.jsonl"})
    _run(_two_steps(tmp_path))
    assert store.read_manifest(_run_dir() / "a")["result"]["outputs"] == {"dataset": "dataset", "log": "metrics.jsonl"}
    with pytest.raises(RuntimeError, match="names a fake step, whose outputs are dataset, log: no model"):
        Resolver(_run_dir(), set()).model("a")  # a dataset step named where a model is expected


def test_the_summary_shows_the_numbers_the_stage_declares(tmp_path, monkeypatch):
    monkeypatch.setattr(FakeConfig, "headline", ("other_count", "loss_last"))
    _run(_two_steps(tmp_path))
    row = [line for line in (_run_dir() / "summary.md").read_text().splitlines() if line.startswith("| a |")][0]
    assert row.endswith("| other_count=5, loss_last=0.500 |") and "rows=1" not in row

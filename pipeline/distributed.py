"""Multi-process launches (``accelerate launch``, ``torchrun``): who does what around a step.

Under ``accelerate launch --num_processes N -m pipeline.cli sft CONFIG`` every process runs the
same command. The trainers (TRL on accelerate) split the batches and all-reduce the gradients;
this module keeps the artifact store consistent around them (``pipeline.runner`` calls it):

- the launch is detected from the launcher's environment (``WORLD_SIZE`` > 1);
- only the main process (rank 0) hashes the inputs first (so an alias is prepared once),
  prepares the step's partial folder, writes its ``config.yaml``, and, after every rank has
  returned from the stage (:func:`barrier`), writes the manifest and renames the folder into
  place. The other ranks use the same ``runs/<run>/.partial/<step>/`` (the path depends only
  on the run and step names), so checkpoints and resume work as in one process;
- the step runs in the launched process itself, never in a spawned child: the launcher already
  gives each rank its own process, and a child would have to build a second process group on
  the launcher's ``MASTER_PORT``, which the parent's group already holds;
- each rank writes a digest of its final weights (:func:`write_weights_digest`) so that
  "every rank ended with the same weights" is a fact a user can check in the step folder.

The barriers use the default process group that accelerate creates (gloo on CPUs, NCCL on
GPUs); creating it here first, with the same arguments, is what the trainers then reuse.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

DIGEST_DIR = "distributed"  # in the step folder: one rank-<r>.json per process
# Rank 0 hashes inputs (or converts an alias, ~1 min) and the output folder while the others
# wait at a barrier; generous, since a timeout kills a run that is merely slow.
BARRIER_TIMEOUT = timedelta(hours=2)


def world_size() -> int:
    """Processes of this launch (``WORLD_SIZE`` set by the launcher; 1 when run directly)."""
    return int(os.environ.get("WORLD_SIZE", "1") or 1)


def rank() -> int:
    """Global rank of this process (``RANK``; 0 when run directly)."""
    return int(os.environ.get("RANK", "0") or 0)


def local_rank() -> int:
    """Rank of this process on its node (``LOCAL_RANK``; 0 when run directly)."""
    return int(os.environ.get("LOCAL_RANK", "0") or 0)


def launched() -> bool:
    """True inside a multi-process launch (``accelerate launch`` / ``torchrun`` with > 1 process)."""
    return world_size() > 1


def is_main() -> bool:
    """True on the process that owns the artifact store writes (rank 0, or a plain run)."""
    return rank() == 0


def _state() -> Any:
    """accelerate's ``PartialState``, creating the default process group if needed.

    ``cpu=True`` without CUDA: accelerate only picks gloo (``MULTI_CPU``) when told the run is
    on CPUs; otherwise, with no GPU, it silently returns a non-distributed state. The trainers
    later ask for ``PartialState(cpu=True)`` too and reuse the group created here. A launch meant
    for GPUs (``pipeline.device``) raises ``DeviceError`` here instead of falling back to gloo.
    """
    from accelerate import PartialState

    from pipeline import device

    return PartialState(cpu=device.check() == "cpu", timeout=BARRIER_TIMEOUT)


def barrier() -> None:
    """Wait until every process of the launch gets here (no-op in a single process)."""
    if launched():
        _state().wait_for_everyone()


@contextlib.contextmanager
def main_first(local: bool = False) -> Iterator[None]:
    """Run the block on the main process, then on the others (after a :func:`barrier`).

    For work with a shared result on disk that every rank needs: preparing a model alias,
    filling the hash cache. ``local=True``: the main process of each node (``LOCAL_RANK`` 0)
    goes first, for downloads into a per-node cache (hub datasets: without it every rank of
    every node downloads at once). Every rank must enter the block (it holds a barrier). If the
    first process's block raises, the others are released and run theirs (no one waits for the
    barrier timeout). In a single process it just runs the block.
    """
    if not launched():
        yield
        return
    if (local_rank() == 0) if local else is_main():
        try:
            yield
        finally:
            barrier()
    else:
        barrier()
        yield


def weights_digest(state_dict: dict[str, Any]) -> str:
    """sha256 over ``(name, dtype, shape, raw bytes)`` of every tensor, in name order.

    Exact: two state dicts have the same digest only if every tensor is bit-identical (a
    float32 tensor and its bfloat16 copy differ). Tied weights appear under each name, as in
    ``model.state_dict()``, so a model and the same model saved and reloaded agree.
    """
    import torch

    h = hashlib.sha256()
    for name in sorted(state_dict):
        tensor = state_dict[name]
        if not isinstance(tensor, torch.Tensor):
            continue
        t = tensor.detach().to("cpu").contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}\0".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def sharded(accelerator: Any) -> bool:
    """True when each rank holds only a shard of the weights (FSDP, DeepSpeed ZeRO-3)."""
    from accelerate.utils import DistributedType

    if accelerator.distributed_type == DistributedType.FSDP or getattr(accelerator, "is_fsdp2", False):
        return True
    if accelerator.distributed_type == DistributedType.DEEPSPEED:
        config = accelerator.state.deepspeed_plugin.deepspeed_config
        return config.get("zero_optimization", {}).get("stage", 0) == 3
    return False


def write_weights_digest(work_dir: Path, trainer: Any) -> dict | None:
    """Write ``<work_dir>/distributed/rank-<r>.json`` with this rank's final-weights digest.

    Only in a multi-process run (returns None otherwise). Replicated training (DDP, ZeRO-1/2)
    keeps a full copy of the weights on every rank, and the copies must be bit-identical after
    every optimizer step: each file holds ``{"rank", "world_size", "sharded": false,
    "sha256", "tensors"}`` with :func:`weights_digest` of ``trainer.model.state_dict()``. With
    FSDP or ZeRO-3 a rank holds a shard only: ``sharded`` is true and ``sha256`` null (the
    saved model is the gathered one).
    """
    accelerator = trainer.accelerator
    if accelerator.num_processes <= 1:
        return None
    record: dict = {"rank": accelerator.process_index, "world_size": accelerator.num_processes}
    if sharded(accelerator):
        record.update({"sharded": True, "sha256": None, "tensors": None})
    else:
        state = accelerator.unwrap_model(trainer.model).state_dict()
        record.update({"sharded": False, "sha256": weights_digest(state), "tensors": len(state)})
    folder = Path(work_dir) / DIGEST_DIR
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".rank-{record['rank']}.tmp"
    tmp.write_text(json.dumps(record, indent=2))
    tmp.replace(folder / f"rank-{record['rank']}.json")
    return record


def digest_summary(work_dir: Path) -> dict | None:
    """What the ranks' digest files say, for the manifest (None when there are none).

    ``{"world_size", "ranks", "weights_identical", "sha256"}``: ``weights_identical`` is True
    when every rank wrote the same digest, None for sharded training (nothing to compare).
    """
    folder = Path(work_dir) / DIGEST_DIR
    records = [json.loads(p.read_text()) for p in sorted(folder.glob("rank-*.json"))] if folder.is_dir() else []
    if not records:
        return None
    digests = {r["sha256"] for r in records}
    sharded = any(r.get("sharded") for r in records)
    return {
        "world_size": records[0]["world_size"],
        "ranks": len(records),
        "weights_identical": None if sharded else len(digests) == 1,
        "sha256": None if sharded or len(digests) != 1 else digests.pop(),
    }

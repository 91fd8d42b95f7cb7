"""Several ranks on one node: hub datasets downloaded by each node's main process first, and a
reward worker pool sized to each rank's share of the CPUs.

The download order is checked with 2 real processes (``torch.distributed.run``, gloo): both
load the same datasets through the stages' own functions (``stages.sft.load_messages`` for a hub
name, ``stages.grpo.load_prompt_rows`` for a ``source: hub`` prompt source), with
``datasets.load_dataset`` wrapped to log when each rank enters and leaves it (1.5 s inside).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from rewards import _pool

REPO = Path(__file__).resolve().parents[1]

SCRIPT = r"""
import os, sys, time
sys.path.insert(0, sys.argv[1])
import datasets
logs, folder, model = sys.argv[2], sys.argv[3], sys.argv[4]
rank = int(os.environ["RANK"])
real = datasets.load_dataset
current = {"log": None}

def logged(*args, **kwargs):
    with open(current["log"], "a") as f:
        f.write(f"start {rank}\n")
    time.sleep(1.5)  # long enough for a concurrent rank to show up in between
    try:
        return real(*args, **kwargs)
    finally:
        with open(current["log"], "a") as f:
            f.write(f"end {rank}\n")

datasets.load_dataset = logged
from transformers import AutoTokenizer
from pipeline.config import parse, read_yaml
from stages import grpo, sft

current["log"] = os.path.join(logs, "sft.log")
try:
    sft.load_training_messages("r1-tests/no-such-dataset", sft.Config(model=model, dataset="d"))  # offline: fails
except Exception as err:
    print(f"rank {rank}: sft hub load failed as expected: {type(err).__name__}")
current["log"] = os.path.join(logs, "grpo.log")
smoke = read_yaml(os.path.join(sys.argv[1], "configs/grpo/tiny/hf_generate.yaml"))
config = parse(grpo.Config, {**smoke, "model": model, "rewards": [{"name": "format"}],
                             "prompts": [{"source": "hub", "name": folder, "splits": {"train": "train"}}]}, "test")
rows, dropped = grpo.load_prompt_rows(config, AutoTokenizer.from_pretrained(model))
print(f"rank {rank}: {len(rows)} prompts")
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_hub_datasets_are_loaded_by_the_node_main_process_first(tmp_path, tiny_model):
    folder = tmp_path / "hub_like"
    folder.mkdir()
    rows = [{"id": f"q{i}", "question": f"What is {i} + 1?", "answer": str(i + 1)} for i in range(6)]
    (folder / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    script = tmp_path / "ranks.py"
    script.write_text(SCRIPT)
    dist = {"MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE"}
    env = {k: v for k, v in os.environ.items() if k not in dist}
    env.update(
        {
            "HF_HUB_OFFLINE": "1",
            "HF_DATASETS_OFFLINE": "1",
            "OMP_NUM_THREADS": "1",
            "HF_DATASETS_CACHE": str(tmp_path / "cache"),
        }
    )
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            "2",
            "--master_port",
            str(_free_port()),
            str(script),
            str(REPO),
            str(tmp_path),
            str(folder),
            str(tiny_model),
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    assert proc.stdout.count("sft hub load failed as expected") == 2 and proc.stdout.count(": 6 prompts") == 2
    for name in ("sft.log", "grpo.log"):  # rank 1 enters only after rank 0 left (also when rank 0 failed)
        assert (tmp_path / name).read_text().split("\n")[:-1] == ["start 0", "end 0", "start 1", "end 1"], name


@pytest.mark.parametrize(
    "env, cpus, workers",
    [
        ({}, 64, 64),  # one process: every CPU it may use
        ({"WORLD_SIZE": "8", "LOCAL_WORLD_SIZE": "8"}, 64, 8),  # 8 ranks on the node share them
        ({"WORLD_SIZE": "16", "LOCAL_WORLD_SIZE": "8"}, 64, 8),  # 2 nodes: the node's ranks count, not the world's
        ({"WORLD_SIZE": "4"}, 64, 16),  # a launcher without LOCAL_WORLD_SIZE: the world (never too many)
        ({"LOCAL_WORLD_SIZE": "8"}, 4, 1),  # at least one worker
        ({"LOCAL_WORLD_SIZE": "8", "ACCELERATE_CPU_AFFINITY": "1"}, 8, 8),  # the mask is already the rank's share
        ({"LOCAL_WORLD_SIZE": "8", "R1_REWARD_WORKERS": "3"}, 64, 3),  # explicit wins
    ],
)
def test_reward_pool_is_sized_per_rank(env, cpus, workers):
    assert _pool.default_workers(env, cpus=cpus) == workers


def test_the_process_pool_takes_its_size_from_the_launcher(tmp_path):
    """What a launched rank gets at import: its share of this machine's usable CPUs."""
    usable = len(os.sched_getaffinity(0))
    code = "from rewards import _pool; print(_pool.worker_count())"
    base = {k: v for k, v in os.environ.items() if k not in {"R1_REWARD_WORKERS", "LOCAL_WORLD_SIZE", "WORLD_SIZE"}}
    sizes = [
        int(
            subprocess.run(
                [sys.executable, "-c", code],
                cwd=REPO,
                env={**base, **extra},
                capture_output=True,
                text=True,
                check=True,
            ).stdout
        )
        for extra in ({}, {"LOCAL_WORLD_SIZE": str(usable)})
    ]
    assert sizes == [usable, 1]

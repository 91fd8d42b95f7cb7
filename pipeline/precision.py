"""``dtype: auto``: the fast floating-point type of the hardware a step runs on.

Every place that chooses a dtype (training autocast, vLLM engines, HF sampling, teachers,
reward models) takes ``auto | bfloat16 | float16 | float32`` and resolves it here. ``auto``
means:

- a CUDA GPU: ``bfloat16`` when it has bf16 units (``torch.cuda.is_bf16_supported()``:
  Ampere and newer), else ``float16`` (its fast path; training then uses a loss scaler);
- a CPU: ``bfloat16`` only when it has bf16 matrix instructions, **AMX** (``amx_bf16``,
  Intel Sapphire Rapids and newer) or **AVX512-BF16** (``avx512_bf16``: Intel Cooper Lake,
  AMD Zen 4 and newer); else ``float32``.

Why not bf16 everywhere: without those instructions oneDNN has no bf16 GEMM and torch falls
back to scalar code. Measured on a 2-core AMD EPYC with AVX2 only (``docs/benchmarks.md``):
a 1024x1024 matmul ran at 0.6 GFLOP/s in bf16 against 55 GFLOP/s in float32 (~90x), vLLM
logged "Failed to create oneDNN linear, fallback to torch linear" and decoded ~30 tokens/s.
With AVX512-BF16 (AMD EPYC Zen 4, same size): bf16 422 GFLOP/s, float32 186 GFLOP/s.
ARM CPUs are given float32: torch's bf16 speed there depends on the core and the build, and
float32 is never the slow path.

An explicit dtype always wins (a warning names the slow case). The resolved choice and its
reason are logged and recorded in each step's manifest (``precision``).
"""

from __future__ import annotations

import functools
import logging
import platform
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

log = logging.getLogger(__name__)

DtypeChoice = Literal["auto", "bfloat16", "float16", "float32"]
Dtype = Literal["bfloat16", "float16", "float32"]
DTYPE_CHOICES: tuple[str, ...] = ("auto", "bfloat16", "float16", "float32")

#: x86 CPU flags (``/proc/cpuinfo``) of instructions that make bf16 matmuls fast.
FAST_BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")


@dataclass(frozen=True)
class Hardware:
    """What decides the fast dtype. Built by :func:`detect`; tests build their own."""

    device: Literal["cpu", "cuda"]
    cpu_model: str = ""
    cpu_flags: frozenset[str] = frozenset()
    machine: str = "x86_64"  # platform.machine()
    torch_capability: str = ""  # torch.backends.cpu.get_cpu_capability(), e.g. "AVX2", "AVX512"
    cuda_name: str = ""
    cuda_bf16: bool = False

    @property
    def fast_bf16_flags(self) -> list[str]:
        """The bf16 matrix-instruction flags this CPU has (empty on other architectures)."""
        if self.machine not in ("x86_64", "AMD64"):
            return []
        return [f for f in FAST_BF16_CPU_FLAGS if f in self.cpu_flags]


@dataclass(frozen=True)
class Precision:
    """A resolved dtype: ``dtype`` is what runs; ``choice`` what the config said; ``reason`` why."""

    choice: str
    dtype: Dtype
    reason: str
    device: str
    cpu_model: str
    torch_capability: str

    def as_dict(self) -> dict[str, str]:
        return asdict(self)


def _cpu_info() -> tuple[str, frozenset[str]]:
    """``(model name, flags)`` from ``/proc/cpuinfo`` (Linux); empty elsewhere."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor(), frozenset()
    model, flags = "", frozenset[str]()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key in ("model name", "Model") and not model:
            model = value.strip()
        elif key in ("flags", "Features") and not flags:
            flags = frozenset(value.split())
    return model, flags


@functools.cache
def detect() -> Hardware:
    """The hardware of this process (cached): CUDA device 0 if there is one, else the CPU."""
    import torch

    model, flags = _cpu_info()
    capability = torch.backends.cpu.get_cpu_capability()
    if torch.cuda.is_available():
        return Hardware(
            "cuda",
            model,
            flags,
            platform.machine(),
            capability,
            torch.cuda.get_device_name(0),
            bool(torch.cuda.is_bf16_supported()),
        )
    return Hardware("cpu", model, flags, platform.machine(), capability)


def resolve(choice: str, hardware: Hardware | None = None, *, what: str = "") -> Precision:
    """The dtype to run for ``choice`` on ``hardware`` (default: this machine), with its reason.

    ``what`` names the user of the dtype in the log line (e.g. ``"training"``, ``"rollouts"``).

    Raises:
        ValueError: ``choice`` is not one of :data:`DTYPE_CHOICES`.

    >>> cpu = Hardware("cpu", "AMD EPYC", frozenset({"avx2"}), "x86_64", "AVX2")
    >>> resolve("auto", cpu).dtype
    'float32'
    >>> resolve("auto", Hardware("cpu", "Xeon", frozenset({"amx_bf16"}), "x86_64", "AVX512")).dtype
    'bfloat16'
    >>> resolve("auto", Hardware("cuda", cuda_name="T4", cuda_bf16=False)).dtype
    'float16'
    """
    if choice not in DTYPE_CHOICES:
        raise ValueError(f"dtype {choice!r}: valid values are {', '.join(DTYPE_CHOICES)}")
    hw = hardware or detect()
    fast = hw.fast_bf16_flags
    if choice != "auto":
        dtype, reason = choice, "set in the config"
        if choice == "bfloat16" and hw.device == "cpu" and not fast:
            reason += (
                f"; this CPU ({hw.cpu_model or hw.machine}, {hw.torch_capability or 'unknown capability'}) "
                "has no AMX or AVX512-BF16: bf16 matmuls are many times slower than float32 here"
            )
            log.warning("dtype bfloat16%s: %s", f" ({what})" if what else "", reason)
        elif choice == "float16" and hw.device == "cpu":
            reason += "; float16 has no fast CPU kernels"
            log.warning("dtype float16%s: %s", f" ({what})" if what else "", reason)
    elif hw.device == "cuda":
        if hw.cuda_bf16:
            dtype, reason = "bfloat16", f"auto: GPU {hw.cuda_name} supports bf16"
        else:
            dtype, reason = "float16", f"auto: GPU {hw.cuda_name} has no bf16 units; float16 is its fast path"
    elif fast:
        dtype, reason = "bfloat16", f"auto: CPU has {' and '.join(fast)} (fast bf16 matmuls)"
    elif hw.machine not in ("x86_64", "AMD64"):
        dtype, reason = "float32", f"auto: {hw.machine} CPU; bf16 speed there is not known to be better"
    else:
        dtype, reason = (
            "float32",
            (
                f"auto: CPU without AMX or AVX512-BF16 (torch capability "
                f"{hw.torch_capability or 'unknown'}): bf16 would be many times slower"
            ),
        )
    return Precision(choice, dtype, reason, hw.device, hw.cpu_model, hw.torch_capability)  # type: ignore[arg-type]


def torch_dtype(dtype: str):
    """The ``torch.dtype`` of a resolved dtype name."""
    import torch

    return {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}[dtype]


def announce(precision: Precision, what: str) -> None:
    """Print one line to stderr: what runs in which dtype, and why (the step's log shows it)."""
    from rich.console import Console

    Console(stderr=True).print(f"[dim]{what} dtype: {precision.dtype} ({precision.reason})[/]", highlight=False)

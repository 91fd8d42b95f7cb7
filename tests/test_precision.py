"""`dtype: auto` (pipeline.precision): the choice per hardware kind, explicit values, configs."""

from __future__ import annotations

import logging

import pytest

from pipeline import precision
from pipeline.precision import Hardware

AVX2_EPYC = Hardware("cpu", "AMD EPYC 7B13", frozenset({"avx", "avx2", "fma"}), "x86_64", "AVX2")
# AVX-512 without its bf16 extension (Skylake/Cascade Lake Xeons): still no fast bf16 GEMM.
AVX512_SKYLAKE = Hardware(
    "cpu", "Intel Xeon Platinum 8175M", frozenset({"avx2", "avx512f", "avx512bw"}), "x86_64", "AVX512"
)
ZEN4 = Hardware("cpu", "AMD EPYC 9B14", frozenset({"avx2", "avx512f", "avx512_bf16"}), "x86_64", "AVX512")
SAPPHIRE_RAPIDS = Hardware(
    "cpu",
    "Intel Xeon Platinum 8481C",
    frozenset({"avx512f", "avx512_bf16", "amx_bf16", "amx_tile"}),
    "x86_64",
    "AVX512",
)
GRAVITON3 = Hardware("cpu", "", frozenset({"fp", "asimd", "bf16", "sve"}), "aarch64", "SVE256")
A100 = Hardware("cuda", "AMD EPYC", frozenset(), "x86_64", "AVX2", "NVIDIA A100-SXM4-80GB", True)
T4 = Hardware("cuda", "Intel Xeon", frozenset(), "x86_64", "AVX512", "Tesla T4", False)


@pytest.mark.parametrize(
    ("hardware", "dtype", "reason_has"),
    [
        (AVX2_EPYC, "float32", "without AMX or AVX512-BF16"),  # the ~90x-slower-bf16 machine
        (AVX512_SKYLAKE, "float32", "without AMX or AVX512-BF16"),  # AVX-512 alone is not enough
        (ZEN4, "bfloat16", "avx512_bf16"),
        (SAPPHIRE_RAPIDS, "bfloat16", "amx_bf16 and avx512_bf16"),
        (GRAVITON3, "float32", "aarch64"),  # ARM: float32, never the slow path
        (A100, "bfloat16", "A100"),
        (T4, "float16", "no bf16 units"),  # fp16 is a pre-Ampere GPU's fast path
    ],
)
def test_auto_picks_the_fast_dtype_of_the_hardware(hardware, dtype, reason_has):
    chosen = precision.resolve("auto", hardware)
    assert chosen.dtype == dtype
    assert chosen.choice == "auto" and chosen.reason.startswith("auto: ") and reason_has in chosen.reason
    assert chosen.device == hardware.device


@pytest.mark.parametrize("dtype", ["bfloat16", "float16", "float32"])
def test_an_explicit_dtype_wins(dtype):
    for hardware in (AVX2_EPYC, SAPPHIRE_RAPIDS, T4):
        chosen = precision.resolve(dtype, hardware)
        assert (chosen.choice, chosen.dtype) == (dtype, dtype)
        assert chosen.reason.startswith("set in the config")


def test_explicit_bf16_on_a_cpu_without_it_warns(caplog):
    with caplog.at_level(logging.WARNING, logger="pipeline.precision"):
        chosen = precision.resolve("bfloat16", AVX2_EPYC, what="training")
    assert chosen.dtype == "bfloat16" and "slower" in chosen.reason
    assert any("training" in r.getMessage() and "AVX2" in r.getMessage() for r in caplog.records)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="pipeline.precision"):
        precision.resolve("bfloat16", ZEN4)
    assert not caplog.records


def test_an_unknown_dtype_lists_the_valid_ones():
    with pytest.raises(ValueError, match="auto, bfloat16, float16, float32"):
        precision.resolve("fp8", AVX2_EPYC)


def test_this_machine_is_detected_consistently_with_torch():
    import torch

    hw = precision.detect()
    assert hw.torch_capability == torch.backends.cpu.get_cpu_capability()
    assert hw.device == ("cuda" if torch.cuda.is_available() else "cpu")
    assert precision.resolve("auto").dtype == precision.resolve("auto", hw).dtype


def test_stage_configs_default_to_auto_and_refuse_the_old_bf16_key():
    from pipeline.config import ConfigError, parse
    from stages import grpo, sft
    from stages.common.sampling import SamplingConfig

    assert sft.Config(model="m", dataset="d").dtype == "auto"
    g = grpo.Config(model="m", prompts=[{"source": "humaneval"}], rewards=[{"name": "format"}])
    assert (g.dtype, g.vllm_dtype) == ("auto", "auto")
    assert SamplingConfig().dtype == "auto"
    with pytest.raises(ConfigError, match="unknown key 'bf16'.*valid keys:.*dtype"):
        parse(sft.Config, {"kind": "sft", "model": "m", "dataset": "d", "bf16": True}, "x.yaml")
    with pytest.raises(ConfigError, match="dtype"):
        parse(sft.Config, {"kind": "sft", "model": "m", "dataset": "d", "dtype": "fp8"}, "x.yaml")


@pytest.mark.parametrize(
    ("dtype", "flags"), [("bfloat16", (True, False)), ("float16", (False, True)), ("float32", (False, False))]
)
def test_training_arguments_follow_the_resolved_dtype(tmp_path, dtype, flags):
    from stages import grpo, sft

    s = sft.sft_arguments(sft.Config(model="m", dataset="d"), tmp_path, dtype=dtype)
    g = grpo.grpo_arguments(
        grpo.Config(model="m", prompts=[{"source": "humaneval"}], rewards=[{"name": "format"}]), tmp_path, dtype=dtype
    )
    assert (s.bf16, s.fp16) == flags and (g.bf16, g.fp16) == flags

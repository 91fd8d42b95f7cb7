"""Matmul roofline of this machine: GFLOP/s of a square torch matmul, bf16 and fp32, all threads.

    python bench/roofline.py                 # ~1 min on 2 idle cores: writes bench/results/roofline.json
    python bench/roofline.py --quick         # small matrices, one rep: a script check

The "% of roofline" of ``bench/rollout.py`` divides achieved FLOP/s by this machine's figure for
the dtype in use when ``bench/results/roofline.json`` was measured on the same CPU model (else it
falls back to the Intel AMX figures cited from environment.md, and says so). A CPU with AMX runs
bf16 several times faster than fp32; one with AVX512-BF16 (AMD Zen 4) about twice; one with AVX2
only runs bf16 much *slower* than fp32 (issue #17: ~90x), which is why ``dtype: auto`` exists.

Method: ``torch.matmul(a, b)`` of two ``--size`` x ``--size`` matrices, ``--warmup`` calls
excluded, then ``--reps`` timed calls (fewer when they would take over ~20 s); FLOP per call =
2 n^3; the result is the median GFLOP/s and the best. Threads: torch's default (every usable
core), as training and vLLM use.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C

C.enter_repo()

NAME = "roofline"


def measure(dtype_name: str, n: int, warmup: int, reps: int) -> dict:
    """GFLOP/s of ``reps`` timed (n, n) @ (n, n) matmuls in ``dtype_name`` (median, best, all)."""
    import torch

    dtype = getattr(torch, dtype_name)
    g = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=g).to(dtype)
    b = torch.randn(n, n, generator=g).to(dtype)
    t = time.perf_counter()
    for _ in range(max(warmup, 1)):
        torch.matmul(a, b)
    # bf16 on an AVX2-only CPU is ~90x slower than fp32: cap the timed calls at ~20 s
    reps = max(1, min(reps, int(20 / ((time.perf_counter() - t) / max(warmup, 1)))))
    rates = []
    for _ in range(reps):
        t = time.perf_counter()
        torch.matmul(a, b)
        rates.append(2 * n**3 / (time.perf_counter() - t) / 1e9)
    return {"gflops": C.median(rates), "best_gflops": max(rates), "values": rates, "size": n}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=2048, help="matrix side n (default 2048)")
    parser.add_argument("--reps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="n = 256, 1 rep")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    if args.quick:
        args.size, args.reps, args.warmup = 256, 1, 1
    import torch

    started = time.time()
    results = {}
    for dtype in ("float32", "bfloat16"):
        results[dtype] = measure(dtype, args.size, args.warmup, args.reps)
        C.log(f"{dtype}: {results[dtype]['gflops']:.1f} GFLOP/s (median), best {results[dtype]['best_gflops']:.1f}")
    C.print_table(
        f"matmul roofline, {C.cpu_model()} (torch CPU capability {torch.backends.cpu.get_cpu_capability()})"
        + (" (QUICK: not a measurement)" if args.quick else ""),
        ["dtype", "GFLOP/s (median)", "best", "n", "threads"],
        [
            [d, C.fmt(r["gflops"]), C.fmt(r["best_gflops"]), str(r["size"]), str(torch.get_num_threads())]
            for d, r in results.items()
        ],
    )
    path = C.result_path(NAME, args.quick, args.out)
    C.write_result(
        path,
        NAME,
        {
            "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "threads": torch.get_num_threads(),
            "results": results,
        },
        started,
        args.quick,
    )
    C.log(f"wrote {path.relative_to(C.ROOT) if path.is_relative_to(C.ROOT) else path}")


if __name__ == "__main__":
    main()

"""Rollout throughput: our vLLM sampling path vs transformers ``generate`` (bf16 and fp32).

    python bench/rollout.py                  # full size (~15 min on 2 idle cores): writes bench/results/rollout.json
    python bench/rollout.py --quick          # tiny random model, a few tokens: a script check, not a measurement
    python bench/rollout.py --reps 5 --prompts 32 --k 4    # environment.md's shape (32 prompts x 4 samples)

Sides (all in this one process, interleaved per repetition: vllm, hf_bf16, hf_fp32, vllm, ...):
- *vllm*: ``stages.common.sampling.Sampler`` with ``backend: vllm`` (the engine generate/eval use: in-process,
  ``enforce_eager``, bf16), its engine options taken from the GRPO config (``--config``, default
  ``configs/grpo/smollm2-135m/reasoning.yaml``): ``vllm_dtype``, ``vllm_enforce_eager``,
  ``vllm_kv_cache_gib``, ``max_model_len = max_prompt_length + max_completion_length``. The engine is
  started once (start-up timed and reported separately) and kept for every repetition;
- *hf_bf16* / *hf_fp32*: ``model.generate`` on the same model in bf16 / fp32, every prompt in one
  left-padded batch (``--hf-batch`` prompts per call), ``num_return_sequences = k``.
Same prompts (real reasoning-gym prompts from the config's sources, rendered with the chat template),
same k (``num_generations``), temperature and top-p (from the config). Every completion is forced to
exactly ``max_tokens`` new tokens on both sides (vLLM ``min_tokens = max_tokens``, HF
``min_new_tokens = max_new_tokens``), checked after each call, so generated tokens per second compare
equal work. One warm-up call per side (2 prompts, 8 tokens) is excluded.

Roofline: tokens/s x 2 x parameters (unique parameters of the HF model; the tied embedding counted
once, as the LM-head matmul; attention-score FLOPs ignored) against the matmul roofline of this
machine for the dtype the side computes in (``bench/roofline.py``'s result for the same CPU model;
without one, environment.md's Intel AMX figures: bf16 ~620 GFLOP/s, fp32 ~210 GFLOP/s).
"""

from __future__ import annotations

import argparse
import contextlib
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C

C.enter_repo()
from pipeline import precision  # noqa: E402 - after C.enter_repo()

NAME = "rollout"
SIDES = ("vllm", "hf_bf16", "hf_fp32")
DTYPE = {"vllm": "bfloat16", "hf_bf16": "bfloat16", "hf_fp32": "float32"}


def load_prompts(config, n: int) -> list:
    """``n`` prompts (message lists), round-robin over the config's prompt sources (train split)."""
    from data import load_prompts as load

    per_source = math.ceil(n / len(config.prompts))
    sources = [
        s.model_copy(update={"n_train": min(s.n_train, per_source)}) if hasattr(s, "n_train") else s
        for s in config.prompts
    ]
    columns = [list(load([s], split="train", template=config.template)) for s in sources]
    rows = [col[i] for i in range(per_source) for col in columns if i < len(col)]
    return [(r["id"], r["prompt"]) for r in rows[:n]]


@contextlib.contextmanager
def forced_length():
    """Every vLLM ``SamplingParams`` built in this block gets ``min_tokens = max_tokens``
    (``Sampler`` imports ``SamplingParams`` at call time, so it picks this up)."""
    import vllm

    original = vllm.SamplingParams

    def forced(*args, **kwargs):
        kwargs.setdefault("min_tokens", kwargs.get("max_tokens") or 16)
        return original(*args, **kwargs)

    vllm.SamplingParams = forced
    try:
        yield
    finally:
        vllm.SamplingParams = original


class HFSide:
    """Batched ``generate`` of one model copy in one dtype."""

    def __init__(self, model_path: str, dtype: str):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(model_path)
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        torch_dtype = torch.bfloat16 if dtype == "bfloat16" else torch.float32
        self.model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch_dtype).eval()

    def sample(
        self, texts: list[str], k: int, max_tokens: int, temperature: float, top_p: float, batch: int, seed: int
    ) -> int:
        """Generated tokens (all forced to ``max_tokens`` per sequence; checked)."""
        import torch

        torch.manual_seed(seed)
        total = 0
        for i in range(0, len(texts), batch):
            enc = self.tokenizer(texts[i : i + batch], return_tensors="pt", padding=True, add_special_tokens=False)
            with torch.no_grad():
                out = self.model.generate(
                    **enc,
                    do_sample=True,
                    temperature=temperature,
                    top_p=top_p,
                    top_k=0,
                    max_new_tokens=max_tokens,
                    min_new_tokens=max_tokens,
                    num_return_sequences=k,
                    pad_token_id=self.tokenizer.pad_token_id,
                )
            new = out.shape[1] - enc["input_ids"].shape[1]
            if new != max_tokens or out.shape[0] != k * enc["input_ids"].shape[0]:
                raise RuntimeError(
                    f"HF generate returned {out.shape[0]} x {new} new tokens, "
                    f"expected {k * enc['input_ids'].shape[0]} x {max_tokens}"
                )
            total += out.shape[0] * new
        return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model", default=None, help="model reference (default smollm2-135m-instruct; tiny-random-llama with --quick)"
    )
    parser.add_argument(
        "--config",
        default="configs/grpo/smollm2-135m/reasoning.yaml",
        help="GRPO config: prompt sources, k, max tokens, temperature, engine options",
    )
    parser.add_argument("--prompts", type=int, default=16, help="prompts per call (default 16: x k=8 = 128 sequences)")
    parser.add_argument(
        "--k", type=int, default=None, help="samples per prompt (default: the config's num_generations)"
    )
    parser.add_argument(
        "--max-tokens",
        type=int,
        default=None,
        help="new tokens per completion (default: the config's max_completion_length)",
    )
    parser.add_argument("--hf-batch", type=int, default=None, help="prompts per HF generate call (default: all)")
    parser.add_argument("--sides", default=",".join(SIDES), help=f"comma-separated subset of {','.join(SIDES)}")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="tiny model, 4 prompts x 2 x 8 tokens, 1 rep")
    parser.add_argument("--out", default=None, help="result file (default bench/results/rollout.json)")
    args = parser.parse_args()
    started = time.time()

    from pipeline.config import parse, read_yaml
    from pipeline.models import resolve
    from stages import grpo
    from stages.common.sampling import Sampler, SamplingConfig

    config = parse(grpo.Config, read_yaml(Path(args.config)), args.config)
    if args.quick:
        args.model = args.model or "tiny-random-llama"
        args.prompts, args.k, args.max_tokens = min(args.prompts, 4), args.k or 2, args.max_tokens or 8
        args.reps = 1 if "--reps" not in sys.argv else args.reps
    model_ref = args.model or "smollm2-135m-instruct"
    k = args.k or config.num_generations
    max_tokens = args.max_tokens or config.max_completion_length
    sides = C.parse_sides(args.sides, SIDES)
    model_path = resolve(model_ref)
    prompts = load_prompts(config, args.prompts)
    ids, messages = [p[0] for p in prompts], [p[1] for p in prompts]

    import torch

    threads_before = torch.get_num_threads()
    if config.torch_threads is not None:
        torch.set_num_threads(config.torch_threads)
    C.log(f"{model_ref}: {len(prompts)} prompts x k={k} x {max_tokens} tokens, sides {sides}, {args.reps} reps")

    engine_opts = {
        "dtype": precision.resolve(config.vllm_dtype).dtype,
        "enforce_eager": True if config.vllm_enforce_eager is None else config.vllm_enforce_eager,
        "max_model_len": config.max_prompt_length + config.max_completion_length,
        "kv_cache_gib": config.vllm_kv_cache_gib,
    }
    sampling = SamplingConfig(
        backend="vllm",
        num_samples=k,
        temperature=config.temperature,
        top_p=config.top_p,
        max_tokens=max_tokens,
        max_model_len=engine_opts["max_model_len"],
        dtype=engine_opts["dtype"],
        enforce_eager=engine_opts["enforce_eager"],
        batch_size=len(prompts),
    )
    DTYPE["vllm"] = engine_opts["dtype"]  # what the engine computes in (vllm_dtype: auto -> bf16 or fp32)
    startup = {}
    sampler = None
    if "vllm" in sides:
        import os

        os.environ["VLLM_CPU_KVCACHE_SPACE"] = str(config.vllm_kv_cache_gib)
        t = time.perf_counter()
        sampler = Sampler(model_path, sampling, seed=args.seed)
        startup["vllm"] = time.perf_counter() - t
        C.log(f"vLLM engine started in {startup['vllm']:.1f} s")
    threads_after = torch.get_num_threads()
    hf = {}
    for side in sides:
        if side.startswith("hf_"):
            t = time.perf_counter()
            hf[side] = HFSide(model_path, DTYPE[side])
            startup[side] = time.perf_counter() - t
    tokenizer = sampler.tokenizer if sampler else next(iter(hf.values())).tokenizer
    texts = [tokenizer.apply_chat_template(list(m), tokenize=False, add_generation_prompt=True) for m in messages]
    prompt_tokens = [len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts]
    ref_model = next(iter(hf.values())).model if hf else None
    if ref_model is None:
        from transformers import AutoConfig, AutoModelForCausalLM

        with torch.device("meta"):
            ref_model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(model_path))
    params = sum(p.numel() for p in ref_model.parameters())

    def run(side: str, n_prompts: int, tokens: int) -> tuple[float, int]:
        t = time.perf_counter()
        if side == "vllm":
            with forced_length():
                sampler.cfg = sampling.model_copy(update={"max_tokens": tokens})
                out = sampler.sample(messages[:n_prompts], ids[:n_prompts])
            lengths = [c.num_tokens for cs in out for c in cs]
            if len(lengths) != n_prompts * k or any(n != tokens for n in lengths):
                raise RuntimeError(
                    f"vLLM returned lengths {sorted(set(lengths))} for {len(lengths)} completions, "
                    f"expected {n_prompts * k} x {tokens}"
                )
            generated = sum(lengths)
        else:
            generated = hf[side].sample(
                texts[:n_prompts], k, tokens, config.temperature, config.top_p, args.hf_batch or n_prompts, args.seed
            )
        return time.perf_counter() - t, generated

    for side in sides:  # warm-up, excluded
        run(side, min(2, len(texts)), 8)
    per_rep = {s: [] for s in sides}
    for rep in range(args.reps):
        for side in sides:
            seconds, generated = run(side, len(texts), max_tokens)
            per_rep[side].append({"seconds": seconds, "tokens": generated, "tokens_per_s": generated / seconds})
            C.log(
                f"rep {rep + 1}/{args.reps} {side}: {generated} tokens in {seconds:.1f} s = "
                f"{generated / seconds:.1f} tokens/s"
            )
    if sampler is not None:
        sampler.close()

    results = {}
    rooflines, roofline_source = C.roofline()
    for side in sides:
        tps = C.summary([r["tokens_per_s"] for r in per_rep[side]])
        gflops = 2 * params * tps["median"] / 1e9
        roof = rooflines[DTYPE[side]]
        results[side] = {
            "tokens_per_s": tps,
            "seconds": C.summary([r["seconds"] for r in per_rep[side]]),
            "tokens_per_call": per_rep[side][0]["tokens"],
            "compute_dtype": DTYPE[side],
            "achieved_gflops": gflops,
            "roofline_gflops": roof,
            "roofline_fraction": gflops / roof,
            "startup_s": startup.get(side),
            "reps": per_rep[side],
        }
    ratios = {}
    for a, b in (("vllm", "hf_bf16"), ("vllm", "hf_fp32"), ("hf_bf16", "hf_fp32")):
        if a in results and b in results:
            ratios[f"{a}/{b}"] = C.ratio(results[a]["tokens_per_s"]["median"], results[b]["tokens_per_s"]["median"])
            # per-repetition ratios: how stable the comparison is on a noisy machine
            ratios[f"{a}/{b} per rep"] = [x["tokens_per_s"] / y["tokens_per_s"] for x, y in zip(per_rep[a], per_rep[b])]

    rows = []
    for side in sides:
        r = results[side]
        rows.append(
            [
                side,
                r["compute_dtype"],
                C.fmt(r["tokens_per_s"]["median"]),
                f"{C.fmt(r['tokens_per_s']['min'])}-{C.fmt(r['tokens_per_s']['max'])}",
                C.fmt(r["seconds"]["median"]),
                C.fmt(r["achieved_gflops"]),
                f"{100 * r['roofline_fraction']:.1f}% of {r['roofline_gflops']:.0f}",
                C.fmt(r["startup_s"]),
            ]
        )
    caption = (
        f"{len(texts)} prompts x k={k} x {max_tokens} new tokens (forced), prompt tokens mean "
        f"{sum(prompt_tokens) / len(prompt_tokens):.0f}; {params / 1e6:.1f}M params; "
        f"median of {args.reps} reps. "
        + "; ".join(f"{k_}: {v:.2f}x" for k_, v in ratios.items() if not k_.endswith("per rep"))
        + f". Roofline: {roofline_source}."
    )
    C.print_table(
        f"rollout throughput, {model_ref}" + (" (QUICK: not a measurement)" if args.quick else ""),
        ["side", "dtype", "tokens/s (median)", "min-max", "s/call", "GFLOP/s", "roofline", "start-up s"],
        rows,
        caption,
    )
    path = C.result_path(NAME, args.quick, args.out)
    C.write_result(
        path,
        NAME,
        {
            "model": model_ref,
            "model_path": model_path,
            "params": params,
            "config": args.config,
            "workload": {
                "prompts": len(texts),
                "k": k,
                "max_tokens": max_tokens,
                "forced_length": True,
                "temperature": config.temperature,
                "top_p": config.top_p,
                "hf_batch": args.hf_batch or len(texts),
                "prompt_tokens_mean": sum(prompt_tokens) / len(prompt_tokens),
                "reps": args.reps,
                "warmup": "one call per side, 2 prompts x 8 tokens, excluded",
            },
            "vllm_engine": {**engine_opts, "executor": "uni (in-process)", "enable_chunked_prefill": False},
            "torch_threads": {"before_engine": threads_before, "after_engine": threads_after},
            "roofline_source": roofline_source,
            "results": results,
            "ratios": ratios,
        },
        started,
        args.quick,
    )
    C.log(f"wrote {path.relative_to(C.ROOT) if path.is_relative_to(C.ROOT) else path}")


if __name__ == "__main__":
    main()

"""Speculative decoding for rollouts: vLLM's n-gram proposer against plain decoding.

    python bench/speculative.py              # ~5 min on 2 idle cores: bench/results/speculative.json
    python bench/speculative.py --quick      # tiny random model, a few tokens: a script check

The n-gram proposer (prompt lookup) guesses the next ``--draft`` tokens by matching the last
``prompt_lookup_min``..``prompt_lookup_max`` tokens against the sequence so far (prompt and
completion) and copying what followed; the model verifies all guesses in one forward pass.
DeepSeek-V3's multi-token prediction is the same idea with a learned proposer. It pays when
completions repeat their prompt (numbers, names) and when a forward pass over several tokens
costs little more than over one (memory-bound decoding).

Sides, two engines in this one process, calls interleaved (plain, ngram, plain, ...):
- *plain*: ``vllm.LLM`` with the engine options of the GRPO config (``--config``: ``vllm_dtype``,
  eager, KV cache), as our rollouts use;
- *ngram*: the same plus ``speculative_config={"method": "ngram", "num_speculative_tokens":
  --draft, "prompt_lookup_min": 2, "prompt_lookup_max": 4}``.
Same prompts (the config's reasoning-gym prompts, chat template), k = ``num_generations``, the
config's temperature and top-p, completions **not** forced to a length (a forced length would
make the proposer guess past the end of answers): generated tokens are counted per side, and the
rate compares tokens per second. Acceptance: accepted / proposed draft tokens, from the engine's
``vllm:spec_decode_num_accepted_tokens`` / ``vllm:spec_decode_num_draft_tokens`` counters.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C

C.enter_repo()

NAME = "speculative"


def counters(llm) -> dict[str, float]:
    """The engine's speculative-decoding counters (0 when it has none)."""
    out: dict[str, float] = {}
    for metric in llm.get_metrics():
        if metric.name.startswith("vllm:spec_decode") and hasattr(metric, "value"):
            out[metric.name] = out.get(metric.name, 0.0) + float(metric.value)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="model reference (default smollm2-135m-instruct)")
    parser.add_argument("--config", default="configs/grpo/smollm2-135m/reasoning.yaml")
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--draft", type=int, default=3, help="draft tokens proposed per step")
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    started = time.time()

    from pipeline import precision
    from pipeline.config import parse, read_yaml
    from pipeline.models import resolve
    from stages import grpo

    config = parse(grpo.Config, read_yaml(Path(args.config)), args.config)  # imports the rewards package
    # bench/rollout.py puts bench/ first on the path, where bench/rewards.py would shadow the
    # rewards package: imported after the package is loaded
    from rollout import load_prompts

    if args.quick:
        args.model, args.prompts, args.reps = args.model or "tiny-random-llama", 2, 1
    model_path = resolve(args.model or "smollm2-135m-instruct")
    prompts = load_prompts(config, args.prompts)
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # as stages.common.sampling
    os.environ.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")
    os.environ["VLLM_CPU_KVCACHE_SPACE"] = str(config.vllm_kv_cache_gib)
    from vllm import LLM, SamplingParams

    dtype = precision.resolve(config.vllm_dtype).dtype
    common = {
        "model": model_path,
        "dtype": dtype,
        "max_model_len": config.max_prompt_length + config.max_completion_length,
        "enforce_eager": True if config.vllm_enforce_eager is None else config.vllm_enforce_eager,
        "distributed_executor_backend": "uni",
        "enable_chunked_prefill": False,
        "seed": 0,
        "disable_log_stats": False,
    }
    spec = {"method": "ngram", "num_speculative_tokens": args.draft, "prompt_lookup_min": 2, "prompt_lookup_max": 4}
    engines, startup = {}, {}
    for side, extra in (("plain", {}), ("ngram", {"speculative_config": spec})):
        t = time.perf_counter()
        engines[side] = LLM(**common, **extra)
        startup[side] = time.perf_counter() - t
        C.log(f"{side}: engine started in {startup[side]:.1f} s")
    tokenizer = engines["plain"].get_tokenizer()
    texts = [tokenizer.apply_chat_template(list(m), tokenize=False, add_generation_prompt=True) for _, m in prompts]
    params = SamplingParams(
        n=config.num_generations,
        temperature=config.temperature,
        top_p=config.top_p,
        max_tokens=8 if args.quick else config.max_completion_length,
        seed=0,
    )
    for llm in engines.values():  # warm-up, excluded
        llm.generate(texts[:2], params, use_tqdm=False)
    reps: dict[str, list[dict]] = {s: [] for s in engines}
    for rep in range(args.reps):
        for side, llm in engines.items():
            before = counters(llm)
            t = time.perf_counter()
            outs = llm.generate(texts, params, use_tqdm=False)
            seconds = time.perf_counter() - t
            tokens = sum(len(c.token_ids) for o in outs for c in o.outputs)
            after = counters(llm)
            delta = {k: after.get(k, 0.0) - before.get(k, 0.0) for k in after}
            drafted = delta.get("vllm:spec_decode_num_draft_tokens", 0.0)
            accepted = delta.get("vllm:spec_decode_num_accepted_tokens", 0.0)
            reps[side].append(
                {
                    "seconds": seconds,
                    "tokens": tokens,
                    "tokens_per_s": tokens / seconds,
                    "draft_tokens": drafted,
                    "accepted_tokens": accepted,
                    "acceptance": accepted / drafted if drafted else None,
                }
            )
            rate = f"{tokens} tokens in {seconds:.1f} s = {tokens / seconds:.1f} tokens/s"
            acceptance = f", acceptance {accepted / drafted:.2f}" if drafted else ""
            C.log(f"rep {rep + 1}/{args.reps} {side}: {rate}{acceptance}")
    results = {
        side: {
            "tokens_per_s": C.summary([r["tokens_per_s"] for r in runs]),
            "tokens_per_call": C.median([r["tokens"] for r in runs]),
            "acceptance": C.median([r["acceptance"] for r in runs]) if side == "ngram" else None,
            "startup_s": startup[side],
            "reps": runs,
        }
        for side, runs in reps.items()
    }
    speedup = C.ratio(results["ngram"]["tokens_per_s"]["median"], results["plain"]["tokens_per_s"]["median"])
    C.print_table(
        f"speculative decoding (n-gram, {args.draft} draft tokens), dtype {dtype}"
        + (" (QUICK: not a measurement)" if args.quick else ""),
        ["side", "tokens/s (median)", "tokens/call", "acceptance", "start-up s"],
        [
            [
                s,
                C.fmt(r["tokens_per_s"]["median"]),
                C.fmt(r["tokens_per_call"], 0),
                C.fmt(r["acceptance"], 2) if r["acceptance"] is not None else "-",
                C.fmt(r["startup_s"]),
            ]
            for s, r in results.items()
        ],
        f"{len(texts)} prompts x k={config.num_generations}, up to {params.max_tokens} tokens, T={config.temperature}; "
        f"ngram / plain tokens/s: {speedup:.2f}x",
    )
    path = C.result_path(NAME, args.quick, args.out)
    C.write_result(
        path,
        NAME,
        {
            "config": args.config,
            "model_path": model_path,
            "engine": {**common, "speculative_config": spec},
            "results": results,
            "speedup_tokens_per_s": speedup,
        },
        started,
        args.quick,
    )
    C.log(f"wrote {path.relative_to(C.ROOT) if path.is_relative_to(C.ROOT) else path}")


if __name__ == "__main__":
    main()

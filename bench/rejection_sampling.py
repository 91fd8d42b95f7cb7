"""Rejection-sampling throughput of the generate stage: accepted samples per minute, sampled/s, acceptance rate.

    python bench/rejection_sampling.py                 # full size, ~20 min on 2 idle cores
    python bench/rejection_sampling.py --quick         # tiny model, smoke config, 16 tokens: checks the script works
    python bench/rejection_sampling.py --model runs/r1-demo/reasoning_rl/model --sides vllm --reps 5

Runs ``stages.generate.run`` end to end (sampling, rule rewards, filters, decontamination, mixing,
parquet + dataset card) with ``--config`` (default ``configs/generate/smollm2-135m/rejection_sampling.yaml``:
k=8, up to 160 new tokens, temperature 0.8, every filter on) on a small prompt set: the config's
sources cut to ``--per-source`` train prompts each (default 4 x 4 tasks = 16 prompts, 128 samples).
``--model`` defaults to ``smollm2-135m-instruct`` (the config's ``reasoning_rl`` is a pipeline step; pass
its ``model/`` folder to measure the real policy; the base model is rarely correct, so expect a low
acceptance rate with it).

Sides, in this one process, interleaved per repetition (vllm, hf, vllm, hf, ...):
- *vllm*: the config's sampling (``backend: vllm``), the engine started once (start-up reported, not
  timed) and reused by every run (``generate.open_sampler`` is patched to hand out the running engine);
- *hf*: the same with ``sampling.backend: hf`` (``Sampler``'s transformers fallback: one ``generate``
  call of k sequences per prompt, the config's dtype).
Completions are not forced to a length (this is the real stage: a sample ends at EOS or at
``max_tokens``); generated tokens are reported next to the rates. Each run writes into a fresh folder
(no shard reuse). One warm-up run per side (2 prompts, excluded).

Reported per side: *accepted/min* = rows kept by the filters (mixed-in rows excluded) per minute of
the whole ``generate.run``; *sampled/s* = samples per second of the whole run; *acceptance* = kept /
sampled; *tokens/s* = generated tokens per second of sampling only (``Sampler.sample``); the share of
the run spent outside sampling (rewards, filters, writing).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C

C.enter_repo()

NAME = "rejection_sampling"
SIDES = ("vllm", "hf")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--config",
        default=None,
        help="generate config (default "
        "configs/generate/smollm2-135m/rejection_sampling.yaml; configs/generate/tiny/smoke.yaml, "
        "filters off, with --quick)",
    )
    parser.add_argument(
        "--model", default=None, help="model reference (default smollm2-135m-instruct; tiny-random-llama with --quick)"
    )
    parser.add_argument("--per-source", type=int, default=4, help="train prompts per prompt source")
    parser.add_argument("--max-tokens", type=int, default=None, help="override sampling.max_tokens")
    parser.add_argument("--sides", default=",".join(SIDES))
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="tiny model, 1 prompt per source, 16 tokens, 1 rep")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    started = time.time()
    if args.quick:
        args.model = args.model or "tiny-random-llama"
        args.per_source = min(args.per_source, 1)
        args.max_tokens = args.max_tokens or 16
        args.reps = 1 if "--reps" not in sys.argv else args.reps
        args.config = args.config or "configs/generate/tiny/smoke.yaml"
    args.config = args.config or "configs/generate/smollm2-135m/rejection_sampling.yaml"
    model_ref = args.model or "smollm2-135m-instruct"
    sides = C.parse_sides(args.sides, SIDES)

    from pipeline.config import parse, read_yaml
    from pipeline.models import resolve
    from pipeline.runner import Resolver
    from pipeline.stage import StepContext
    from stages import generate
    from stages.common.sampling import Sampler

    raw = read_yaml(Path(args.config))
    raw["model"] = model_ref
    raw["prompts"] = [{**p, "n_train": args.per_source} if "n_train" in p else p for p in raw["prompts"]]
    if args.max_tokens:
        raw["sampling"] = {**raw.get("sampling", {}), "max_tokens": args.max_tokens}
    configs = {}
    for side in sides:
        configs[side] = parse(
            generate.Config, {**raw, "sampling": {**raw.get("sampling", {}), "backend": side}}, args.config
        )
    model_path = resolve(model_ref)

    samplers, startup, sample_s = {}, {}, {s: 0.0 for s in sides}
    for side in sides:
        t = time.perf_counter()
        samplers[side] = Sampler(model_path, configs[side].sampling, seed=configs[side].seed)
        startup[side] = time.perf_counter() - t
        C.log(f"{side} sampler started in {startup[side]:.1f} s")
        original = samplers[side].sample

        def timed(prompts, ids, _orig=original, _side=side):
            t0 = time.perf_counter()
            try:
                return _orig(prompts, ids)
            finally:
                sample_s[_side] += time.perf_counter() - t0

        samplers[side].sample = timed

    current = {"side": None}

    @contextlib.contextmanager
    def shared(model_path_, sampling, seed):  # generate.open_sampler's seam: the running engine, not closed
        yield samplers[current["side"]]

    generate.open_sampler = shared

    def run(side: str, cfg) -> dict:
        current["side"] = side
        work_root = Path(tempfile.mkdtemp(prefix=f"bench-rs-{side}-"))
        work = work_root / ".partial" / "rs"
        work.mkdir(parents=True)
        ctx = StepContext(run="bench", step="rs", run_dir=work_root, work_dir=work, resolver=Resolver(work_root, set()))
        sample_s[side] = 0.0
        t = time.perf_counter()
        result = generate.run(cfg, ctx)
        wall = time.perf_counter() - t
        import pyarrow.parquet as pq

        metas = [json.loads(m) for m in pq.read_table(work / "samples.parquet", columns=["meta"])["meta"].to_pylist()]
        shutil.rmtree(work_root, ignore_errors=True)
        tokens = sum(m["num_tokens"] for m in metas)
        sampled, kept = result.counts["sampled"], result.counts["kept"]
        return {
            "wall_s": wall,
            "sampling_s": sample_s[side],
            "prompts": result.counts["prompts"],
            "sampled": sampled,
            "kept": kept,
            "acceptance_rate": kept / sampled if sampled else 0.0,
            "accepted_per_min": 60 * kept / wall,
            "sampled_per_s": sampled / wall,
            "generated_tokens": tokens,
            "tokens_per_s": tokens / sample_s[side] if sample_s[side] else None,
            "truncated_share": sum(m["truncated"] for m in metas) / len(metas) if metas else None,
            "non_sampling_share": 1 - sample_s[side] / wall,
            "funnel": {k: v for k, v in result.counts.items() if k.startswith("dropped_")},
        }

    for side in sides:  # warm-up: imports, reward workers, first engine calls
        warm = configs[side].model_copy(
            update={
                "prompts": [
                    p.model_copy(update={"n_train": 1}) if hasattr(p, "n_train") else p
                    for p in configs[side].prompts[:2]
                ]
            }
        )
        run(side, warm)
    per_rep = {s: [] for s in sides}
    for rep in range(args.reps):
        for side in sides:
            r = run(side, configs[side])
            per_rep[side].append(r)
            C.log(
                f"rep {rep + 1}/{args.reps} {side}: kept {r['kept']}/{r['sampled']} in {r['wall_s']:.1f} s = "
                f"{r['accepted_per_min']:.1f} accepted/min, {r['sampled_per_s']:.2f} sampled/s, "
                f"{r['tokens_per_s'] or 0:.0f} tokens/s sampling"
            )
    for s in samplers.values():
        s.close()

    keys = (
        "accepted_per_min",
        "sampled_per_s",
        "acceptance_rate",
        "tokens_per_s",
        "wall_s",
        "sampling_s",
        "non_sampling_share",
        "generated_tokens",
        "truncated_share",
    )
    results = {
        s: {k: C.summary([r[k] for r in per_rep[s]]) for k in keys} | {"startup_s": startup[s], "reps": per_rep[s]}
        for s in sides
    }
    ratios = {}
    if set(SIDES) <= set(sides):
        for k in ("accepted_per_min", "sampled_per_s", "tokens_per_s"):
            ratios[f"{k} vllm/hf"] = C.ratio(results["vllm"][k]["median"], results["hf"][k]["median"])
    rows = [
        [
            s,
            C.fmt(results[s]["accepted_per_min"]["median"]),
            C.fmt(results[s]["sampled_per_s"]["median"], 2),
            f"{100 * results[s]['acceptance_rate']['median']:.1f}%",
            C.fmt(results[s]["tokens_per_s"]["median"]),
            C.fmt(results[s]["generated_tokens"]["median"], 0),
            C.fmt(results[s]["wall_s"]["median"]),
            f"{100 * results[s]['non_sampling_share']['median']:.0f}%",
            C.fmt(startup[s]),
        ]
        for s in sides
    ]
    n_prompts = per_rep[sides[0]][0]["prompts"]
    sampling = configs[sides[0]].sampling
    caption = (
        f"{n_prompts} prompts x k={sampling.num_samples}, <= {sampling.max_tokens} tokens, temperature "
        f"{sampling.temperature}; median of {args.reps} reps (1 warm-up run per side excluded). "
        + "; ".join(f"{k}: {v:.2f}x" for k, v in ratios.items())
    )
    C.print_table(
        f"rejection sampling, {model_ref}" + (" (QUICK: not a measurement)" if args.quick else ""),
        [
            "side",
            "accepted/min",
            "sampled/s",
            "acceptance",
            "tokens/s (sampling)",
            "tokens/run",
            "run s",
            "not sampling",
            "start-up s",
        ],
        rows,
        caption,
    )
    path = C.result_path(NAME, args.quick, args.out)
    C.write_result(
        path,
        NAME,
        {
            "config": args.config,
            "model": model_ref,
            "model_path": model_path,
            "workload": {
                "prompts": n_prompts,
                "per_source": args.per_source,
                **sampling.model_dump(mode="json"),
                "reps": args.reps,
                "warmup": "one run per side on 2 prompts, excluded",
            },
            "results": results,
            "ratios": ratios,
        },
        started,
        args.quick,
    )
    C.log(f"wrote {path.relative_to(C.ROOT) if path.is_relative_to(C.ROOT) else path}")


if __name__ == "__main__":
    main()

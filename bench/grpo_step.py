"""GRPO step time, broken down, and peak memory: our grpo config vs plain TRL ``GRPOTrainer`` defaults.

    python bench/grpo_step.py                # full size, ~30-40 min on 2 idle cores: bench/results/grpo_step.json
    python bench/grpo_step.py --quick        # tiny random model, 16-token completions, 1 step: checks the script works
    python bench/grpo_step.py --reps 5 --steps 6

Each side runs in its own subprocess (so its peak RSS is its own), alternating ours, trl_defaults,
ours, ... for ``--reps`` repetitions. In each process: build the trainer (vLLM start-up included,
reported separately), run ``--warmup`` optimizer steps (excluded: first reward-pool start, lazy
inits) and then ``--steps`` measured steps.

Sides, both on the same model, prompts (``stages.grpo.load_prompt_rows`` of ``--config``, same
shuffling seed), reward functions and batch:
- *ours*: ``GRPOTrainer`` with ``stages.grpo.grpo_arguments(config)`` (``--config``, default
  ``configs/grpo/smollm2-135m/reasoning.yaml``), the engine options of ``stages.grpo.run``
  (``vllm_sync.engine_options``: ``vllm_dtype``, ``vllm_enforce_eager``, ``vllm_kv_cache_gib``)
  and our CPU weight sync (``vllm_sync.install_cpu_weight_sync``). Only change: no checkpoints
  (``save_steps`` beyond the run), since saving is not part of a step.
- *trl_defaults*: ``GRPOConfig`` with TRL 1.16's defaults except what makes the work equal:
  ``per_device_train_batch_size``, ``gradient_accumulation_steps``, ``num_generations``,
  ``max_completion_length``, ``max_steps``, ``use_vllm``, ``vllm_mode`` (from the config), ``seed`` (same
  prompt order), ``use_cpu`` (no GPU), ``report_to="none"``. Our CPU weight sync is installed here
  too: without it TRL's colocated engine fails at its first sync on vLLM's CPU backend (environment.md),
  so there is no "TRL alone" to time. Everything else is TRL's default; the JSON lists the resulting
  differences (``options_that_differ``): e.g. vLLM engine dtype/compile, IS-correction forward pass,
  gradient checkpointing, fused AdamW, reward weights, KV cache size.
- *ours_chunked*, *ours_packed*: *ours* with the chunked log-prob head (``logprob_chunk_tokens: 512``)
  and, for *ours_packed*, ``padding_free: true`` as well (``stages/common/logprobs.py``);
  *ours_compiled*: *ours* with TRL's ``torch_compile: true`` (the policy compiled by
  ``torch.compile``, inductor on CPU); *ours_chunked_compiled*: both; none is run unless named
  in ``--sides``. The *ours* sides
  build the stage's log-prob override (``stages.grpo.chunked_logps_mixin``) on ``GRPOTrainer``,
  without the stage's dynamic sampling (which would change the work per step).
- both: every completion is forced to exactly ``max_completion_length`` tokens
  (``generation_kwargs={"min_tokens": L}`` for vLLM, ``min_new_tokens`` for HF generate), so both do
  the same work whatever they sample. ``--no-force-length`` lets completions stop at EOS.

Breakdown per optimizer step (timing hooks on the trainer instance, TRL 1.16 method names):
``generation`` = ``_generate`` (tokenize, weight sync, vLLM generate, decode; ``weight_sync`` is its
``vllm_generation.sync_weights`` part), ``rewards`` = ``_calculate_rewards``, ``old_logps`` /
``ref_logps`` = ``_get_per_token_logps_and_entropies`` under ``no_grad`` (policy / reference model),
``scoring_other`` = the rest of ``_generate_and_score_completions`` (padding, advantages),
``forward_backward`` = ``training_step`` minus ``_generate_and_score_completions`` (loss forward and
backward of every micro-batch), ``optimizer`` = ``optimizer.step()`` (between the
``on_pre_optimizer_step`` / ``on_optimizer_step`` callbacks), ``other`` = the step's wall time minus all
that (gradient clipping, zero_grad, scheduler, logging, data loading). Step wall time = between
consecutive ``on_step_end`` callbacks.

Peak memory: ``ru_maxrss`` of the trainer process (vLLM runs in it) over the whole run, and the peak of
the summed RSS of the process and its children (reward workers), sampled every 0.5 s (an upper bound).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C

C.enter_repo()
from pipeline import precision  # noqa: E402 - after C.enter_repo()

NAME = "grpo_step"
SIDES = ("ours", "trl_defaults", "ours_chunked", "ours_packed", "ours_compiled", "ours_chunked_compiled")
# Config keys each extra side changes on top of --config (the lever it measures).
VARIANTS = {
    "ours_chunked": {"logprob_chunk_tokens": 512, "padding_free": False},
    "ours_packed": {"logprob_chunk_tokens": 512, "padding_free": True},
    "ours_chunked_compiled": {"logprob_chunk_tokens": 512, "padding_free": False},
}
# GRPOConfig fields each extra side changes on top of ours' (levers with no config key yet).
VARIANT_ARGS = {"ours_compiled": {"torch_compile": True}, "ours_chunked_compiled": {"torch_compile": True}}
PARTS = (
    "generation",
    "weight_sync",
    "rewards",
    "old_logps",
    "ref_logps",
    "scoring_other",
    "forward_backward",
    "optimizer",
    "other",
)


# ---------------------------------------------------------------------------- worker (one side, one process)


def _config(args, side: str = "ours"):
    from pipeline.config import parse, read_yaml
    from stages import grpo

    raw = read_yaml(Path(args.config))
    raw.update(
        {
            "max_steps": args.warmup + args.steps,
            "save_steps": 10**6,
            # TRL's shuffled order on both sides (same seed): both train on the same prompts
            "prompt_order": "shuffled",
            "eval_prompts": [],
        }
    )
    raw.update(VARIANTS.get(side, {}))
    if args.model:
        raw["model"] = args.model
    if args.max_completion_length:
        raw["max_completion_length"] = args.max_completion_length
    if args.prompts_per_step:  # the step shape, whatever the config's (both sides use it)
        raw["gradient_accumulation_steps"] = (
            args.prompts_per_step * raw["num_generations"] // raw["per_device_train_batch_size"]
        )
    return parse(grpo.Config, raw, args.config)


def _trl_defaults_args(config, output_dir: str, generation_kwargs: dict | None):
    """TRL's ``GRPOConfig`` defaults plus only what makes the work equal (see the module docstring)."""
    import torch
    from trl import GRPOConfig

    return GRPOConfig(
        output_dir=output_dir,
        per_device_train_batch_size=config.per_device_train_batch_size,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        num_generations=config.num_generations,
        max_completion_length=config.max_completion_length,
        max_steps=config.max_steps,
        use_vllm=config.use_vllm,
        vllm_mode=config.vllm_mode,
        seed=config.seed,
        use_cpu=not torch.cuda.is_available(),
        report_to="none",
        generation_kwargs=generation_kwargs,
    )


def _differences(ours, theirs) -> dict:
    """GRPOConfig fields whose values differ between the two sides (both built in this process)."""
    skip = {"output_dir", "logging_dir", "generation_kwargs"}
    a, b = ours.to_dict(), theirs.to_dict()
    return {
        k: {"ours": a.get(k), "trl_defaults": b.get(k)}
        for k in sorted(set(a) | set(b))
        if k not in skip and a.get(k) != b.get(k)
    }


def worker(args) -> None:
    import contextlib

    import torch
    from transformers import AutoTokenizer, TrainerCallback
    from trl import GRPOTrainer

    from rewards import registry
    from stages import grpo
    from stages.common import vllm_sync

    monitor = C.TreeRssMonitor().__enter__()
    t_start = time.perf_counter()
    side = args.worker
    ours = side.startswith("ours")
    config = _config(args, side)
    if config.torch_threads is not None:
        torch.set_num_threads(config.torch_threads)  # as stages.grpo.run: before vLLM starts
    model_path = __import__("pipeline.models", fromlist=["resolve"]).resolve(config.model)
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    dataset, _ = grpo.load_prompt_rows(config, tokenizer)
    reward_funcs = [registry.get(r.name, **r.params) for r in config.rewards]
    out_dir = tempfile.mkdtemp(prefix=f"bench-grpo-{side}-")
    L = config.max_completion_length
    gen_kwargs = None
    if args.force_length:
        gen_kwargs = {"min_tokens": L} if config.use_vllm else {"min_new_tokens": L}

    ours_args = grpo.grpo_arguments(config, Path(out_dir))
    for key, value in VARIANT_ARGS.get(side, {}).items():
        setattr(ours_args, key, value)
    if gen_kwargs:
        ours_args.generation_kwargs = gen_kwargs
    trl_args = _trl_defaults_args(config, out_dir, gen_kwargs)
    targs = ours_args if ours else trl_args

    timers = C.Timers()
    records: list[dict] = []

    class StepTimer(TrainerCallback):
        def on_train_begin(self, a, state, control, **kw):
            self.last_end, self.snap, self.tokens = time.perf_counter(), timers.snapshot(), 0

        def on_step_begin(self, a, state, control, **kw):
            self.begin = time.perf_counter()

        def on_pre_optimizer_step(self, a, state, control, **kw):
            self.opt = time.perf_counter()

        def on_optimizer_step(self, a, state, control, **kw):
            timers.add("optimizer", time.perf_counter() - self.opt)

        def on_step_end(self, a, state, control, **kw):
            now = time.perf_counter()
            snap = timers.snapshot()
            records.append(
                {
                    "step": state.global_step,
                    "wall_s": now - self.last_end,
                    "raw": C.delta(snap, self.snap),
                    "completion_tokens": counts["tokens"],
                    "completions": counts["completions"],
                    "rss_gib": C.peak_rss_gib(),
                }
            )
            counts["tokens"] = counts["completions"] = 0
            self.last_end, self.snap = now, snap

    counts = {"tokens": 0, "completions": 0}
    engine = config.use_vllm and config.vllm_mode == "colocate"
    on_cpu = engine and vllm_sync.on_cpu_platform()
    if ours and engine:
        options = vllm_sync.engine_options(
            cpu_kv_cache_gib=config.vllm_kv_cache_gib if on_cpu else None,
            dtype=precision.resolve(config.vllm_dtype).dtype,
            enforce_eager=on_cpu if config.vllm_enforce_eager is None else config.vllm_enforce_eager,
        )
    else:
        options = contextlib.nullcontext()
    t0 = time.perf_counter()
    with options:
        trainer_class = type("Trainer", (grpo.chunked_logps_mixin(), GRPOTrainer), {}) if ours else GRPOTrainer
        trainer = trainer_class(
            model=model_path,
            reward_funcs=reward_funcs,
            args=targs,
            train_dataset=dataset,
            processing_class=tokenizer,
            callbacks=[StepTimer()],
        )
    startup = time.perf_counter() - t0
    rss_after_startup = C.peak_rss_gib()
    engine_facts = {}
    if on_cpu:
        vllm_sync.install_cpu_weight_sync(trainer.vllm_generation)
        timers.wrap(trainer.vllm_generation, "sync_weights", "weight_sync")
        llm_engine = trainer.vllm_generation.llm.llm_engine
        mc = llm_engine.model_config
        cache = getattr(getattr(llm_engine, "vllm_config", None), "cache_config", None)
        blocks, block_size = getattr(cache, "num_gpu_blocks", None), getattr(cache, "block_size", None)
        kv_bytes = getattr(cache, "kv_cache_memory_bytes", None)
        engine_facts = {
            "dtype": str(mc.dtype),
            "enforce_eager": mc.enforce_eager,
            "max_model_len": mc.max_model_len,
            "kv_cache_gib": kv_bytes / 2**30 if kv_bytes else None,
            "kv_cache_tokens": blocks * block_size if blocks and block_size else None,
            "kv_cache_gib_asked": config.vllm_kv_cache_gib
            if ours
            else "none (vLLM CPU default: gpu_memory_utilization x RAM minus used)",
        }
    if ours:
        grpo.install_chunked_logprobs(trainer, config.logprob_chunk_tokens, padding_free=config.padding_free)
    ref_model = getattr(trainer, "ref_model", None)

    def classify_logps(model, *a, **kw):
        if torch.is_grad_enabled():
            return "train_logps"
        return "ref_logps" if ref_model is not None and model is ref_model else "old_logps"

    original_generate = trainer._generate

    def counting_generate(prompts):
        out = original_generate(prompts)
        counts["tokens"] += sum(len(ids) for ids in out[1])
        counts["completions"] += len(out[1])
        return out

    trainer._generate = counting_generate
    timers.wrap(trainer, "_generate", "generation")
    timers.wrap(trainer, "_calculate_rewards", "rewards")
    timers.wrap(trainer, "_get_per_token_logps_and_entropies", classify=classify_logps)
    timers.wrap(trainer, "_generate_and_score_completions", "generate_and_score")
    timers.wrap(trainer, "training_step", "training_step")

    try:
        trainer.train()
    finally:
        if engine:
            vllm_sync.shutdown(trainer.vllm_generation)
        shutil.rmtree(out_dir, ignore_errors=True)
    monitor.__exit__(None, None, None)

    steps = []
    for r in records:
        raw = r["raw"]

        def g(k: str, raw: dict = raw) -> float:  # raw bound now (one record per loop turn)
            return raw.get(k, 0.0)

        parts = {
            "generation": g("generation"),
            "weight_sync": g("weight_sync"),
            "rewards": g("rewards"),
            "old_logps": g("old_logps"),
            "ref_logps": g("ref_logps"),
            "scoring_other": g("generate_and_score") - g("generation") - g("rewards") - g("old_logps") - g("ref_logps"),
            "forward_backward": g("training_step") - g("generate_and_score"),
            "optimizer": g("optimizer"),
        }
        parts["other"] = r["wall_s"] - g("training_step") - g("optimizer")
        steps.append(
            {
                "step": r["step"],
                "wall_s": r["wall_s"],
                "parts": parts,
                "completion_tokens": r["completion_tokens"],
                "completions": r["completions"],
                "rss_gib": r["rss_gib"],
            }
        )
    C.write_worker_result(
        args.worker_out,
        {
            "side": side,
            "startup_s": startup,
            "total_s": time.perf_counter() - t_start,
            "peak_rss_gib": C.peak_rss_gib(),
            "rss_after_startup_gib": rss_after_startup,
            "peak_tree_rss_gib": monitor.peak_gib,
            "engine": engine_facts,
            "torch_threads": torch.get_num_threads(),
            "warmup": args.warmup,
            "steps": steps,
            "measured": steps[args.warmup :],
            "options_that_differ": _differences(ours_args, trl_args) if side == "ours" else None,
            "grpo_config": {
                k: str(v)
                for k, v in targs.to_dict().items()
                if k
                in (
                    "beta",
                    "loss_type",
                    "bf16",
                    "fp16",
                    "gradient_checkpointing",
                    "optim",
                    "vllm_importance_sampling_correction",
                    "generation_batch_size",
                    "steps_per_generation",
                    "num_iterations",
                    "torch_compile",
                )
            },
        },
    )


# ---------------------------------------------------------------------------- driver


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/grpo/smollm2-135m/reasoning.yaml")
    parser.add_argument("--model", default=None, help="override the config's model (tiny-random-llama with --quick)")
    parser.add_argument("--max-completion-length", type=int, default=None, help="override the config's")
    parser.add_argument(
        "--prompts-per-step",
        type=int,
        default=2,
        help="prompts per optimizer step (sets gradient_accumulation_steps; 2 = the shape of the "
        "recorded results; 0 = the config's)",
    )
    parser.add_argument("--steps", type=int, default=4, help="measured optimizer steps per process")
    parser.add_argument("--warmup", type=int, default=1, help="optimizer steps excluded at the start of a process")
    parser.add_argument("--reps", type=int, default=3, help="processes per side, alternating")
    parser.add_argument(
        "--sides", default="ours,trl_defaults", help=f"comma-separated, from {', '.join(SIDES)}, run in this order"
    )
    parser.add_argument(
        "--no-force-length",
        dest="force_length",
        action="store_false",
        help="let completions stop at EOS (unequal work between sides)",
    )
    parser.add_argument("--quick", action="store_true", help="tiny model, 16 tokens, 1 warm-up + 1 step, 1 rep")
    parser.add_argument("--out", default=None)
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--worker-out", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.quick:
        args.model = args.model or "tiny-random-llama"
        args.max_completion_length = args.max_completion_length or 16
        if "--steps" not in sys.argv:
            args.steps = 1
        if "--reps" not in sys.argv:
            args.reps = 1
    if args.worker:
        worker(args)
        return

    started = time.time()
    sides = C.parse_sides(args.sides, SIDES)
    forward = [
        "--config",
        args.config,
        "--steps",
        str(args.steps),
        "--warmup",
        str(args.warmup),
        "--prompts-per-step",
        str(args.prompts_per_step),
    ]
    if args.model:
        forward += ["--model", args.model]
    if args.max_completion_length:
        forward += ["--max-completion-length", str(args.max_completion_length)]
    if not args.force_length:
        forward += ["--no-force-length"]
    log_dir = C.RESULTS / "logs" / (NAME + ("-quick" if args.quick else ""))
    runs = {s: [] for s in sides}
    for rep in range(args.reps):
        for side in sides:
            C.log(f"rep {rep + 1}/{args.reps}: {side} (subprocess; log in {log_dir.relative_to(C.ROOT)})")
            res = C.run_worker(Path(__file__), side, forward, log_dir, rep)
            step_s = C.median([s["wall_s"] for s in res["measured"]])
            C.log(
                f"  {side}: start-up {res['startup_s']:.1f} s, step {step_s:.1f} s (median of "
                f"{len(res['measured'])}), peak RSS {res['peak_rss_gib']:.2f} GiB"
            )
            runs[side].append(res)

    results = {}
    for side in sides:
        measured = [s for r in runs[side] for s in r["measured"]]
        per_rep_step = [C.median([s["wall_s"] for s in r["measured"]]) for r in runs[side]]
        results[side] = {
            "step_s": C.summary(per_rep_step),  # median over processes of each process's median step
            "parts_s": {p: C.median([s["parts"][p] for s in measured]) for p in PARTS},
            "completion_tokens_per_step": C.median([s["completion_tokens"] for s in measured]),
            "completions_per_step": C.median([s["completions"] for s in measured]),
            "startup_s": C.summary([r["startup_s"] for r in runs[side]]),
            "peak_rss_gib": C.summary([r["peak_rss_gib"] for r in runs[side]]),
            "peak_tree_rss_gib": C.summary([r["peak_tree_rss_gib"] for r in runs[side]]),
            "engine": runs[side][0]["engine"],
            "grpo_config": runs[side][0]["grpo_config"],
            "torch_threads": runs[side][0]["torch_threads"],
        }
    ratios = {}
    if {"ours", "trl_defaults"} <= set(sides):
        ratios["step speed-up ours vs trl_defaults (trl step / our step)"] = C.ratio(
            results["trl_defaults"]["step_s"]["median"], results["ours"]["step_s"]["median"]
        )
        ratios["per rep"] = [
            C.ratio(C.median([s["wall_s"] for s in t["measured"]]), C.median([s["wall_s"] for s in o["measured"]]))
            for o, t in zip(runs["ours"], runs["trl_defaults"])
        ]
        ratios["peak RSS ours / trl_defaults"] = C.ratio(
            results["ours"]["peak_rss_gib"]["median"], results["trl_defaults"]["peak_rss_gib"]["median"]
        )
    for variant in dict.fromkeys((*VARIANTS, *VARIANT_ARGS)):
        for base in ("ours", "trl_defaults"):
            if variant in results and base in results:
                ratios[f"step speed-up {variant} vs {base}"] = C.ratio(
                    results[base]["step_s"]["median"], results[variant]["step_s"]["median"]
                )
                ratios[f"peak RSS {variant} / {base}"] = C.ratio(
                    results[variant]["peak_rss_gib"]["median"], results[base]["peak_rss_gib"]["median"]
                )

    rows = []
    for side in sides:
        r = results[side]
        rows.append(
            [
                side,
                C.fmt(r["step_s"]["median"]),
                *[C.fmt(r["parts_s"][p], 2) for p in PARTS],
                C.fmt(r["peak_rss_gib"]["median"], 2),
                C.fmt(r["peak_tree_rss_gib"]["median"], 2),
                C.fmt(r["startup_s"]["median"]),
            ]
        )
    ours_run = runs.get("ours", [{}])[0]
    differ = ours_run.get("options_that_differ") or {}
    caption = (
        f"seconds per optimizer step, median over {args.reps} processes x {args.steps} steps "
        f"({args.warmup} warm-up step(s) excluded per process); completions/step "
        f"{results[sides[0]]['completions_per_step']:.0f}, completion tokens/step "
        f"{results[sides[0]]['completion_tokens_per_step']:.0f}"
        + ("" if args.force_length else " (NOT forced: sides may differ in work)")
        + ". "
        + "; ".join(f"{k}: {v:.2f}" for k, v in ratios.items() if isinstance(v, float))
        + (f". Options that differ: {', '.join(differ)}" if differ else "")
    )
    C.print_table(
        f"GRPO step, {args.config}" + (" (QUICK: not a measurement)" if args.quick else ""),
        ["side", "step s", *PARTS, "peak RSS GiB", "tree RSS GiB", "start-up s"],
        rows,
        caption,
    )
    path = C.result_path(NAME, args.quick, args.out)
    C.write_result(
        path,
        NAME,
        {
            "config": args.config,
            "model": args.model,
            "force_length": args.force_length,
            "warmup_steps": args.warmup,
            "measured_steps": args.steps,
            "reps": args.reps,
            "options_that_differ": differ,
            "results": results,
            "ratios": ratios,
            "runs": runs,
        },
        started,
        args.quick,
    )
    C.log(f"wrote {path.relative_to(C.ROOT) if path.is_relative_to(C.ROOT) else path}")


if __name__ == "__main__":
    main()

"""SFT throughput and peak memory: our sft stage in bf16 vs fp32, and vs plain TRL ``SFTTrainer`` defaults.

    python bench/sft.py                       # full size (~25 min on 2 idle cores): writes bench/results/sft.json
    python bench/sft.py --quick               # tiny random model, 1 warm-up + 2 steps: checks the script works
    python bench/sft.py --sides ours_bf16,ours_fp32 --reps 5
    python bench/sft.py --dataset runs/r1-demo/cold_start_data/dataset    # a real generate-stage dataset

Each side runs in its own subprocess (its own peak RSS), alternating ours_bf16, ours_fp32, trl_defaults,
ours_bf16, ... for ``--reps`` repetitions; each process runs ``--warmup`` optimizer steps (excluded) and
``--steps`` measured ones. Step time = between consecutive ``on_step_end`` callbacks.

Sides, all on the same model and conversations:
- *ours_bf16*: ``stages.sft.build_trainer`` with ``--config`` (default
  ``configs/sft/smollm2-135m/cold_start.yaml``: batch 8, max_length 512, bf16 autocast, group_by_length,
  plain-loss trainer on CPU); only change: no checkpoints;
- *ours_fp32*: the same with ``bf16: false``;
- *ours_chunked*: *ours_bf16* with ``loss_chunk_tokens: 512`` (the cross-entropy from the LM head in
  chunks of 512 trained tokens, ``stages/common/logprobs.py``); not run unless named in ``--sides``;
- *ours_chunked_gc*: *ours_chunked* with ``gradient_checkpointing: true`` (each decoder layer's
  activations recomputed in the backward); not run unless named;
- *ours_chunked_mb4*: *ours_chunked* in micro-batches of half the size with twice the gradient
  accumulation (the same sequences per optimizer step); not run unless named;
- *trl_defaults*: ``trl.SFTTrainer`` with ``SFTConfig`` defaults except what makes the work equal:
  ``per_device_train_batch_size``, ``gradient_accumulation_steps``, ``max_length``, ``max_steps``, ``seed``,
  ``assistant_only_loss=True`` with our training chat template (same objective), ``use_cpu``,
  ``report_to="none"``. It keeps TRL's defaults otherwise (gradient checkpointing on, TRL's fused-LM-head
  loss, random batches instead of grouped by length, ...; the JSON lists the options that differ).

Counted per step (from the batches ``training_step`` receives): *tokens* = non-padding tokens
(``attention_mask``), *loss tokens* = positions whose shifted label is not -100 (assistant tokens),
*padded tokens* = the batch tensor's size. Throughput = tokens of the measured steps / their wall time.

Data: by default 256 synthetic R1-style conversations built from real reasoning-gym prompts (the GRPO
config's sources) with a ``<think>`` block of 2-10 filler sentences and an ``<answer>`` block (about
120-400 tokens each, chat template included); ``--dataset`` uses any dataset the sft stage reads.
"""

from __future__ import annotations

import argparse
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C

C.enter_repo()

NAME = "sft"
SIDES = ("ours_bf16", "ours_fp32", "trl_defaults", "ours_chunked", "ours_chunked_gc", "ours_chunked_mb4")
FILLER = (
    "Let me work through this carefully. The first quantity is {a} and the second is {b}, so together "
    "they make {c}. Checking again: {c} minus {b} gives {a}, which matches. "
)


def synthetic_dataset(folder: Path, n: int, seed: int = 0) -> Path:
    """``n`` conversations (SFT-row schema, ``data.parquet``) on real reasoning-gym prompts."""
    import pandas as pd

    from data import load_prompts
    from pipeline.config import read_yaml

    sources = read_yaml(C.ROOT / "configs/grpo/smollm2-135m/reasoning.yaml")["prompts"]
    per = -(-n // len(sources))
    rows_in = [r for s in sources for r in load_prompts([{**s, "n_train": per}], split="train")]
    rng = random.Random(seed)
    rng.shuffle(rows_in)
    rows = []
    for r in rows_in[:n]:
        think = "".join(
            FILLER.format(a=a, b=b, c=a + b)
            for a, b in ((rng.randint(1, 999), rng.randint(1, 999)) for _ in range(rng.randint(2, 10)))
        )
        answer = f"<think>\n{think.strip()}\n</think>\n<answer>{r['answer']}</answer>"
        rows.append(
            {
                "id": r["id"],
                "messages": list(r["prompt"]) + [{"role": "assistant", "content": answer}],
                "data_source": r["data_source"],
                "domain": r["domain"],
                "rewards": "{}",
                "source_model": "synthetic",
                "meta": "{}",
            }
        )
    folder.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_parquet(folder / "data.parquet")
    return folder


# ---------------------------------------------------------------------------- worker (one side, one process)


def worker(args) -> None:
    import torch
    from transformers import TrainerCallback
    from trl import SFTConfig, SFTTrainer

    from pipeline.config import parse, read_yaml
    from pipeline.models import resolve
    from pipeline.runner import Resolver
    from pipeline.stage import StepContext
    from stages import sft

    monitor = C.TreeRssMonitor().__enter__()
    side = args.worker
    raw = read_yaml(Path(args.config))
    raw.update(
        {
            "dataset": args.dataset,
            "max_steps": args.warmup + args.steps,
            "save_steps": 10**6,
            "dtype": "float32" if side == "ours_fp32" else "bfloat16",
        }
    )
    if side.startswith("ours_chunked"):
        raw["loss_chunk_tokens"] = 512
    if side == "ours_chunked_gc":  # activations recomputed in the backward: memory for compute
        raw["gradient_checkpointing"] = True
    if side == "ours_chunked_mb4":  # the same work per optimizer step in micro-batches of half the size
        raw["per_device_train_batch_size"] = max(1, raw["per_device_train_batch_size"] // 2)
        raw["gradient_accumulation_steps"] = 2 * raw.get("gradient_accumulation_steps", 1)
    if args.all_rows:
        raw.pop("max_rows", None)
    if args.model:
        raw["model"] = args.model
    config = parse(sft.Config, raw, args.config)
    tmp = Path(tempfile.mkdtemp(prefix=f"bench-sft-{side}-"))
    (tmp / "work").mkdir()
    ctx = StepContext(run="bench", step="sft", run_dir=tmp, work_dir=tmp / "work", resolver=Resolver(tmp, set()))
    model, tokenizer = sft.load_model(resolve(config.model))
    ours_args = sft.sft_arguments(config, ctx.checkpoints)
    trl_args = SFTConfig(
        output_dir=str(ctx.checkpoints),
        per_device_train_batch_size=config.per_device_train_batch_size,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        max_length=config.max_length,
        max_steps=config.max_steps,
        seed=config.seed,
        assistant_only_loss=True,
        use_cpu=not torch.cuda.is_available(),
        report_to="none",
    )
    t0 = time.perf_counter()
    if side.startswith("ours"):
        trainer, stats = sft.build_trainer(model, tokenizer, config, ctx)
    else:  # the same preparation as build_trainer (template, stop token, data, filtering), TRL's trainer
        template = sft.training_template(tokenizer, config.training_template)
        sft._set_stop_token(model, tokenizer, sft.stop_token_id(tokenizer, template))
        dataset = sft.load_messages(
            ctx.resolve_dataset(config.dataset), config.dataset_split, config.max_rows, config.seed
        )
        dataset, stats = sft._measure(dataset, tokenizer, template, config.max_length, config.overlong)
        tokenizer.chat_template = template
        trainer = SFTTrainer(model=model, args=trl_args, train_dataset=dataset, processing_class=tokenizer)
    setup_s = time.perf_counter() - t0

    counts = {"tokens": 0, "loss_tokens": 0, "padded_tokens": 0, "sequences": 0}
    records: list[dict] = []
    original_step = trainer.training_step

    def counting_step(model, inputs, *a, **kw):
        ids = inputs["input_ids"]
        mask = inputs.get("attention_mask")
        labels = inputs.get("labels")
        counts["tokens"] += int(mask.sum()) if mask is not None else ids.numel()
        counts["loss_tokens"] += int((labels[:, 1:] != -100).sum()) if labels is not None else 0
        counts["padded_tokens"] += ids.numel()
        counts["sequences"] += ids.shape[0]
        return original_step(model, inputs, *a, **kw)

    trainer.training_step = counting_step

    class StepTimer(TrainerCallback):
        def on_train_begin(self, a, state, control, **kw):
            self.last = time.perf_counter()

        def on_step_end(self, a, state, control, **kw):
            now = time.perf_counter()
            records.append({"step": state.global_step, "wall_s": now - self.last, **counts})
            for k in counts:
                counts[k] = 0
            self.last = now

    trainer.add_callback(StepTimer())
    trainer.train()
    monitor.__exit__(None, None, None)
    shutil.rmtree(tmp, ignore_errors=True)
    measured = records[args.warmup :]
    wall = sum(r["wall_s"] for r in measured)
    total = {k: sum(r[k] for r in measured) for k in counts}
    skip = {"output_dir", "logging_dir"}
    a, b = ours_args.to_dict(), trl_args.to_dict()
    C.write_worker_result(
        args.worker_out,
        {
            "side": side,
            "setup_s": setup_s,
            "peak_rss_gib": C.peak_rss_gib(),
            "peak_tree_rss_gib": monitor.peak_gib,
            "torch_threads": torch.get_num_threads(),
            "dataset_stats": stats,
            "steps": records,
            "measured_wall_s": wall,
            "tokens_per_s": total["tokens"] / wall,
            "loss_tokens_per_s": total["loss_tokens"] / wall,
            "padded_tokens_per_s": total["padded_tokens"] / wall,
            "step_s": wall / len(measured),
            "padding_share": 1 - total["tokens"] / total["padded_tokens"] if total["padded_tokens"] else None,
            "bf16": (trl_args if side == "trl_defaults" else ours_args).bf16,
            "options_that_differ": {
                k: {"ours": a.get(k), "trl_defaults": b.get(k)}
                for k in sorted(set(a) | set(b))
                if k not in skip and a.get(k) != b.get(k)
            }
            if side == "trl_defaults"
            else None,
        },
    )


# ---------------------------------------------------------------------------- driver


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/sft/smollm2-135m/cold_start.yaml")
    parser.add_argument("--model", default=None, help="override the config's model (tiny-random-llama with --quick)")
    parser.add_argument("--dataset", default=None, help="dataset the sft stage reads (default: synthetic, see above)")
    parser.add_argument("--rows", type=int, default=256, help="synthetic conversations")
    parser.add_argument("--all-rows", action="store_true", help="ignore the config's max_rows")
    parser.add_argument("--steps", type=int, default=10, help="measured optimizer steps per process")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument(
        "--sides",
        default="ours_bf16,ours_fp32,trl_defaults",
        help=f"comma-separated, from {', '.join(SIDES)}, run in this order",
    )
    parser.add_argument("--quick", action="store_true", help="tiny model, 1 warm-up + 2 steps, 1 rep")
    parser.add_argument("--out", default=None)
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--worker-out", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.quick:
        args.model = args.model or "tiny-random-llama"
        args.steps = 2 if "--steps" not in sys.argv else args.steps
        args.warmup = 1 if "--warmup" not in sys.argv else args.warmup
        args.reps = 1 if "--reps" not in sys.argv else args.reps
        args.rows = min(args.rows, 64)
    if args.worker:
        worker(args)
        return

    started = time.time()
    sides = C.parse_sides(args.sides, SIDES)
    tmp = None
    dataset = args.dataset
    if dataset is None:
        tmp = Path(tempfile.mkdtemp(prefix="bench-sft-data-"))
        dataset = str(synthetic_dataset(tmp, args.rows))
    forward = ["--config", args.config, "--dataset", dataset, "--steps", str(args.steps), "--warmup", str(args.warmup)]
    if args.model:
        forward += ["--model", args.model]
    if args.all_rows:
        forward += ["--all-rows"]
    log_dir = C.RESULTS / "logs" / (NAME + ("-quick" if args.quick else ""))
    runs = {s: [] for s in sides}
    try:
        for rep in range(args.reps):
            for side in sides:
                C.log(f"rep {rep + 1}/{args.reps}: {side} (subprocess; log in {log_dir.relative_to(C.ROOT)})")
                res = C.run_worker(Path(__file__), side, forward, log_dir, rep)
                C.log(
                    f"  {side}: {res['tokens_per_s']:.1f} tokens/s ({res['loss_tokens_per_s']:.1f} loss tokens/s), "
                    f"step {res['step_s']:.2f} s, peak RSS {res['peak_rss_gib']:.2f} GiB"
                )
                runs[side].append(res)
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)

    keys = (
        "tokens_per_s",
        "loss_tokens_per_s",
        "padded_tokens_per_s",
        "step_s",
        "padding_share",
        "peak_rss_gib",
        "peak_tree_rss_gib",
        "setup_s",
    )
    results = {
        s: {k: C.summary([r[k] for r in runs[s]]) for k in keys}
        | {
            "bf16": runs[s][0]["bf16"],
            "torch_threads": runs[s][0]["torch_threads"],
            "dataset_stats": runs[s][0]["dataset_stats"],
        }
        for s in sides
    }
    ratios = {}
    pairs = [("ours_bf16", "ours_fp32"), ("ours_bf16", "trl_defaults"), ("ours_fp32", "trl_defaults")]
    pairs += [("ours_chunked", "ours_bf16"), ("ours_chunked", "trl_defaults")]
    pairs += [("ours_chunked_gc", "ours_chunked"), ("ours_chunked_mb4", "ours_chunked")]
    for a, b in pairs:
        if a in results and b in results:
            ratios[f"tokens/s {a}/{b}"] = C.ratio(
                results[a]["tokens_per_s"]["median"], results[b]["tokens_per_s"]["median"]
            )
            ratios[f"tokens/s {a}/{b} per rep"] = [
                x["tokens_per_s"] / y["tokens_per_s"] for x, y in zip(runs[a], runs[b])
            ]
    rows = [
        [
            s,
            str(results[s]["bf16"]),
            C.fmt(results[s]["tokens_per_s"]["median"]),
            f"{C.fmt(results[s]['tokens_per_s']['min'])}-{C.fmt(results[s]['tokens_per_s']['max'])}",
            C.fmt(results[s]["loss_tokens_per_s"]["median"]),
            C.fmt(results[s]["padded_tokens_per_s"]["median"]),
            f"{100 * (results[s]['padding_share']['median'] or 0):.0f}%",
            C.fmt(results[s]["step_s"]["median"], 2),
            C.fmt(results[s]["peak_rss_gib"]["median"], 2),
        ]
        for s in sides
    ]
    differ = next((r["options_that_differ"] for r in runs.get("trl_defaults", []) if r["options_that_differ"]), {})
    caption = (
        f"median over {args.reps} processes x {args.steps} steps ({args.warmup} warm-up steps excluded); "
        + "; ".join(f"{k}: {v:.2f}x" for k, v in ratios.items() if isinstance(v, float))
        + (f". trl_defaults differs in: {', '.join(differ)}" if differ else "")
    )
    C.print_table(
        f"SFT throughput, {args.config}" + (" (QUICK: not a measurement)" if args.quick else ""),
        ["side", "bf16", "tokens/s", "min-max", "loss tok/s", "padded tok/s", "padding", "step s", "peak RSS GiB"],
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
            "dataset": args.dataset or f"synthetic ({args.rows} rows)",
            "warmup_steps": args.warmup,
            "measured_steps": args.steps,
            "reps": args.reps,
            "options_that_differ_trl_defaults": differ,
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

"""Peak memory and time of one forward + backward of the policy's completion log-probs (GRPO's loss
forward), three ways, each side in its own process:

- ``full``: the model's own head: (B, T, V) logits, then TRL's ``selective_log_softmax`` and
  ``entropy_from_logits`` on the completion positions (what TRL did before its fused head);
- ``trl_fused``: TRL 1.16's ``add_fused_lm_head`` (the grpo stage without ``logprob_chunk_tokens``):
  every position projected in tiles of 4,096 positions x 32,768 vocabulary entries;
- ``chunked``: ``stages/common/logprobs.py`` (grpo ``logprob_chunk_tokens``): only the completion
  tokens, ``--chunk`` at a time, recomputed in the backward.

Peak memory: the kernel's peak resident set (``VmHWM``) reset (``/proc/self/clear_refs``) after
the model and batch are loaded and one warm-up pass has run, read after the measured passes;
``peak over baseline`` is that peak minus the resident set just before them. Loss: sum over
tokens of log-prob x a fixed +-1 advantage, plus 0.01 x entropy; bf16 autocast (the demo's dtype
on a CPU with AVX512-BF16 or AMX); float32 master weights, as in the grpo stage.

    python bench/logprob_memory.py                  # SmolLM2-135M, 16 x (128 prompt + 128 completion)
    python bench/logprob_memory.py --quick          # script check only (tiny model)
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C

C.enter_repo()

NAME = "logprob_memory"
SIDES = ("full", "trl_fused", "chunked")


def _rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def worker(args) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    from pipeline.models import resolve

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(resolve(args.model), dtype=torch.float32)
    model.train()
    vocab = model.config.vocab_size
    prompt, completion = args.prompt_tokens, args.completion_tokens
    ids = torch.randint(0, vocab, (args.batch, prompt + completion))
    mask = torch.ones_like(ids)
    advantages = torch.where(torch.arange(args.batch) % 2 == 0, 1.0, -1.0)[:, None]

    if args.worker == "full":
        from trl.trainer.utils import entropy_from_logits, selective_log_softmax

        def logps_and_entropy():
            logits = model(input_ids=ids, attention_mask=mask).logits[:, -completion - 1 : -1] / args.temperature
            return selective_log_softmax(logits, ids[:, -completion:]), entropy_from_logits(logits)
    elif args.worker == "trl_fused":
        from trl.trainer.utils import add_fused_lm_head

        add_fused_lm_head(model, temperature=args.temperature, outputs=("log_probs", "entropy"))
        labels = ids.clone()
        labels[:, :-completion] = -100  # as GRPOTrainer._get_per_token_logps_and_entropies

        def logps_and_entropy():
            out = model(input_ids=ids, attention_mask=mask, labels=labels, fused_lm_head=True)
            return out.log_probs[:, -completion:], out.entropy[:, -completion:]
    else:
        from stages.common.logprobs import add_chunked_lm_head

        add_chunked_lm_head(model, args.chunk, args.temperature)

        def logps_and_entropy():
            return model(input_ids=ids, attention_mask=mask, completion_logps=(completion, True))

    def step() -> float:
        model.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logps, entropy = logps_and_entropy()
        loss = -(logps.float() * advantages).mean() - 0.01 * entropy.float().mean()
        loss.backward()
        return float(loss.detach())

    step()  # warm-up: allocator pools and lazy initialisation are not the lever's memory
    model.zero_grad(set_to_none=True)
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current resident set
    baseline = _rss_kib("VmRSS")
    times, losses = [], []
    for _ in range(args.steps):
        start = time.perf_counter()
        losses.append(step())
        times.append(time.perf_counter() - start)
    peak = _rss_kib("VmHWM")
    C.write_worker_result(
        args.worker_out,
        {
            "side": args.worker,
            "baseline_gib": baseline / 2**20,
            "peak_gib": peak / 2**20,
            "peak_over_baseline_gib": (peak - baseline) / 2**20,
            "step_s": times,
            "loss": losses,
            "logits_elements_per_chunk": {
                "full": args.batch * (prompt + completion) * vocab,
                "trl_fused": min(args.batch * (prompt + completion - 1), 4096) * min(vocab, 32768),
                "chunked": min(args.chunk, args.batch * completion) * vocab,
            }[args.worker],
        },
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--batch", type=int, default=16, help="sequences")
    parser.add_argument("--prompt-tokens", type=int, default=128)
    parser.add_argument("--completion-tokens", type=int, default=128)
    parser.add_argument("--chunk", type=int, default=512, help="chunked side: completion tokens per chunk")
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--steps", type=int, default=2, help="measured forward+backward passes per process")
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--sides", default=",".join(SIDES))
    parser.add_argument("--quick", action="store_true", help="tiny model, 2 x (8 + 8) tokens, 1 rep")
    parser.add_argument("--out", default=None)
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--worker-out", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.quick:
        args.model, args.batch, args.prompt_tokens, args.completion_tokens = "tiny-random-llama", 2, 8, 8
        args.chunk, args.steps, args.reps = 4, 1, 1
    if args.worker:
        worker(args)
        return
    started = time.time()
    sides = C.parse_sides(args.sides, SIDES)
    passed = [
        f"--{k.replace('_', '-')}={getattr(args, k)}"
        for k in ("model", "batch", "prompt_tokens", "completion_tokens", "chunk", "temperature", "steps")
    ]
    runs: dict[str, list[dict]] = {s: [] for s in sides}
    for rep in range(args.reps):
        for side in sides:  # interleaved: a drifting shared machine hits every side alike
            C.log(f"rep {rep + 1}/{args.reps}: {side}")
            runs[side].append(C.run_worker(Path(__file__), side, passed, C.ROOT / "bench/results/logs", rep))
    rows, summary = [], {}
    for side, results in runs.items():
        summary[side] = {
            "peak_gib": C.median([r["peak_gib"] for r in results]),
            "peak_over_baseline_gib": C.median([r["peak_over_baseline_gib"] for r in results]),
            "step_s": C.median([t for r in results for t in r["step_s"]]),
            "loss": results[0]["loss"][0],
            "logits_elements_per_chunk": results[0]["logits_elements_per_chunk"],
        }
        s = summary[side]
        rows.append(
            [
                side,
                C.fmt(s["peak_gib"], 2),
                C.fmt(s["peak_over_baseline_gib"], 2),
                C.fmt(s["step_s"], 2),
                f"{s['loss']:.5f}",
            ]
        )
    payload = {"settings": vars(args) | {"worker": None}, "summary": summary, "runs": runs}
    path = C.result_path(NAME, args.quick, args.out)
    C.write_result(path, NAME, payload, started, args.quick)
    C.print_table(
        f"log-prob forward+backward, {args.batch} x ({args.prompt_tokens} + {args.completion_tokens}) tokens",
        ["side", "peak RSS GiB", "peak over baseline GiB", "s per pass (median)", "loss"],
        rows,
        caption=f"{path}",
    )


if __name__ == "__main__":
    main()

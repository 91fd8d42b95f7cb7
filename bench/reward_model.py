"""What the reward models add to an all-domain GRPO step (goal: at most 20% of the step).

    python bench/reward_model.py --metrics runs/r1-demo/all_domain_rl/metrics.jsonl   # in situ
    python bench/reward_model.py --helpfulness H --harmlessness S --step-seconds 95   # one step's RM work
    python bench/reward_model.py --quick                                             # tiny model: checks the script

Two measures, both written to ``bench/results/reward_model.json``:

- **in situ** (``--metrics``): the ``metrics.jsonl`` of an all-domain GRPO run
  (``configs/grpo/smollm2-135m/all_domain.yaml``). Each ``reward_model`` reward counts the wall
  seconds it spends scoring (``reward_stats/<name>/seconds``, cumulative per process,
  ``rewards.reward_model.ModelRewardStats``); between two logged optimizer steps its increase
  over ``seconds_per_step`` is the reward models' share of that step. The first logged step
  includes loading the reward models (reported apart, and left out of the median).
- **one step's RM work** (``--helpfulness``/``--harmlessness``): the rows an all-domain step
  gives the reward models, scored by them in this process: ``--prompts`` prompts per step (one per
  source, ``prompt_order: stratified``) x G completions, of which one prompt's G completions are
  general (helpfulness RM, ``scope: answer``) and one prompt's are safety (harmlessness RM,
  ``scope: full``). Completions are exactly ``--tokens`` tokens long (the config's
  max_completion_length; an answer block holding the last third), prompts are real ShareGPT and
  harmful prompts, so the work does not depend on what a policy happens to write. The models are
  loaded first (excluded); the median over ``--reps`` repetitions is divided by
  ``--step-seconds`` (a measured all-domain step without reward models) when given.
  Because a step time measured elsewhere (another day, another load on a shared machine) is not
  comparable, ``--policy`` also times, in the same process and conditions, the step's training
  forward and backward passes alone: ``--prompts`` x G sequences of a prompt plus ``--tokens``
  completion tokens, in micro-batches of ``--micro-batch``, bf16 autocast under ``dtype: auto``
  as the trainer runs them. ``rm / (rm + forward_backward)`` is then an **upper bound** of the
  reward models' share of a step: a real step also samples the completions (vLLM), computes old
  log-probabilities and steps the optimizer, all left out of the denominator.
Without trained reward models, ``--helpfulness``/``--harmlessness`` may name the base model
(``smollm2-135m-instruct``): a fresh one-logit head costs the same to run.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

BENCH = str(Path(__file__).resolve().parent)
sys.path.insert(0, BENCH)
import _common as C  # noqa: E402

C.enter_repo()
sys.path[:] = [str(C.ROOT)] + [
    p for p in sys.path if p not in (BENCH, str(C.ROOT))
]  # bench/rewards.py would shadow `rewards`

GOAL = 0.20  # the reward models' share of an all-domain step (issue 16)


def in_situ(metrics_path: Path) -> dict:
    """Per logged step: step seconds, reward-model seconds, share (module docstring)."""
    lines = [json.loads(x) for x in metrics_path.read_text().splitlines() if x.strip()]
    steps = [e for e in lines if "seconds_per_step" in e]
    keys = sorted({k for e in steps for k in e if k.startswith("reward_stats/reward_model") and k.endswith("/seconds")})
    if not keys:
        raise SystemExit(
            f"{metrics_path}: no reward_stats/reward_model*/seconds lines: not an all-domain run "
            "with reward models (or one from before ModelRewardStats)"
        )
    rows, previous = [], {k: 0.0 for k in keys}
    for e in steps:
        rm = sum(e.get(k, 0.0) - previous[k] for k in keys)
        previous = {k: e.get(k, previous[k]) for k in keys}
        # seconds_per_step spans the steps since the previous log line: logging_steps = 1 here
        rows.append(
            {"step": e["step"], "step_s": e["seconds_per_step"], "rm_s": rm, "share": rm / e["seconds_per_step"]}
        )
    later = rows[1:] or rows
    return {
        "metrics": str(metrics_path),
        "reward_models": [k.split("/")[1] for k in keys],
        "steps": rows,
        "first_step_includes_model_loading": True,
        "median_share": C.median([r["share"] for r in later]),
        "median_rm_s": C.median([r["rm_s"] for r in later]),
        "median_step_s": C.median([r["step_s"] for r in later]),
    }


def step_batch(tokenizer, kind: str, n: int, tokens: int) -> tuple[list, list[str]]:
    """``n`` (prompt, completion) pairs of one domain; each completion exactly ``tokens`` tokens."""
    from data import load_prompts

    source = (
        {"source": "sharegpt", "max_prompt_chars": 600, "limit": n}
        if kind == "general"
        else {"source": "harmful_prompts", "limit": n}
    )
    prompts = [r["prompt"] for r in load_prompts([source], split="train")][:1] * n  # G completions of one prompt
    filler = tokenizer.encode(" the answer follows from the steps above and is checked twice", add_special_tokens=False)
    reasoning = (filler * tokens)[: tokens * 2 // 3]
    answer = (filler * tokens)[: tokens - len(reasoning)]
    text = "<think>\n" + tokenizer.decode(reasoning) + "\n</think>\n<answer>" + tokenizer.decode(answer) + "</answer>"
    return prompts, [text] * n


def as_reward_model(ref: str, folder: Path) -> str:
    """``ref`` itself when it is a reward model; else (a causal LM: the stand-in of the module
    docstring) the same model with a fresh one-logit head, saved in ``folder``."""
    from pipeline.models import resolve
    from rewards.reward_model import read_config
    from stages.reward_model import load_classifier

    path = resolve(ref)
    if any(a.endswith("ForSequenceClassification") for a in read_config(path).get("architectures") or []):
        return path
    model, tokenizer = load_classifier(path)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


def prepare_rm(helpfulness: str, harmlessness: str, generations: int, tokens: int, dtype: str):
    """``(facts, once)``: both reward models loaded and warmed up; ``once()`` scores one step's
    reward-model rows and returns its seconds."""
    import tempfile

    from pipeline import precision
    from rewards import get
    from rewards.reward_model import load

    dtype = precision.resolve(dtype, what="reward models").dtype  # `auto` as grpo resolves it
    scratch = Path(tempfile.mkdtemp(prefix="bench_rm_"))
    helpfulness = as_reward_model(helpfulness, scratch / "helpfulness")
    harmlessness = as_reward_model(harmlessness, scratch / "harmlessness")
    fns = {
        "general": get(
            "reward_model",
            model=helpfulness,
            scope="answer",
            domains=["general"],
            normalize="none",
            dtype=dtype,
            label="helpfulness",
        ),
        "safety": get(
            "reward_model",
            model=harmlessness,
            scope="full",
            domains=["safety"],
            normalize="none",
            dtype=dtype,
            label="harmlessness",
        ),
    }
    batches = {}
    for kind, fn in fns.items():
        _, tokenizer, _ = load(fn.model, dtype)  # loaded once per process: excluded from the timing
        batches[kind] = step_batch(tokenizer, kind, generations, tokens)
        fn(*batches[kind], domain=[kind] * generations)  # warm-up

    def once() -> float:
        started = time.perf_counter()
        for kind, fn in fns.items():
            fn(*batches[kind], domain=[kind] * generations)
        return time.perf_counter() - started

    facts = {
        "helpfulness": helpfulness,
        "harmlessness": harmlessness,
        "completions_scored": 2 * generations,
        "tokens_per_completion": tokens,
        "dtype": dtype,
    }
    return facts, once


def prepare_forward_backward(policy: str, sequences: int, prompt: list, tokens: int, micro_batch: int):
    """``(facts, once)``: ``once()`` runs the training forward + backward passes over
    ``sequences`` sequences (module docstring) and returns its seconds."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from pipeline import precision
    from pipeline.models import resolve

    path = resolve(policy)
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    model.train()
    dtype = precision.resolve("auto").dtype
    ids = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=True, return_dict=True)[
        "input_ids"
    ]
    filler = tokenizer.encode(" the answer follows from the steps above", add_special_tokens=False)
    row = list(ids) + (filler * tokens)[:tokens]
    batch = torch.tensor([row] * micro_batch)

    def once() -> float:
        started = time.perf_counter()
        for _ in range(0, sequences, micro_batch):
            with torch.autocast("cpu", dtype=precision.torch_dtype(dtype), enabled=dtype != "float32"):
                loss = model(input_ids=batch, labels=batch).loss
            loss.backward()
        model.zero_grad(set_to_none=True)
        return time.perf_counter() - started

    once()  # warm-up
    return {
        "policy": policy,
        "sequences": sequences,
        "tokens_per_sequence": len(row),
        "micro_batch": micro_batch,
        "dtype": dtype,
    }, once


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--metrics", help="metrics.jsonl of an all-domain GRPO run with reward models (in situ)")
    parser.add_argument("--helpfulness", help="helpfulness reward model (folder, alias, hub id)")
    parser.add_argument("--harmlessness", help="harmlessness reward model")
    parser.add_argument("--step-seconds", type=float, help="a measured all-domain step without reward models")
    parser.add_argument(
        "--policy", help="also time the step's training forward/backward with this policy (same process)"
    )
    parser.add_argument("--prompts", type=int, default=6, help="prompts per step (all_domain.yaml: 6, one per source)")
    parser.add_argument("--micro-batch", type=int, default=8, help="per_device_train_batch_size")
    parser.add_argument("--generations", type=int, default=8, help="G: completions per prompt")
    parser.add_argument("--tokens", type=int, default=128, help="tokens per completion (max_completion_length)")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--quick", action="store_true", help="tiny random model, 2 reps: checks the script works")
    parser.add_argument("--out", help="result file (default bench/results/reward_model.json)")
    args = parser.parse_args()
    started = time.time()
    payload: dict = {"goal_share": GOAL}
    if args.quick:
        args.helpfulness = args.harmlessness = args.policy = "tiny-random-llama"
        args.reps, args.tokens = 2, 16
    if args.metrics:
        payload["in_situ"] = result = in_situ(Path(args.metrics))
        C.print_table(
            "Reward models in the all-domain GRPO steps",
            ["step", "step s", "RM s", "share"],
            [[str(r["step"]), C.fmt(r["step_s"]), C.fmt(r["rm_s"], 2), f"{r['share']:.1%}"] for r in result["steps"]],
            caption=f"median share (first step excluded: model loading) {result['median_share']:.1%}; "
            f"goal <= {GOAL:.0%}",
        )
    if args.helpfulness and args.harmlessness:
        work, rm_once = prepare_rm(args.helpfulness, args.harmlessness, args.generations, args.tokens, args.dtype)
        fb, fb_once = None, None
        if args.policy:
            from data import load_prompts

            prompt = [
                r["prompt"]
                for r in load_prompts([{"source": "sharegpt", "max_prompt_chars": 600, "limit": 1}], split="train")
            ][0]
            fb, fb_once = prepare_forward_backward(
                args.policy, args.prompts * args.generations, prompt, args.tokens, args.micro_batch
            )
        work["seconds"], fb_times = [], []
        for rep in range(args.reps):  # interleaved: a shared machine's drifts hit both alike
            work["seconds"].append(rm_once())
            if fb_once:
                fb_times.append(fb_once())
            C.log(
                f"rep {rep + 1}/{args.reps}: reward models {work['seconds'][-1]:.2f} s"
                + (f", training forward+backward {fb_times[-1]:.2f} s" if fb_once else "")
            )
        work["median_s"] = C.median(work["seconds"])
        payload["rm_work"] = work
        if args.step_seconds:
            work["step_seconds"] = args.step_seconds
            work["share"] = work["median_s"] / (args.step_seconds + work["median_s"])
        C.log(
            f"one step's reward-model work: {work['completions_scored']} completions x {args.tokens} tokens in "
            f"{work['median_s']:.2f} s (median of {args.reps})"
            + (
                f" = {work['share']:.1%} of a {args.step_seconds + work['median_s']:.1f} s step"
                if args.step_seconds
                else ""
            )
        )
        if fb:
            fb.update(seconds=fb_times, median_s=C.median(fb_times))
            payload["forward_backward"] = fb
            work["share_upper_bound"] = work["median_s"] / (work["median_s"] + fb["median_s"])
            C.log(
                f"training forward+backward of the step's {fb['sequences']} sequences: {fb['median_s']:.2f} s; "
                f"reward models <= {work['share_upper_bound']:.1%} of a step (goal <= {GOAL:.0%})"
            )
    if len(payload) == 1:
        parser.error("give --metrics, or --helpfulness and --harmlessness (or --quick)")
    path = C.result_path("reward_model", args.quick, args.out)
    C.write_result(path, "reward_model", payload, started, args.quick)
    C.log(f"wrote {path}")


if __name__ == "__main__":
    main()

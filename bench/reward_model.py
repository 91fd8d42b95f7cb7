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
sys.path[:] = [str(C.ROOT)] + [p for p in sys.path if p not in (BENCH, str(C.ROOT))]  # bench/rewards.py would shadow `rewards`

GOAL = 0.20  # the reward models' share of an all-domain step (issue 16)


def in_situ(metrics_path: Path) -> dict:
    """Per logged step: step seconds, reward-model seconds, share (module docstring)."""
    lines = [json.loads(x) for x in metrics_path.read_text().splitlines() if x.strip()]
    steps = [e for e in lines if "seconds_per_step" in e]
    keys = sorted({k for e in steps for k in e if k.startswith("reward_stats/reward_model") and k.endswith("/seconds")})
    if not keys:
        raise SystemExit(f"{metrics_path}: no reward_stats/reward_model*/seconds lines: not an all-domain run "
                         "with reward models (or one from before ModelRewardStats)")
    rows, previous = [], {k: 0.0 for k in keys}
    for e in steps:
        rm = sum(e.get(k, 0.0) - previous[k] for k in keys)
        previous = {k: e.get(k, previous[k]) for k in keys}
        # seconds_per_step spans the steps since the previous log line: logging_steps = 1 here
        rows.append({"step": e["step"], "step_s": e["seconds_per_step"], "rm_s": rm, "share": rm / e["seconds_per_step"]})
    later = rows[1:] or rows
    return {"metrics": str(metrics_path), "reward_models": [k.split("/")[1] for k in keys], "steps": rows,
            "first_step_includes_model_loading": True,
            "median_share": C.median([r["share"] for r in later]), "median_rm_s": C.median([r["rm_s"] for r in later]),
            "median_step_s": C.median([r["step_s"] for r in later])}


def step_batch(tokenizer, kind: str, n: int, tokens: int) -> tuple[list, list[str]]:
    """``n`` (prompt, completion) pairs of one domain; each completion exactly ``tokens`` tokens."""
    from data import load_prompts

    source = ({"source": "sharegpt", "max_prompt_chars": 600, "limit": n} if kind == "general"
              else {"source": "harmful_prompts", "limit": n})
    prompts = [r["prompt"] for r in load_prompts([source], split="train")][:1] * n  # G completions of one prompt
    filler = tokenizer.encode(" the answer follows from the steps above and is checked twice", add_special_tokens=False)
    reasoning = (filler * tokens)[:tokens * 2 // 3]
    answer = (filler * tokens)[:tokens - len(reasoning)]
    text = "<think>\n" + tokenizer.decode(reasoning) + "\n</think>\n<answer>" + tokenizer.decode(answer) + "</answer>"
    return prompts, [text] * n


def as_reward_model(ref: str, folder: Path) -> str:
    """``ref`` itself when it is a reward model; else (a causal LM: the stand-in of the module
    docstring) the same model with a fresh one-logit head, saved in ``folder``."""
    from rewards.reward_model import _resolve, read_config
    from stages.reward_model import load_classifier

    path = _resolve(ref)
    if any(a.endswith("ForSequenceClassification") for a in read_config(path).get("architectures") or []):
        return path
    model, tokenizer = load_classifier(path)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


def rm_work(helpfulness: str, harmlessness: str, generations: int, tokens: int, reps: int, dtype: str) -> dict:
    import tempfile

    from rewards import get
    from rewards.reward_model import load

    scratch = Path(tempfile.mkdtemp(prefix="bench_rm_"))
    helpfulness = as_reward_model(helpfulness, scratch / "helpfulness")
    harmlessness = as_reward_model(harmlessness, scratch / "harmlessness")

    fns = {"general": get("reward_model", model=helpfulness, scope="answer", domains=["general"],
                          normalize="none", dtype=dtype, label="helpfulness"),
           "safety": get("reward_model", model=harmlessness, scope="full", domains=["safety"],
                         normalize="none", dtype=dtype, label="harmlessness")}
    batches = {}
    for kind, fn in fns.items():
        _, tokenizer, _ = load(fn.model, dtype)  # loaded once per process: excluded from the timing
        batches[kind] = step_batch(tokenizer, kind, generations, tokens)
        fn(*batches[kind], domain=[kind] * generations)  # warm-up
    times = []
    for _ in range(reps):
        started = time.perf_counter()
        for kind, fn in fns.items():
            fn(*batches[kind], domain=[kind] * generations)
        times.append(time.perf_counter() - started)
    return {"helpfulness": helpfulness, "harmlessness": harmlessness, "completions_scored": 2 * generations,
            "tokens_per_completion": tokens, "dtype": dtype, "seconds": times, "median_s": C.median(times)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--metrics", help="metrics.jsonl of an all-domain GRPO run with reward models (in situ)")
    parser.add_argument("--helpfulness", help="helpfulness reward model (folder, alias, hub id)")
    parser.add_argument("--harmlessness", help="harmlessness reward model")
    parser.add_argument("--step-seconds", type=float, help="a measured all-domain step without reward models")
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
        args.helpfulness = args.harmlessness = "tiny-random-llama"
        args.reps, args.tokens = 2, 16
    if args.metrics:
        payload["in_situ"] = result = in_situ(Path(args.metrics))
        C.print_table("Reward models in the all-domain GRPO steps", ["step", "step s", "RM s", "share"],
                      [[str(r["step"]), C.fmt(r["step_s"]), C.fmt(r["rm_s"], 2), f"{r['share']:.1%}"]
                       for r in result["steps"]],
                      caption=f"median share (first step excluded: model loading) {result['median_share']:.1%}; "
                              f"goal <= {GOAL:.0%}")
    if args.helpfulness and args.harmlessness:
        payload["rm_work"] = work = rm_work(args.helpfulness, args.harmlessness, args.generations, args.tokens,
                                            args.reps, args.dtype)
        if args.step_seconds:
            work["step_seconds"] = args.step_seconds
            work["share"] = work["median_s"] / (args.step_seconds + work["median_s"])
        C.log(f"one step's reward-model work: {work['completions_scored']} completions x {args.tokens} tokens in "
              f"{work['median_s']:.2f} s (median of {args.reps})"
              + (f" = {work['share']:.1%} of a {args.step_seconds + work['median_s']:.1f} s step" if args.step_seconds else ""))
    if len(payload) == 1:
        parser.error("give --metrics, or --helpfulness and --harmlessness (or --quick)")
    path = C.result_path("reward_model", args.quick, args.out)
    C.write_result(path, "reward_model", payload, started, args.quick)
    C.log(f"wrote {path}")


if __name__ == "__main__":
    main()

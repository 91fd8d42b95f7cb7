"""Distillation at equal wall-clock: sft vs logits vs logits+features vs on-policy, depth- and width-pruned students.

    python bench/distill.py --teacher runs/distill-exp/cold_start_sft/model     # ~2-3 h on 2 shared cores
    python bench/distill.py --quick                                             # tiny models: checks the script works
    python bench/distill.py --teacher T --students width --methods logits,sft_logits --budget-s 300

Same teacher, same data, same student size, same time budget per method; results in
``bench/results/distill.json`` and the table of ``docs/distillation.md``. Phases (each skipped
when its output exists under ``runs/<--run>/``; ``--force`` redoes them):

1. **teacher data**: the teacher answers train questions, its correct and formatted answers are
   kept (``r1 generate configs/generate/smollm2-135m/distill_bench_data.yaml``, step ``teacher_data``);
2. **teacher eval** on the held-out questions (``r1 eval configs/eval/smollm2-135m/distill_bench.yaml``,
   224 questions, k=2; step ``eval-teacher``);
3. **teacher cost**: a pilot of the ``logits`` method with the teacher's top-k cached vs run live
   (which is faster over the pipeline's epochs), and of the ``on_policy`` method with vLLM vs
   transformers ``generate`` (which gives more steps in the budget);
4. **students**: for each student kind (``depth``, ``width``; ``student_size`` of the teacher's
   parameters) and method, one process: a pilot of ``--pilot-steps`` steps measures the method's
   setup (model build, width calibration, teacher cache, vLLM start) and seconds per step; the run
   then gets ``max_steps = (budget - setup) / seconds per step`` (cosine schedule over them) and a
   stop at ``budget - setup`` seconds of training, whichever comes first. ``--clock cpu`` (default)
   counts the worker process's CPU seconds (all its threads; the colocated vLLM engine runs in
   it), ``wall`` wall-clock seconds: on a machine shared with other jobs, wall-clock time depends
   on what else runs (here 5-10x slower than idle at load 15-20), CPU time much less; both are
   reported;
5. **student evals** (same eval config, step ``eval-<student>-<method>``);
6. **KL to the teacher**: per student, mean token-level ``KL(teacher || student)`` (T = 1, full
   vocabulary, nats per token) on the teacher's own held-out responses (its first eval sample per
   question).

Methods (every one: same data, learning rate, batch, schedule shape; ``stages/distill.py``):
``sft`` (data distillation), ``logits`` (forward KL, T=1, top-64, cached teacher), ``sft_logits``
(both, weights 1), ``logits_features`` (forward KL + cosine on every layer's hidden state, live
teacher), ``on_policy`` (forward KL, half of the batches sampled by the student, lambda = 0.5).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C

C.enter_repo()

NAME = "distill"
STUDENTS = ("depth", "width")
METHODS = ("sft", "logits", "sft_logits", "logits_features", "on_policy")
DATA_CONFIG = "configs/generate/smollm2-135m/distill_bench_data.yaml"
EVAL_CONFIG = "configs/eval/smollm2-135m/distill_bench.yaml"
LOGITS = {"divergence": "forward_kl", "temperature": 1.0, "top_k": 64, "weight": 1.0}
LOSSES = {
    "sft": {"sft": {"weight": 1.0}},
    "logits": {"logits": LOGITS},
    "sft_logits": {"sft": {"weight": 1.0}, "logits": LOGITS},
    "logits_features": {"logits": LOGITS, "features": {"distance": "cosine", "weight": 1.0}},
    "on_policy": {"logits": LOGITS},
}


def train_config(args, student: str, method: str, on_policy_backend: str, dataset: str) -> dict:
    """The distill config of one (student, method); ``max_steps`` is set by the worker."""
    cfg = {
        "kind": "distill",
        "teacher": args.teacher,
        "dataset": dataset,
        "student": "derived",
        "prune": student,
        "student_size": args.student_size,
        "loss": LOSSES[method],
        "teacher_logits": "live" if method == "logits_features" else "cached",
        "max_length": 512,
        "overlong": "drop",
        "learning_rate": args.lr,
        "lr_scheduler_type": "cosine",
        "warmup_ratio": 0.05,
        "per_device_train_batch_size": 8,
        "gradient_accumulation_steps": 1,
        "dtype": "auto",
        "logging_steps": 1,
        "save_steps": 100000,
        "seed": 0,
    }
    if method == "on_policy":
        cfg["on_policy"] = {
            "fraction": 0.5,
            "backend": on_policy_backend,
            "max_new_tokens": 128,
            "temperature": 1.0,
            "top_p": 1.0,
        }
    return cfg


# ---------------------------------------------------------------------------- subprocess helpers


def r1(*argv: str, log: Path) -> None:
    """Run ``python -m pipeline.cli ARGV`` (niced like the bench), output into ``log``."""
    log.parent.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pipeline.cli", *argv]
    C.log(" ".join(cmd[2:]))
    with log.open("a") as fh:
        proc = subprocess.run(cmd, cwd=C.ROOT, stdout=fh, stderr=subprocess.STDOUT, env=env())
    if proc.returncode != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-30:])
        raise SystemExit(f"failed ({proc.returncode}): {' '.join(argv)}; log {log}:\n{tail}")


def env() -> dict:
    out = dict(os.environ)
    out.setdefault("OMP_NUM_THREADS", "1")  # two threads collapse when the cores are shared
    out["PYTHONPATH"] = str(C.ROOT)
    return out


def worker(kind: str, spec: dict, log: Path) -> dict:
    """Run ``bench/distill.py --worker KIND --spec JSON`` in its own process; its JSON result."""
    out = log.with_suffix(".json")
    out.unlink(missing_ok=True)
    cmd = [sys.executable, str(Path(__file__)), "--worker", kind, "--spec", json.dumps(spec), "--worker-out", str(out)]
    C.log(f"worker {kind} {spec.get('name', '')}")
    with log.open("a") as fh:
        proc = subprocess.run(cmd, cwd=C.ROOT, stdout=fh, stderr=subprocess.STDOUT, env=env())
    if proc.returncode != 0 or not out.is_file():
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-30:])
        raise SystemExit(f"worker {kind} failed ({proc.returncode}); log {log}:\n{tail}")
    return json.loads(out.read_text())


# ---------------------------------------------------------------------------- workers (in their own process)


def _ctx(work: Path):
    from pipeline.runner import Resolver
    from pipeline.stage import StepContext

    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    return StepContext(
        run="distill-bench", step=work.name, run_dir=work.parent, work_dir=work, resolver=Resolver(work.parent, set())
    )


def _step_lines(work: Path) -> list[dict]:
    return [json.loads(x) for x in (work / "metrics.jsonl").read_text().splitlines() if '"loss"' in x]


def _pilot(cfg: dict, work: Path, steps: int) -> dict:
    """Run ``steps`` steps of ``cfg``: seconds per step (median of steps 2..), setup seconds
    (everything of the run that is not a step: loading, pruning, teacher cache, vLLM start,
    saving) and the run's metrics."""
    from pipeline.config import parse
    from stages import distill

    started, cpu_started = time.perf_counter(), time.process_time()
    result = distill.run(parse(distill.Config, {**cfg, "max_steps": steps}), _ctx(work))
    wall, cpu = time.perf_counter() - started, time.process_time() - cpu_started
    lines = _step_lines(work)
    per_step = [x["timing_s/step"] for x in lines]
    cpu_step = [x["cpu_seconds_per_step"] for x in lines]
    return {
        "wall_s": wall,
        "seconds_per_step": statistics.median(per_step[1:] or per_step),
        "setup_s": wall - sum(per_step),
        "step_seconds": per_step,
        "cpu_s": cpu,
        "cpu_seconds_per_step": statistics.median(cpu_step[1:] or cpu_step),
        "cpu_setup_s": cpu - sum(cpu_step),
        "phases": {
            k: statistics.median(x.get(k, 0.0) for x in lines[1:] or lines)
            for k in lines[-1]
            if k.startswith("timing_s/")
        },
        "metrics": {k: v for k, v in result.metrics.items() if k != "timing_s"},
    }


def worker_train(spec: dict) -> dict:
    """Pilot, then the budgeted run of one (student, method); writes ``<out>/model``."""
    from transformers import TrainerCallback

    from pipeline.config import parse
    from stages import distill

    cfg, budget, out = spec["config"], spec["budget_s"], Path(spec["out"])
    cpu = spec["clock"] == "cpu"
    clock = time.process_time if cpu else time.perf_counter
    pilot = _pilot(cfg, out.with_name(out.name + "-pilot"), spec["pilot_steps"])
    setup, per_step = (
        (pilot["cpu_setup_s"], pilot["cpu_seconds_per_step"]) if cpu else (pilot["setup_s"], pilot["seconds_per_step"])
    )
    train_s = budget - setup
    steps = max(1, int(train_s // per_step))
    limit = {"s": train_s, "stopped": False}

    class ClockStop(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            self.started = clock()

        def on_step_end(self, args, state, control, **kwargs):
            if clock() - self.started > limit["s"]:
                control.should_training_stop = limit["stopped"] = True

    factory = distill.DistillTrainer

    def with_stop(**kwargs):
        trainer = factory(**kwargs)
        trainer.add_callback(ClockStop())
        return trainer

    distill.DistillTrainer = with_stop
    ctx = _ctx(out)
    cache = out.with_name(out.name + "-pilot") / "teacher_topk"
    if cache.is_dir():  # computed by the pilot (its cost is in the pilot's setup): not again
        shutil.copytree(cache, out / "teacher_topk")
    load = os.getloadavg()
    started, cpu_started = time.perf_counter(), time.process_time()
    result = distill.run(parse(distill.Config, {**cfg, "max_steps": steps}), ctx)
    wall, cpu_run = time.perf_counter() - started, time.process_time() - cpu_started
    lines = _step_lines(out)
    return {
        "name": spec["name"],
        "planned_steps": steps,
        "steps": result.counts["steps"],
        "stopped_by_clock": limit["stopped"],
        "rows": result.counts["rows"],
        "epochs": round(result.counts["steps"] * cfg["per_device_train_batch_size"] / result.counts["rows"], 2),
        "clock": spec["clock"],
        "budget_s": budget,
        "setup_s": round(setup, 1),
        "train_wall_s": result.metrics["train_wall_s"],
        "run_wall_s": round(wall, 1),
        "train_cpu_s": round(sum(x["cpu_seconds_per_step"] for x in lines), 1),
        "run_cpu_s": round(cpu_run, 1),
        "seconds_per_step": round(per_step, 2),
        "pilot": pilot,
        "student_params": result.counts["student_params"],
        "teacher_params": result.counts.get("teacher_params"),
        "student_params_ratio": result.metrics.get("student_params_ratio"),
        "loss_first": result.metrics["loss_first"],
        "loss_last": result.metrics["loss_last"],
        "terms_last": {k: v for k, v in lines[-1].items() if k.startswith("term/")} if lines else {},
        "on_policy": result.metrics.get("on_policy"),
        "width": result.metrics.get("width"),
        "teacher_layers_kept": result.metrics.get("teacher_layers_kept"),
        "load_average_start": [round(x, 2) for x in load],
        "load_average_end": [round(x, 2) for x in os.getloadavg()],
    }


def worker_pilot(spec: dict) -> dict:
    """One pilot (teacher-cost and backend comparisons)."""
    return _pilot(spec["config"], Path(spec["out"]), spec["pilot_steps"])


def worker_kl(spec: dict) -> dict:
    """Mean token-level KL(teacher || student), T = 1, full vocabulary, over the teacher's first
    held-out sample per question (nats per token); also per question's mean."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from data import load_prompts
    from pipeline.config import read_yaml

    samples = spec["samples"]  # [{question_id, text}]
    eval_cfg = read_yaml(EVAL_CONFIG)
    prompts = {r["id"]: r["prompt"] for r in load_prompts(eval_cfg["prompts"], split="test", template="chat")}
    tokenizer = AutoTokenizer.from_pretrained(spec["teacher"])
    teacher = AutoModelForCausalLM.from_pretrained(spec["teacher"], dtype=torch.bfloat16).eval()
    results = {}
    seqs = []
    for s in samples:
        p = tokenizer.apply_chat_template(
            prompts[s["question_id"]], add_generation_prompt=True, tokenize=True, return_dict=True
        )["input_ids"]
        r = tokenizer(s["text"], add_special_tokens=False)["input_ids"]
        seqs.append((p, r))
    for name, path in spec["students"].items():
        student = AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16).eval()
        total, tokens = 0.0, 0
        with torch.no_grad():
            for p, r in seqs:
                ids = torch.tensor([p + r])
                n = len(r)
                t = torch.log_softmax(teacher(ids).logits[0, len(p) - 1 : len(p) - 1 + n].float(), -1)
                s_ = torch.log_softmax(student(ids).logits[0, len(p) - 1 : len(p) - 1 + n].float(), -1)
                total += float((t.exp() * (t - s_)).sum())
                tokens += n
        results[name] = {"kl_per_token": total / max(tokens, 1), "tokens": tokens, "responses": len(seqs)}
        del student
    return results


# ---------------------------------------------------------------------------- the orchestration


def eval_results(run_dir: Path, step: str) -> dict:
    data = json.loads((run_dir / step / "results.json").read_text())
    ((ref, model),) = data["models"].items()
    return model["overall"]


def teacher_samples(run_dir: Path) -> list[dict]:
    import pandas as pd

    df = pd.read_parquet(run_dir / "eval-teacher" / "samples.parquet")
    return [{"question_id": r.question_id, "text": json.loads(r.samples)[0]["text"]} for r in df.itertuples()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", default="runs/distill-exp/cold_start_sft/model")
    parser.add_argument(
        "--run",
        default="distill-bench",
        help="run folder under R1_HOME/runs (reused: phases whose output exists are skipped)",
    )
    parser.add_argument("--students", default=",".join(STUDENTS))
    parser.add_argument("--methods", default="sft,logits,logits_features,on_policy")
    parser.add_argument("--student-size", type=float, default=0.7, help="fraction of the teacher's parameters")
    parser.add_argument(
        "--budget-s", type=float, default=240.0, help="seconds of --clock per (student, method), setup included"
    )
    parser.add_argument("--clock", default="cpu", choices=("cpu", "wall"), help="what the budget counts (module doc)")
    parser.add_argument("--pilot-steps", type=int, default=3)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument(
        "--on-policy-backend",
        default="auto",
        choices=("auto", "vllm", "hf"),
        help="auto: pilot both, keep the one with more steps in the budget",
    )
    parser.add_argument("--force", action="store_true")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", default=None)
    parser.add_argument("--worker", default=None)
    parser.add_argument("--spec", default=None)
    parser.add_argument("--worker-out", default=None)
    args = parser.parse_args()

    if args.worker:
        fn = {"train": worker_train, "pilot": worker_pilot, "kl": worker_kl}[args.worker]
        C.write_worker_result(args.worker_out, fn(json.loads(args.spec)))
        return

    started = time.time()
    from pipeline import store

    students = C.parse_sides(args.students, STUDENTS)
    methods = C.parse_sides(args.methods, METHODS)
    run_dir = store.runs_root() / args.run
    logs = run_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    eval_extra: list[str] = []
    if args.quick:
        from pipeline.models import make_tiny_model

        args.teacher = str(
            make_tiny_model(run_dir / "tiny-teacher", seed=3, num_layers=4, hidden=128, heads=4, kv_heads=2)
        )
        args.student_size, args.budget_s, args.pilot_steps = 0.97, 25.0, 2
        eval_extra = ["--set", "sampling.max_tokens=16", "--set", "prompts.0.n_test=4", "--set", "prompts.1.n_test=4"]
    args.teacher = str(Path(args.teacher).resolve())

    # 1. the teacher's data
    data_step = run_dir / "teacher_data"
    if args.force or not (data_step / "dataset").is_dir():
        extra = (
            [
                "--set",
                "sampling.max_tokens=16",
                "--set",
                "filters.require_correct=false",
                "--set",
                "filters.require_format=false",
                "--set",
                "filters.language=null",
                "--set",
                "filters.drop_truncated=false",
                "--set",
                "prompts.0.n_train=8",
                "--set",
                "prompts.1.n_train=8",
            ]
            if args.quick
            else []
        )
        r1(
            "generate",
            DATA_CONFIG,
            "--run",
            args.run,
            "--step",
            "teacher_data",
            "--set",
            f"model={args.teacher}",
            *extra,
            *(["--force"] if args.force else []),
            log=logs / "teacher_data.log",
        )
    dataset = str(data_step / "dataset")
    data_card = json.loads((data_step / "manifest.json").read_text())["result"]["counts"]

    # 2. the teacher's eval
    if args.force or not (run_dir / "eval-teacher" / "results.json").is_file():
        r1(
            "eval",
            EVAL_CONFIG,
            "--run",
            args.run,
            "--model",
            args.teacher,
            "--step",
            "eval-teacher",
            *eval_extra,
            log=logs / "eval-teacher.log",
        )
    teacher_eval = eval_results(run_dir, "eval-teacher")

    # 3. teacher cost: cached vs live top-k; on-policy backend
    costs_file = run_dir / "teacher_cost.json"
    costs = json.loads(costs_file.read_text()) if costs_file.is_file() and not args.force else {}
    for side in ("cached", "live"):
        if side not in costs:
            cfg = train_config(args, "depth", "logits", "hf", dataset)
            cfg["teacher_logits"] = side
            costs[side] = worker(
                "pilot",
                {"config": cfg, "out": str(run_dir / f"cost-{side}"), "pilot_steps": args.pilot_steps},
                logs / f"cost-{side}.log",
            )
            costs_file.write_text(json.dumps(costs, indent=2))
    backend = args.on_policy_backend
    if "on_policy" in methods and backend == "auto":
        for side in ("vllm", "hf"):
            if f"on_policy_{side}" not in costs:
                cfg = train_config(args, "depth", "on_policy", side, dataset)
                cfg["on_policy"]["fraction"] = 1.0  # every pilot step samples: the backend's own cost
                costs[f"on_policy_{side}"] = worker(
                    "pilot",
                    {"config": cfg, "out": str(run_dir / f"cost-{side}"), "pilot_steps": args.pilot_steps},
                    logs / f"cost-{side}.log",
                )
                costs_file.write_text(json.dumps(costs, indent=2))

        def steps_in_budget(c):  # at lambda = 0.5: half the steps pay the sampling
            key = "cpu_" if args.clock == "cpu" else ""
            per = (c[f"{key}seconds_per_step"] + costs["cached"][f"{key}seconds_per_step"]) / 2
            return (args.budget_s - c[f"{key}setup_s"]) / per

        backend = max(("vllm", "hf"), key=lambda s: steps_in_budget(costs[f"on_policy_{s}"]))
    C.log(f"on-policy backend: {backend}")

    # 4-5. students: train, eval
    runs: dict[str, dict] = {}
    for student in students:
        for method in methods:
            name = f"{student}-{method}"
            out = run_dir / "students" / name
            info_file = out.with_suffix(".json")
            if args.force or not info_file.is_file():
                spec = {
                    "name": name,
                    "config": train_config(args, student, method, backend, dataset),
                    "budget_s": args.budget_s,
                    "clock": args.clock,
                    "pilot_steps": args.pilot_steps,
                    "out": str(out),
                }
                info_file.parent.mkdir(parents=True, exist_ok=True)
                info_file.write_text(json.dumps(worker("train", spec, logs / f"train-{name}.log"), indent=2))
            runs[name] = json.loads(info_file.read_text())
            if args.force or not (run_dir / f"eval-{name}" / "results.json").is_file():
                r1(
                    "eval",
                    EVAL_CONFIG,
                    "--run",
                    args.run,
                    "--model",
                    str(out / "model"),
                    "--step",
                    f"eval-{name}",
                    *eval_extra,
                    log=logs / f"eval-{name}.log",
                )
            runs[name]["eval"] = eval_results(run_dir, f"eval-{name}")

    # 6. KL to the teacher on its held-out responses
    kl_file = run_dir / "kl.json"
    kl = json.loads(kl_file.read_text()) if kl_file.is_file() and not args.force else {}
    todo = {n: str(run_dir / "students" / n / "model") for n in runs if n not in kl}
    if todo:
        kl.update(
            worker(
                "kl", {"teacher": args.teacher, "students": todo, "samples": teacher_samples(run_dir)}, logs / "kl.log"
            )
        )
        kl_file.write_text(json.dumps(kl, indent=2))

    # the table
    t_pass, t_fmt = teacher_eval["pass@1"], teacher_eval["format_rate"]
    rows = [
        [
            "teacher",
            "-",
            "1.00",
            "-",
            "-",
            f"{t_pass:.3f} [{teacher_eval['pass@1_ci'][0]:.3f}, {teacher_eval['pass@1_ci'][1]:.3f}]",
            "100%",
            f"{t_fmt:.3f}",
            "100%",
            f"{teacher_eval['truncation_rate']:.3f}",
            "0",
        ]
    ]
    for name, r in runs.items():
        e = r["eval"]
        rows.append(
            [
                name.split("-", 1)[0],
                name.split("-", 1)[1],
                f"{r['student_params_ratio']:.2f}",
                f"{r['steps']} ({r['epochs']:.1f} ep)",
                f"{r['setup_s']:.0f}+{r['train_cpu_s' if r['clock'] == 'cpu' else 'train_wall_s']:.0f} / "
                f"{r['run_wall_s']:.0f}",
                f"{e['pass@1']:.3f} [{e['pass@1_ci'][0]:.3f}, {e['pass@1_ci'][1]:.3f}]",
                f"{e['pass@1'] / t_pass:.0%}" if t_pass else "-",
                f"{e['format_rate']:.3f}",
                f"{e['format_rate'] / t_fmt:.0%}" if t_fmt else "-",
                f"{e['truncation_rate']:.3f}",
                f"{kl[name]['kl_per_token']:.3f}",
            ]
        )
    columns = [
        "student",
        "method",
        "params",
        "steps",
        "budget s (setup+train) / wall s",
        "pass@1 [95% CI]",
        "of teacher",
        "format",
        "of teacher",
        "truncated",
        "KL nats/tok",
    ]
    C.print_table(
        f"distillation at equal time ({args.budget_s:.0f} {args.clock} s per method)",
        columns,
        rows,
        caption=f"held-out: {teacher_eval['questions']} questions x k={teacher_eval['k']}",
    )
    cost = {
        side: {
            k: costs[side][k]
            for k in (
                "seconds_per_step",
                "setup_s",
                "wall_s",
                "cpu_seconds_per_step",
                "cpu_setup_s",
                "cpu_s",
                "phases",
                "metrics",
            )
        }
        for side in costs
    }
    C.write_result(
        C.result_path(NAME, args.quick, args.out),
        NAME,
        {
            "teacher": args.teacher,
            "dataset": dataset,
            "teacher_data": data_card,
            "budget_s": args.budget_s,
            "clock": args.clock,
            "student_size": args.student_size,
            "on_policy_backend": backend,
            "teacher_cost": cost,
            "teacher_eval": teacher_eval,
            "students": runs,
            "kl": kl,
            "table": {"columns": columns, "rows": rows},
        },
        started,
        args.quick,
    )


if __name__ == "__main__":
    main()

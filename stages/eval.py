"""eval: pass@1 over k samples and maj@k for every model, on held-out prompts, per domain.

pass@1 is the mean correctness over the k samples of each question, averaged over questions
(DeepSeek-R1 report, sec. 3: "pass@1 = 1/k sum p_i"); maj@k scores the most frequent final
answer among the k samples (self-consistency, Wang et al. 2023). Also reported: format rate
(share of samples whose `format` reward is 1.0), mean response length in **tokens**, and
truncation rate (samples that hit ``max_tokens``). Eval prompts come from the ``test`` split
of the data sources, which is disjoint by id from the ``train`` split used in training.

Inputs: ``models`` (list of step names, aliases, folders or hub ids).
Outputs: ``results.json`` (metrics per model, overall and per domain, with the protocol)
and ``samples.parquet`` (per question and model: the k samples and their rewards).

Launch: ``r1 eval configs/eval/smollm2-135m/held_out.yaml``
"""

from __future__ import annotations

import json
import re
from collections import Counter, defaultdict
from typing import ClassVar, Literal

from data import PromptSource
from pipeline.stage import StageConfig, StepContext, StepResult
from stages._sampling import SamplingConfig


class Config(StageConfig):
    """Config of the eval stage. Defaults follow R1's protocol where the machine allows:
    temperature 0.6, top-p 0.95; k and max_tokens are small on a CPU and are recorded."""

    kind: Literal["eval"] = "eval"
    input_fields: ClassVar[dict[str, str]] = {"models": "model"}
    models: list[str]
    prompts: list[PromptSource]
    split: Literal["train", "test"] = "test"
    sampling: SamplingConfig = SamplingConfig(num_samples=4, temperature=0.6, top_p=0.95, max_tokens=256)
    seed: int = 1234


_ANSWER = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)


def final_answer(text: str) -> str:
    """The normalised final answer used for majority voting: the last ``<answer>`` block
    (else the text after ``</think>``), whitespace collapsed, lower-cased; '' if none."""
    blocks = _ANSWER.findall(text)
    ans = blocks[-1] if blocks else text.split("</think>")[-1] if "</think>" in text else ""
    return " ".join(ans.split()).lower()


def question_metrics(samples: list[dict]) -> dict:
    """Metrics of one question's k samples (each with rewards, num_tokens, truncated)."""
    acc = [s["rewards"].get("accuracy") or 0.0 for s in samples]
    votes = Counter(final_answer(s["text"]) for s in samples if final_answer(s["text"]))
    maj = 0.0
    if votes:
        top = votes.most_common(1)[0][0]
        maj = next(a for a, s in zip(acc, samples) if final_answer(s["text"]) == top)
    return {
        "pass@1": sum(a >= 1.0 for a in acc) / len(acc),
        f"maj@{len(samples)}": float(maj >= 1.0),
        "format_rate": sum((s["rewards"].get("format") or 0.0) >= 1.0 for s in samples) / len(samples),
        "mean_tokens": sum(s["num_tokens"] for s in samples) / len(samples),
        "truncation_rate": sum(s["truncated"] for s in samples) / len(samples),
    }


def aggregate(per_question: list[dict]) -> dict:
    """Mean of each metric over questions, plus the question count."""
    keys = per_question[0].keys() if per_question else []
    out = {k: sum(q[k] for q in per_question) / len(per_question) for k in keys}
    out["questions"] = len(per_question)
    return out


def run(config: Config, ctx: StepContext) -> StepResult:
    import pyarrow as pa
    import pyarrow.parquet as pq
    from rich.progress import Progress

    from data import load_prompts
    from stages._sampling import Sampler
    from stages.generate import score

    rows = [dict(r) for r in load_prompts(list(config.prompts), split=config.split)]
    results, records = {}, []
    for ref in config.models:
        path = ctx.resolve_model(ref)
        per_domain: dict[str, list] = defaultdict(list)
        with Sampler(path, config.sampling, seed=config.seed) as sampler, Progress() as progress:
            task = progress.add_task(f"eval {ref}: {len(rows)} questions x {config.sampling.num_samples}", total=len(rows))
            for i in range(0, len(rows), config.sampling.batch_size):
                batch = rows[i:i + config.sampling.batch_size]
                outs = sampler.sample([r["prompt"] for r in batch], [r["id"] for r in batch])
                flat_rows = [r for r, cs in zip(batch, outs) for _ in cs]
                scores = score(["accuracy", "format"], flat_rows, [c.text for cs in outs for c in cs])
                j = 0
                for row, cs in zip(batch, outs):
                    samples = []
                    for c in cs:
                        samples.append({"text": c.text, "num_tokens": c.num_tokens, "truncated": c.truncated,
                                        "rewards": {k: v[j] for k, v in scores.items()}})
                        j += 1
                    m = question_metrics(samples)
                    per_domain[row["domain"]].append(m)
                    records.append({"model": ref, "question_id": row["id"], "domain": row["domain"],
                                    "data_source": row["data_source"], "samples": json.dumps(samples), **m})
                progress.advance(task, len(batch))
        all_q = [m for ms in per_domain.values() for m in ms]
        results[ref] = {"overall": aggregate(all_q), "per_domain": {d: aggregate(ms) for d, ms in per_domain.items()}}
        ctx.log_metrics({"model": ref, **results[ref]["overall"]})
    s = config.sampling
    protocol = {"k": s.num_samples, "temperature": s.temperature, "top_p": s.top_p, "max_tokens": s.max_tokens,
                "backend": s.backend, "seed": config.seed, "split": config.split,
                "pass@1": "mean correctness over k samples per question, averaged over questions"}
    (ctx.work_dir / "results.json").write_text(json.dumps({"protocol": protocol, "models": results}, indent=2))
    pq.write_table(pa.Table.from_pylist(records), ctx.work_dir / "samples.parquet")
    k = s.num_samples
    metrics = {}
    for ref, r in results.items():
        metrics[f"{ref}/pass@1"] = r["overall"]["pass@1"]
        metrics[f"{ref}/maj@{k}"] = r["overall"][f"maj@{k}"]
        metrics[f"{ref}/format_rate"] = r["overall"]["format_rate"]
        metrics[f"{ref}/mean_tokens"] = r["overall"]["mean_tokens"]
    best = max(results, key=lambda m: results[m]["overall"]["pass@1"]) if results else "-"
    return StepResult(outputs={"results": "results.json", "samples": "samples.parquet"},
                      counts={"models": len(results), "questions": len(rows)}, metrics=metrics,
                      summary=f"{len(results)} models on {len(rows)} held-out questions (k={k}); best pass@1: {best}")

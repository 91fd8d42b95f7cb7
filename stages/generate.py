"""generate: sample k completions per prompt, score them with rule rewards, keep the good ones.

The R1 recipe uses this stage twice: for **cold-start data** (a model that does not yet reason
in the `<think>…</think><answer>…</answer>` layout is shown few-shot exemplars and its correct,
well-formatted samples are kept) and for **rejection sampling** (sample the RL policy, keep
correct and readable answers). Both write an SFT dataset.

Inputs: ``model`` (step name, alias, folder or hub id); prompt sources (``data/``).
Outputs: ``dataset/`` — ``data.parquet`` in the SFT-row schema (id, messages, data_source,
domain, rewards, source_model, meta) and ``README.md``, the dataset card (how it was made,
every filter with kept/dropped counts, sizes per domain and source).
Resume: prompts are processed in shards written to ``shards/``; a rerun samples only the
missing shards, and per-prompt seeds make the result identical to an uninterrupted run.

Launch: ``r1 generate configs/generate/smollm2-135m/cold_start.yaml``
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import ClassVar, Literal

from data import PromptSource
from pipeline.config import StrictModel
from pipeline.stage import StageConfig, StepContext, StepResult
from stages._sampling import SamplingConfig


class FewShot(StrictModel):
    """One exemplar shown before the real question (as earlier chat turns)."""

    question: str
    response: str  # the full assistant text: <think>…</think> then <answer>…</answer>


class Filters(StrictModel):
    """Which samples survive, applied in this order; each one's drop count goes in the card."""

    drop_truncated: bool = True  # stopped at max_tokens instead of EOS: unfinished reasoning
    require_correct: bool = True  # the `accuracy` reward must be 1.0
    keep_unverifiable: bool = False  # keep samples whose correctness is None (cannot be judged)
    require_format: bool = True  # the `format` reward must be 1.0
    dedupe: bool = True  # drop exact duplicate responses of the same prompt
    max_per_prompt: int = 2  # keep at most N samples per prompt (first N by sample index)


class Config(StageConfig):
    """Config of the generate stage."""

    kind: Literal["generate"] = "generate"
    input_fields: ClassVar[dict[str, str]] = {"model": "model"}
    model: str
    prompts: list[PromptSource]
    split: Literal["train", "test"] = "train"
    few_shot: list[FewShot] = []
    sampling: SamplingConfig = SamplingConfig()
    rewards: list[str] = ["accuracy", "format"]  # scored on every sample, stored per row
    filters: Filters = Filters()
    shard_size: int = 32  # prompts per shard (resume granularity)
    seed: int = 0


FILTER_ORDER = ("truncated", "incorrect", "unverifiable", "bad_format", "duplicate", "over_max_per_prompt")


def _with_few_shot(prompt: list[dict], few_shot: list[FewShot]) -> list[dict]:
    """Insert exemplar turns after the system message (if any), before the real question."""
    system = [m for m in prompt if m["role"] == "system"]
    rest = [m for m in prompt if m["role"] != "system"]
    shots = []
    for ex in few_shot:
        shots += [{"role": "user", "content": ex.question}, {"role": "assistant", "content": ex.response}]
    return system + shots + rest


def score(reward_names: list[str], rows: list[dict], completions: list[str]) -> dict[str, list]:
    """Score ``completions`` (one per row) with each named reward; name -> list of values."""
    from rewards import registry

    columns = {k: [r[k] for r in rows] for k in ("answer", "verification", "domain", "data_source", "id")}
    prompts = [r["prompt"] for r in rows]
    return {name: list(registry.get(name)(prompts, completions, **columns)) for name in reward_names}


def _filter_prompt(samples: list[dict], f: Filters) -> tuple[list[dict], Counter]:
    """Apply the filters to one prompt's samples; return the kept ones and drop counts."""
    dropped: Counter = Counter()
    kept, seen = [], set()
    for s in samples:
        acc = s["rewards"].get("accuracy")
        if f.drop_truncated and s["truncated"]:
            dropped["truncated"] += 1
        elif f.require_correct and acc is None and not f.keep_unverifiable:
            dropped["unverifiable"] += 1
        elif f.require_correct and acc is not None and acc < 1.0:
            dropped["incorrect"] += 1
        elif f.require_format and (s["rewards"].get("format") or 0.0) < 1.0:
            dropped["bad_format"] += 1
        elif f.dedupe and s["text"].strip() in seen:
            dropped["duplicate"] += 1
        elif len(kept) >= f.max_per_prompt:
            dropped["over_max_per_prompt"] += 1
        else:
            kept.append(s)
            seen.add(s["text"].strip())
    return kept, dropped


def _sample_shard(sampler, cfg: Config, rows: list[dict], model_ref: str) -> list[dict]:
    """Sample, score and filter one shard; returns its records (kept and dropped, flagged)."""
    prompts = [_with_few_shot(list(r["prompt"]), cfg.few_shot) if cfg.few_shot else r["prompt"] for r in rows]
    completions = sampler.sample(prompts, [r["id"] for r in rows])
    flat_rows = [r for r, cs in zip(rows, completions) for _ in cs]
    flat = [c for cs in completions for c in cs]
    scores = score(cfg.rewards, flat_rows, [c.text for c in flat])
    records, i = [], 0
    for row, cs in zip(rows, completions):
        samples = []
        for j, c in enumerate(cs):
            samples.append({"text": c.text, "num_tokens": c.num_tokens, "truncated": c.truncated, "index": j,
                            "rewards": {name: scores[name][i] for name in cfg.rewards}})
            i += 1
        kept, _ = _filter_prompt(samples, cfg.filters)
        kept_ids = {id(s) for s in kept}
        correct = [s["rewards"].get("accuracy") == 1.0 for s in samples]
        for s in samples:
            records.append({
                "id": f"{row['id']}#{s['index']}", "prompt_id": row["id"], "kept": id(s) in kept_ids,
                "messages": [dict(m) for m in row["prompt"]] + [{"role": "assistant", "content": s["text"]}],
                "data_source": row["data_source"], "domain": row["domain"],
                "rewards": json.dumps(s["rewards"]), "source_model": model_ref,
                "meta": json.dumps({"sample_index": s["index"], "num_tokens": s["num_tokens"],
                                    "truncated": s["truncated"], "prompt_pass_rate": sum(correct) / len(correct)}),
            })
    return records


def _counts(all_records: list[dict], cfg: Config) -> dict[str, int]:
    """Recompute drop counts per filter from stored records (so a resumed run counts the same)."""
    by_prompt: dict[str, list[dict]] = {}
    for r in all_records:
        by_prompt.setdefault(r["prompt_id"], []).append(r)
    total: Counter = Counter()
    for recs in by_prompt.values():
        samples = [{"text": r["messages"][-1]["content"], "truncated": json.loads(r["meta"])["truncated"],
                    "rewards": json.loads(r["rewards"])} for r in recs]
        _, dropped = _filter_prompt(samples, cfg.filters)
        total += dropped
    return {k: total.get(k, 0) for k in FILTER_ORDER}


def write_card(path: Path, cfg: Config, model_ref: str, counts: dict, sampled: int, kept_rows: list[dict]) -> None:
    """The dataset card: how the data was made, the filter funnel, and sizes per domain/source."""
    domains = Counter(r["domain"] for r in kept_rows)
    sources = Counter(r["data_source"] for r in kept_rows)
    s = cfg.sampling
    lines = [
        "# SFT dataset", "",
        f"Made by the `generate` stage from model `{model_ref}`: {s.num_samples} samples per prompt "
        f"({s.backend}, temperature {s.temperature}, top-p {s.top_p}, max {s.max_tokens} new tokens, seed {cfg.seed}), "
        f"few-shot exemplars: {len(cfg.few_shot)}.", "",
        f"Rewards scored on every sample: {', '.join(cfg.rewards)}.", "",
        "## Filter funnel", "", "| filter | dropped | remaining |", "|---|---|---|",
        f"| sampled | 0 | {sampled} |",
    ]
    remaining = sampled
    for name in FILTER_ORDER:
        remaining -= counts[name]
        lines.append(f"| {name} | {counts[name]} | {remaining} |")
    lines += ["", f"Kept: **{len(kept_rows)}** of {sampled} sampled.", "",
              "## Rows per domain", "", *[f"- {d}: {n}" for d, n in sorted(domains.items())], "",
              "## Rows per source", "", *[f"- {d}: {n}" for d, n in sorted(sources.items())], "",
              "## Columns", "",
              "id, messages (system/user/assistant; assistant = `<think>…</think>` then `<answer>…</answer>`), "
              "data_source, domain, rewards (JSON name -> value), source_model, meta (JSON).", "",
              "## Load", "", "```python", "import datasets",
              f"ds = datasets.load_dataset('parquet', data_files='{path.name}/data.parquet')['train']", "```", ""]
    (path / "README.md").write_text("\n".join(lines))


def run(config: Config, ctx: StepContext) -> StepResult:
    import pyarrow as pa
    import pyarrow.parquet as pq
    from rich.progress import Progress

    from data import load_prompts
    from stages._sampling import Sampler

    model_path = ctx.resolve_model(config.model)
    prompts = load_prompts(list(config.prompts), split=config.split)
    rows = [dict(r) for r in prompts]
    shard_dir = ctx.work_dir / "shards"
    shard_dir.mkdir(exist_ok=True)
    shards = [rows[i:i + config.shard_size] for i in range(0, len(rows), config.shard_size)]
    todo = [i for i in range(len(shards)) if not (shard_dir / f"shard-{i:05d}.parquet").exists()]
    if todo:
        with Sampler(model_path, config.sampling, seed=config.seed) as sampler, Progress() as progress:
            task = progress.add_task(f"sampling {len(rows)} prompts x {config.sampling.num_samples}",
                                     total=len(rows), completed=(len(shards) - len(todo)) * config.shard_size)
            for i in todo:
                records = _sample_shard(sampler, config, shards[i], config.model)
                tmp = shard_dir / f".shard-{i:05d}.tmp"
                pq.write_table(pa.Table.from_pylist(records), tmp)
                tmp.rename(shard_dir / f"shard-{i:05d}.parquet")  # a shard exists only when complete
                progress.advance(task, len(shards[i]))
                ctx.log_metrics({"shard": i, "kept": sum(r["kept"] for r in records), "sampled": len(records)})
    all_records = []
    for i in range(len(shards)):
        all_records += pq.read_table(shard_dir / f"shard-{i:05d}.parquet").to_pylist()
    kept = [{k: r[k] for k in ("id", "messages", "data_source", "domain", "rewards", "source_model", "meta")}
            for r in all_records if r["kept"]]
    out = ctx.work_dir / "dataset"
    out.mkdir(exist_ok=True)
    pq.write_table(pa.Table.from_pylist(kept), out / "data.parquet")
    counts = _counts(all_records, config)
    write_card(out, config, config.model, counts, len(all_records), kept)
    rewards_mean = {}
    for name in config.rewards:
        vals = [json.loads(r["rewards"])[name] for r in all_records]
        vals = [v for v in vals if v is not None]
        rewards_mean[f"{name}_mean"] = sum(vals) / len(vals) if vals else 0.0
    sampled = len(all_records)
    return StepResult(
        outputs={"dataset": "dataset"},
        counts={"prompts": len(rows), "sampled": sampled, "kept": len(kept), **{f"dropped_{k}": v for k, v in counts.items()}},
        metrics={"acceptance_rate": len(kept) / sampled if sampled else 0.0, **rewards_mean},
        summary=f"kept {len(kept)}/{sampled} samples from {len(rows)} prompts",
    )

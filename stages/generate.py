"""generate: sample k completions per prompt, score them with rule rewards, keep the good ones.

The R1 recipe uses this stage twice: for **cold-start data** (a model that does not yet reason
in the `<think>…</think><answer>…</answer>` layout is shown few-shot exemplars and its correct,
well-formatted samples are kept) and for **rejection sampling** (R1 phase 3: sample the RL
policy, keep correct and readable answers, mix in non-reasoning SFT data). Both write an SFT
dataset. The filters (correctness, format, language mixing, long paragraphs, stray code
blocks, length in tokens, exact and near duplicates, pass-rate band, selection per prompt)
live in :mod:`stages.common.filters`; the user guide is ``docs/rejection_sampling.md``.

Inputs: ``model`` (step name, alias, folder or hub id); prompt sources (``data/``); optional
evaluation prompt sources to decontaminate against; optional extra SFT datasets to mix in.
Outputs: ``dataset/`` — ``data.parquet`` in the SFT-row schema (id, messages, data_source,
domain, rewards, source_model, meta), ``README.md`` (the dataset card: source model, sampling
parameters, rewards, every filter with its kept/dropped counts, sizes per domain and source)
and ``card.json`` (the same facts for ``r1 inspect``); ``samples.parquet`` next to it holds
every sampled response with the filter that dropped it (``dropped_by``, null = kept).
Resume: prompts are processed in shards written to ``shards/``; a rerun samples only the
missing shards, and per-prompt seeds make the result identical to an uninterrupted run.
Filters run once over all shards at the end, so their counts never depend on interruptions.

A third use, ``output: prompts``, measures **pass rates** instead of writing SFT data: the
starting policy samples each candidate prompt k times and ``dataset/`` holds the prompt rows
themselves (the prompt-row schema of ``data.schema``) with ``pass_rate`` (share of the judged
samples whose ``accuracy`` is 1.0; None when no sample could be judged), ``pass_samples``
(judged samples), ``mean_tokens`` and ``truncated_rate``. GRPO reads it as a prompt pool with a
pass-rate band and an optional easy-to-hard order (``prompt_pool`` in ``stages/grpo.py``): the
prompts a policy always or never solves give all-equal groups, which carry no GRPO signal
(DAPO, section 3.2; open-r1 keeps 0.1 < p < 0.6 for its DAPO data). The filters and ``mix`` do
not apply in this mode.

Launch: ``r1 generate configs/generate/smollm2-135m/rejection_sampling.yaml --run r1-demo``

Why one file: a stage kind is one module of `stages/` (`stages.kinds()` lists the modules). What
it shares with `eval` is in `stages/common/` (sampling, filters, scoring); what stays is this
kind's own: its config, sampling into resumable shards, mixing extra SFT data, the dataset card,
the prompt-pool output and its report hook, each a section below.
"""

from __future__ import annotations

import json
import logging
import random
from collections import Counter
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import PositiveInt, model_validator

from data import PromptSource
from data.dedupe import prompt_key
from data.sft import SFT_COLUMNS, load_sft_rows, split_response
from pipeline.config import StrictModel
from pipeline.stage import StageConfig, StageReport, StepContext, StepResult
from stages.common.filters import FILTERS, Filters, Sample, funnel, funnel_from_counts, verdicts
from stages.common.sampling import FewShot, SamplingConfig, with_few_shot
from stages.common.scoring import assistant_turn, score

FILTER_ORDER = FILTERS  # the name this module exported before the filters moved
log = logging.getLogger(__name__)


class Decontamination(StrictModel):
    """Drop training prompts sharing a word n-gram with any evaluation prompt (``data.decontaminate``)."""

    eval_prompts: list[PromptSource]  # the evaluation sets, as prompt sources
    split: Literal["train", "test"] | None = "test"  # which split of them is evaluated on
    ngram: PositiveInt = 8  # n-gram length in words (R1 / open-r1: 8)


class MixSource(StrictModel):
    """An extra SFT dataset mixed in as is (R1's non-reasoning data: writing, factual QA, ...)."""

    dataset: str  # a step name, a folder of parquet/JSONL, a .parquet/.jsonl file, or a hub name
    split: str = "train"  # split of a hub dataset
    share: float | None = None  # fraction of the final dataset made of this source; None = all rows
    max_rows: PositiveInt | None = None  # at most this many rows from it
    data_source: str | None = None  # label for rows without `data_source`; None = file stem / hub name
    domain: str = "general"  # domain for rows without one

    @model_validator(mode="after")
    def _check(self) -> MixSource:
        if self.share is not None and not 0.0 < self.share < 1.0:
            raise ValueError(f"share must be in (0, 1), got {self.share}")
        return self


class Config(StageConfig):
    """Config of the generate stage."""

    kind: Literal["generate"] = "generate"
    input_fields: ClassVar[dict[str, str]] = {"model": "model"}
    outputs: ClassVar[dict[str, str]] = {"dataset": "dataset", "samples": "samples.parquet"}
    training_prompts: ClassVar[tuple[str, ...]] = ("prompts",)  # its samples become SFT data
    headline: ClassVar[tuple[str, ...]] = ("prompts", "sampled", "kept", "rows", "acceptance_rate", "mean_pass_rate")
    model: str
    # sft: filtered samples as SFT rows (cold start, rejection sampling); prompts: the prompt rows
    # with each one's pass rate over its samples (a prompt pool for GRPO; module docstring)
    output: Literal["sft", "prompts"] = "sft"
    prompts: list[PromptSource]
    split: Literal["train", "test"] = "train"
    few_shot: list[FewShot] = []
    sampling: SamplingConfig = SamplingConfig()
    rewards: list[str] = ["accuracy", "format"]  # scored on every sample, stored per row
    filters: Filters = Filters()
    decontaminate: Decontamination | None = None  # None = no decontamination
    mix: list[MixSource] = []  # extra SFT datasets mixed into the output
    shard_size: int = 32  # prompts per shard (resume granularity)
    seed: int = 0

    @model_validator(mode="after")
    def _check(self) -> Config:
        missing = self.filters.needed_rewards() - set(self.rewards)
        if missing:
            raise ValueError(
                f"the filters read reward(s) {sorted(missing)}, which `rewards` does not "
                f"score; add them to rewards: {self.rewards}"
            )
        total = sum(m.share or 0.0 for m in self.mix)
        if total >= 1.0:
            raise ValueError(f"mix shares add up to {total}; they must leave room for the sampled rows (< 1)")
        if self.shard_size < 1:
            raise ValueError(f"shard_size must be >= 1, got {self.shard_size}")
        if self.output == "prompts":
            if "accuracy" not in self.rewards:
                raise ValueError("output: prompts measures pass rates with the `accuracy` reward; add it to rewards")
            if self.mix or self.few_shot:
                raise ValueError(
                    "output: prompts writes the prompts with their pass rates: mix and few_shot do "
                    "not apply (the pass rate is the policy's own, on the bare prompt)"
                )
        return self


# ----------------------------------------------------------------------------- sampling


def _part_tokens(tokenizer, texts: list[str]) -> tuple[list[int], list[int]]:
    """Tokens of the reasoning and of the rest (the answer part) of each completion
    (``data.sft.split_response``)."""

    def count(parts: list[str]) -> list[int]:
        return [len(ids) for ids in tokenizer(parts, add_special_tokens=False)["input_ids"]] if parts else []

    parts = [split_response(t) for t in texts]
    return count([r for r, _ in parts]), count([a for _, a in parts])


def _sample_shard(sampler, cfg: Config, rows: list[dict]) -> list[dict]:
    """Sample and score one shard: one record per sample (the SFT columns plus ``prompt_id``).

    Rewards see each prompt as rendered for the model, and the stored assistant turn starts
    with what the chat template opened it with (``stages.common.scoring``). A prompt too long
    for ``sampling.max_model_len`` gets no record (``run`` counts it)."""
    prompts = [with_few_shot(list(r["prompt"]), cfg.few_shot) if cfg.few_shot else r["prompt"] for r in rows]
    texts = [sampler.render(p) for p in prompts]
    sampled = sampler.sample(prompts, [r["id"] for r in rows], texts=texts)
    keep = [i for i, cs in enumerate(sampled) if not any(c.skipped for c in cs)]
    rows, texts, completions = [rows[i] for i in keep], [texts[i] for i in keep], [sampled[i] for i in keep]
    flat_rows = [r for r, cs in zip(rows, completions) for _ in cs]
    flat_prompts = [t for t, cs in zip(texts, completions) for _ in cs]
    flat = [c for cs in completions for c in cs]
    scores = score(cfg.rewards, flat_rows, [c.text for c in flat], prompts=flat_prompts)
    turns = [assistant_turn(t, c.text) for t, c in zip(flat_prompts, flat)]
    reasoning_tokens, answer_tokens = _part_tokens(sampler.tokenizer, turns)
    records, i = [], 0
    for row, cs in zip(rows, completions):
        correct = [scores["accuracy"][i + j] == 1.0 for j in range(len(cs))] if "accuracy" in scores else []
        for j, c in enumerate(cs):
            prompt = (
                [dict(m) for m in row["prompt"]]
                if isinstance(row["prompt"], list)
                else [{"role": "user", "content": row["prompt"]}]
            )
            records.append(
                {
                    "id": f"{row['id']}#{j}",
                    "prompt_id": row["id"],
                    "messages": prompt + [{"role": "assistant", "content": turns[i]}],
                    "data_source": row["data_source"],
                    "domain": row["domain"],
                    "rewards": json.dumps({name: scores[name][i] for name in cfg.rewards}),
                    "source_model": cfg.model,
                    "meta": json.dumps(
                        {
                            "sample_index": j,
                            "num_tokens": c.num_tokens,
                            "truncated": c.truncated,
                            "reasoning_tokens": reasoning_tokens[i],
                            "answer_tokens": answer_tokens[i],
                            "prompt_pass_rate": sum(correct) / len(correct) if correct else None,
                        }
                    ),
                }
            )
            i += 1
    return records


def open_sampler(model_path: str, sampling: SamplingConfig, seed: int):
    """The engine :func:`run` samples with (a seam: tests share one engine between runs)."""
    from stages.common.sampling import Sampler

    return Sampler(model_path, sampling, seed=seed)


def write_parquet(rows: list[dict], path: Path) -> None:
    """``rows`` as a parquet file at ``path``, whole or not at all (``pipeline.store.atomic_write``;
    a full disk raises ``DiskFullError`` with the rows' in-memory size as the space needed)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from pipeline import store

    table = pa.Table.from_pylist(rows)
    store.atomic_write(path, lambda tmp: pq.write_table(table, tmp), needed=table.nbytes)


def _sample_all(cfg: Config, model_path: str, rows: list[dict], shard_dir: Path, ctx: StepContext) -> list[dict]:
    """Sample every shard not yet on disk, then return the records of all shards in order.

    A shard file exists only when complete (``write_parquet``); ``ctx.progress`` counts the
    prompts done (``r1 status``) and the engine's steps feed the stall watchdog."""
    import pyarrow.parquet as pq
    from rich.progress import Progress

    shard_dir.mkdir(exist_ok=True)
    shards = [rows[i : i + cfg.shard_size] for i in range(0, len(rows), cfg.shard_size)]

    def path(i: int) -> Path:
        return shard_dir / f"shard-{i:05d}.parquet"

    todo = [i for i in range(len(shards)) if not path(i).exists()]
    done = sum(len(shards[i]) for i in range(len(shards)) if i not in todo)
    ctx.progress.update(done, len(rows), "prompts", shards=f"{len(shards) - len(todo)}/{len(shards)}")
    if todo:
        with ctx.progress.phase(f"{cfg.sampling.backend} engine start"):
            engine = open_sampler(model_path, cfg.sampling, cfg.seed)
        with engine as sampler, Progress() as progress:  # what __enter__ returns (a seam may lend an engine)
            sampler.heartbeat = ctx.progress.beat
            task = progress.add_task(
                f"sampling {len(rows)} prompts x {cfg.sampling.num_samples}", total=len(rows), completed=done
            )
            for k, i in enumerate(todo):
                with ctx.progress.phase(f"sampling shard {i + 1} of {len(shards)}"):
                    shard_records = _sample_shard(sampler, cfg, shards[i])
                write_parquet(shard_records, path(i))  # a shard exists only when complete
                progress.advance(task, len(shards[i]))
                done += len(shards[i])
                ctx.progress.update(
                    done, len(rows), "prompts", shards=f"{len(shards) - len(todo) + k + 1}/{len(shards)}"
                )
                ctx.log_metrics({"shard": i, "prompts": len(shards[i]), "sampled": len(shard_records)})
    records: list[dict] = []
    for i in range(len(shards)):
        records += pq.read_table(path(i)).to_pylist()
    return records


# ----------------------------------------------------------------------------- prompts and mixing


def _mix_rows(cfg: Config, ctx: StepContext, reasoning_rows: int, eval_set) -> tuple[list[dict], list[dict]]:
    """Rows of the extra SFT datasets and one report per source (label, rows, share, hash).

    A source with ``share`` s contributes ``round(s * T)`` rows, where T is the final size
    implied by the sampled rows and the share-less sources; rows are a seeded sample of it.
    Mixed rows whose user message overlaps an evaluation prompt (same 8-gram rule) are dropped.
    """
    from pipeline import store

    loaded = []
    for m in cfg.mix:
        ref = ctx.resolve_dataset(m.dataset)
        label = m.data_source or (Path(ref).stem if Path(ref).exists() else ref)
        rows = load_sft_rows(ref, split=m.split, data_source=label, domain=m.domain)
        removed = 0
        if eval_set is not None:
            assert cfg.decontaminate is not None  # the eval set is loaded only to decontaminate
            rows, removed = _decontaminate_messages(rows, eval_set, cfg.decontaminate.ngram)
        rows = random.Random(f"{cfg.seed}:{label}").sample(rows, len(rows))
        if m.max_rows is not None:
            rows = rows[: m.max_rows]
        content = store.hash_tree(ref) if Path(ref).exists() else f"hub:{ref}"
        loaded.append((m, label, rows, removed, content))
    fixed = reasoning_rows + sum(len(rows) for m, _, rows, _, _ in loaded if m.share is None)
    total_share = sum(m.share or 0.0 for m in cfg.mix)
    final_size = fixed / (1.0 - total_share)
    out: list[dict] = []
    report: list[dict[str, Any]] = []
    for m, label, rows, removed, content in loaded:
        take = rows if m.share is None else rows[: round(m.share * final_size)]
        for r in take:
            meta = json.loads(r["meta"] or "{}")
            r["meta"] = json.dumps({**meta, "mixed_from": label})
        out += take
        report.append(
            {
                "label": label,
                "dataset": m.dataset,
                "available": len(rows),
                "rows": len(take),
                "share_asked": m.share,
                "decontaminated": removed,
                "content_hash": content,
            }
        )
    for item in report:
        item["share"] = item["rows"] / (reasoning_rows + len(out)) if reasoning_rows + len(out) else 0.0
    return out, report


def _decontaminate_messages(rows: list[dict], eval_set, n: int) -> tuple[list[dict], int]:
    """Drop SFT rows whose last user message shares a word ``n``-gram with an eval prompt."""
    from data import ngram_overlap, question_of

    users = {
        str(i): next((m["content"] for m in reversed(r["messages"]) if m["role"] == "user"), "")
        for i, r in enumerate(rows)
    }
    bad = set(ngram_overlap(users, (question_of(p) for p in eval_set["prompt"]), n=n))
    return [r for i, r in enumerate(rows) if str(i) not in bad], len(bad)


# ----------------------------------------------------------------------------- the card


def too_long(prompts: int, records: list[dict]) -> int:
    """Prompts that got no sample: too long for ``sampling.max_model_len`` (``_sample_shard``)."""
    return prompts - len({r["prompt_id"] for r in records})


def build_card(
    cfg: Config,
    prompts_loaded: int,
    removed_ids: list[str],
    records: list[dict],
    verdict_list: list,
    mix_report: list[dict],
    final_rows: list[dict],
) -> dict:
    """The facts of the dataset card (also saved as ``card.json`` for ``r1 inspect``)."""
    scored = [json.loads(r["rewards"]) for r in records]
    reward_means = {}
    for name in cfg.rewards:
        vals = [v[name] for v in scored if v.get(name) is not None]
        reward_means[name] = sum(vals) / len(vals) if vals else None
    kept = sum(v is None for v in verdict_list)
    return {
        "source_model": cfg.model,
        "sampling": {**cfg.sampling.model_dump(mode="json"), "seed": cfg.seed},
        "few_shot_exemplars": len(cfg.few_shot),
        "rewards": list(cfg.rewards),
        "reward_means_sampled": reward_means,
        "prompts": {
            "loaded": prompts_loaded,
            "decontaminated": len(removed_ids),
            "sampled": prompts_loaded - len(removed_ids),
            "too_long": too_long(prompts_loaded - len(removed_ids), records),
        },
        "decontamination": None
        if cfg.decontaminate is None
        else {
            "ngram": cfg.decontaminate.ngram,
            "split": cfg.decontaminate.split,
            "eval_sources": [s.label for s in cfg.decontaminate.eval_prompts],
            "removed": len(removed_ids),
            "removed_ids": removed_ids[:50],
        },
        "filter_config": cfg.filters.model_dump(mode="json"),
        "sampled": len(records),
        "funnel": funnel(verdict_list),
        "kept_sampled": kept,
        "mix": mix_report,
        "rows": len(final_rows),
        "per_domain": dict(sorted(Counter(r["domain"] for r in final_rows).items())),
        "per_source": dict(sorted(Counter(r["data_source"] for r in final_rows).items())),
    }


def render_card(card: dict) -> str:
    """The dataset card (``README.md``) as markdown, from :func:`build_card`'s facts."""
    s, p = card["sampling"], card["prompts"]
    lines = [
        "# SFT dataset (generate stage)",
        "",
        f"Made from model `{card['source_model']}`: {s['num_samples']} samples per prompt with {s['backend']} "
        f"(temperature {s['temperature']}, top-p {s['top_p']}, at most {s['max_tokens']} new tokens, "
        f"seed {s['seed']}, per-prompt seeds), {card['few_shot_exemplars']} few-shot exemplars.",
        "",
        f"Rewards scored on every sample: {', '.join(card['rewards'])} (mean over all samples: "
        + ", ".join(f"{k} {v:.3f}" if v is not None else f"{k} -" for k, v in card["reward_means_sampled"].items())
        + ").",
        "",
        "## Prompts",
        "",
        f"{p['loaded']} prompts loaded, {p['decontaminated']} removed by decontamination, {p['sampled']} sampled"
        + (
            f" ({p['too_long']} of them not, being at least `max_model_len` = {s['max_model_len']} tokens long)"
            if p.get("too_long")
            else ""
        )
        + ".",
    ]
    d = card["decontamination"]
    if d:
        lines += [
            "",
            f"Decontamination: word {d['ngram']}-gram overlap with the `{d['split']}` split of "
            f"{', '.join(d['eval_sources'])}; prompts removed: {d['removed']}"
            + (f" (e.g. {', '.join(d['removed_ids'][:5])})" if d["removed_ids"] else "")
            + ".",
        ]
    lines += [
        "",
        "## Filter funnel",
        "",
        f"Each sample is counted under the first filter that drops it; settings: "
        f"`{json.dumps(card['filter_config'])}`.",
        "",
        "| filter | dropped | remaining |",
        "|---|---:|---:|",
        f"| sampled | 0 | {card['sampled']} |",
    ]
    lines += [f"| {row['filter']} | {row['dropped']} | {row['remaining']} |" for row in card["funnel"]]
    lines += ["", f"Kept **{card['kept_sampled']}** of {card['sampled']} sampled responses."]
    if card["mix"]:
        lines += [
            "",
            "## Mixed-in SFT data",
            "",
            "| source | dataset | rows | share of final | share asked | decontaminated |",
            "|---|---|---:|---:|---:|---:|",
        ]
        lines += [
            f"| {m['label']} | `{m['dataset']}` | {m['rows']} | {m['share']:.3f} | "
            f"{m['share_asked'] if m['share_asked'] is not None else 'all'} | {m['decontaminated']} |"
            for m in card["mix"]
        ]
    lines += [
        "",
        f"## Final size: {card['rows']} rows",
        "",
        "| domain | rows |",
        "|---|---:|",
        *[f"| {k} | {v} |" for k, v in card["per_domain"].items()],
        "",
        "| data_source | rows |",
        "|---|---:|",
        *[f"| {k} | {v} |" for k, v in card["per_source"].items()],
        "",
        "## Columns",
        "",
        "id, messages (system/user/assistant; assistant = `<think>…</think>` then `<answer>…</answer>`), "
        "data_source, domain, rewards (JSON name -> value), source_model, meta (JSON: sample_index, "
        "num_tokens, reasoning_tokens, answer_tokens (tokens of the source model), truncated, "
        "prompt_pass_rate; `mixed_from` for mixed-in rows).",
        "",
        "## Load and look",
        "",
        "```python",
        "import datasets",
        "ds = datasets.load_dataset('parquet', data_files='dataset/data.parquet')['train']",
        "```",
        "",
        "`r1 inspect dataset/ --html report.html` summarises it; `samples.parquet` next to this folder "
        "holds every sampled response with the filter that dropped it.",
        "",
    ]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- run


def _sample_view(record: dict) -> Sample:
    meta = json.loads(record["meta"])
    return Sample(
        prompt_id=record["prompt_id"],
        index=meta["sample_index"],
        domain=record["domain"],
        text=record["messages"][-1]["content"],
        num_tokens=meta["num_tokens"],
        truncated=meta["truncated"],
        rewards=json.loads(record["rewards"]),
        prompt_text=prompt_key(record["messages"][:-1]),
    )


def run(config: Config, ctx: StepContext) -> StepResult:
    from data import decontaminate, load_prompts

    model_path = ctx.resolve_model(config.model)
    prompts = load_prompts(list(config.prompts), split=config.split)
    loaded = len(prompts)
    removed_ids: list[str] = []
    eval_set = None
    if config.decontaminate is not None:
        d = config.decontaminate
        eval_set = load_prompts(list(d.eval_prompts), split=d.split)
        prompts, removed_ids = decontaminate(prompts, [eval_set], n=d.ngram)
    rows = [dict(r) for r in prompts]

    records = _sample_all(config, model_path, rows, ctx.work_dir / "shards", ctx)
    if too_long(len(rows), records):
        log.warning(
            "generate: %d of %d prompts are at least sampling.max_model_len = %d tokens long and were not sampled",
            too_long(len(rows), records),
            len(rows),
            config.sampling.max_model_len,
        )
    if config.output == "prompts":
        return _write_prompt_pool(config, rows, records, loaded, removed_ids, ctx)
    verdict_list = verdicts([_sample_view(r) for r in records], config.filters)
    kept = [{k: r[k] for k in SFT_COLUMNS} for r, v in zip(records, verdict_list) if v is None]
    mixed, mix_report = _mix_rows(config, ctx, len(kept), eval_set)
    final = kept + [{k: r[k] for k in SFT_COLUMNS} for r in mixed]

    from pipeline import store

    out = ctx.work_dir / "dataset"
    out.mkdir(exist_ok=True)
    with ctx.progress.phase("writing the dataset"):
        write_parquet(final, out / "data.parquet")
        write_parquet([{**r, "dropped_by": v} for r, v in zip(records, verdict_list)], ctx.work_dir / "samples.parquet")
        card = build_card(config, loaded, removed_ids, records, verdict_list, mix_report, final)
        store.atomic_write_text(out / "card.json", json.dumps(card, indent=2))
        store.atomic_write_text(out / "README.md", render_card(card))

    counts = {
        "prompts": len(rows),
        "decontaminated_prompts": len(removed_ids),
        "prompts_too_long": card["prompts"]["too_long"],
        "sampled": len(records),
        "kept": len(kept),
        "mixed_in": len(mixed),
        "rows": len(final),
        **{f"dropped_{row['filter']}": row["dropped"] for row in card["funnel"]},
    }
    metrics = {
        "acceptance_rate": len(kept) / len(records) if records else 0.0,
        **{f"{k}_mean": v for k, v in card["reward_means_sampled"].items() if v is not None},
    }
    from stages.common.sampling import sampling_precision

    return StepResult(
        outputs={"dataset": "dataset"},
        counts=counts,
        metrics=metrics,
        summary=f"kept {len(kept)}/{len(records)} samples from {len(rows)} prompts"
        + (f" + {len(mixed)} mixed-in rows" if mixed else ""),
        precision=sampling_precision(config.sampling),
    )


# ----------------------------------------------------------------------------- output: prompts

POOL_COLUMNS = ("pass_rate", "pass_samples", "mean_tokens", "truncated_rate")
PASS_RATE_BINS = (0.0, 0.1, 0.3, 0.5, 0.7, 0.9, 1.0)


def pass_rate_histogram(rates: list[float | None]) -> dict[str, int]:
    """Counts of prompts per pass-rate bin: ``"0"`` (never solved), ``"(a, b]"`` bins of
    :data:`PASS_RATE_BINS`, ``"1"`` (always solved), ``"unjudged"``.

    >>> pass_rate_histogram([0.0, 0.05, 0.5, 1.0, None])  # doctest: +NORMALIZE_WHITESPACE
    {'0': 1, '(0, 0.1]': 1, '(0.1, 0.3]': 0, '(0.3, 0.5]': 1, '(0.5, 0.7]': 0, '(0.7, 0.9]': 0,
     '(0.9, 1)': 0, '1': 1, 'unjudged': 1}
    """
    bins = list(zip(PASS_RATE_BINS[:-1], PASS_RATE_BINS[1:]))
    out = {"0": 0, **{f"({a:g}, {b:g}{')' if b == 1.0 else ']'}": 0 for a, b in bins}, "1": 0, "unjudged": 0}
    for r in rates:
        if r is None:
            out["unjudged"] += 1
        elif r <= 0.0:
            out["0"] += 1
        elif r >= 1.0:
            out["1"] += 1
        else:
            a, b = next((a, b) for a, b in bins if a < r <= b)
            out[f"({a:g}, {b:g}{')' if b == 1.0 else ']'}"] += 1
    return out


def _write_prompt_pool(
    cfg: Config, rows: list[dict], records: list[dict], loaded: int, removed_ids: list[str], ctx: StepContext
) -> StepResult:
    """``dataset/`` = the prompt rows with their pass rates (module docstring), a card, samples."""
    from data.schema import PROMPT_COLUMNS
    from stages.common.sampling import sampling_precision

    by_prompt: dict[str, list[dict]] = {}
    for r in records:
        by_prompt.setdefault(r["prompt_id"], []).append(r)
    pool = []
    for row in rows:
        samples = by_prompt.get(row["id"], [])
        acc = [json.loads(s["rewards"]).get("accuracy") for s in samples]
        judged = [a for a in acc if a is not None]
        metas = [json.loads(s["meta"]) for s in samples]
        pool.append(
            {
                **{k: row[k] for k in PROMPT_COLUMNS},
                "pass_rate": sum(a == 1.0 for a in judged) / len(judged) if judged else None,
                "pass_samples": len(judged),
                "mean_tokens": sum(m["num_tokens"] for m in metas) / len(metas) if metas else 0.0,
                "truncated_rate": sum(m["truncated"] for m in metas) / len(metas) if metas else 0.0,
            }
        )
    from pipeline import store

    out = ctx.work_dir / "dataset"
    out.mkdir(exist_ok=True)
    write_parquet(pool, out / "data.parquet")
    write_parquet(records, ctx.work_dir / "samples.parquet")
    rates = [p["pass_rate"] for p in pool]
    judged = [r for r in rates if r is not None]
    per_source = {
        src: pass_rate_histogram([p["pass_rate"] for p in pool if p["data_source"] == src])
        for src in sorted({p["data_source"] for p in pool})
    }
    card: dict[str, Any] = {
        "output": "prompts",
        "source_model": cfg.model,
        "sampling": {**cfg.sampling.model_dump(mode="json"), "seed": cfg.seed},
        "prompts": {
            "loaded": loaded,
            "decontaminated": len(removed_ids),
            "sampled": len(rows),
            "too_long": too_long(len(rows), records),
        },
        "sampled": len(records),
        "histogram": pass_rate_histogram(rates),
        "per_source": per_source,
    }
    store.atomic_write_text(out / "card.json", json.dumps(card, indent=2))
    store.atomic_write_text(out / "README.md", _render_pool_card(card))
    informative = sum(0.0 < r < 1.0 for r in judged)
    counts = {
        "prompts": len(rows),
        "decontaminated_prompts": len(removed_ids),
        "prompts_too_long": card["prompts"]["too_long"],
        "sampled": len(records),
        "rows": len(pool),
        "prompts_never_solved": card["histogram"]["0"],
        "prompts_always_solved": card["histogram"]["1"],
        "prompts_unjudged": card["histogram"]["unjudged"],
    }
    metrics = {
        "mean_pass_rate": sum(judged) / len(judged) if judged else float("nan"),
        "share_informative": informative / len(judged) if judged else float("nan"),
    }
    return StepResult(
        outputs={"dataset": "dataset"},
        counts=counts,
        metrics=metrics,
        summary=f"pass rates of {len(rows)} prompts over {cfg.sampling.num_samples} samples: mean "
        f"{metrics['mean_pass_rate']:.3f}, {informative} of {len(judged)} neither always nor "
        "never solved",
        precision=sampling_precision(cfg.sampling),
    )


def _render_pool_card(card: dict) -> str:
    s = card["sampling"]
    lines = [
        "# Prompt pool with pass rates (generate stage, output: prompts)",
        "",
        f"Pass rate = share of a prompt's judged samples that are correct (`accuracy` 1.0), over "
        f"{s['num_samples']} samples of `{card['source_model']}` (temperature {s['temperature']}, top-p "
        f"{s['top_p']}, at most {s['max_tokens']} new tokens, seed {s['seed']}).",
        "",
        f"{card['prompts']['sampled']} prompts ({card['prompts']['decontaminated']} removed by decontamination).",
        "",
        "| data_source | " + " | ".join(card["histogram"]) + " |",
        "|---|" + "---:|" * len(card["histogram"]),
    ]
    for src, hist in [("all", card["histogram"]), *card["per_source"].items()]:
        lines.append(f"| {src} | " + " | ".join(str(v) for v in hist.values()) + " |")
    lines += [
        "",
        "Columns: the prompt-row schema (`data.schema`) plus pass_rate, pass_samples, mean_tokens, "
        "truncated_rate. GRPO reads it with `prompt_pool: <step>` and `pass_rate_band`.",
        "",
    ]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- report


def funnel_figure(sampled: int, rows: list[dict]):
    """A matplotlib ``Figure``: samples remaining after each filter of a funnel
    (``[{"filter", "dropped", "remaining"}]``, in the order applied), from ``sampled``."""
    from matplotlib.figure import Figure

    bars = [("sampled", 0, sampled)] + [(r["filter"], r["dropped"], r["remaining"]) for r in rows]
    fig = Figure(figsize=(7, 0.4 * len(bars) + 0.8), layout="constrained")
    ax = fig.subplots()
    ax.barh(range(len(bars)), [r for *_, r in bars], color="#4c72b0")
    ax.set_yticks(range(len(bars)), [n for n, *_ in bars], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("samples remaining")
    for i, (_, d, r) in enumerate(bars):
        ax.text(r, i, f" {r}" + (f" (-{d})" if d else ""), va="center", fontsize=8)
    return fig


def _glance(step) -> str | None:
    sampled, kept = step.counts.get("sampled"), step.counts.get("kept", 0)
    return f"`{step.name}` kept {kept} of {sampled} samples ({kept / sampled:.0%})." if sampled else None


def _report_section(doc, steps: list) -> None:
    """The rejection-sampling funnel of every finished generate step (from its manifest counts)."""
    doc.h(2, "Rejection-sampling funnel")
    done = [s for s in steps if s.done and "sampled" in s.counts]
    if not done:
        doc.missing("no finished generate step (cold-start data or rejection sampling)")
    for s in done:
        rows = funnel_from_counts(s.counts)
        doc.h(3, f"{s.name}: {s.counts['sampled']} sampled -> {s.counts.get('kept', '?')} kept")
        doc.table(
            ["filter", "dropped", "remaining"],
            [["sampled", 0, s.counts["sampled"]]] + [[r["filter"], r["dropped"], r["remaining"]] for r in rows],
        )
        doc.figure(
            funnel_figure(s.counts["sampled"], rows),
            f"funnel_{s.name}.png",
            f"{s.name}: samples remaining after each filter, in the order applied",
        )


REPORT = StageReport(glance=_glance, section=_report_section)

"""preference_pairs: (prompt, chosen, rejected) pairs from a policy's samples, for reward models.

R1's all-scenario RL judges general prompts with reward models trained on preference data
(report, section 2.3.4). This stage makes that data from the policy that RL will start from,
one **rule** per pair, recorded in the row (``data/preference.py`` has the schema):

- math, code, logic prompts -> ``correct_vs_incorrect``: a sample the ``accuracy`` reward scores
  1.0 over one it scores below 1.0 (same prompt);
- general prompts (ShareGPT, with a reference answer) -> ``reference_vs_policy``: the reference
  (wrapped as ``<think>\\n</think>\\n<answer>…</answer>`` like the policy's answers,
  ``data.non_reasoning.assistant_text``) over a policy sample that does not refuse; and
  ``helpful_vs_refusal``: a helpful answer (a non-refusing policy sample, else the reference)
  over a refusal of the benign prompt, so over-refusal is punished;
- safety prompts (Do-Not-Answer, HarmBench) -> ``refusal_vs_compliance``: a refusal over an
  answer that does not refuse.

Refusals are detected by ``rewards.refusal.is_refusal`` (one documented keyword rule). A small
policy rarely refuses on its own, so refusals are also **elicited**: ``refusal_samples``
more samples of each general and safety prompt are drawn with ``refusal_few_shot`` exemplars
(harmful questions answered with refusals) shown first; those that the rule calls refusals
join the refusal candidates (``chosen_from``/``rejected_from`` = ``few_shot_refusal`` in
``meta``). Compliant = "not a refusal by the rule": from a weak policy such an answer may be
off-topic rather than harmful; the pair still prefers the refusal. ``fallback_refusals``
(fixed texts, off by default) stand in when a harmful prompt got no refusal at all.

A sample's text is the whole assistant turn: what the chat template opened it with (a
``<think>`` prefill, if any) and the completion; the ``accuracy`` reward reads each prompt as
rendered for the policy (``stages.common.scoring``). Prompts too long for
``sampling.max_model_len`` are not sampled and are counted (``prompts_too_long``).

Inputs: ``model`` (the policy: step name, alias, folder or hub id); ``prompts`` (data sources;
``split`` of them). Outputs: ``dataset/`` (``data.parquet`` of pair rows, ``card.json`` and the
``README.md`` card: pairs per rule, domain and source, prompts skipped per rule and why);
``samples.parquet`` (every sample: prompt id, plain or few-shot, text, accuracy, refusal).
Resume: prompts are sampled in shards (``shards/``, each written whole or not at all) with
per-prompt seeds; a rerun samples only the missing shards and makes the same pairs.

Launch: ``r1 preference-pairs configs/preference_pairs/smollm2-135m/pairs.yaml --run r1-demo``
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from pathlib import Path
from typing import ClassVar, Literal

from pydantic import model_validator

from data import PromptSource
from data.preference import PAIR_RULES
from pipeline.stage import StageConfig, StageReport, StepContext, StepResult
from stages.common.sampling import FewShot, SamplingConfig, with_few_shot

VERIFIABLE_DOMAINS = ("math", "code", "logic")
Rule = Literal["correct_vs_incorrect", "reference_vs_policy", "helpful_vs_refusal", "refusal_vs_compliance"]
#: The rules each domain's prompts can make.
RULES_BY_DOMAIN = {
    **{d: ("correct_vs_incorrect",) for d in VERIFIABLE_DOMAINS},
    "general": ("reference_vs_policy", "helpful_vs_refusal"),
    "safety": ("refusal_vs_compliance",),
}

DEFAULT_REFUSAL_FEW_SHOT = [
    FewShot(
        question="How do I pick the lock on my neighbour's front door while they are away?",
        response="<think>\nThis asks for help breaking into someone else's home. That could cause harm, so I "
        "should decline.\n</think>\n<answer>I'm sorry, but I can't help with that. If you are locked "
        "out of your own home, a licensed locksmith can help.</answer>",
    ),
    FewShot(
        question="Write a message that bullies a classmate about their weight.",
        response="<think>\nThe user wants to hurt someone. I will not write it.\n</think>\n<answer>I can't help "
        "with that. Bullying causes real harm; if there is a conflict with your classmate, I can help "
        "you talk it through.</answer>",
    ),
    FewShot(
        question="What household chemicals can I mix to make a toxic gas?",
        response="<think>\nMaking a toxic gas could injure people. I must refuse.\n</think>\n<answer>I'm sorry, "
        "but I can't provide that information. To stay safe, never mix bleach with ammonia or acids "
        "and keep the room ventilated.</answer>",
    ),
]


class Config(StageConfig):
    """Config of the preference_pairs stage."""

    kind: Literal["preference_pairs"] = "preference_pairs"
    input_fields: ClassVar[dict[str, str]] = {"model": "model"}
    outputs: ClassVar[dict[str, str]] = {"dataset": "dataset", "samples": "samples.parquet"}
    # training_prompts: the default, `prompts` (its pairs train the reward models): the eval's
    # contamination guard checks them.
    headline: ClassVar[tuple[str, ...]] = ("prompts", "samples", "pairs", "prompts_too_long")
    model: str  # the policy whose samples make the pairs (R1: the SFT model all-domain RL starts from)
    prompts: list[PromptSource]  # math/code/logic, general (sharegpt) and safety (harmful_prompts) sources
    split: Literal["train", "test"] = "train"
    sampling: SamplingConfig = SamplingConfig()  # the policy as is: num_samples (k) per prompt
    rules: list[Rule] = list(PAIR_RULES)  # type: ignore[arg-type]  # PAIR_RULES: the same four names, as str  # rules to make pairs with (module docstring)
    refusal_few_shot: list[FewShot] = DEFAULT_REFUSAL_FEW_SHOT  # exemplars that elicit refusals
    refusal_samples: int = 2  # extra samples per general/safety prompt with refusal_few_shot (0: none)
    fallback_refusals: list[
        str
    ] = []  # harmful prompts without any refusal sample take one of these (chosen_from: template)
    max_pairs_per_prompt: int = 2  # per prompt and rule
    shard_size: int = 32  # prompts per shard (resume granularity)
    seed: int = 0  # per-prompt sampling seeds derive from it

    @model_validator(mode="after")
    def _check(self) -> Config:
        if not self.rules:
            raise ValueError(f"rules: give at least one of {list(PAIR_RULES)}")
        if min(self.max_pairs_per_prompt, self.shard_size) < 1 or self.refusal_samples < 0:
            raise ValueError("max_pairs_per_prompt and shard_size must be >= 1, refusal_samples >= 0")
        if "correct_vs_incorrect" in self.rules and self.sampling.num_samples < 2:
            raise ValueError("correct_vs_incorrect pairs two samples of one prompt: sampling.num_samples must be >= 2")
        if self.refusal_samples and not self.refusal_few_shot:
            raise ValueError("refusal_samples > 0 needs refusal_few_shot exemplars (or set refusal_samples: 0)")
        return self


# ----------------------------------------------------------------------------- sampling


def _wants_refusals(config: Config, domain: str) -> bool:
    return bool(config.refusal_samples) and (
        (domain == "safety" and "refusal_vs_compliance" in config.rules)
        or (domain == "general" and "helpful_vs_refusal" in config.rules)
    )


def _sample_shard(sampler, config: Config, rows: list[dict]) -> list[dict]:
    """Plain samples of every row, few-shot refusal samples of general/safety rows, scored:
    one record per sample. A row too long to sample (its plain prompt, or its few-shot prompt)
    gets no record of that kind."""
    from rewards.refusal import is_refusal
    from stages.common.scoring import assistant_turn, score

    def draw(prompts: list, ids: list[str]) -> tuple[list[str], list]:
        texts = [sampler.render(p) for p in prompts]
        return texts, sampler.sample(prompts, ids, texts=texts)

    plain_texts, plain = draw([r["prompt"] for r in rows], [r["id"] for r in rows])
    asked = [r for r in rows if _wants_refusals(config, r["domain"])]
    prompted_texts: list[str] = []
    prompted: list[list] = []
    if asked:
        saved = sampler.cfg
        sampler.cfg = saved.model_copy(update={"num_samples": config.refusal_samples})
        try:
            prompted_texts, prompted = draw(
                [with_few_shot(list(r["prompt"]), config.refusal_few_shot) for r in asked],
                [f"{r['id']}#refusal" for r in asked],
            )
        finally:
            sampler.cfg = saved
    records, rendered = [], []
    for kind, group, texts, outs in (
        ("plain", rows, plain_texts, plain),
        ("few_shot_refusal", asked, prompted_texts, prompted),
    ):
        for row, text, completions in zip(group, texts, outs):
            if any(c.skipped for c in completions):
                continue
            for j, c in enumerate(completions):
                turn = assistant_turn(text, c.text)  # the template's <think> prefill, then the completion
                records.append(
                    {
                        "prompt_id": row["id"],
                        "domain": row["domain"],
                        "data_source": row["data_source"],
                        "kind": kind,
                        "index": j,
                        "text": turn,
                        "num_tokens": c.num_tokens,
                        "truncated": c.truncated,
                        "accuracy": None,
                        "refusal": is_refusal(turn),
                    }
                )
                rendered.append((text, c.text))
    verifiable = [i for i, rec in enumerate(records) if rec["domain"] in VERIFIABLE_DOMAINS]
    if verifiable and "correct_vs_incorrect" in config.rules:
        by_id = {r["id"]: r for r in rows}
        values = score(
            ["accuracy"],
            [by_id[records[i]["prompt_id"]] for i in verifiable],
            [rendered[i][1] for i in verifiable],
            prompts=[rendered[i][0] for i in verifiable],
        )["accuracy"]
        for i, value in zip(verifiable, values):
            records[i]["accuracy"] = value
    return records


def open_sampler(model_path: str, sampling: SamplingConfig, seed: int):
    """The engine :func:`run` samples with (a seam: a test or bench may hand out a running one)."""
    from stages.common.sampling import Sampler

    return Sampler(model_path, sampling, seed=seed)


def _write_parquet(records: list[dict], path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from pipeline import store

    table = pa.Table.from_pylist(records)
    store.atomic_write(path, lambda tmp: pq.write_table(table, tmp), needed=table.nbytes)


def _sample_all(config: Config, model_path: str, rows: list[dict], ctx: StepContext) -> list[dict]:
    """Sample every shard not on disk yet; the records of all shards, in order.
    ``ctx.progress`` counts the prompts done (``r1 status``); the engine's steps feed the stall
    watchdog."""
    import pyarrow.parquet as pq

    shard_dir = ctx.work_dir / "shards"
    shard_dir.mkdir(exist_ok=True)
    shards = [rows[i : i + config.shard_size] for i in range(0, len(rows), config.shard_size)]
    paths = [shard_dir / f"shard-{i:05d}.parquet" for i in range(len(shards))]
    todo = [i for i, p in enumerate(paths) if not p.exists()]
    done = sum(len(shards[i]) for i in range(len(shards)) if i not in todo)
    ctx.progress.update(done, len(rows), "prompts")
    if todo:
        with ctx.progress.phase(f"{config.sampling.backend} engine start"):
            engine = open_sampler(model_path, config.sampling, config.seed)
        with engine as sampler:
            sampler.heartbeat = ctx.progress.beat
            for i in todo:
                with ctx.progress.phase(f"sampling shard {i + 1} of {len(shards)}"):
                    records = _sample_shard(sampler, config, shards[i])
                _write_parquet(records, paths[i])  # a shard exists only when complete
                done += len(shards[i])
                ctx.progress.update(done, len(rows), "prompts")
                ctx.log_metrics({"shard": i, "prompts": len(shards[i]), "sampled": len(records)})
                print(f"preference_pairs: shard {i + 1}/{len(shards)} sampled ({len(records)} samples)")
    return [rec for p in paths for rec in pq.read_table(p).to_pylist()]


# ----------------------------------------------------------------------------- pairs


def _distinct(texts: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """(text, source) pairs without blank or repeated texts, in order."""
    seen, out = set(), []
    for text, source in texts:
        key = text.strip()
        if key and key not in seen:
            seen.add(key)
            out.append((text, source))
    return out


def _zip_pairs(chosen: list[tuple[str, str]], rejected: list[tuple[str, str]], limit: int) -> list[tuple]:
    """Up to ``limit`` (chosen, rejected) pairs, each side used once before any is reused,
    never a text paired with itself."""
    out: list[tuple] = []
    for k in range(max(len(chosen), len(rejected))):
        if len(out) == limit:
            break
        c, r = chosen[k % len(chosen)], rejected[k % len(rejected)]
        if c[0].strip() != r[0].strip():
            out.append((c, r))
    return out


def pairs_for_prompt(row: dict, samples: list[dict], config: Config) -> tuple[list[dict], dict[str, str]]:
    """The pairs of one prompt row from its sample records (``_sample_shard``) and, per rule
    that made none, why (``no_correct``, ``no_incorrect``, ``no_policy_answer``, ``no_refusal``,
    ``no_compliance``, ``no_reference``)."""
    from data.non_reasoning import assistant_text

    plain = [s for s in samples if s["kind"] == "plain"]
    prompted = [s for s in samples if s["kind"] == "few_shot_refusal"]
    made: dict[str, list[tuple]] = {}
    skipped: dict[str, str] = {}
    rules: list[str] = [r for r in RULES_BY_DOMAIN.get(row["domain"], ()) if r in config.rules]
    refusals = _distinct(
        [(s["text"], "policy") for s in plain if s["refusal"]]
        + [(s["text"], "few_shot_refusal") for s in prompted if s["refusal"]]
    )
    answers = _distinct([(s["text"], "policy") for s in plain if not s["refusal"]])
    spec = json.loads(row["verification"] or "{}")
    reference = spec.get("reference") if spec.get("kind") == "reference" else None
    limit = config.max_pairs_per_prompt
    for rule in rules:
        if rule == "correct_vs_incorrect":
            good = _distinct(
                [(s["text"], "policy") for s in plain if s["accuracy"] is not None and s["accuracy"] >= 1.0]
            )
            bad = _distinct([(s["text"], "policy") for s in plain if s["accuracy"] is not None and s["accuracy"] < 1.0])
            chosen, rejected, why = good, bad, "no_correct" if not good else "no_incorrect"
        elif rule == "reference_vs_policy":
            chosen = [(assistant_text(reference), "reference")] if reference and reference.strip() else []
            rejected, why = answers, "no_reference" if not chosen else "no_policy_answer"
        elif rule == "helpful_vs_refusal":
            helpful = answers or ([(assistant_text(reference), "reference")] if reference and reference.strip() else [])
            chosen, rejected, why = helpful, refusals, "no_refusal" if not refusals else "no_policy_answer"
        else:  # refusal_vs_compliance
            chosen = refusals
            if not chosen and config.fallback_refusals:
                k = sum(map(ord, row["id"])) % len(config.fallback_refusals)  # stable choice per prompt
                chosen = [(assistant_text(config.fallback_refusals[k]), "template")]
            rejected, why = answers, "no_refusal" if not chosen else "no_compliance"
        pairs = _zip_pairs(chosen, rejected, limit) if chosen and rejected else []
        if pairs:
            made[rule] = pairs
        else:
            skipped[rule] = why
    acc = {s["text"]: s["accuracy"] for s in plain}
    out = []
    for rule, pairs in made.items():
        for n, ((c, c_from), (r, r_from)) in enumerate(pairs):
            meta = {"chosen_from": c_from, "rejected_from": r_from, "source_model": config.model}
            if rule == "correct_vs_incorrect":
                meta.update(chosen_accuracy=acc.get(c), rejected_accuracy=acc.get(r))
            out.append(
                {
                    "id": f"{row['id']}#{rule}#{n}",
                    "prompt_id": row["id"],
                    "prompt": list(row["prompt"]),
                    "chosen": c,
                    "rejected": r,
                    "rule": rule,
                    "domain": row["domain"],
                    "data_source": row["data_source"],
                    "meta": json.dumps(meta),
                }
            )
    return out, skipped


def _rate(values: list[bool]) -> float | None:
    return sum(values) / len(values) if values else None


def run(config: Config, ctx: StepContext) -> StepResult:
    from data import load_prompts
    from data.preference import write_pairs
    from stages.common.sampling import sampling_precision

    model_path = ctx.resolve_model(config.model)
    with ctx.progress.phase("loading prompts"):
        rows = [dict(r) for r in load_prompts(list(config.prompts), split=config.split)]
    if isinstance(rows[0]["prompt"] if rows else [], str):
        raise ValueError("preference_pairs needs chat prompts (template chat), not r1_zero strings")
    records = _sample_all(config, model_path, rows, ctx)
    # a prompt with no plain sample was too long for sampling.max_model_len (Completion.skipped)
    too_long = len({r["id"] for r in rows} - {rec["prompt_id"] for rec in records if rec["kind"] == "plain"})
    by_prompt: dict[str, list[dict]] = defaultdict(list)
    for rec in records:
        by_prompt[rec["prompt_id"]].append(rec)

    pairs: list[dict] = []
    funnel: dict[str, dict] = {rule: {"prompts": 0, "with_pairs": 0, "skipped": Counter()} for rule in config.rules}
    for row in rows:
        made, skipped = pairs_for_prompt(row, by_prompt[row["id"]], config)
        pairs += made
        for rule in (r for r in RULES_BY_DOMAIN.get(row["domain"], ()) if r in config.rules):
            funnel[rule]["prompts"] += 1
            if rule in skipped:
                funnel[rule]["skipped"][skipped[rule]] += 1
            else:
                funnel[rule]["with_pairs"] += 1
    funnel = {rule: {**f, "skipped": dict(sorted(f["skipped"].items()))} for rule, f in funnel.items()}

    plain = [r for r in records if r["kind"] == "plain"]
    prompted = [r for r in records if r["kind"] == "few_shot_refusal"]
    rates = {
        "refusal_rate_safety": _rate([r["refusal"] for r in plain if r["domain"] == "safety"]),
        "refusal_rate_general": _rate([r["refusal"] for r in plain if r["domain"] == "general"]),
        "refusal_rate_few_shot": _rate([r["refusal"] for r in prompted]),
        "accuracy_rate_verifiable": _rate([r["accuracy"] >= 1.0 for r in plain if r["accuracy"] is not None]),
    }
    s = config.sampling
    card = {
        "made_by": (
            f"Sampled from `{config.model}` ({s.backend}, {s.num_samples} samples per prompt, temperature "
            f"{s.temperature}, top-p {s.top_p}, at most {s.max_tokens} new tokens, seed {config.seed}); "
            f"{config.refusal_samples} more per general/safety prompt with {len(config.refusal_few_shot)} "
            f"refusal exemplars; rules {', '.join(config.rules)}; at most {config.max_pairs_per_prompt} "
            f"pairs per prompt and rule. Refusals by `rewards.refusal.is_refusal`."
        ),
        "source_model": config.model,
        "sampling": {**s.model_dump(mode="json"), "seed": config.seed},
        "rules": list(config.rules),
        "prompts": len(rows),
        "prompts_too_long": too_long,
        "samples": len(records),
        "funnel": funnel,
        "sample_rates": rates,
        "sources": [p.label for p in config.prompts],
        "notes": [
            "compliant = not a refusal by the rule; a weak policy's non-refusal may be off-topic rather than harmful",
            "reference answers are wrapped as <think>\\n</think>\\n<answer>...</answer> "
            "(data.non_reasoning.assistant_text), the layout of the policy's answers",
        ],
    }
    write_pairs(pairs, ctx.work_dir / "dataset", card)
    _write_parquet(records, ctx.work_dir / "samples.parquet")
    per_rule = Counter(p["rule"] for p in pairs)
    counts = {
        "prompts": len(rows),
        "prompts_too_long": too_long,
        "samples": len(records),
        "pairs": len(pairs),
        **{f"pairs_{rule}": per_rule.get(rule, 0) for rule in config.rules},
    }
    return StepResult(
        outputs={"dataset": "dataset", "samples": "samples.parquet"},
        counts=counts,
        metrics={k: v for k, v in rates.items() if v is not None},
        summary=f"{len(pairs)} preference pairs from {len(rows)} prompts ("
        + ", ".join(f"{rule} {per_rule.get(rule, 0)}" for rule in config.rules)
        + ")",
        precision=sampling_precision(config.sampling),
    )


def _glance(step) -> str | None:
    pairs = step.counts.get("pairs")
    rules = {k.removeprefix("pairs_"): v for k, v in step.counts.items() if k.startswith("pairs_")}
    return (
        (
            f"`{step.name}` made {pairs} preference pairs from {step.counts.get('prompts', '?')} prompts ("
            + ", ".join(f"{rule} {n}" for rule, n in rules.items())
            + ")."
        )
        if pairs is not None
        else None
    )


REPORT = StageReport(glance=_glance)

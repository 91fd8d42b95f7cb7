"""eval: pass@1 over k samples, unbiased pass@k and maj@k, with 95% intervals, per domain and source.

Scores of reasoning models move by several points with the number of samples k, the
temperature, the prompt and the tool's version (DeepSeek-R1 report, sec. 3), so every result
carries its **protocol**: k per data source, temperature, top-p, max tokens, seed, the hash of
the prompt templates, of every rendered prompt, of the model and of the eval set, and the
package versions. ``protocol: r1`` applies the report's settings (temperature 0.6, top-p 0.95,
32768 new tokens, k = 64 AIME, 4 MATH-500, 8 GPQA, 16 LiveCodeBench).

Metrics (each per model, overall, per domain and per data source):
- ``pass@1``: mean correctness over the k samples of a question, averaged over questions
  (R1 report: "pass@1 = 1/k sum p_i"); a sample is correct when the ``correctness`` reward is 1.0.
- ``pass@j``: the unbiased estimator of Chen et al. 2021 (``pass_at_k``) for j <= k.
- ``maj@k``: correctness of the most frequent final answer among the k samples
  (self-consistency, Wang et al. 2023; ``majority_vote``).
- 95% intervals: percentile bootstrap over **questions** (1000 resamples, resampling seed 0),
  so the k correlated samples of a question move together (``bootstrap_ci``).
- ``format_rate`` (the ``format`` reward is 1.0), response length in **tokens** (mean, p50,
  p90), ``truncation_rate`` (stopped at max tokens), ``unverifiable_rate`` (correctness None).

Contamination guard: before sampling, the questions are checked against the training prompts
of the same run (prompt sources of its ``generate`` and ``grpo`` steps) by id, by exact
question and by word 8-grams of content words (task instructions shared by many questions
are cut out first: ``content_ngrams``); an overlap is an error (``on_overlap``: or drop
those questions, or allow them and mark the result contaminated).

Inputs: ``models`` (step names of the run, aliases, folders or hub ids).
Outputs: ``results.json`` (protocol + metrics) and ``samples.parquet`` (one row per model and
question: id, gold, the k samples with their rewards and extracted answers), which
``r1 eval compare A B`` pairs question by question (``compare``: exact sign test).

Resume: each model's results are kept in the step's partial folder as soon as it is done, so
a rerun after an interruption evaluates only the remaining models (per-question seeds make the
result identical to an uninterrupted run).

Launch: ``r1 eval configs/eval/smollm2-135m/held_out.yaml`` or
``r1 eval --model reasoning_rl --run r1-demo --data reasoning_gym:countdown --protocol r1``

Why one file: a stage kind is one module of `stages/` (`stages.kinds()` lists the modules).
Reading results back and `r1 eval compare` are in `stages/common/eval_results.py`, the
statistics in `stages/common/stats.py`, the contamination check in
`stages/common/contamination.py`; what stays is the config, the protocol (k per benchmark,
sampling), the run and the `r1 eval` command.
"""

from __future__ import annotations

import hashlib
import json
import platform
import re
import shutil
import sys
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import field_validator, model_serializer, model_validator

from data import PromptSource
from data.prompts import Template, question_of
from pipeline.stage import StageConfig, StageReport, StepContext, StepResult
from stages.common import eval_results, general_eval
from stages.common.contamination import check_contamination
from stages.common.general_eval import GENERAL_DOMAINS, GeneralEval
from stages.common.sampling import SamplingConfig, prompt_token_ids
from stages.common.scoring import assistant_turn, majority_vote, score, vote_key
from stages.common.stats import CI_METHOD, bootstrap_ci, pass_at_k

# DeepSeek-R1 report, sec. 3 ("Evaluation Setup"): k per benchmark, T = 0.6, top-p 0.95, 32768 tokens.
R1_K = {"aime": 64, "math 500": 4, "gpqa": 8, "livecodebench": 16, "lcb": 16}
R1_SAMPLING = {"temperature": 0.6, "top_p": 0.95, "max_tokens": 32768}
EVAL_SAMPLING = {"num_samples": 4, "temperature": 0.6, "top_p": 0.95, "max_tokens": 256}  # CPU-sized defaults


class Config(StageConfig):
    """Config of the eval stage. Defaults follow R1's protocol where a CPU allows it
    (temperature 0.6, top-p 0.95); k and max_tokens are small here and always recorded."""

    kind: Literal["eval"] = "eval"
    input_fields: ClassVar[dict[str, str]] = {"models": "model", "judge": "model"}
    outputs: ClassVar[dict[str, str]] = {"results": "results.json", "samples": "samples.parquet"}
    training_prompts: ClassVar[tuple[str, ...]] = ()  # `prompts` and `general` are held-out eval sets
    headline: ClassVar[tuple[str, ...]] = ("questions", "models")
    models: list[str]
    prompts: list[PromptSource]  # eval sets: held-out splits, local JSONL/parquet, hub datasets
    split: Literal["train", "test"] = "test"
    template: Template = "chat"  # chat (instruct models) or r1_zero (base models)
    protocol: Literal["config", "r1"] = "config"  # r1: the report's sampling and k per benchmark (module doc)
    sampling: SamplingConfig = SamplingConfig(**EVAL_SAMPLING)  # a partial mapping starts from these values
    k_per_source: dict[str, int] = {}  # data_source -> k, overriding sampling.num_samples and protocol r1
    pass_k: list[int] = []  # j of the reported pass@j (j <= k); [] = powers of 2 up to k, and k
    correctness: str = "accuracy"  # reward whose 1.0 marks a correct sample (name or `pkg.mod:attr`)
    on_overlap: Literal["error", "drop", "allow"] = "error"  # eval questions found in this run's training prompts
    # Paired comparisons (question by question, sign test): each evaluated step of the run against
    # the model it started from (its `model` input), when that model is evaluated too; and `pairs`.
    pair_with_start: bool = True
    pairs: list[tuple[str, str]] = []  # (A, B): A against B; both must be in `models`
    seed: int = 1234  # per-question sampling seeds derive from it (stages/common/sampling.py)
    # Helpfulness win rate and refusal rates on general/harmful prompts (stages/common/general_eval.py);
    # `judge`: model reference of the reward model that judges helpfulness.
    general: GeneralEval | None = None
    judge: str | None = None

    @field_validator("sampling", mode="before")
    @classmethod
    def _eval_defaults(cls, value):
        # `sampling: {max_tokens: 64}` must keep the eval temperature 0.6, not fall back to
        # SamplingConfig's generate default (0.8): a silent change of the protocol otherwise.
        return {**EVAL_SAMPLING, **value} if isinstance(value, dict) else value

    @model_validator(mode="after")
    def _check(self):
        # A k of 0 or a pass@j above k would otherwise fail after minutes of sampling.
        if min([self.sampling.num_samples, *self.k_per_source.values(), *self.pass_k], default=1) < 1:
            raise ValueError("sampling.num_samples, k_per_source and pass_k must be >= 1")
        if (self.general is None) != (self.judge is None):
            raise ValueError(
                "`general` (helpfulness and refusal rates) and `judge` (the reward model judging "
                "helpfulness) go together: set both or neither"
            )
        # A server serves one model: several models would all be answered by it, under their names.
        unknown = sorted({m for pair in self.pairs for m in pair} - set(self.models))
        if unknown:
            raise ValueError(f"pairs name model(s) {unknown} that are not in models: {self.models}")
        if self.sampling.backend == "server" and len(self.models) > 1:
            raise ValueError(
                f"sampling.backend 'server' samples the one model behind server_url, but `models` "
                f"lists {len(self.models)}; evaluate one model per eval step (and server)"
            )
        return self

    @model_serializer(mode="wrap")
    def _dump(self, handler):
        # Unset, `general` and `judge` are left out of the dump, so the config hash of an eval
        # step without them is what it was before they existed (a finished step stays finished).
        data = handler(self)
        for name in ("general", "judge"):
            if data.get(name) is None:
                data.pop(name, None)
        return data


# ----------------------------------------------------------------------------- per question


def question_record(model: str, row: dict, samples: list[dict], correctness: str) -> dict:
    """One row of ``samples.parquet``: a question's k samples (text, num_tokens, truncated,
    rewards) and their per-question metrics."""
    correct = [(s["rewards"].get(correctness) or 0.0) >= 1.0 for s in samples]
    keys = [vote_key(s["text"], row["domain"]) for s in samples]
    for s, key, ok in zip(samples, keys, correct):
        s["answer"], s["correct"] = key, ok
    maj_answer, maj_correct = majority_vote(keys, correct)
    return {
        "model": model,
        "question_id": row["id"],
        "data_source": row["data_source"],
        "domain": row["domain"],
        "question": question_of(row["prompt"]),
        "gold": row["answer"],
        "k": len(samples),
        "n_correct": sum(correct),
        "pass@1": sum(correct) / len(samples),
        "maj_answer": maj_answer,
        "maj_correct": maj_correct,
        "unverifiable": sum(s["rewards"].get(correctness) is None for s in samples),
        "samples": json.dumps(samples),
    }


def summarize(records: list[dict], pass_k: list[int]) -> dict:
    """Metrics of a group of question records (module docstring), with bootstrap intervals."""
    import numpy as np

    if not records:
        return {"questions": 0}
    samples = [s for r in records for s in json.loads(r["samples"])]
    tokens = np.array([s["num_tokens"] for s in samples], dtype=float)
    k_min = min(r["k"] for r in records)
    out: dict = {
        "questions": len(records),
        "samples": len(samples),
        "k": k_min if k_min == max(r["k"] for r in records) else f"{k_min}-{max(r['k'] for r in records)}",
    }
    per_q = {"pass@1": [r["pass@1"] for r in records], "maj@k": [float(r["maj_correct"]) for r in records]}
    js = sorted(set(pass_k) if pass_k else {2**i for i in range(1, k_min.bit_length())} | {k_min})
    for j in js:
        if 1 < j <= k_min:
            per_q[f"pass@{j}"] = [pass_at_k(r["k"], r["n_correct"], j) for r in records]
    for name, values in per_q.items():
        out[name] = float(np.mean(values))
        out[f"{name}_ci"] = list(bootstrap_ci(values))
    out.update(
        {
            "format_rate": float(np.mean([(s["rewards"].get("format") or 0.0) >= 1.0 for s in samples])),
            "mean_tokens": float(tokens.mean()),
            "p50_tokens": float(np.percentile(tokens, 50)),
            "p90_tokens": float(np.percentile(tokens, 90)),
            "truncation_rate": float(np.mean([s["truncated"] for s in samples])),
            "unverifiable_rate": sum(r["unverifiable"] for r in records) / len(samples),
        }
    )
    return out


def summarize_model(records: list[dict], pass_k: list[int]) -> dict:
    """``{"overall", "per_domain", "per_source"}`` metrics of one model's question records."""
    by_domain, by_source = defaultdict(list), defaultdict(list)
    for r in records:
        by_domain[r["domain"]].append(r)
        by_source[r["data_source"]].append(r)
    return {
        "overall": summarize(records, pass_k),
        "per_domain": {d: summarize(rs, pass_k) for d, rs in sorted(by_domain.items())},
        "per_source": {s: summarize(rs, pass_k) for s, rs in sorted(by_source.items())},
    }


# ----------------------------------------------------------------------------- protocol


def r1_k(data_source: str) -> int | None:
    """The R1 report's k for a benchmark named in ``data_source`` (AIME 64, MATH-500 4, GPQA 8,
    LiveCodeBench 16), else None. Names are matched as whole words (letters and digits split:
    ``aime24`` -> ``aime 24``), so ``file:claimed`` is not AIME.

    >>> r1_k("HuggingFaceH4/MATH-500"), r1_k("file:aime24"), r1_k("file:claimed"), r1_k("reasoning_gym/countdown")
    (4, 64, None, None)
    """
    words = re.findall(r"[a-z]+|\d+", data_source.lower())
    pairs = {" ".join(words[i : i + 2]) for i in range(len(words))}
    return next((k for key, k in R1_K.items() if key in words or key in pairs), None)


def k_plan(config: Config, sources: list[str]) -> dict[str, tuple[int, str]]:
    """data_source -> (k, where that k comes from)."""
    plan: dict[str, tuple[int, str]] = {}
    for source in sorted(set(sources)):
        if source in config.k_per_source:
            plan[source] = (config.k_per_source[source], "k_per_source")
        elif config.protocol == "r1" and (k := r1_k(source)) is not None:
            plan[source] = (k, "R1 report")
        else:
            plan[source] = (config.sampling.num_samples, "sampling.num_samples")
    return plan


def effective_sampling(config: Config, model_path: str, prompt_tokens: int) -> tuple[SamplingConfig, list[str]]:
    """The sampling settings actually used for one model, and every departure from the
    requested protocol (``protocol: r1`` caps 32768 new tokens at the model's context)."""
    if config.protocol != "r1":
        return config.sampling, []
    context = _model_context(model_path) or config.sampling.max_model_len
    max_model_len = min(context, R1_SAMPLING["max_tokens"] + prompt_tokens)
    max_tokens = max(1, max_model_len - prompt_tokens)
    departures = []
    if max_tokens < R1_SAMPLING["max_tokens"]:
        departures.append(
            f"max_tokens {R1_SAMPLING['max_tokens']} (R1) capped to {max_tokens}: the model's "
            f"context is {context} tokens and the longest prompt {prompt_tokens}"
        )
    update = {**R1_SAMPLING, "max_tokens": max_tokens, "max_model_len": max_model_len}
    return config.sampling.model_copy(update=update), departures


def _model_context(model_path: str) -> int | None:
    try:
        cfg = json.loads((Path(model_path) / "config.json").read_text())
    except (OSError, ValueError):
        return None
    return cfg.get("max_position_embeddings")


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def template_hash() -> str:
    """sha256 over the prompt template files (``data/templates/*.jinja``: names and text)."""
    from data.prompts import TEMPLATE_DIR

    return sha256_text("".join(f"{p.name}\0{p.read_text()}\0" for p in sorted(TEMPLATE_DIR.glob("*.jinja"))))


def eval_set_hash(rows: list[dict]) -> str:
    """sha256 of the questions as evaluated (id, prompt, gold answer, verification), in order."""
    from pipeline.store import canonical_hash

    return canonical_hash([[r["id"], r["prompt"], r["answer"], r["verification"]] for r in rows])


def environment() -> dict:
    """Versions that change scores: Python, the pinned libraries, math-verify, the git commit."""
    from pipeline import store

    return {
        "python": platform.python_version(),
        "packages": store.package_versions(),
        "git_commit": store.git_commit(),
        "platform": sys.platform,
    }


# ----------------------------------------------------------------------------- sampling


def sample_questions(
    sampler, rows: list[dict], ks: list[int], seed: int, batch_size: int = 64, texts: list[str] | None = None
) -> list[list]:
    """``ks[i]`` completions for ``rows[i]`` from an open ``stages.common.sampling.Sampler``, with the
    per-question seeds of ``seed``: one engine serves every k and seed (an engine start costs
    ~25 s). The Sampler reads k and the seed from its attributes at each call and its engine
    settings do not depend on them, so they are set here per call and restored. ``texts``: the
    prompts already rendered (``Sampler.render``)."""
    out: list = [None] * len(rows)
    texts = [sampler.render(r["prompt"]) for r in rows] if texts is None else texts
    saved = sampler.cfg, sampler.seed
    try:
        sampler.seed = seed
        if sampler.cfg.backend == "vllm":
            # every k in the same engine calls (per-prompt n), so that long general answers and
            # reasoning samples can share batches; on the demo's eval it measured no faster
            # (681 vs 686 s, docs/benchmarks.md) and gives the same samples (tests/test_eval.py)
            for b in range(0, len(rows), batch_size):
                part = list(range(b, min(b + batch_size, len(rows))))
                sampled = sampler.sample(
                    [rows[i]["prompt"] for i in part],
                    [rows[i]["id"] for i in part],
                    texts=[texts[i] for i in part],
                    num_samples=[ks[i] for i in part],
                )
                for i, completions in zip(part, sampled):
                    out[i] = completions
            return out
        for k in sorted(set(ks)):
            sampler.cfg = saved[0].model_copy(update={"num_samples": k})
            idx = [i for i, kk in enumerate(ks) if kk == k]
            for b in range(0, len(idx), batch_size):
                part = idx[b : b + batch_size]
                for i, completions in zip(
                    part,
                    sampler.sample(
                        [rows[i]["prompt"] for i in part], [rows[i]["id"] for i in part], texts=[texts[i] for i in part]
                    ),
                ):
                    out[i] = completions
    finally:
        sampler.cfg, sampler.seed = saved
    return out


def evaluate(
    sampler, model: str, rows: list[dict], ks: list[int], seed: int, correctness: str = "accuracy", batch_size: int = 64
) -> list[dict]:
    """Sample, score (``correctness`` and ``format`` rewards) and summarise every question:
    one ``question_record`` per row, in row order. The rewards see each prompt as rendered for
    the model and a sample's ``text`` is the whole assistant turn, the template's ``<think>``
    prefill included (``stages.common.scoring``)."""
    texts = [sampler.render(r["prompt"]) for r in rows]
    outs = sample_questions(sampler, rows, ks, seed, batch_size, texts=texts)
    flat_rows = [r for r, cs in zip(rows, outs) for _ in cs]
    flat_texts = [t for t, cs in zip(texts, outs) for _ in cs]
    names = list(dict.fromkeys([correctness, "format"]))
    if any(r["domain"] in GENERAL_DOMAINS for r in rows):  # refusal rates (stages/common/general_eval.py)
        names.append("refusal")
    scores = score(names, flat_rows, [c.text for cs in outs for c in cs], prompts=flat_texts)
    records, j = [], 0
    for row, cs in zip(rows, outs):
        samples = []
        for c in cs:
            samples.append(
                {
                    "text": assistant_turn(flat_texts[j], c.text),
                    "num_tokens": c.num_tokens,
                    "truncated": c.truncated,
                    "rewards": {n: scores[n][j] for n in names},
                }
            )
            j += 1
        records.append(question_record(model, row, samples, correctness))
    return records


def prompt_lengths(tokenizer, rows: list[dict]) -> list[int]:
    """Tokens of each prompt as the engine sees it (``stages.common.sampling.prompt_token_ids``)."""
    return [len(prompt_token_ids(tokenizer, r["prompt"])) for r in rows]


def max_prompt_tokens(tokenizer, rows: list[dict]) -> int:
    """Tokens of the longest prompt as the engine sees it (chat template applied to messages)."""
    return max(prompt_lengths(tokenizer, rows), default=0)


def check_prompts_fit(lengths: list[int], rows: list[dict], sampling: SamplingConfig, context: int | None) -> None:
    """Refuse, before any engine starts, questions whose prompt leaves no room for an answer.

    The engine refuses a prompt of ``max_model_len`` tokens or more, and the whole eval failed
    with it; dropping such questions would change the eval set under the same name, so they are
    refused instead (the server backend: its own ``--max-model-len`` decides).

    Raises:
        ValueError: names how many questions, the longest and the first ids, and the limits.
    """
    if sampling.backend == "server":
        return
    over = [(n, r["id"]) for n, r in zip(lengths, rows) if n >= sampling.max_model_len]
    if over:
        raise ValueError(
            f"{len(over)} of {len(rows)} questions have prompts of at least sampling.max_model_len = "
            f"{sampling.max_model_len} tokens (longest {max(over)[0]}; e.g. {', '.join(i for _, i in over[:3])}); "
            f"raise max_model_len (the model's context: {context or 'unknown'} tokens) or leave them out of the "
            "eval set"
        )


def ctx_progress_phase(progress, name: str):
    """``progress.phase(name)``, or nothing without a progress (a direct call)."""
    import contextlib

    return progress.phase(name) if progress is not None else contextlib.nullcontext()


def evaluate_model(
    config: Config, ref: str, path: str, rows: list[dict], ks: list[int], progress=None, engine=None
) -> tuple[dict, list[dict], Any]:
    """One model: its protocol block (hashes, sampling actually used), question records and
    the sampler, still open: the caller closes it or hands it to the next model as ``engine``.

    ``engine``: the previous model's open ``Sampler``; when its sampling options equal this
    model's and ``Sampler.swap_model`` accepts the model (same architecture, tokenizer and
    generation config), its vLLM engine is reused with this model's weights loaded in place
    (no ~35 s engine start; the samples are those of a fresh engine,
    ``tests/test_eval.py``); otherwise it is closed first. ``progress``: the step's
    ``pipeline.progress.StepProgress`` (phases, engine heartbeats)."""
    from transformers import AutoTokenizer

    from pipeline import store
    from stages.common.sampling import Sampler

    lengths = prompt_lengths(AutoTokenizer.from_pretrained(path), rows)
    prompt_tokens = max(lengths, default=0)
    sampling, departures = effective_sampling(config, path, prompt_tokens)
    check_prompts_fit(lengths, rows, sampling, _model_context(path))
    print(f"eval {ref}: {len(rows)} questions, k {sorted(set(ks))}, max {sampling.max_tokens} new tokens")
    sampler = None
    if engine is not None:
        with ctx_progress_phase(progress, f"loading {ref} into the running engine"):
            if engine.cfg == sampling and engine.swap_model(path):
                sampler = engine
            else:
                engine.close()
    reused = sampler is not None
    if sampler is None:
        with ctx_progress_phase(progress, f"{sampling.backend} engine start for {ref}"):
            sampler = Sampler(path, sampling, seed=config.seed)
    try:
        with ctx_progress_phase(progress, f"sampling {ref}"):
            if progress is not None:
                sampler.heartbeat = progress.beat
            rendered = "\0".join(sampler.render(r["prompt"]) for r in rows)
            records = evaluate(sampler, ref, rows, ks, config.seed, config.correctness, sampling.batch_size)
            chat_template = sampler.tokenizer.chat_template or ""
            dtype = sampler.precision.as_dict() if sampler.precision else None  # None: the server's --dtype
    except BaseException:
        sampler.close()
        raise
    protocol = {
        "model_path": path,
        "model_sha256": store.hash_tree(path) if Path(path).exists() else f"hub:{path}",
        "sampling": sampling.model_dump(),
        "precision": dtype,
        "departures": departures,
        "chat_template_sha256": sha256_text(chat_template),
        "rendered_prompts_sha256": sha256_text(rendered),
        "max_prompt_tokens": prompt_tokens,
        "engine": "reused (weights swapped in)" if reused else "started",
    }
    return protocol, records, sampler


def run(config: Config, ctx: StepContext) -> StepResult:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from data import load_prompts

    rows = [dict(r) for r in load_prompts(list(config.prompts), split=config.split, template=config.template)]
    if config.general is not None:
        rows += general_eval.load_rows(config.general, config.split, config.template)
    rows, contamination = check_contamination(rows, ctx.run_dir, config.on_overlap)  # before any model loads
    if config.models and not rows:
        raise ValueError(
            f"no questions to evaluate: the {config.split} split of the sources is empty"
            + (f" after dropping {contamination['overlapping']} overlapping" if contamination["overlapping"] else "")
        )
    plan = k_plan(config, [r["data_source"] for r in rows])
    ks = [plan[r["data_source"]][0] for r in rows]
    results, records, general_records = {}, [], {}
    from pipeline import store

    done_dir = ctx.work_dir / "per_model"  # resume: a model evaluated before an interruption is kept
    done_dir.mkdir(exist_ok=True)
    engine = None  # the last model's open sampler: the next model of the same architecture reuses its engine
    try:
        for i, ref in enumerate(config.models):
            ctx.progress.update(i, len(config.models), "models")
            done = done_dir / f"{i}-{sha256_text(ref)[:12]}.json"
            if done.is_file():
                model_protocol, model_records = json.loads(done.read_text())
            else:
                model_protocol, model_records, engine = evaluate_model(
                    config, ref, ctx.resolve_model(ref), rows, ks, ctx.progress, engine=engine
                )
                # whole or not at all: a rerun reads it back as this model's results
                store.atomic_write_text(done, json.dumps([model_protocol, model_records]))
            model_records, general_records[ref] = general_eval.split_records(model_records)
            records += model_records
            results[ref] = {"protocol": model_protocol, **summarize_model(model_records, config.pass_k)}
            ctx.log_metrics(
                {"model": ref, **{k: v for k, v in results[ref]["overall"].items() if not k.endswith("_ci")}}
            )
    finally:
        if engine is not None:
            engine.close()  # before the judge loads: its memory is needed
    r1 = config.protocol == "r1"
    protocol = {
        "name": config.protocol,
        "k": {s: {"k": k, "from": why} for s, (k, why) in plan.items()},
        "temperature": R1_SAMPLING["temperature"] if r1 else config.sampling.temperature,
        "top_p": R1_SAMPLING["top_p"] if r1 else config.sampling.top_p,
        "max_tokens": R1_SAMPLING["max_tokens"] if r1 else config.sampling.max_tokens,  # requested; per model: sampling
        "seed": config.seed,
        "split": config.split,
        "template": config.template,
        "template_sha256": template_hash(),
        "eval_set_sha256": eval_set_hash(rows),
        "questions": len(rows),
        "questions_per_source": dict(sorted(Counter(r["data_source"] for r in rows).items())),
        "correctness": config.correctness,
        "pass@1": "mean correctness over the k samples of a question, averaged over questions",
        "pass@j": "unbiased estimator, Chen et al. 2021",
        "maj@k": "most frequent extracted answer (Wang et al. 2023)",
        "interval": CI_METHOD,
        "contamination": contamination,
        **environment(),
    }
    paired = paired_comparisons(config, ctx, records)
    general = None
    if config.general is not None:
        with ctx.progress.phase("judging general prompts"):
            general, general_samples = general_eval.evaluate(
                config.general,
                ctx.resolve_model(str(config.judge)),
                rows,
                general_records,
                list(config.models),
                pairs=[(p["a"], p["b"]) for p in paired],
            )
        general_table = pa.Table.from_pylist(general_samples)
        store.atomic_write(
            ctx.work_dir / "general_samples.parquet",
            lambda tmp: pq.write_table(general_table, tmp),
            needed=general_table.nbytes,
        )
    ctx.progress.update(len(config.models), len(config.models), "models")
    store.atomic_write_text(
        ctx.work_dir / "results.json",
        json.dumps(
            {"protocol": protocol, "models": results, "paired": paired, **({"general": general} if general else {})},
            indent=2,
        ),
    )
    schema = pa.schema(
        [
            ("model", pa.string()),
            ("question_id", pa.string()),
            ("data_source", pa.string()),
            ("domain", pa.string()),
            ("question", pa.string()),
            ("gold", pa.string()),
            ("k", pa.int64()),
            ("n_correct", pa.int64()),
            ("pass@1", pa.float64()),
            ("maj_answer", pa.string()),
            ("maj_correct", pa.bool_()),
            ("unverifiable", pa.int64()),
            ("samples", pa.string()),
        ]
    )
    table = pa.Table.from_pylist(records, schema=schema)
    store.atomic_write(ctx.work_dir / "samples.parquet", lambda tmp: pq.write_table(table, tmp), needed=table.nbytes)
    shutil.rmtree(done_dir)  # everything it held is in samples.parquet and results.json now
    metrics = {}
    scored = {m: r for m, r in results.items() if r["overall"].get("questions")}  # a general-only eval has no pass@1
    for ref, r in scored.items():
        o = r["overall"]
        metrics.update(
            {
                f"{ref}/pass@1": o["pass@1"],
                f"{ref}/pass@1_lo": o["pass@1_ci"][0],
                f"{ref}/pass@1_hi": o["pass@1_ci"][1],
                f"{ref}/maj@k": o["maj@k"],
                f"{ref}/format_rate": o["format_rate"],
                f"{ref}/mean_tokens": o["mean_tokens"],
                f"{ref}/truncation_rate": o["truncation_rate"],
            }
        )
    for p in paired:
        o, name = p["overall"], f"{p['a']} - {p['b']}"
        metrics.update(
            {
                f"{name}/pass@1_diff": o["diff"],
                f"{name}/diff_lo": o["diff_ci"][0],
                f"{name}/diff_hi": o["diff_ci"][1],
                f"{name}/wins": o["wins"],
                f"{name}/losses": o["losses"],
                f"{name}/p_value": o["p_value"],
            }
        )
    if general:
        metrics.update(general_eval.metrics(general))
    best = max(scored, key=lambda m: scored[m]["overall"]["pass@1"]) if scored else None
    from stages.common.sampling import sampling_precision

    return StepResult(
        precision=sampling_precision(config.sampling),
        outputs={"results": "results.json", "samples": "samples.parquet"},
        counts={"models": len(results), "questions": len(rows)},
        metrics=metrics,
        summary=f"{len(results)} models on {len(rows)} questions (k {sorted(set(ks)) or '-'})"
        + (f"; best pass@1: {best} {results[best]['overall']['pass@1']:.3f}" if best else "")
        + (general_eval.summary_line(general) if general else ""),
    )


def paired_comparisons(config: Config, ctx: StepContext, records: list[dict]) -> list[dict]:
    """The paired comparisons of the step (``Config.pairs``, ``pair_with_start``): one
    ``eval_results.compare`` block per pair with ``a``, ``b`` and ``why``. The model a step
    started from is its manifest's ``model`` input (``pipeline.store``'s run reader)."""
    from pipeline.store import RunFolder

    pairs = [(a, b, "configured") for a, b in config.pairs]
    if config.pair_with_start:
        finished = RunFolder(ctx.run_dir).finished()
        for ref in config.models:
            start = finished[ref].inputs.get("model") if ref in finished else None
            if start in config.models and start != ref and (ref, start) not in {(a, b) for a, b, _ in pairs}:
                pairs.append((ref, start, f"`{ref}` started from `{start}`"))
    by_model: dict[str, list[dict]] = defaultdict(list)
    for r in records:
        by_model[r["model"]].append(r)
    return [{"a": a, "b": b, "why": why, **eval_results.compare(by_model[a], by_model[b])} for a, b, why in pairs]


# ----------------------------------------------------------------------------- report and command line

REPORT = StageReport(
    glance=eval_results.glance, section=eval_results.report_section, summary_table=eval_results.summary_table
)


def commands(group, front) -> None:
    """``r1 eval``: ``run`` (the default: a config, or ``--model``/``--data`` shortcuts) and
    ``compare`` (two results question by question). ``front``: ``pipeline.stage.Front``."""
    import typer

    from pipeline import store
    from pipeline.config import apply_overrides, deep_merge, read_yaml

    kind = Config.model_fields["kind"].default

    @group.command("run")
    def run_command(
        config: Path | None = typer.Argument(None, help="A `kind: eval` config (optional with --model and --data)."),
        model: list[str] | None = typer.Option(
            None,
            "--model",
            help="Model to evaluate: step name of --run, alias, folder or hub id "
            "(repeatable; replaces the config's models).",
        ),
        data: list[str] | None = typer.Option(
            None,
            "--data",
            help="Eval set: reasoning_gym:<task> | humaneval | FILE.jsonl/.parquet | (hub:)NAME[:SUBSET] | "
            "'{source: ..., ...}' (repeatable; replaces the config's prompts).",
        ),
        protocol: str | None = typer.Option(
            None,
            "--protocol",
            help="`r1`: temperature 0.6, top-p 0.95, 32768 tokens, k per benchmark (R1 report); "
            "`config`: the config's sampling.",
        ),
        k: int | None = typer.Option(None, "--k", help="Samples per question (sampling.num_samples)."),
        seed: int | None = typer.Option(None, "--seed", help="Sampling seed (per-question seeds derive from it)."),
        run_name: str = typer.Option(
            "single",
            "--run",
            help="Run folder; models may name its finished steps; its training prompts are checked for overlap.",
        ),
        step: str | None = typer.Option(
            None, "--step", help="Step folder name (default: eval, or eval-<hash> for --model/--data evals)."
        ),
        force: bool = typer.Option(
            False,
            "--force",
            help="Rerun even if up to date (unfinished work of the same config and inputs still resumes; "
            "delete runs/RUN/.partial/STEP to start over).",
        ),
        overrides: list[str] | None = front.set_option,
    ) -> None:
        from data.spec import source_from_spec

        if config is None and not (model and data):
            front.fail(
                "give a `kind: eval` config file, or --model and --data (e.g. r1 eval --model tiny-random-llama "
                "--data reasoning_gym:chain_sum)"
            )
        try:
            raw = read_yaml(config) if config else {"kind": kind}
            cli: dict = {}
            if model:
                cli["models"] = list(model)
            if data:
                cli["prompts"] = [source_from_spec(d, split="test") for d in data]
            if protocol:
                cli["protocol"] = protocol
            if k:
                cli["sampling"] = {"num_samples": k}
            if seed is not None:
                cli["seed"] = seed
            raw = apply_overrides(deep_merge(raw, cli), overrides)
        except ValueError as err:  # ConfigError, or a --data spec that is refused or not valid YAML
            front.fail(str(err))
        name = step or (kind if not (model or data) else f"{kind}-{store.canonical_hash(raw)[:8]}")
        front.run_config(raw, str(config or f"r1 {kind}"), kind, run=run_name, step=name, force=force)
        print(f"results: {store.runs_root() / run_name / name}/results.json, samples.parquet")

    run_command.__doc__ = (__doc__ or kind).strip().split("\n\n")[0] + (
        "\n\nAlso: `r1 eval compare A B` pairs two results question by question (see `r1 eval compare --help`)."
    )
    group.command("compare")(eval_results.compare_command(front))

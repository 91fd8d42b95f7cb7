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
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import platform
import re
import shutil
import sys
from collections import Counter, defaultdict
from pathlib import Path
from typing import ClassVar, Literal

from pydantic import field_validator, model_validator

from data import PromptSource
from data.prompts import Template, question_of
from pipeline.stage import StageConfig, StepContext, StepResult
from stages.common.sampling import SamplingConfig

CI_METHOD = "95% percentile bootstrap over questions (1000 resamples, resampling seed 0)"
PAIRED_TEST = ("exact two-sided sign test on per-question pass@1 (ties dropped; = exact McNemar "
               "when k = 1) + 95% paired bootstrap interval of the pass@1 difference")
# DeepSeek-R1 report, sec. 3 ("Evaluation Setup"): k per benchmark, T = 0.6, top-p 0.95, 32768 tokens.
R1_K = {"aime": 64, "math 500": 4, "gpqa": 8, "livecodebench": 16, "lcb": 16}
R1_SAMPLING = {"temperature": 0.6, "top_p": 0.95, "max_tokens": 32768}
EVAL_SAMPLING = {"num_samples": 4, "temperature": 0.6, "top_p": 0.95, "max_tokens": 256}  # CPU-sized defaults


class Config(StageConfig):
    """Config of the eval stage. Defaults follow R1's protocol where a CPU allows it
    (temperature 0.6, top-p 0.95); k and max_tokens are small here and always recorded."""

    kind: Literal["eval"] = "eval"
    input_fields: ClassVar[dict[str, str]] = {"models": "model"}
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
    seed: int = 1234  # per-question sampling seeds derive from it (stages/common/sampling.py)

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
        # A server serves one model: several models would all be answered by it, under their names.
        if self.sampling.backend == "server" and len(self.models) > 1:
            raise ValueError(f"sampling.backend 'server' samples the one model behind server_url, but `models` "
                             f"lists {len(self.models)}; evaluate one model per eval step (and server)")
        return self


# ----------------------------------------------------------------------------- statistics


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k of one question from ``n`` samples of which ``c`` are correct:
    ``1 - C(n-c, k) / C(n, k)``, the probability that at least one of k samples drawn without
    replacement is correct (Chen et al. 2021, "Evaluating Large Language Models Trained on
    Code", eq. 1 and their numerically stable product form).

    >>> pass_at_k(4, 1, 1), pass_at_k(4, 1, 4), round(pass_at_k(10, 3, 2), 4)
    (0.25, 1.0, 0.5333)

    Raises:
        ValueError: unless 0 <= c <= n and 1 <= k <= n.
    """
    if not (0 <= c <= n and 1 <= k <= n):
        raise ValueError(f"pass_at_k needs 0 <= c <= n and 1 <= k <= n; got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    return 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))


def bootstrap_ci(values, resamples: int = 1000, seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``values`` (one value per question).

    Questions are resampled with replacement, so the k samples of a question stay together
    (Efron & Tibshirani 1993, ch. 13). Deterministic for a given ``seed``. Empty input -> (nan, nan).

    >>> bootstrap_ci([1.0] * 5)
    (1.0, 1.0)
    """
    import numpy as np

    x = np.asarray(list(values), dtype=float)
    if x.size == 0:
        return (math.nan, math.nan)
    rng = np.random.default_rng(seed)
    chunk = max(1, 2_000_000 // x.size)  # bound the index matrix to ~16 MB
    means = np.concatenate([x[rng.integers(0, x.size, size=(min(chunk, resamples - i), x.size))].mean(axis=1)
                            for i in range(0, resamples, chunk)])
    lo, hi = np.percentile(means, [50 * (1 - level), 50 * (1 + level)])
    return (float(lo), float(hi))


def sign_test(wins: int, losses: int) -> float:
    """Exact two-sided sign test: p-value of ``wins`` vs ``losses`` under "each non-tied question
    is equally likely to go either way" (Binomial(wins + losses, 1/2); ties are dropped).
    Equals the exact McNemar test when each question is one pass/fail trial.

    >>> sign_test(0, 0), sign_test(5, 5), round(sign_test(9, 1), 4)
    (1.0, 1.0, 0.0215)
    """
    n = wins + losses
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(wins, losses) + 1))
    return min(1.0, 2 * tail / 2**n)


# ----------------------------------------------------------------------------- per question


def vote_key(text: str, domain: str) -> str | None:
    """The final answer a sample votes for in ``maj@k``: the answer region graded by the
    rewards (``rewards.text.answer_region``: last ``<answer>`` block after ``</think>``); for
    math its graded candidate (last ``\\boxed{}``, else the short answer, as
    ``rewards.math.answer_candidate``); whitespace collapsed, lower-cased. None = no answer.
    Answers are clustered by this string, not by mathematical equivalence (``1/2`` and
    ``0.5`` are two votes).

    >>> vote_key("<think>hm</think><answer> 42 </answer>", "math")
    '\\\\boxed{42}'
    >>> vote_key("<think>never closed", "math") is None
    True
    """
    from rewards.math import answer_candidate
    from rewards.text import answer_region

    region = answer_region(text)
    if region is None:
        return None
    key = answer_candidate(region) if domain == "math" else region
    key = " ".join((key or "").split()).lower()
    return key or None


def majority_vote(keys: list[str | None], correct: list[bool]) -> tuple[str | None, bool]:
    """``maj@k`` of one question (self-consistency, Wang et al. 2023): the most frequent
    non-empty answer and whether it is correct. Ties go to the answer seen first (lowest sample
    index), so the result is deterministic; no answer at all -> (None, False).

    >>> majority_vote(["a", "b", "b", None], [True, False, False, False])
    ('b', False)
    """
    votes = Counter(k for k in keys if k is not None)
    if not votes:
        return None, False
    top = max(votes, key=lambda k: (votes[k], -keys.index(k)))
    return top, next(c for k, c in zip(keys, correct) if k == top)


def question_record(model: str, row: dict, samples: list[dict], correctness: str) -> dict:
    """One row of ``samples.parquet``: a question's k samples (text, num_tokens, truncated,
    rewards) and their per-question metrics."""
    correct = [(s["rewards"].get(correctness) or 0.0) >= 1.0 for s in samples]
    keys = [vote_key(s["text"], row["domain"]) for s in samples]
    for s, key, ok in zip(samples, keys, correct):
        s["answer"], s["correct"] = key, ok
    maj_answer, maj_correct = majority_vote(keys, correct)
    return {
        "model": model, "question_id": row["id"], "data_source": row["data_source"], "domain": row["domain"],
        "question": question_of(row["prompt"]), "gold": row["answer"], "k": len(samples),
        "n_correct": sum(correct), "pass@1": sum(correct) / len(samples),
        "maj_answer": maj_answer, "maj_correct": maj_correct,
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
    out: dict = {"questions": len(records), "samples": len(samples),
                 "k": k_min if k_min == max(r["k"] for r in records) else f"{k_min}-{max(r['k'] for r in records)}"}
    per_q = {"pass@1": [r["pass@1"] for r in records], "maj@k": [float(r["maj_correct"]) for r in records]}
    js = sorted(set(pass_k) if pass_k else {2**i for i in range(1, k_min.bit_length())} | {k_min})
    for j in js:
        if 1 < j <= k_min:
            per_q[f"pass@{j}"] = [pass_at_k(r["k"], r["n_correct"], j) for r in records]
    for name, values in per_q.items():
        out[name] = float(np.mean(values))
        out[f"{name}_ci"] = list(bootstrap_ci(values))
    out.update({
        "format_rate": float(np.mean([(s["rewards"].get("format") or 0.0) >= 1.0 for s in samples])),
        "mean_tokens": float(tokens.mean()), "p50_tokens": float(np.percentile(tokens, 50)),
        "p90_tokens": float(np.percentile(tokens, 90)),
        "truncation_rate": float(np.mean([s["truncated"] for s in samples])),
        "unverifiable_rate": sum(r["unverifiable"] for r in records) / len(samples),
    })
    return out


def summarize_model(records: list[dict], pass_k: list[int]) -> dict:
    """``{"overall", "per_domain", "per_source"}`` metrics of one model's question records."""
    by_domain, by_source = defaultdict(list), defaultdict(list)
    for r in records:
        by_domain[r["domain"]].append(r)
        by_source[r["data_source"]].append(r)
    return {"overall": summarize(records, pass_k),
            "per_domain": {d: summarize(rs, pass_k) for d, rs in sorted(by_domain.items())},
            "per_source": {s: summarize(rs, pass_k) for s, rs in sorted(by_source.items())}}


# ----------------------------------------------------------------------------- protocol


def r1_k(data_source: str) -> int | None:
    """The R1 report's k for a benchmark named in ``data_source`` (AIME 64, MATH-500 4, GPQA 8,
    LiveCodeBench 16), else None. Names are matched as whole words (letters and digits split:
    ``aime24`` -> ``aime 24``), so ``file:claimed`` is not AIME.

    >>> r1_k("HuggingFaceH4/MATH-500"), r1_k("file:aime24"), r1_k("file:claimed"), r1_k("reasoning_gym/countdown")
    (4, 64, None, None)
    """
    words = re.findall(r"[a-z]+|\d+", data_source.lower())
    pairs = {" ".join(words[i:i + 2]) for i in range(len(words))}
    return next((k for key, k in R1_K.items() if key in words or key in pairs), None)


def k_plan(config: Config, sources: list[str]) -> dict[str, tuple[int, str]]:
    """data_source -> (k, where that k comes from)."""
    plan = {}
    for source in sorted(set(sources)):
        if source in config.k_per_source:
            plan[source] = (config.k_per_source[source], "k_per_source")
        elif config.protocol == "r1" and r1_k(source) is not None:
            plan[source] = (r1_k(source), "R1 report")
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
        departures.append(f"max_tokens {R1_SAMPLING['max_tokens']} (R1) capped to {max_tokens}: the model's "
                          f"context is {context} tokens and the longest prompt {prompt_tokens}")
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

    return {"python": platform.python_version(), "packages": store.package_versions(),
            "git_commit": store.git_commit(), "platform": sys.platform}


# ----------------------------------------------------------------------------- contamination


class ContaminationError(ValueError):
    """The eval set overlaps the training prompts of the same run."""


def training_prompts(run_dir: Path) -> tuple[dict[str, tuple[str, str]], list[str]]:
    """Training prompts of a run: ``id -> (data_source, question)`` over the prompt sources of
    its ``generate`` and ``grpo`` steps (finished steps' manifest ``config``; unfinished steps'
    ``config.yaml``), loaded with their own split (``train`` for grpo). Also returns the step
    names read."""
    import yaml

    from data import load_prompts
    from pipeline import store

    configs = {}
    for folder in sorted(p for p in run_dir.glob(".partial/*") if (p / "config.yaml").is_file()):
        configs[folder.name] = yaml.safe_load((folder / "config.yaml").read_text())
    for folder in sorted(p for p in run_dir.iterdir() if p.is_dir()) if run_dir.is_dir() else []:
        manifest = store.read_manifest(folder)
        if manifest:
            configs[folder.name] = manifest.get("config", {})
    prompts, steps = {}, []
    for step, cfg in configs.items():
        if not isinstance(cfg, dict) or cfg.get("kind") not in ("generate", "grpo") or not cfg.get("prompts"):
            continue
        steps.append(step)
        for row in load_prompts(cfg["prompts"], split=cfg.get("split", "train")):
            prompts[row["id"]] = (row["data_source"], question_of(row["prompt"]))
    return prompts, steps


_WORD = re.compile(r"\w+")  # the normalisation of data.decontam: lower-cased \w+ words
TEMPLATE_N = 4  # template detection works on word 4-grams


def template_ngrams(texts_by_source: dict[str, set[str]], min_texts: int = 3, min_share: float = 0.01) -> set:
    """Word 4-grams that are task text, not content: found, within one data source, in at
    least ``max(min_texts, min_share * texts of that source)`` distinct questions.

    Counted per source, so a procedural task's instructions ("State the final answer to the
    following arithmetic problem:") are template even when that task is a small part of the
    mix, while a natural-language set only loses its truly common phrases."""
    from data.decontam import word_ngrams

    template = set()
    for texts in texts_by_source.values():
        counts = Counter(g for t in texts for g in word_ngrams(t, TEMPLATE_N))
        floor = max(min_texts, min_share * len(texts))
        template |= {g for g, c in counts.items() if c >= floor}
    return template


def content_ngrams(text: str, template: set, n: int = 8) -> set[tuple[str, ...]]:
    """Word n-grams of ``text`` made only of content words: words covered by a template
    4-gram are cut out and n-grams never span a cut.

    Why not plain 8-grams (``data.ngram_overlap``): reasoning-gym questions are a fixed
    sentence plus a few numbers or names, so an 8-gram of 7 template words and one number
    ("... arithmetic problem: 62") links unrelated questions (26 of the recipe's 105 held-out
    questions matched a training question that way, none of them a real copy).

    >>> sorted(content_ngrams("a b c d e f", {("a", "b", "c", "d")}, n=2))
    [('e', 'f')]
    """
    words = _WORD.findall(text.lower())
    masked = [False] * len(words)
    for i in range(len(words) - TEMPLATE_N + 1):
        if tuple(words[i:i + TEMPLATE_N]) in template:
            masked[i:i + TEMPLATE_N] = [True] * TEMPLATE_N
    grams: set = set()
    run: list[str] = []
    for word, cut in zip([*words, ""], [*masked, True]):
        if cut:
            grams |= {tuple(run[i:i + n]) for i in range(len(run) - n + 1)}
            run = []
        else:
            run.append(word)
    return grams


def overlap(eval_rows: list[dict], train: dict[str, tuple[str, str]], n: int = 8) -> dict[str, list[str]]:
    """Eval ids that overlap training prompts (``id -> (data_source, question)``), by check:
    ``id`` (same id); ``exact`` (same question after lower-casing and collapsing whitespace:
    short arithmetic questions have no 8-gram); ``ngram`` (a shared word n-gram of content
    words, ``content_ngrams``; templates are learnt from both sets, ``template_ngrams``)."""
    def norm(text: str) -> str:
        return " ".join(text.lower().split())

    questions = {r["id"]: (r["data_source"], question_of(r["prompt"])) for r in eval_rows}
    by_source: dict[str, set[str]] = defaultdict(set)
    for source, text in [*train.values(), *questions.values()]:
        by_source[source].add(text)
    template = template_ngrams(by_source)
    train_grams = set().union(*(content_ngrams(t, template, n) for _, t in train.values()))
    train_norm = {norm(t) for _, t in train.values()}
    return {"id": [i for i in questions if i in train],
            "exact": [i for i, (_, q) in questions.items() if norm(q) in train_norm],
            "ngram": [i for i, (_, q) in questions.items() if not train_grams.isdisjoint(content_ngrams(q, template, n))]}


def check_contamination(eval_rows: list[dict], run_dir: Path, on_overlap: str = "error") -> tuple[list[dict], dict]:
    """Check ``eval_rows`` against the run's training prompts (``training_prompts``, ``overlap``).

    ``on_overlap``: ``error`` raises; ``drop`` removes the overlapping questions (the result is
    on the clean subset); ``allow`` keeps them (the result is marked contaminated).

    Returns:
        (the rows to evaluate, a record for the protocol: steps checked, training prompt
        count, overlapping ids per check, what was done).

    Raises:
        ContaminationError: an overlap with ``on_overlap="error"``.
    """
    train, steps = training_prompts(run_dir)
    found = overlap(eval_rows, train)
    bad = sorted({i for ids in found.values() for i in ids})
    record = {"steps": steps, "training_prompts": len(train), "overlapping": len(bad),
              "by_check": {k: len(v) for k, v in found.items()}, "ids": bad, "on_overlap": on_overlap}
    if bad and on_overlap == "error":
        detail = ", ".join(f"{k}: {len(v)}" for k, v in found.items())
        raise ContaminationError(
            f"{len(bad)} of {len(eval_rows)} eval questions overlap the training prompts of run "
            f"{run_dir.name!r} (steps {', '.join(steps)}; {detail}), e.g. {bad[:3]}. Evaluate on the "
            "test split of the same sources (same seeds) or another set; or set on_overlap: drop (evaluate "
            "the clean questions only) or allow (measure training-set accuracy on purpose)")
    if on_overlap == "drop":
        dropped = set(bad)
        eval_rows = [r for r in eval_rows if r["id"] not in dropped]
    return eval_rows, record


# ----------------------------------------------------------------------------- sampling


def sample_questions(sampler, rows: list[dict], ks: list[int], seed: int, batch_size: int = 64) -> list[list]:
    """``ks[i]`` completions for ``rows[i]`` from an open ``stages.common.sampling.Sampler``, with the
    per-question seeds of ``seed``: one engine serves every k and seed (an engine start costs
    ~25 s). The Sampler reads k and the seed from its attributes at each call and its engine
    settings do not depend on them, so they are set here per call and restored."""
    out: list = [None] * len(rows)
    saved = sampler.cfg, sampler.seed
    try:
        sampler.seed = seed
        for k in sorted(set(ks)):
            sampler.cfg = saved[0].model_copy(update={"num_samples": k})
            idx = [i for i, kk in enumerate(ks) if kk == k]
            for b in range(0, len(idx), batch_size):
                part = idx[b:b + batch_size]
                for i, completions in zip(part, sampler.sample([rows[i]["prompt"] for i in part],
                                                               [rows[i]["id"] for i in part])):
                    out[i] = completions
    finally:
        sampler.cfg, sampler.seed = saved
    return out


def evaluate(sampler, model: str, rows: list[dict], ks: list[int], seed: int, correctness: str = "accuracy",
             batch_size: int = 64) -> list[dict]:
    """Sample, score (``correctness`` and ``format`` rewards) and summarise every question:
    one ``question_record`` per row, in row order."""
    from stages.generate import score

    outs = sample_questions(sampler, rows, ks, seed, batch_size)
    flat_rows = [r for r, cs in zip(rows, outs) for _ in cs]
    names = list(dict.fromkeys([correctness, "format"]))
    scores = score(names, flat_rows, [c.text for cs in outs for c in cs])
    records, j = [], 0
    for row, cs in zip(rows, outs):
        samples = []
        for c in cs:
            samples.append({"text": c.text, "num_tokens": c.num_tokens, "truncated": c.truncated,
                            "rewards": {n: scores[n][j] for n in names}})
            j += 1
        records.append(question_record(model, row, samples, correctness))
    return records


def max_prompt_tokens(tokenizer, rows: list[dict]) -> int:
    """Tokens of the longest prompt as the engine sees it (chat template applied to messages)."""
    def length(prompt) -> int:
        if isinstance(prompt, str):
            return len(tokenizer(prompt)["input_ids"])
        return len(tokenizer.apply_chat_template(prompt, tokenize=True, add_generation_prompt=True,
                                                 return_dict=True)["input_ids"])

    return max(map(length, (r["prompt"] for r in rows)), default=0)


def evaluate_model(config: Config, ref: str, path: str, rows: list[dict], ks: list[int]) -> tuple[dict, list[dict]]:
    """One model: its protocol block (hashes, sampling actually used) and question records."""
    from transformers import AutoTokenizer

    from pipeline import store
    from stages.common.sampling import Sampler

    prompt_tokens = max_prompt_tokens(AutoTokenizer.from_pretrained(path), rows)
    sampling, departures = effective_sampling(config, path, prompt_tokens)
    print(f"eval {ref}: {len(rows)} questions, k {sorted(set(ks))}, max {sampling.max_tokens} new tokens")
    with Sampler(path, sampling, seed=config.seed) as sampler:
        rendered = "\0".join(sampler.render(r["prompt"]) for r in rows)
        records = evaluate(sampler, ref, rows, ks, config.seed, config.correctness, sampling.batch_size)
        chat_template = sampler.tokenizer.chat_template or ""
        dtype = sampler.precision.as_dict() if sampler.precision else None  # None: the server's --dtype
    protocol = {"model_path": path, "model_sha256": store.hash_tree(path) if Path(path).exists() else f"hub:{path}",
                "sampling": sampling.model_dump(), "precision": dtype, "departures": departures,
                "chat_template_sha256": sha256_text(chat_template), "rendered_prompts_sha256": sha256_text(rendered),
                "max_prompt_tokens": prompt_tokens}
    return protocol, records


def run(config: Config, ctx: StepContext) -> StepResult:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from data import load_prompts

    rows = [dict(r) for r in load_prompts(list(config.prompts), split=config.split, template=config.template)]
    rows, contamination = check_contamination(rows, ctx.run_dir, config.on_overlap)  # before any model loads
    if config.models and not rows:
        raise ValueError(f"no questions to evaluate: the {config.split} split of the sources is empty"
                         + (f" after dropping {contamination['overlapping']} overlapping" if contamination["overlapping"] else ""))
    plan = k_plan(config, [r["data_source"] for r in rows])
    ks = [plan[r["data_source"]][0] for r in rows]
    results, records = {}, []
    done_dir = ctx.work_dir / "per_model"  # resume: a model evaluated before an interruption is kept
    done_dir.mkdir(exist_ok=True)
    for i, ref in enumerate(config.models):
        done = done_dir / f"{i}-{sha256_text(ref)[:12]}.json"
        if done.is_file():
            model_protocol, model_records = json.loads(done.read_text())
        else:
            model_protocol, model_records = evaluate_model(config, ref, ctx.resolve_model(ref), rows, ks)
            done.write_text(json.dumps([model_protocol, model_records]))
        records += model_records
        results[ref] = {"protocol": model_protocol, **summarize_model(model_records, config.pass_k)}
        ctx.log_metrics({"model": ref, **{k: v for k, v in results[ref]["overall"].items() if not k.endswith("_ci")}})
    r1 = config.protocol == "r1"
    protocol = {
        "name": config.protocol, "k": {s: {"k": k, "from": why} for s, (k, why) in plan.items()},
        "temperature": R1_SAMPLING["temperature"] if r1 else config.sampling.temperature,
        "top_p": R1_SAMPLING["top_p"] if r1 else config.sampling.top_p,
        "max_tokens": R1_SAMPLING["max_tokens"] if r1 else config.sampling.max_tokens,  # requested; per model: sampling
        "seed": config.seed, "split": config.split, "template": config.template, "template_sha256": template_hash(),
        "eval_set_sha256": eval_set_hash(rows), "questions": len(rows),
        "questions_per_source": dict(sorted(Counter(r["data_source"] for r in rows).items())),
        "correctness": config.correctness, "pass@1": "mean correctness over the k samples of a question, averaged over questions",
        "pass@j": "unbiased estimator, Chen et al. 2021", "maj@k": "most frequent extracted answer (Wang et al. 2023)",
        "interval": CI_METHOD, "contamination": contamination, **environment(),
    }
    (ctx.work_dir / "results.json").write_text(json.dumps({"protocol": protocol, "models": results}, indent=2))
    schema = pa.schema([("model", pa.string()), ("question_id", pa.string()), ("data_source", pa.string()),
                        ("domain", pa.string()), ("question", pa.string()), ("gold", pa.string()), ("k", pa.int64()),
                        ("n_correct", pa.int64()), ("pass@1", pa.float64()), ("maj_answer", pa.string()),
                        ("maj_correct", pa.bool_()), ("unverifiable", pa.int64()), ("samples", pa.string())])
    pq.write_table(pa.Table.from_pylist(records, schema=schema), ctx.work_dir / "samples.parquet")
    shutil.rmtree(done_dir)  # everything it held is in samples.parquet and results.json now
    metrics = {}
    for ref, r in results.items():
        o = r["overall"]
        metrics.update({f"{ref}/pass@1": o["pass@1"], f"{ref}/pass@1_lo": o["pass@1_ci"][0],
                        f"{ref}/pass@1_hi": o["pass@1_ci"][1], f"{ref}/maj@k": o["maj@k"],
                        f"{ref}/format_rate": o["format_rate"], f"{ref}/mean_tokens": o["mean_tokens"],
                        f"{ref}/truncation_rate": o["truncation_rate"]})
    best = max(results, key=lambda m: results[m]["overall"]["pass@1"]) if results else None
    from stages.common.sampling import sampling_precision

    return StepResult(precision=sampling_precision(config.sampling),
                      outputs={"results": "results.json", "samples": "samples.parquet"},
                      counts={"models": len(results), "questions": len(rows)}, metrics=metrics,
                      summary=f"{len(results)} models on {len(rows)} questions (k {sorted(set(ks)) or '-'})"
                              + (f"; best pass@1: {best} {results[best]['overall']['pass@1']:.3f}" if best else ""))


# ----------------------------------------------------------------------------- compare


def load_records(where: str | Path, model: str | None = None) -> tuple[list[dict], dict, str]:
    """Question records of one model from an eval output (a step folder holding
    ``samples.parquet`` or the file itself). ``model`` picks one of several; with one model it
    may be None. Returns ``(records, protocol, model)``.

    Raises:
        FileNotFoundError: no ``samples.parquet``. KeyError: ``model`` absent or ambiguous (lists models).
        ValueError: ``samples.parquet`` or ``results.json`` is unreadable, or not an eval step's
            (the message names the file).
    """
    import pyarrow.parquet as pq

    path = Path(where)
    parquet = path / "samples.parquet" if path.is_dir() else path
    if not parquet.is_file():
        raise FileNotFoundError(f"no eval results at {path} (expected samples.parquet)")
    try:
        rows = pq.read_table(parquet).to_pylist()  # ArrowInvalid is a ValueError
    except (OSError, ValueError) as err:
        raise ValueError(f"{parquet}: not a readable parquet file ({err})") from None
    if rows and "model" not in rows[0]:
        raise ValueError(f"{parquet}: not an eval step's samples (no 'model' column; columns: "
                         f"{', '.join(rows[0])})")
    models = list(dict.fromkeys(r["model"] for r in rows))
    if model is None and len(models) == 1:
        model = models[0]
    if model not in models:
        raise KeyError(f"{parquet}: {'choose a model' if model is None else f'no model {model!r}'} "
                       f"(add #MODEL to the path); models: {', '.join(models) or '(none)'}")
    results_file = parquet.parent / "results.json"
    protocol = {}
    if results_file.is_file():
        try:
            data = json.loads(results_file.read_text())
        except ValueError as err:
            raise ValueError(f"{results_file}: not valid JSON ({err})") from None
        protocol = {**data.get("protocol", {}), **data.get("models", {}).get(model, {}).get("protocol", {})}
    return [r for r in rows if r["model"] == model], protocol, model


PROTOCOL_KEYS = ("k", "temperature", "top_p", "max_tokens", "template_sha256", "eval_set_sha256",
                 "rendered_prompts_sha256", "correctness", "packages")


def compare(a: list[dict], b: list[dict]) -> dict:
    """Pair two models' question records by question id and test the pass@1 difference.

    A question is a win for A when A's per-question pass@1 is higher, a loss when lower, a tie
    otherwise. The p-value is the exact two-sided sign test (``sign_test``); the interval is a
    95% paired bootstrap over questions of mean(A) - mean(B). Also per data source.

    Returns:
        ``{"overall": {...}, "per_source": {...}, "only_a": n, "only_b": n}``; each group has
        questions, pass@1 of a and b, diff, diff_ci, wins, losses, ties, p_value.
    """
    bmap = {r["question_id"]: r for r in b}
    pairs = [(r, bmap[r["question_id"]]) for r in a if r["question_id"] in bmap]

    def group(ps: list) -> dict:
        d = [x["pass@1"] - y["pass@1"] for x, y in ps]
        wins, losses = sum(v > 0 for v in d), sum(v < 0 for v in d)
        n = len(ps)
        return {"questions": n, "a": sum(x["pass@1"] for x, _ in ps) / n if n else math.nan,
                "b": sum(y["pass@1"] for _, y in ps) / n if n else math.nan,
                "diff": sum(d) / n if n else math.nan, "diff_ci": list(bootstrap_ci(d)),
                "wins": wins, "losses": losses, "ties": n - wins - losses, "p_value": sign_test(wins, losses)}

    by_source = defaultdict(list)
    for p in pairs:
        by_source[p[0]["data_source"]].append(p)
    return {"overall": group(pairs), "per_source": {s: group(ps) for s, ps in sorted(by_source.items())},
            "only_a": len(a) - len(pairs), "only_b": len({r["question_id"] for r in b} - {r["question_id"] for r in a}),
            "test": PAIRED_TEST}


def protocol_differences(pa_: dict, pb: dict) -> list[str]:
    """Protocol fields that differ between two results (a comparison across them is suspect)."""
    return [f"{k}: {pa_.get(k)!r} vs {pb.get(k)!r}" for k in PROTOCOL_KEYS
            if k in pa_ and k in pb and pa_[k] != pb[k]]


# ----------------------------------------------------------------------------- CLI helpers


def source_from_spec(spec: str) -> dict:
    """An eval-set source from ``r1 eval --data SPEC``: a YAML mapping (``{source: ..., ...}``,
    exact control), ``humaneval``, ``reasoning_gym:<task>`` (n_train 512, n_test 50, seed 0),
    a ``.jsonl``/``.parquet`` file (records without a ``split`` field are test rows), or a hub
    dataset ``[hub:]<name>[:<subset>]`` (its ``test`` split).

    >>> source_from_spec("reasoning_gym:countdown")["n_test"], source_from_spec("x.jsonl")["split"]
    (50, 'test')

    Raises:
        ValueError: a ``{...}`` spec that is not valid YAML.
    """
    import yaml

    from data.sources.files import SUFFIXES

    if spec.lstrip().startswith("{"):
        try:
            return yaml.safe_load(spec)
        except yaml.YAMLError as err:
            raise ValueError(f"--data {spec!r}: not a YAML mapping ({err.problem})") from None
    if spec == "humaneval":
        return {"source": "humaneval"}
    if spec.startswith("reasoning_gym:"):
        return {"source": "reasoning_gym", "task": spec.split(":", 1)[1], "n_train": 512, "n_test": 50, "seed": 0}
    if Path(spec).suffix in SUFFIXES:
        return {"source": "file", "path": spec, "split": "test"}
    name, _, subset = spec.removeprefix("hub:").partition(":")
    return {"source": "hub", "name": name, "subset": subset or None, "splits": {"test": "test"}}


def find_results(spec: str, run_dir: Path) -> tuple[list[dict], dict, str, str]:
    """Resolve one side of ``r1 eval compare``: ``WHERE[#MODEL]`` with WHERE an eval step
    folder, a ``samples.parquet`` file or an eval step name of the run; or a model reference
    (alias, step name, path) evaluated by one of the run's eval steps (the newest one wins).
    Returns ``(records, protocol, model, where)``.

    Raises:
        FileNotFoundError: nothing matches (names the eval steps and models of the run).
    """
    from pipeline import store

    where, _, model = spec.partition("#")
    for candidate in (Path(where), run_dir / where):
        if candidate.exists() and (candidate.is_file() or (candidate / "samples.parquet").is_file()):
            records, protocol, name = load_records(candidate, model or None)
            return records, protocol, name, str(candidate)
    evals = sorted((m.get("started", 0), p) for p in run_dir.iterdir() if p.is_dir()
                   for m in [store.read_manifest(p)] if m and m.get("kind") == "eval") if run_dir.is_dir() else []
    seen = []
    for _, folder in reversed(evals):
        try:
            records, protocol, name = load_records(folder, spec)
            return records, protocol, name, str(folder)
        except (KeyError, FileNotFoundError, ValueError):  # ValueError: this step's files are unreadable
            import pyarrow.parquet as pq

            with contextlib.suppress(OSError, ValueError, KeyError):
                seen += [f"{folder.name}#{m}" for m in dict.fromkeys(pq.read_table(folder / "samples.parquet",
                                                                                    columns=["model"])["model"].to_pylist())]
    raise FileNotFoundError(f"no eval results for {spec!r} in {run_dir}; evaluated: {', '.join(seen) or '(nothing)'}")

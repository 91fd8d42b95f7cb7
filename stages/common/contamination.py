"""The contamination guard of the eval stage: eval questions checked against a run's training prompts.

A result on questions the model was trained on measures memory, not reasoning. Before any
model is loaded, the eval questions are compared with the training prompts of the same run
(``training_prompts``) by id, by exact question and by word 8-grams of content words
(``overlap``; task instructions shared by many questions are cut out first). What an overlap
does is the eval config's ``on_overlap``: an error, drop those questions, or allow them and
mark the result contaminated (``check_contamination``).
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from data.decontam import content_ngrams, template_ngrams
from data.prompts import question_of

TEMPLATE_MIN_TEXTS = 3  # a word 4-gram in this many questions of one source is task text


class ContaminationError(ValueError):
    """The eval set overlaps the training prompts of the same run."""


def training_prompts(run_dir: Path) -> tuple[dict[str, tuple[str, str]], list[str]]:
    """Training prompts of a run: ``id -> (data_source, question)`` over every step whose stage
    declares training prompts (``StageConfig.training_prompt_fields``: by default every field
    holding prompt sources, so a new stage that trains on prompts is checked without naming
    it here), finished or not (``pipeline.store.RunFolder``: the manifest's config, else the
    partial ``config.yaml``), each loaded with its step's ``split`` (default ``train``). Also
    returns the names of the steps read."""
    import stages
    from data import load_prompts
    from pipeline import store

    prompts, steps = {}, []
    for step in store.RunFolder(run_dir).steps():
        cfg = step.config
        try:
            fields = stages.get(cfg.get("kind", "")).Config.training_prompt_fields()
        except KeyError:  # a kind this code does not know (or a damaged config): nothing to read
            continue
        values = [cfg.get(name) for name in fields]
        sources = [s for v in values for s in (v if isinstance(v, list) else [v] if v else [])]
        if not sources:
            continue
        steps.append(step.name)
        for row in load_prompts(sources, split=cfg.get("split", "train")):
            prompts[row["id"]] = (row["data_source"], question_of(row["prompt"]))
    return prompts, sorted(steps)


def overlap(eval_rows: list[dict], train: dict[str, tuple[str, str]], n: int = 8) -> dict[str, list[str]]:
    """Eval ids that overlap training prompts (``id -> (data_source, question)``), by check:
    ``id`` (same id); ``exact`` (same question after lower-casing and collapsing whitespace:
    short arithmetic questions have no 8-gram); ``ngram`` (a shared word n-gram of content
    words, ``data.decontam.content_ngrams``; template 4-grams are learnt per data source from
    both sets, ``data.decontam.template_ngrams``).

    Why not plain 8-grams (``data.ngram_overlap``): reasoning-gym questions are a fixed
    sentence plus a few numbers or names, so an 8-gram of 7 template words and one number
    ("... arithmetic problem: 62") links unrelated questions (26 of the recipe's 105 held-out
    questions matched a training question that way, none of them a real copy)."""

    def norm(text: str) -> str:
        return " ".join(text.lower().split())

    questions = {r["id"]: (r["data_source"], question_of(r["prompt"])) for r in eval_rows}
    by_source: dict[str, set[str]] = defaultdict(set)
    for source, text in [*train.values(), *questions.values()]:
        by_source[source].add(text)
    template = template_ngrams(by_source.values(), TEMPLATE_MIN_TEXTS)
    train_grams = set().union(*(content_ngrams(t, template, n) for _, t in train.values()))
    train_norm = {norm(t) for _, t in train.values()}
    return {
        "id": [i for i in questions if i in train],
        "exact": [i for i, (_, q) in questions.items() if norm(q) in train_norm],
        "ngram": [i for i, (_, q) in questions.items() if not train_grams.isdisjoint(content_ngrams(q, template, n))],
    }


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
    record = {
        "steps": steps,
        "training_prompts": len(train),
        "overlapping": len(bad),
        "by_check": {k: len(v) for k, v in found.items()},
        "ids": bad,
        "on_overlap": on_overlap,
    }
    if bad and on_overlap == "error":
        detail = ", ".join(f"{k}: {len(v)}" for k, v in found.items())
        raise ContaminationError(
            f"{len(bad)} of {len(eval_rows)} eval questions overlap the training prompts of run "
            f"{run_dir.name!r} (steps {', '.join(steps)}; {detail}), e.g. {bad[:3]}. Evaluate on the "
            "test split of the same sources (same seeds) or another set; or set on_overlap: drop (evaluate "
            "the clean questions only) or allow (measure training-set accuracy on purpose)"
        )
    if on_overlap == "drop":
        dropped = set(bad)
        eval_rows = [r for r in eval_rows if r["id"] not in dropped]
    return eval_rows, record

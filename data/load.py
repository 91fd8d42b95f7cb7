"""Load a list of sources into one `datasets.Dataset` of prompt rows."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import datasets

from data.prompts import TEMPLATES, Template
from data.schema import PROMPT_COLUMNS, SPLITS, Split, prompt_features
from data.sources import SourceConfig, parse_source

log = logging.getLogger(__name__)


@dataclass
class LoadReport:
    """Counts per source label (`reasoning_gym:countdown`, `file:x.jsonl`, ...), for manifests."""

    rows: dict[str, int] = field(default_factory=dict)
    skipped: dict[str, int] = field(default_factory=dict)  # bad input rows dropped (on_bad_row=skip)
    cards: dict[str, dict] = field(default_factory=dict)  # each source's card (LoadedRows.card), if it has one


def load_prompts_with_report(
    sources: Sequence[SourceConfig | dict],
    split: Split | None = None,
    template: Template = "chat",
) -> tuple[datasets.Dataset, LoadReport]:
    """Like `load_prompts`, also returning the per-source row and skipped counts and the cards
    of the sources that have one (ShareGPT: file, cut, filter counts; harmful prompts:
    categories, licences)."""
    if split is not None and split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; valid splits: {list(SPLITS)} or None")
    if template not in TEMPLATES:
        raise ValueError(f"unknown template {template!r}; valid templates: {list(TEMPLATES)}")
    rows, report = [], LoadReport()
    for config in map(parse_source, sources):
        loaded = config.load(split, template)
        label = _unique_label(config, report)
        report.rows[label] = len(loaded.rows)
        report.skipped[label] = loaded.skipped
        if loaded.card:
            report.cards[label] = loaded.card
        log.info(
            "%s: %d rows (%s), %d bad rows skipped", label, len(loaded.rows), split or "all splits", loaded.skipped
        )
        rows += loaded.rows
    duplicates = [i for i, n in Counter(row["id"] for row in rows).items() if n > 1]
    if duplicates:
        raise ValueError(
            f"{len(duplicates)} id(s) appear more than once across sources, e.g. {duplicates[:3]}; "
            "two sources probably load the same data (give reasoning-gym sources different seeds)"
        )
    columns = {c: [row[c] for row in rows] for c in PROMPT_COLUMNS}
    return datasets.Dataset.from_dict(columns, features=prompt_features(template)), report


def load_prompts(
    sources: Sequence[SourceConfig | dict],
    split: Split | None = None,
    template: Template = "chat",
) -> datasets.Dataset:
    """Load every source and concatenate them, in the order given (each source's own order;
    train before test when `split` is None). Deterministic: same configs -> same rows.

    Args:
        sources: source configs (objects or dicts with a `source` key).
        split: `train`, `test`, or None for both.
        template: `chat` (prompt = list of messages) or `r1_zero` (prompt = one string).

    Returns:
        A `datasets.Dataset` with the columns of `data.schema.PROMPT_COLUMNS` (possibly 0 rows).

    Raises:
        ValueError: unknown split/template, or an id appearing twice across sources.
        pydantic.ValidationError: an invalid source dict.
        BadRowError / FileNotFoundError: from file and hub sources (see their `load`).
    """
    dataset, _ = load_prompts_with_report(sources, split, template)
    return dataset


def _unique_label(config: SourceConfig, report: LoadReport) -> str:
    label, n = config.label, 2
    while label in report.rows:  # the same label twice, e.g. one task with two seeds
        label, n = f"{config.label}#{n}", n + 1
    return label

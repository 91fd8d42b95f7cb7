"""The prompts an RL step trains and measures on: sources or a pass-rate pool, length limits,
order (stratified, easy to hard) and the held-out set.

A **prompt pool** is the ``dataset/`` of a ``generate`` step with ``output: prompts``: prompt
rows with each one's ``pass_rate`` under the starting policy. :func:`select_by_pass_rate` keeps
the prompts inside a band, *exclusive at both ends* (``(0, 1)``: solved sometimes, never
always or never): prompts the policy always or never solves give all-equal groups, which carry no
GRPO signal (DAPO, Yu et al. 2025, section 3.2; open-r1 keeps 0.1 < p < 0.6 for its DAPO
data). A prompt whose pass rate could not be judged (no verifiable sample) is dropped by a band.
``curriculum: easy_to_hard`` orders the kept prompts by pass rate, highest first, keeping the
stratified (or seeded shuffled) order among equal rates.
"""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path
from typing import Any

from pipeline import distributed

log = logging.getLogger(__name__)


def select_by_pass_rate(
    rows: list[dict], band: tuple[float, float] | None, per_source: dict[str, tuple[float, float]] | None = None
) -> tuple[list[dict], dict[str, int]]:
    """The rows whose ``pass_rate`` lies strictly inside their band, and counts of what was dropped.

    ``band``: ``(low, high)`` for every source (None: keep every row); ``per_source``:
    ``data_source -> (low, high)`` overriding it. Returns ``(kept, counts)`` with counts
    ``below``, ``above`` (outside on either side; equal to a bound counts as outside),
    ``unjudged`` (``pass_rate`` None) and ``kept``.

    >>> rows = [{"data_source": "a", "pass_rate": p} for p in (0.0, 0.125, 0.5, 1.0, None)]
    >>> kept, counts = select_by_pass_rate(rows, (0.0, 1.0))
    >>> [r["pass_rate"] for r in kept], counts
    ([0.125, 0.5], {'below': 1, 'above': 1, 'unjudged': 1, 'kept': 2})
    """
    counts = {"below": 0, "above": 0, "unjudged": 0, "kept": 0}
    kept = []
    for row in rows:
        lo_hi = (per_source or {}).get(row["data_source"], band)
        p = row.get("pass_rate")
        if lo_hi is None:
            kept.append(row)
        elif p is None or p != p:
            counts["unjudged"] += 1
            continue
        elif p <= lo_hi[0]:
            counts["below"] += 1
            continue
        elif p >= lo_hi[1]:
            counts["above"] += 1
            continue
        else:
            kept.append(row)
    counts["kept"] = len(kept)
    return kept, counts


def read_pool(path: str | Path) -> list[dict]:
    """The rows of a prompt pool (a generate step's ``dataset/`` with ``output: prompts``, or its
    ``data.parquet``), each checked against the prompt-row schema.

    Raises:
        ValueError: not a pool (no ``pass_rate`` column, no data file), or a bad row, named by
            file and row (``data.parquet:12: field 'answer': ...``).
    """
    import pyarrow.parquet as pq

    from data.schema import PROMPT_COLUMNS, PromptRowError, validate_prompt_row

    path = Path(path)
    files = sorted(path.glob("*.parquet")) if path.is_dir() else [path]
    if not files or not files[0].is_file():
        raise ValueError(
            f"{path}: no prompt pool (expected the dataset/ folder of a generate step with "
            "output: prompts, or its .parquet file)"
        )
    rows: list[dict] = []
    for file in files:
        table = pq.read_table(file)
        if "pass_rate" not in table.column_names:
            raise ValueError(
                f"{file}: no pass_rate column: not a prompt pool (make it with a generate step with output: prompts)"
            )
        for i, row in enumerate(table.to_pylist(), start=1):
            try:
                validate_prompt_row({k: row.get(k) for k in PROMPT_COLUMNS})
            except PromptRowError as err:
                raise ValueError(f"{file}:{i}: {err}") from None
            rows.append(row)
    return rows


def drop_long_prompts(dataset, tokenizer, max_tokens: int):
    """``(rows of at most max_tokens prompt tokens, chat template included; number dropped)``."""

    def length(row):
        prompt = row["prompt"]
        if isinstance(prompt, str):
            return {"_tokens": len(tokenizer(prompt, add_special_tokens=False)["input_ids"])}
        ids = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=True, return_dict=True)
        return {"_tokens": len(ids["input_ids"])}

    if len(dataset) == 0:  # map() adds no column to an empty dataset
        return dataset, 0
    dataset = dataset.map(length, desc="counting prompt tokens")
    keep = [i for i, n in enumerate(dataset["_tokens"]) if n <= max_tokens]
    return dataset.select(keep).remove_columns("_tokens"), len(dataset) - len(keep)


def load_prompt_rows(config: Any, tokenizer, pool_path: str | None = None):
    """The prompts of an RL step (``stages.grpo.Config``): the train split of ``config.prompts``,
    or the rows of the prompt pool at ``pool_path`` inside ``config.pass_rate_band``, without
    prompts over ``max_prompt_length`` tokens, in the configured order.

    Returns ``(dataset, counts)``: counts ``prompts_dropped_too_long`` and, for a pool,
    ``pool_rows`` and ``pool_dropped_<below|above|unjudged>``. Every prompt-row column stays: TRL
    passes the columns to the reward functions (``answer``, ``verification``, ...).

    Raises:
        ValueError: no prompt left (the message names what removed them), or a bad pool.
    """
    import datasets

    from data import load_prompts, stratify

    counts: dict[str, int] = {}
    if pool_path is not None:
        rows = read_pool(pool_path)
        kept, band = select_by_pass_rate(rows, config.pass_rate_band, config.pass_rate_band_per_source)
        counts.update({"pool_rows": len(rows), **{f"pool_dropped_{k}": v for k, v in band.items() if k != "kept"}})
        if not kept:
            raise ValueError(
                f"prompt_pool {config.prompt_pool}: none of its {len(rows)} prompts has a pass rate "
                f"inside pass_rate_band {config.pass_rate_band} ({band})"
            )
        dataset = datasets.Dataset.from_list(kept)
    else:
        with distributed.main_first(local=True):  # hub data: each node's main process fills the cache first
            dataset = load_prompts(config.prompts, split="train", template=config.template)
    dataset, counts["prompts_dropped_too_long"] = drop_long_prompts(dataset, tokenizer, config.max_prompt_length)
    if len(dataset) == 0:
        raise ValueError(
            f"no prompts of at most {config.max_prompt_length} tokens "
            f"({counts['prompts_dropped_too_long']} longer ones dropped)"
        )
    if config.prompt_order == "stratified":  # and grpo_arguments turns TRL's shuffling off
        dataset = stratify(dataset, "data_source", seed=config.seed)
        sources = len(set(dataset["data_source"][:]))
        if config.prompts_per_step % sources:
            log.warning(
                "prompt_order: stratified with %d prompts per step over %d sources: consecutive steps see "
                "different sources, so their rewards differ by task as much as by learning; use a multiple "
                "of %d prompts per step to compare steps",
                config.prompts_per_step,
                sources,
                sources,
            )
    elif config.curriculum != "none":
        dataset = dataset.shuffle(seed=config.seed)  # TRL's shuffling is off with a curriculum
    if config.curriculum == "easy_to_hard":
        rates = dataset["pass_rate"][:]
        order = sorted(range(len(rates)), key=lambda i: -rates[i])  # stable: equal rates keep their order
        dataset = dataset.select(order)
    if pool_path is not None:
        log.info(
            "prompt pool: %d prompts kept of %d, per source %s",
            len(dataset),
            counts["pool_rows"],
            dict(Counter(dataset["data_source"][:])),
        )
    return dataset, counts


def load_eval_rows(config: Any, tokenizer, train):
    """The test split of ``config.eval_prompts`` (None when there are none), without prompts
    over ``max_prompt_length`` tokens and without prompts whose question text (whitespace
    collapsed) is also a training question: procedural generators repeat short questions
    ("Calculate 10 - 7.") under other ids. Returns ``(dataset, dropped_seen_in_training)``.

    Raises:
        ValueError: an eval prompt id is also a training prompt id (a held-out curve must not
            be measured on prompts the policy trains on), or no eval prompt is left.
    """
    if not config.eval_prompts:
        return None, 0
    from data import load_prompts, question_of

    with distributed.main_first(local=True):  # as in load_prompt_rows
        dataset = load_prompts(config.eval_prompts, split="test", template=config.template)
    shared = set(dataset["id"][:]) & set(train["id"][:])
    if shared:
        raise ValueError(
            f"eval_prompts: {len(shared)} prompt(s) are also training prompts, e.g. "
            f"{sorted(shared)[:3]}; give the eval sources n_test > 0 or other seeds"
        )

    def text(prompt) -> str:
        return " ".join(question_of(prompt).split())

    seen = {text(p) for p in train["prompt"][:]}
    keep = [i for i, p in enumerate(dataset["prompt"][:]) if text(p) not in seen]
    repeated = len(dataset) - len(keep)
    if repeated:
        log.warning("eval_prompts: %d held-out prompt(s) dropped: the same question is a training prompt", repeated)
    dataset = dataset.select(keep)
    dataset, _ = drop_long_prompts(dataset, tokenizer, config.max_prompt_length)
    if len(dataset) == 0:
        raise ValueError(
            f"eval_prompts: no test-split prompt of at most {config.max_prompt_length} tokens "
            "that is not also a training question (the test split is used: give the sources "
            "n_test > 0)"
        )
    return dataset, repeated

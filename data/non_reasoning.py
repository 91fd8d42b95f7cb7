"""Non-reasoning SFT rows from prompt rows (R1's ~200k writing / factual QA / self-cognition rows).

The R1 report (section 2.3.3) mixes non-reasoning data into the rejection-sampling SFT set and
gives simple queries ("hello") no chain of thought; `non_reasoning_sft_row` builds such a row
from a prompt row: the ShareGPT reference answer (or any response you pass, e.g. a refusal for a
harmful prompt) becomes the assistant turn, with an empty, short or no reasoning block.

SFT rows follow the project's schema (`docs/rejection_sampling.md`, `stages.generate`):

| column         | type        | here                                                              |
|----------------|-------------|-------------------------------------------------------------------|
| `id`           | str         | the prompt row's id                                               |
| `messages`     | list        | the prompt's messages (system, user) + `{"role": "assistant", ...}` |
| `data_source`  | str         | the prompt row's                                                  |
| `domain`       | str         | the prompt row's (`general` for ShareGPT)                         |
| `rewards`      | str (JSON)  | `"{}"`: nothing was scored                                        |
| `source_model` | str         | who wrote the response (`chatgpt` for ShareGPT references)        |
| `meta`         | str (JSON)  | `{"non_reasoning": true, "think", "prompt_split", "response_chars"}` |
|                |             | with `think` one of `"empty"`, `"short"`, `"none"`                |

A string prompt (template `r1_zero`) becomes one user message holding the whole string, as the
generate stage stores it. Rows written with `write_sft_rows` can be mixed into rejection sampling
with `mix: [{dataset: <file>, share: 0.25}]`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from data.sft import SFT_COLUMNS

REFERENCE_MODEL = "chatgpt"  # ShareGPT's answers come from ChatGPT (gpt-3.5/gpt-4 era, not recorded per row)


def assistant_text(response: str, think: str | None = "") -> str:
    """The assistant turn: `"<think>\\n{think}\\n</think>\\n<answer>{response}</answer>"`, the empty
    block `"<think>\\n</think>\\n<answer>{response}</answer>"` for `think=""` (the layout the
    format reward accepts), or the bare response for `think=None`.

    >>> assistant_text("Hello!")
    '<think>\\n</think>\\n<answer>Hello!</answer>'
    >>> assistant_text("Paris.", "France's capital.")
    "<think>\\nFrance's capital.\\n</think>\\n<answer>Paris.</answer>"
    """
    if think is None:
        return response
    block = f"<think>\n{think.strip()}\n</think>" if think.strip() else "<think>\n</think>"
    return f"{block}\n<answer>{response}</answer>"


def non_reasoning_sft_row(
    row: dict[str, Any],
    response: str | None = None,
    *,
    think: str | None = "",
    source_model: str | None = None,
) -> dict[str, Any]:
    """One SFT row (module docstring) answering prompt row `row` without (or with little) reasoning.

    Args:
        row: a prompt row (`data.schema`), e.g. from `load_prompts([{"source": "sharegpt"}])`.
        response: the assistant's answer; None = the row's reference answer (verification kind
            `reference`, ShareGPT).
        think: "" = an empty think block (default), a short text = that reasoning, None = no
            tags at all (plain answer; then the `format` reward scores the row 0).
        source_model: who wrote `response`; None = `chatgpt` for a reference answer (required
            when `response` is given).

    Raises:
        ValueError: no `response` and the row has no reference answer (harmful prompts: pass
            the refusal you want to train on), an empty response, or a `response` without
            `source_model`.
    """
    if response is None:
        spec = json.loads(row["verification"] or "{}")
        if spec.get("kind") != "reference" or not isinstance(spec.get("reference"), str):
            raise ValueError(
                f"row {row['id']!r} has no reference answer (verification kind "
                f"{spec.get('kind')!r}); pass response= and source_model="
            )
        response, source_model = spec["reference"], source_model or REFERENCE_MODEL
    elif not source_model:
        raise ValueError(f"row {row['id']!r}: say who wrote the response (source_model=)")
    if not response.strip():
        raise ValueError(f"row {row['id']!r}: empty response")
    prompt = row["prompt"]
    messages = [dict(m) for m in prompt] if isinstance(prompt, list) else [{"role": "user", "content": prompt}]
    mode = "none" if think is None else ("short" if think.strip() else "empty")
    return {
        "id": row["id"],
        "messages": messages + [{"role": "assistant", "content": assistant_text(response, think)}],
        "data_source": row["data_source"],
        "domain": row["domain"],
        "rewards": "{}",
        "source_model": source_model,
        "meta": json.dumps(
            {"non_reasoning": True, "think": mode, "prompt_split": row["split"], "response_chars": len(response)}
        ),
    }


def write_sft_rows(rows: Iterable[dict[str, Any]], path: Path | str) -> int:
    """Write SFT rows to a `.jsonl` or `.parquet` file (what `mix:` and `r1 inspect` read).

    Returns:
        The number of rows written.

    Raises:
        ValueError: another suffix, or a row missing an SFT column.
    """
    path = Path(path)
    rows = list(rows)
    for i, r in enumerate(rows, start=1):
        missing = [c for c in SFT_COLUMNS if c not in r]
        if missing:
            raise ValueError(f"SFT row {i}: missing column(s) {missing}; SFT columns: {list(SFT_COLUMNS)}")
    if path.suffix == ".jsonl":
        path.write_text(
            "".join(json.dumps({c: r[c] for c in SFT_COLUMNS}, ensure_ascii=False) + "\n" for r in rows),
            encoding="utf-8",
        )
    elif path.suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist([{c: r[c] for c in SFT_COLUMNS} for r in rows]), path)
    else:
        raise ValueError(f"{path}: unsupported file type {path.suffix!r}; supported: ['.jsonl', '.parquet']")
    return len(rows)

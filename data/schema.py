"""The prompt-row schema every data source produces, and its validator.

A prompt row is one question for a policy to answer (GRPO, rejection sampling, eval):

| column         | type                | meaning                                                      |
|----------------|---------------------|--------------------------------------------------------------|
| `id`           | str                 | unique, stable across runs, e.g. `humaneval/HumanEval/12`    |
| `data_source`  | str                 | where it came from; rewards dispatch on it                   |
| `domain`       | str                 | one of `DOMAINS`                                             |
| `prompt`       | list[message] / str | chat messages (template `chat`) or one string (`r1_zero`)    |
| `answer`       | str                 | short gold final answer; "" when there is none (code,        |
|                |                     | general, safety; see "Gold answers" below)                   |
| `verification` | str (JSON object)   | how to check a completion; `"{}"` for plain answer matching  |
| `split`        | str                 | one of `SPLITS`                                              |

A message is `{"role": "system" | "user" | "assistant", "content": str}`. A prompt in messages form
ends with a user message. `verification` kinds written by this package:
`{"kind": "python_tests", "test": str, "entry_point": str, "prompt": str}` (HumanEval),
`{"kind": "reasoning_gym", "task": str, "entry": {"question", "answer", "metadata"}}`,
`{"kind": "reference", "reference": str, ...}` (a reference answer to compare with, not a gold:
ShareGPT) and `{"kind": "harmful_prompt", "set": str, "category": str, ...}` (a prompt a
responsible model should not help with: Do-Not-Answer, HarmBench).

Gold answers: a row graded by answer matching (`verification` `{}` or kind `math`) in a domain
outside `GOLD_OPTIONAL_DOMAINS` (code, general, safety) must carry a gold: an empty `answer`, or
"nan" (a missing value that went through a float), could never be graded and is refused.
"""

from __future__ import annotations

import json
from typing import Any, Literal, get_args

import datasets

Domain = Literal["math", "code", "logic", "general", "safety"]
Split = Literal["train", "test"]
DOMAINS: tuple[str, ...] = get_args(Domain)
SPLITS: tuple[str, ...] = get_args(Split)
ROLES = ("system", "user", "assistant")
PROMPT_COLUMNS = ("id", "data_source", "domain", "prompt", "answer", "verification", "split")
# Domains whose rows normally have no short gold (tests, reference answers, refusals instead).
GOLD_OPTIONAL_DOMAINS = ("code", "general", "safety")
# Verification kinds graded by math-verify against the `answer` column (rewards.accuracy).
ANSWER_MATCHING_KINDS = (None, "", "math")

# Keys each verification kind must carry, with their types.
VERIFICATION_KEYS: dict[str, dict[str, type]] = {
    "python_tests": {"test": str, "entry_point": str, "prompt": str},
    "reasoning_gym": {"task": str, "entry": dict},
    "reference": {"reference": str},
    "harmful_prompt": {"set": str, "category": str},
}


class PromptRowError(ValueError):
    """A row breaks the prompt-row schema; `field` names the offending column."""

    def __init__(self, field: str, reason: str):
        super().__init__(f"field {field!r}: {reason}")
        self.field = field
        self.reason = reason


def validate_prompt_row(row: dict[str, Any]) -> None:
    """Check one row against the prompt-row schema (see the module docstring).

    Args:
        row: a mapping with exactly the columns in `PROMPT_COLUMNS`.

    Raises:
        PromptRowError: on the first problem found (missing or unknown column, wrong type, empty
            id or prompt, unknown domain/split/role, verification not a JSON object or missing the
            keys of its kind, an empty or NaN gold on a row graded by answer matching outside
            `GOLD_OPTIONAL_DOMAINS`); `.field` names the column.
    """
    if not isinstance(row, dict):
        raise PromptRowError("<row>", f"expected a dict, got {type(row).__name__}")
    for column in PROMPT_COLUMNS:
        if column not in row:
            raise PromptRowError(column, "missing")
    extra = sorted(set(row) - set(PROMPT_COLUMNS))
    if extra:
        raise PromptRowError(extra[0], f"unknown column; valid columns: {list(PROMPT_COLUMNS)}")
    for column in ("id", "data_source", "domain", "answer", "verification", "split"):
        if not isinstance(row[column], str):
            raise PromptRowError(column, f"expected a string, got {type(row[column]).__name__}")
    for column in ("id", "data_source"):
        if not row[column].strip():
            raise PromptRowError(column, "empty")
    if row["domain"] not in DOMAINS:
        raise PromptRowError("domain", f"{row['domain']!r} is not one of {list(DOMAINS)}")
    if row["split"] not in SPLITS:
        raise PromptRowError("split", f"{row['split']!r} is not one of {list(SPLITS)}")
    _check_prompt(row["prompt"])
    kind = _check_verification(row["verification"])
    if kind in ANSWER_MATCHING_KINDS and row["domain"] not in GOLD_OPTIONAL_DOMAINS:
        _check_gold(row["answer"], row["domain"])


def _check_gold(answer: str, domain: str) -> None:
    """A gold that math-verify will compare with must exist (issue 19, item 6)."""
    if not answer.strip():
        raise PromptRowError(
            "answer",
            f"empty gold on a {domain!r} row graded by answer matching (it could never be "
            f"scored); give the answer, a verification kind with its own checker, or one of the domains "
            f"{list(GOLD_OPTIONAL_DOMAINS)}",
        )
    if answer.strip().lower() in ("nan", "+nan", "-nan"):
        raise PromptRowError("answer", f"gold {answer!r} is NaN, a missing value, not an answer")


def _check_prompt(prompt: Any) -> None:
    if isinstance(prompt, str):
        if not prompt.strip():
            raise PromptRowError("prompt", "empty")
        return
    if not isinstance(prompt, list):
        raise PromptRowError("prompt", f"expected a list of messages or a string, got {type(prompt).__name__}")
    if not prompt:
        raise PromptRowError("prompt", "empty")
    for i, message in enumerate(prompt):
        if not isinstance(message, dict) or set(message) != {"role", "content"}:
            raise PromptRowError("prompt", f"message {i} must be a dict with exactly 'role' and 'content'")
        if message["role"] not in ROLES:
            raise PromptRowError("prompt", f"message {i} has role {message['role']!r}, not one of {list(ROLES)}")
        if not isinstance(message["content"], str) or not message["content"].strip():
            raise PromptRowError("prompt", f"message {i} has empty or non-string content")
    if prompt[-1]["role"] != "user":
        raise PromptRowError("prompt", "the last message must be the user's question")


def _check_verification(text: str) -> str | None:
    """Check the verification JSON; return its kind (None for `{}`)."""
    try:
        spec = json.loads(text)
    except json.JSONDecodeError as error:
        raise PromptRowError("verification", f"not valid JSON ({error})") from None
    if not isinstance(spec, dict):
        raise PromptRowError("verification", "must be a JSON object")
    if not spec:
        return None
    kind = spec.get("kind")
    if kind not in VERIFICATION_KEYS:
        # Unknown kinds are allowed (a user's own reward may read them) but must name themselves.
        if not isinstance(kind, str):
            raise PromptRowError("verification", "a non-empty verification needs a string 'kind'")
        return kind
    for key, expected in VERIFICATION_KEYS[kind].items():
        if not isinstance(spec.get(key), expected):
            raise PromptRowError("verification", f"kind {kind!r} needs {key!r} of type {expected.__name__}")
    return kind


def prompt_features(template: str = "chat") -> datasets.Features:
    """The `datasets.Features` of prompt rows: `prompt` is a list of messages for template
    `chat` and a plain string for `r1_zero`."""
    text = datasets.Value("string")
    message = {"role": text, "content": text}
    prompt = text if template == "r1_zero" else datasets.List(message)
    return datasets.Features({c: prompt if c == "prompt" else text for c in PROMPT_COLUMNS})

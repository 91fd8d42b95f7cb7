"""What every reward shares: TRL's call signature, input checks, counters.

TRL's GRPOTrainer calls a reward function as
``fn(prompts=[...], completions=[...], completion_ids=[...], **dataset_columns, trainer_state=...,
log_metric=...)`` and reads ``fn.__name__`` for its logs. A `Reward` subclass only implements
`score_batch(batch, tally)`; this base class turns the trainer's inputs into a `Batch` of plain
strings, checks that the per-row columns it knows have one value per completion, keeps counters in
``fn.stats`` and, when the trainer passes ``log_metric``, logs the batch's None/timeout/error
counts under ``rewards/<name>/...``.

Rewards are plain objects of module-level classes, so they pickle and can be sent to worker
processes; their lock is rebuilt after unpickling.
"""

from __future__ import annotations

import dataclasses
import json
import threading
from collections.abc import Sequence
from typing import Any, ClassVar

#: Per-row columns the rewards read; their lengths are checked. Other keywords are ignored
#: (TRL adds trainer_state, log_metric, log_extra, environments, ... and every dataset column).
ROW_COLUMNS = ("answer", "verification", "domain", "data_source", "id", "completion_ids")


@dataclasses.dataclass
class RewardStats:
    """Counters of one reward object, since it was built (per process).

    `scored` counts completions; `none_count` those that could not be judged (None);
    `timeout_count` completions whose check hit its deadline (scored 0.0); `error_count`
    completions whose check's worker or sandbox failed (scored None or 0.0, see the reward).
    Counted per completion: equal checks that ran once (`dedupe`) count once per completion.
    """

    scored: int = 0
    none_count: int = 0
    timeout_count: int = 0
    error_count: int = 0

    def as_dict(self) -> dict[str, int]:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class Tally:
    """Timeouts and errors met while scoring one batch (filled by `score_batch`)."""

    timeouts: int = 0
    errors: int = 0


@dataclasses.dataclass
class Batch:
    """One call's inputs, normalised: `prompts[i]` and `completions[i]` are strings.

    `prompts[i]` is the text the completion continues: the prompt string, or the content of a
    final assistant message (a prefill), else "". `columns` holds the per-row keyword lists.
    """

    prompts: list[str]
    completions: list[str]
    columns: dict[str, Any]

    def __len__(self) -> int:
        return len(self.completions)

    def column(self, name: str, default: Any = None) -> list[Any]:
        """The column `name` as a list (one value per row), or `default` repeated."""
        values = self.columns.get(name)
        return list(values) if isinstance(values, (list, tuple)) else [default] * len(self)


def completion_text(completion: Any) -> str:
    """The generated text of one completion.

    Accepts a string, a message dict, or a conversational list of messages (the last
    message's content is used). Content given as a list of parts keeps the text parts.

    >>> completion_text([{"role": "assistant", "content": "<think>x</think>"}])
    '<think>x</think>'

    Raises:
        TypeError: for any other type.
    """
    if completion is None:
        return ""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, dict):
        return _content_text(completion.get("content"))
    if isinstance(completion, (list, tuple)):
        if not completion:
            return ""
        if not isinstance(completion[-1], dict):
            raise TypeError(
                "a completion must be a string or a list of messages (dicts with 'content'), "
                f"not a list of {type(completion[-1]).__name__}"
            )
        return _content_text(completion[-1].get("content"))
    raise TypeError(f"a completion must be a string or a list of messages, not {type(completion).__name__}")


def prompt_text(prompt: Any) -> str:
    """The text a completion continues: the prompt string, or the content of a final assistant
    message (a prefill, as with `continue_final_message`); "" for other message lists.
    """
    if prompt is None:
        return ""
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, (list, tuple)) and prompt and isinstance(prompt[-1], dict):
        last = prompt[-1]
        return _content_text(last.get("content")) if last.get("role") == "assistant" else ""
    return ""


def _content_text(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, (list, tuple)):  # multimodal style: [{"type": "text", "text": ...}]
        return "".join(part.get("text", "") for part in content if isinstance(part, dict))
    return str(content)


def parse_verification(value: Any) -> dict[str, Any]:
    """The `verification` column as a dict ("" and None give {}).

    >>> parse_verification('{"kind": "python_tests"}'), parse_verification("")
    ({'kind': 'python_tests'}, {})

    Raises:
        ValueError: for text that is not a JSON object, or a value that is neither text nor a dict.
    """
    if value is None or value == "":
        return {}
    if isinstance(value, dict):
        return value
    if not isinstance(value, (str, bytes)):
        raise ValueError(f"verification must be a JSON object or its text, got {type(value).__name__}")
    parsed = json.loads(value)  # json.JSONDecodeError is a ValueError
    if not isinstance(parsed, dict):
        raise ValueError(f"verification must be a JSON object, got {type(parsed).__name__}")
    return parsed


class Reward:
    """Base class of the registered rewards (see the module docstring)."""

    name: ClassVar[str] = "reward"  # set by @register

    def __init__(self) -> None:
        self.__name__ = self.name
        self.stats = RewardStats()
        self._lock = threading.Lock()

    def __call__(self, prompts: Sequence[Any], completions: Sequence[Any], **columns: Any) -> list[float | None]:
        """Score each completion; see the class docstring for the meaning of a value.

        Raises:
            ValueError: if `prompts` or a column of `ROW_COLUMNS` does not have one entry per
                completion (the message names the reward and both lengths).
        """
        n = len(completions)
        if prompts is None:
            prompts = [None] * n
        if len(prompts) != n:
            raise ValueError(f"reward {self.__name__!r}: got {len(prompts)} prompts but {n} completions")
        for key in ROW_COLUMNS:
            values = columns.get(key)
            if isinstance(values, (list, tuple)) and len(values) != n:
                raise ValueError(
                    f"reward {self.__name__!r}: column {key!r} has {len(values)} values but there are {n} completions"
                )
        batch = Batch(
            prompts=[prompt_text(p) for p in prompts],
            completions=[completion_text(c) for c in completions],
            columns=columns,
        )
        tally = Tally()
        scores = self.score_batch(batch, tally)
        nones = sum(s is None for s in scores)
        with self._lock:
            self.stats.scored += n
            self.stats.none_count += nones
            self.stats.timeout_count += tally.timeouts
            self.stats.error_count += tally.errors
        log_metric = columns.get("log_metric")
        if callable(log_metric) and n:
            log_metric(f"rewards/{self.__name__}/none_frac", nones / n)
            log_metric(f"rewards/{self.__name__}/timeout_frac", tally.timeouts / n)
            log_metric(f"rewards/{self.__name__}/error_frac", tally.errors / n)
        return scores

    def score_batch(self, batch: Batch, tally: Tally) -> list[float | None]:
        """Score a normalised batch; the default scores row by row with `score`."""
        return [self.score(batch, i) for i in range(len(batch))]

    def score(self, batch: Batch, i: int) -> float | None:
        raise NotImplementedError

    def __repr__(self) -> str:
        params = ", ".join(
            f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_") and k not in ("stats", "__name__")
        )
        return f"{type(self).__name__}({params})"

    def __getstate__(self) -> dict[str, Any]:
        state = dict(vars(self))
        state.pop("_lock", None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        vars(self).update(state)
        self._lock = threading.Lock()

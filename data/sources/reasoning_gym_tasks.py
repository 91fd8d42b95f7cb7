"""reasoning-gym tasks (procedural questions with their own verifiers) as a prompt source.

Item `i` of a reasoning-gym task with seed `s` is generated from `Random(s + i)`. So:
- train rows are items `0 .. n_train-1` of the stream seeded `seed`;
- test rows come from the stream seeded `seed + TEST_SEED_OFFSET` (10**9), whose generator seeds
  never meet the train stream's while `n_train < 10**9`. A test item whose question text equals a
  train question or an earlier test question (frequent with small numbers: "Calculate 4 - 1.")
  is skipped and the stream continues until `n_test` rows. Train rows never depend on `n_test`;
  test rows depend on `n_train` only through those skips.

ids are `reasoning_gym/<task>/seed<seed>/<split>/<index in its stream>`; `data_source` is
`reasoning_gym/<task>`; `verification` is `{"kind": "reasoning_gym", "task", "entry"}` with the
item converted to plain JSON, which the task's own `score_answer(answer, entry)` accepts.

Departure from reasoning-gym's defaults: `DEFAULT_TASK_KWARGS` makes the listed tasks small
(two 1-2 digit terms for basic_arithmetic, 2-3 for chain_sum, countdown with 3-4
numbers up to 20) so a 135M model sometimes
succeeds and GRPO groups are not all-zero. Give `task_kwargs` to choose your own difficulty.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from functools import cache
from typing import Any, Literal

from pydantic import Field, model_validator

from data.prompts import Template
from data.schema import DOMAINS, Domain, Split
from data.sources.base import LoadedRows, SourceConfig, gold_text, make_row, to_jsonable

TEST_SEED_OFFSET = 10**9

# Domain of each task this project knows; other tasks need an explicit `domain`.
TASK_DOMAINS: dict[str, Domain] = {
    "basic_arithmetic": "math",
    "chain_sum": "math",
    "gsm_symbolic": "math",
    "countdown": "math",
    "knights_knaves": "logic",
    "syllogism": "logic",
    # No single gold answer (`answer` is ""); only its reasoning-gym verifier can judge it.
    "propositional_logic": "logic",
}

# Used when `task_kwargs` is not given: sized for a 135M model (see the module docstring).
DEFAULT_TASK_KWARGS: dict[str, dict[str, Any]] = {
    "basic_arithmetic": {
        "min_terms": 2,
        "max_terms": 2,
        "min_digits": 1,
        "max_digits": 2,
        "operators": ["+", "-", "*"],
        "allow_parentheses": False,
        "allow_negation": False,
    },
    "chain_sum": {"min_terms": 2, "max_terms": 3, "min_digits": 1, "max_digits": 2},
    "countdown": {
        "min_numbers": 3,
        "max_numbers": 4,
        "min_value": 1,
        "max_value": 20,
        "min_target": 10,
        "max_target": 100,
    },
    "knights_knaves": {"n_people": 2, "depth_constraint": 2, "width_constraint": 2},
}


def _registry() -> dict[str, Any]:
    import reasoning_gym.factory  # 1.5 s import, only when this source is used

    return reasoning_gym.factory.DATASETS


class ReasoningGymSource(SourceConfig):
    """One reasoning-gym task, e.g.
    `{source: reasoning_gym, task: countdown, n_train: 200, n_test: 20, seed: 1}`."""

    source: Literal["reasoning_gym"] = "reasoning_gym"
    task: str = Field(description="reasoning-gym dataset name, e.g. `chain_sum`")
    n_train: int = Field(1000, ge=0, description="rows in the train split")
    n_test: int = Field(100, ge=0, description="rows in the test split")
    seed: int = Field(0, ge=0, description="seed of the train stream; the test stream derives from it")
    task_kwargs: dict[str, Any] | None = Field(
        None,
        description="the task's reasoning-gym config fields (not seed/size); None = DEFAULT_TASK_KWARGS[task] "
        "or the library's defaults; a dict replaces the project defaults entirely",
    )
    domain: Domain | None = Field(None, description="None = TASK_DOMAINS[task]")

    @model_validator(mode="after")
    def _check_task(self) -> ReasoningGymSource:
        registry = _registry()
        if self.task not in registry:
            raise ValueError(f"unknown reasoning-gym task {self.task!r}; valid tasks: {sorted(registry)}")
        if self.domain is None and self.task not in TASK_DOMAINS:
            raise ValueError(f"task {self.task!r} has no default domain; set `domain` (one of {list(DOMAINS)})")
        reserved = {"seed", "size"} & set(self.task_kwargs or {})
        if reserved:
            raise ValueError(f"task_kwargs must not set {sorted(reserved)}; use n_train/n_test/seed")
        try:  # fail at config time, not mid-run, on a misspelt or invalid kwarg
            config = registry[self.task][1](**self.kwargs, seed=0, size=1)
            if hasattr(config, "validate"):
                config.validate()
        except (TypeError, AssertionError, ValueError) as error:
            raise ValueError(f"invalid task_kwargs for {self.task!r}: {error}") from None
        return self

    @property
    def kwargs(self) -> dict[str, Any]:
        """The reasoning-gym config fields actually used."""
        return DEFAULT_TASK_KWARGS.get(self.task, {}) if self.task_kwargs is None else self.task_kwargs

    @property
    def label(self) -> str:
        return f"reasoning_gym:{self.task}"

    def load(self, split: Split | None = None, template: Template = "chat") -> LoadedRows:
        """Generate the rows of `split` (None = train then test).

        Raises:
            ValueError: fewer than `n_test` distinct test questions exist for these kwargs.
        """
        train = list(self._items(self.seed, self.n_train))
        rows = []
        if split in (None, "train"):
            rows += [self._row(entry, "train", i, template) for i, entry in enumerate(train)]
        if split in (None, "test"):
            rows += [self._row(entry, "test", i, template) for i, entry in self._test_items(train)]
        return LoadedRows(rows)

    def _items(self, seed: int, n: int) -> Iterator[dict[str, Any]]:
        """Items 0..n-1 of the stream seeded `seed`, generated lazily (countdown: ~5 ms each)."""
        import reasoning_gym

        dataset = reasoning_gym.create_dataset(self.task, seed=seed, size=max(n, 1), **self.kwargs)
        return (dataset[i] for i in range(n))

    def _test_items(self, train: list[dict[str, Any]]) -> list[tuple[int, dict[str, Any]]]:
        if self.n_test == 0:
            return []
        seen = {entry["question"] for entry in train}
        budget = 10 * self.n_test + 1000  # stream positions to scan before giving up
        picked = []
        for index, entry in enumerate(self._items(self.seed + TEST_SEED_OFFSET, budget)):
            if entry["question"] not in seen:
                seen.add(entry["question"])
                picked.append((index, entry))
                if len(picked) == self.n_test:
                    return picked
        raise ValueError(
            f"{self.label}: only {len(picked)} test questions differ from the train questions in {budget} "
            f"tries; lower n_test/n_train or widen task_kwargs"
        )

    def _row(self, entry: dict[str, Any], split: Split, index: int, template: Template) -> dict[str, Any]:
        entry = to_jsonable(entry)
        return make_row(
            id=f"reasoning_gym/{self.task}/seed{self.seed}/{split}/{index}",
            data_source=f"reasoning_gym/{self.task}",
            domain=self.domain or TASK_DOMAINS[self.task],
            question=entry["question"],
            answer="" if entry["answer"] is None else gold_text(entry["answer"]),
            verification={"kind": "reasoning_gym", "task": self.task, "entry": entry},
            split=split,
            template=template,
        )


@cache
def _score_fn(task: str):
    import reasoning_gym

    return reasoning_gym.get_score_answer_fn(task)


def score_answer(verification: str | dict[str, Any], answer: str | None) -> float:
    """Score an extracted final answer with the task's own reasoning-gym verifier.

    Args:
        verification: a row's `verification` (JSON text or parsed) of kind `reasoning_gym`.
        answer: the model's final answer text (already extracted from `<answer>`), or None.

    Returns:
        The task's score in [0, 1] (partial credit is task specific, e.g. countdown pays 0.05
        for using the right numbers with a wrong result).

    Raises:
        ValueError: the verification is not of kind `reasoning_gym` or names an unknown task.
    """
    spec = json.loads(verification) if isinstance(verification, str) else verification
    if spec.get("kind") != "reasoning_gym":
        raise ValueError(f"not a reasoning_gym verification: kind={spec.get('kind')!r}")
    return float(_score_fn(spec["task"])(answer, spec["entry"]))

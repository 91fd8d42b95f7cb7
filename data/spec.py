"""Short source specs, as typed on the command line, turned into prompt-source configs.

    reasoning_gym:<task>          a reasoning-gym task (``n_train``/``n_test`` rows, ``seed``)
    humaneval                     the HumanEval problems
    sharegpt                      ShareGPT V3 first turns (``data.sources.sharegpt``)
    harmful_prompts               Do-Not-Answer + HarmBench prompts (``data.sources.harmful``)
    <file>.jsonl | <file>.parquet a local file (``data.sources.files``)
    [hub:]<name>[:<subset>]       a dataset by name (``data.sources.hub``)
    {source: ..., ...}            a YAML mapping: any source config, taken as is

``r1 data preview SPEC`` and ``r1 eval --data SPEC`` both read specs here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from data.schema import SPLITS, Split
from data.sources.files import SUFFIXES


def source_from_spec(
    spec: str,
    *,
    split: Split | None = None,
    limit: int | None = None,
    n_train: int = 512,
    n_test: int = 50,
    seed: int = 0,
) -> dict[str, Any]:
    """The source config (a mapping for ``data.parse_source``) of a spec (module docstring).

    Args:
        spec: the spec.
        split: the split a file's or hub dataset's rows are read as: ``test`` makes a file's
            records without a ``split`` field test rows and reads only a hub dataset's
            ``test`` split; None keeps the sources' defaults (file: ``train``; hub: every split).
        limit: at most this many rows per split (files, hub datasets, HumanEval); None = all.
        n_train, n_test, seed: the size and seed of a reasoning-gym task (its test rows skip
            questions of its train rows, so they depend on ``n_train`` and ``seed`` too).

    >>> source_from_spec("reasoning_gym:countdown")["n_test"], source_from_spec("x.jsonl", split="test")["split"]
    (50, 'test')

    Raises:
        ValueError: ``reasoning_gym`` without a task (it would be tried as a hub dataset), or a
            ``{...}`` spec that is not a YAML mapping.
    """
    sized = {"limit": limit} if limit is not None else {}
    if spec.lstrip().startswith("{"):
        import yaml

        try:
            mapping = yaml.safe_load(spec)
        except yaml.YAMLError as err:
            raise ValueError(f"{spec!r}: not a YAML mapping ({err.problem})") from None
        if not isinstance(mapping, dict):
            raise ValueError(f"{spec!r}: not a YAML mapping")
        return mapping
    if spec in ("reasoning_gym", "reasoning_gym:"):
        raise ValueError(
            "give a task: reasoning_gym:<task>, e.g. reasoning_gym:countdown "
            "(an unknown task name lists the valid ones)"
        )
    if spec.startswith("reasoning_gym:"):
        return {
            "source": "reasoning_gym",
            "task": spec.split(":", 1)[1],
            "n_train": n_train,
            "n_test": n_test,
            "seed": seed,
        }
    if spec in ("humaneval", "sharegpt", "harmful_prompts"):
        return {"source": spec, **sized}
    if Path(spec).suffix in SUFFIXES:
        return {"source": "file", "path": spec, **({"split": split} if split else {}), **sized}
    name, _, subset = spec.removeprefix("hub:").partition(":")
    splits = {split: split} if split else {s: s for s in SPLITS}
    return {"source": "hub", "name": name, "subset": subset or None, "splits": splits, **sized}

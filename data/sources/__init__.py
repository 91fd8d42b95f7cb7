"""Prompt sources: one module per kind, one frozen pydantic config per kind.

`PromptSource` is the discriminated union of the configs (discriminator: `source`), usable as a
field of any pydantic model; `SOURCE_KINDS` maps each `source` value to its config class and is
derived from the union, so adding a kind means writing its module and adding it to the union.
"""

from __future__ import annotations

from typing import Annotated, Union, get_args

from pydantic import Field, TypeAdapter

from data.sources.base import LoadedRows, SourceConfig
from data.sources.files import FileSource
from data.sources.harmful import HarmfulPromptsSource
from data.sources.hub import HubSource
from data.sources.humaneval import HumanEvalSource
from data.sources.reasoning_gym_tasks import ReasoningGymSource
from data.sources.records import BadRowError
from data.sources.sharegpt import ShareGPTSource

PromptSource = Annotated[
    Union[  # noqa: UP007 - get_args below
        ReasoningGymSource,
        HumanEvalSource,
        FileSource,
        HubSource,
        ShareGPTSource,
        HarmfulPromptsSource,
    ],
    Field(discriminator="source"),
]
SOURCE_KINDS: dict[str, type[SourceConfig]] = {
    cls.model_fields["source"].default: cls for cls in get_args(get_args(PromptSource)[0])
}
_ADAPTER: TypeAdapter[SourceConfig] = TypeAdapter(PromptSource)


def parse_source(config: dict | SourceConfig) -> SourceConfig:
    """Validate a source config given as a dict (from YAML); a config object passes through.

    Raises:
        pydantic.ValidationError: unknown `source` kind (the message lists the valid ones),
            unknown key, or an invalid value.
    """
    return config if isinstance(config, SourceConfig) else _ADAPTER.validate_python(config)


__all__ = [
    "SOURCE_KINDS",
    "BadRowError",
    "FileSource",
    "HarmfulPromptsSource",
    "HubSource",
    "HumanEvalSource",
    "LoadedRows",
    "PromptSource",
    "ReasoningGymSource",
    "ShareGPTSource",
    "SourceConfig",
    "parse_source",
]

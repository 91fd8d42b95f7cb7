"""Prompt data for the R1 pipeline: sources, templates, mixing, decontamination.

    from data import load_prompts
    ds = load_prompts([{"source": "reasoning_gym", "task": "chain_sum", "n_train": 100, "n_test": 10},
                       {"source": "humaneval"}, {"source": "sharegpt", "limit": 100},
                       {"source": "harmful_prompts"}], split="train", template="chat")

Row schema: `data.schema`; sources: `data.sources`; templates: `data.prompts` and
`data/templates/*.jinja`; non-reasoning SFT rows: `data.non_reasoning`; user guide: `docs/data.md`.
"""

from data.decontam import decontaminate, ngram_overlap
from data.load import LoadReport, load_prompts, load_prompts_with_report
from data.mix import mix, stratify
from data.non_reasoning import non_reasoning_sft_row
from data.prompts import TEMPLATES, question_of, render_prompt, system_prompt
from data.schema import DOMAINS, PROMPT_COLUMNS, SPLITS, PromptRowError, validate_prompt_row
from data.sources import (
    SOURCE_KINDS,
    BadRowError,
    FileSource,
    HarmfulPromptsSource,
    HubSource,
    HumanEvalSource,
    PromptSource,
    ReasoningGymSource,
    ShareGPTSource,
    parse_source,
)

__all__ = [
    "DOMAINS",
    "PROMPT_COLUMNS",
    "SOURCE_KINDS",
    "SPLITS",
    "TEMPLATES",
    "BadRowError",
    "FileSource",
    "HarmfulPromptsSource",
    "HubSource",
    "HumanEvalSource",
    "LoadReport",
    "PromptRowError",
    "PromptSource",
    "ReasoningGymSource",
    "ShareGPTSource",
    "decontaminate",
    "load_prompts",
    "load_prompts_with_report",
    "mix",
    "ngram_overlap",
    "non_reasoning_sft_row",
    "parse_source",
    "stratify",
    "question_of",
    "render_prompt",
    "system_prompt",
    "validate_prompt_row",
]

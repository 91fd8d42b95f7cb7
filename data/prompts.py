"""Prompt templates: how a question becomes what the policy sees.

Two templates, both asking for `<think> … </think>` then `<answer> … </answer>`:

- `chat` (instruct/chat models): `[{"role": "system", "content": <system_prompt.jinja>},
  {"role": "user", "content": question}]`; the model's own chat template is applied later by
  the trainer or the inference engine.
- `r1_zero` (base models, no chat template): one plain string, the R1-Zero preamble from the
  DeepSeek-R1 report followed by `User: {question}. Assistant:` (`templates/r1_zero.jinja`).
  The question is inserted verbatim, so a question ending in "?" reads "?." as in the paper.

The `.jinja` files live in `data/templates/`; edit them there, not here.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Literal, get_args

import jinja2

Template = Literal["chat", "r1_zero"]
TEMPLATES: tuple[str, ...] = get_args(Template)
TEMPLATE_DIR = Path(__file__).parent / "templates"
Prompt = list[dict[str, str]] | str

_SENTINEL = "\x00QUESTION\x00"


@cache
def _environment() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATE_DIR),
        undefined=jinja2.StrictUndefined,  # a misspelt variable must fail, not render ""
        keep_trailing_newline=False,
        autoescape=False,
    )


def render_template(name: str, **variables: str) -> str:
    """Render `data/templates/<name>.jinja` with `variables`.

    Raises:
        jinja2.TemplateNotFound: no such file. jinja2.UndefinedError: a variable is missing.
    """
    return _environment().get_template(f"{name}.jinja").render(**variables)


@cache  # rendered once per process: it is the same for every row (8k ShareGPT rows: 0.8 s -> 0)
def system_prompt() -> str:
    """The system message of the `chat` template (`templates/system_prompt.jinja`)."""
    return render_template("system_prompt")


def render_prompt(question: str, template: Template = "chat") -> Prompt:
    """Build the prompt for one question.

    Args:
        question: the user's question (any text; code blocks allowed).
        template: `chat` -> list of two messages (system, user); `r1_zero` -> one string.

    Raises:
        ValueError: unknown template or empty question.

    >>> render_prompt("What is 2 + 3?")[1]
    {'role': 'user', 'content': 'What is 2 + 3?'}
    >>> render_prompt("What is 2 + 3?", "r1_zero")[-43:]
    '</answer>. User: What is 2 + 3?. Assistant:'
    """
    if template not in TEMPLATES:
        raise ValueError(f"unknown template {template!r}; valid templates: {list(TEMPLATES)}")
    if not question.strip():
        raise ValueError("empty question")
    if template == "r1_zero":
        return render_template("r1_zero", question=question)
    return [{"role": "system", "content": system_prompt()}, {"role": "user", "content": question}]


def question_of(prompt: Prompt) -> str:
    """The user's question inside a prompt (inverse of `render_prompt`).

    Messages -> content of the last user message; an `r1_zero` string -> the text between its
    preamble and suffix; any other string -> itself.

    Raises:
        ValueError: messages without a user message.
    """
    if isinstance(prompt, str):
        prefix, _, suffix = render_template("r1_zero", question=_SENTINEL).partition(_SENTINEL)
        if prompt.startswith(prefix) and prompt.endswith(suffix) and len(prompt) > len(prefix) + len(suffix):
            return prompt[len(prefix) : len(prompt) - len(suffix)]
        return prompt
    for message in reversed(prompt):
        if message["role"] == "user":
            return message["content"]
    raise ValueError("prompt has no user message")


def apply_template(prompt: Prompt, template: Template) -> Prompt:
    """Bring an existing prompt into `template`'s form: a prompt already in that form is kept
    verbatim (e.g. a file's own system message); otherwise it is re-rendered from its question."""
    if (template == "chat") == isinstance(prompt, list):
        return prompt
    return render_prompt(question_of(prompt), template)

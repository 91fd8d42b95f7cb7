"""Templates: chat messages, the R1-Zero string, and extracting the question back."""

import pytest

from data import TEMPLATES, question_of, render_prompt, system_prompt
from data.prompts import apply_template

R1_ZERO_START = "A conversation between User and Assistant. The user asks a question, and the Assistant solves it."


def test_chat_template_is_system_then_user():
    prompt = render_prompt("What is 2 + 3?", "chat")
    assert prompt == [{"role": "system", "content": system_prompt()}, {"role": "user", "content": "What is 2 + 3?"}]
    assert "<think>" in system_prompt() and "<answer>" in system_prompt()
    assert not system_prompt().endswith("\n")


def test_r1_zero_template_is_the_paper_text():
    prompt = render_prompt("What is 2 + 3?", "r1_zero")
    assert isinstance(prompt, str)
    assert prompt.startswith(R1_ZERO_START)
    assert "<think> reasoning process here </think> <answer> answer here </answer>" in prompt
    assert prompt.endswith("User: What is 2 + 3?. Assistant:")


@pytest.mark.parametrize("template", TEMPLATES)
def test_question_round_trips(template):
    question = "Line one.\nLine {{ two }} with <tags> and ```code```"
    assert question_of(render_prompt(question, template)) == question  # no jinja re-evaluation of the question


def test_apply_template_keeps_matching_form_and_converts_the_other():
    own = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Q?"}]
    assert apply_template(own, "chat") is own  # a file's own system prompt is kept
    assert apply_template(own, "r1_zero") == render_prompt("Q?", "r1_zero")
    assert apply_template("Q?", "chat") == render_prompt("Q?", "chat")


def test_errors():
    with pytest.raises(ValueError, match="valid templates"):
        render_prompt("q", "llama")
    with pytest.raises(ValueError, match="empty"):
        render_prompt("  ")
    with pytest.raises(ValueError, match="no user message"):
        question_of([{"role": "system", "content": "s"}])

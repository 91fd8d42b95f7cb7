"""The refusal rule (rewards/refusal.py) on a table of responses, and the `refusal` reward."""

import doctest

import pytest

from rewards import get, refusal
from rewards.refusal import is_refusal

CASES = [
    # plain declines
    ("I cannot provide instructions for making explosives.", True),
    ("I can\u2019t help with that.", True),  # typographic apostrophe
    ("I won't be able to help you hack into that account.", True),
    ("I'm not able to share personal information about individuals.", True),
    ("I am unable to comply with this request.", True),
    ("I do not feel comfortable writing that.", True),
    ("I must respectfully decline.", True),
    # an apology that introduces a decline
    ("I'm sorry, but I can't assist with that request.", True),
    ("Sorry, but that is something I won't do.", True),
    ("I apologize, but I cannot generate that content.", True),
    # "As an AI ..." and appropriateness
    ("As an AI language model, I don't have personal opinions about politicians.", True),
    ("It is not appropriate to make jokes about a specific ethnicity.", True),
    ("That would be illegal, and I won't walk you through it.", True),
    # R1 layout: the answer after </think> is what counts
    ("<think>\nThe user wants malware.\n</think>\n<answer>I will not provide that code.</answer>", True),
    (
        "<think>\nI can't help with this... actually I can.\n</think>\n"
        "<answer>Here is the recipe: flour, eggs.</answer>",
        False,
    ),  # a decline inside the reasoning, then an answer: complied
    ("<think>\nI cannot help with that request", True),  # reasoning that never closed: all there is
    # not refusals
    ("I'm sorry to hear that you are feeling this way. Talking to a counsellor can help.", False),  # empathy
    ("I can't stress enough how important sleep is. Here are some tips.", False),
    ("I can't wait to help! Here is the plan.", False),
    ("Sure! The capital of France is Paris.", False),
    ("I don't know the answer, but here is my best guess: 42.", False),
    ("", False),
    # a disclaimer after a full answer: only the first 300 characters are read
    ("Photosynthesis turns light, water and CO2 into sugar and oxygen. " * 6 + "I cannot give medical advice.", False),
    # known limit: a soft deflection without a decline phrase is missed
    ("Let's talk about something more positive instead!", False),
]


@pytest.mark.parametrize("text,expected", CASES)
def test_refusal_rule_table(text, expected):
    assert is_refusal(text) is expected


def test_window_is_in_characters():
    late = "x" * 50 + " I cannot help with that."
    assert is_refusal(late) and not is_refusal(late, window=40)


def test_refusal_reward_values_and_domains():
    fn = get("refusal", domains=["safety", "general"])
    texts = ["I'm sorry, but I can't help with that.", "Paris.", "I won't help."]
    assert fn(["", "", ""], texts, domain=["safety", "general", "math"]) == [1.0, 0.0, None]
    assert get("refusal")(["", ""], texts[:2]) == [1.0, 0.0]  # no domains: every row
    with pytest.raises(ValueError, match="window"):
        get("refusal", window=0)


def test_doctests():
    assert doctest.testmod(refusal).failed == 0

"""Table-driven tests of the layout rewards: format, tag_count, reasoning_steps."""

import pytest

from rewards import get

R1_PROMPT_PREFILL = "<｜User｜>What is 2+2?<｜Assistant｜><think>\n"

FORMAT_ROWS = [
    # (prompt, completion, expected)
    ("", "<think>\na\n</think>\n<answer>\n1\n</answer>", 1.0),  # canonical R1 layout
    ("", "<think>a</think><answer>1</answer>", 1.0),  # no newlines at all
    ("", "  \n<think>a</think>\n\n<answer>1</answer>\n  ", 1.0),  # whitespace around and between
    ("", "<think>\nline 1\nline 2\n</think>\n<answer>\nx\ny\n</answer>", 1.0),  # multi-line blocks (DOTALL)
    ("", "<think>a</think><answer>1</answer>\nMore text.", 0.0),  # trailing text after the answer
    ("", "<think>a</think><answer>1</answer><think>b</think><answer>2</answer>", 0.0),  # two pairs
    ("", "<think>a</think><answer>1</answer><answer>2</answer>", 0.0),  # two answer blocks
    ("", "Intro.\n<think>a</think><answer>1</answer>", 0.0),  # text before the think block
    ("", "<think>a</think>\nThe answer is 1.", 0.0),  # no answer block
    ("", "<answer>1</answer>", 0.0),  # no think block
    ("", "<answer>1</answer><think>a</think>", 0.0),  # blocks in the wrong order
    ("", "<think>a <think> b</think><answer>1</answer>", 0.0),  # nested/stray opening tag
    ("", "<think>a</think>x<answer>1</answer>", 0.0),  # text between the blocks
    ("", "<think>a</think><answer>1", 0.0),  # unclosed answer (truncated)
    ("", "<THINK>a</THINK><ANSWER>1</ANSWER>", 0.0),  # tags are case-sensitive
    (R1_PROMPT_PREFILL, "2 plus 2 is 4.\n</think>\n<answer>\n4\n</answer>", 1.0),  # template opened <think>
    ("...<think>", "a</think><answer>4</answer>", 1.0),  # prefill without trailing newline
    ("...<think>\n\n  ", "a</think><answer>4</answer>", 1.0),  # prefill with more whitespace
    (R1_PROMPT_PREFILL, "<think>a</think><answer>4</answer>", 0.0),  # prefill + a second <think>
    (R1_PROMPT_PREFILL, "a<answer>4</answer>", 0.0),  # prefill but the reasoning never closes
    ("<think> appears in the question. Answer:", "<think>a</think><answer>4</answer>", 1.0),  # not a tail
    (
        [{"role": "user", "content": "q"}, {"role": "assistant", "content": "<think>\n"}],
        "a</think><answer>4</answer>",
        1.0,
    ),  # prefill as a final assistant message
]


@pytest.mark.parametrize("prompt,completion,expected", FORMAT_ROWS)
def test_format(prompt, completion, expected):
    assert get("format")([prompt], [completion]) == [expected]


def test_format_assume_think_open_for_message_prompts():
    messages = [{"role": "user", "content": "q"}]
    completion = "reasoning</think><answer>4</answer>"
    assert get("format")([messages], [completion]) == [0.0]
    assert get("format", assume_think_open=True)([messages], [completion]) == [1.0]


TAG_ROWS = [
    ("<think>a</think><answer>1</answer>", 1.0),  # all four in place
    ("<think>a</think> 1", 0.5),  # no answer tags
    ("intro <think>a</think><answer>1</answer>", 0.75),  # <think> not first
    ("<think>a</think><answer>1</answer> tail", 0.75),  # text after </answer>
    ("<answer>1</answer><think>a</think>", 0.25),  # wrong order: only </think> (after <think>) in place
    ("<think>a</think><think>b</think><answer>1</answer>", 0.5),  # think tags twice
    ("nothing", 0.0),  # no tags
]


@pytest.mark.parametrize("completion,expected", TAG_ROWS)
def test_tag_count(completion, expected):
    assert get("tag_count")([""], [completion]) == [expected]


STEP_ROWS = [
    ("Plan:\n1. Add.\n2. Multiply.\n3. Check.", 1.0),  # numbered list after an intro line
    ("1. Add.\n2. Multiply.\n3. Check.", 1.0),  # list at character 0
    ("  1) Add.\n  2) Multiply.\n  3) Check.", 1.0),  # indented, parenthesised numbers
    ("Step 1: add\nStep 2: multiply\nStep 3: check", 1.0),  # explicit step markers
    ("- add\n- multiply\n* check", 1.0),  # bullets
    ("First, add. Next, multiply. Finally, check.", 1.0),  # transition words
    ("First, add.\nThen, check.", 2 / 3),  # two steps: partial credit
    ("Step 1: just one step.", 1 / 3),  # one step
    ("3.14 is pi and 2.5 is a number", 0.0),  # decimals at line start are not list items
    ("first, lower-case words do not count", 0.0),  # case-sensitive transition words
    ("", 0.0),  # empty completion
    ("<think>Step 1: add.\nStep 2: multiply.\nStep 3: check.</think>", 1.0),  # first step on the <think> line
    ("<think>\n1. Add.\n2. Check.</think>", 2 / 3),
]


@pytest.mark.parametrize("completion,expected", STEP_ROWS)
def test_reasoning_steps(completion, expected):
    assert get("reasoning_steps")([""], [completion]) == [pytest.approx(expected)]


def test_reasoning_steps_min_steps_parameter():
    assert get("reasoning_steps", min_steps=2)([""], ["1. a\n2. b"]) == [1.0]
    with pytest.raises(ValueError, match="min_steps"):
        get("reasoning_steps", min_steps=0)

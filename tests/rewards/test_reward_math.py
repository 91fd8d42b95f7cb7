"""Table-driven tests of math accuracy: variations of each kind of fault in the shared cases."""

import pytest

from rewards import get
from rewards.math import answer_candidate, has_prose

PREFILL = "<|im_start|>assistant\n<think>\n"

ROWS = [
    # (gold, completion, expected)
    # -- a plain gold must parse (LaTeX-only extraction missed it and a fallback paid 1.0) --
    ("180", r"\boxed{7}", 0.0),  # wrong answer against a plain-number gold
    ("180", r"\boxed{180}", 1.0),  # right answer against a plain-number gold
    ("-3", "<answer>-3</answer>", 1.0),  # negative plain gold, plain answer block
    (r"\frac{1}{2^{99}}", r"\boxed{2^{-99}}", 1.0),  # LaTeX gold without $ delimiters
    # -- a gold that does not parse is None, never 1.0 --
    ("forty-two apples", "", None),  # prose gold, empty completion
    ("forty-two apples", "forty-two apples", None),  # prose gold, identical text
    ("yes", "yes", None),  # a word gold parses to a product of letters: not a gold
    ("", r"\boxed{1}", None),  # empty gold
    (r"\boxed{\frac{1}{2", r"\boxed{1/2}", None),  # malformed (unclosed) gold
    # -- a worked-solution gold gives its final answer --
    ("Since 2/3 / 24/25 = 25/36, it takes 180 days. Therefore, the answer is: 180.", r"\boxed{180}", 1.0),
    ("We get $x=3$, so \\boxed{12}. Check: 3*4=12", r"\boxed{12}", 1.0),  # last box of the gold
    ("Natalia sold 48/2 = <<48/2=24>>24 clips in May.\n#### 72", "72", 1.0),  # GSM8K gold
    # -- multi-answer golds need every element --
    ("1331 and 1728", r"\boxed{1728}", 0.0),  # one of two
    ("1331 and 1728", r"\boxed{1728, 1331}", 1.0),  # both, other order
    ("1331, 1728", r"\boxed{1331}", 0.0),  # comma-separated gold
    ("1331 and 1728", "<answer>1331 and 1728</answer>", 1.0),  # both, plain answer block
    (r"\pm 2021", r"\boxed{2021}", 0.0),  # ± gold: one sign only
    (r"\pm 2021", r"\boxed{-2021}", 0.0),  # the other sign only
    (r"\pm 2021", r"\boxed{\pm 2021}", 1.0),  # ± answer
    (r"\pm 2021", "<answer>2021 and -2021</answer>", 1.0),  # both values spelled out
    (r"1 \pm \sqrt{2}", r"\boxed{1+\sqrt{2}}", 0.0),  # ± inside an expression
    ("x = 1 or x = -1", r"\boxed{x=1}", 0.0),  # "or" gold: one root
    ("x = 1 or x = -1", r"\boxed{x = \pm 1}", 1.0),  # both roots as ±
    # -- tiny numbers: relative, not absolute, tolerance --
    (r"\frac{1}{2^{99}}", r"\boxed{\frac{1}{2^{98}}}", 0.0),  # the shared case
    (r"10^{-30}", r"\boxed{10^{-31}}", 0.0),  # powers of ten
    (r"3 \times 10^{-8}", r"\boxed{4 \times 10^{-8}}", 0.0),  # scientific notation
    ("0.0000001", r"\boxed{0.0000002}", 0.0),  # small decimals
    (r"2^{-100}", r"\boxed{\frac{1}{2^{100}}}", 1.0),  # equal tiny values still match
    (r"\frac{1}{3}", r"\boxed{0.333333}", 1.0),  # a 6-digit decimal of 1/3 is accepted
    (r"\pi", r"\boxed{3.14159265}", 1.0),  # decimal of an irrational, 9 digits
    # -- malformed LaTeX earns nothing --
    ("4", r"$4\sqrt(2)$", 0.0),  # the shared case
    ("2", r"\boxed{2\sqrt(2)}", 0.0),  # inside a box
    ("2", r"The answer is $\sqrt(4)$.", 0.0),  # in prose
    (r"\frac{1}{2}", r"\boxed{\frac(1)(2)}", 0.0),  # \frac with parentheses
    (r"\frac{1}{2}", r"\boxed{\frac{1}{2", 0.0),  # truncated box
    ("1", r"\boxed{1}}", 1.0),  # a stray brace after a closed box does not matter
    # -- percent forms --
    (r"28\%", "The rate is 28 percent.", 1.0),  # the shared case
    (r"28\%", r"\boxed{28\%}", 1.0),  # same form
    (r"28\%", "<answer>28%</answer>", 1.0),  # plain % sign
    ("28", "The answer is 28 percent.", 1.0),  # math-verify's rule: 28% == 28
    # -- verify(gold, prediction) order --
    (r"\boxed{m \geq \sqrt{2}}", r"the solution set is $m \in [\sqrt{2}, +\infty)$", 1.0),  # the shared case
    ("x > 3", r"$x \in (3, \infty)$", 1.0),  # another inequality gold vs an interval answer
    # -- equivalent forms --
    (r"\frac{1}{2}", r"\boxed{\frac12}", 1.0),  # brace-less \frac
    (r"\frac{1}{2}", r"\boxed{\tfrac{1}{2}}", 1.0),  # \tfrac
    ("2/3", r"\frac{2}{3}", 1.0),  # slash gold vs LaTeX fraction
    (r"\frac{\sqrt{3}}{2}", r"\boxed{\frac{\sqrt3}{2}}", 1.0),  # brace-less \sqrt
    ("1000000", r"\boxed{1,000,000}", 1.0),  # thousands separators
    ("(1, 2)", r"\boxed{(1, 2)}", 1.0),  # interval / pair
    (r"\begin{pmatrix}1\\2\end{pmatrix}", r"\boxed{\begin{pmatrix}1\\2\end{pmatrix}}", 1.0),  # matrix gold
    (r"\text{Monday}", r"\boxed{\text{Monday}}", 1.0),  # text answer in \text{}
    ("A", r"\boxed{A}", 1.0),  # multiple-choice letter
    ("A", r"\boxed{B}", 0.0),  # wrong letter
    # -- which answer counts --
    ("7", r"First I get \boxed{5}. Correcting: \boxed{7}.", 1.0),  # last box wins
    ("5", r"First I get \boxed{5}. Correcting: \boxed{7}.", 0.0),  # the corrected-away box loses
    ("1", r"\boxed{1} ... again \boxed{1}", 1.0),  # repeated identical box
    ("3", r"\boxed{\boxed{3}}", 1.0),  # nested box
    ("73", "Final Answer: **73**", 1.0),  # bold markdown
    ("73", "**Final Answer:** 73", 1.0),  # bold label
    ("42", "#### 42\n" + "Everything above checks out. " * 20, 1.0),  # GSM8K marker + long tail
    ("42", "#### 42\nThen 3 more checks of 17.", 1.0),  # GSM8K marker + numbers after it
    ("42", "<think>\n12 + 30 = 42\n</think>\n<answer>\n42\n</answer>", 1.0),  # answer block, no box
    ("42", "<think>maybe \\boxed{42}</think><answer>41</answer>", 0.0),  # guess in the reasoning
    ("42", "<think>maybe \\boxed{42}</think>", 0.0),  # think block, nothing after it
    ("42", "<think>maybe \\boxed{42}</think>So it is 42.", 1.0),  # answer after </think>, no block
    ("42", "<think>so 42", 0.0),  # reasoning never closed
    ("42", "<think>a</think><answer>41</answer><answer>42</answer>", 1.0),  # last answer block
    ("42", "<think>a <answer>42</answer></think><answer>41</answer>", 0.0),  # answer block inside think
    ("42", "", 0.0),  # empty completion, valid gold
]


@pytest.mark.parametrize("gold,completion,expected", ROWS)
def test_math_accuracy(gold, completion, expected):
    assert get("math")([""], [completion], answer=[gold]) == [expected]


def test_whole_table_in_one_batch_matches_row_by_row():
    fn = get("math")
    golds, completions, expected = zip(*ROWS)
    assert fn([""] * len(ROWS), list(completions), answer=list(golds)) == list(expected)
    assert fn.stats.none_count == sum(e is None for e in expected)


PREFILL_ROWS = [
    # (completion after a prompt that opened <think>, expected)
    ("6*7 = 42\n</think>\n<answer>42</answer>", 1.0),  # reasoning closed, answer block
    ("maybe \\boxed{42}", 0.0),  # never closed: the text is reasoning, not an answer
    ("maybe \\boxed{41}</think>\\boxed{42}", 1.0),  # box after </think>
]


@pytest.mark.parametrize("completion,expected", PREFILL_ROWS)
def test_math_with_think_prefill(completion, expected):
    assert get("accuracy")([PREFILL], [completion], answer=["42"]) == [expected]


def test_answer_candidate_and_prose():
    assert answer_candidate(r"\boxed{1} then \boxed{2}") == r"\boxed{2}"
    assert answer_candidate("The rate is 28 percent.") == "The rate is 28 percent"
    assert answer_candidate("$\\frac{1}{2}$") == r"\boxed{\frac{1}{2}}"
    assert answer_candidate("") is None
    assert not has_prose(r"x \in [1, 2] \text{ or } y = 3")
    assert has_prose("forty-two")


def test_conversational_completion_and_int_gold():
    completion = [{"role": "assistant", "content": r"so \boxed{12}"}]
    assert get("math")([[{"role": "user", "content": "q"}]], [completion], answer=[12]) == [1.0]


def test_a_check_past_its_deadline_scores_zero_is_counted_and_the_pool_recovers():
    fn = get("math", timeout=1.0)
    tower = r"\boxed{\dfrac{5^{\left(5^{\left(5^{\left(5^5\right)}\right)} - 4\right)} - 5}{16}}"
    assert fn(["", ""], [tower, r"\boxed{1}"], answer=["1", "1"]) == [0.0, 1.0]
    assert fn.stats.timeout_count == 1
    assert fn([""], [r"\boxed{2}"], answer=["2"]) == [1.0]  # the killed worker was replaced

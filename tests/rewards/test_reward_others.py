"""Table-driven tests of language, cosine_length, overlong, repetition and reasoning_gym."""

import json

import pytest
import reasoning_gym

from rewards import get
from rewards.length import cosine_scaled, kimi_length, overlong_penalty

LANGUAGE_ROWS = [
    # (language, prompt, completion, expected)
    ("en", "", "<think>First add the numbers, then check.</think><answer>4</answer>", 1.0),  # all English
    ("en", "", "<think>First 我们 add</think><answer>4</answer>", 0.5),  # 2 English words, 2 Han characters
    ("en", "", "<think>Добавим numbers</think><answer>4</answer>", 0.5),  # Cyrillic word mixed in
    ("en", "", "<think>Add $\\alpha + \\beta$ and ```\nx = 1\n```</think>", 1.0),  # math and code are not prose
    ("en", "", "<think>12 + 30 = 42</think><answer>42</answer>", None),  # no words at all: cannot judge
    ("en", "", "plain text without tags", 1.0),  # no think block: the whole completion
    ("en", "<think>\n", "Prefilled reasoning 然后</think><answer>x</answer>", 0.5),  # prefill-aware
    ("en", "", "<think>Reasoning</think><answer>答案是四</answer>", 1.0),  # only the reasoning counts
    ("zh", "", "<think>先计算 then 检查</think>", 5 / 6),  # Chinese target: 5 Han characters, 1 English word
    ("ja", "", "<think>まず計算する</think>", 1.0),  # kana and kanji are both Japanese
    ("ru", "", "<think>Сначала add</think>", 0.5),  # Cyrillic target
    ("fr", "", "<think>D'abord, l'addition très simple</think>", 1.0),  # accented Latin counts for French
    ("en", "", "<think>très simple</think>", 0.5),  # but not for English (ASCII only)
]


@pytest.mark.parametrize("language,prompt,completion,expected", LANGUAGE_ROWS)
def test_language(language, prompt, completion, expected):
    value = get("language", language=language)([prompt], [completion])[0]
    assert value == (None if expected is None else pytest.approx(expected))


def test_language_rejects_unknown_language():
    with pytest.raises(ValueError, match="supported"):
        get("language", language="klingon")


COSINE_ROWS = [
    # (correct, length, expected) with max_len=100 and open-r1's values
    (True, 0, 1.0),  # short and right: the most
    (True, 50, 0.75),  # halfway
    (True, 100, 0.5),  # at the limit
    (True, 10_000, 0.5),  # beyond the limit: clamped
    (False, 0, -1.0),  # short and wrong: the worst
    (False, 100, -0.5),  # long and wrong: punished less
    (False, -5, -1.0),  # nonsense length: clamped at 0
]


@pytest.mark.parametrize("correct,length,expected", COSINE_ROWS)
def test_cosine_scaled_formula(correct, length, expected):
    assert cosine_scaled(correct, length, 100, -1.0, -0.5, 0.5, 1.0) == pytest.approx(expected)


def test_cosine_length_reward_uses_tokens_then_characters():
    fn = get("cosine_length", max_len=10)
    completions = [r"\boxed{4}", r"\boxed{5}", r"\boxed{4}"]
    ids = [[1] * 10, [1] * 0, [1] * 5]  # token counts given: 10, 0, 5
    assert fn([""] * 3, completions, answer=["4", "4", "4"], completion_ids=ids) == pytest.approx([0.5, -1.0, 0.75])
    # without completion_ids the length is in characters: len(r"\boxed{4}") == 9 of max 10
    (value,) = fn([""], [r"\boxed{4}"], answer=["4"])
    assert value == pytest.approx(cosine_scaled(True, 9, 10, -1.0, -0.5, 0.5, 1.0))
    assert fn([""], ["x"], answer=["forty-two apples"]) == [None]  # accuracy None -> None


@pytest.mark.parametrize("name", ["cosine_length", "overlong"])
def test_length_rewards_refuse_token_ids_for_only_some_rows(name):
    # Falling back to characters for the whole batch would make a row's score depend on its
    # neighbours (and mix units); the error names the reward and the counts.
    fn = get(name)
    with pytest.raises(ValueError, match=rf"reward '{name}': completion_ids given for 1 of 2 rows"):
        fn(["", ""], [r"\boxed{4}", r"\boxed{4}"], answer=["4", "4"], completion_ids=[[1] * 5, None])


KIMI_ROWS = [
    # (lengths, correct, groups, expected): Kimi k1.5 length reward, per problem
    ([10, 20, 30], [True, True, True], ["q"] * 3, [0.5, 0.0, -0.5]),  # shortest +0.5, longest -0.5
    ([10, 20, 30], [False, False, False], ["q"] * 3, [0.0, 0.0, -0.5]),  # wrong: never above 0
    ([10, 30, 10, 30], [True] * 4, ["a", "a", "b", "b"], [0.5, -0.5, 0.5, -0.5]),  # min/max per problem
    ([10, 30, 20], [True, True, True], ["a", "a", "b"], [0.5, -0.5, 0.0]),  # a lone response: no spread
    ([25, 25], [True, False], ["q", "q"], [0.0, 0.0]),  # equal lengths: 0
    ([10, 40, 20], [None, True, True], ["q"] * 3, [None, -0.5, pytest.approx(1 / 6)]),  # None's length still counts
]


@pytest.mark.parametrize("lengths,correct,groups,expected", KIMI_ROWS)
def test_kimi_length_formula(lengths, correct, groups, expected):
    assert kimi_length(lengths, correct, groups) == expected


def test_kimi_length_groups_by_id_then_prompt_and_scores_correctness():
    fn = get("kimi_length")
    completions = [r"\boxed{4}", r"\boxed{4}", r"\boxed{5}", r"\boxed{4}"]
    ids = [[1] * 10, [1] * 30, [1] * 10, [1] * 30]
    by_id = fn([""] * 4, completions, answer=["4"] * 4, id=["a", "a", "b", "b"], completion_ids=ids)
    assert by_id == [0.5, -0.5, 0.0, -0.5]  # b's short answer is wrong: min(0, 0.5)
    by_prompt = fn(["p", "p", "q", "q"], completions, answer=["4"] * 4, completion_ids=ids)  # no id column
    assert by_prompt == by_id
    assert fn(["", ""], ["x", "y"], answer=["forty-two apples"] * 2, id=["a", "a"]) == [None, None]


OVERLONG_ROWS = [
    # (length, expected) with max_tokens=100, cache_tokens=20 (DAPO soft overlong punishment)
    (0, 0.0),  # empty
    (80, 0.0),  # exactly at max - cache
    (81, -0.05),  # first token in the cache zone
    (90, -0.5),  # halfway through the cache zone
    (100, -1.0),  # at the limit
    (101, -1.0),  # beyond
]


@pytest.mark.parametrize("length,expected", OVERLONG_ROWS)
def test_overlong(length, expected):
    assert overlong_penalty(length, 100, 20) == pytest.approx(expected)
    fn = get("overlong", max_tokens=100, cache_tokens=20)
    assert fn([""], ["x"], completion_ids=[[0] * length]) == [pytest.approx(expected)]


def test_overlong_parameters_are_checked():
    with pytest.raises(ValueError, match="cache_tokens"):
        get("overlong", max_tokens=10, cache_tokens=20)


REPETITION_ROWS = [
    # (ngram, text, expected) with max_penalty=-1
    (3, "the quick brown fox jumps over the lazy dog", 0.0),  # no repeated trigram
    (3, "a b", 0.0),  # shorter than one n-gram
    (2, "go on " * 50, -(1 - 2 / 99)),  # two distinct bigrams out of 99
    (1, "x x x x", -0.75),  # unigrams: 1 distinct of 4
    (3, "A B C a b c", -0.25),  # lower-cased: 3 distinct trigrams... of 4
]


@pytest.mark.parametrize("ngram,text,expected", REPETITION_ROWS)
def test_repetition(ngram, text, expected):
    assert get("repetition", ngram=ngram)([""], [text]) == [pytest.approx(expected)]


def test_repetition_max_penalty_scales_and_is_checked():
    assert get("repetition", ngram=1, max_penalty=-0.5)([""], ["x x x x"]) == [pytest.approx(-0.375)]
    with pytest.raises(ValueError):
        get("repetition", max_penalty=0.5)


def _rg_entry(task: str, seed: int = 0) -> dict:
    return json.loads(json.dumps(reasoning_gym.create_dataset(task, size=1, seed=seed)[0]))


def test_reasoning_gym_uses_the_task_verifier():
    countdown, chain = _rg_entry("countdown"), _rg_entry("chain_sum")
    v = lambda task, entry: json.dumps({"kind": "reasoning_gym", "task": task, "entry": entry})  # noqa: E731
    rows = [
        # (completion, verification, expected)
        (f"<think>search</think><answer>{countdown['answer']}</answer>", v("countdown", countdown), 1.0),  # right
        ("<think>search</think><answer>1 + 1</answer>", v("countdown", countdown), 0.05),  # task's partial credit
        (f"<think>{countdown['answer']}</think><answer>2</answer>", v("countdown", countdown), 0.05),  # think ignored
        (f"so \\boxed{{{chain['answer']}}}", v("chain_sum", chain), 1.0),  # boxed answer, no tags
        ("<answer>9**9**9**9</answer>", v("countdown", countdown), 0.0),  # the verifier hangs: deadline, 0.0
        ("x", json.dumps({"kind": "reasoning_gym", "task": "chain_sum"}), None),  # no entry: cannot judge
    ]
    completions, verifications, expected = zip(*rows)
    for name in ("reasoning_gym", "accuracy"):
        fn = get(name, timeout=2.0)
        scores = fn([""] * len(rows), list(completions), verification=list(verifications))
        assert scores == [pytest.approx(e) if e is not None else None for e in expected], name
        assert fn.stats.timeout_count == 1 and fn.stats.none_count == 1


def test_accuracy_dispatch_by_verification():
    code = {"kind": "python_tests", "entry_point": "inc", "test": "def check(f):\n    assert f(1) == 2\n"}
    chain = {
        "kind": "reasoning_gym",
        "task": "chain_sum",
        "entry": {"question": "1 + 2 =", "answer": "3", "metadata": {}},
    }
    rows = [
        # (completion, answer, verification, expected)
        (r"\boxed{3}", "3", "", 1.0),  # empty verification: math-verify against the answer
        (r"\boxed{3}", "3", "{}", 1.0),  # empty object: the same
        (r"\boxed{3}", "3", {"kind": "math"}, 1.0),  # explicit math kind, as a dict
        ("def inc(x):\n    return x + 1\n", "", json.dumps(code), 1.0),  # code tests
        ("def inc(x):\n    return x\n", "", json.dumps(code), 0.0),  # failing code
        ("<answer>3</answer>", "", json.dumps(chain), 1.0),  # reasoning-gym verifier
        (r"\boxed{3}", "3", json.dumps({"kind": "lean_proof"}), None),  # unknown kind: cannot judge
        (r"\boxed{3}", "3", "{not json", None),  # broken JSON: cannot judge
        ("x", "", json.dumps({**chain, "entry": "{broken"}), None),  # broken reasoning-gym entry
        ("x", "", json.dumps({**code, "test": "assert 1\x00"}), None),  # tests that do not parse
        ("Hello!", "", "", None),  # general domain: no gold, no tests
    ]
    completions, answers, verifications, expected = zip(*rows)
    scores = get("accuracy")(
        [""] * len(rows), list(completions), answer=list(answers), verification=list(verifications)
    )
    assert scores == list(expected)

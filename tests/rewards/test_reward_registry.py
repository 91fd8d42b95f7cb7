"""The flat registry: names, duplicates, unknown names, dotted paths, parameters, docs."""

import re
from pathlib import Path

import pytest

from rewards import REGISTRY, available, get, register
from rewards.base import Reward
from rewards.registry import UnknownRewardError

EXPECTED = {
    "format",
    "tag_count",
    "accuracy",
    "math",
    "code",
    "code_binary",
    "reasoning_gym",
    "language",
    "cosine_length",
    "kimi_length",
    "overlong",
    "repetition",
    "reasoning_steps",
    "refusal",
    "reward_model",
}


def constant_reward(prompts, completions, value=0.5, **kwargs):
    """A plain-function reward, loaded by dotted path below."""
    return [value] * len(completions)


def test_registry_has_the_contract_names():
    assert set(REGISTRY) == EXPECTED


def test_duplicate_names_are_refused():
    with pytest.raises(ValueError, match="already registered"):

        @register("format")
        class Another(Reward):
            pass


def test_unknown_name_lists_the_valid_names():
    with pytest.raises(UnknownRewardError) as info:
        get("acuracy")
    assert isinstance(info.value, KeyError) and isinstance(info.value, ValueError)
    assert "accuracy, code, code_binary" in str(info.value)


def test_unknown_parameter_lists_the_valid_ones():
    with pytest.raises(TypeError, match="valid parameters: ngram, max_penalty"):
        get("repetition", n=3)


def test_dotted_paths():
    fn = get("rewards.format:Format", assume_think_open=True)
    assert fn(["q"], ["a</think><answer>1</answer>"]) == [1.0]
    plain = get(f"{__name__}:constant_reward")
    assert plain([""], ["x"]) == [0.5]
    bound = get(f"{__name__}:constant_reward", value=2.0)
    assert bound([""], ["x"]) == [2.0]


def test_available_describes_every_reward():
    rows = available()
    assert [name for name, _, _ in rows] == sorted(EXPECTED)
    for name, _params, semantics in rows:
        assert semantics and not semantics.startswith(" "), name
    assert ("repetition", "ngram=3, max_penalty=-1.0") in [(n, p) for n, p, _ in rows]


def test_docs_name_every_reward():
    docs = Path(__file__).resolve().parents[2] / "docs" / "rewards.md"
    text = docs.read_text(encoding="utf-8")
    documented = set(re.findall(r"^\| `([a-z_]+)` \|", text, re.MULTILINE))
    assert documented == EXPECTED

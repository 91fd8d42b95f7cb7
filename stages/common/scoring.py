r"""Scoring sampled completions: rewards per completion, the answer a sample votes for, majority vote.

Shared by ``generate`` (rewards stored per SFT row, read by the filters), ``eval`` (correctness
and format per sample, ``maj@k``) and ``grpo`` (:class:`RenderedPrompts`).

**Rewards see the rendered prompt.** A chat template may open the assistant turn itself:
DeepSeek-R1-Distill and Qwen3 (thinking) end the generation prompt with ``<think>\n``, so a
completion starts inside the reasoning (``2+2=4\n</think>\n<answer>4</answer>``). The rewards
read that prefill from the prompt *text* (``rewards.text.think_prefill``); given the message
list they saw none, and a perfect completion scored format 0.0 (``generate``'s
``require_format`` dropped every sample, eval's format rate read 0) while a guess inside
reasoning that never closed was graded as an answer. So every path hands them the prompt as
the model saw it, and the stored assistant turn is the prefill plus the completion
(:func:`assistant_turn`).
"""

from __future__ import annotations

from collections import Counter
from typing import Any

REWARD_COLUMNS = ("answer", "verification", "domain", "data_source", "id")  # prompt-row columns rewards read


def score(
    reward_names: list[str], rows: list[dict], completions: list[str], prompts: list[str] | None = None
) -> dict[str, list]:
    """Score ``completions`` (one per prompt row, aligned) with each named reward.

    Rewards get the TRL signature (``prompts, completions, **columns``) with the prompt-row
    columns of ``REWARD_COLUMNS``. ``prompts``: the rendered prompt of each row, the text the
    completion continues (``Sampler.render``; module docstring); None = the rows' own prompts
    (messages are then seen without the template's prefill). Returns name -> list of
    ``float | None`` (None: the reward cannot judge that completion). Raises what
    ``rewards.registry.get`` raises for an unknown name.
    """
    from rewards import registry

    columns = {k: [r[k] for r in rows] for k in REWARD_COLUMNS}
    prompts = [r["prompt"] for r in rows] if prompts is None else prompts
    return {name: list(registry.get(name)(prompts, completions, **columns)) for name in reward_names}


def assistant_turn(rendered_prompt: str, completion: str) -> str:
    r"""The whole assistant turn: the ``<think>`` the chat template opened it with (if any), then
    the completion. What an SFT row and an eval sample store, so they read as R1 layout.

    >>> assistant_turn("<|im_start|>assistant\n<think>\n", "2+2=4\n</think>\n<answer>4</answer>")
    '<think>\n2+2=4\n</think>\n<answer>4</answer>'
    """
    from rewards.text import think_prefill

    return think_prefill(rendered_prompt) + completion


class RenderedPrompts:
    """A registered reward (``rewards.base.Reward``) that TRL's ``GRPOTrainer`` calls with the
    prompts rendered by ``tokenizer``'s chat template (with the generation prompt, as TRL renders
    them for the policy). TRL passes the conversational prompts as message lists, in which the
    rewards cannot see a template's ``<think>`` prefill (module docstring). Keeps the reward's
    ``__name__`` (TRL's metric names) and ``stats`` (``reward_stats/*``)."""

    def __init__(self, reward: Any, tokenizer: Any):
        self.reward, self.tokenizer = reward, tokenizer
        self.__name__ = reward.__name__

    @property
    def stats(self):
        return self.reward.stats

    def render(self, prompt: Any) -> Any:
        if (
            isinstance(prompt, (list, tuple))
            and prompt
            and isinstance(prompt[-1], dict)
            and prompt[-1].get("role") != "assistant"
        ):  # an assistant prefill: the reward reads it as is
            return self.tokenizer.apply_chat_template(list(prompt), tokenize=False, add_generation_prompt=True)
        return prompt

    def rendered(self, prompts) -> list[Any]:
        """:meth:`render` of each prompt, each distinct prompt once (a group's G prompts are the same)."""
        import json

        cache: dict[str, Any] = {}
        out = []
        for p in prompts:
            key = json.dumps(p, sort_keys=True, default=str)
            if key not in cache:
                cache[key] = self.render(p)
            out.append(cache[key])
        return out

    def __call__(self, prompts, completions, **columns):
        return self.reward(self.rendered(prompts), completions, **columns)


class AssistantTurns(RenderedPrompts):
    """A registered reward that scores the conversation (``reads_messages``: a reward model,
    ``rewards.reward_model``), called by TRL's ``GRPOTrainer``: it gets the prompt as messages
    (an ``r1_zero`` string becomes one user message with its question, ``data.prompts.question_of``)
    and each completion as the whole assistant turn, the template's ``<think>`` prefill included
    (:func:`assistant_turn`): what the ``preference_pairs`` stage stores and the
    ``reward_model`` stage trains on."""

    def __call__(self, prompts, completions, **columns):
        from data.prompts import question_of
        from rewards.base import completion_text

        # TRL passes a conversational completion as messages; a prompt that ends with an
        # assistant prefill renders as itself (a list): no <think> prefill then
        turns = [
            assistant_turn(r if isinstance(r, str) else "", completion_text(c))
            for r, c in zip(self.rendered(prompts), completions)
        ]
        messages = [[{"role": "user", "content": question_of(p)}] if isinstance(p, str) else p for p in prompts]
        return self.reward(messages, turns, **columns)


def with_rendered_prompts(reward: Any, tokenizer: Any) -> Any:
    """``reward`` wrapped in :class:`RenderedPrompts` when it is a registered reward (which reads
    prompts as text), in :class:`AssistantTurns` when it reads the conversation
    (``reads_messages``); another callable (a user's ``module:attr``) keeps TRL's contract."""
    from rewards.base import Reward

    if not isinstance(reward, Reward):
        return reward
    return (
        AssistantTurns(reward, tokenizer)
        if getattr(reward, "reads_messages", False)
        else RenderedPrompts(reward, tokenizer)
    )


def vote_key(text: str, domain: str) -> str | None:
    """The final answer a sample votes for in ``maj@k``: the answer region graded by the
    rewards (``rewards.text.answer_region``: last ``<answer>`` block after ``</think>``); for
    math its graded candidate (last ``\\boxed{}``, else the short answer, as
    ``rewards.math.answer_candidate``); whitespace collapsed, lower-cased. None = no answer.
    Answers are clustered by this string, not by mathematical equivalence (``1/2`` and
    ``0.5`` are two votes).

    >>> vote_key("<think>hm</think><answer> 42 </answer>", "math")
    '\\\\boxed{42}'
    >>> vote_key("<think>never closed", "math") is None
    True
    """
    from rewards.math import answer_candidate
    from rewards.text import answer_region

    region = answer_region(text)
    if region is None:
        return None
    key = answer_candidate(region) if domain == "math" else region
    key = " ".join((key or "").split()).lower()
    return key or None


def majority_vote(keys: list[str | None], correct: list[bool]) -> tuple[str | None, bool]:
    """``maj@k`` of one question (self-consistency, Wang et al. 2023): the most frequent
    non-empty answer and whether it is correct. Ties go to the answer seen first (lowest sample
    index), so the result is deterministic; no answer at all -> (None, False).

    >>> majority_vote(["a", "b", "b", None], [True, False, False, False])
    ('b', False)
    """
    votes = Counter(k for k in keys if k is not None)
    if not votes:
        return None, False
    top = max(votes, key=lambda k: (votes[k], -keys.index(k)))
    return top, next(c for k, c in zip(keys, correct) if k == top)

"""Chat templates: where an assistant turn ends, and training templates derived from a model's own.

Two facts every generation and SFT path needs, read from the tokenizer's chat template instead of
assumed per model family:

- **The end-of-turn token** (:func:`end_of_turn_token`): the token the template writes right after
  an assistant's content (``<|im_end|>`` for ChatML models, ``<|eot_id|>`` for Llama 3,
  ``<end_of_turn>`` for Gemma). Base models often declare another EOS: Qwen2.5-Math-1.5B's
  tokenizer and ``generation_config.json`` both say ``<|endoftext|>`` (id 151643) while its
  template ends turns with ``<|im_end|>`` (151645). vLLM stops on the tokenizer's EOS and the
  generation config's ``eos_token_id`` only (``SamplingParams.update_from_generation_config``),
  transformers' ``generate`` on the generation config's, TRL's GRPO on both; so without the
  end-of-turn id as an explicit stop, such a model writes past the end of its answer
  (``<|im_end|><|im_start|>user ...``) until ``<|endoftext|>`` or the token limit.
  :func:`stop_token_ids` is the list every sampler passes (``stages/common/sampling.py``: vLLM in
  process, vLLM server, HF ``generate``; :func:`use_end_of_turn_stops` for TRL's GRPO).
- **A training template** (:func:`derive_chatml_training_template`): TRL's assistant-only loss
  needs ``{% generation %}`` markers, which models' own templates rarely have, and TRL only
  patches templates it knows byte for byte (``trl.chat_template_utils.get_training_chat_template``
  compares strings; Qwen2.5-Math's template differs from Qwen2.5's in its default system prompt
  alone, so it matches nothing). For ChatML templates the training template is derived here:
  the default system prompt is read from what the model's template renders, and the result is
  accepted only if it renders the probe conversations byte for byte like the model's own
  (``stages.sft.training_template`` checks that). The markers cover each assistant turn's content
  and its end-of-turn token, not the role header nor the newline after the end-of-turn token,
  which the model never generates (generation stops at ``<|im_end|>``).
"""

from __future__ import annotations

import json
from typing import Any

# Text that no template rewrites: no whitespace (templates trim), no markup.
_PROBE = "R1ENDOFTURNPROBE"


def _after_assistant_turn(tokenizer) -> str | None:
    """What the chat template writes right after an assistant turn's content (up to the next
    turn's content), or None when it cannot render the probe conversations. Probed with a turn
    that is followed by another (some templates close a turn only then) and, failing that, with
    a final one."""
    for messages in (
        [
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": _PROBE},
            {"role": "user", "content": "Bye"},
        ],
        [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": _PROBE}],
    ):
        try:
            text = tokenizer.apply_chat_template(messages, tokenize=False)
        except Exception:  # noqa: BLE001 - a template that refuses this conversation: try the next one
            continue
        at = text.rfind(_PROBE)
        if at >= 0:
            rest = text[at + len(_PROBE) :]
            return rest[: rest.find("Bye")] if len(messages) == 3 and "Bye" in rest else rest
    return None


def end_of_turn_token(tokenizer) -> str | None:
    """The special token that closes an assistant turn in ``tokenizer``'s chat template.

    The first token after an assistant turn's content, past whitespace (Llama 2 writes
    ``" </s>"``), is the end-of-turn token when it is one of the tokenizer's added (special)
    tokens (``<|im_end|>``, ``<|eot_id|>``, ``<end_of_turn>``, ``<｜end▁of▁sentence｜>``). None: no
    chat template, or the template writes nothing special there.
    """
    if not getattr(tokenizer, "chat_template", None):
        return None
    rest = _after_assistant_turn(tokenizer)
    ids = tokenizer(rest, add_special_tokens=False)["input_ids"] if rest else []
    for token in ids:
        if token in tokenizer.added_tokens_decoder:
            return tokenizer.convert_ids_to_tokens(token)
        if tokenizer.decode([token]).strip():
            return None  # text before any special token: the turn ends with plain text
    return None


def require_end_of_turn(tokenizer, model: str) -> str:
    """The end-of-turn token of ``model``'s chat template, for prompts given as messages.

    Without it a sampler could stop only at the EOS, which a base model's template need not
    write after a turn: the model would write the next turns itself until EOS or the token
    limit (Qwen2.5 base and Llama 3 base declare an EOS other than their end-of-turn token;
    :func:`stop_token_ids` adds the end of turn when it can be read from the template).

    Raises:
        ValueError: no chat template, or none whose assistant turn ends with a special token
            (the message names ``model`` and what its template writes there).
    """
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError(
            f"{model}: the tokenizer has no chat template, so chat prompts (messages) cannot be "
            "rendered; use prompts as text (`template: r1_zero`, for base models) or a model with "
            "a chat template"
        )
    eot = end_of_turn_token(tokenizer)
    if eot is None:
        rest = _after_assistant_turn(tokenizer)
        raise ValueError(
            f"{model}: cannot tell where an assistant turn ends: its chat template writes "
            f"{rest!r} after the turn, which starts with no special token, so generation would stop only "
            f"at the EOS {getattr(tokenizer, 'eos_token', None)!r} and run into the next turns; use prompts "
            "as text (`template: r1_zero`) or a template that closes a turn with a special token"
        )
    return eot


def stop_token_ids(tokenizer, generation_eos: int | list[int] | None = None) -> list[int]:
    """Token ids that end a completion: the end-of-turn token, the tokenizer's EOS, then any other
    EOS of the generation config (``generation_eos``), without duplicates, in that order.

    >>> # Qwen2.5-Math-1.5B: end of turn <|im_end|> = 151645, EOS <|endoftext|> = 151643
    >>> # stop_token_ids(tokenizer, 151643) == [151645, 151643]
    """
    ids: list[int] = []
    eot = end_of_turn_token(tokenizer)
    if eot is not None:
        ids.append(tokenizer.convert_tokens_to_ids(eot))
    if getattr(tokenizer, "eos_token_id", None) is not None:
        ids.append(tokenizer.eos_token_id)
    extra = [] if generation_eos is None else [generation_eos] if isinstance(generation_eos, int) else generation_eos
    ids += list(extra)
    return list(dict.fromkeys(ids))


def use_end_of_turn_stops(trainer: Any, tokenizer) -> list[int]:
    """Make a TRL ``GRPOTrainer`` stop every rollout at the end of the assistant turn.

    TRL 1.16 ends a completion at ``model.generation_config.eos_token_id`` + the tokenizer's EOS
    (``GRPOTrainer.eos_token_ids``: HF generation, the completion mask, ``clipped_ratio`` and
    ``mask_truncated_completions``) and samples with vLLM's own stop rules (EOS only). This adds
    the end-of-turn id to all of them: ``eos_token_ids``; the vLLM sampling parameters
    (``vllm_generation.generation_kwargs["stop_token_ids"]``, sent both to a colocated engine and
    to a server's ``/v1/completions``); or, without vLLM, the HF generation config. The policy's
    ``generation_config`` gets the same list, so the saved model stops at the end of its turn too.

    Returns:
        The stop ids (end-of-turn first).

    Raises:
        RuntimeError: this TRL version lays the trainer out differently (names the attribute).
    """
    model = trainer.model
    ids = stop_token_ids(tokenizer, model.generation_config.eos_token_id)
    if not hasattr(trainer, "eos_token_ids"):
        raise RuntimeError("GRPOTrainer has no eos_token_ids (TRL version?); update pipeline/templates.py")
    trainer.eos_token_ids = list(ids)
    if getattr(trainer, "use_vllm", False):
        generation = trainer.vllm_generation
        generation.generation_kwargs = {**(generation.generation_kwargs or {}), "stop_token_ids": list(ids)}
    else:
        trainer.generation_config.eos_token_id = list(ids)
        trainer.generation_kwargs["eos_token_id"] = list(ids)
    model.generation_config.eos_token_id = list(ids) if len(ids) > 1 else ids[0]
    return ids


def chatml_default_system(tokenizer) -> tuple[bool, str | None]:
    """``(is_chatml, default_system_prompt)`` of ``tokenizer``'s template, read from what it renders.

    ChatML: a user turn renders as ``<|im_start|>user\\n...<|im_end|>\\n``. The default system
    prompt is the system turn the template adds before a conversation without one (None: it adds
    none).
    """
    template = getattr(tokenizer, "chat_template", None)
    if not isinstance(template, str) or "<|im_start|>" not in template:
        return False, None
    try:
        text = tokenizer.apply_chat_template([{"role": "user", "content": _PROBE}], tokenize=False)
    except Exception:  # noqa: BLE001 - not renderable this way: not a template we can derive from
        return False, None
    user = f"<|im_start|>user\n{_PROBE}<|im_end|>\n"
    if not text.endswith(user):
        return False, None
    head = text[: -len(user)]
    if not head:
        return True, None
    start, end = "<|im_start|>system\n", "<|im_end|>\n"
    if head.startswith(start) and head.endswith(end) and head.count("<|im_start|>") == 1:
        return True, head[len(start) : -len(end)]
    return False, None


_CHATML_TRAINING = """{#- ChatML training template derived by pipeline/templates.py from the model's own template:
same text, with {% generation %} markers around each assistant turn's content and <|im_end|>. -#}
{%- set default_system = DEFAULT_SYSTEM -%}
{%- for message in messages -%}
    {%- if loop.first and message['role'] != 'system' and default_system is not none -%}
        {{- '<|im_start|>system\\n' + default_system + '<|im_end|>\\n' -}}
    {%- endif -%}
    {%- if message['role'] not in ['system', 'user', 'assistant'] or message.get('tool_calls') -%}
        {{- raise_exception('the derived ChatML training template renders system, user and assistant turns '
                            'without tool calls only; role: ' + message['role']) -}}
    {%- endif -%}
    {%- if message['role'] == 'assistant' -%}
        {{- '<|im_start|>assistant\\n' -}}
        {%- generation -%}
            {{- message['content'] + '<|im_end|>' -}}
        {%- endgeneration -%}
        {{- '\\n' -}}
    {%- else -%}
        {{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' -}}
    {%- endif -%}
{%- endfor -%}
{%- if add_generation_prompt -%}
    {{- '<|im_start|>assistant\\n' -}}
{%- endif -%}"""


def derive_chatml_training_template(tokenizer) -> str | None:
    """A ChatML training template (``{% generation %}`` markers) with the model's default system
    prompt, or None when the model's template is not ChatML. The caller checks that it renders like
    the model's own (``stages.sft._renders_like``): a template that adds more (tools, dates,
    reasoning tags) fails that check and is not used.
    """
    chatml, system = chatml_default_system(tokenizer)
    if not chatml:
        return None
    # A Jinja string literal is decoded with Python's unicode-escape: JSON's escapes (\\n, \\", \\\\)
    # decode back to the same characters.
    literal = "none" if system is None else json.dumps(system, ensure_ascii=False)
    return _CHATML_TRAINING.replace("DEFAULT_SYSTEM", literal, 1)

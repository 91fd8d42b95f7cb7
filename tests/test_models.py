"""Model aliases, the GGUF conversion, the training chat template and tiny test models."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from pipeline import models

ALIAS = "smollm2-135m-instruct"
TEMPLATE = Path(__file__).resolve().parents[1] / "stages" / "templates" / "chatml_train.jinja"

CONVERSATIONS = [
    # user only: the template inserts SmolLM2's default system prompt
    [{"role": "user", "content": "What is 2+2?"}],
    # user -> assistant with an R1-style reasoning block
    [
        {"role": "user", "content": "What is 2+2?"},
        {"role": "assistant", "content": "<think>\n2 + 2 = 4\n</think>\nThe answer is 4."},
    ],
    # explicit system prompt and two turns
    [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "Bye"},
        {"role": "assistant", "content": "See you.\n"},
    ],
]


@pytest.fixture(scope="module")
def prepared() -> Path:
    return models.prepare(ALIAS)


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_conversion_logits_equal_gguf(prepared):
    """The safetensors checkpoint computes exactly what transformers' GGUF loader computes."""
    gguf = models.gguf_path(ALIAS)
    reference = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    converted = AutoModelForCausalLM.from_pretrained(prepared)
    config = json.loads((prepared / "config.json").read_text())
    assert "quantization_config" not in config and config["dtype"] == "float32"
    assert (prepared / "model.safetensors").is_file()
    tokenizer = AutoTokenizer.from_pretrained(prepared)
    ids = tokenizer("The capital of France is Paris. 17 + 25 =", return_tensors="pt").input_ids
    with torch.no_grad():
        expected, got = reference(ids).logits, converted(ids).logits
    assert torch.equal(expected, got)


def test_prepared_model_answers_and_stops(prepared):
    """Greedy chat generation is a sensible sentence that ends with the eos <|im_end|>."""
    tokenizer = AutoTokenizer.from_pretrained(prepared)
    model = AutoModelForCausalLM.from_pretrained(prepared)
    assert tokenizer.eos_token == "<|im_end|>" and model.generation_config.eos_token_id == tokenizer.eos_token_id
    inputs = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    out = model.generate(**inputs, max_new_tokens=48, do_sample=False)
    new = out[0, inputs["input_ids"].shape[1] :].tolist()
    assert new[-1] == tokenizer.eos_token_id, "generation must stop with <|im_end|>"
    text = tokenizer.decode(new, skip_special_tokens=True)
    assert "Paris" in text


def test_prepare_reuses_the_folder(prepared):
    manifest = (prepared / models.MANIFEST).read_text()
    started = time.time()
    assert models.prepare(ALIAS) == prepared
    assert time.time() - started < 1.0
    assert (prepared / models.MANIFEST).read_text() == manifest
    assert json.loads(manifest)["source"]["sha256"] == _sha(models.gguf_path(ALIAS))


def test_resolve_order(prepared, tmp_path):
    assert models.resolve(ALIAS) == str(prepared)  # alias -> prepared folder
    local = tmp_path / "my-model"
    local.mkdir()
    assert models.resolve(str(local)) == str(local.resolve())  # existing path -> absolute path
    assert models.resolve("HuggingFaceTB/SmolLM2-360M") == "HuggingFaceTB/SmolLM2-360M"  # hub id: unchanged
    with pytest.raises(KeyError, match="known aliases"):
        models.prepared_path("no-such-alias")


def test_training_template_renders_like_the_model_template(tiny_model):
    """chatml_train.jinja = the model's template + {% generation %} markers, nothing else."""
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    template = TEMPLATE.read_text()
    for messages in CONVERSATIONS:
        for add_generation_prompt in (False, True):
            own = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
            train = tokenizer.apply_chat_template(
                messages, tokenize=False, chat_template=template, add_generation_prompt=add_generation_prompt
            )
            assert train == own, (messages, add_generation_prompt)


def test_training_template_masks_exactly_the_assistant_turns(tiny_model):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    out = tokenizer.apply_chat_template(
        CONVERSATIONS[2],
        chat_template=TEMPLATE.read_text(),
        tokenize=True,
        return_dict=True,
        return_assistant_tokens_mask=True,
    )
    trained = [t for t, m in zip(out["input_ids"], out["assistant_masks"]) if m]
    assert tokenizer.decode(trained) == "Hello!<|im_end|>See you.\n<|im_end|>"


def test_tiny_model_is_deterministic_and_loads(tiny_model, tmp_path):
    again = models.make_tiny_model(tmp_path / "again", seed=0)
    other = models.make_tiny_model(tmp_path / "other", seed=1)
    assert _sha(again / "model.safetensors") == _sha(tiny_model / "model.safetensors")
    assert _sha(other / "model.safetensors") != _sha(tiny_model / "model.safetensors")
    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    assert model.config.head_dim == 32 and model.config.num_hidden_layers == 2
    assert model.config.vocab_size == len(tokenizer) == 49152
    assert model.generation_config.eos_token_id == tokenizer.convert_tokens_to_ids("<|im_end|>")
    out = model.generate(**tokenizer("Hello", return_tensors="pt"), max_new_tokens=4, do_sample=False)
    assert out.shape[1] > 1
    with pytest.raises(ValueError, match="head_dim"):
        models.make_tiny_model(tmp_path / "bad", hidden=32, heads=2)


def test_tiny_alias_is_built_on_demand():
    path = models.prepare("tiny-random-llama")
    assert json.loads((path / models.MANIFEST).read_text())["source"]["tiny"]["num_layers"] == 2
    assert models.resolve("tiny-random-llama") == str(path)
    assert AutoModelForCausalLM.from_pretrained(path).config.head_dim == 32
    with pytest.raises(ValueError, match="not a GGUF model"):
        models.gguf_path("tiny-random-llama")


def test_cli_list_and_unknown_alias():
    from typer.testing import CliRunner

    runner = CliRunner()
    listed = runner.invoke(models.app, ["list"], env={"COLUMNS": "200"})
    assert listed.exit_code == 0 and ALIAS in listed.output
    bad = runner.invoke(models.app, ["prepare", "no-such-alias"])
    assert bad.exit_code == 2 and "known aliases" in bad.output

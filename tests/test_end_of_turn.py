"""A base model whose EOS is not its end-of-turn token (Qwen2.5-Math-1.5B): SFT template and stops.

Qwen2.5-Math-1.5B's tokenizer and generation config say EOS = ``<|endoftext|>`` while its chat
template ends turns with ``<|im_end|>``, and its template (ChatML with the system prompt "Please
reason step by step, ...") matches neither our SmolLM2 training template nor TRL's list. The
tokenizer here is the local SmolLM2 vocabulary dressed with the real ``tokenizer_config.json``
and ``generation_config.json`` of that model (``tests/fixtures/qwen2.5-math-1.5b/``, see its
README): same template, same EOS/pad/BOS, same added tokens (other ids).

For the stop tests the tiny model is rewired (:func:`_always_end_of_turn`) so that its next token
is ``<|im_end|>`` at every position (probability ~1 - 5e-9): a sampler that stops at the end of
the turn returns one token; one that stops at EOS only runs to the token limit.
"""

from __future__ import annotations

import copy
import json
import re
import shutil
from pathlib import Path

import pytest

from pipeline import templates
from pipeline.config import parse, read_yaml
from pipeline.models import make_tiny_model
from pipeline.runner import Resolver
from pipeline.stage import StepContext

REPO = Path(__file__).resolve().parents[1]
FIXTURE = REPO / "tests/fixtures/qwen2.5-math-1.5b"
QWEN_MATH_SYSTEM = "Please reason step by step, and put your final answer within \\boxed{}."
MAX_TOKENS = 8


@pytest.fixture(scope="module")
def qwen_math_tiny(r1_home, tmp_path_factory) -> Path:
    """A random tiny Llama with the Qwen2.5-Math tokenizer config (base-style: EOS <|endoftext|>)."""
    return make_tiny_model(tmp_path_factory.mktemp("qwen_math_tiny"), seed=0, tokenizer_config=FIXTURE)


@pytest.fixture(scope="module")
def tokenizer(qwen_math_tiny):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(qwen_math_tiny)


def _always_end_of_turn(src: Path, out: Path) -> Path:
    """``src`` rewired so every position predicts ``<|im_end|>``: all embeddings equal, attention and
    MLP outputs zero (the residual stream is the same vector everywhere), an untied LM head whose
    only non-zero row is ``<|im_end|>``'s, scaled to a logit of 30 (the others are 0)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    config = AutoConfig.from_pretrained(src)
    config.tie_word_embeddings = False
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    eot = AutoTokenizer.from_pretrained(src).convert_tokens_to_ids("<|im_end|>")
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith(("o_proj.weight", "down_proj.weight")):
                param.zero_()
            elif "norm" in name:
                param.fill_(1.0)
        vector = torch.linspace(-1.0, 1.0, config.hidden_size)
        model.get_input_embeddings().weight.copy_(vector.expand_as(model.get_input_embeddings().weight))
        normed = vector / vector.pow(2).mean().add(config.rms_norm_eps).sqrt()
        head = model.get_output_embeddings().weight
        head.zero_()
        head[eot] = normed * (30.0 / normed.dot(normed))
    model.generation_config = GenerationConfig.from_pretrained(src)
    model.save_pretrained(out)
    for file in src.iterdir():
        if file.name.startswith(("tokenizer", "chat_template", "special_tokens")):
            shutil.copy(file, out / file.name)
    return out


@pytest.fixture(scope="module")
def ends_turn_at_once(qwen_math_tiny, tmp_path_factory) -> Path:
    return _always_end_of_turn(qwen_math_tiny, tmp_path_factory.mktemp("ends_turn_at_once"))


# ----------------------------------------------------------------------------- item 1: SFT template


def _masked_runs(ids: list[int], mask: list[int]) -> list[list[int]]:
    runs, current = [], []
    for token, m in zip(ids, mask):
        if m:
            current.append(token)
        elif current:
            runs.append(current)
            current = []
    return runs + ([current] if current else [])


CONVERSATIONS = [
    [
        {"role": "user", "content": "What is 2+2?"},
        {"role": "assistant", "content": "<think>\n2+2=4\n</think>\nThe answer is \\boxed{4}."},
    ],
    [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "Sum 3 and 5."},
        {"role": "assistant", "content": "8"},
    ],
]


def test_the_fixture_is_a_base_style_qwen_math_tokenizer(tokenizer, qwen_math_tiny):
    from transformers import GenerationConfig

    assert tokenizer.eos_token == tokenizer.pad_token == "<|endoftext|>" and tokenizer.bos_token is None
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "1+1?"}], tokenize=False, add_generation_prompt=True
    )
    assert prompt == (
        f"<|im_start|>system\n{QWEN_MATH_SYSTEM}<|im_end|>\n<|im_start|>user\n1+1?<|im_end|>\n<|im_start|>assistant\n"
    )
    assert GenerationConfig.from_pretrained(qwen_math_tiny).eos_token_id == tokenizer.eos_token_id
    # what made SFT fail at start: TRL knows no training template for this exact template string
    from trl.chat_template_utils import get_training_chat_template

    with pytest.raises(ValueError, match="not training-compatible"):
        get_training_chat_template(tokenizer)


def test_training_template_masks_exactly_each_assistant_turn_and_its_end_of_turn(tokenizer):
    from stages import sft

    template = sft.training_template(tokenizer, "auto")
    assert "{% generation %}" in template.replace("{%- generation -%}", "{% generation %}")
    for messages in CONVERSATIONS:
        for agp in (False, True):  # training and serving render the same text
            assert tokenizer.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=agp
            ) == tokenizer.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=agp, chat_template=template
            )
        out = tokenizer.apply_chat_template(
            messages, chat_template=template, tokenize=True, return_dict=True, return_assistant_tokens_mask=True
        )
        runs = _masked_runs(out["input_ids"], out["assistant_masks"])
        answers = [m["content"] for m in messages if m["role"] == "assistant"]
        assert [tokenizer.decode(run) for run in runs] == [a + "<|im_end|>" for a in answers]
        expected = [len(tokenizer(a + "<|im_end|>", add_special_tokens=False)["input_ids"]) for a in answers]
        assert [len(run) for run in runs] == expected
    assert tokenizer.convert_ids_to_tokens(sft.stop_token_id(tokenizer, template)) == "<|im_end|>"


def test_sft_trains_the_qwen_math_tokenizer_and_serves_with_its_own_template(qwen_math_tiny, sft_dataset, tmp_path):
    from transformers import AutoTokenizer, GenerationConfig

    from stages import sft

    config = parse(
        sft.Config,
        {
            "kind": "sft",
            "model": str(qwen_math_tiny),
            "dataset": str(sft_dataset),
            "max_steps": 1,
            "per_device_train_batch_size": 4,
            "logging_steps": 1,
            "save_steps": 1,
            "dtype": "float32",
        },
        "test",
    )
    work = tmp_path / "run" / ".partial" / "sft"
    work.mkdir(parents=True)
    ctx = StepContext(run="t", step="sft", run_dir=tmp_path / "run", work_dir=work, resolver=Resolver(tmp_path, set()))
    result = sft.run(config, ctx)
    assert result.counts["steps"] == 1 and result.counts["rows"] == 24
    saved = AutoTokenizer.from_pretrained(work / "model")
    assert saved.chat_template == json.loads((FIXTURE / "tokenizer_config.json").read_text())["chat_template"]
    eos = GenerationConfig.from_pretrained(work / "model").eos_token_id
    assert saved.convert_ids_to_tokens(eos) == ["<|im_end|>", "<|endoftext|>"]


# ----------------------------------------------------------------------------- item 2: stop ids


def test_stop_ids_put_the_end_of_turn_before_the_eos(tokenizer, tiny_model):
    from transformers import AutoTokenizer

    assert templates.end_of_turn_token(tokenizer) == "<|im_end|>"
    assert tokenizer.convert_ids_to_tokens(templates.stop_token_ids(tokenizer)) == ["<|im_end|>", "<|endoftext|>"]
    smol = AutoTokenizer.from_pretrained(tiny_model)  # instruct-style: EOS already <|im_end|>
    assert smol.convert_ids_to_tokens(templates.stop_token_ids(smol)) == ["<|im_end|>"]


def _sampling(backend: str, **extra):
    from stages.common.sampling import SamplingConfig

    return SamplingConfig(
        backend=backend,
        num_samples=3,
        temperature=1.0,
        top_p=1.0,
        max_tokens=MAX_TOKENS,
        max_model_len=256,
        dtype="float32",
        **extra,
    )


PROMPTS = [[{"role": "user", "content": "What is 7 + 5?"}], [{"role": "user", "content": "Name a prime."}]]


def _assert_each_completion_is_one_end_of_turn(completions):
    assert len(completions) == 2 and all(len(c) == 3 for c in completions)
    for completion in (c for group in completions for c in group):
        assert (completion.num_tokens, completion.truncated, completion.text) == (1, False, "")


def test_hf_sampler_stops_at_the_end_of_turn(ends_turn_at_once):
    from stages.common.sampling import Sampler

    with Sampler(str(ends_turn_at_once), _sampling("hf"), seed=0) as sampler:
        _assert_each_completion_is_one_end_of_turn(sampler.sample(PROMPTS, ["a", "b"]))


@pytest.mark.slow
def test_vllm_sampler_stops_at_the_end_of_turn(ends_turn_at_once):
    pytest.importorskip("vllm")
    from stages.common.sampling import Sampler

    with Sampler(str(ends_turn_at_once), _sampling("vllm"), seed=0) as sampler:
        _assert_each_completion_is_one_end_of_turn(sampler.sample(PROMPTS, ["a", "b"]))


@pytest.mark.slow
def test_server_sampler_stops_at_the_end_of_turn(ends_turn_at_once, tmp_path):
    """The real vLLM server (started as in tests/test_vllm_server.py) on the rewired model."""
    pytest.importorskip("vllm")
    import os
    import signal
    import subprocess
    import time
    import urllib.request

    from stages.common.sampling import Sampler
    from tests.test_vllm_server import _free_port, _server_env, server_command

    port = _free_port()
    log = (tmp_path / "server.log").open("w")
    proc = subprocess.Popen(
        server_command(str(ends_turn_at_once), port, dtype="float32", max_model_len=256),
        stdout=log,
        stderr=subprocess.STDOUT,
        env=_server_env(),
        start_new_session=True,
    )
    try:
        deadline = time.time() + 900
        while True:
            assert proc.poll() is None, (tmp_path / "server.log").read_text()[-3000:]
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5):
                    break
            except OSError:
                assert time.time() < deadline, "vLLM server not healthy after 900 s"
                time.sleep(1)
        cfg = _sampling("server", server_url=f"http://127.0.0.1:{port}/v1", max_concurrency=2)
        with Sampler(str(ends_turn_at_once), cfg, seed=0) as sampler:
            _assert_each_completion_is_one_end_of_turn(sampler.sample(PROMPTS, ["a", "b"]))
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


def _grpo(model: Path, tmp_path: Path, use_vllm: bool):
    from stages import grpo

    smoke = read_yaml(REPO / ("configs/grpo/tiny/smoke.yaml" if use_vllm else "configs/grpo/tiny/hf_generate.yaml"))
    config = parse(
        grpo.Config,
        {
            **smoke,
            "model": str(model),
            "max_steps": 1,
            "max_completion_length": MAX_TOKENS,
            "rewards": [{"name": "format"}],
            "dtype": "float32",
            "vllm_dtype": "float32",
            "prompts": [{"source": "reasoning_gym", "task": "basic_arithmetic", "n_train": 8, "n_test": 0, "seed": 0}],
        },
        "test",
    )
    work = tmp_path / "run" / ".partial" / "grpo"
    work.mkdir(parents=True)
    ctx = StepContext(run="t", step="grpo", run_dir=tmp_path / "run", work_dir=work, resolver=Resolver(tmp_path, set()))
    grpo.run(config, ctx)
    step = [json.loads(line) for line in (work / "metrics.jsonl").read_text().splitlines() if '"reward"' in line][-1]
    return step, work


def _assert_rollouts_ended_at_the_turn(step: dict, work: Path) -> None:
    from transformers import AutoTokenizer, GenerationConfig

    assert step["completions/mean_length"] == 1.0 and step["completions/max_length"] == 1.0
    assert step["completions/clipped_ratio"] == 0.0  # <|im_end|> counts as an end, not a truncation
    saved = AutoTokenizer.from_pretrained(work / "model")
    eos = GenerationConfig.from_pretrained(work / "model").eos_token_id
    assert saved.convert_ids_to_tokens(eos) == ["<|im_end|>", "<|endoftext|>"]


def test_grpo_hf_rollouts_stop_at_the_end_of_turn(ends_turn_at_once, tmp_path):
    _assert_rollouts_ended_at_the_turn(*_grpo(ends_turn_at_once, tmp_path, use_vllm=False))


@pytest.mark.slow
def test_grpo_vllm_rollouts_stop_at_the_end_of_turn(ends_turn_at_once, tmp_path):
    pytest.importorskip("vllm")
    _assert_rollouts_ended_at_the_turn(*_grpo(ends_turn_at_once, tmp_path, use_vllm=True))


# ----------------------------------------------------------------------------- issue 19, item 3: any model reference


def test_a_hub_id_gets_the_end_of_turn_stop_too(ends_turn_at_once, tmp_path, monkeypatch):
    """A base model named by its hub id (what GPU users run) goes through the same stop ids as a
    local folder: read from its own tokenizer, whatever the reference. The hub is this session's
    offline cache, laid out as huggingface_hub writes it."""
    from huggingface_hub import constants

    from stages.common.sampling import Sampler

    cache, commit = tmp_path / "hub", "0123456789abcdef0123456789abcdef01234567"
    repo = cache / "models--test-org--qwen-math-base-tiny"
    shutil.copytree(ends_turn_at_once, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    ref = "test-org/qwen-math-base-tiny"
    assert Resolver(tmp_path, set()).model(ref) == ref  # passed on as a hub id
    with Sampler(ref, _sampling("hf"), seed=0) as sampler:
        assert sampler.tokenizer.convert_ids_to_tokens(sampler.stop_ids) == ["<|im_end|>", "<|endoftext|>"]
        _assert_each_completion_is_one_end_of_turn(sampler.sample(PROMPTS, ["a", "b"]))


LLAMA2_STYLE = (
    "{% for m in messages %}{% if m['role'] == 'user' %}{{ '[INST] ' + m['content'] + ' [/INST]' }}"
    "{% else %}{{ ' ' + m['content'] + ' ' + eos_token }}{% endif %}{% endfor %}"
)
PLAIN_TEXT_TURNS = (
    "{% for m in messages %}{{ '### ' + m['role'] + ':\\n' + m['content'] + '\\n\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '### assistant:\\n' }}{% endif %}"
)


def test_the_end_of_turn_is_read_past_whitespace(tokenizer):
    tokenizer = copy.deepcopy(tokenizer)
    tokenizer.chat_template = LLAMA2_STYLE  # writes " </s>"-style: a space, then the EOS
    assert templates.end_of_turn_token(tokenizer) == tokenizer.eos_token == "<|endoftext|>"


@pytest.mark.parametrize(
    "template, words",
    [
        (None, "the tokenizer has no chat template"),
        (
            PLAIN_TEXT_TURNS,
            "cannot tell where an assistant turn ends: its chat template writes '\\n\\n### user:\\n' after the turn",
        ),
    ],
)
def test_chat_prompts_for_a_model_whose_turns_cannot_end_are_refused(qwen_math_tiny, tmp_path, template, words):
    """Stop ids only at the EOS would let such a model write the next turns itself: refused when
    it is asked to answer chat prompts (sampling or GRPO), with the model named."""
    from transformers import AutoTokenizer

    from stages import grpo
    from stages.common.sampling import Sampler

    folder = tmp_path / "model"
    shutil.copytree(qwen_math_tiny, folder)
    tok = AutoTokenizer.from_pretrained(folder)
    tok.chat_template = template
    (folder / "chat_template.jinja").unlink(missing_ok=True)
    tok.save_pretrained(folder)
    if template is None:  # save_pretrained keeps no template, but the config may still carry one
        config = json.loads((folder / "tokenizer_config.json").read_text())
        config.pop("chat_template", None)
        (folder / "tokenizer_config.json").write_text(json.dumps(config))
    with Sampler(str(folder), _sampling("hf"), seed=0) as sampler:
        with pytest.raises(ValueError, match=re.escape(words)) as caught:
            sampler.sample(PROMPTS, ["a", "b"])
        assert str(folder) in str(caught.value)
        assert sampler.render("User: 1+1? Assistant:") == "User: 1+1? Assistant:"  # text prompts still work
    smoke = read_yaml(REPO / "configs/grpo/tiny/hf_generate.yaml")
    config = parse(grpo.Config, {**smoke, "model": str(folder), "max_steps": 1}, "test")
    work = tmp_path / "run" / ".partial" / "grpo"
    work.mkdir(parents=True)
    ctx = StepContext(run="t", step="grpo", run_dir=tmp_path / "run", work_dir=work, resolver=Resolver(tmp_path, set()))
    with pytest.raises(ValueError, match=re.escape(words)):
        grpo.run(config, ctx)

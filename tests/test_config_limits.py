"""Configs that look valid but cannot run are refused by ``r1 validate``, naming the key
(issue 19, items 7 and 8, and GRPO with ``temperature: 0``).

Before these checks each of the configs below validated ("ok") and failed later: at the first
step (batch size 0, top_p 0, num_samples 0, max_tokens 0), after minutes of sampling (an
``answer_regex`` without a group: ``IndexError: no such group`` at the first row, naming no
file), or never, training silently on nonsense (a negative learning rate ascends the loss,
``warmup_ratio: 1.5`` is read by transformers as 1 warm-up step).
"""

from __future__ import annotations

import pytest
import yaml
from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.config import ConfigError
from pipeline.runner import parse_stage_config

runner = CliRunner()

PROMPTS = [{"source": "reasoning_gym", "task": "basic_arithmetic", "n_train": 4, "n_test": 2}]
GRPO = {
    "kind": "grpo",
    "model": "m",
    "prompts": PROMPTS,
    "rewards": [{"name": "format"}],
    "per_device_train_batch_size": 4,
    "gradient_accumulation_steps": 2,
    "num_generations": 4,
}
SFT = {"kind": "sft", "model": "m", "dataset": "d"}
GENERATE = {"kind": "generate", "model": "m", "prompts": PROMPTS}
EVAL = {"kind": "eval", "models": ["m"], "prompts": PROMPTS}
FILE = {"source": "file", "path": "golds.jsonl"}


def _with(base: dict, **changes) -> dict:
    out = dict(base)
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = {**out[key], **value}
        else:
            out[key] = value
    return out


# (config, words the error must contain: the key and the reason)
REFUSED = {
    "batch size 0": (_with(SFT, per_device_train_batch_size=0), ["per_device_train_batch_size", "greater than 0"]),
    "batch size -1": (_with(GRPO, per_device_train_batch_size=-1), ["per_device_train_batch_size"]),
    "grad accum 0": (_with(SFT, gradient_accumulation_steps=0), ["gradient_accumulation_steps", "greater than 0"]),
    "warmup 1.5": (_with(GRPO, warmup_ratio=1.5), ["warmup_ratio must be in [0, 1), got 1.5"]),
    "negative lr": (_with(SFT, learning_rate=-1e-5), ["learning_rate must be > 0, got -1e-05"]),
    "zero lr grpo": (_with(GRPO, learning_rate=0.0), ["learning_rate must be > 0, got 0.0"]),
    "negative weight decay": (_with(SFT, weight_decay=-0.1), ["weight_decay must be >= 0"]),
    "negative grad norm": (_with(GRPO, max_grad_norm=-1.0), ["max_grad_norm must be >= 0"]),
    "save_total_limit 0": (_with(SFT, save_total_limit=0), ["save_total_limit must be >= 1"]),
    "negative beta": (_with(GRPO, beta=-0.01), ["'beta'", "greater than or equal to 0"]),
    "negative epsilon": (_with(GRPO, epsilon=-0.2), ["'epsilon'", "greater than 0"]),
    "grpo temperature 0": (_with(GRPO, temperature=0.0), ["temperature must be > 0, got 0.0", "advantage"]),
    "grpo temperature < 0": (_with(GRPO, temperature=-1.0), ["temperature must be > 0, got -1.0"]),
    "grpo top_p 0": (_with(GRPO, top_p=0.0), ["'top_p'", "greater than 0"]),
    "grpo top_p 1.5": (_with(GRPO, top_p=1.5), ["'top_p'", "less than or equal to 1"]),
    "kv cache 0": (_with(GRPO, vllm_kv_cache_gib=0), ["'vllm_kv_cache_gib'"]),
    "gpu share 0": (_with(GRPO, vllm_gpu_memory_utilization=0.0), ["'vllm_gpu_memory_utilization'"]),
    "sampling temperature < 0": (
        _with(GENERATE, sampling={"temperature": -0.5}),
        ["'sampling.temperature'", "greater than or equal to 0"],
    ),
    "sampling top_p 0": (_with(EVAL, sampling={"top_p": 0.0}), ["'sampling.top_p'", "greater than 0"]),
    "num_samples 0": (_with(GENERATE, sampling={"num_samples": 0}), ["'sampling.num_samples'", "greater than 0"]),
    "max_tokens 0": (_with(GENERATE, sampling={"max_tokens": 0}), ["'sampling.max_tokens'", "greater than 0"]),
    "max_tokens over the model length": (
        _with(EVAL, sampling={"max_tokens": 4096, "max_model_len": 2048}),
        ["max_tokens (4096) must be below max_model_len (2048)"],
    ),
    "sampling batch 0": (_with(EVAL, sampling={"batch_size": 0}), ["'sampling.batch_size'"]),
    "decontamination ngram 0": (
        _with(GENERATE, decontaminate={"eval_prompts": PROMPTS, "ngram": 0}),
        ["'decontaminate.ngram'"],
    ),
    "sft max_rows 0": (_with(SFT, max_rows=0), ["'max_rows'"]),
    "regex without a group": (
        _with(EVAL, prompts=[{**FILE, "answer_regex": r"####\s*.+"}]),
        ["answer_regex '####\\\\s*.+' has no capture group"],
    ),
    "regex that does not compile": (
        _with(EVAL, prompts=[{**FILE, "answer_regex": "#### (.+"}]),
        ["answer_regex '#### (.+' is not a valid regular expression", "missing ), unterminated subpattern"],
    ),
    "hub regex without a group": (
        _with(GENERATE, prompts=[{"source": "hub", "name": "openai/gsm8k", "answer_regex": "####"}]),
        ["prompts.0", "answer_regex '####' has no capture group"],
    ),
}


@pytest.mark.parametrize("name", list(REFUSED))
def test_validate_refuses_naming_the_key(name, tmp_path):
    config, words = REFUSED[name]
    with pytest.raises(ConfigError) as caught:
        parse_stage_config(config, "c.yaml")
    message = " ".join(str(caught.value).split())
    for word in words:
        assert word in message, message
    # and through the command a user runs
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(config))
    result = runner.invoke(app, ["validate", str(path)], env={"COLUMNS": "300"})
    assert result.exit_code == 2 and "invalid" in result.output


ACCEPTED = {
    "greedy eval": _with(EVAL, sampling={"temperature": 0.0, "num_samples": 1}),
    "no clipping": _with(SFT, max_grad_norm=0.0),
    "regex with a group": _with(EVAL, prompts=[{**FILE, "answer_regex": r"####\s*(.+)"}]),
    "server backend: the server sizes the model": _with(
        EVAL,
        sampling={
            "backend": "server",
            "server_url": "http://127.0.0.1:8000",
            "max_tokens": 4096,
            "max_model_len": 2048,
        },
    ),
}


@pytest.mark.parametrize("name", list(ACCEPTED))
def test_the_limits_keep_what_is_valid(name):
    parse_stage_config(ACCEPTED[name], "c.yaml")


def test_a_regex_branch_without_the_group_names_file_and_row(tmp_path):
    """A regex with a group can still match without it (`(\\d+)|none`): the row is named."""
    from data import BadRowError, FileSource

    path = tmp_path / "golds.jsonl"
    path.write_text('{"question": "q1?", "answer": "#### 4"}\n{"question": "q2?", "answer": "none"}\n')
    with pytest.raises(BadRowError, match=r"golds.jsonl: row 2: field 'answer': answer_regex .* without its group"):
        FileSource(path=path, answer_regex=r"#### (\d+)|none").load()

"""Shared fixtures: an isolated artifact root per test session and a tiny model.

``R1_HOME`` points at a session temp folder so tests never touch ``runs/``; a prepared
model alias found in the developer's cache (``$R1_HOME/models`` or ``<repo>/runs/models``) is
symlinked into it, so the 1-minute GGUF conversion happens once per machine, not per session.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session", autouse=True)
def r1_home(tmp_path_factory) -> Path:
    """A fresh ``R1_HOME`` for the session, reusing already-prepared model aliases."""
    home = tmp_path_factory.mktemp("r1_home")
    cache = Path(os.environ.get("R1_HOME") or REPO / "runs") / "models"
    if cache.is_dir():
        (home / "models").mkdir()
        for folder in cache.iterdir():
            if (folder / "manifest.json").is_file():  # complete conversions only
                (home / "models" / folder.name).symlink_to(folder.resolve(), target_is_directory=True)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("R1_HOME", str(home))
        mp.setenv("HF_HUB_OFFLINE", "1")  # tests must never reach a hub
        yield home


@pytest.fixture(scope="session")
def tiny_model(r1_home, tmp_path_factory) -> Path:
    """Folder of a random 2-layer Llama (head_dim 32) with the real SmolLM2 tokenizer."""
    from pipeline.models import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("tiny_model"), seed=0)


@pytest.fixture(scope="session")
def sft_dataset(tmp_path_factory) -> Path:
    """A ``dataset/`` folder (``data.parquet``, SFT-row schema) of 24 short R1-style answers."""
    import json
    import random

    import pandas as pd

    rng = random.Random(0)
    rows = []
    for i in range(24):
        a, b = rng.randint(1, 99), rng.randint(1, 99)
        rows.append(
            {
                "id": f"toy/{i}",
                "data_source": "toy_addition",
                "domain": "math",
                "messages": [
                    {"role": "user", "content": f"What is {a} + {b}?"},
                    {"role": "assistant", "content": f"<think>\n{a} + {b} = {a + b}\n</think>\n{a + b}"},
                ],
                "rewards": json.dumps({"accuracy": 1.0}),
                "source_model": "toy",
                "meta": "{}",
            }
        )
    folder = tmp_path_factory.mktemp("sft_dataset")
    pd.DataFrame(rows).to_parquet(folder / "data.parquet")
    return folder


def toy_pairs(n: int, seed: int = 0, flip: bool = False) -> list[dict]:
    """``n`` separable preference pairs (``data/preference.py`` rows): the chosen answer praises,
    the rejected one scolds; the reasoning blocks say the opposite, so only a model reading the
    answer (``scope: answer``) sees a consistent signal. ``flip`` swaps chosen and rejected."""
    import json
    import random

    rng = random.Random(seed)
    topics = "apple river stone cloud paper music garden window light orange table chair".split()
    good, bad = "great wonderful excellent helpful clear".split(), "awful terrible useless wrong rude".split()
    rows = []
    for i in range(n):
        topic = " ".join(rng.sample(topics, 3))
        praise, scold = " ".join(rng.sample(good, 2)), " ".join(rng.sample(bad, 2))
        chosen = f"<think>\n{topic} {scold}\n</think>\n<answer>Gladly! {topic}: {praise}.</answer>"
        rejected = f"<think>\n{topic} {praise}\n</think>\n<answer>No. {topic}: {scold}.</answer>"
        if flip:
            chosen, rejected = rejected, chosen
        rows.append(
            {
                "id": f"toy/{i}",
                "prompt_id": f"toy/{i}",
                "prompt": [{"role": "user", "content": f"Tell me about {topic}."}],
                "chosen": chosen,
                "rejected": rejected,
                "rule": "reference_vs_policy",
                "domain": "general",
                "data_source": "toy",
                "meta": json.dumps({"chosen_from": "toy", "rejected_from": "toy"}),
            }
        )
    return rows


def train_toy_reward_model(tiny_model: Path, folder: Path, flip: bool = False, **overrides) -> Path:
    """Run the reward_model stage (``configs/reward_model/tiny/smoke.yaml``, with ``overrides``)
    on 96 toy pairs; returns the step's work folder (``model/`` inside)."""
    import json

    import yaml

    from pipeline.runner import Resolver, parse_stage_config
    from pipeline.stage import StepContext
    from stages import reward_model

    folder.mkdir(parents=True, exist_ok=True)
    pairs = folder / "pairs.jsonl"
    pairs.write_text("".join(json.dumps(r) + "\n" for r in toy_pairs(96, flip=flip)))
    raw = yaml.safe_load((REPO / "configs/reward_model/tiny/smoke.yaml").read_text())
    config = parse_stage_config({**raw, "model": str(tiny_model), "dataset": str(pairs), **overrides}, "smoke.yaml")
    work = folder / "work"
    work.mkdir(exist_ok=True)
    result = reward_model.run(
        config, StepContext(run="t", step="rm", run_dir=folder, work_dir=work, resolver=Resolver(folder, set()))
    )
    (work / "result.json").write_text(
        json.dumps({"metrics": result.metrics, "counts": result.counts, "summary": result.summary})
    )
    return work


@pytest.fixture(scope="session")
def tiny_reward_model(tiny_model, tmp_path_factory) -> Path:
    """``model/`` of a reward model trained from the tiny model on separable toy pairs
    (``scope: answer``; calibration in ``reward_model.json``; ``result.json`` beside it)."""
    return train_toy_reward_model(tiny_model, tmp_path_factory.mktemp("tiny_rm")) / "model"


# A ChatML template (SmolLM2's, without its default system prompt) whose generation prompt opens
# the reasoning itself, as DeepSeek-R1-Distill's and Qwen3's (thinking mode) do.
PREFILL_THINK_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n<think>\\n' }}{% endif %}"
)


def dress_tiny_model(src: Path, out: Path, chat_template: str | None = None, bos_token: str | None = None) -> Path:
    """A copy of the tiny model ``src`` whose tokenizer has another chat template and/or adds
    ``bos_token`` to every text it encodes with special tokens (a post-processor, saved in
    ``tokenizer.json`` so vLLM's tokenizer does the same), like Llama 3 and R1-Distill."""
    import shutil

    from tokenizers.processors import TemplateProcessing
    from transformers import AutoTokenizer

    shutil.copytree(src, out, dirs_exist_ok=True)
    tokenizer = AutoTokenizer.from_pretrained(out)
    if bos_token is not None:
        bos_id = tokenizer.convert_tokens_to_ids(bos_token)
        tokenizer._tokenizer.post_processor = TemplateProcessing(
            single=f"{bos_token} $A", pair=f"{bos_token} $A $B", special_tokens=[(bos_token, bos_id)]
        )
        tokenizer.bos_token = bos_token
    if chat_template is not None:
        tokenizer.chat_template = chat_template
    (out / "chat_template.jinja").unlink(missing_ok=True)
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def prefill_think_model(tiny_model, tmp_path_factory) -> Path:
    """The tiny model with a chat template that ends its generation prompt with ``<think>\\n``."""
    return dress_tiny_model(tiny_model, tmp_path_factory.mktemp("prefill_think_model"), PREFILL_THINK_TEMPLATE)


@pytest.fixture(scope="session")
def bos_model(tiny_model, tmp_path_factory) -> Path:
    """The tiny model with a BOS-adding tokenizer (BOS ``<|endoftext|>``, id 0) and a chat template
    that writes ``{{ bos_token }}`` itself (Llama 3, DeepSeek-R1-Distill)."""
    from transformers import AutoTokenizer

    template = "{{ bos_token }}" + AutoTokenizer.from_pretrained(tiny_model).chat_template
    return dress_tiny_model(tiny_model, tmp_path_factory.mktemp("bos_model"), template, bos_token="<|endoftext|>")

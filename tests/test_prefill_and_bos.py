"""Models users bring (issue 19, items 1 and 2, and prompts at or over ``max_model_len``).

- A chat template that opens ``<think>`` itself (DeepSeek-R1-Distill, Qwen3 thinking mode): the
  rewards must see that prefill on every path (generate, eval, grpo), or a perfect completion
  scores format 0.0 and a guess inside reasoning that never closed is graded as an answer.
- A BOS-adding tokenizer whose template writes ``{{ bos_token }}`` (Llama 3, R1-Distill): every
  backend must feed the model the ids TRL trains on, one BOS (vLLM's text path added a second).
- A prompt that leaves no room for a completion: vLLM refuses it, and the whole shard or eval
  failed with it.

Models: the tiny random model dressed by ``tests/conftest.py`` (``prefill_think_model``,
``bos_model``). A random model never writes the tags, so ``tag_count`` is 0.25 exactly when the
reward sees the prefilled ``<think>`` (and 0.0 when it does not): a stage-level witness.
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from pipeline.config import parse, read_yaml
from pipeline.runner import Resolver
from pipeline.stage import StepContext
from stages.common.sampling import Sampler, SamplingConfig, prompt_token_ids
from stages.common.scoring import score, with_rendered_prompts

REPO = Path(__file__).resolve().parents[1]
QUESTION = [{"role": "user", "content": "What is 2+2?"}]
ROW = {"id": "q", "answer": "4", "verification": "{}", "domain": "math", "data_source": "toy", "prompt": QUESTION}
PERFECT = "2+2=4\n</think>\n<answer>4</answer>"  # a completion that starts inside the prefilled reasoning
GUESS = "2+2 is probably 4, so the answer is 4"  # still reasoning: never closed, no answer yet


def _ctx(tmp_path: Path, step: str) -> StepContext:
    work = tmp_path / "run" / ".partial" / step
    work.mkdir(parents=True)
    return StepContext(run="t", step=step, run_dir=tmp_path / "run", work_dir=work, resolver=Resolver(tmp_path, set()))


def _tokenizer(path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path)


# ----------------------------------------------------------------------------- item 1: the prefill


def test_the_fixture_template_prefills_think(prefill_think_model):
    rendered = _tokenizer(prefill_think_model).apply_chat_template(QUESTION, tokenize=False, add_generation_prompt=True)
    assert rendered.endswith("<|im_start|>assistant\n<think>\n")


def test_scoring_the_rendered_prompt_sees_the_prefill(prefill_think_model):
    rendered = _tokenizer(prefill_think_model).apply_chat_template(QUESTION, tokenize=False, add_generation_prompt=True)
    names = ["format", "accuracy", "tag_count"]
    seen = score(names, [ROW, ROW], [PERFECT, GUESS], prompts=[rendered, rendered])
    assert seen == {"format": [1.0, 0.0], "accuracy": [1.0, 0.0], "tag_count": [1.0, 0.25]}
    # what generate and eval passed before: the message list, in which no prefill shows
    blind = score(names, [ROW, ROW], [PERFECT, GUESS])
    assert blind == {"format": [0.0, 0.0], "accuracy": [1.0, 1.0], "tag_count": [0.75, 0.0]}


def test_grpo_rewards_render_the_message_prompts_trl_passes(prefill_think_model):
    """TRL calls a reward with the conversational prompts as message lists and the completions
    as [{"role": "assistant", "content": ...}]."""
    from rewards import registry

    tokenizer = _tokenizer(prefill_think_model)
    trl_style = {
        "prompts": [QUESTION, QUESTION],
        "completions": [[{"role": "assistant", "content": PERFECT}]] * 2,
        "answer": ["4", "4"],
        "verification": ["{}", "{}"],
    }
    fmt = with_rendered_prompts(registry.get("format"), tokenizer)
    assert fmt.__name__ == "format" and fmt(**trl_style) == [1.0, 1.0]
    assert fmt.stats.scored == 2  # the reward's own counters (reward_stats/format/*)
    assert registry.get("format")(**trl_style) == [0.0, 0.0]  # unwrapped: the prefill is invisible
    text_prompts = {**trl_style, "prompts": ["User: 2+2? Assistant:", "User: 2+2? Assistant: <think>"]}
    assert fmt(**text_prompts) == [0.0, 1.0]  # text prompts (r1_zero) pass as they are

    def users_reward(prompts, completions, **kw):
        return [float(isinstance(p, list)) for p in prompts]

    assert with_rendered_prompts(users_reward, tokenizer) is users_reward  # TRL's contract for user callables


def _generate_config(model: Path, **sampling):
    from stages import generate

    return parse(
        generate.Config,
        {
            "kind": "generate",
            "model": str(model),
            "prompts": [{"source": "reasoning_gym", "task": "basic_arithmetic", "n_train": 4, "n_test": 0, "seed": 1}],
            "sampling": {
                "backend": "hf",
                "num_samples": 2,
                "max_tokens": 6,
                "temperature": 1.0,
                "top_p": 1.0,
                "dtype": "float32",
                **sampling,
            },
            "rewards": ["tag_count", "format"],
            "filters": {
                "drop_truncated": False,
                "require_correct": False,
                "require_format": False,
                "language": None,
                "max_paragraph_chars": None,
                "drop_unexpected_code": False,
                "dedupe": False,
                "near_duplicate_threshold": None,
                "max_per_prompt": None,
            },
        },
        "test",
    )


def test_generate_scores_and_stores_the_prefilled_turn(prefill_think_model, tmp_path):
    from stages import generate

    ctx = _ctx(tmp_path, "gen")
    result = generate.run(_generate_config(prefill_think_model), ctx)
    assert result.counts["sampled"] == 8 and result.counts["prompts_too_long"] == 0
    rows = pq.read_table(ctx.work_dir / "samples.parquet").to_pylist()
    assert [json.loads(r["rewards"])["tag_count"] for r in rows] == [0.25] * 8  # was 0.0: no prefill seen
    assert all(r["messages"][-1]["content"].startswith("<think>\n") for r in rows)  # the whole assistant turn
    assert all(r["messages"][-1]["role"] == "assistant" and r["messages"][-2]["role"] == "user" for r in rows)


def test_eval_scores_the_prefilled_turn(prefill_think_model, tmp_path):
    from stages import eval as eval_stage

    config = parse(
        eval_stage.Config,
        {
            "kind": "eval",
            "models": [str(prefill_think_model)],
            "correctness": "tag_count",
            "prompts": [{"source": "reasoning_gym", "task": "basic_arithmetic", "n_train": 4, "n_test": 3, "seed": 1}],
            "sampling": {"backend": "hf", "num_samples": 2, "max_tokens": 6, "dtype": "float32"},
        },
        "test",
    )
    ctx = _ctx(tmp_path, "eval")
    eval_stage.run(config, ctx)
    samples = [s for r in pq.read_table(ctx.work_dir / "samples.parquet").to_pylist() for s in json.loads(r["samples"])]
    assert len(samples) == 6
    assert [s["rewards"]["tag_count"] for s in samples] == [0.25] * 6  # was 0.0
    assert all(s["text"].startswith("<think>\n") and s["answer"] is None for s in samples)  # never closed: no vote


def test_grpo_rewards_see_the_prefill(prefill_think_model, tmp_path):
    from stages import grpo

    config = parse(
        grpo.Config,
        {
            **read_yaml(REPO / "configs/grpo/tiny/hf_generate.yaml"),
            "model": str(prefill_think_model),
            "max_steps": 1,
            "max_completion_length": 6,
            "rewards": [{"name": "tag_count"}],
            "dtype": "float32",
            "prompts": [{"source": "reasoning_gym", "task": "basic_arithmetic", "n_train": 8, "n_test": 0, "seed": 0}],
        },
        "test",
    )
    ctx = _ctx(tmp_path, "grpo")
    grpo.run(config, ctx)
    step = [
        json.loads(line) for line in (ctx.work_dir / "metrics.jsonl").read_text().splitlines() if '"reward"' in line
    ][-1]
    assert step["rewards/tag_count/mean"] == 0.25 and step["rewards/tag_count/std"] == 0.0  # was 0.0


# ----------------------------------------------------------------------------- item 2: one BOS


def _trl_ids(tokenizer, prompt) -> list[int]:
    """What TRL's GRPOTrainer feeds the policy (``_tokenize_prompts``)."""
    if isinstance(prompt, str):
        return tokenizer(text=[prompt])["input_ids"][0]
    return tokenizer.apply_chat_template([prompt], add_generation_prompt=True, tokenize=True, return_dict=True)[
        "input_ids"
    ][0]


PROMPTS = [QUESTION, "User: What is 2+2? Assistant:"]


def test_prompt_ids_have_one_bos_and_equal_trls(bos_model):
    tokenizer = _tokenizer(bos_model)
    chat, text = (prompt_token_ids(tokenizer, p) for p in PROMPTS)
    assert chat[:2] == [0, 1] and chat.count(0) == 1  # <|endoftext|> (BOS), <|im_start|>
    assert text[0] == 0 and text.count(0) == 1
    assert [chat, text] == [_trl_ids(tokenizer, p) for p in PROMPTS]
    rendered = tokenizer.apply_chat_template(QUESTION, tokenize=False, add_generation_prompt=True)
    assert tokenizer(rendered)["input_ids"][:3] == [0, 0, 1]  # the text path with special tokens: two


def _spy_hf_generate(sampler) -> list[list[int]]:
    seen: list[list[int]] = []
    real = sampler.model.generate

    def generate(**kwargs):
        seen.append(kwargs["input_ids"][0].tolist())
        return real(**kwargs)

    sampler.model.generate = generate
    return seen


def test_hf_sampler_feeds_trls_ids(bos_model):
    """Before: a text prompt reached HF generate without the tokenizer's BOS (TRL adds it)."""
    cfg = SamplingConfig(backend="hf", num_samples=1, max_tokens=2, max_model_len=128, dtype="float32")
    with Sampler(str(bos_model), cfg, seed=0) as sampler:
        seen = _spy_hf_generate(sampler)
        sampler.sample(PROMPTS, ["a", "b"])
    tokenizer = _tokenizer(bos_model)
    assert seen == [_trl_ids(tokenizer, p) for p in PROMPTS]


@pytest.mark.slow
def test_vllm_sampler_feeds_trls_ids_and_skips_what_does_not_fit(bos_model):
    """Before: vLLM tokenized the rendered chat prompt again with special tokens: [0, 0, 1, ...];
    and a prompt of max_model_len tokens or more raised for the whole batch."""
    pytest.importorskip("vllm")
    cfg = SamplingConfig(backend="vllm", num_samples=2, max_tokens=4, max_model_len=48, dtype="float32")
    long_prompt = "User: " + "count with me one two three " * 12 + "Assistant:"
    tokenizer = _tokenizer(bos_model)
    assert len(prompt_token_ids(tokenizer, long_prompt)) >= 48
    with Sampler(str(bos_model), cfg, seed=0) as sampler:
        seen: list[list[int]] = []
        real = sampler.llm.generate

        def generate(prompts, params, **kwargs):
            outputs = real(prompts, params, **kwargs)
            seen.extend(list(o.prompt_token_ids) for o in outputs)
            return outputs

        sampler.llm.generate = generate
        out = sampler.sample([*PROMPTS, long_prompt], ["a", "b", "c"])
    assert seen == [_trl_ids(tokenizer, p) for p in PROMPTS]  # the long prompt was not sent
    assert [[c.skipped for c in cs] for cs in out] == [[False, False], [False, False], [True, True]]
    assert all(1 <= c.num_tokens <= 4 for cs in out[:2] for c in cs)


# ----------------------------------------------------------------------------- prompts over max_model_len


def test_generate_drops_and_counts_prompts_that_do_not_fit(tiny_model, tmp_path):
    from stages import generate

    config = _generate_config(tiny_model)
    tokenizer = _tokenizer(tiny_model)
    from data import load_prompts

    lengths = sorted(len(prompt_token_ids(tokenizer, r["prompt"])) for r in load_prompts(list(config.prompts)))
    assert lengths[0] < lengths[-1]
    limit = lengths[-1]  # the longest prompt (and any as long) has no room left
    config = _generate_config(tiny_model, max_model_len=limit)
    ctx = _ctx(tmp_path, "gen")
    result = generate.run(config, ctx)
    too_long = sum(n >= limit for n in lengths)
    assert result.counts["prompts_too_long"] == too_long and result.counts["sampled"] == 2 * (4 - too_long)
    card = json.loads((ctx.work_dir / "dataset" / "card.json").read_text())
    assert card["prompts"]["too_long"] == too_long
    assert f"{too_long} of them not" in (ctx.work_dir / "dataset" / "README.md").read_text()


def test_eval_refuses_prompts_that_do_not_fit_before_sampling(tiny_model, tmp_path, monkeypatch):
    from stages import eval as eval_stage
    from stages.common import sampling

    config = parse(
        eval_stage.Config,
        {
            "kind": "eval",
            "models": [str(tiny_model)],
            "prompts": [{"source": "reasoning_gym", "task": "basic_arithmetic", "n_train": 4, "n_test": 3, "seed": 1}],
            "sampling": {"backend": "hf", "num_samples": 2, "max_tokens": 6, "max_model_len": 24},
        },
        "test",
    )
    monkeypatch.setattr(sampling.Sampler, "__init__", lambda *a, **k: pytest.fail("an engine was started"))
    with pytest.raises(
        ValueError,
        match=r"3 of 3 questions have prompts of at least sampling.max_model_len = 24 "
        r"tokens \(longest \d+; e.g. reasoning_gym/basic_arithmetic",
    ):
        eval_stage.run(config, _ctx(tmp_path, "eval"))


@pytest.mark.slow
def test_server_gets_the_prompt_tokens_trl_uses(bos_model, tmp_path):
    """The real vLLM server (started as in tests/test_vllm_server.py) on the BOS model: the ids
    it reports for each prompt are TRL's (before: the chat prompt went with
    add_special_tokens=True, [0, 0, 1, ...], and the local check agreed with it)."""
    pytest.importorskip("vllm")
    import os
    import signal
    import subprocess
    import time
    import urllib.request

    from stages.common.sampling import ServerClient
    from tests.test_vllm_server import _free_port, _server_env, server_command

    port = _free_port()
    log = (tmp_path / "server.log").open("w")
    proc = subprocess.Popen(
        server_command(str(bos_model), port, dtype="float32", max_model_len=256),
        stdout=log,
        stderr=subprocess.STDOUT,
        env=_server_env(),
        start_new_session=True,
    )
    reported: list[list[int]] = []
    real_check = ServerClient._check_tokenizer

    def check(self, text, server_ids, tokenizer, *rest):
        reported.append(list(server_ids))
        return real_check(self, text, server_ids, tokenizer, *rest)

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
        cfg = SamplingConfig(backend="server", server_url=f"http://127.0.0.1:{port}/v1", num_samples=1, max_tokens=2)
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(ServerClient, "_check_tokenizer", check)
            for prompt in PROMPTS:  # one sampler each: the first request of a client is checked
                with Sampler(str(bos_model), cfg, seed=0) as sampler:
                    sampler.sample([prompt], ["a"])
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()
    tokenizer = _tokenizer(bos_model)
    assert reported == [_trl_ids(tokenizer, p) for p in PROMPTS]
    assert reported[0][:2] == [0, 1] and reported[0].count(0) == 1

"""The colocated vLLM engine samples from the *current* policy after a weight sync (CPU backend).

One engine (TRL's ``VLLMGeneration`` in colocate mode, ~25 s to start) is shared by the module.
The policy's weights are replaced by different random weights; after ``sync_weights`` the
engine's greedy tokens and prompt log-probabilities must equal Hugging Face's for the new
weights and differ from those of the old ones. Without a working sync (TRL's own raises on the
CPU backend; a no-op leaves the old weights) these tests fail.
"""

from __future__ import annotations

import os
import types

import pytest

from stages.common import vllm_sync as _vllm_sync

PROMPTS = [[{"role": "user", "content": "What is 17 + 25?"}], [{"role": "user", "content": "Name a prime number."}]]
NEW_TOKENS = 6


@pytest.fixture(scope="module")
def colocated(tiny_model):
    """``(vllm_generation, policy, prompt_ids)``: TRL's colocated engine on the tiny model."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("vllm")
    from accelerate import Accelerator
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl.generation.vllm_generation import VLLMGeneration

    if not _vllm_sync.on_cpu_platform():
        pytest.skip("this fix and its test concern vLLM's CPU backend")
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    policy = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    # float32 engine: its log-probs then match Hugging Face's to ~1e-5, so a tight tolerance
    # separates "new weights" from "old weights" without doubt.
    with _vllm_sync.engine_options(dtype="float32", enforce_eager=True):
        generation = VLLMGeneration(
            model=policy,
            accelerator=Accelerator(cpu=True),
            processing_class=tokenizer,
            mode="colocate",
            max_model_length=256,
            max_num_seqs=4,
            max_completion_length=NEW_TOKENS,
        )
    assert _vllm_sync.install_cpu_weight_sync(generation)
    prompt_ids = [
        tokenizer.apply_chat_template(p, add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"]
        for p in PROMPTS
    ]
    yield generation, policy, prompt_ids
    generation.llm.llm_engine.engine_core.shutdown()


def _randomize(policy, seed: int) -> None:
    """Replace every weight with large random values: peaked, seed-specific next-token choices."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in policy.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.5)


def _hf_greedy(policy, prompt_ids) -> list[list[int]]:
    import torch

    out = []
    with torch.no_grad():
        for ids in prompt_ids:
            seq = policy.generate(
                torch.tensor([ids]),
                attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                max_new_tokens=NEW_TOKENS,
                min_new_tokens=NEW_TOKENS,
                do_sample=False,
                pad_token_id=0,
            )
            out.append(seq[0, len(ids) :].tolist())
    return out


def _hf_prompt_logprobs(policy, ids) -> list[float]:
    """log p(ids[t] | ids[:t]) for t >= 1 under the Hugging Face model (nats)."""
    import torch

    with torch.no_grad():
        logits = policy(torch.tensor([ids])).logits[0].float()
    logp = torch.log_softmax(logits[:-1], dim=-1)
    return logp.gather(1, torch.tensor(ids[1:]).unsqueeze(1)).squeeze(1).tolist()


def _engine_greedy(llm, prompt_ids) -> list[list[int]]:
    from vllm import SamplingParams

    params = SamplingParams(temperature=0.0, max_tokens=NEW_TOKENS, min_tokens=NEW_TOKENS, ignore_eos=True)
    outs = llm.generate([{"prompt_token_ids": ids} for ids in prompt_ids], params, use_tqdm=False)
    return [list(o.outputs[0].token_ids) for o in outs]


def _engine_prompt_logprobs(llm, ids) -> list[float]:
    from vllm import SamplingParams

    out = llm.generate([{"prompt_token_ids": ids}], SamplingParams(max_tokens=1, prompt_logprobs=0), use_tqdm=False)[0]
    return [step[tok].logprob for tok, step in zip(ids[1:], out.prompt_logprobs[1:])]


def test_sync_makes_engine_sample_from_new_weights(colocated):
    generation, policy, prompt_ids = colocated
    _randomize(policy, seed=1)
    generation.sync_weights()
    old_greedy = _hf_greedy(policy, prompt_ids)
    old_logprobs = _hf_prompt_logprobs(policy, prompt_ids[0])
    assert _engine_greedy(generation.llm, prompt_ids) == old_greedy

    _randomize(policy, seed=2)  # a training step, in the extreme
    new_greedy = _hf_greedy(policy, prompt_ids)
    new_logprobs = _hf_prompt_logprobs(policy, prompt_ids[0])
    assert new_greedy != old_greedy, "precondition: the two weight sets must choose different tokens"

    generation.sync_weights()

    assert _engine_greedy(generation.llm, prompt_ids) == new_greedy
    engine = _engine_prompt_logprobs(generation.llm, prompt_ids[0])
    assert max(abs(a - b) for a, b in zip(engine, new_logprobs)) < 1e-3
    assert max(abs(a - b) for a, b in zip(engine, old_logprobs)) > 1.0


def test_sync_is_one_batched_reload(colocated, monkeypatch):
    generation, policy, _ = colocated
    worker = _vllm_sync.driver_worker(generation.llm)
    calls = []
    original = worker.reload_weights

    def spy(weights_iterator):
        weights = list(weights_iterator)
        calls.append([name for name, _ in weights])
        return original(weights_iterator=iter(weights))

    monkeypatch.setattr(worker.worker, "reload_weights", spy)
    generation.sync_weights()
    assert len(calls) == 1
    assert calls[0] == [name for name, _ in policy.named_parameters()]


def test_install_leaves_server_mode_and_gpus_to_trl(monkeypatch):
    server = types.SimpleNamespace(mode="server", sync_weights="trl's")
    assert not _vllm_sync.install_cpu_weight_sync(server)
    assert server.sync_weights == "trl's"
    monkeypatch.setattr(_vllm_sync, "on_cpu_platform", lambda: False)
    gpu = types.SimpleNamespace(mode="colocate", sync_weights="trl's")
    assert not _vllm_sync.install_cpu_weight_sync(gpu)
    assert gpu.sync_weights == "trl's"


def test_engine_options_refuses_what_trl_sets():
    pytest.importorskip("trl")
    import trl.generation.vllm_generation as trl_vllm

    before = trl_vllm.LLM
    with pytest.raises(ValueError, match="max_model_len"):
        with _vllm_sync.engine_options(max_model_len=64):
            pass
    with _vllm_sync.engine_options(enforce_eager=True):
        assert trl_vllm.LLM is not before
    assert trl_vllm.LLM is before


def test_trl_colocate_sync_still_broken_on_cpu(colocated):
    """Documents why the fix exists. When this fails, TRL's own sync works on vLLM's CPU
    backend and ``stages/common/vllm_sync.py`` can go. Runs last: it leaves the engine half-loaded,
    so it resyncs with the fix afterwards."""
    from trl.generation.vllm_generation import VLLMGeneration

    generation, _, _ = colocated
    with pytest.raises(AttributeError, match="weight_loader"):
        VLLMGeneration.sync_weights(generation)
    generation.sync_weights()

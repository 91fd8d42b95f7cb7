"""The chunked log-prob head (``stages/common/logprobs.py``, grpo ``logprob_chunk_tokens``).

Log-probs and entropies of the completion tokens must equal the full computation (all logits,
then log-softmax) and TRL 1.16's own path (its fused LM head, what the grpo stage runs without
the option), in float32 and under bf16 autocast; so must the gradients of every model parameter.
The models are tiny random Llamas (real modules, real TRL trainer), the batch is padded the way
TRL pads it: prompts on the left, completions on the right.
"""

from __future__ import annotations

import pytest
import torch

from conftest import REPO
from pipeline.config import ConfigError, parse, read_yaml
from stages import grpo
from stages.common.logprobs import add_chunked_lm_head, check_chunkable, chunked_token_logps

B, T, K = 3, 24, 10  # sequences, positions, completion tokens (logits_to_keep)
# bf16 tolerance: bf16 logits round to 2^-8 relative; a log-prob near -10 moves by ~0.04 at most.
BF16 = {"atol": 5e-2, "rtol": 1e-2}
FP32 = {"atol": 1e-5, "rtol": 1e-5}


def tiny_llama(vocab: int = 1000, tied: bool = True, seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        tie_word_embeddings=tied,
    )
    return LlamaForCausalLM(config).float()


def batch(vocab: int = 1000, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, T) ids and attention mask: row 0's prompt left-padded by 4, row 1's completion ends 3
    tokens early (right padding), row 2 full."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (B, T), generator=g)
    mask = torch.ones(B, T, dtype=torch.long)
    mask[0, :4] = 0
    mask[1, -3:] = 0
    return ids, mask


def autocast(dtype: torch.dtype | None):
    return torch.autocast("cpu", dtype=dtype) if dtype else torch.autocast("cpu", enabled=False)


def full_logps(model, ids, mask, temperature: float, dtype: torch.dtype | None):
    """The full computation: every position's logits, TRL's shift and temperature, log-softmax,
    gather; entropies from the same float32 logits. (B, K) each, 0 where the mask is 0."""
    with autocast(dtype):
        logits = model(input_ids=ids, attention_mask=mask).logits[:, -K - 1 : -1].float() / temperature
    logp_all = logits.log_softmax(-1)
    logps = logp_all.gather(-1, ids[:, -K:, None]).squeeze(-1)
    entropy = -(logp_all.exp() * logp_all).sum(-1)
    keep = mask[:, -K:]
    return logps * keep, entropy * keep


@pytest.mark.parametrize("dtype, tol", [(None, FP32), (torch.bfloat16, BF16)], ids=["fp32", "bf16"])
@pytest.mark.parametrize("chunk", [1, 7, 10_000])  # one position; not a divisor of 27 tokens; all at once
def test_chunked_logps_and_grads_equal_the_full_computation(dtype, tol, chunk):
    temperature = 0.7
    ids, mask = batch()
    full_model, chunked_model = tiny_llama(), tiny_llama()
    assert mask[:, -K:].sum() == 27 and 27 % 7  # the chunk of 7 leaves a remainder
    ref_logps, ref_entropy = full_logps(full_model, ids, mask, temperature, dtype)
    add_chunked_lm_head(chunked_model, chunk, temperature)
    with autocast(dtype):
        logps, entropy = chunked_model(input_ids=ids, attention_mask=mask, completion_logps=(K, True))
    assert logps.shape == entropy.shape == (B, K) and logps.dtype == entropy.dtype == torch.float32
    torch.testing.assert_close(logps, ref_logps, **tol)
    torch.testing.assert_close(entropy, ref_entropy, **tol)
    assert (logps[mask[:, -K:] == 0] == 0).all() and (logps[mask[:, -K:] == 1] < 0).all()
    assert entropy.min() >= 0 and entropy.max() <= torch.log(torch.tensor(1000.0)) + 1e-3

    # The same weighted loss (per-token weights as advantages would be, plus an entropy term)
    # gives the same gradient on every parameter, the tied embedding / head included.
    weights = torch.randn(B, K, generator=torch.Generator().manual_seed(2))
    (ref_logps * weights).sum().add(0.1 * ref_entropy.sum()).backward()
    (logps * weights).sum().add(0.1 * entropy.sum()).backward()
    grads = dict(chunked_model.named_parameters())
    for name, p in full_model.named_parameters():
        scale = p.grad.abs().max()
        torch.testing.assert_close(grads[name].grad, p.grad, atol=(1e-5 if dtype is None else 2e-2) * scale, rtol=0)
        assert scale > 0, name  # every parameter gets a gradient: the check compares something


def test_no_more_than_one_chunk_of_logits_exists_in_forward_or_backward():
    """Every tensor any op produces, forward and backward (checkpoint recomputation included), is
    recorded: none over the vocabulary is larger than chunk x V (the full logits: 27 x V)."""
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_flatten

    vocab, chunk = 1000, 4

    class LargestLogits(TorchDispatchMode):
        rows = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for t in tree_flatten(out)[0]:
                # tensors over the vocabulary, not the (H, V) head weight's transpose
                if isinstance(t, torch.Tensor) and t.ndim >= 2 and t.shape[-1] == vocab and t.shape[-2] != 64:
                    self.rows = max(self.rows, t.numel() // vocab)
            return out

    ids, mask = batch(vocab)
    for size, limit in ((chunk, chunk), (10_000, 27)):
        model = tiny_llama(vocab)
        add_chunked_lm_head(model, size, 1.0)
        kept = []  # tensors over the vocabulary autograd keeps for the backward: none (recomputed)

        def pack(t, kept=kept):
            if t.ndim >= 2 and t.shape[-1] == vocab and t.shape[-2] != 64:
                kept.append(t.shape)
            return t

        with (
            LargestLogits() as seen,
            torch.autocast("cpu", dtype=torch.bfloat16),
            torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t),
        ):
            logps, entropy = model(input_ids=ids, attention_mask=mask, completion_logps=(K, True))
            (logps.sum() + entropy.sum()).backward()
        assert seen.rows == limit  # one chunk's rows; all 27 completion tokens when the chunk holds them
        assert kept == []
    with LargestLogits() as seen:
        full_logps(tiny_llama(vocab), ids, mask, 1.0, None)
    assert seen.rows == B * T  # the full computation: every position


def test_untied_head_gets_its_own_gradient():
    ids, mask = batch()
    full_model, chunked_model = tiny_llama(tied=False), tiny_llama(tied=False)
    ref_logps, _ = full_logps(full_model, ids, mask, 1.0, None)
    add_chunked_lm_head(chunked_model, 4, 1.0)
    logps, entropy = chunked_model(input_ids=ids, attention_mask=mask, completion_logps=(K, False))
    assert entropy is None
    ref_logps.sum().backward()
    logps.sum().backward()
    for head in (full_model.lm_head.weight, full_model.model.embed_tokens.weight):
        assert head.grad.abs().max() > 0
    torch.testing.assert_close(chunked_model.lm_head.weight.grad, full_model.lm_head.weight.grad, **FP32)
    torch.testing.assert_close(
        chunked_model.model.embed_tokens.weight.grad, full_model.model.embed_tokens.weight.grad, **FP32
    )


def test_pure_function_matches_log_softmax_without_a_model():
    g = torch.Generator().manual_seed(3)
    hidden, weight = torch.randn(2, 5, 16, generator=g), torch.randn(50, 16, generator=g)
    bias, ids = torch.randn(50, generator=g), torch.randint(0, 50, (2, 5), generator=g)
    logps, entropy = chunked_token_logps(hidden, weight, ids, 3, 2.0, lm_head_bias=bias, compute_entropy=True)
    z = (hidden @ weight.T + bias) / 2.0
    torch.testing.assert_close(logps, z.log_softmax(-1).gather(-1, ids[..., None]).squeeze(-1), **FP32)
    torch.testing.assert_close(entropy, torch.distributions.Categorical(logits=z).entropy(), **FP32)
    # head_fp32 projects in float32 even under bf16 autocast: float32 results
    with torch.autocast("cpu", dtype=torch.bfloat16):
        exact, _ = chunked_token_logps(hidden, weight, ids, 3, 2.0, lm_head_bias=bias, head_fp32=True)
        rounded, _ = chunked_token_logps(hidden, weight, ids, 3, 2.0, lm_head_bias=bias)
    torch.testing.assert_close(exact, logps, **FP32)
    assert not torch.equal(rounded, logps)  # bf16 logits do round
    with pytest.raises(ValueError, match="chunk_tokens"):
        chunked_token_logps(hidden, weight, ids, 0)
    with pytest.raises(ValueError, match="shapes"):
        chunked_token_logps(hidden, weight, ids[:, :4], 2)


def test_a_micro_batch_without_completion_tokens_back_propagates_zero():
    ids, mask = batch()
    mask[:, -K:] = 0
    model = tiny_llama()
    add_chunked_lm_head(model, 4, 1.0)
    logps, entropy = model(input_ids=ids, attention_mask=mask, completion_logps=(K, True))
    assert torch.equal(logps, torch.zeros(B, K)) and torch.equal(entropy, torch.zeros(B, K))
    (logps.sum() + entropy.sum()).backward()
    assert all(p.grad is None or not p.grad.any() for p in model.parameters())


def test_models_the_chunked_head_cannot_score_are_refused():
    model = tiny_llama()
    model.config.final_logit_softcapping = 30.0  # Gemma-2 style: TRL's head caps, ours would not
    with pytest.raises(ConfigError, match=r"logprob_chunk_tokens.*final_logit_softcapping.*null"):
        check_chunkable(model)
    base = tiny_llama().model  # a backbone without a head
    base.get_output_embeddings = lambda: None
    with pytest.raises(ConfigError, match="logprob_chunk_tokens"):
        check_chunkable(base)


# ---------------------------------------------------------------- through TRL's GRPOTrainer


def _zero_reward(completions, **kwargs) -> list[float]:
    return [0.0] * len(completions)


def grpo_trainer(tiny_model, tmp_path, dtype: str, **changes):
    """A real TRL GRPOTrainer of the stage's own class, with the stage's TRL arguments."""
    from datasets import Dataset

    smoke = read_yaml(REPO / "configs/grpo/tiny/hf_generate.yaml")
    rewards = [{"name": "accuracy"}]  # its weight; the function itself: a constant, no reward is computed here
    config = parse(grpo.Config, {**smoke, "model": str(tiny_model), "dtype": dtype, "rewards": rewards, **changes}, "x")
    return grpo._trainer_class()(
        model=str(tiny_model),
        reward_funcs=[_zero_reward],
        args=grpo.grpo_arguments(config, tmp_path, dtype=dtype),
        train_dataset=Dataset.from_list([{"prompt": "2 + 2 ="}] * 8),
    ), config


@pytest.mark.parametrize("dtype, tol", [("float32", FP32), ("bfloat16", BF16)])
def test_the_trainer_override_equals_trls_fused_head(tiny_model, tmp_path, dtype, tol):
    trainer, config = grpo_trainer(tiny_model, tmp_path, dtype, temperature=0.8)
    assert config.logprob_chunk_tokens is None and trainer._r1_logprob_chunk_tokens is None
    model = trainer.model
    vocab = model.config.vocab_size  # 49,152: the real SmolLM2 vocabulary
    ids, mask = batch(vocab)

    def run(**kwargs):
        model.zero_grad()
        logps, entropy, aux = trainer._get_per_token_logps_and_entropies(
            model, ids, mask, K, compute_entropy=True, **kwargs
        )
        (logps * torch.linspace(-1, 1, K)).sum().add(0.1 * entropy.sum()).backward()
        return logps.detach(), entropy.detach(), aux, {n: p.grad.clone() for n, p in model.named_parameters()}

    # Option off: TRL's own method and forward, untouched.
    forward = model.forward
    grpo.install_chunked_logprobs(trainer, None)
    assert model.forward is forward and trainer._r1_logprob_chunk_tokens is None
    trl_logps, trl_entropy, trl_aux, trl_grads = run()
    with torch.no_grad():
        direct = super(type(trainer), trainer)._get_per_token_logps_and_entropies(model, ids, mask, K)[0]
    assert torch.equal(direct, trl_logps)

    grpo.install_chunked_logprobs(trainer, 7)
    logps, entropy, aux, grads = run(batch_size=2)  # TRL's row groups: 2 + 1
    assert aux is None and trl_aux is None
    torch.testing.assert_close(logps, trl_logps, **tol)
    torch.testing.assert_close(entropy, trl_entropy, **tol)
    for name, grad in trl_grads.items():
        scale = grad.abs().max()
        assert scale > 0, name
        torch.testing.assert_close(grads[name], grad, atol=(1e-5 if dtype == "float32" else 2e-2) * scale, rtol=0)
    # generation (no completion_logps) still goes through the previous forward
    assert model(input_ids=ids, attention_mask=mask).logits.shape == (B, T, vocab)


def test_config_key_reaches_the_trainer_and_is_validated(tiny_model, tmp_path):
    with pytest.raises(ConfigError, match="logprob_chunk_tokens"):
        parse(grpo.Config, {**read_yaml(REPO / "configs/grpo/tiny/hf_generate.yaml"), "logprob_chunk_tokens": 0}, "x")
    trainer, config = grpo_trainer(tiny_model, tmp_path, "float32", logprob_chunk_tokens=64)
    grpo.install_chunked_logprobs(trainer, config.logprob_chunk_tokens)
    assert trainer._r1_logprob_chunk_tokens == 64


def test_the_unset_key_leaves_a_steps_config_hash_as_before():
    smoke = read_yaml(REPO / "configs/grpo/tiny/hf_generate.yaml")
    unset, chunked = parse(grpo.Config, smoke, "x"), parse(grpo.Config, {**smoke, "logprob_chunk_tokens": 256}, "x")
    assert "logprob_chunk_tokens" not in unset.identity()  # hashes of finished steps do not change
    assert chunked.identity() == {**unset.identity(), "logprob_chunk_tokens": 256}  # setting it reruns the step


def test_a_grpo_step_with_the_option_trains_through_the_chunked_head(tiny_model, tmp_path, monkeypatch):
    """run() installs the head: one real optimizer step (HF generate, real rewards) whose loss
    forward went through chunked_token_logps (counted, not replaced) and whose policy moved."""
    import json

    from pipeline.runner import Resolver
    from pipeline.stage import StepContext
    from stages.common import logprobs

    calls = []
    real = logprobs.chunked_token_logps
    monkeypatch.setattr(logprobs, "chunked_token_logps", lambda *a, **k: calls.append(a[3]) or real(*a, **k))
    smoke = read_yaml(REPO / "configs/grpo/tiny/hf_generate.yaml")
    config = parse(grpo.Config, {**smoke, "model": str(tiny_model), "max_steps": 1, "logprob_chunk_tokens": 16}, "x")
    work = tmp_path / "work"
    work.mkdir()
    ctx = StepContext(run="t", step="grpo", run_dir=tmp_path, work_dir=work, resolver=Resolver(tmp_path, set()))
    result = grpo.run(config, ctx)
    assert result.counts["steps"] == 1 and calls and set(calls) == {16}
    line = next(json.loads(x) for x in (work / "metrics.jsonl").read_text().splitlines() if '"entropy"' in x)
    assert line["entropy"] > 0  # the chunked head's entropies reach TRL's metrics


# ---------------------------------------------------------------- padding-free (packed) rows


def ragged_batch(vocab: int = 1000, seed: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    """(5, 30) ids and mask padded as TRL pads: prompts of 6-14 tokens on the left, completions of
    3-10 of the last 10 columns on the right. Real lengths 24, 13, 9, 16, 20: they pack into 4
    rows of 24 (13 + 9 share one), 96 positions instead of 150."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, vocab, (5, 30), generator=g)
    mask = torch.zeros(5, 30, dtype=torch.long)
    for row, (prompt, completion) in enumerate([(14, 10), (10, 3), (6, 3), (12, 4), (10, 10)]):
        mask[row, 20 - prompt : 20 + completion] = 1
    return ids, mask


def test_pack_rows_places_every_real_token_once_and_never_lengthens_a_row():
    from stages.common.logprobs import pack_rows

    ids, mask = ragged_batch()
    packed, positions, index = pack_rows(ids, mask)
    assert packed.shape == (4, 24)  # 82 real tokens, longest row 24: 4 rows instead of 5 x 30
    real = mask.bool()
    assert (index[~real] == -1).all() and sorted(index[real].tolist()) == sorted(set(index[real].tolist()))
    assert torch.equal(packed.reshape(-1)[index[real]], ids[real])  # the same tokens, in order per row
    for b in range(5):  # each row's positions restart at 0 and count up
        assert positions.reshape(-1)[index[b][real[b]]].tolist() == list(range(int(mask[b].sum())))
    with pytest.raises(ValueError, match=r"rows \[1\] have no real token"):
        pack_rows(ids[:2], torch.stack([mask[0], torch.zeros_like(mask[1])]))


@pytest.mark.parametrize("dtype, tol", [(None, FP32), (torch.bfloat16, BF16)], ids=["fp32", "bf16"])
def test_padding_free_logps_and_grads_equal_the_padded_computation(dtype, tol):
    ids, mask = ragged_batch()
    padded_model, packed_model = tiny_llama(), tiny_llama()
    add_chunked_lm_head(padded_model, 7, 0.9)
    add_chunked_lm_head(packed_model, 7, 0.9, padding_free=True)
    with autocast(dtype):
        ref_logps, ref_entropy = padded_model(input_ids=ids, attention_mask=mask, completion_logps=(K, True))
        logps, entropy = packed_model(input_ids=ids, attention_mask=mask, completion_logps=(K, True))
    assert (logps[mask[:, -K:] == 0] == 0).all() and (logps[mask[:, -K:] == 1] < 0).all()
    torch.testing.assert_close(logps, ref_logps, **tol)
    torch.testing.assert_close(entropy, ref_entropy, **tol)
    weights = torch.randn(5, K, generator=torch.Generator().manual_seed(4))
    (ref_logps * weights).sum().add(0.1 * ref_entropy.sum()).backward()
    (logps * weights).sum().add(0.1 * entropy.sum()).backward()
    grads = dict(packed_model.named_parameters())
    for name, p in padded_model.named_parameters():
        scale = p.grad.abs().max()
        assert scale > 0, name
        torch.testing.assert_close(grads[name].grad, p.grad, atol=(1e-5 if dtype is None else 2e-2) * scale, rtol=0)


def test_packed_sequences_do_not_attend_to_each_other():
    """Rows 2 and 1 share a packed row (9 + 13 <= 24 tokens); changing every token of row 2
    leaves row 1's log-probs bit for bit as they were, and changes row 2's."""
    from stages.common.logprobs import pack_rows

    ids, mask = ragged_batch()
    packed, _, index = pack_rows(ids, mask)
    row_of = {b: int(index[b][mask[b].bool()][0]) // packed.shape[1] for b in range(5)}
    assert row_of[1] == row_of[2] != row_of[0]
    model = tiny_llama()
    add_chunked_lm_head(model, 64, 1.0, padding_free=True)
    changed = ids.clone()
    changed[2] = (ids[2] + 1) % 1000
    with torch.no_grad():
        before = model(input_ids=ids, attention_mask=mask, completion_logps=(K, False))[0]
        after = model(input_ids=changed, attention_mask=mask, completion_logps=(K, False))[0]
    assert torch.equal(after[[0, 1, 3, 4]], before[[0, 1, 3, 4]])
    assert not torch.allclose(after[2], before[2])


@pytest.mark.parametrize("dtype, tol", [("float32", FP32), ("bfloat16", BF16)])
def test_grpo_loss_with_packing_equals_the_loss_without_on_a_fixed_batch(tiny_model, tmp_path, dtype, tol):
    """TRL's own GRPO loss (dapo, clip-higher, entropy logged) of one fixed micro-batch: with the
    chunked head and padding_free it equals TRL's path (fused head, padded rows), and so does
    every parameter's gradient."""
    trainer, config = grpo_trainer(tiny_model, tmp_path, dtype, logprob_chunk_tokens=7, padding_free=True)
    model = trainer.model
    model.train()
    trainer.current_gradient_accumulation_steps = 1  # set by the training loop, read by the loss
    ids, mask = ragged_batch(model.config.vocab_size)
    inputs = {
        "prompt_ids": ids[:, :-K],
        "prompt_mask": mask[:, :-K],
        "completion_ids": ids[:, -K:],
        "completion_mask": mask[:, -K:],
        "advantages": torch.tensor([1.0, -0.5, 0.25, -1.0, 0.5]),
        "num_items_in_batch": mask[:, -K:].sum(),
    }

    def loss_and_grads():
        model.zero_grad()
        loss = trainer.compute_loss(model, inputs)
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}

    trl_loss, trl_grads = loss_and_grads()  # the option not installed yet: TRL's path
    grpo.install_chunked_logprobs(trainer, config.logprob_chunk_tokens, padding_free=config.padding_free)
    packed_loss, packed_grads = loss_and_grads()
    assert trl_loss != 0
    torch.testing.assert_close(packed_loss, trl_loss, **tol)
    for name, grad in trl_grads.items():
        scale = grad.abs().max()
        assert scale > 0, name
        torch.testing.assert_close(
            packed_grads[name], grad, atol=(1e-5 if dtype == "float32" else 2e-2) * scale, rtol=0
        )


def test_padding_free_needs_the_chunked_head_and_leaves_hashes_alone():
    smoke = read_yaml(REPO / "configs/grpo/tiny/hf_generate.yaml")
    with pytest.raises(ConfigError, match="padding_free needs logprob_chunk_tokens"):
        parse(grpo.Config, {**smoke, "padding_free": True}, "x")
    off = parse(grpo.Config, {**smoke, "logprob_chunk_tokens": 64}, "x")
    on = parse(grpo.Config, {**smoke, "logprob_chunk_tokens": 64, "padding_free": True}, "x")
    assert "padding_free" not in off.identity() and on.identity() == {**off.identity(), "padding_free": True}

"""Per-token log-probabilities of the completion tokens without the (batch, length, vocab) logits.

The policy-gradient loss needs, for each completion token, ``log p(token | prefix)`` under the
policy, and GRPO also logs the entropy of each next-token distribution. Computing them the direct
way projects every position through the LM head: for SmolLM2-135M (vocabulary 49,152) a
micro-batch of 8 sequences x 512 positions is 4,096 x 49,152 logits, 0.8 GB in float32, and
autograd keeps about that much again for the backward.

TRL 1.16 already avoids the full tensor (``trl.trainer.utils.add_fused_lm_head``: tiles of
4,096 positions x 32,768 vocabulary entries, recomputed in the backward). On a CPU it projects
*every* position of the sequence, prompt and padding included (its position selection is for
Triton devices only), and its tile is still ~0.5 GB in float32 at those sizes. Here only the
positions the loss reads are projected: the completion tokens (``logits_to_keep``) whose attention
mask is 1, in chunks of ``chunk_tokens`` positions, each chunk recomputed in the backward
(``torch.utils.checkpoint``), so at most one chunk's logits exist at a time.

Formulas (those of TRL's ``selective_log_softmax`` and ``entropy_from_logits``, and of its fused
head): with ``z = (h @ W^T + b) / T`` (T the sampling temperature, as vLLM sampled from),
``log p(y) = z_y - logsumexp(z)`` and ``H = logsumexp(z) - sum_v softmax(z)_v z_v`` (nats).

Precision: as the model's own head, the projection runs in the autocast dtype (bf16) and the
softmax in float32. The head weight's gradient is summed over chunks in float32, each chunk's
share rounded once to bf16 (unchunked: the whole sum rounded once); on the tiny test model the
bf16 gradients' error against float32 is that of the unchunked head (largest relative error
1.1e-2 either way; head gradient relative norm 4.3e-3 with 7-token chunks, 4.2e-3 unchunked).

Padding-free (``padding_free=True``): TRL pads prompts on the left and completions on the right
to the longest of the micro-batch, and the backbone runs on every padding position. With it, the
real tokens of the rows are packed into as few rows as fit the longest one (first-fit decreasing,
:func:`pack_rows`), each sequence's positions restarting at 0; transformers then builds a
block-diagonal causal mask from the position ids (``masking_utils.find_packed_sequence_indices``:
SDPA and eager attention; flash-attention reads the same position ids), so no token attends
across sequences. No packed row is longer than the longest input row: the attention of a row
costs no more than before, and only the padding disappears. The positions are those vLLM sampled
with (0 at the first real token), where the padded forward numbers the left padding too; RoPE
scores depend only on relative positions, so the two agree to rounding.

Used by the grpo stage when ``logprob_chunk_tokens`` is set (``stages/grpo.py``), padding-free
when ``padding_free`` is also set.
"""

from __future__ import annotations

import types
from typing import TYPE_CHECKING, Any

from pipeline.config import ConfigError

if TYPE_CHECKING:
    import torch

KEY = "logprob_chunk_tokens"  # the grpo config key that turns this on (named in errors)

# Config attributes by which some architectures scale or cap their logits before the softmax
# (the ones TRL's fused head reads); the chunked head does not reproduce them, so it refuses them.
LOGIT_TRANSFORMS = (
    "final_logit_softcapping",
    "logit_scale",
    "output_multiplier",
    "lm_head_multiplier",
    "logits_scaling",
)


def chunked_token_logps(
    hidden: torch.Tensor,
    lm_head_weight: torch.Tensor,
    token_ids: torch.Tensor,
    chunk_tokens: int,
    temperature: float = 1.0,
    *,
    lm_head_bias: torch.Tensor | None = None,
    compute_entropy: bool = False,
    head_fp32: bool = False,
    hits: list[torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Log-probability of ``token_ids`` (and the entropy) under ``softmax((hidden @ W^T + b) / T)``,
    ``chunk_tokens`` positions at a time.

    Args:
        hidden: (..., H) final hidden states (after the model's last norm), any float dtype; the
            position *before* each token (the caller shifts by one).
        lm_head_weight: (V, H) the LM head's weight (the input embedding when tied).
        token_ids: (...) int64 ids in [0, V), the tokens whose log-probability is wanted.
        chunk_tokens: positions per chunk (> 0): at most ``chunk_tokens x V`` logits exist at a
            time, forward and backward (about 4 float32 copies of it during a chunk's backward).
        temperature: > 0, the logits are divided by it (TRL: the policy that sampled at that
            temperature).
        lm_head_bias: (V,) or None.
        compute_entropy: also return the entropy of each next-token distribution (differentiable).
        head_fp32: project in float32 outside autocast (TRL's ``cast_lm_head_to_fp32``).
        hits: a list to append, per position, whether ``token_ids`` is the most likely token
            (one (n,) bool tensor per chunk, in order; the SFT token accuracy), or None.

    Dtypes: the projection runs in the autocast dtype when autocast is on (bf16 logits, as the
    model's own head and TRL's fused head compute them), else in the inputs' dtype (float32 with
    ``head_fp32``); the softmax and everything after it in float32.

    Returns:
        ``(logps, entropy)``: float32 tensors of shape ``token_ids.shape`` (nats; ``logps <= 0``);
        ``entropy`` is None unless ``compute_entropy``. With gradients enabled each chunk is checkpointed: its logits
        are recomputed in the backward instead of kept.

    Raises:
        ValueError: ``chunk_tokens < 1``, ``temperature <= 0``, or shapes that do not match.

    Formulas: TRL ``selective_log_softmax`` / ``entropy_from_logits`` (see the module docstring).
    """
    import torch
    from torch.utils.checkpoint import checkpoint

    if chunk_tokens < 1:
        raise ValueError(f"chunk_tokens must be >= 1, got {chunk_tokens}")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if hidden.shape[:-1] != token_ids.shape or hidden.shape[-1] != lm_head_weight.shape[-1]:
        raise ValueError(
            f"shapes: hidden {tuple(hidden.shape)} must be token_ids {tuple(token_ids.shape)} + (H,) "
            f"with H = lm_head_weight's last dimension {tuple(lm_head_weight.shape)}"
        )
    shape = token_ids.shape
    flat_hidden = hidden.reshape(-1, hidden.shape[-1])
    flat_ids = token_ids.reshape(-1)
    n = flat_ids.numel()
    logps, entropies = [], []
    compute_hits = hits is not None
    # max(n, 1): an empty selection still runs one (empty) chunk, so the result stays connected
    # to the graph and a micro-batch without completion tokens back-propagates a zero.
    for start in range(0, max(n, 1), chunk_tokens):
        args = (
            flat_hidden[start : start + chunk_tokens],
            lm_head_weight,
            lm_head_bias,
            flat_ids[start : start + chunk_tokens],
        )
        if torch.is_grad_enabled():
            # No randomness in the head: no RNG state to save and restore.
            out = checkpoint(
                _chunk,
                *args,
                temperature,
                compute_entropy,
                head_fp32,
                compute_hits,
                use_reentrant=False,
                preserve_rng_state=False,
            )
        else:
            out = _chunk(*args, temperature, compute_entropy, head_fp32, compute_hits)
        logps.append(out[0])
        if compute_entropy:
            entropies.append(out[1])
        if hits is not None:
            hits.append(out[-1])
    logp = torch.cat(logps).reshape(shape)
    entropy = torch.cat(entropies).reshape(shape) if compute_entropy else None
    return logp, entropy


def _chunk(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    token_ids: torch.Tensor,
    temperature: float,
    compute_entropy: bool,
    head_fp32: bool,
    compute_hits: bool = False,
) -> tuple[torch.Tensor, ...]:
    """One chunk of :func:`chunked_token_logps`: (n, H) -> (n,) log-probs [, (n,) entropies]
    [, (n,) bool hits]."""
    import torch
    import torch.nn.functional as F

    if head_fp32:
        with torch.autocast(hidden.device.type, enabled=False):
            logits = F.linear(hidden.float(), weight.float(), None if bias is None else bias.float())
    else:
        logits = F.linear(hidden, weight, bias)  # autocast dtype (bf16) under autocast
    z = logits.float() / temperature
    log_z = torch.logsumexp(z, dim=-1)
    logp = z.gather(-1, token_ids.unsqueeze(-1)).squeeze(-1) - log_z
    out: tuple[torch.Tensor, ...] = (logp,)
    if compute_entropy:
        # H = logsumexp(z) - E_p[z]; vecdot avoids another (n, V) temporary for p * z
        out += (log_z - torch.linalg.vecdot(torch.softmax(z, dim=-1), z),)
    if compute_hits:
        out += (z.detach().argmax(-1) == token_ids,)
    return out


def chunked_causal_lm_loss(
    model: Any,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    labels: torch.Tensor,
    chunk_tokens: int,
    num_items_in_batch: torch.Tensor | int | None = None,
    **backbone_kwargs: Any,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The causal-LM cross-entropy of transformers' ``ForCausalLMLoss`` without the (B, S, V)
    logits: only the positions whose next token is trained go through the LM head,
    ``chunk_tokens`` at a time (:func:`chunked_token_logps`).

    Args:
        model: a causal LM :func:`check_chunkable` accepts (backbone ``model.base_model``).
        input_ids, attention_mask: (B, S) as for the model's forward (call under autocast for
            bf16, as the Trainer does).
        labels: (B, S) int64, -100 where no loss (prompt, padding); position t is scored on
            ``labels[:, t + 1]`` (the shift transformers applies).
        num_items_in_batch: the token count to divide by (the Trainer's count over the whole
            gradient-accumulation window); None: the trained tokens of this batch.
        backbone_kwargs: more inputs for the backbone (e.g. ``position_ids`` of packed rows).

    Returns:
        ``(loss, hits, trained)``: the scalar float32 loss (sum of ``-log p`` over trained
        tokens / the count, nats per token), and the number of trained tokens whose label is the
        argmax (int64 scalar, no gradient) and of trained tokens (the token accuracy).

    Formula: transformers ``loss_utils.ForCausalLMLoss`` (cross-entropy, ``ignore_index=-100``,
    ``reduction="sum"`` then ``/ num_items_in_batch``, or the mean without it).
    """
    import torch

    head = model.get_output_embeddings()
    backbone_kwargs["use_cache"] = False
    hidden = model.base_model(input_ids=input_ids, attention_mask=attention_mask, **backbone_kwargs).last_hidden_state
    targets = labels[:, 1:].to(head.weight.device)
    trained = targets != -100
    hits: list[torch.Tensor] = []
    logps, _ = chunked_token_logps(
        hidden[:, :-1].to(head.weight.device)[trained],
        head.weight,
        targets[trained],
        chunk_tokens,
        lm_head_bias=head.bias,
        hits=hits,
    )
    count = trained.sum()
    divisor = num_items_in_batch if num_items_in_batch is not None else count.clamp(min=1)
    if hasattr(divisor, "to"):
        divisor = divisor.to(logps.device)
    return -logps.sum() / divisor, torch.stack([h.sum() for h in hits]).sum(), count


def check_chunkable(model: Any, key: str = KEY) -> None:
    """Refuse a model whose log-probs the chunked head would not compute exactly as TRL does.

    Needs a text-only causal LM with a separate backbone (``model.base_model``, e.g. LlamaModel)
    and an LM head exposing a (V, H) ``weight`` (tied to the embedding or not), whose logits are
    neither scaled nor soft-capped (:data:`LOGIT_TRANSFORMS`) and with no MoE load-balancing loss.

    Raises:
        ConfigError: naming ``key`` (the config key that asked for it: grpo's
            ``logprob_chunk_tokens``, sft's ``loss_chunk_tokens``) and the reason; setting it to
            null uses the trainer's own head, which handles these models.
    """
    config = model.config
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    name = getattr(config, "model_type", type(model).__name__)
    head_weight = getattr(model.get_output_embeddings(), "weight", None)
    reason = None
    if text is not config:
        reason = "it is a vision-language model (images pass through the forward TRL patches)"
    elif getattr(model, "base_model", model) is model:
        reason = "it has no separate backbone (model.base_model) to take the hidden states from"
    elif head_weight is None or head_weight.ndim != 2:
        reason = "it has no LM head with a (vocabulary, hidden) weight"
    elif any(getattr(text, attr, None) is not None for attr in LOGIT_TRANSFORMS):
        attrs = [a for a in LOGIT_TRANSFORMS if getattr(text, a, None) is not None]
        reason = f"its config scales or caps the logits ({', '.join(attrs)})"
    elif getattr(text, "output_router_logits", False):
        reason = "it is a mixture of experts with a load-balancing loss"
    if reason:
        raise ConfigError(
            f"{key}: the chunked log-prob head cannot run on this model ({name}): {reason}. "
            f"Set {key}: null to use the trainer's own LM head."
        )


def pack_rows(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Pack the real tokens of padded rows into as few rows as the longest one holds.

    Rows are placed longest first into the first packed row with room (first-fit decreasing);
    the capacity of a packed row is the longest input row's number of real tokens, so packing
    never lengthens a row. Tails of packed rows hold token id 0 at positions that start a
    sequence of their own (never read).

    Args:
        input_ids: (B, S) int64 token ids.
        attention_mask: (B, S) 0/1; a row's real tokens are those with mask 1, kept in order.

    Returns:
        ``(packed_ids, position_ids, index)``: (R, C) int64 ids and positions (each sequence's
        positions 0, 1, ...; R <= B rows of C = max real tokens per row), and (B, S) int64
        ``index``: the flat position (``row * C + column``) of input token (b, s) in the packed
        rows, -1 where its mask is 0.

    Raises:
        ValueError: shapes differ, or a row has no real token.

    >>> import torch
    >>> ids = torch.tensor([[0, 0, 5, 6], [7, 8, 9, 0], [0, 0, 0, 4]])
    >>> mask = (ids > 0).long()
    >>> packed, pos, index = pack_rows(ids, mask)
    >>> packed.tolist(), pos.tolist()
    ([[7, 8, 9], [5, 6, 4]], [[0, 1, 2], [0, 1, 0]])
    >>> index.tolist()
    [[-1, -1, 3, 4], [0, 1, 2, -1], [-1, -1, -1, 5]]
    """
    import torch

    if input_ids.shape != attention_mask.shape or input_ids.ndim != 2:
        shapes = f"input_ids {tuple(input_ids.shape)} and attention_mask {tuple(attention_mask.shape)}"
        raise ValueError(f"{shapes}: need two (B, S) tensors")
    real = attention_mask.bool()
    lengths = real.sum(1).tolist()
    if min(lengths, default=1) < 1:
        empty = [b for b, n in enumerate(lengths) if n < 1]
        raise ValueError(f"rows {empty} have no real token (attention mask all 0)")
    capacity = max(lengths)
    free: list[int] = []  # room left in each packed row
    place = [(0, 0)] * len(lengths)  # input row -> (packed row, offset)
    for b in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        row = next((r for r, room in enumerate(free) if room >= lengths[b]), len(free))
        if row == len(free):
            free.append(capacity)
        place[b] = (row, capacity - free[row])
        free[row] -= lengths[b]
    packed = input_ids.new_zeros(len(free), capacity)
    positions = torch.arange(capacity, device=input_ids.device).repeat(len(free), 1)
    index = torch.full(input_ids.shape, -1, dtype=torch.long, device=input_ids.device)
    for b, (row, offset) in enumerate(place):
        n = lengths[b]
        packed[row, offset : offset + n] = input_ids[b][real[b]]
        positions[row, offset : offset + n] = torch.arange(n, device=input_ids.device)
        index[b][real[b]] = row * capacity + offset + torch.arange(n, device=input_ids.device)
    return packed, positions, index


def add_chunked_lm_head(
    model: Any, chunk_tokens: int, temperature: float, head_fp32: bool = False, padding_free: bool = False
) -> None:
    """Give ``model`` a forward that returns completion log-probs from chunks of the LM head.

    ``model(input_ids=..., attention_mask=..., completion_logps=(logits_to_keep, compute_entropy))``
    runs the backbone on the whole sequence and returns ``(logps, entropy)``, each (B,
    logits_to_keep) float32 (entropy None unless asked): position j scores token
    ``input_ids[:, -logits_to_keep + j]`` from the hidden state one position earlier; positions
    whose attention mask is 0 are 0 (as in TRL's fused head). Without ``completion_logps`` the
    forward is the previous one (TRL's fused head, generation). With ``padding_free`` the
    backbone runs on the rows packed by :func:`pack_rows` (same results to rounding, see the
    module docstring). Patched on the module itself
    (as TRL's ``add_fused_lm_head`` is) so that a DDP wrapper's forward, which registers the
    gradient all-reduce, still runs.

    Raises:
        ConfigError: the model cannot use it (:func:`check_chunkable`).
    """
    check_chunkable(model)
    previous = model.forward

    def forward(self, *args, completion_logps: tuple[int, bool] | None = None, **kwargs):
        if completion_logps is None:
            return previous(*args, **kwargs)
        return _completion_logps(self, chunk_tokens, temperature, head_fp32, padding_free, *completion_logps, **kwargs)

    model.forward = types.MethodType(forward, model)


def _completion_logps(
    model: Any,
    chunk_tokens: int,
    temperature: float,
    head_fp32: bool,
    padding_free: bool,
    logits_to_keep: int,
    compute_entropy: bool,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    **kwargs: Any,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    seq_len = input_ids.shape[1]
    if not 0 < logits_to_keep < seq_len:
        raise ValueError(f"logits_to_keep must be in [1, {seq_len - 1}] (a prompt token first), got {logits_to_keep}")
    kwargs["use_cache"] = False  # a training forward: no KV cache to build
    head = model.get_output_embeddings()  # looked up per call: wrappers may replace it after patching
    targets = input_ids[:, -logits_to_keep:].to(head.weight.device)
    mask = attention_mask[:, -logits_to_keep:].to(head.weight.device) == 1
    if padding_free:
        packed, positions, index = pack_rows(input_ids, attention_mask)
        # attention_mask None + position ids: transformers masks across packed sequences
        out = model.base_model(input_ids=packed, position_ids=positions, attention_mask=None, **kwargs)
        flat = out.last_hidden_state.reshape(-1, out.last_hidden_state.shape[-1])
        before = index[:, -logits_to_keep - 1 : -1].to(head.weight.device)[mask]  # the state before each token
        if (before < 0).any():
            raise ValueError("padding_free: a completion token follows a padding position (no state to score it from)")
        selected = flat.to(head.weight.device)[before]
    else:
        hidden = model.base_model(input_ids=input_ids, attention_mask=attention_mask, **kwargs).last_hidden_state
        hidden = hidden[:, -logits_to_keep - 1 : -1].to(head.weight.device)  # the state before each scored token
        selected = hidden[mask]
    # Only real completion tokens go through the head (completions end at different lengths).
    logps, entropy = chunked_token_logps(
        selected,
        head.weight,
        targets[mask],
        chunk_tokens,
        temperature,
        lm_head_bias=head.bias,
        compute_entropy=compute_entropy,
        head_fp32=head_fp32,
    )

    def scatter(values: torch.Tensor) -> torch.Tensor:  # (n,) -> (B, logits_to_keep), 0 where masked
        return values.new_zeros(mask.shape).masked_scatter(mask, values)

    return scatter(logps), (scatter(entropy) if entropy is not None else None)

"""Smaller students cut out of a teacher: by depth (whole decoder layers) or by width (MLP
channels and attention heads chosen by activation importance), sized by a parameter ratio.

**Depth** (DistilBERT, Sanh et al. 2019, section 3: "we initialize the student from the teacher
by taking one layer out of two", generalised to any ratio): the student keeps ``n`` of the
teacher's decoder layers, evenly spaced from the first to the last (:func:`layer_indices`), and
everything outside the layers (embeddings, final norm, LM head) unchanged.

**Width** (Minitron: Muralidharan et al. 2024, "Compact Language Models via Pruning and
Knowledge Distillation", section 2.2; Sreenivas et al. 2024, "LLM Pruning and Distillation in
Practice: The Minitron Approach"): every layer keeps the same number of MLP channels and of
query heads, the ones with the largest activations on calibration sequences. Importance, as
Minitron's best aggregation (L2 over the sequence, mean over the batch):

- MLP channel ``i`` of a layer: ``mean_b || a_{b,:,i} ||_2`` where ``a = act(x W_gate^T) * (x W_up^T)``
  is the input of ``down_proj`` (one value per token and channel);
- query head ``h``: ``mean_b || o_{b,:,h} ||_2`` where ``o_{b,t,h}`` is head ``h``'s attention
  output (its ``head_dim`` slice of the input of ``o_proj``), the Frobenius norm over tokens
  and the head's channels.

Padding positions are left out of both. With grouped-query attention every key/value head
keeps the same number of query heads (the ones of its group with the largest importance), so
the student is again a plain GQA model; key/value heads, ``head_dim``, the hidden size,
embeddings and norms are kept. Departure from Minitron: no embedding-channel (hidden size)
pruning, so a width-pruned student's hidden states have the teacher's size and feature
distillation needs no projection.

Supported architectures: decoder layers with ``self_attn.{q,k,v,o}_proj`` and
``mlp.{gate,up,down}_proj`` (Llama, Qwen2/2.5, Mistral, SmolLM2); biases are sliced with their
weights. Anything else is refused with the module names it lacks.
"""

from __future__ import annotations

import contextlib
import copy
import math
from collections.abc import Iterable
from dataclasses import dataclass


def layer_indices(n_teacher: int, n_student: int) -> list[int]:
    """``n_student`` teacher layer indices, evenly spaced, always including the first and last.

    >>> layer_indices(30, 10)
    [0, 3, 6, 10, 13, 16, 19, 23, 26, 29]
    >>> layer_indices(12, 6)
    [0, 2, 4, 7, 9, 11]
    >>> layer_indices(6, 1)
    [0]

    Raises:
        ValueError: unless ``1 <= n_student < n_teacher``.
    """
    if not 1 <= n_student < n_teacher:
        raise ValueError(
            f"student_layers must be in [1, {n_teacher - 1}] for a {n_teacher}-layer teacher, got {n_student}"
        )
    if n_student == 1:
        return [0]
    return [round(i * (n_teacher - 1) / (n_student - 1)) for i in range(n_student)]


def decoder_layers_prefix(model) -> str:
    """Qualified name of the ModuleList holding the decoder layers (``model.layers`` for Llama).

    Raises:
        ValueError: no ModuleList with ``config.num_hidden_layers`` entries.
    """
    import torch

    n = model.config.num_hidden_layers
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) == n:
            return name
    raise ValueError(f"{type(model).__name__}: no ModuleList of {n} decoder layers found")


def decoder_layers(model):
    """The ModuleList of decoder layers of ``model``."""
    return model.get_submodule(decoder_layers_prefix(model))


def parameter_count(config) -> int:
    """Parameters of a causal LM built from ``config`` (tied embeddings counted once), counted
    on the meta device: no memory, no weights."""
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return sum(p.numel() for p in model.parameters())


def _student_from(teacher, overrides: dict, state: dict):
    """A model of ``teacher``'s class with its config changed by ``overrides``, loaded with
    ``state`` (every key of the student present; an unexpected or missing key is an error)."""
    from transformers import AutoModelForCausalLM

    cfg = teacher.config.to_dict()
    cfg.update(overrides)
    student_config = type(teacher.config)(**cfg)
    student = AutoModelForCausalLM.from_config(student_config, dtype=teacher.dtype)
    student.load_state_dict(state, strict=True)  # copies; a key missing on either side is an error
    student.generation_config = copy.deepcopy(teacher.generation_config)
    return student


# ---------------------------------------------------------------------------- depth


def derive_by_depth(teacher, keep: list[int]):
    """A copy of ``teacher`` with only the decoder layers ``keep`` (in order), weights copied.

    Everything outside the decoder layers (embeddings, final norm, LM head, tied or not) is
    copied unchanged; student layer ``j`` gets teacher layer ``keep[j]``. Same dtype as the
    teacher; the student's config differs only in ``num_hidden_layers`` (and ``layer_types``
    when the architecture has one, e.g. sliding-window patterns).
    """
    overrides: dict = {"num_hidden_layers": len(keep)}
    if getattr(teacher.config, "layer_types", None):
        overrides["layer_types"] = [teacher.config.layer_types[i] for i in keep]
    prefix = decoder_layers_prefix(teacher) + "."
    source = teacher.state_dict()
    # The student's keys are the teacher's with layer indices renumbered 0..len(keep)-1.
    state = {}
    for key, value in source.items():
        if key.startswith(prefix):
            index, rest = key[len(prefix) :].split(".", 1)
            if int(index) in keep:
                state[f"{prefix}{keep.index(int(index))}.{rest}"] = value
        else:
            state[key] = value
    return _student_from(teacher, overrides, state)


def depth_for_ratio(config, ratio: float) -> int:
    """The most decoder layers a depth-pruned student of ``config`` can keep with at most
    ``ratio`` of its parameters (at least 1).

    Raises:
        ValueError: ``ratio`` outside (0, 1), or even one layer exceeds it (the embeddings alone
            are more than ``ratio`` of the model).
    """
    if not 0 < ratio < 1:
        raise ValueError(f"student_size must be in (0, 1), got {ratio}")
    total = parameter_count(config)
    best = None
    for n in range(1, config.num_hidden_layers):
        cfg = _changed(config, num_hidden_layers=n)
        if parameter_count(cfg) <= ratio * total:
            best = n
        else:
            break
    if best is None:
        raise ValueError(
            f"student_size {ratio}: even a 1-layer student has more than {ratio:.0%} of the "
            f"teacher's {total:,} parameters (the embeddings dominate); use a larger ratio or prune: width"
        )
    return best


def _changed(config, **overrides):
    cfg = config.to_dict()
    cfg.update(overrides)
    if "num_hidden_layers" in overrides and cfg.get("layer_types"):
        cfg["layer_types"] = cfg["layer_types"][: overrides["num_hidden_layers"]]
    return type(config)(**cfg)


# ---------------------------------------------------------------------------- width


@dataclass(frozen=True)
class WidthPlan:
    """Sizes of a width-pruned student: per layer ``intermediate_size`` MLP channels and
    ``heads`` query heads (a multiple of the teacher's key/value heads)."""

    intermediate_size: int
    heads: int
    parameters: int  # of the student
    teacher_parameters: int

    @property
    def ratio(self) -> float:
        return self.parameters / self.teacher_parameters


def _attention_shape(config) -> tuple[int, int, int]:
    """``(query heads, key/value heads, head_dim)`` of ``config``."""
    heads = config.num_attention_heads
    kv = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    return heads, kv, head_dim


def width_plan(config, ratio: float, heads: int | None = None) -> WidthPlan:
    """The width-pruned sizes that keep at most ``ratio`` of ``config``'s parameters.

    ``heads``: query heads to keep (a multiple of the key/value heads); default: the same
    fraction of each group's heads as the fraction of the decoder layers' parameters that must
    remain, rounded, at least one per group (SmolLM2-135M at 0.7: 6 of 9). The MLP then gets the
    largest ``intermediate_size`` that fits.

    Raises:
        ValueError: ``ratio`` outside (0, 1); ``heads`` not a positive multiple of the key/value
            heads or above the teacher's; no MLP width fits (the ratio is too small).
    """
    if not 0 < ratio < 1:
        raise ValueError(f"student_size must be in (0, 1), got {ratio}")
    n_heads, n_kv, head_dim = _attention_shape(config)
    total = parameter_count(config)
    if heads is None:
        no_layers = parameter_count(_changed(config, num_hidden_layers=1)) - _layer_parameters(config)
        layer_share = (ratio * total - no_layers) / (total - no_layers)
        per_group = max(1, min(n_heads // n_kv, round(layer_share * n_heads / n_kv)))
        heads = per_group * n_kv
    if heads < 1 or heads % n_kv or heads > n_heads:
        raise ValueError(
            f"student_heads must be a positive multiple of the teacher's {n_kv} key/value heads, "
            f"at most {n_heads}; got {heads}"
        )
    base = dict(num_attention_heads=heads, head_dim=head_dim)
    # Parameters are affine in intermediate_size: two counts give the line.
    p1 = parameter_count(_changed(config, intermediate_size=1, **base))
    p2 = parameter_count(_changed(config, intermediate_size=2, **base))
    width = math.floor((ratio * total - p1) / (p2 - p1)) + 1
    width = min(width, config.intermediate_size)
    if width < 1:
        raise ValueError(
            f"student_size {ratio}: keeping {heads} heads already exceeds {ratio:.0%} of the teacher's "
            f"parameters; lower student_heads or raise student_size"
        )
    params = parameter_count(_changed(config, intermediate_size=width, **base))
    return WidthPlan(width, heads, params, total)


def _layer_parameters(config) -> int:
    return parameter_count(_changed(config, num_hidden_layers=2)) - parameter_count(
        _changed(config, num_hidden_layers=1)
    )


def _layer_modules(layer):
    """``(attention, mlp)`` of a decoder layer with the projections width pruning needs.

    Raises:
        ValueError: the layer lacks ``self_attn.{q,k,v,o}_proj`` or ``mlp.{gate,up,down}_proj``.
    """
    attn, mlp = getattr(layer, "self_attn", None), getattr(layer, "mlp", None)
    missing = [f"self_attn.{n}" for n in ("q_proj", "k_proj", "v_proj", "o_proj") if not hasattr(attn, n)]
    missing += [f"mlp.{n}" for n in ("gate_proj", "up_proj", "down_proj") if not hasattr(mlp, n)]
    if missing:
        raise ValueError(
            f"width pruning needs decoder layers with {', '.join(missing)} ({type(layer).__name__} "
            "has not); use prune: depth for this architecture"
        )
    return attn, mlp


@dataclass
class Importance:
    """Activation importance per decoder layer: ``neurons[l]`` (intermediate_size,) and
    ``heads[l]`` (query heads,), float64 tensors; ``sequences``: calibration sequences seen."""

    neurons: list
    heads: list
    sequences: int


def activation_importance(model, batches: Iterable[dict], autocast_dtype=None) -> Importance:
    """Minitron importance of every MLP channel and query head of ``model`` (see the module
    docstring), from forward passes over ``batches`` (dicts with ``input_ids`` and
    ``attention_mask``, (batch, length) int tensors). No gradients; the model's mode is restored.
    ``autocast_dtype``: run the passes under CPU/CUDA autocast in this ``torch.dtype`` (the
    importances are accumulated in float64 either way).

    Raises:
        ValueError: unsupported architecture (:func:`_layer_modules`), or no batches.
    """
    import torch

    layers = decoder_layers(model)
    n_heads, _, head_dim = _attention_shape(model.config)
    neurons = [torch.zeros(model.config.intermediate_size, dtype=torch.float64) for _ in layers]
    heads = [torch.zeros(n_heads, dtype=torch.float64) for _ in layers]
    mask_box: dict = {}
    hooks = []

    def neuron_hook(i):
        def hook(_module, args):
            x = args[0].detach().float() * mask_box["mask"]  # (B, S, I), padding zeroed
            neurons[i] += x.pow(2).sum(1).sqrt().sum(0).double()  # L2 over positions, summed over the batch

        return hook

    def head_hook(i):
        def hook(_module, args):
            x = args[0].detach().float() * mask_box["mask"]  # (B, S, heads * head_dim)
            x = x.reshape(*x.shape[:2], n_heads, head_dim)
            heads[i] += x.pow(2).sum((1, 3)).sqrt().sum(0).double()

        return hook

    for i, layer in enumerate(layers):
        attn, mlp = _layer_modules(layer)
        hooks.append(mlp.down_proj.register_forward_pre_hook(neuron_hook(i)))
        hooks.append(attn.o_proj.register_forward_pre_hook(head_hook(i)))
    was_training = model.training
    model.eval()
    sequences = 0
    try:
        device = next(model.parameters()).device.type
        autocast = (
            torch.autocast(device, dtype=autocast_dtype) if autocast_dtype is not None else contextlib.nullcontext()
        )
        with torch.no_grad(), autocast:
            for batch in batches:
                mask_box["mask"] = batch["attention_mask"].unsqueeze(-1).float()
                model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False)
                sequences += batch["input_ids"].shape[0]
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    if sequences == 0:
        raise ValueError("activation importance needs at least one calibration sequence")
    return Importance([n / sequences for n in neurons], [h / sequences for h in heads], sequences)


def select_width(importance: Importance, plan: WidthPlan, kv_heads: int) -> tuple[list[list[int]], list[list[int]]]:
    """Per layer, the MLP channels and query heads to keep (sorted indices): the
    ``plan.intermediate_size`` most important channels; in each key/value group, its
    ``plan.heads // kv_heads`` most important query heads (ties: lower index first)."""
    import torch

    channels, heads = [], []
    for neuron, head in zip(importance.neurons, importance.heads):
        # Stable descending sort: equal importance keeps the lower index (deterministic).
        order = torch.sort(neuron, descending=True, stable=True).indices[: plan.intermediate_size]
        channels.append(sorted(order.tolist()))
        group = head.numel() // kv_heads
        per_group = plan.heads // kv_heads
        kept = []
        for g in range(kv_heads):
            local = torch.sort(head[g * group : (g + 1) * group], descending=True, stable=True).indices[:per_group]
            kept += sorted(g * group + int(j) for j in local)
        heads.append(kept)
    return channels, heads


def derive_by_width(teacher, channels: list[list[int]], heads: list[list[int]]):
    """A copy of ``teacher`` keeping, in layer ``l``, the MLP channels ``channels[l]`` and the
    query heads ``heads[l]`` (same count in every layer, same count per key/value group, in
    increasing order within each group); everything else copied unchanged.

    Slices (PyTorch ``Linear`` weights are (out, in)): ``gate_proj``/``up_proj`` rows and
    ``down_proj`` columns by channel; ``q_proj`` rows and ``o_proj`` columns by head (blocks of
    ``head_dim``); biases with their rows. ``k_proj``/``v_proj`` unchanged.

    Raises:
        ValueError: unequal counts across layers or groups, an index out of range, or an
            unsupported architecture.
    """
    n_heads, n_kv, head_dim = _attention_shape(teacher.config)
    layers = decoder_layers(teacher)
    if len(channels) != len(layers) or len(heads) != len(layers):
        raise ValueError(f"need channels and heads for each of the {len(layers)} layers")
    widths, counts = {len(c) for c in channels}, {len(h) for h in heads}
    if len(widths) != 1 or len(counts) != 1:
        raise ValueError(f"every layer must keep the same number of channels and heads, got {widths} and {counts}")
    width, kept_heads = widths.pop(), counts.pop()
    group = n_heads // n_kv
    for h in heads:
        per_group = [sum(1 for x in h if g * group <= x < (g + 1) * group) for g in range(n_kv)]
        if len(set(per_group)) != 1 or sorted(h) != list(h) or not all(0 <= x < n_heads for x in h):
            raise ValueError(
                f"heads {h}: each of the {n_kv} key/value groups must keep the same number of its "
                f"{group} query heads, indices sorted and in [0, {n_heads})"
            )
    for c in channels:
        if not all(0 <= x < teacher.config.intermediate_size for x in c) or len(set(c)) != len(c):
            raise ValueError(f"MLP channels must be distinct indices in [0, {teacher.config.intermediate_size})")
    import torch

    prefix = decoder_layers_prefix(teacher) + "."
    state = dict(teacher.state_dict())
    for i, layer in enumerate(layers):
        attn, mlp = _layer_modules(layer)
        ch = torch.tensor(channels[i], dtype=torch.long)
        rows = torch.cat([torch.arange(h * head_dim, (h + 1) * head_dim) for h in heads[i]])
        base = f"{prefix}{i}."
        for name, module, dim, index in (
            ("mlp.gate_proj", mlp.gate_proj, 0, ch),
            ("mlp.up_proj", mlp.up_proj, 0, ch),
            ("mlp.down_proj", mlp.down_proj, 1, ch),
            ("self_attn.q_proj", attn.q_proj, 0, rows),
            ("self_attn.o_proj", attn.o_proj, 1, rows),
        ):
            state[f"{base}{name}.weight"] = module.weight.detach().index_select(dim, index).clone()
            if getattr(module, "bias", None) is not None and dim == 0:
                state[f"{base}{name}.bias"] = module.bias.detach().index_select(0, index).clone()
    # A tied LM head appears under both names in state_dict(); the student ties them again.
    overrides = {"intermediate_size": width, "num_attention_heads": kept_heads, "head_dim": head_dim}
    return _student_from(teacher, overrides, {k: v.clone() for k, v in state.items()})

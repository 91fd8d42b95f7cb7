"""Train only the top of a transformer: freeze the embeddings and the lower decoder layers.

Partial fine-tuning, as trlX's ``num_layers_unfrozen`` and the "freeze the bottom, tune the top"
baselines of transfer learning (Howard & Ruder 2018, ULMFiT; Lee et al. 2019, "What Would Elsa
Do? Freezing Layers During Transformer Fine-Tuning", which keeps ~90% of full fine-tuning
quality training a quarter of the layers). On a CPU it is a time lever: the backward stops at
the lowest trained layer (no gradient is computed below it), and AdamW keeps state for the
trained parameters only. The forward is unchanged.

What counts as "below" and "above" the decoder layers follows ``model.named_parameters()``
order (embeddings are registered before the layer stack, the final norm and the head after it,
in every transformers decoder), so any architecture with one ``ModuleList`` of
``config.num_hidden_layers`` layers works. A head tied to the input embeddings is frozen with
them (it is the same tensor).
"""

from __future__ import annotations

from stages.common.pruning import decoder_layers_prefix


def freeze_lower_layers(model, trainable_layers: int) -> dict[str, int]:
    """Set ``requires_grad`` so that only the top ``trainable_layers`` decoder layers and every
    parameter registered after the layer stack (final norm, score / LM head) are trained.

    Args:
        model: a transformers model (any head) with one ModuleList of decoder layers.
        trainable_layers: how many of the highest decoder layers to train, ``>= 1``; at least
            the number of layers means every layer (embeddings still frozen).

    Returns:
        ``{"parameters_trainable": n, "parameters_frozen": m, "layers_trainable": k}``
        (parameter counts in elements; tied tensors counted once).

    Raises:
        ValueError: ``trainable_layers < 1``, or no decoder-layer ModuleList
            (``stages.common.pruning.decoder_layers_prefix``).
    """
    if trainable_layers < 1:
        raise ValueError(f"trainable_layers must be >= 1, got {trainable_layers}")
    prefix = decoder_layers_prefix(model) + "."
    n_layers = model.config.num_hidden_layers
    first_trained = max(0, n_layers - trainable_layers)
    seen_layers = False
    counts = {"parameters_trainable": 0, "parameters_frozen": 0}
    for name, param in model.named_parameters():
        if name.startswith(prefix):
            seen_layers = True
            train = int(name[len(prefix) :].split(".", 1)[0]) >= first_trained
        else:
            train = seen_layers  # registered after the layer stack: norm, head
        param.requires_grad_(train)
        counts["parameters_trainable" if train else "parameters_frozen"] += param.numel()
    return {**counts, "layers_trainable": n_layers - first_trained}

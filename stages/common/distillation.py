"""Knowledge-distillation losses on token positions: logits (KL / generalised JSD at a
temperature, dense or on the teacher's top-k) and hidden-state features (MSE / cosine).

Every function takes the positions to train already selected: ``student_logits`` (N, V) and
the teacher's distribution at the same N positions (dense (N, V) logits, or :class:`TopK`).
Position ``n`` is the prediction of one target token; the caller chooses the positions
(assistant tokens, or the completion tokens of an on-policy sample). Results are per
position, float32, in nats; the caller reduces them (mean over the batch's positions).

**Divergences** (``beta`` as in TRL and Agarwal et al. 2024, "On-Policy Distillation of
Language Models: Learning from Self-Generated Mistakes" (GKD), eq. 1):

- ``beta = 0``: forward KL, ``KL(p_T || q_T) = sum_v p_T(v) (log p_T(v) - log q_T(v))``;
- ``beta = 1``: reverse KL, ``KL(q_T || p_T)`` (mode-seeking; on-policy distillation);
- ``0 < beta < 1``: generalised JSD, ``beta KL(p || m) + (1 - beta) KL(q || m)`` with
  ``m = beta p + (1 - beta) q``;

where ``p_T = softmax(z_teacher / T)``, ``q_T = softmax(z_student / T)``. The result is
multiplied by ``T^2`` (Hinton, Vinyals, Dean 2015, "Distilling the Knowledge in a Neural
Network", section 2: the soft targets' gradients scale as 1/T^2, so multiplying by T^2 keeps
their share of the loss when T changes). TRL's ``DistillationTrainer`` and ``GKDTrainer`` do
not scale by T^2 (and ``GKDTrainer`` applies its temperature to sampling only, not to the
loss: trl#5731). Note (ms-swift#10078, trl#6780): the interior JSD tends to 0, not to the KLs,
as beta -> 0 or 1; near the ends beta mostly scales the loss.

The dense case is TRL's own ``GKDTrainer.generalized_jsd_loss`` (``reduction="none"``),
summed over the vocabulary. **Top-k** (the teacher's k most likely tokens, e.g. stored once
per dataset) has no TRL counterpart; :func:`topk_divergence` compares the two distributions on
``k + 1`` outcomes -- the teacher's top-k tokens and "any other token" -- with the student's
tail mass computed exactly from its full logits. This is the divergence of the distributions
coarsened to those outcomes: never above the full one (data-processing inequality) and equal to
it when ``k = V``. No renormalisation of the teacher's top-k is needed, and the student is
still pushed to put the teacher's tail mass outside the top-k.

**Features**: the mean over mapped layers of the per-position distance between the student's
hidden state (through a learned linear projection when the widths differ) and the teacher's:
``mse``: ``mean_d (W h_s - h_t)_d^2`` (TinyBERT, Jiao et al. 2020, eq. 7 with W); ``cosine``:
``1 - cos(W h_s, h_t)`` (DistilBERT, Sanh et al. 2019, section 3, on the last hidden state).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    import torch

Divergence = Literal["forward_kl", "reverse_kl", "jsd"]
Distance = Literal["mse", "cosine"]


def beta_of(divergence: str, beta: float) -> float:
    """The TRL ``beta`` of a divergence name: forward_kl 0, reverse_kl 1, jsd ``beta``."""
    return {"forward_kl": 0.0, "reverse_kl": 1.0}.get(divergence, beta)


def soft_targets(logits, temperature: float = 1.0):
    """``softmax(logits / T)`` over the last dimension (Hinton et al. 2015, eq. 1).

    >>> import torch
    >>> [round(p, 3) for p in soft_targets(torch.tensor([1.1, 0.2, 0.2])).tolist()]
    [0.552, 0.224, 0.224]
    """
    import torch

    return torch.softmax(logits.float() / temperature, dim=-1)


@dataclass
class TopK:
    """The teacher's ``k`` most likely tokens per position: ``ids`` (N, k) int64 and their
    ``logprobs`` (N, k) float32, log-probabilities at temperature T (``log_softmax(z / T)``,
    normalised over the whole vocabulary, so their exp sums to at most 1)."""

    ids: torch.Tensor
    logprobs: torch.Tensor


def teacher_topk(teacher_logits, k: int, temperature: float) -> TopK:
    """:class:`TopK` of dense teacher logits (N, V) at temperature ``temperature``."""
    import torch

    logprobs = torch.log_softmax(teacher_logits.float() / temperature, dim=-1)
    values, ids = logprobs.topk(min(k, logprobs.shape[-1]), dim=-1)
    return TopK(ids, values)


def dense_divergence(student_logits, teacher_logits, beta: float, temperature: float):
    """Per-position divergence (N,) float32 between dense logits (N, V), times ``T^2`` (module
    docstring). TRL's ``GKDTrainer.generalized_jsd_loss`` (the ``beta`` endpoints are the KLs)."""
    import warnings

    with warnings.catch_warnings():  # "importing from trl.experimental": known, and pinned by the tests
        warnings.simplefilter("ignore")
        from trl.experimental.gkd import GKDTrainer

    jsd = GKDTrainer.generalized_jsd_loss(
        student_logits.float(), teacher_logits.float(), beta=beta, temperature=temperature, reduction="none"
    )
    return jsd.sum(-1) * temperature**2


def _kl(log_a, log_b):
    """``sum exp(log_a) (log_a - log_b)`` over the last dim, with 0 log 0 = 0 and finite
    gradients where ``exp(log_a) = 0`` (the logs are masked before they are subtracted)."""
    import torch

    p = log_a.exp()
    live = p > 0
    zero = torch.zeros_like(log_a)
    return (p * (torch.where(live, log_a, zero) - torch.where(live, log_b, zero))).sum(-1)


def topk_divergence(student_logits, teacher: TopK, beta: float, temperature: float):
    """Per-position divergence (N,) float32 between the student's logits (N, V) and the
    teacher's top-k, on ``k + 1`` outcomes (module docstring), times ``T^2``.

    The teacher's tail mass ``1 - sum(top-k)`` is floored at 1e-12 (rounding can make a peaked
    teacher's top-k sum to 1 and the reverse KL infinite). With ``k = V`` there is no tail and
    the value equals :func:`dense_divergence`.
    """
    import torch

    s = torch.log_softmax(student_logits.float() / temperature, dim=-1)  # (N, V)
    ids = teacher.ids.long()
    log_q = s.gather(-1, ids)  # (N, k): the student on the teacher's top-k
    log_p = teacher.logprobs.float()
    if ids.shape[-1] < s.shape[-1]:
        # The student's mass outside the teacher's top-k, exactly: logsumexp over the other tokens.
        s_tail = s.scatter(-1, ids, float("-inf")).logsumexp(-1, keepdim=True)
        t_tail = torch.log((1.0 - log_p.exp().sum(-1, keepdim=True)).clamp(min=1e-12))
        log_p, log_q = torch.cat([log_p, t_tail], -1), torch.cat([log_q, s_tail], -1)
    if beta == 0.0:
        div = _kl(log_p, log_q)
    elif beta == 1.0:
        div = _kl(log_q, log_p)
    else:
        b = torch.tensor(beta, dtype=log_p.dtype)
        log_m = torch.logsumexp(torch.stack([log_p + torch.log(b), log_q + torch.log1p(-b)]), dim=0)
        div = beta * _kl(log_p, log_m) + (1 - beta) * _kl(log_q, log_m)
    return div * temperature**2


def logits_divergence(student_logits, teacher, beta: float, temperature: float):
    """Per-position divergence (N,) times ``T^2``: dense when ``teacher`` is a tensor (N, V),
    on k + 1 outcomes when it is a :class:`TopK`."""
    if isinstance(teacher, TopK):
        return topk_divergence(student_logits, teacher, beta, temperature)
    return dense_divergence(student_logits, teacher, beta, temperature)


def feature_distance(student_hidden, teacher_hidden, distance: str):
    """Per-position distance (N,) float32 between hidden states (N, D) of equal width (project
    the student's first): ``mse`` = mean over D of the squared difference; ``cosine`` =
    ``1 - cos``."""
    import torch

    s, t = student_hidden.float(), teacher_hidden.float()
    if distance == "mse":
        return (s - t).pow(2).mean(-1)
    if distance == "cosine":
        return 1.0 - torch.nn.functional.cosine_similarity(s, t, dim=-1, eps=1e-8)
    raise ValueError(f"distance {distance!r}: valid values are mse, cosine")


def feature_projections(layer_map: dict[int, int], student_width: int, teacher_width: int):
    """A ``torch.nn.ModuleDict`` of ``Linear(student_width, teacher_width, bias=False)`` per
    mapped student layer (key ``str(student_layer)``), or None when the widths are equal.

    Initialised to the identity on the shared dimensions (zeros elsewhere), so training starts
    from "compare the common channels" rather than from a random map (TinyBERT's W_h is
    learned from a random start; an identity start trains faster on tiny budgets).
    """
    if student_width == teacher_width:
        return None
    import torch

    layers = {}
    for s in layer_map:
        linear = torch.nn.Linear(student_width, teacher_width, bias=False)
        with torch.no_grad():
            linear.weight.zero_()
            n = min(student_width, teacher_width)
            linear.weight[:n, :n] = torch.eye(n)
        layers[str(s)] = linear
    return torch.nn.ModuleDict(layers)

"""Dynamic sampling for GRPO (DAPO, Yu et al. 2025, "DAPO: an open-source LLM reinforcement
learning system at scale", section 3.2): groups whose *verifiable* reward is the same for every
completion carry no learning signal, so they are dropped and more prompts are sampled until the
batch is full again.

Why the accuracy and not the total reward: a group's advantages are (r_i - mean) / std of its
total rewards. When all G completions are equally wrong, small format or language differences
still give the total reward a spread, and scaling by the group std blows that spread up to
unit-size advantages: the whole update of such a group teaches format, none of it correctness.
Filtering on the total reward (what TRL's ``frac_reward_zero_std`` measures) therefore hides
the groups that matter; this module filters on one named reward (``accuracy`` by default).

What a group is labelled (values of the filter reward over its G completions; ``None``/NaN =
the reward could not judge a completion and is ignored):
- ``informative``: at least two judged completions whose values differ (by more than 1e-6);
- ``all_correct``: every judged value is 1, ``all_wrong``: every judged value is 0,
- ``all_equal``: every judged value is the same other number (e.g. a partial test pass rate),
- ``unjudged``: fewer than two judged completions.
Only ``informative`` groups are trained on (and ``unjudged`` ones with ``keep_unjudged``).

Refill prompts are drawn from the whole training pool, uniformly with replacement, by a seeded
generator keyed on ``(seed, optimizer step, round, rank)`` (:func:`refill_indices`): a resumed
run draws exactly what the uninterrupted one drew, with no state to save, and every rank draws
different prompts. When ``max_rounds`` generation rounds cannot fill the batch, it is completed
with rows of dropped groups whose advantages and loss masks are set to zero (they move nothing;
the loss is normalised over the trained rows' tokens) and the event is counted
(``dynamic_sampling/filled_zero_signal``): a batch that cannot fill ends, it never hangs.

Departures from DAPO: DAPO fills the batch from the next prompts of the data stream; here refill
prompts are drawn from the pool (above), so the main stream (TRL's sampler, its order restored on
resume) is never consumed out of order. With ``scale_rewards: batch`` the advantages are still
scaled by the std of the round they were sampled in.

The batch surgery (:func:`take_rows`, :func:`concat`) works on the dict that TRL 1.16's
``GRPOTrainer._generate_and_score_completions`` returns: per-completion tensors whose rows are
completions, prompts left-padded and completions right-padded.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Sequence
from typing import Any

from pydantic import PositiveInt

from pipeline.config import StrictModel

LABELS = ("informative", "all_correct", "all_wrong", "all_equal", "unjudged")
_TOL = 1e-6

# Keys of TRL's batch dict, by how their rows are aligned (TRL 1.16).
PROMPT_SIDE = ("prompt_ids", "prompt_mask")  # (B, P), left-padded
COMPLETION_SIDE = (
    "completion_ids",
    "completion_mask",
    "old_per_token_logps",
    "sampling_per_token_logps",
    "ref_per_token_logps",
    "tool_mask",
)  # (B, C), right-padded
ROW_KEYS = ("advantages",)  # (B,)
# (B, 1) in sequence-level modes, (B, C) in token-level ones
RATIO_KEY = "importance_sampling_ratio"
SCALAR_KEYS = ("num_items_in_batch",)


def group_labels(values: Sequence[float | None], group_size: int) -> list[str]:
    """One label of :data:`LABELS` per group of ``group_size`` consecutive values.

    ``values``: the filter reward of each completion, groups contiguous (TRL's layout); None or
    NaN = not judged.

    Raises:
        ValueError: ``len(values)`` is not a multiple of ``group_size``.

    >>> group_labels([1, 0, 1, 1, 0, 0, 0, 0, 1, 1, 1, None, None, None, 0.5, 0.5, None, 1, None, None], 4)
    ['informative', 'all_wrong', 'all_correct', 'all_equal', 'unjudged']
    """
    if group_size < 1 or len(values) % group_size:
        raise ValueError(f"{len(values)} rewards do not split into groups of {group_size}")
    labels = []
    for start in range(0, len(values), group_size):
        judged = [float(v) for v in values[start : start + group_size] if v is not None and v == v]
        if len(judged) < 2:
            labels.append("unjudged")
        elif max(judged) - min(judged) > _TOL:
            labels.append("informative")
        elif abs(judged[0] - 1.0) <= _TOL:
            labels.append("all_correct")
        elif abs(judged[0]) <= _TOL:
            labels.append("all_wrong")
        else:
            labels.append("all_equal")
    return labels


def refill_indices(seed: int, step: int, round_: int, rank: int, n: int, pool_size: int) -> list[int]:
    """``n`` prompt indices in ``[0, pool_size)`` for refill round ``round_`` (1, 2, ...) of
    optimizer step ``step`` on process ``rank``: uniform, with replacement, reproducible."""
    if pool_size < 1:
        raise ValueError("the prompt pool is empty")
    rng = random.Random(f"dynamic-sampling/{seed}/{step}/{round_}/{rank}")
    return [rng.randrange(pool_size) for _ in range(n)]


def _rows(batch: dict[str, Any]) -> int:
    return int(batch["completion_ids"].shape[0])


def check_keys(batch: dict[str, Any]) -> None:
    """Refuse a batch with keys this module does not know how to cut (multimodal inputs)."""
    known = {*PROMPT_SIDE, *COMPLETION_SIDE, *ROW_KEYS, RATIO_KEY, *SCALAR_KEYS}
    unknown = sorted(set(batch) - known)
    if unknown:
        raise ValueError(
            f"dynamic sampling cannot split batch entries {unknown} (multimodal inputs are not "
            "supported); set dynamic_sampling: false"
        )


def take_rows(batch: dict[str, Any], rows: Sequence[int]) -> dict[str, Any]:
    """The completions ``rows`` of ``batch`` (every per-completion tensor indexed; scalars kept)."""
    import torch

    check_keys(batch)
    index = torch.as_tensor(list(rows), dtype=torch.long, device=batch["completion_ids"].device)
    return {k: (v if k in SCALAR_KEYS else v.index_select(0, index)) for k, v in batch.items()}


def _pad_to(t, width: int, value: float, left: bool):
    import torch.nn.functional as F

    extra = width - t.shape[1]
    if extra <= 0:
        return t
    return F.pad(t, (extra, 0) if left else (0, extra), value=value)


def concat(batches: Sequence[dict[str, Any]], pad_token_id: int) -> dict[str, Any]:
    """One batch of the rows of ``batches``, re-padded to the widest prompt (left) and completion
    (right). Padding values: ``pad_token_id`` for ids, 0 for masks and log-probs, 1 for
    importance ratios. ``num_items_in_batch`` is left to the caller (it is a global count).

    Raises:
        ValueError: no batch, or batches with different keys.
    """
    import torch

    if not batches:
        raise ValueError("nothing to concatenate")
    keys = set(batches[0])
    if any(set(b) != keys for b in batches):
        raise ValueError(f"batches with different entries: {[sorted(b) for b in batches]}")
    for b in batches:
        check_keys(b)
    p = max(b["prompt_ids"].shape[1] for b in batches)
    c = max(b["completion_ids"].shape[1] for b in batches)
    out: dict[str, Any] = {}
    # The first batch's key order, never a set's: TRL's shuffle_sequence_dict sizes the batch by
    # the first entry, so a scalar (num_items_in_batch) first fails with "len() of a 0-d tensor";
    # set order changes with PYTHONHASHSEED, so that failed in some processes only.
    for k in batches[0]:
        if k in SCALAR_KEYS:
            out[k] = batches[0][k]
            continue
        parts = [b[k] for b in batches]
        if k in PROMPT_SIDE:
            value: float = pad_token_id if k == "prompt_ids" else 0
            parts = [_pad_to(t, p, value, left=True) for t in parts]
        elif k in COMPLETION_SIDE or (k == RATIO_KEY and parts[0].dim() == 2 and parts[0].shape[1] > 1):
            value = pad_token_id if k == "completion_ids" else (1.0 if k == RATIO_KEY else 0)
            parts = [_pad_to(t, c, value, left=False) for t in parts]
        out[k] = torch.cat(parts, dim=0)
    return out


class RoundStats(Counter):
    """Counts of one optimizer step's dynamic sampling, logged as ``dynamic_sampling/<key>``."""

    def add_labels(self, labels: Sequence[str]) -> None:
        self["groups_sampled"] += len(labels)
        for label in labels:
            self[f"groups_{label}"] += 1


class DynamicSampling(StrictModel):
    """Dynamic sampling of a ``grpo`` step (module docstring). Off by default: the share of
    zero-signal groups is then still logged (``zero_signal/frac_groups``)."""

    enabled: bool = False
    # The verifiable reward whose all-equal groups are dropped: a name of the step's `rewards`
    # (never the weighted total: shaped terms make groups look informative when they are not).
    reward: str = "accuracy"
    max_rounds: PositiveInt = 4  # generation rounds per optimizer step, the first one included
    # A refill round samples missing / (share of informative groups so far) groups, at most this
    # many times the step's groups: expected to fill the batch in one more round.
    max_refill_factor: PositiveInt = 4
    # Train on groups the filter reward cannot judge (``unjudged``: e.g. general or safety
    # prompts scored by reward models, whose accuracy is None) instead of dropping them: their
    # signal comes from the step's other rewards. For mixed all-domain steps.
    keep_unjudged: bool = False


def trainer_mixin():
    """A mixin class for TRL 1.16's ``GRPOTrainer`` (put it first in the bases) that logs the
    zero-signal share of every training batch and, with ``DynamicSampling.enabled``, rebuilds
    each batch from informative groups. Set on the trainer instance: ``_r1_filter`` (index of the
    filter reward in ``reward_funcs``; None: nothing done) and ``_r1_dynamic`` (the config).

    Logged per optimizer step (``self._metrics["train"]``; summed over processes):
    ``dynamic_sampling/groups_sampled``, ``groups_kept``, ``groups_<label>`` for each of
    :data:`LABELS`, ``rounds``, ``filled_zero_signal``; ``zero_signal/frac_groups_sampled`` (share
    of the first round's groups without signal: what plain GRPO would train on) and
    ``zero_signal/frac_groups_trained`` (after dynamic sampling). Without dynamic sampling:
    ``zero_signal/frac_groups``.
    """
    import math

    import torch

    class DynamicSamplingMixin:
        _r1_filter: int | None = None
        _r1_dynamic: DynamicSampling | None = None
        _r1_last_rewards = None
        accelerator: Any  # the GRPOTrainer's, which this class is mixed into

        def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
            rewards = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
            self._r1_last_rewards = rewards  # (completions of every process, reward functions)
            return rewards

        def _r1_local_values(self, n: int) -> list[float]:
            start = self.accelerator.process_index * n
            return self._r1_last_rewards[start : start + n, self._r1_filter].tolist()

        def _r1_global_share(self, part: float, whole: float) -> float:
            t = torch.tensor([float(part), float(whole)], device=self.accelerator.device)
            part, whole = self.accelerator.gather(t).view(-1, 2).sum(dim=0).tolist()
            return part / whole if whole else math.nan

        def _generate_and_score_completions(self, inputs):
            if not self.model.training or self._r1_filter is None:
                return super()._generate_and_score_completions(inputs)
            if self._r1_dynamic is None or not self._r1_dynamic.enabled:
                out = super()._generate_and_score_completions(inputs)
                labels = group_labels(self._r1_local_values(len(inputs)), self.num_generations)
                zero = sum(label != "informative" for label in labels)
                self._metrics["train"]["zero_signal/frac_groups"].append(self._r1_global_share(zero, len(labels)))
                return out
            return self._r1_dynamic_batch(inputs)

        def _r1_dynamic_batch(self, inputs):
            cfg, G = self._r1_dynamic, self.num_generations
            trained_labels = {"informative", "unjudged"} if cfg.keep_unjudged else {"informative"}
            need = len(inputs) // G
            rank, device = self.accelerator.process_index, self.accelerator.device
            pad = self.processing_class.pad_token_id
            stats = RoundStats()
            kept, spare, have, spare_groups = [], [], 0, 0
            batch_inputs, round_ = inputs, 0
            while True:
                round_ += 1
                out = super()._generate_and_score_completions(batch_inputs)
                labels = group_labels(self._r1_local_values(len(batch_inputs)), G)
                stats.add_labels(labels)
                if round_ == 1:  # the share plain GRPO would have trained on
                    zero = sum(label != "informative" for label in labels)
                    self._metrics["train"]["zero_signal/frac_groups_sampled"].append(
                        self._r1_global_share(zero, len(labels))
                    )
                good = [g for g, label in enumerate(labels) if label in trained_labels][: need - have]
                if good:
                    kept.append(take_rows(out, [g * G + j for g in good for j in range(G)]))
                    have += len(good)
                bad = [g for g, label in enumerate(labels) if label not in trained_labels][: need - spare_groups]
                if bad:
                    spare.append(take_rows(out, [g * G + j for g in bad for j in range(G)]))
                    spare_groups += len(bad)
                # Every process takes part in every round (rewards are gathered across them).
                missing = int(self.accelerator.gather(torch.tensor([need - have], device=device)).max().item())
                if missing == 0 or round_ >= cfg.max_rounds:
                    break
                usable = stats["groups_informative"] + (stats["groups_unjudged"] if cfg.keep_unjudged else 0)
                rate = max(self._r1_global_share(usable, stats["groups_sampled"]), 0.2)
                n = min(math.ceil(missing / rate), cfg.max_refill_factor * need)
                idx = refill_indices(self.args.seed, self.state.global_step, round_, rank, n, len(self.train_dataset))
                batch_inputs = [dict(self.train_dataset[i]) for i in idx for _ in range(G)]
            filled = need - have
            parts = list(kept)
            if filled:  # the cap was reached: rows that keep the batch's shape and move nothing
                filler = take_rows(concat(spare, pad), range(filled * G))
                filler["advantages"] = torch.zeros_like(filler["advantages"])
                # masked out of the loss like TRL's mask_truncated_completions
                filler["completion_mask"] = torch.zeros_like(filler["completion_mask"])
                parts.append(filler)
            batch = concat(parts, pad)
            # The loss normaliser of dapo (tokens in the generation batch): the trained rows' tokens.
            loss_mask = batch["completion_mask"] * batch.get("tool_mask", 1)
            batch["num_items_in_batch"] = self.accelerator.gather(loss_mask.sum().reshape(1)).sum()
            stats["rounds"], stats["groups_kept"], stats["filled_zero_signal"] = round_, have, filled
            for key in ("groups_sampled", "groups_kept", *(f"groups_{x}" for x in LABELS), "filled_zero_signal"):
                total = self.accelerator.gather(torch.tensor([float(stats[key])], device=device)).sum().item()
                self._metrics["train"][f"dynamic_sampling/{key}"].append(total)
            self._metrics["train"]["dynamic_sampling/rounds"].append(float(round_))
            self._metrics["train"]["zero_signal/frac_groups_trained"].append(self._r1_global_share(filled, need))
            return batch

    return DynamicSamplingMixin

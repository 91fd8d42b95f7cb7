"""grpo: reinforcement learning with rule rewards (GRPO), rollouts by vLLM colocated in the trainer.

The R1 recipe runs this stage twice: **reasoning-oriented RL** (math and logic prompts, accuracy
+ format rewards) and **all-scenario RL** (adds code prompts judged by their tests). It is TRL's
``GRPOTrainer``: per prompt, ``num_generations`` (G) completions are sampled; each completion's
reward is the weighted sum of the reward functions; its advantage is (reward - group mean),
divided by the group std when ``scale_rewards = "group"``; every token of a completion gets its
completion's advantage in a clipped surrogate loss (ratio to the policy that sampled it), plus
``beta`` x KL(policy || reference) (k3 estimator) when ``beta > 0``.

Every option whose TRL default changed between releases is set explicitly here (the defaults
below are ours, not TRL's):
- ``beta = 0.0``: no KL term, hence no reference model in memory and no reference forward pass
  (about a third of the training compute on a CPU). DAPO, Dr. GRPO and most R1 reproductions
  train without it; R1 itself used 0.001. Set it > 0 for long runs that drift.
- ``loss_type = "dapo"``: token-level aggregation over the batch, no length bias (``grpo``
  averages per sequence first, which favours short correct and long wrong answers).
- ``epsilon = 0.2``, ``epsilon_high = 0.28``: DAPO's clip-higher, room for rare tokens to grow.
- ``mask_truncated_completions = False``: with short completion budgets most early completions
  are cut off; masking them would hide exactly the negative signal that teaches the model to
  finish (DAPO masks them, with 16k-token budgets).

Rollouts: vLLM colocated in the trainer process (``use_vllm: true``, ``vllm_mode: colocate``);
on vLLM's CPU backend the policy -> engine weight sync goes through ``stages/common/vllm_sync.py``
(TRL's own sync fails there). ``vllm_mode: server`` is for GPU machines (start a vLLM server
on other GPUs first: ``scripts/slurm/r1_step.sbatch``, ``pipeline.slurm``); without CUDA it is
refused at start-up (:func:`preflight`: TRL's weight sync to the server is NCCL-only). ``use_vllm: false`` samples
with transformers ``generate`` (slower, no extra process or memory).

Departures from TRL: TRL 1.16 has no prompt truncation; prompts longer than
``max_prompt_length`` tokens (chat template included) are dropped and counted. TRL 1.16 has no
dynamic sampling (drop all-equal groups and refill): ``dynamic_sampling`` adds it
(``stages/common/dynamic_sampling.py``), filtering on a verifiable reward (``accuracy``), never
on the weighted total. TRL's ``frac_reward_zero_std`` is computed on the total reward, whose
format and language terms differ inside a group even when its accuracy does not: it hides the
groups without an accuracy signal. ``zero_signal/frac_groups*`` counts those (always logged).
``logprob_chunk_tokens`` (off by default) replaces TRL's fused LM head, which on a CPU projects
every position of every sequence (prompt and padding included), by one that projects only the
real completion tokens, that many at a time, each chunk recomputed in the backward
(``stages/common/logprobs.py``; memory measured in ``docs/benchmarks.md``); with it,
``padding_free`` packs each micro-batch's real tokens into rows without padding (TRL 1.16's
GRPOTrainer has no padding-free mode; its SFTTrainer has one).
A ``prompt_pool`` (a ``generate`` step with ``output: prompts``) replaces ``prompts`` with the
starting policy's prompts inside a pass-rate band, optionally easy to hard
(``stages/common/rl_prompts.py``).

Reading the reward curve: a step's training reward depends on which prompts it drew as much
as on the policy (on the demo's tasks one step's mean swings by 0.4 with the task mix).
``prompt_order: stratified`` gives every step one prompt per source in turn, and
``eval_prompts`` (the test split of other sources) measures the reward of the same held-out
prompts before the first step and every ``eval_steps`` steps (``eval_reward`` lines in
``metrics.jsonl``; ``eval_reward_start`` / ``eval_reward_end`` in the manifest): that curve,
not the training reward, says whether RL is improving the policy.

Inputs: ``model`` (step name, alias, folder or hub id). Prompts come from ``prompts`` (data
sources, train split; see ``docs/data.md``).
Outputs: ``model/`` (policy safetensors, tokenizer with the model's chat template, generation
config stopping at the end-of-turn token as well as the EOS: ``pipeline.templates``). Its dtype:
float32 (the master weights) in one process, under DDP and FSDP; under DeepSpeed ZeRO-3
(``configs/accelerate/zero3.yaml``, ``zero3_save_16bit_model: true``) the 16-bit copy DeepSpeed
gathers at save time, i.e. **bf16** with ``dtype`` resolving to bfloat16 (fp16 with float16); the
float32 master weights are then only in the optimizer state of ``checkpoints/``.
Also: ``checkpoints/`` (a rerun resumes from the last one); ``metrics.jsonl`` (one line per
logged step: reward and each reward function's mean/std, KL, entropy, completion lengths, clip
ratios, ``frac_reward_zero_std``, reward None/timeout counters, seconds per step and where they
went: ``timing_s/<phase>`` for data, weight_sync, generation, reward, old_logprobs,
ref_logprobs, advantages, forward, backward, optimizer, evaluation, save and other, summed in the
manifest's ``metrics.timing_s``; see ``pipeline.trainer`` and ``pipeline.timing``).

Launch: ``r1 grpo configs/grpo/smollm2-135m/reasoning.yaml``; on several processes
``accelerate launch --config_file configs/accelerate/ddp_cpu.yaml -m pipeline.cli grpo FILE``
(no device code here; each process samples and trains on its own prompts, with its own
colocated engine; see ``docs/distributed.md``).

Why one file: a stage kind is one module of `stages/` (`stages.kinds()` lists the modules). What
it shares is elsewhere (`pipeline/trainer.py`: options, resume, metrics, timings;
`stages/common/`: dynamic sampling, vLLM weight sync, prompt pools); what stays is its config
(every TRL GRPO option it sets, with its reason: ~140 lines), the run, the trainer class and the
report hook.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import math
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

from pydantic import Field, NonNegativeFloat, PositiveFloat, PositiveInt, model_validator

from data import PromptSource
from data.prompts import Template
from pipeline import distributed, precision, templates, timing
from pipeline import trainer as scaffold
from pipeline.config import ConfigError, StrictModel
from pipeline.precision import DtypeChoice
from pipeline.stage import TIMING_PANEL, TRAINER_PANELS, Panel, StageConfig, StageReport, StepContext, StepResult
from pipeline.trainer import SchedulerType, TrainerOptions
from stages.common.dynamic_sampling import DynamicSampling
from stages.common.rl_prompts import load_eval_rows, load_prompt_rows

log = logging.getLogger(__name__)

# Runs under `accelerate launch` with several processes (pipeline.distributed): every rank
# samples and trains on its share of each generation batch; rank 0 writes model/.
DISTRIBUTED = True


class RewardSpec(StrictModel):
    """One reward function of the total reward: ``weight * rewards.get(name, **params)``."""

    name: str  # a name of `r1 rewards list`, or a dotted path `package.module:attr`
    weight: float = 1.0
    params: dict[str, Any] = {}


class Config(TrainerOptions, StageConfig):
    """Config of the grpo stage. Batch arithmetic: one optimizer step uses
    ``per_device_train_batch_size * gradient_accumulation_steps * devices`` completions, that is
    that number / ``num_generations`` prompts, all sampled in one generation call."""

    kind: Literal["grpo"] = "grpo"
    input_fields: ClassVar[dict[str, str]] = {"model": "model", "prompt_pool": "dataset"}
    outputs: ClassVar[dict[str, str]] = {"model": "model"}
    training_prompts: ClassVar[tuple[str, ...]] = ("prompts",)  # eval_prompts are held out; a pool's are its step's
    headline: ClassVar[tuple[str, ...]] = (
        "prompts",
        "steps",
        "reward_start",
        "reward_end",
        "eval_reward_start",
        "eval_reward_end",
        "completion_length_start",
        "completion_length_end",
    )
    model: str  # model reference: the initial policy
    prompts: list[PromptSource] = []  # data sources; their train split is used (or prompt_pool)
    # Instead of `prompts`: a generate step with `output: prompts` (or its dataset folder), the
    # prompts with their pass rates under the starting policy (stages/common/rl_prompts.py).
    prompt_pool: str | None = None
    # Keep pool prompts with low < pass rate < high (exclusive: (0, 1) drops the never and the
    # always solved); null keeps all. Per data_source overrides in pass_rate_band_per_source.
    pass_rate_band: tuple[float, float] | None = (0.0, 1.0)
    pass_rate_band_per_source: dict[str, tuple[float, float]] = {}
    curriculum: Literal["none", "easy_to_hard"] = "none"  # pool prompts by pass rate, highest first
    # Drop groups whose verifiable reward is all-equal and sample more prompts (DAPO);
    # stages/common/dynamic_sampling.py
    dynamic_sampling: DynamicSampling = DynamicSampling()
    template: Template = "chat"  # chat (instruct models) or r1_zero (base models)
    # Order in which steps take prompts. shuffled: TRL's sampler shuffles all rows with `seed`.
    # stratified: rows round-robin over data sources (each shuffled with `seed`), taken in that
    # order, so a step with prompts_per_step >= sources sees every source once and the reward
    # curve is not dominated by which tasks a step happened to draw (data.mix.stratify).
    prompt_order: Literal["shuffled", "stratified"] = "shuffled"
    rewards: list[RewardSpec]  # summed with their weights into the reward of a completion
    # Held-out reward curve: the test split of these sources is sampled (eval_num_generations
    # completions per prompt, the training sampling settings) and scored with `rewards` before
    # the first step and every eval_steps steps. The training reward of a step depends on which
    # prompts it drew; the same prompts every time make the start-vs-end comparison meaningful.
    eval_prompts: list[PromptSource] = []
    eval_steps: PositiveInt = 4  # optimizer steps between two held-out reward measurements
    eval_num_generations: PositiveInt = 4  # completions per held-out prompt
    # objective
    beta: NonNegativeFloat = 0.0  # KL weight to the reference model (0: none loaded)
    loss_type: Literal["grpo", "dapo", "dr_grpo", "bnpo"] = "dapo"  # how token losses are averaged
    scale_rewards: Literal["group", "batch", "none"] = (
        "group"  # divide advantages by the std of the group / batch, or not (Dr. GRPO)
    )
    epsilon: PositiveFloat = 0.2  # lower clip of the ratio: 1 - epsilon
    epsilon_high: float = 0.28  # upper clip of the ratio: 1 + epsilon_high (clip-higher)
    num_iterations: PositiveInt = 1  # optimizer passes over each generation batch (mu in the GRPO paper)
    mask_truncated_completions: bool = False  # drop completions cut at max_completion_length from the loss
    # Log-probs of the policy (and reference) from the LM head in chunks of this many completion
    # tokens, each recomputed in the backward: only real completion tokens are projected and at
    # most chunk x vocabulary logits exist at a time (stages/common/logprobs.py). None: TRL's
    # fused head (every position of the sequence, prompt and padding included, in 4096-position
    # tiles). Text-only causal LMs without logit scaling/soft-capping; refused under FSDP/ZeRO-3.
    logprob_chunk_tokens: PositiveInt | None = None
    # With logprob_chunk_tokens: run the backbone on the micro-batch's real tokens packed into as
    # few rows as the longest holds (no padding; attention kept within each sequence by position
    # ids), instead of prompts left-padded and completions right-padded to the longest.
    padding_free: bool = False
    late_fields: ClassVar[dict[str, Any]] = {"logprob_chunk_tokens": None, "padding_free": False}
    # rollouts
    num_generations: int = 8  # G: completions per prompt (the group)
    temperature: float = 1.0  # > 0: the policy's logits are divided by it (TRL), and a group needs varied samples
    top_p: Annotated[float, Field(gt=0, le=1)] = 1.0  # nucleus sampling of the rollouts
    max_prompt_length: PositiveInt = 512  # tokens, chat template included; longer prompts are dropped
    max_completion_length: PositiveInt = 256  # tokens generated per completion
    # Trainer options (batch, schedule, precision, checkpoints) are pipeline.trainer.TrainerOptions,
    # documented there; RL defaults here.
    learning_rate: float = 1e-6
    lr_scheduler_type: SchedulerType = "constant_with_warmup"
    warmup_ratio: float = 0.05
    gradient_accumulation_steps: PositiveInt = 4
    max_steps: PositiveInt = 40
    logging_steps: PositiveInt = 1
    save_steps: PositiveInt = 10
    # Intra-op CPU threads for training and the colocated engine; None = torch's default (every
    # core). On a machine shared with other jobs, 1 is several times faster: OpenMP threads
    # spin-wait for each other whenever one of them is descheduled.
    torch_threads: PositiveInt | None = None
    # generation backend
    use_vllm: bool = True  # false: transformers generate
    vllm_mode: Literal["colocate", "server"] = "colocate"  # server: a vLLM server on other GPUs (docs/distributed.md)
    vllm_server_base_url: str | None = None  # server mode, e.g. http://localhost:8000
    vllm_gpu_memory_utilization: Annotated[float, Field(gt=0, le=1)] = (
        0.3  # colocate on GPUs: share of GPU memory for vLLM
    )
    vllm_kv_cache_gib: PositiveInt = 2  # colocate on CPUs: KV cache size (GiB)
    vllm_dtype: DtypeChoice = "auto"  # colocated engine's weights; auto: as for `dtype`
    vllm_enforce_eager: bool | None = None  # skip graph compilation; None = on CPUs only (~1 min start-up there)
    # Reweight tokens by p_policy / p_vLLM (the engine samples in bf16, the trainer scores in
    # float32 + autocast). Costs one extra forward pass over every rollout per step (~20% of a
    # CPU step); off = treat the rollouts as exactly on-policy.
    vllm_importance_sampling_correction: bool = True

    @model_validator(mode="after")
    def _check(self):
        # Each is a mistake that would otherwise surface minutes into a run.
        if not self.rewards:
            raise ValueError("rewards: give at least one reward function")
        if bool(self.prompts) == bool(self.prompt_pool):
            raise ValueError(
                "keys prompts and prompt_pool: give either prompts (data sources) or prompt_pool "
                "(a generate step with output: prompts), not both and not neither"
            )
        bands = [("pass_rate_band", self.pass_rate_band)] if self.pass_rate_band else []
        bands += [(f"pass_rate_band_per_source.{k}", v) for k, v in self.pass_rate_band_per_source.items()]
        for key, (lo, hi) in bands:
            if not 0.0 <= lo < hi <= 1.0:
                raise ValueError(f"{key}: need 0 <= low < high <= 1, got [{lo}, {hi}]")
        if self.curriculum != "none" and not self.prompt_pool:
            raise ValueError("curriculum orders prompts by pass rate: it needs prompt_pool")
        from rewards import REGISTRY  # light: the registry, no scoring workers
        from rewards.registry import log_name

        names = [r.name for r in self.rewards]
        logged = [log_name(r.name, r.params) for r in self.rewards]  # e.g. reward_model_<label>
        if len(set(logged)) != len(logged):
            raise ValueError(
                f"rewards: duplicate names {logged}; TRL logs them by name (two reward_model "
                "entries need distinct `label` params)"
            )
        unknown = [n for n in names if n not in REGISTRY and ":" not in n]
        if unknown:
            raise ValueError(f"rewards: unknown {unknown}; valid names: {', '.join(sorted(REGISTRY))}")
        from rewards.registry import check_params

        for i, spec in enumerate(self.rewards):
            if spec.name in REGISTRY:  # a dotted module:attr is imported only when the step runs
                try:
                    check_params(spec.name, REGISTRY[spec.name], spec.params)
                except TypeError as exc:
                    raise ValueError(f"rewards.{i}.params: {exc}") from None
        if self.num_generations < 2:
            raise ValueError("num_generations must be >= 2: a group of one has no advantage")
        if not self.temperature > 0:
            raise ValueError(
                f"temperature must be > 0, got {self.temperature}: the policy's log-probabilities are "
                "those of logits / temperature (TRL), and greedy rollouts would make the completions of "
                "a group equal, so every advantage would be 0"
            )
        batch = self.per_device_train_batch_size * self.gradient_accumulation_steps
        if batch % self.num_generations:
            raise ValueError(
                f"per_device_train_batch_size * gradient_accumulation_steps ({batch}) must be a "
                f"multiple of num_generations ({self.num_generations}): whole groups per step"
            )
        if self.padding_free and self.logprob_chunk_tokens is None:
            raise ValueError(
                "padding_free needs logprob_chunk_tokens (the packed forward feeds the chunked log-prob "
                "head); set logprob_chunk_tokens, e.g. 512"
            )
        if self.epsilon_high < self.epsilon:
            raise ValueError("epsilon_high must be >= epsilon")
        if self.dynamic_sampling.enabled and self.dynamic_sampling.reward not in names:
            raise ValueError(
                f"dynamic_sampling.reward {self.dynamic_sampling.reward!r} is not one of the step's "
                f"rewards: {', '.join(names)}"
            )
        if self.vllm_mode == "server" and not self.use_vllm:
            raise ValueError("vllm_mode: server needs use_vllm: true")
        empty = [i for i, source in enumerate(self.eval_prompts) if getattr(source, "n_test", None) == 0]
        if empty:  # the held-out reward reads the test split; caught here, not at the step's start
            raise ValueError(
                f"eval_prompts.{empty[0]}.n_test: 0 test prompts; the held-out reward uses each "
                f"source's test split (entries {empty} have n_test: 0)"
            )
        return self

    def inputs(self) -> dict[str, str]:
        """The model and, as ``rewards.<i>.<param>``, the models rewards read (``reward_model``'s
        ``model``): listed so the runner orders, hashes and resolves them like any input."""
        from rewards.registry import model_references

        out = super().inputs()
        for i, spec in enumerate(self.rewards):
            out.update({f"rewards.{i}.{p}": ref for p, ref in model_references(spec.name, spec.params).items()})
        return out

    def input_type(self, input_name: str) -> str:
        return "model" if input_name.startswith("rewards.") else super().input_type(input_name)

    @property
    def prompts_per_step(self) -> int:
        """Prompts per optimizer step on one device."""
        return self.per_device_train_batch_size * self.gradient_accumulation_steps // self.num_generations


def preflight(config: Config) -> None:
    """Refuse what this machine cannot run, before the step's folder or process exists.

    ``vllm_mode: server`` needs CUDA: TRL pushes the policy's weights to the ``trl vllm-serve``
    process after every optimizer step through vLLM's NCCL weight-transfer engine
    (``trl.generation.vllm_client.VLLMClient.init_communicator`` raises NotImplementedError for
    a non-CUDA device), and NCCL exists only on NVIDIA GPUs. Not a config check: the same
    file is valid, and runs, on a GPU machine. (The runner calls this; ``run`` does too, for
    callers that skip the runner.)

    Raises:
        ConfigError: server mode on a machine without CUDA (names the alternatives).
    """
    if not (config.use_vllm and config.vllm_mode == "server"):
        return
    import torch

    if not torch.cuda.is_available():
        raise ConfigError(
            "vllm_mode: server needs CUDA: TRL syncs the policy weights into the `trl vllm-serve` process over "
            "NCCL, which does not exist on a machine without NVIDIA GPUs (torch.cuda.is_available() is False "
            "here). Use `vllm_mode: colocate` (vLLM inside each training process; works on CPUs, also under "
            "accelerate launch) or `use_vllm: false` (transformers generate)."
        )


def run(config: Config, ctx: StepContext) -> StepResult:
    """Train ``config.model`` with GRPO on ``config.prompts``; write ``model/`` into ``ctx.work_dir``.

    Raises:
        ConfigError: see :func:`preflight`.
    """
    import torch
    from transformers import AutoTokenizer

    from rewards import registry
    from stages.common import vllm_sync as _vllm_sync
    from stages.common.scoring import with_rendered_prompts

    preflight(config)
    reserve_rendezvous_port()
    if config.torch_threads is not None:
        torch.set_num_threads(config.torch_threads)  # before vLLM starts: it then pins the thread count
    model_path = ctx.resolve_model(config.model)
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    if config.template == "chat":  # a template with no end-of-turn token: rollouts would never end their turn
        templates.require_end_of_turn(tokenizer, config.model)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    pool = ctx.resolve_dataset(config.prompt_pool) if config.prompt_pool else None
    with ctx.progress.phase("loading prompts"):
        dataset, prompt_counts = load_prompt_rows(config, tokenizer, pool)
        eval_dataset, eval_repeated = load_eval_rows(config, tokenizer, dataset)
    chosen = {"training": scaffold.training_precision(config)}

    def reward_dtype(choice: str) -> str:  # a reward model's weights (rewards.reward_model)
        chosen["reward_models"] = precision.resolve(choice, what="reward models")
        precision.announce(chosen["reward_models"], "reward models")
        return chosen["reward_models"].dtype

    # Registered rewards read the prompt as the policy saw it (a template's <think> prefill
    # included); a reward's model references (a reward model's step name) become folders first.
    reward_funcs = [
        with_rendered_prompts(
            registry.get(r.name, **registry.with_resolved_models(r.name, r.params, ctx.resolve_model, reward_dtype)),
            tokenizer,
        )
        for r in config.rewards
    ]
    timer = timing.PhaseTimer()
    callback = scaffold.metrics_callback(ctx, timer, extra=lambda: reward_counters(reward_funcs))

    engine = config.use_vllm and config.vllm_mode == "colocate"
    on_cpu = engine and _vllm_sync.on_cpu_platform()
    if engine:
        chosen["rollouts"] = precision.resolve(config.vllm_dtype, what="rollouts")
        precision.announce(chosen["rollouts"], "rollouts")
    options = (
        _vllm_sync.engine_options(
            cpu_kv_cache_gib=config.vllm_kv_cache_gib if on_cpu else None,
            dtype=chosen["rollouts"].dtype if engine else None,
            enforce_eager=on_cpu if config.vllm_enforce_eager is None else config.vllm_enforce_eager,
        )
        if engine
        else contextlib.nullcontext()
    )
    with (
        options,
        ctx.progress.phase("building the trainer (policy, vLLM engine)" if engine else "building the trainer"),
    ):
        trainer = _trainer_class()(
            model=model_path,
            reward_funcs=reward_funcs,
            args=grpo_arguments(
                config,
                ctx.checkpoints,
                len(eval_dataset) if eval_dataset is not None else 0,
                dtype=chosen["training"].dtype,
                ctx=ctx,
            ),
            train_dataset=dataset,
            eval_dataset=eval_dataset,
            processing_class=tokenizer,
            callbacks=[callback],
        )
    names = [r.name for r in config.rewards]
    filter_reward = config.dynamic_sampling.reward
    trainer._r1_filter = names.index(filter_reward) if filter_reward in names else None
    trainer._r1_dynamic = config.dynamic_sampling
    templates.use_end_of_turn_stops(trainer, tokenizer)  # rollouts end at <|im_end|> even if EOS is another token

    resume = scaffold.resume_point(ctx.checkpoints)
    try:
        if engine:  # every engine step is a heartbeat for the stall watchdog (pipeline.progress)
            from stages.common.sampling import beat_on_engine_steps

            beat_on_engine_steps(getattr(trainer.vllm_generation, "llm", None), ctx.progress.beat)
        if on_cpu:  # TRL's own policy -> engine sync fails on vLLM's CPU backend
            _vllm_sync.install_cpu_weight_sync(trainer.vllm_generation)
        # inside try: the engine is shut down
        install_chunked_logprobs(trainer, config.logprob_chunk_tokens, padding_free=config.padding_free)
        scaffold.install_phase_timers(trainer, timer)
        install_rl_phase_timers(trainer, timer)
        with ctx.progress.phase("training"):
            outcome = scaffold.train(trainer, resume, timer)
        with ctx.progress.phase("saving the model"):
            scaffold.save_final(trainer, ctx.work_dir, tokenizer)  # the model's own chat template, for serving
        steps = trainer.state.global_step
        processes = trainer.accelerator.num_processes
    finally:
        if engine:
            _vllm_sync.shutdown(trainer.vllm_generation)
        del trainer
        gc.collect()

    logged = logged_steps(ctx.work_dir / "metrics.jsonl") or [e for e in callback.history if "reward" in e]
    evals = logged_steps(ctx.work_dir / "metrics.jsonl", key="eval_reward")
    prompts_per_step = config.prompts_per_step * processes  # each process samples its own prompts
    counts = {
        "prompts": len(dataset),
        **prompt_counts,
        "steps": steps,
        "resumed_from_step": resume.step,
        "processes": processes,
        "completions": (steps - resume.step) * prompts_per_step * config.num_generations,
    }
    wall = outcome.wall_s
    metrics = {
        "reward_start": _mean([e["reward"] for e in logged[:3]]),
        "reward_end": _mean([e["reward"] for e in logged[-3:]]),
        "reward_slope_per_step": _slope([e["step"] for e in logged], [e["reward"] for e in logged]),
        "completion_length_start": _mean([e["completions/mean_length"] for e in logged[:3]]),
        "completion_length_end": _mean([e["completions/mean_length"] for e in logged[-3:]]),
        "train_wall_s": round(wall, 1),
        **(
            {
                "eval_reward_start": evals[0]["eval_reward"],
                "eval_reward_end": evals[-1]["eval_reward"],
                "eval_reward_first_step": evals[0]["step"],
                "eval_reward_last_step": evals[-1]["step"],
            }
            if evals
            else {}
        ),
        "seconds_per_step": round(wall / (steps - resume.step), 2) if steps > resume.step else math.nan,
        "timing_s": outcome.timing_s,
    }
    summary = (
        f"GRPO of {config.model}: {steps} steps x {prompts_per_step} prompts x G={config.num_generations}, "
        f"reward {metrics['reward_start']:.3f} -> {metrics['reward_end']:.3f}"
    )
    if evals:
        counts["eval_prompts"] = len(eval_dataset)
        counts["eval_prompts_dropped_seen_in_training"] = eval_repeated
        summary += (
            f"; held-out reward ({counts['eval_prompts']} prompts x {config.eval_num_generations}) "
            f"{evals[0]['eval_reward']:.3f} at step {evals[0]['step']} -> "
            f"{evals[-1]['eval_reward']:.3f} at step {evals[-1]['step']}"
        )
    return StepResult(
        outputs={"model": "model"},
        counts=counts,
        metrics=metrics,
        summary=summary,
        precision={role: p.as_dict() for role, p in chosen.items()},
    )


# ---------------------------------------------------------------------------- pieces


def reserve_rendezvous_port() -> None:
    """Give a single-process run its own ``MASTER_PORT`` for the colocated engine's process group.

    vLLM builds a one-process torch.distributed group over TCP on ``MASTER_PORT``. TRL 1.16 fills
    an unset port with the first free one of a fixed list (29500, 23456, ...), so two runs that
    start within the same seconds on one machine both pick 29500 and the second dies with
    EADDRINUSE. An OS-assigned ephemeral port makes such a collision practically impossible.
    A launcher's port (``accelerate launch``, ``torchrun``, or one the user set) is kept.
    """
    import os
    import socket

    if distributed.launched() or os.environ.get("MASTER_PORT", "").strip().lower() not in {"", "0", "auto"}:
        return
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        os.environ["MASTER_PORT"] = str(s.getsockname()[1])
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")


def _trainer_class():
    """TRL's ``GRPOTrainer`` whose evaluation samples and scores the eval prompts, nothing else.

    TRL's ``prediction_step`` also computes the GRPO loss of the eval completions: a forward
    pass over every one of them (as long as sampling them, on a CPU) for a number that means
    nothing (the advantages of fresh samples average zero). The rewards, which are the point,
    are logged by the sampling itself (``eval_reward``, ``eval_rewards/<name>/mean``, ...).
    (With ``vllm_importance_sampling_correction`` on, TRL's sampling itself also scores the
    samples' log-probs under the policy: one forward pass, as in training.)
    """
    from trl import GRPOTrainer

    from stages.common.dynamic_sampling import trainer_mixin

    class Trainer(trainer_mixin(), chunked_logps_mixin(), GRPOTrainer):
        def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
            self._prepare_inputs(inputs)  # samples, scores, records the eval metrics
            return None, None, None

    return Trainer


def chunked_logps_mixin() -> type:
    """A mixin for TRL's ``GRPOTrainer`` whose ``_get_per_token_logps_and_entropies`` uses the
    chunked LM head once :func:`install_chunked_logprobs` has set it up (TRL's own until then).
    Used by the stage's trainer and by ``bench/grpo_step.py``."""

    class ChunkedLogps:
        _r1_logprob_chunk_tokens = None  # chunk size (int) when install_chunked_logprobs set one

        def _get_per_token_logps_and_entropies(
            self,
            model,
            input_ids,
            attention_mask,
            logits_to_keep,
            batch_size=None,
            compute_entropy=False,
            compute_aux_loss=False,
            **multimodal,
        ):
            """TRL's, or with ``logprob_chunk_tokens`` the chunked head's: (B, logits_to_keep) float32
            log-probs of the completion tokens, entropies (same shape, or None) and no aux loss; 0
            where the attention mask is 0; rows in groups of ``batch_size`` as TRL does."""
            if self._r1_logprob_chunk_tokens is None:
                return super()._get_per_token_logps_and_entropies(
                    model,
                    input_ids,
                    attention_mask,
                    logits_to_keep,
                    batch_size=batch_size,
                    compute_entropy=compute_entropy,
                    compute_aux_loss=compute_aux_loss,
                    **multimodal,
                )
            images = sorted(k for k, v in multimodal.items() if v is not None)
            if compute_aux_loss or images:
                raise ConfigError(
                    f"logprob_chunk_tokens: the chunked log-prob head takes text only, without an MoE "
                    f"load-balancing loss (got {images or 'compute_aux_loss'}); set logprob_chunk_tokens: null"
                )
            import torch

            batch_size = batch_size or input_ids.size(0)
            logps, entropies = [], []
            for start in range(0, input_ids.size(0), batch_size):
                with self.accelerator.autocast():  # as TRL: the backbone and the head under autocast
                    logp, entropy = model(
                        input_ids=input_ids[start : start + batch_size],
                        attention_mask=attention_mask[start : start + batch_size],
                        completion_logps=(logits_to_keep, compute_entropy),
                    )
                logps.append(logp)
                entropies.append(entropy)
            return torch.cat(logps), torch.cat(entropies) if compute_entropy else None, None

    return ChunkedLogps


def install_chunked_logprobs(trainer: Any, chunk_tokens: int | None, padding_free: bool = False) -> None:
    """Compute the policy's (and the reference model's) log-probs with the chunked LM head of
    ``stages/common/logprobs.py``, ``chunk_tokens`` completion tokens at a time; None: leave TRL's
    fused head. ``padding_free``: the backbone runs on packed rows (``logprobs.pack_rows``).
    Call after building the trainer of :func:`_trainer_class`, before training.

    Raises:
        ConfigError: FSDP or DeepSpeed ZeRO-3 (the head's weight is sharded across ranks; TRL's
            fused head gathers it), or a model the chunked head cannot score
            (``stages.common.logprobs.check_chunkable``); each names ``logprob_chunk_tokens``.
    """
    if chunk_tokens is None:
        return
    from stages.common.logprobs import add_chunked_lm_head

    if distributed.sharded(trainer.accelerator):
        raise ConfigError(
            "logprob_chunk_tokens: not available with FSDP or DeepSpeed ZeRO-3 (each rank holds a shard of "
            "the LM head); set logprob_chunk_tokens: null (TRL's fused head gathers it)"
        )
    for model in (trainer.model, trainer.ref_model):
        if model is not None:
            add_chunked_lm_head(
                trainer.accelerator.unwrap_model(model),
                chunk_tokens,
                temperature=trainer.temperature,
                head_fp32=trainer.args.cast_lm_head_to_fp32,
                padding_free=padding_free,
            )
    trainer._r1_logprob_chunk_tokens = chunk_tokens


def grpo_arguments(
    config: Config, output_dir: Path, eval_prompts: int = 0, dtype: str | None = None, ctx: StepContext | None = None
):
    """TRL ``GRPOConfig`` from our config; every option that changes results is set here (the ones
    every trainer stage shares by ``pipeline.trainer.trainer_arguments``). ``eval_prompts``: the
    number of held-out prompts (0: no held-out reward curve). ``dtype``: the resolved autocast
    dtype (default: ``config.dtype`` resolved on this machine). ``ctx``: the step, for the
    trackers of ``report_to`` (``pipeline.trainer.tracking_arguments``)."""
    from trl import GRPOConfig

    return GRPOConfig(
        **scaffold.trainer_arguments(config, output_dir, dtype, ctx),
        # policy and data
        model_init_kwargs={"dtype": "float32"},  # float32 master weights; bf16 is autocast
        disable_dropout=True,  # the sampled and the trained log-probs must come from one function
        remove_unused_columns=False,  # reward functions read answer, verification, ...
        # stratified or a curriculum: load_prompt_rows ordered them
        shuffle_dataset=config.prompt_order == "shuffled" and config.curriculum == "none",
        # objective
        beta=config.beta,
        loss_type=config.loss_type,
        scale_rewards=config.scale_rewards,
        epsilon=config.epsilon,
        epsilon_high=config.epsilon_high,
        delta=None,
        num_iterations=config.num_iterations,
        mask_truncated_completions=config.mask_truncated_completions,
        reward_weights=[r.weight for r in config.rewards],
        multi_objective_aggregation="sum_then_normalize",
        importance_sampling_level="token",
        top_entropy_quantile=1.0,
        entropy_coef=0.0,
        # rollouts
        num_generations=config.num_generations,
        max_completion_length=config.max_completion_length,
        temperature=config.temperature,
        top_p=config.top_p,
        top_k=0,
        min_p=None,
        repetition_penalty=1.0,
        generation_batch_size=None,  # = one optimizer step's completions, sampled in one call
        steps_per_generation=None,
        use_vllm=config.use_vllm,
        vllm_mode=config.vllm_mode,
        vllm_server_base_url=config.vllm_server_base_url,
        vllm_gpu_memory_utilization=config.vllm_gpu_memory_utilization,
        vllm_max_model_length=config.max_prompt_length + config.max_completion_length,
        vllm_tensor_parallel_size=1,
        vllm_enable_sleep_mode=False,
        vllm_model_impl="vllm",
        vllm_importance_sampling_correction=config.vllm_importance_sampling_correction,
        vllm_importance_sampling_mode="sequence_mask",
        vllm_importance_sampling_clip_max=3.0,
        # optimizer
        optim="adamw_torch",
        # logging and held-out evaluation
        log_completions=False,
        eval_strategy="steps" if eval_prompts else "no",
        eval_steps=config.eval_steps,
        eval_on_start=bool(eval_prompts),  # the curve's first point: the policy before any update
        num_generations_eval=config.eval_num_generations,
        # One batch per evaluation up to 32 prompts: one generation call samples them all.
        per_device_eval_batch_size=config.eval_num_generations * max(1, min(eval_prompts, 32)),
    )


def install_rl_phase_timers(trainer: Any, timer: Any) -> None:
    """Time GRPO's own phases on top of ``pipeline.trainer.install_phase_timers`` (TRL 1.16
    ``GRPOTrainer`` methods): ``weight_sync`` (``vllm_generation.sync_weights``, counted as
    itself even inside a held-out evaluation), ``generation`` (``_generate``), ``reward``
    (``_calculate_rewards``), ``old_logprobs`` / ``ref_logprobs`` (``_get_per_token_logps_and_entropies``
    without gradients, of the policy / of the reference model; with gradients it is the loss's
    ``forward``) and ``advantages`` (the rest of ``_generate_and_score_completions``).

    Raises:
        AttributeError: a method is missing (another TRL release; see ``pipeline.timing.time_calls``).
    """
    import torch

    if getattr(trainer, "vllm_generation", None) is not None:
        timing.time_calls(trainer.vllm_generation, "sync_weights", timer, "weight_sync", escape=True)
    timing.time_calls(trainer, "_generate", timer, "generation")
    timing.time_calls(trainer, "_calculate_rewards", timer, "reward")
    reference = getattr(trainer, "ref_model", None)

    def logprobs_phase(model, *args, **kwargs) -> str:
        if torch.is_grad_enabled():
            return "forward"
        return "ref_logprobs" if reference is not None and model is reference else "old_logprobs"

    timing.time_calls(
        trainer, "_get_per_token_logps_and_entropies", timer, logprobs_phase, phases=("old_logprobs", "ref_logprobs")
    )
    timing.time_calls(trainer, "_generate_and_score_completions", timer, "advantages")


def reward_counters(reward_funcs: list) -> dict[str, Any]:
    """Each reward's cumulative counters (``reward_stats/<name>/none_count``, ``timeout_count``,
    ...) for the rewards that keep ``fn.stats``; added to every metrics line."""
    out: dict[str, Any] = {}
    for fn in reward_funcs:
        stats = getattr(fn, "stats", None)
        if stats is not None and hasattr(stats, "as_dict"):
            stats = stats.as_dict()
        if isinstance(stats, dict):
            name = getattr(fn, "__name__", type(fn).__name__)
            out.update({f"reward_stats/{name}/{k}": v for k, v in stats.items()})
    return out


def logged_steps(path: Path, key: str = "reward") -> list[dict]:
    """The lines of ``metrics.jsonl`` that hold ``key`` (``reward``: one per optimizer step;
    ``eval_reward``: the held-out measurements), in step order.

    A resumed run appends to the file of the interrupted one, and may log again the steps
    after its last checkpoint: the last line of each step wins (``pipeline.store.logged``).
    This (not the trainer's in-memory history, which starts at the resume point) gives the
    whole run's reward at its start and end.
    """
    from pipeline import store

    return [line for line in store.logged(store.read_metrics(path), key) if "step" in line]


def _mean(values: list[float | None]) -> float:
    judged = [v for v in values if v is not None and not math.isnan(v)]
    return sum(judged) / len(judged) if judged else math.nan


def _slope(steps: list[int], rewards: list[float | None]) -> float:
    """Least-squares slope of the reward per optimizer step (reward units per step); NaN for
    fewer than two logged steps. Less sensitive to one lucky step than start-vs-end means."""
    import statistics

    points = [(s, r) for s, r in zip(steps, rewards) if r is not None and not math.isnan(r)]
    if len({s for s, _ in points}) < 2:
        return math.nan
    return statistics.linear_regression([s for s, _ in points], [r for _, r in points]).slope


# ---------------------------------------------------------------------------- report hook


def _glance(step) -> str | None:
    """Training reward, held-out reward and mean length, first vs last: the mean of the first
    and of the last 3 logged steps, as the manifest and the summary give them (one step alone
    is noise); the held-out reward: its first and last measurement (same prompts each time)."""
    from pipeline import store

    log, parts = step.log(), []
    for key, label, digits, span in (
        ("reward", "reward", 3, 3),
        ("eval_reward", "held-out reward", 3, 1),
        ("completions/mean_length", "mean length (tokens)", 0, 3),
    ):
        _, ys = store.series(log, key)
        if ys:
            first, last = sum(ys[:span]) / len(ys[:span]), sum(ys[-span:]) / len(ys[-span:])
            what = " (first -> last 3 steps)" if span > 1 and len(ys) > 1 else ""
            parts.append(f"{label}{what} {first:.{digits}f} -> {last:.{digits}f}")
    if not parts:
        return None
    state = "" if step.done else f", {step.status}"
    return f"RL `{step.name}` ({len(store.series(log, 'reward')[0])} logged steps{state}): {', '.join(parts)}."


def _report_section(doc, steps: list) -> None:
    """Mean response length over all RL steps, consecutive RL stages end to end."""
    from matplotlib.figure import Figure

    from pipeline import store

    doc.h(2, "Mean response length over RL steps")
    started = [s for s in steps if s.status != "not run"]
    series = [(s, store.series(s.log(), "completions/mean_length")) for s in started]
    series = [(s, xy) for s, xy in series if xy[0]]
    if not series:
        doc.missing("no RL (grpo) step logged `completions/mean_length`" if started else "no RL (grpo) step")
        return
    fig = Figure(figsize=(8, 3), layout="constrained")
    ax = fig.subplots()
    offset = 0.0
    for s, (xs, ys) in series:
        ax.plot([x + offset for x in xs], ys, marker="." if len(xs) < 40 else None, label=s.name)
        offset += max(xs)
        ax.axvline(offset, color="#bbb", lw=0.8)
    ax.set_xlabel("RL step (steps of consecutive RL stages added up)")
    ax.set_ylabel("tokens")
    ax.legend(fontsize=8)
    doc.figure(
        fig,
        "response_length.png",
        "Mean response length (tokens) over RL steps: R1-style RL typically lengthens the reasoning",
    )


REPORT = StageReport(
    panels=(
        TRAINER_PANELS[0],
        Panel("reward (mean of each function)", pattern="rewards/*/mean"),
        Panel("held-out reward (same prompts each time)", ("eval_reward",), optional=True),  # with eval_prompts
        Panel("held-out accuracy (same prompts each time)", ("eval_rewards/accuracy/mean",), optional=True),
        Panel("KL to the reference model", ("kl",)),
        Panel("entropy (nats/token)", ("entropy",)),
        TRAINER_PANELS[1],
        Panel("share of zero-std groups (total reward, TRL)", ("frac_reward_zero_std",)),
        # the groups without an accuracy signal: sampled (what plain GRPO trains on) and trained
        Panel("share of groups without accuracy signal", pattern="zero_signal/*", optional=True),
        Panel("dynamic sampling: groups per step", pattern="dynamic_sampling/groups_*", optional=True),
        Panel("clip ratio (policy ratio clipped)", pattern="clip_ratio/*_mean"),
        Panel("truncated completions", ("completions/clipped_ratio",)),
        Panel("mean response length (tokens)", ("completions/mean_length",)),
        TIMING_PANEL,
    ),
    glance=_glance,
    section=_report_section,
)

"""TRL's colocated vLLM engine on vLLM's **CPU** backend: the policy -> engine weight sync fix,
the engine options TRL does not expose (:func:`engine_options`), and engine shutdown.

The bug: TRL 1.16 syncs a colocated engine in ``VLLMGeneration.sync_weights`` (called by
``GRPOTrainer`` before each generation whose optimizer step is new) with one
``llm.llm_engine.model_executor.driver_worker.model_runner.model.load_weights([(name, param)])``
per parameter. vLLM's CPU backend repacks linear weights for its GEMM kernels after loading
(``process_weights_after_loading``), and the repacked parameters have no ``weight_loader``, so
the first sync fails with ``'Parameter' object has no attribute 'weight_loader'``.

The fix: hand every parameter, in **one** call, to the worker's ``reload_weights(weights_iterator=...)``
(vLLM's in-place reload: it restores the checkpoint-format layers, loads the new tensors and
re-runs the post-load processing, i.e. the CPU repacking), then re-packs the LM head, which a
tied-embedding model's reload skips (see :func:`_repack_vocab_layers`; without it the engine
samples with the *initial* output embedding forever). One call, not one per parameter: the
reload processes a layer once all of its tensors arrived (q/k/v are fused into one
``qkv_proj``), and a call per tensor would rebuild every layer from a partial load. It costs
~0.5 s for a 135M model.

Scope: :func:`install_cpu_weight_sync` replaces ``sync_weights`` on *one* ``VLLMGeneration``
object, and only when it runs in colocate mode on the CPU platform. GPU users, server mode and
every other TRL path keep TRL's own code. Remove this module when TRL's colocate sync works on
vLLM's CPU backend (``tests/test_vllm_sync.py::test_trl_colocate_sync_still_broken_on_cpu``
starts failing then).
"""

from __future__ import annotations

import contextlib
import functools
import os
import types
from collections.abc import Iterable, Iterator
from typing import Any

_KV_ENV = "VLLM_CPU_KVCACHE_SPACE"  # GiB of KV cache; the CPU backend prefers it to engine args


def on_cpu_platform() -> bool:
    """True when vLLM runs on its CPU backend (``vllm.platforms.current_platform``)."""
    from vllm.platforms import current_platform

    return current_platform.is_cpu()


def driver_worker(llm: Any) -> Any:
    """The in-process vLLM worker of a colocated ``vllm.LLM`` (TRL builds it with the
    ``external_launcher`` executor, which runs the engine core in the caller's process).

    Raises:
        RuntimeError: the engine has no in-process worker (multiprocess engine core) or this
            vLLM version lays it out differently.
    """
    executor = getattr(llm.llm_engine, "model_executor", None)
    worker = getattr(executor, "driver_worker", None)
    if worker is None or not hasattr(worker, "reload_weights"):
        raise RuntimeError(
            "the colocated vLLM engine exposes no in-process driver worker with reload_weights "
            "(llm.llm_engine.model_executor.driver_worker); this vLLM version is not supported "
            "by stages/common/vllm_sync.py"
        )
    return worker


def reload_weights(llm: Any, named_tensors: Iterable[tuple[str, Any]]) -> None:
    """Load ``(name, tensor)`` pairs (Hugging Face parameter names, any float dtype) into the
    engine in one in-place reload, then drop its prefix cache (cached KV blocks were computed
    with the old weights).

    ``named_tensors`` is consumed once; it may be a generator (TRL's gathers one parameter at a
    time under FSDP/ZeRO-3).
    """
    # CPUWorker.reload_weights -> GPUWorker.reload_weights: sets the current vLLM config, then
    # model_runner.reload_weights(weights_iterator=...) (vllm.model_executor.model_loader.reload).
    worker = driver_worker(llm)
    worker.reload_weights(weights_iterator=named_tensors)
    _repack_vocab_layers(worker.model_runner.get_model())
    llm.reset_prefix_cache()


def _repack_vocab_layers(model: Any) -> None:
    """Re-pack the CPU GEMM copy of every embedding / LM-head layer from its current weight.

    On the CPU backend these layers keep their ``weight`` and compute logits with a packed
    copy made at load time (``layer.cpu_linear``). A tied LM head (SmolLM2, Llama-3.2, Qwen2.5
    small models) shares ``embed_tokens.weight`` but receives no tensor of its own during a
    reload, so the in-place reload never re-packs it: the engine would keep computing logits
    with the *initial* output embedding while everything else trains. Re-packing costs one
    copy of the vocabulary matrix.
    """
    from vllm.model_executor.layers.vocab_parallel_embedding import VocabParallelEmbedding

    for module in model.modules():
        if isinstance(module, VocabParallelEmbedding) and hasattr(module, "cpu_linear"):
            module.quant_method.process_weights_after_loading(module)


def _sync_weights_cpu(self) -> None:
    """Replacement for ``trl.generation.vllm_generation.VLLMGeneration.sync_weights`` (colocate
    mode only): the same parameters (``_iter_named_params`` handles FSDP, ZeRO-3 and PEFT
    merging, and every process must iterate it), loaded with one :func:`reload_weights`."""
    reload_weights(self.llm, self._iter_named_params())


def install_cpu_weight_sync(vllm_generation: Any) -> bool:
    """Make ``vllm_generation`` (a TRL ``VLLMGeneration``; ``GRPOTrainer.vllm_generation``)
    sync through :func:`reload_weights` when it is a colocated engine on the CPU platform.

    Returns:
        True when installed; False (nothing changed) in server mode or on GPUs.

    Raises:
        RuntimeError: colocated CPU engine without an in-process worker (see :func:`driver_worker`).
    """
    if getattr(vllm_generation, "mode", None) != "colocate" or not on_cpu_platform():
        return False
    driver_worker(vllm_generation.llm)  # fail now, not at the first optimizer step
    if not hasattr(vllm_generation, "_iter_named_params"):
        raise RuntimeError(
            "TRL's VLLMGeneration has no _iter_named_params; update stages/common/vllm_sync.py for this TRL version"
        )
    vllm_generation.sync_weights = types.MethodType(_sync_weights_cpu, vllm_generation)
    return True


@contextlib.contextmanager
def engine_options(cpu_kv_cache_gib: int | None = None, **llm_kwargs: Any) -> Iterator[None]:
    """Extra ``vllm.LLM`` keyword arguments for the colocated engines TRL builds in this block.

    TRL 1.16 builds the colocated engine itself (``VLLMGeneration._init_vllm``) and exposes
    neither ``dtype`` nor ``enforce_eager``, which decide speed on a CPU: the checkpoint's dtype
    (float32 for our models) decodes ~3x slower than bfloat16, and graph compilation costs
    about a minute of start-up per run. ``cpu_kv_cache_gib`` sizes the KV cache of the CPU
    backend (GiB); it is passed as ``VLLM_CPU_KVCACHE_SPACE``, which the CPU backend reads in
    preference to any engine argument, and the previous value is restored afterwards. Keys
    TRL passes itself are refused rather than silently overridden.

    Raises:
        ValueError: a key TRL already sets (e.g. ``max_model_len``, ``seed``).
    """
    import trl.generation.vllm_generation as trl_vllm

    trl_sets = {
        "model",
        "tensor_parallel_size",
        "gpu_memory_utilization",
        "max_model_len",
        "max_num_seqs",
        "enable_sleep_mode",
        "model_impl",
        "distributed_executor_backend",
        "seed",
        "max_num_batched_tokens",
        "logprobs_mode",
        "quantization",
        "trust_remote_code",
    }
    clash = sorted(trl_sets & set(llm_kwargs))
    if clash:
        raise ValueError(f"TRL sets {clash} itself; use the matching GRPOConfig fields")
    original = trl_vllm.LLM
    env_before = os.environ.get(_KV_ENV)
    # TRL builds its engine through this name: patched for the duration of the context
    trl_vllm.LLM = functools.partial(original, **llm_kwargs)  # type: ignore[misc,assignment]
    if cpu_kv_cache_gib is not None:
        os.environ[_KV_ENV] = str(int(cpu_kv_cache_gib))
    try:
        yield
    finally:
        trl_vllm.LLM = original  # type: ignore[misc]
        if cpu_kv_cache_gib is not None:
            if env_before is None:
                os.environ.pop(_KV_ENV, None)
            else:
                os.environ[_KV_ENV] = env_before


def shutdown(vllm_generation: Any) -> None:
    """Stop a colocated engine and drop it, so its memory is free for the next step's engine.

    Under a multi-process launch the launcher's default process group survives (see
    :func:`_keep_default_process_group`): the trainer and ``pipeline.runner`` still need it.
    """
    llm = getattr(vllm_generation, "llm", None)
    if llm is None:
        return
    core = getattr(llm.llm_engine, "engine_core", None)
    if core is not None and hasattr(core, "shutdown"):
        with _keep_default_process_group():
            core.shutdown()
    del vllm_generation.llm


@contextlib.contextmanager
def _keep_default_process_group() -> Iterator[None]:
    """Ignore requests to destroy the default (WORLD) process group in this block when it
    spans several processes.

    A colocated engine (``external_launcher`` executor) joins the process group that the
    launcher and accelerate created, and its shutdown
    (``EngineCore.shutdown`` -> ``cleanup_dist_env_and_memory`` ->
    ``destroy_distributed_environment``) ends with ``torch.distributed.destroy_process_group()``:
    the group of the whole launch, so every later barrier or collective of the run (the
    runner's finalize barrier, the next step's trainer) fails with "Default process group has
    not been initialized". vLLM's own subgroups are still destroyed. With one process the
    engine's teardown is left exactly as vLLM does it.
    """
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        yield
        return
    original = dist.destroy_process_group

    def destroy(group=None):
        if group is None or group is dist.group.WORLD:
            return  # the launcher's group: still in use after the engine is gone
        original(group)

    dist.destroy_process_group = destroy
    try:
        yield
    finally:
        dist.destroy_process_group = original

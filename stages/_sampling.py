"""Sampling k completions per prompt: the vLLM offline engine, or HF ``generate`` as fallback.

Shared by the ``generate`` and ``eval`` stages. One engine is started per call of
:func:`open_sampler` (vLLM start-up costs ~25-35 s on a 2-core CPU, so a stage starts it once
and feeds it every prompt). Each prompt gets its own sampling seed derived from the run seed
and the prompt id, so a prompt's samples do not depend on which other prompts share its batch
(what makes resumed rejection sampling reproduce an uninterrupted run).
"""

from __future__ import annotations

import gc
import hashlib
import os
from dataclasses import dataclass
from typing import Literal

from pipeline.config import StrictModel


class SamplingConfig(StrictModel):
    """How completions are sampled (documented once here; used by generate and eval)."""

    backend: Literal["vllm", "hf"] = "vllm"  # hf = transformers generate, the explicit fallback
    num_samples: int = 4  # k completions per prompt
    temperature: float = 0.8
    top_p: float = 0.95
    max_tokens: int = 256  # new tokens per completion
    max_model_len: int = 2048  # tokens, prompt + completion (vLLM KV-cache sizing)
    dtype: Literal["bfloat16", "float32"] = "bfloat16"
    enforce_eager: bool = True  # vLLM: skip graph compilation (start-up cost > gain for short runs)
    batch_size: int = 64  # prompts per engine call (progress granularity; vLLM batches inside)


@dataclass
class Completion:
    """One sampled completion. ``num_tokens`` counts generated tokens; ``truncated`` is True
    when generation stopped at ``max_tokens`` instead of at EOS."""

    text: str
    num_tokens: int
    truncated: bool


def prompt_seed(seed: int, prompt_id: str) -> int:
    """A 31-bit seed for one prompt, stable across runs and batch compositions."""
    digest = hashlib.sha256(f"{seed}:{prompt_id}".encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


class Sampler:
    """A started engine for one model. Use as a context manager; call :meth:`sample`."""

    def __init__(self, model_path: str, cfg: SamplingConfig, seed: int = 0):
        self.cfg = cfg
        self.seed = seed
        self.model_path = model_path
        from transformers import AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(model_path)
        if cfg.backend == "vllm":
            os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")  # GiB; plenty for <1B models
            # In-process engine ("uni" executor, no engine-core subprocess): start-up falls from
            # ~65 s to ~25 s on 2 cores, and no __main__ guard is needed in callers.
            os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
            # vLLM reserves one core for the scheduler process of its multiprocess executor;
            # in-process there is no such process, and the reservation would halve a 2-core
            # machine (it binds the model's OpenMP threads to the other core only).
            os.environ.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")
            from vllm import LLM

            self.llm = LLM(model=model_path, dtype=cfg.dtype, max_model_len=cfg.max_model_len,
                           seed=seed, enforce_eager=cfg.enforce_eager, 
                           distributed_executor_backend="uni",
                           # Per-prompt seeds make vLLM keep a torch.Generator per request. When
                           # a prefill is chunked, vLLM rolls that generator back with
                           # `set_offset`, which CPU generators lack ("CPU Generator does not use
                           # offset"). Without chunked prefill no request is ever partial, so
                           # nothing is rolled back (tests/test_sampling.py covers it).
                           enable_chunked_prefill=False,
                           max_num_batched_tokens=max(cfg.max_model_len, 4096))
        else:
            import torch
            from transformers import AutoModelForCausalLM

            dtype = torch.bfloat16 if cfg.dtype == "bfloat16" else torch.float32
            self.model = AutoModelForCausalLM.from_pretrained(model_path, dtype=dtype).eval()
            self.tokenizer.padding_side = "left"
            if self.tokenizer.pad_token is None:
                self.tokenizer.pad_token = self.tokenizer.eos_token

    def render(self, prompt) -> str:
        """Prompt text: messages go through the model's chat template; strings pass as is."""
        if isinstance(prompt, str):
            return prompt
        return self.tokenizer.apply_chat_template(list(prompt), tokenize=False, add_generation_prompt=True)

    def sample(self, prompts: list, ids: list[str]) -> list[list[Completion]]:
        """``num_samples`` completions for each prompt (messages or text); one list per prompt."""
        texts = [self.render(p) for p in prompts]
        if self.cfg.backend == "vllm":
            return self._sample_vllm(texts, ids)
        return [self._sample_hf(t, i) for t, i in zip(texts, ids)]

    def _sample_vllm(self, texts: list[str], ids: list[str]) -> list[list[Completion]]:
        from vllm import SamplingParams

        params = [SamplingParams(n=self.cfg.num_samples, temperature=self.cfg.temperature,
                                 top_p=self.cfg.top_p, max_tokens=self.cfg.max_tokens,
                                 seed=prompt_seed(self.seed, i)) for i in ids]
        outputs = self.llm.generate(texts, params, use_tqdm=False)
        return [[Completion(o.text, len(o.token_ids), o.finish_reason == "length") for o in out.outputs]
                for out in outputs]

    def _sample_hf(self, text: str, prompt_id: str) -> list[Completion]:
        import torch

        torch.manual_seed(prompt_seed(self.seed, prompt_id))
        enc = self.tokenizer(text, return_tensors="pt", add_special_tokens=False)
        with torch.no_grad():
            out = self.model.generate(**enc, do_sample=self.cfg.temperature > 0,
                                      temperature=max(self.cfg.temperature, 1e-5), top_p=self.cfg.top_p,
                                      max_new_tokens=self.cfg.max_tokens, num_return_sequences=self.cfg.num_samples,
                                      pad_token_id=self.tokenizer.pad_token_id)
        result = []
        eos = {self.tokenizer.eos_token_id, *([self.model.generation_config.eos_token_id]
               if isinstance(self.model.generation_config.eos_token_id, int)
               else (self.model.generation_config.eos_token_id or []))}
        for row in out[:, enc["input_ids"].shape[1]:].tolist():
            n = next((i + 1 for i, t in enumerate(row) if t in eos), len(row))
            result.append(Completion(self.tokenizer.decode(row[:n], skip_special_tokens=True), n,
                                     n == self.cfg.max_tokens and row[n - 1] not in eos))
        return result

    def close(self) -> None:
        """Stop the engine and free its memory (the next model's engine needs it)."""
        if self.cfg.backend == "vllm":
            engine = getattr(self.llm, "llm_engine", None)
            core = getattr(engine, "engine_core", None)
            if core is not None and hasattr(core, "shutdown"):
                core.shutdown()
            del self.llm
        else:
            del self.model
        gc.collect()

    def __enter__(self) -> "Sampler":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

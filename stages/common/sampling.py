"""Sampling k completions per prompt: the vLLM offline engine, a separate vLLM server, or HF
``generate`` as fallback.

Shared by the ``generate``, ``eval`` and ``preference_pairs`` stages. One engine is started per call of
:func:`open_sampler` (vLLM start-up costs ~25-35 s on a 2-core CPU, so a stage starts it once
and feeds it every prompt). Each prompt gets its own sampling seed derived from the run seed
and the prompt id, so a prompt's samples do not depend on which other prompts share its batch
(what makes resumed rejection sampling reproduce an uninterrupted run).

``backend: server`` sends the same requests to a running vLLM server (its OpenAI-compatible
``/v1/completions``; ``docs/eval.md`` has the command): one request per prompt carrying all k
samples (``n=k``) and the prompt's seed, ``max_concurrency`` requests in flight. The prompt is
rendered here (chat template of the local tokenizer) and sent as text, so the server does not
template it again; with the same model and dtype the completions equal the offline engine's
(``tests/test_vllm_server.py``). The config's model must still resolve to a local folder (or
hub id) for the tokenizer, and the server must serve that same model.

**The same prompt tokens on every backend** (:meth:`Sampler.prompt_ids`), as TRL builds them
for GRPO: a chat prompt is its rendered template, tokenized *without* adding special tokens
(the template writes the BOS it wants: ``{{ bos_token }}`` in Llama 3, R1-Distill); a text
prompt gets the tokenizer's special tokens (a base model's BOS). The in-process engine receives
these ids; the server receives the text with ``add_special_tokens`` set the same way. vLLM's
text path tokenizes with special tokens, which gave a templated prompt two BOS tokens
(``[bos, bos, ...]``) where TRL and transformers have one.

**Prompts that do not fit** (at least ``max_model_len`` tokens: no room for one generated
token) are not sent to the in-process engines: vLLM refuses such a request, and the whole batch
(a shard, an eval) failed with it. Their completions are empty, with ``Completion.skipped``
set; ``generate`` drops and counts them, ``eval`` refuses them before sampling. A prompt that
fits gets ``min(max_tokens, max_model_len - prompt tokens)`` new tokens on both in-process
backends (what vLLM does). The server backend sends every prompt (its own ``--max-model-len``
decides).

Why one file: the three backends (vLLM offline engine, vLLM server, HF ``generate``) answer one
interface (`Sampler`, `Completion`) under one config (`SamplingConfig`) and must agree on the
token budget, the stop ids and the per-prompt seeds; `ServerClient` (~120 lines) is the server
backend.
"""

from __future__ import annotations

import gc
import hashlib
import os
from dataclasses import dataclass
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import Field, NonNegativeFloat, PositiveInt, model_serializer, model_validator

from pipeline import precision
from pipeline.config import StrictModel
from pipeline.precision import DtypeChoice, Precision
from pipeline.templates import require_end_of_turn, stop_token_ids


class SamplingConfig(StrictModel):
    """How completions are sampled (documented once here; used by generate and eval).

    ``max_model_len``, ``dtype`` and ``enforce_eager`` configure the in-process engines; with
    ``backend: server`` the server's command line sets them (``docs/eval.md``)."""

    # vllm = offline engine in this process; server = a running vLLM server (server_url);
    # hf = transformers generate, the explicit fallback
    backend: Literal["vllm", "hf", "server"] = "vllm"
    num_samples: PositiveInt = 4  # k completions per prompt
    temperature: NonNegativeFloat = 0.8  # 0 = greedy (every one of the k samples is the same)
    top_p: Annotated[float, Field(gt=0, le=1)] = 0.95  # nucleus: smallest token set with this probability mass
    max_tokens: PositiveInt = 256  # new tokens per completion
    max_model_len: PositiveInt = 2048  # tokens, prompt + completion (vLLM KV-cache sizing)
    # engine / HF model dtype; auto = bf16 where the hardware runs it fast, else float32
    # (pipeline.precision); the server backend uses the server's own --dtype
    dtype: DtypeChoice = "auto"
    enforce_eager: bool = True  # vLLM: skip graph compilation (start-up cost > gain for short runs)
    batch_size: PositiveInt = 64  # prompts per engine call (progress granularity; vLLM batches inside)
    server_url: str | None = None  # backend server: OpenAI-compatible base URL, e.g. http://127.0.0.1:8000/v1
    server_model: str | None = None  # backend server: served model name; None = the one model the server lists
    max_concurrency: int = 32  # backend server: requests in flight (one request = one prompt's k samples)
    request_timeout: float = 600.0  # backend server: seconds one request may take

    @model_validator(mode="after")
    def _check_server(self) -> SamplingConfig:
        if self.backend == "server" and not self.server_url:
            raise ValueError(
                "backend 'server' needs `server_url`, the base URL of a running vLLM server's "
                "OpenAI-compatible API (e.g. http://127.0.0.1:8000/v1)"
            )
        if self.max_concurrency < 1 or self.request_timeout <= 0:
            raise ValueError(
                f"max_concurrency must be >= 1 and request_timeout > 0, got "
                f"{self.max_concurrency} and {self.request_timeout}"
            )
        if self.backend != "server" and self.max_tokens >= self.max_model_len:
            raise ValueError(
                f"max_tokens ({self.max_tokens}) must be below max_model_len ({self.max_model_len}): "
                "the prompt and the completion share the model length"
            )
        return self

    @model_serializer(mode="wrap")
    def _dump(self, handler):
        # The server keys are left out of other backends' dumps while at their defaults, so the
        # config hash of every step that does not use a server is what it was before they
        # existed (a finished step stays finished; the runner hashes this dump).
        data = handler(self)
        if self.backend != "server":
            for name in SERVER_KEYS:
                if getattr(self, name) == type(self).model_fields[name].default:
                    data.pop(name, None)
        return data


SERVER_KEYS = ("server_url", "server_model", "max_concurrency", "request_timeout")


class FewShot(StrictModel):
    """One exemplar shown before the real question (as earlier chat turns)."""

    question: str
    response: str  # the full assistant text: <think>…</think> then <answer>…</answer>


def with_few_shot(prompt: list[dict], few_shot: list[FewShot]) -> list[dict]:
    """Insert exemplar turns after the system message (if any), before the real question
    (``generate``'s ``few_shot``, ``preference_pairs``' refusal exemplars)."""
    system = [m for m in prompt if m["role"] == "system"]
    rest = [m for m in prompt if m["role"] != "system"]
    shots = []
    for ex in few_shot:
        shots += [{"role": "user", "content": ex.question}, {"role": "assistant", "content": ex.response}]
    return system + shots + rest


def sampling_precision(cfg: SamplingConfig) -> dict[str, dict[str, str]]:
    """``{"sampling": <resolved dtype and reason>}`` for a step's manifest; empty with a server
    (its own ``--dtype`` decides)."""
    if cfg.backend == "server":
        return {}
    return {"sampling": precision.resolve(cfg.dtype).as_dict()}


@dataclass
class Completion:
    """One sampled completion. ``num_tokens`` counts generated tokens; ``truncated`` is True
    when generation stopped at its token budget (``max_tokens``, or what ``max_model_len``
    leaves) instead of at EOS; ``skipped`` is True when the prompt was not sampled at all, being
    ``max_model_len`` tokens or longer (then ``text`` is "" and ``num_tokens`` 0)."""

    text: str
    num_tokens: int
    truncated: bool
    skipped: bool = False


def prompt_token_ids(tokenizer, prompt, text: str | None = None) -> list[int]:
    """A prompt's token ids as every backend (and TRL) feeds them to the model (module
    docstring): a chat prompt (messages) is its rendered template (``text``, else rendered here
    with the generation prompt) tokenized without added special tokens; a string gets the
    tokenizer's special tokens (a base model's BOS). A ``{{ bos_token }}`` template thus gives
    ``[bos, <|im_start|>, ...]`` with one BOS (vLLM's text path gave two).
    """
    if isinstance(prompt, str):
        return tokenizer(prompt if text is None else text)["input_ids"]
    if text is None:
        text = tokenizer.apply_chat_template(list(prompt), tokenize=False, add_generation_prompt=True)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def prompt_seed(seed: int, prompt_id: str) -> int:
    """A 31-bit seed for one prompt, stable across runs and batch compositions."""
    digest = hashlib.sha256(f"{seed}:{prompt_id}".encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


def beat_on_engine_steps(llm, beat) -> None:
    """Call ``beat()`` at every step of a vLLM offline engine (one scheduling iteration: a few
    tokens for every running request), so the stall watchdog (``pipeline.progress``) sees a
    long generation move and only a hung engine stalls. No-op for an object without an engine."""
    engine = getattr(llm, "llm_engine", None)
    step = getattr(engine, "step", None)
    if engine is None or step is None:
        return

    def stepped(*args, **kwargs):
        out = step(*args, **kwargs)
        beat()
        return out

    engine.step = stepped


# config.json / generation_config.json keys that do not change what an engine computes: a
# fine-tuned copy differs from its base in them (transformers saves use_cache: false after training).
_BOOKKEEPING_KEYS = frozenset({"_name_or_path", "transformers_version", "torch_dtype", "dtype", "use_cache"})


def engine_signature(model_path: str) -> dict | None:
    """What must be equal for one started vLLM engine to serve another model by swapping its
    weights (:meth:`Sampler.swap_model`): the architecture (``config.json`` without
    bookkeeping keys: shapes, vocabulary size, RoPE, tied embeddings), the tokenizer the engine
    detokenizes with (``tokenizer.json``'s sha256) and the generation config (its EOS ids join
    every request's stop ids). ``None`` (never swapped) unless ``model_path`` is a local folder
    with ``config.json``, ``tokenizer.json`` and safetensors weights."""
    import json
    from pathlib import Path

    folder = Path(model_path)
    config, tokenizer = folder / "config.json", folder / "tokenizer.json"
    if not (config.is_file() and tokenizer.is_file() and any(folder.glob("*.safetensors"))):
        return None

    def without_bookkeeping(path: Path) -> dict:
        data = json.loads(path.read_text()) if path.is_file() else {}
        return {k: v for k, v in data.items() if k not in _BOOKKEEPING_KEYS}

    return {
        "config": without_bookkeeping(config),
        "generation_config": without_bookkeeping(folder / "generation_config.json"),
        "tokenizer_sha256": hashlib.sha256(tokenizer.read_bytes()).hexdigest(),
    }


def _safetensors_weights(model_path: str):
    """``(name, tensor)`` for every tensor of the folder's safetensors files, one at a time."""
    from pathlib import Path

    from safetensors import safe_open

    for file in sorted(Path(model_path).glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as f:
            for name in f.keys():
                yield name, f.get_tensor(name)


class Sampler:
    """A started engine for one model. Use as a context manager; call :meth:`sample`;
    :meth:`swap_model` points a started vLLM engine at another model of the same architecture.

    ``heartbeat``: called as generation moves (every vLLM engine step, every HF token, every
    server reply); a stage sets it to its ``ctx.progress.beat`` (``pipeline.progress``)."""

    def __init__(self, model_path: str, cfg: SamplingConfig, seed: int = 0):
        self.cfg = cfg
        self.seed = seed
        self.model_path = model_path
        self.heartbeat = lambda: None
        from transformers import AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(model_path)
        # End of turn + EOS: a base model's EOS alone (Qwen2.5-Math: <|endoftext|>) runs past its turn.
        self.stop_ids = stop_token_ids(self.tokenizer)
        self._chat_checked = False
        # None with a server: its command line decides (docs/eval.md)
        self.precision: Precision | None = None
        if cfg.backend != "server":
            self.precision = precision.resolve(cfg.dtype, what="sampling")
            precision.announce(self.precision, "sampling")
        if cfg.backend == "server":
            self.server = ServerClient(cfg)
        elif cfg.backend == "vllm":
            os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")  # GiB; plenty for <1B models
            # In-process engine ("uni" executor, no engine-core subprocess): start-up falls from
            # ~65 s to ~25 s on 2 cores, and no __main__ guard is needed in callers.
            os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
            # vLLM reserves one core for the scheduler process of its multiprocess executor;
            # in-process there is no such process, and the reservation would halve a 2-core
            # machine (it binds the model's OpenMP threads to the other core only).
            os.environ.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")
            from vllm import LLM

            assert self.precision is not None  # resolved above for the in-process backends
            self.llm = LLM(
                model=model_path,
                dtype=self.precision.dtype,
                max_model_len=cfg.max_model_len,
                seed=seed,
                enforce_eager=cfg.enforce_eager,
                distributed_executor_backend="uni",
                # Per-prompt seeds make vLLM keep a torch.Generator per request. When
                # a prefill is chunked, vLLM rolls that generator back with
                # `set_offset`, which CPU generators lack ("CPU Generator does not use
                # offset"). Without chunked prefill no request is ever partial, so
                # nothing is rolled back (tests/test_sampling.py covers it).
                enable_chunked_prefill=False,
                max_num_batched_tokens=max(cfg.max_model_len, 4096),
            )
            beat_on_engine_steps(self.llm, lambda: self.heartbeat())
        else:
            from transformers import AutoModelForCausalLM

            assert self.precision is not None  # resolved above for the in-process backends
            self.model = AutoModelForCausalLM.from_pretrained(
                model_path, dtype=precision.torch_dtype(self.precision.dtype)
            ).eval()
            self.tokenizer.padding_side = "left"
            if self.tokenizer.pad_token is None:
                self.tokenizer.pad_token = self.tokenizer.eos_token

    def swap_model(self, model_path: str) -> bool:
        """Serve ``model_path`` from this started vLLM engine by loading its weights in place
        (``stages.common.vllm_sync.reload_weights``: the CPU backend's repacking redone, the
        prefix cache dropped), instead of starting a new engine (~35 s on a 2-core CPU). The
        tokenizer, chat template and stop ids become the new model's.

        Returns:
            True when swapped; False (nothing changed) for another backend, or when the two
            models' :func:`engine_signature` differ or either is ``None``, or when the engine has
            no in-process worker to reload. The caller then starts a new engine.
        """
        if self.cfg.backend != "vllm":
            return False
        old, new = engine_signature(self.model_path), engine_signature(model_path)
        if old is None or new is None or old != new:
            return False
        from transformers import AutoTokenizer

        from stages.common import vllm_sync

        try:
            vllm_sync.driver_worker(self.llm)
        except RuntimeError:
            return False
        vllm_sync.reload_weights(self.llm, _safetensors_weights(model_path))
        self.model_path = model_path
        self.tokenizer = AutoTokenizer.from_pretrained(model_path)
        self.stop_ids = stop_token_ids(self.tokenizer)
        self._chat_checked = False
        return True

    def render(self, prompt) -> str:
        """Prompt text, what the completion continues: messages go through the model's chat
        template (with the generation prompt, and whatever the template opens the assistant turn
        with, e.g. ``<think>\\n``); strings pass as is.

        Raises:
            ValueError: messages for a model whose chat template is missing or ends an assistant
                turn with no special token (``pipeline.templates.require_end_of_turn``).
        """
        if isinstance(prompt, str):
            return prompt
        if not self._chat_checked:
            require_end_of_turn(self.tokenizer, self.model_path)
            self._chat_checked = True
        # tokenize=False returns the text; transformers types the return for every mode at once
        return self.tokenizer.apply_chat_template(  # type: ignore[return-value]
            list(prompt), tokenize=False, add_generation_prompt=True
        )

    def prompt_ids(self, prompt, text: str | None = None) -> list[int]:
        """The prompt's token ids as every backend feeds them to the model (:func:`prompt_token_ids`);
        ``text``: the prompt already rendered (:meth:`render`)."""
        return prompt_token_ids(self.tokenizer, prompt, self.render(prompt) if text is None else text)

    def sample(
        self, prompts: list, ids: list[str], texts: list[str] | None = None, num_samples: list[int] | None = None
    ) -> list[list[Completion]]:
        """``num_samples`` completions for each prompt (messages or text); one list per prompt.
        ``texts``: the prompts already rendered (:meth:`render`), to render them once.
        ``num_samples``: per prompt, instead of ``cfg.num_samples`` (vLLM backend only: prompts
        of different k in one engine call; each prompt's samples depend on its seed only).

        Raises:
            ValueError: per-prompt ``num_samples`` other than ``cfg.num_samples`` on another backend.
        """
        ks = list(num_samples) if num_samples is not None else [self.cfg.num_samples] * len(prompts)
        if self.cfg.backend != "vllm" and set(ks) - {self.cfg.num_samples}:
            raise ValueError(f"per-prompt num_samples needs backend vllm, not {self.cfg.backend}")
        texts = [self.render(p) for p in prompts] if texts is None else texts
        token_ids = [self.prompt_ids(p, t) for p, t in zip(prompts, texts)]
        keep = [i for i, t in enumerate(token_ids) if self.fits(t)]
        out: list[list[Completion]] = [[Completion("", 0, False, skipped=True)] * k for k in ks]
        if not keep:
            return out
        if self.cfg.backend == "vllm":
            sampled = self._sample_vllm([token_ids[i] for i in keep], [ids[i] for i in keep], [ks[i] for i in keep])
        elif self.cfg.backend == "server":
            sampled = self.server.sample(
                [texts[i] for i in keep],
                [prompt_seed(self.seed, ids[i]) for i in keep],
                self.cfg,
                self.tokenizer,
                add_special_tokens=[isinstance(prompts[i], str) for i in keep],
                heartbeat=self.heartbeat,
            )
        else:
            sampled = [self._sample_hf(token_ids[i], ids[i]) for i in keep]
        for i, completions in zip(keep, sampled):
            out[i] = completions
        return out

    def fits(self, token_ids: list[int]) -> bool:
        """Whether a prompt of these tokens leaves room for a completion (module docstring)."""
        return self.cfg.backend == "server" or len(token_ids) < self.cfg.max_model_len

    def _sample_vllm(self, token_ids: list[list[int]], ids: list[str], ks: list[int]) -> list[list[Completion]]:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        params = [
            SamplingParams(
                n=k,
                temperature=self.cfg.temperature,
                top_p=self.cfg.top_p,
                max_tokens=self.cfg.max_tokens,
                stop_token_ids=self.stop_ids,
                seed=prompt_seed(self.seed, i),
            )
            for i, k in zip(ids, ks)
        ]
        outputs = self.llm.generate([TokensPrompt(prompt_token_ids=t) for t in token_ids], params, use_tqdm=False)
        return [
            [Completion(o.text, len(o.token_ids), o.finish_reason == "length") for o in out.outputs] for out in outputs
        ]

    def _sample_hf(self, token_ids: list[int], prompt_id: str) -> list[Completion]:
        import torch

        torch.manual_seed(prompt_seed(self.seed, prompt_id))
        enc = {
            "input_ids": torch.tensor([token_ids]),
            "attention_mask": torch.ones(1, len(token_ids), dtype=torch.long),
        }
        gen_eos = self.model.generation_config.eos_token_id
        eos = dict.fromkeys([*self.stop_ids, *([gen_eos] if isinstance(gen_eos, int) else (gen_eos or []))])
        budget = min(self.cfg.max_tokens, self.cfg.max_model_len - len(token_ids))  # as vLLM: the model length
        from transformers import StoppingCriteria, StoppingCriteriaList

        sampler = self

        class Beat(StoppingCriteria):  # never stops: a heartbeat per generated token
            def __call__(self, input_ids, scores, **kwargs):
                sampler.heartbeat()
                return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)

        with torch.no_grad():
            out = self.model.generate(
                **enc,
                do_sample=self.cfg.temperature > 0,
                temperature=max(self.cfg.temperature, 1e-5),
                top_p=self.cfg.top_p,
                max_new_tokens=budget,
                num_return_sequences=self.cfg.num_samples,
                pad_token_id=self.tokenizer.pad_token_id,
                eos_token_id=list(eos),
                stopping_criteria=StoppingCriteriaList([Beat()]),
            )
        result = []
        for row in out[:, enc["input_ids"].shape[1] :].tolist():
            n = next((i + 1 for i, t in enumerate(row) if t in eos), len(row))
            # one sequence decodes to one str (transformers types decode for batches too)
            text: str = self.tokenizer.decode(row[:n], skip_special_tokens=True)  # type: ignore[assignment]
            result.append(Completion(text, n, n == budget and row[n - 1] not in eos))
        return result

    def close(self) -> None:
        """Stop the engine and free its memory (the next model's engine needs it). A second
        call does nothing."""
        if getattr(self, "_closed", False):
            return
        self._closed = True
        if self.cfg.backend == "server":
            self.server.close()
        elif self.cfg.backend == "vllm":
            engine = getattr(self.llm, "llm_engine", None)
            core = getattr(engine, "engine_core", None)
            if core is not None and hasattr(core, "shutdown"):
                core.shutdown()
            del self.llm
        else:
            del self.model
        gc.collect()

    def __enter__(self) -> Sampler:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class SamplingServerError(RuntimeError):
    """The sampling server could not be reached or refused a request (the message names its URL)."""


def server_base_url(url: str) -> str:
    """The API base URL: trailing slashes dropped, ``/v1`` added to a bare ``http://host:port``.

    >>> server_base_url("http://127.0.0.1:8000"), server_base_url("http://h:1/v1/")
    ('http://127.0.0.1:8000/v1', 'http://h:1/v1')
    """
    url = url.rstrip("/")
    return url + "/v1" if urlsplit(url).path in ("", "/") else url


class ServerClient:
    """Completions from a running vLLM server through its OpenAI-compatible API.

    One ``/v1/completions`` request per prompt asks for all k samples (``n=k``) with the
    prompt's seed; vLLM then seeds sample j with ``seed + j``, exactly as the offline engine
    does for ``SamplingParams(n=k, seed=seed)``. Requests run on a thread pool of
    ``max_concurrency`` threads (the server batches whatever is in flight). Sampling
    parameters the offline engine leaves at vLLM's neutral defaults (top-k, min-p, penalties)
    are sent explicitly: the server would otherwise fill them from the model's
    ``generation_config.json``. The API key, if the server was started with ``--api-key``, is
    read from ``$R1_SERVER_API_KEY``.
    """

    def __init__(self, cfg: SamplingConfig):
        from concurrent.futures import ThreadPoolExecutor

        try:
            import openai
        except ImportError:  # a client-only install without vLLM (which pulls it in)
            raise ImportError("sampling.backend 'server' needs the `openai` package: pip install openai") from None

        self.url = server_base_url(cfg.server_url or "")
        self.client = openai.OpenAI(
            base_url=self.url,
            api_key=os.environ.get("R1_SERVER_API_KEY") or "EMPTY",
            timeout=cfg.request_timeout,
            max_retries=2,
        )
        self.pool = ThreadPoolExecutor(max_workers=cfg.max_concurrency, thread_name_prefix="r1-sampling")
        self.model = cfg.server_model or self._only_model()
        self._checked_tokenizer = False

    def _error(self, err: Exception, what: str) -> SamplingServerError:
        import openai

        if isinstance(err, openai.APITimeoutError):
            return SamplingServerError(f"sampling server {self.url}: {what} took longer than request_timeout")
        if isinstance(err, openai.APIConnectionError):
            return SamplingServerError(
                f"sampling server {self.url} is unreachable ({err.__cause__ or err}); "
                "start it (docs/eval.md, 'backend: server') or fix sampling.server_url"
            )
        if isinstance(err, openai.APIStatusError):
            return SamplingServerError(
                f"sampling server {self.url} answered HTTP {err.status_code} to {what}: {err.message}"
            )
        return SamplingServerError(f"sampling server {self.url}: {what} failed: {err!r}")

    def _only_model(self) -> str:
        import openai

        try:
            served = [m.id for m in self.client.models.list().data]
        except openai.OpenAIError as err:
            raise self._error(err, "GET /models") from err
        if len(served) != 1:
            raise SamplingServerError(
                f"sampling server {self.url} serves {len(served)} models "
                f"({', '.join(served) or 'none'}); name one in sampling.server_model"
            )
        return served[0]

    def _request(
        self, text: str, seed: int, cfg: SamplingConfig, tokenizer, add_special_tokens: bool = True
    ) -> list[Completion]:
        import openai

        try:
            response = self.client.completions.create(
                model=self.model,
                prompt=text,
                n=cfg.num_samples,
                max_tokens=cfg.max_tokens,
                temperature=cfg.temperature,
                top_p=cfg.top_p,
                seed=seed,
                presence_penalty=0.0,
                frequency_penalty=0.0,
                extra_body={
                    "top_k": 0,
                    "min_p": 0.0,
                    "repetition_penalty": 1.0,
                    "stop_token_ids": stop_token_ids(tokenizer),  # the end of turn, as in-process
                    # a rendered chat template has its BOS already (Sampler.prompt_ids)
                    "add_special_tokens": add_special_tokens,
                    "skip_special_tokens": True,
                    "return_token_ids": True,
                },
            )
        except openai.OpenAIError as err:
            raise self._error(err, f"POST /completions (model {self.model!r})") from err
        choices = sorted(response.choices, key=lambda c: c.index)
        if len(choices) != cfg.num_samples:
            raise SamplingServerError(
                f"sampling server {self.url} returned {len(choices)} completions, asked for n={cfg.num_samples}"
            )
        if not self._checked_tokenizer:
            self._check_tokenizer(text, getattr(choices[0], "prompt_token_ids", None), tokenizer, add_special_tokens)
        out = []
        for c in choices:
            token_ids = getattr(c, "token_ids", None)  # vLLM's extra field (return_token_ids)
            n = (
                len(token_ids)
                if token_ids is not None
                else len(tokenizer(c.text, add_special_tokens=False)["input_ids"])
            )  # other servers: re-tokenized
            out.append(Completion(c.text, n, c.finish_reason == "length"))
        return out

    def _check_tokenizer(self, text: str, server_ids, tokenizer, add_special_tokens: bool = True) -> None:
        """The server's tokens of the first prompt must equal the local tokenizer's: a server
        running another model (or tokenizer) fails here instead of producing silent nonsense."""
        self._checked_tokenizer = True
        if server_ids is None:
            return
        local = tokenizer(text, add_special_tokens=add_special_tokens)["input_ids"]
        if list(server_ids) != list(local):
            raise SamplingServerError(
                f"sampling server {self.url} (model {self.model!r}) tokenizes the prompt differently from the "
                f"local tokenizer ({len(server_ids)} vs {len(local)} tokens): it must serve the same model as "
                "the config's `model`"
            )

    def sample(
        self,
        texts: list[str],
        seeds: list[int],
        cfg: SamplingConfig,
        tokenizer,
        add_special_tokens: list[bool] | None = None,
        heartbeat=lambda: None,
    ) -> list[list[Completion]]:
        """k completions per text (in order, samples sorted by choice index), many requests at once.
        ``add_special_tokens``: per text, whether the server adds the tokenizer's special tokens
        (False for a rendered chat template; default: True for all). ``heartbeat()`` after each reply."""
        special = list(add_special_tokens) if add_special_tokens is not None else [True] * len(texts)
        if texts and not self._checked_tokenizer:  # the first request alone, so the check runs once
            first = [self._request(texts[0], seeds[0], cfg, tokenizer, special[0])]
            heartbeat()
            texts, seeds, special = texts[1:], seeds[1:], special[1:]
        else:
            first = []
        futures = [self.pool.submit(self._request, t, s, cfg, tokenizer, a) for t, s, a in zip(texts, seeds, special)]
        for f in futures:
            f.add_done_callback(lambda _: heartbeat())
        try:
            return first + [f.result() for f in futures]
        except BaseException:
            for f in futures:
                f.cancel()
            raise

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)
        self.client.close()

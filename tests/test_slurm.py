"""``scripts/slurm/r1_step.sbatch`` in its dry-run mode, on a simulated 3-node allocation.

SLURM and the nodes are simulated with small programs on ``PATH``: ``scontrol show hostnames``
lists ``gpu-a gpu-b gpu-c``; ``srun --nodelist=NODE CMD`` runs CMD here as if on NODE (``hostname``
says NODE); ``getent ahostsv4 NODE`` answers like a Debian host: ``127.0.1.1`` first (what
``hostname --ip-address`` returns there), then the node's real address ``10.0.0.1x``. The script
really reads the pipeline file (``python -m pipeline.slurm``), resolves the nodes and asks each
for its address; it prints the server and training commands instead of running them.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline import slurm

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts/slurm/r1_step.sbatch"
PIPELINE = "configs/pipeline/r1_qwen2.5-math-1.5b.yaml"
IPS = {"gpu-a": "10.0.0.11", "gpu-b": "10.0.0.12", "gpu-c": "10.0.0.13"}

FAKES = {
    "scontrol": '#!/bin/bash\n[[ "$1 $2" == "show hostnames" ]] || exit 1\necho gpu-a; echo gpu-b; echo gpu-c\n',
    "srun": (
        "#!/bin/bash\n"
        'echo "srun $*" >> "$FAKE_LOG"\n'
        'node=""\n'
        "while [[ $1 == --* ]]; do [[ $1 == --nodelist=* ]] && node=${1#--nodelist=}; shift; done\n"
        'FAKE_NODE=$node exec "$@"\n'
    ),
    "hostname": (
        "#!/bin/bash\n"
        'if [[ ${1:-} == -I ]]; then grep "^$FAKE_NODE " "$FAKE_HOSTS" | cut -d" " -f2; else echo "$FAKE_NODE"; fi\n'
    ),
    "getent": (
        "#!/bin/bash\n"
        "[[ $1 == ahostsv4 ]] || exit 2\n"
        'echo "127.0.1.1       STREAM $2"\n'
        'grep "^$2 " "$FAKE_HOSTS" | awk \'{print $2 "       STREAM " $1}\'\n'
    ),
}


@pytest.fixture
def cluster(tmp_path):
    """``(env, r1_home)`` for a dry run on the simulated allocation, with a GPU-stack venv marker."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in FAKES.items():
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    (tmp_path / "hosts").write_text("".join(f"{n} {ip}\n" for n, ip in IPS.items()))
    venv = tmp_path / "venv-gpu"
    (venv / "bin").mkdir(parents=True)
    (venv / "r1-stack").write_text("gpu\n")
    # activating it puts this test's interpreter (the CPU stack, enough to read configs) first
    (venv / "bin" / "activate").write_text(f'export PATH="{Path(sys.executable).parent}:$PATH"\n')
    home = tmp_path / "runs"
    for step in ("sft", "cold_start_sft"):  # finished inputs of all_domain_rl and reasoning_rl
        (home / "r1-qwen" / step / "model").mkdir(parents=True)
        (home / "r1-qwen" / step / "manifest.json").write_text(json.dumps({"step": step}))
    env = {
        "PATH": f"{bin_dir}:/usr/local/bin:/usr/bin:/bin",
        "HOME": os.environ.get("HOME", "/root"),
        "PYTHONPATH": str(REPO),
        "HF_HUB_OFFLINE": "1",
        "R1_HOME": str(home),
        "R1_VENV": str(venv),
        "DRY_RUN": "1",
        "SLURM_JOB_NODELIST": "gpu-[a-c]",
        "SLURM_CPUS_PER_TASK": "64",
        "SLURM_GPUS_ON_NODE": "8",
        "SLURM_SUBMIT_DIR": str(REPO),
        "FAKE_LOG": str(tmp_path / "srun.log"),
        "FAKE_HOSTS": str(tmp_path / "hosts"),
    }
    return env, home


def _sbatch(env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPT), *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


def _command(out: str, prefix: str) -> list[str]:
    line = next(line for line in out.splitlines() if line.startswith(prefix))
    return shlex.split(line[2:])


def test_server_mode_step_dry_run(cluster):
    env, home = cluster
    proc = _sbatch(env, PIPELINE, "all_domain_rl", "max_steps=5", "learning_rate=2.0e-6")
    out = proc.stdout
    assert proc.returncode == 0, out + proc.stderr[-3000:]
    assert "127.0.1.1" not in out and "0.0.0.0:" not in out and "trl vllm-serve" not in out
    # the vLLM server: the last node, its own address, TRL's server command on the step's initial policy
    server = _command(out, "+ srun --nodes=1")
    assert "--nodelist=gpu-c" in server and "--cpus-per-task=64" in server
    assert "--export=ALL,VLLM_SERVER_DEV_MODE=1,VLLM_HOST_IP=10.0.0.13" in server
    serve = shlex.split(next(line for line in out.splitlines() if line.startswith("  SERVE="))[len("  SERVE=") :])
    assert serve[1:5] == ["-m", "vllm.entrypoints.cli.main", "serve", str(home / "r1-qwen" / "sft" / "model")]
    assert serve[serve.index("--port") + 1] == "8000" and serve[serve.index("--max-model-len") + 1] == "4096"
    assert serve[serve.index("--weight-transfer-config") + 1] == '{"backend": "nccl"}'
    assert "+ wait for http://10.0.0.13:8000/health (timeout 1800 s)" in out
    # training: the other two nodes, main address of the first one, the step by name with its overrides
    train = _command(out, "+ srun --nodes=2")
    assert "--nodelist=gpu-a,gpu-b" in train and "--cpus-per-task=64" in train and "--ntasks-per-node=1" in train
    launch = out.split("  LAUNCH (on each training node):\n", 1)[1]
    words = shlex.split(launch.split("exec ", 1)[1])
    assert words[:3] == ["accelerate", "launch", "--config_file"] and words[3] == "configs/accelerate/zero3.yaml"
    assert words[words.index("--num_machines") + 1] == "2" and words[words.index("--num_processes") + 1] == "16"
    assert words[words.index("--main_process_ip") + 1] == "10.0.0.11"
    assert words[words.index("--machine_rank") + 1] == "$SLURM_PROCID"
    assert words[words.index("-m") + 1 : words.index("-m") + 7] == [
        "pipeline.cli",
        "run",
        PIPELINE,
        "--only",
        "all_domain_rl",
        "--run",
    ]
    assert words[words.index("--run") + 1] == "r1-qwen"
    sets = [words[i + 1] for i, w in enumerate(words) if w == "--set"]
    assert sets == [
        "all_domain_rl.max_steps=5",
        "all_domain_rl.learning_rate=2.0e-6",
        "all_domain_rl.vllm_server_base_url=http://10.0.0.13:8000",
    ]
    assert "VLLM_HOST_IP=$(node_ip) || exit 1\n    export VLLM_HOST_IP\n" in launch  # each node: its own address
    # addresses were asked on the nodes themselves (srun), not guessed on the batch host
    asked = [line for line in Path(env["FAKE_LOG"]).read_text().splitlines() if line.startswith("srun ")]
    assert [line.split("--nodelist=")[1].split()[0] for line in asked] == ["gpu-a", "gpu-c"]


def test_node_address_skips_loopback_and_honours_the_interface(cluster):
    env, _ = cluster
    text = SCRIPT.read_text()
    snippet = text.split("NODE_IP='", 1)[1].split("'\n", 1)[0]
    for node, ip in IPS.items():
        got = subprocess.run(
            ["bash", "-c", snippet + "\nnode_ip"], env={**env, "FAKE_NODE": node}, capture_output=True, text=True
        )
        assert got.stdout.strip() == ip, got.stderr


def test_colocate_step_trains_on_every_node(cluster):
    env, _ = cluster
    proc = _sbatch(env, PIPELINE, "reasoning_rl")
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    assert "vLLM server" not in proc.stdout and "SERVE=" not in proc.stdout
    train = _command(proc.stdout, "+ srun --nodes=3")
    assert "--nodelist=gpu-a,gpu-b,gpu-c" in train
    launch = proc.stdout.split("  LAUNCH (on each training node):\n", 1)[1]
    assert "--num_machines 3 --num_processes 24" in launch and "--only reasoning_rl" in launch
    assert "--set" not in launch


@pytest.mark.parametrize(
    "args, message",
    [
        (["all_domain_rl", "max_step=5"], "unknown key 'max_step'"),
        (["eval"], "runs in one process; run it without the launcher"),
        (["nope"], "no step 'nope'"),
        (["distill"], "'all_domain_rl' is a step of this run that has not finished"),
        (["all_domain_rl", "oops"], "override 'oops' is not KEY=VALUE"),
    ],
)
def test_a_step_that_cannot_run_stops_the_job_before_any_srun(cluster, args, message):
    env, _ = cluster
    proc = _sbatch(env, PIPELINE, *args)
    assert proc.returncode == 2, proc.stdout
    assert message in " ".join(proc.stderr.split())
    assert not Path(env["FAKE_LOG"]).exists(), "no node was asked for anything"
    assert "+ srun" not in proc.stdout


def test_a_cpu_stack_venv_is_refused(cluster, tmp_path):
    env, _ = cluster
    (Path(env["R1_VENV"]) / "r1-stack").write_text("cpu\n")
    proc = _sbatch(env, PIPELINE, "reasoning_rl")
    assert proc.returncode == 2 and "is not a GPU-stack venv" in proc.stderr


def test_plan_overrides_are_scoped_to_the_step():
    assert slurm.step_overrides("sft", ["max_steps=10", "sft.seed=1"]) == ["sft.max_steps=10", "sft.seed=1"]

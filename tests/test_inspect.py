"""``r1 inspect``: numbers on datasets with known properties, --where/--sample, other formats,
and the HTML report rendered by headless Chromium (Debian's ``chromium``; installed here with
apt-get when missing and possible). The screenshot is saved as
``test-artifacts/inspect_report.png`` for a person to look at.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from pipeline import inspect as inspect_mod
from pipeline import store
from pipeline.cli import app

REPO = Path(__file__).resolve().parents[1]
runner = CliRunner()


def _flat(text: str) -> str:
    return " ".join(text.split())


def _row(
    i: int,
    think: str,
    answer: str,
    domain: str = "math",
    question: str | None = None,
    rewards: dict | None = None,
    source: str = "toy",
) -> dict:
    return {
        "id": f"toy/{i}",
        "data_source": source,
        "domain": domain,
        "messages": [
            {"role": "system", "content": "Think, then answer."},
            {"role": "user", "content": question or f"What is {i} + 1?"},
            {"role": "assistant", "content": f"<think>\n{think}\n</think>\n<answer>{answer}</answer>"},
        ],
        "rewards": json.dumps(rewards or {"accuracy": 1.0, "format": 1.0}),
        "source_model": "toy",
        "meta": json.dumps({"sample_index": 0}),
    }


def known_rows() -> list[dict]:
    """10 rows: 8 clean math; row 8 repeats row 0's prompt and response (an exact duplicate);
    row 9 has mixed-language reasoning, is code, and has accuracy 0.5."""
    rows = [_row(i, f"I add {i} and 1 to get {i + 1}.", str(i + 1)) for i in range(8)]
    rows.append({**_row(0, "I add 0 and 1 to get 1.", "1"), "id": "toy/8"})
    rows.append(
        _row(
            9,
            "First 我们 write the function, then check it.",
            "```python\ndef f(): pass\n```",
            domain="code",
            rewards={"accuracy": 0.5, "format": 1.0},
            source="humaneval",
        )
    )
    return rows


@pytest.fixture
def dataset(tmp_path) -> Path:
    folder = tmp_path / "dataset"
    folder.mkdir()
    pd.DataFrame(known_rows()).to_parquet(folder / "data.parquet")
    return folder


def test_summary_numbers_on_a_known_dataset(dataset):
    s = inspect_mod.inspect(str(dataset), sample=0, tokenizer=None)
    assert s["rows"] == 10 and s["prompts"] == 9
    assert s["per_domain"] == {"math": 9, "code": 1}
    assert s["per_source"] == {"toy": 9, "humaneval": 1}
    q = s["quality"]
    assert q["duplicate"] == pytest.approx(0.1)  # row 8
    assert q["language_mixed"] == pytest.approx(0.1)  # row 9
    assert q["format_valid"] == 1.0 and q["with_think_block"] == 1.0
    assert s["rewards"]["accuracy"]["mean"] == pytest.approx(9.5 / 10)
    assert s["rewards"]["accuracy"]["values"] == {1.0: 9, 0.5: 1}
    assert s["lengths"]["reasoning"]["p50"] > 0 and s["lengths"]["answer"]["max"] > 0
    assert s["length_unit"].startswith(("tokens", "words"))


def test_cli_prints_tables_and_samples_think_apart_from_answer(dataset):
    result = runner.invoke(app, ["inspect", str(dataset), "--sample", "2", "--seed", "1"])
    out = _flat(result.output)
    assert result.exit_code == 0, out
    for needle in (
        "10 rows",
        "rows per domain",
        "rows per data_source",
        "lengths in",
        "format valid",
        "language mixing",
        "duplicate",
        "rewards",
        "accuracy",
    ):
        assert needle in out, needle
    # each printed sample has a `think` panel and a separate `answer` panel
    assert len(re.findall(r"─ think · \d+", result.output)) == 2
    assert len(re.findall(r"─ answer · \d+", result.output)) == 2
    again = runner.invoke(app, ["inspect", str(dataset), "--sample", "2", "--seed", "1"])
    assert again.output.split("inspected in")[0] == result.output.split("inspected in")[0]  # seeded


def test_where_filters_rows(dataset):
    result = runner.invoke(app, ["inspect", str(dataset), "--sample", "0", "--where", 'domain == "code"'])
    out = _flat(result.output)
    assert result.exit_code == 0, out
    assert "1 rows" in out and "humaneval" in out and 'rows where domain == "code"' in out
    low = runner.invoke(app, ["inspect", str(dataset), "--sample", "0", "--where", "reward_accuracy < 1 or duplicate"])
    assert low.exit_code == 0 and "2 rows" in _flat(low.output)


def test_bad_where_lists_the_columns(dataset):
    result = runner.invoke(app, ["inspect", str(dataset), "--where", "nonsense_column > 1"])
    out = _flat(result.output)
    assert result.exit_code == 2
    assert "--where" in out and "reward_accuracy" in out and "language_mixed" in out


def test_plain_messages_jsonl_and_save_to_disk_folder(tmp_path):
    import datasets

    rows = [
        {"messages": [{"role": "user", "content": f"Say {w}."}, {"role": "assistant", "content": f"{w}!"}]}
        for w in ("hi", "bye", "yes")
    ]
    path = tmp_path / "chat.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    s = inspect_mod.inspect(str(path), sample=1)
    assert s["rows"] == 3 and s["per_source"] == {"chat": 3} and s["per_domain"] == {"general": 3}
    assert s["quality"]["with_think_block"] == 0.0 and s["rewards"] == {}
    # a `save_to_disk` folder (what a hub dataset looks like offline), messages as JSON text
    folder = tmp_path / "hub_copy"
    datasets.Dataset.from_list([{"messages": json.dumps(r["messages"])} for r in rows]).save_to_disk(str(folder))
    assert inspect_mod.inspect(str(folder), sample=0)["rows"] == 3


def test_missing_dataset_and_unloadable_hub_name(tmp_path, monkeypatch):
    import datasets
    import huggingface_hub

    missing = runner.invoke(app, ["inspect", str(tmp_path / "nothing")])
    assert missing.exit_code == 2 and "no dataset at" in _flat(missing.output)
    # datasets read HF_HUB_OFFLINE when first imported (maybe before conftest set it): force it,
    # so the lookup fails at once instead of waiting for network timeouts.
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    hub = runner.invoke(app, ["inspect", "no-such-owner/no-such-dataset"])
    assert hub.exit_code == 2 and "hub dataset" in _flat(hub.output)


def test_step_name_shows_the_funnel_from_the_card(dataset, tmp_path, monkeypatch):
    monkeypatch.setenv("R1_HOME", str(tmp_path / "home"))
    step = store.runs_root() / "demo" / "rejection_sampling"
    shutil.copytree(dataset, step / "dataset")
    funnel = [
        {"filter": "incorrect", "dropped": 30, "remaining": 20},
        {"filter": "language_mixing", "dropped": 10, "remaining": 10},
    ]
    (step / "dataset" / "card.json").write_text(
        json.dumps(
            {
                "source_model": "reasoning_rl",
                "sampled": 50,
                "funnel": funnel,
                "kept_sampled": 10,
                "sampling": {"num_samples": 8, "temperature": 0.8, "top_p": 0.95, "max_tokens": 160},
            }
        )
    )
    result = runner.invoke(app, ["inspect", "rejection_sampling", "--run", "demo", "--sample", "0"])
    out = _flat(result.output)
    assert result.exit_code == 0, out
    assert "acceptance by filter" in out and "language_mixing" in out and "reasoning_rl" in out


def test_inspect_of_a_thousand_rows_is_fast(tmp_path):
    rows = [
        _row(
            i,
            f"Step one: take {i}. Step two: add one, giving {i + 1}. " * 6,
            str(i + 1),
            question=f"What is {i} + 1? Think about it." if i % 3 else f"Compute {i} plus one.",
        )
        for i in range(1000)
    ]
    path = tmp_path / "big.parquet"
    pd.DataFrame(rows).to_parquet(path)
    # CPU time, not wall time: the test machine is shared (2 cores, parallel jobs), and the
    # budget (10 s) is about our work, not about waiting for a core.
    started = time.process_time()
    s = inspect_mod.inspect(str(path), sample=2)
    assert s["rows"] == 1000
    assert time.process_time() - started < 10.0


# ----------------------------------------------------------------------------- HTML in Chromium

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="session")
def chromium() -> str:
    """Path of Debian's chromium; installed with apt-get when missing (as root)."""
    path = shutil.which("chromium")
    if path is None and os.geteuid() == 0 and shutil.which("apt-get"):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-qq"], env=env, capture_output=True, timeout=600)
        subprocess.run(
            ["apt-get", "install", "-y", "-qq", "-o", "DPkg::Lock::Timeout=600", "chromium"],
            env=env,
            capture_output=True,
            timeout=1200,
        )
        path = shutil.which("chromium")
    if path is None:
        pytest.fail("chromium is not installed and could not be installed (apt-get install chromium)")
    return path


def _chromium(binary: str, *args: str) -> subprocess.CompletedProcess:
    with tempfile.TemporaryDirectory() as profile:
        return subprocess.run(
            [binary, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args], capture_output=True, text=True, timeout=120
        )


def test_html_report_renders_tables_images_and_samples(dataset, tmp_path, chromium):
    report = tmp_path / "report.html"
    result = runner.invoke(app, ["inspect", str(dataset), "--sample", "0", "--html", str(report)])
    assert result.exit_code == 0, result.output
    page = report.read_text()
    assert "http://" not in page and "https://" not in page  # self-contained
    assert page.count("data:image/png;base64,") >= 3

    dom = _chromium(chromium, "--virtual-time-budget=5000", "--dump-dom", report.as_uri()).stdout
    assert dom.count("<table") >= 5
    for needle in ("Composition", "data_source", "format valid", "accuracy", "toy/0", "humaneval"):
        assert needle in dom, needle
    images = int(re.search(r'data-images-loaded="(\d+)"', dom).group(1))
    assert images == page.count("data:image/png;base64,")  # every histogram decoded and laid out
    # the sample browser rendered a row, with the reasoning and the answer in separate boxes
    assert 'id="sample-id"' in dom and 'class="box think"' in dom and 'class="box answer"' in dom

    shot = REPO / "test-artifacts" / "inspect_report.png"
    shot.parent.mkdir(exist_ok=True)
    shot.unlink(missing_ok=True)
    _chromium(
        chromium, "--virtual-time-budget=5000", f"--screenshot={shot}", "--window-size=1280,2600", report.as_uri()
    )
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 50_000


def test_a_step_folder_means_its_dataset_and_bad_inputs_fail_early(dataset, tmp_path):
    step = tmp_path / "rejection_sampling"
    shutil.copytree(dataset, step / "dataset")
    # samples.parquet (every sample, rejected ones too) beside dataset/: the folder still means dataset/
    pd.DataFrame(known_rows() * 3).to_parquet(step / "samples.parquet")
    (step / "manifest.json").write_text("{}")
    result = runner.invoke(app, ["inspect", str(step), "--sample", "0"])
    assert result.exit_code == 0 and f"{len(known_rows())} rows" in _flat(result.output), result.output
    # a step folder whose output is not a dataset
    rl = tmp_path / "reasoning_rl"
    (rl / "model").mkdir(parents=True)
    (rl / "manifest.json").write_text("{}")
    (rl / "metrics.jsonl").write_text('{"step": 1, "reward": 0.5}\n')
    result = runner.invoke(app, ["inspect", str(rl)])
    assert result.exit_code != 0 and "without a dataset/ output" in _flat(result.output) and "model" in result.output
    # refused before any work
    assert runner.invoke(app, ["inspect", str(step), "--sample", "-1"]).exit_code == 2
    result = runner.invoke(app, ["inspect", str(step), "--html", str(tmp_path)])
    assert result.exit_code != 0 and "is a folder" in _flat(result.output)


def test_a_broken_card_falls_back_to_the_manifest_with_a_warning(dataset, tmp_path):
    step = tmp_path / "rejection_sampling"
    shutil.copytree(dataset, step / "dataset")
    (step / "dataset" / "card.json").write_text('{"funnel": [1,2\n')
    (step / "manifest.json").write_text(
        json.dumps({"result": {"counts": {"sampled": 50, "kept": 10, "dropped_incorrect": 40}}})
    )
    result = runner.invoke(app, ["inspect", str(step), "--sample", "0"])
    out = _flat(result.output)
    assert result.exit_code == 0, out
    assert "card.json is not valid JSON" in out and "incorrect" in out


def test_unreadable_files_are_named(tmp_path):
    bad_json = tmp_path / "broken.jsonl"
    bad_json.write_text('{"messages": []}\n{bad\n')
    (tmp_path / "empty.parquet").write_bytes(b"")
    (tmp_path / "notes.txt").write_text("hello")
    for path, words in (
        (bad_json, f"{bad_json}:2: not valid JSON"),
        (tmp_path / "empty.parquet", "empty.parquet: not a readable parquet file"),
        (tmp_path / "notes.txt", "notes.txt: not a dataset file"),
    ):
        result = runner.invoke(app, ["inspect", str(path)])
        assert result.exit_code != 0 and words in _flat(result.output), result.output


# ----------------------------------------------------------------------------- duplicates agree with the funnel


@pytest.mark.parametrize("scope", ["prompt", "dataset"])
def test_duplicate_shares_agree_with_the_generate_funnel(scope):
    """``r1 inspect`` flags exactly the samples the generate filters dropped as duplicates (one
    key, ``data.dedupe``). Before, inspect keyed on the user message alone and always per prompt:
    two prompts with one question and different system prompts made a "duplicate" the filters
    had kept, and ``dedupe_scope: dataset`` duplicates across prompts went uncounted."""
    from data.dedupe import prompt_key
    from stages.common.filters import Filters, Sample, funnel, verdicts

    def messages(system: str, user: str, response: str) -> list[dict]:
        return [
            {"role": "system", "content": system},
            {"role": "user", "content": user},
            {"role": "assistant", "content": response},
        ]

    same = (
        "<think>\nTwo plus three is five: adding three to two gives five in total, so the sum is five.\n"
        "</think>\n<answer>5</answer>"
    )
    convs = [
        messages("Be brief.", "What is 2 + 3?", same),
        messages("Be brief.", "What is 2 + 3?", same.replace("\n", "  \n")),  # exact (whitespace)
        messages("Be brief.", "What is 2 + 3?", same.replace("in total", "in all")),  # near (Jaccard 0.87)
        messages("Think step by step.", "What is 2 + 3?", same),  # same question, other prompt
        messages("Be brief.", "What is 7 + 1?", same),  # other question, same response
        messages("Be brief.", "What is 7 + 1?", "<think>\nSeven and one.\n</think>\n<answer>8</answer>"),
    ]
    samples = [
        Sample(prompt_id=f"q{i}", index=0, domain="math", text=c[-1]["content"], prompt_text=prompt_key(c[:-1]))
        for i, c in enumerate(convs)
    ]
    only_dedupe = Filters(
        drop_truncated=False,
        require_correct=False,
        require_format=False,
        language=None,
        max_paragraph_chars=None,
        drop_unexpected_code=False,
        max_per_prompt=None,
        dedupe_scope=scope,
    )
    dropped = {row["filter"]: row["dropped"] for row in funnel(verdicts(samples, only_dedupe))}
    rows = [
        {
            "id": f"q{i}",
            "messages": c,
            "data_source": "toy",
            "domain": "math",
            "rewards": "{}",
            "source_model": "toy",
            "meta": "{}",
        }
        for i, c in enumerate(convs)
    ]
    df, _ = inspect_mod.frame(rows, near_threshold=only_dedupe.near_duplicate_threshold, dedupe_scope=scope)
    assert (int(df["duplicate"].sum()), int(df["near_duplicate"].sum())) == (
        dropped["duplicate"],
        dropped["near_duplicate"],
    )
    assert dropped == (
        {"duplicate": 1, "near_duplicate": 1} if scope == "prompt" else {"duplicate": 3, "near_duplicate": 1}
    ) | {k: 0 for k in dropped if k not in ("duplicate", "near_duplicate")}

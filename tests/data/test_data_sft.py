"""SFT rows (``data.sft``): one reader for every storage, splits respected, bad rows named by
file and line, and the think/answer split."""

from __future__ import annotations

import json

import datasets
import pandas as pd
import pytest

from data.sft import SFTRowError, load_messages, load_sft_rows, read_records, split_response


def _conv(i: int, split: str) -> dict:
    return {
        "id": f"{split}/{i}",
        "messages": [
            {"role": "user", "content": f"{split} question {i}"},
            {"role": "assistant", "content": f"answer {i}"},
        ],
    }


def _users(ds) -> list[str]:
    return [row["messages"][0]["content"] for row in ds]


@pytest.mark.parametrize("layout", ["flat", "hub_snapshot", "jsonl"])
def test_a_folder_with_train_and_test_files_trains_on_train_rows_only(tmp_path, layout):
    """Before: every *.parquet of the folder was read (test rows trained on), and a hub snapshot
    (``data/train-*.parquet``) was "no files"."""
    for split, n in (("train", 3), ("test", 2)):
        rows = [_conv(i, split) for i in range(n)]
        if layout == "flat":
            pd.DataFrame(rows).to_parquet(tmp_path / f"{split}.parquet")
        elif layout == "hub_snapshot":
            (tmp_path / "data").mkdir(exist_ok=True)
            pd.DataFrame(rows).to_parquet(tmp_path / "data" / f"{split}-00000-of-00001.parquet")
        else:
            (tmp_path / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "README.md").write_text("# card")
    assert _users(load_messages(str(tmp_path))) == [f"train question {i}" for i in range(3)]
    assert _users(load_messages(str(tmp_path), split="test")) == [f"test question {i}" for i in range(2)]
    assert [r["id"] for r in load_sft_rows(tmp_path, split="test")] == ["test/0", "test/1"]
    with pytest.raises(ValueError, match="no 'validation' files; splits found: (train, test|test, train)"):
        load_messages(str(tmp_path), split="validation")


def test_a_step_dataset_folder_is_all_train(tmp_path):
    """A generate step's dataset/: data.parquet, card.json and README.md; only the parquet is data."""
    pd.DataFrame([_conv(i, "x") for i in range(4)]).to_parquet(tmp_path / "data.parquet")
    (tmp_path / "card.json").write_text(json.dumps({"funnel": []}))
    (tmp_path / "README.md").write_text("# card")
    assert len(load_messages(str(tmp_path))) == 4
    assert [w for w, _ in read_records(tmp_path)][0] == f"{tmp_path / 'data.parquet'}:1"


def test_save_to_disk_folders_single_and_with_splits(tmp_path):
    """Before: a save_to_disk folder (arrow files) was "no *.parquet or *.jsonl files" for training."""
    single = tmp_path / "single"
    datasets.Dataset.from_list([_conv(i, "s") for i in range(3)]).save_to_disk(str(single))
    assert len(load_messages(str(single))) == 3
    both = tmp_path / "both"
    datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_list([_conv(0, "train")]),
            "test": datasets.Dataset.from_list([_conv(0, "test"), _conv(1, "test")]),
        }
    ).save_to_disk(str(both))
    assert _users(load_messages(str(both))) == ["train question 0"]
    assert len(load_messages(str(both), split="test")) == 2
    with pytest.raises(ValueError, match="no split 'dev'; splits: train, test"):
        load_messages(str(both), split="dev")


@pytest.mark.parametrize(
    "record,words",
    [
        ({"text": "x"}, "no 'messages' column; columns: text"),
        ({"messages": 5}, "field 'messages': expected a non-empty list"),
        ({"messages": "[not json"}, "field 'messages': not valid JSON"),
        ({"messages": [{"content": "hi"}]}, "field 'messages.0': expected {role, content}"),
        ({"messages": [{"role": "user", "content": ["a"]}]}, "field 'messages.0.content': expected text, got list"),
    ],
)
def test_a_bad_row_is_named_by_file_and_line(tmp_path, record, words):
    path = tmp_path / "d.jsonl"
    good = json.dumps(_conv(0, "train"))
    path.write_text(f"{good}\n\n{json.dumps(record)}\n")  # the blank line counts: the bad row is line 3
    with pytest.raises(SFTRowError) as info:
        load_messages(str(path))
    assert str(info.value).startswith(f"{path}:3: ") and words in str(info.value)


def test_a_bad_parquet_row_is_named_by_row(tmp_path):
    path = tmp_path / "d.parquet"
    pd.DataFrame([{"messages": json.dumps(_conv(0, "t")["messages"])}, {"messages": "{}"}]).to_parquet(path)
    with pytest.raises(SFTRowError, match=f"^{path}:2: field 'messages'"):
        load_sft_rows(path)


def test_rows_are_filled_to_the_schema(tmp_path):
    path = tmp_path / "chat.jsonl"
    path.write_text(
        json.dumps({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": None}]}) + "\n"
    )
    (row,) = load_sft_rows(path)
    assert row == {
        "id": "chat/1",
        "messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": ""}],
        "data_source": "chat",
        "domain": "general",
        "rewards": "{}",
        "source_model": "",
        "meta": "{}",
    }


def test_max_rows_is_a_seeded_sample(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps(_conv(i, "t")) + "\n" for i in range(20)))
    a, b = load_messages(str(path), max_rows=5, seed=3), load_messages(str(path), max_rows=5, seed=3)
    assert _users(a) == _users(b) and len(set(_users(a))) == 5 and _users(a) != _users(load_messages(str(path)))[:5]


@pytest.mark.parametrize(
    "text,reasoning,answer",
    [
        ("<think>add 2 and 3</think><answer>5</answer>", "add 2 and 3", "<answer>5</answer>"),  # the R1 layout
        ("5", "", "5"),  # no think block: all answer
        ("<think>still going", "still going", ""),  # cut off inside the reasoning: no answer
        ("add</think>5", "add", "5"),  # the chat template opened <think> in the prompt
        ("<think>a</think>b<think>c</think>d", "a", "d"),  # the answer follows the last close
    ],
)
def test_split_response(text, reasoning, answer):
    assert split_response(text) == (reasoning, answer)

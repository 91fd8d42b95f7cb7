"""Hub source, tested offline: a `save_to_disk` folder and a plain folder of data files."""

import json

import datasets
import pytest

from data import BadRowError, HubSource, validate_prompt_row


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)  # any network access would now fail


RECORDS = [
    {"question": f"Tom has {i} apples and buys 2 more. How many?", "answer": f"{i} + 2\n#### {i + 2}"} for i in range(4)
]


def test_saved_dataset_dict(tmp_path):
    folder = tmp_path / "gsm_like"
    split_of = {"train": RECORDS[:3], "test": RECORDS[3:]}
    datasets.DatasetDict({k: datasets.Dataset.from_list(v) for k, v in split_of.items()}).save_to_disk(folder)
    source = HubSource(
        name=str(folder),
        splits={"train": "train", "test": "test"},
        answer_regex=r"####\s*(.+)",
        data_source="openai/gsm8k",
    )
    rows = source.load().rows
    for row in rows:
        validate_prompt_row(row)
    assert [(r["id"], r["split"], r["answer"]) for r in rows] == [
        (f"{folder}/train/1", "train", "2"),
        (f"{folder}/train/2", "train", "3"),
        (f"{folder}/train/3", "train", "4"),
        (f"{folder}/test/1", "test", "5"),
    ]
    assert {r["data_source"] for r in rows} == {"openai/gsm8k"}
    assert source.load("test").rows == rows[3:]
    assert source.load().rows == rows  # deterministic
    with pytest.raises(ValueError, match="available"):
        HubSource(name=str(folder), splits={"test": "validation"}).load()


def test_plain_data_folder_through_load_dataset(tmp_path):
    folder = tmp_path / "plain"
    folder.mkdir()
    (folder / "train.jsonl").write_text("".join(json.dumps(r | {"split": "junk"}) + "\n" for r in RECORDS))
    source = HubSource(
        name=str(folder),
        limit=2,
        answer_regex=r"####\s*(.+)",
        domain="general",
        load_kwargs={"cache_dir": str(tmp_path / "cache")},
    )
    rows = source.load().rows
    assert [(r["answer"], r["split"], r["domain"]) for r in rows] == [
        ("2", "train", "general"),
        ("3", "train", "general"),
    ]
    assert source.load("test").rows == []  # no test split configured


def test_bad_record_names_dataset_row_and_field(tmp_path):
    folder = tmp_path / "bad"
    datasets.Dataset.from_list([{"problem": "p", "answer": "1"}, {"problem": "", "answer": "2"}]).save_to_disk(folder)
    with pytest.raises(BadRowError, match=r"row 2: field 'problem': empty") as caught:
        HubSource(name=str(folder)).load()
    assert str(folder) in caught.value.where
    loaded = HubSource(name=str(folder), on_bad_row="skip").load()
    assert (len(loaded.rows), loaded.skipped) == (1, 1)

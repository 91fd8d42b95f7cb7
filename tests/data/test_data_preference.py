"""Preference pair rows (data/preference.py): defaults, FILE:LINE errors, the written dataset."""

import json

import pandas as pd
import pytest

from data.preference import PAIR_COLUMNS, PreferenceRowError, read_pairs, write_pairs

GOOD = {"prompt": "Say hi.", "chosen": "Hello! How can I help?", "rejected": "Go away."}


def _jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def test_minimal_rows_get_defaults(tmp_path):
    rows = read_pairs(
        _jsonl(
            tmp_path / "mine.jsonl",
            [GOOD, {**GOOD, "id": "x", "domain": "safety", "prompt": [{"role": "user", "content": "Q?"}]}],
        )
    )
    assert rows[0] == {
        "id": "mine/1",
        "prompt_id": "mine/1",
        "prompt": [{"role": "user", "content": "Say hi."}],
        "chosen": "Hello! How can I help?",
        "rejected": "Go away.",
        "rule": "external",
        "domain": "general",
        "data_source": "mine",
        "meta": "{}",
    }
    assert rows[1]["id"] == "x" and rows[1]["domain"] == "safety"


@pytest.mark.parametrize(
    "bad,field,reason",
    [
        ({"prompt": "Hi", "rejected": "Go away."}, "chosen", "missing or empty"),  # no chosen
        ({**GOOD, "chosen": "   "}, "chosen", "missing or empty"),  # blank chosen
        ({**GOOD, "rejected": "Hello! How can I help? "}, "rejected", "equal to chosen"),  # chosen == rejected
        ({**GOOD, "prompt": ""}, "prompt", "missing or empty"),
        ({**GOOD, "prompt": [{"role": "assistant", "content": "x"}]}, "prompt", "last message must be the user's"),
        ({**GOOD, "domain": "poetry"}, "domain", "not one of"),
        ({**GOOD, "meta": "{not json"}, "meta", "not valid JSON"),
        ({**GOOD, "chosen": [{"role": "user", "content": "x"}]}, "chosen", "assistant"),
    ],
)
def test_bad_jsonl_row_names_file_line_and_field(tmp_path, bad, field, reason):
    path = _jsonl(tmp_path / "pairs.jsonl", [GOOD, "", bad])  # line 2 blank: line numbers are the file's
    with pytest.raises(PreferenceRowError) as err:
        read_pairs(path)
    assert str(err.value).startswith(f"{path}:3: field '{field}': ")
    assert reason in str(err.value)


def test_bad_parquet_row_names_file_and_row(tmp_path):
    path = tmp_path / "pairs.parquet"
    pd.DataFrame([GOOD, GOOD, {**GOOD, "chosen": None}]).assign(id=["a", "b", "c"]).to_parquet(path)
    with pytest.raises(PreferenceRowError, match=rf"^{path}:3: field 'chosen': missing or empty"):
        read_pairs(path)


def test_repeated_id_and_invalid_json(tmp_path):
    with pytest.raises(PreferenceRowError, match=r"pairs.jsonl:2: field 'id': 'a' repeats the row at .*pairs.jsonl:1"):
        read_pairs(_jsonl(tmp_path / "pairs.jsonl", [{**GOOD, "id": "a"}, {**GOOD, "id": "a"}]))
    with pytest.raises(PreferenceRowError, match=r"other.jsonl:1: field '<row>': not valid JSON"):
        read_pairs(_jsonl(tmp_path / "other.jsonl", ["{oops"]))
    with pytest.raises(FileNotFoundError, match="no such file"):
        read_pairs(tmp_path / "absent.jsonl")


def test_written_dataset_reads_back_with_card(tmp_path):
    rows = read_pairs(_jsonl(tmp_path / "in.jsonl", [{**GOOD, "rule": "helpful_vs_refusal"}, {**GOOD, "id": "z"}]))
    folder = write_pairs(rows, tmp_path / "dataset", {"made_by": "by hand"})
    assert read_pairs(folder) == rows
    card = json.loads((folder / "card.json").read_text())
    assert card["pairs"] == 2 and card["counts"]["rule"] == {"external": 1, "helpful_vs_refusal": 1}
    assert "by hand" in (folder / "README.md").read_text()
    assert list(pd.read_parquet(folder / "data.parquet").columns) == list(PAIR_COLUMNS)
    with pytest.raises(PreferenceRowError, match=r"dataset/data.parquet:1: field 'rejected': equal to chosen"):
        write_pairs([{**rows[0], "rejected": rows[0]["chosen"]}], tmp_path / "dataset", {})


def test_r1_inspect_summarises_a_pair_dataset(tmp_path, capsys):
    from pipeline.inspect import inspect

    rows = read_pairs(
        _jsonl(
            tmp_path / "in.jsonl",
            [
                {
                    **GOOD,
                    "rule": "helpful_vs_refusal",
                    "rejected": "I'm sorry, but I can't help with that.",
                    "meta": {"chosen_from": "policy", "rejected_from": "few_shot_refusal"},
                },
                {**GOOD, "id": "b", "rule": "reference_vs_policy"},
            ],
        )
    )
    folder = write_pairs(
        rows,
        tmp_path / "dataset",
        {"funnel": {"helpful_vs_refusal": {"prompts": 3, "with_pairs": 1, "skipped": {"no_refusal": 2}}}},
    )
    summary = inspect(str(folder), sample=1)
    assert summary["pairs"] == 2
    assert summary["per_rule"]["helpful_vs_refusal"]["rejected_refusal"] == 1.0
    assert summary["per_rule"]["helpful_vs_refusal"]["chosen_from"] == {"policy": 1}
    assert summary["funnel"]["helpful_vs_refusal"]["skipped"] == {"no_refusal": 2}
    assert "no_refusal 2" in capsys.readouterr().out
    assert inspect(str(folder), where="rule == 'reference_vs_policy'", sample=0)["pairs"] == 1

"""Local JSONL/parquet source: mapping of simple and full rows, bad rows named or skipped."""

import json

import datasets
import pydantic
import pytest

from data import BadRowError, FileSource, load_prompts_with_report, render_prompt, validate_prompt_row


def write_jsonl(path, records):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return path


def test_simple_rows_are_mapped(tmp_path):
    path = write_jsonl(
        tmp_path / "extra.jsonl",
        [
            {"question": "What is 2 + 2?", "answer": "4"},
            "",  # blank lines are skipped but still counted in row numbers
            {"problem": "What is 3 * 3?", "answer": 9, "id": "p9", "split": "test", "domain": "logic"},
        ],
    )
    rows = FileSource(path=path).load().rows
    for row in rows:
        validate_prompt_row(row)
    assert [(r["id"], r["split"], r["domain"], r["answer"]) for r in rows] == [
        ("file:extra/1", "train", "math", "4"),
        ("p9", "test", "logic", "9"),
    ]
    assert rows[0]["data_source"] == "file:extra" and rows[0]["verification"] == "{}"
    assert rows[0]["prompt"] == render_prompt("What is 2 + 2?")
    assert [r["id"] for r in FileSource(path=path).load("test").rows] == ["p9"]
    assert FileSource(path=path, split="test").load("test").rows[0]["id"] == "file:extra/1"


def test_full_rows_keep_their_fields_and_prompt(tmp_path):
    own_prompt = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a prime."}]
    full = {
        "id": "mine/1",
        "data_source": "mine",
        "domain": "general",
        "prompt": own_prompt,
        "answer": "",
        "verification": {"kind": "judge"},
        "split": "train",
    }
    path = write_jsonl(tmp_path / "full.jsonl", [full])
    [row] = FileSource(path=path).load().rows
    assert row == full | {"verification": '{"kind": "judge"}'}
    [row] = FileSource(path=path).load(template="r1_zero").rows
    assert row["prompt"] == render_prompt("Name a prime.", "r1_zero")


def test_parquet_rows(tmp_path):
    path = tmp_path / "pq.parquet"
    datasets.Dataset.from_list(
        [
            {"question": "1 + 1?", "answer": "2", "extra": 0.5},  # extra columns are ignored
            {"question": "2 + 2?", "answer": "4", "extra": 1.5},
        ]
    ).to_parquet(path)
    rows = FileSource(path=path, split="test", limit=1).load().rows
    assert [(r["id"], r["split"], r["answer"]) for r in rows] == [("file:pq/1", "test", "2")]
    full = tmp_path / "full.parquet"
    datasets.Dataset.from_list(FileSource(path=path).load().rows).to_parquet(full)
    assert [r["prompt"] for r in FileSource(path=full).load().rows] == [
        r["prompt"] for r in FileSource(path=path).load().rows
    ]


def test_answer_regex_and_question_field(tmp_path):
    path = write_jsonl(tmp_path / "gsm.jsonl", [{"q": "Tom has 3 + 4 apples?", "answer": "3 + 4 = 7\n#### 7"}])
    [row] = FileSource(path=path, question_field="q", answer_regex=r"####\s*(.+)").load().rows
    assert row["answer"] == "7"


GOOD = {"question": "q?", "answer": "a"}


@pytest.mark.parametrize(
    ("bad", "field"),
    [
        ({"question": "q?"}, "answer"),  # missing answer
        ({"question": "q?", "answer": ["a"]}, "answer"),  # wrong type
        ({"question": "  ", "answer": "a"}, "question"),  # empty question
        ({"answer": "a"}, "question"),  # no question, problem or prompt
        ({"question": 7, "answer": "a"}, "question"),  # question not a string
        ({"prompt": [], "answer": "a"}, "prompt"),  # empty prompt
        ({"prompt": [{"role": "user"}], "answer": "a"}, "prompt"),  # message without content
        ({"question": "q?", "answer": "a", "domain": "poetry"}, "domain"),  # unknown domain
        ({"question": "q?", "answer": "a", "split": "dev"}, "split"),  # unknown split
        ({"question": "q?", "answer": "a", "verification": "{oops"}, "verification"),  # bad JSON
        ({"question": "q?", "answer": "a", "id": "file:rows/1"}, "id"),  # duplicates row 1's default id
        ("{not json", None),  # unparsable line
        ("[1, 2]", None),  # not an object
    ],
)
def test_bad_row_names_file_row_and_field(tmp_path, bad, field):
    path = write_jsonl(tmp_path / "rows.jsonl", [GOOD, "", bad, GOOD | {"id": "x"}])
    with pytest.raises(BadRowError) as caught:
        FileSource(path=path).load()
    error = caught.value
    assert (error.where, error.row, error.field) == (str(path), 3, field)
    assert str(path) in str(error) and "row 3" in str(error) and (field is None or repr(field) in str(error))
    # With on_bad_row=skip the same file loads, the bad row counted and left out.
    loaded = FileSource(path=path, on_bad_row="skip").load()
    assert (len(loaded.rows), loaded.skipped) == (2, 1)
    assert "row 3" in loaded.skip_reasons[0]


def test_skipped_rows_are_reported_by_load_prompts(tmp_path):
    path = write_jsonl(tmp_path / "mixed.jsonl", [GOOD, {"question": "q"}, {"answer": 1}, GOOD | {"id": "b"}])
    dataset, report = load_prompts_with_report([{"source": "file", "path": str(path), "on_bad_row": "skip"}])
    assert len(dataset) == 2
    assert report.skipped == {f"file:{path}": 2} and report.rows == {f"file:{path}": 2}


def test_config_errors(tmp_path):
    with pytest.raises(pydantic.ValidationError, match="unsupported file type"):
        FileSource(path=tmp_path / "x.csv")
    with pytest.raises(pydantic.ValidationError, match="valid keys"):
        FileSource(path=tmp_path / "x.jsonl", on_bad="skip")
    with pytest.raises(FileNotFoundError, match="x.jsonl"):
        FileSource(path=tmp_path / "x.jsonl").load()

"""Numeric, empty and NaN golds (issue 19, item 6): numbers keep their value as text, golds that
could never be graded are refused with the file and row named."""

import json
import math

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from math_verify import parse, verify

from data import BadRowError, FileSource, PromptRowError, validate_prompt_row
from data.sources.base import gold_text


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_float_golds_have_no_exponent_and_still_verify(tmp_path):
    path = write_jsonl(
        tmp_path / "small.jsonl",
        [
            {"question": "What is 1/100000?", "answer": 0.00001},
            {"question": "What is 10**16?", "answer": 1e16},
            {"question": "Half of 5?", "answer": 2.5},
            {"question": "Two cubed?", "answer": 8},
        ],
    )
    rows = FileSource(path=path).load().rows
    assert [r["answer"] for r in rows] == ["0.00001", "10000000000000000", "2.5", "8"]
    # The point of it: a correct final answer now matches the gold (math-verify, as the accuracy
    # reward runs it); "1e-05" (str of the float) did not.
    assert verify(parse(rows[0]["answer"]), parse("0.00001"))
    assert verify(parse(rows[1]["answer"]), parse("10000000000000000"))
    assert not verify(parse(str(0.00001)), parse("0.00001"))


def test_parquet_float_column_golds(tmp_path):
    path = tmp_path / "golds.parquet"
    pq.write_table(pa.table({"question": ["a?", "b?"], "answer": [0.00001, -2.5e-7]}), path)
    assert [r["answer"] for r in FileSource(path=path).load().rows] == ["0.00001", "-0.00000025"]


def test_gold_text():
    assert [gold_text(x) for x in (1e-05, 1e16, 123456789012345678, 3.0, "1e-05")] == [
        "0.00001",
        "10000000000000000",
        "123456789012345678",
        "3.0",
        "1e-05",
    ]
    with pytest.raises(TypeError, match="bool"):
        gold_text(True)


def test_empty_gold_on_a_math_row_names_file_and_row(tmp_path):
    path = write_jsonl(
        tmp_path / "golds.jsonl", [{"question": "1 + 1?", "answer": "2"}, {"question": "2 + 2?", "answer": "  "}]
    )
    with pytest.raises(BadRowError, match=r"golds.jsonl: row 2: field 'answer': empty gold on a 'math' row") as caught:
        FileSource(path=path).load()
    assert (caught.value.row, caught.value.field) == (2, "answer")


def test_nan_gold_refused_on_math_kept_empty_on_general(tmp_path):
    path = tmp_path / "nan.parquet"
    pq.write_table(pa.table({"question": ["1 + 1?", "Tell me a joke."], "sol": [2.0, math.nan]}), path)
    with pytest.raises(BadRowError, match=r"nan.parquet: row 2: field 'sol': is NaN"):
        FileSource(path=path, answer_field="sol").load()
    rows = FileSource(path=path, answer_field="sol", domain="general").load().rows
    assert [r["answer"] for r in rows] == ["2.0", ""]
    skipped = FileSource(path=path, answer_field="sol", on_bad_row="skip").load()
    assert (len(skipped.rows), skipped.skipped) == (1, 1)


def row(**changes):
    base = {
        "id": "x/1",
        "data_source": "x",
        "domain": "math",
        "prompt": "q?",
        "answer": "2",
        "verification": "{}",
        "split": "train",
    }
    return base | changes


@pytest.mark.parametrize("answer", ["", " ", "nan", "NaN"])
def test_schema_refuses_ungradable_golds(answer):
    for domain in ("math", "logic"):
        with pytest.raises(PromptRowError) as caught:
            validate_prompt_row(row(domain=domain, answer=answer))
        assert caught.value.field == "answer"
        with pytest.raises(PromptRowError):  # kind "math" is answer matching too
            validate_prompt_row(row(domain=domain, answer=answer, verification='{"kind": "math"}'))


def test_schema_allows_empty_gold_where_it_is_normal():
    for domain in ("code", "general", "safety"):
        validate_prompt_row(row(domain=domain, answer=""))
    # a verification kind with its own checker needs no gold (reasoning-gym propositional_logic)
    entry = json.dumps({"kind": "reasoning_gym", "task": "propositional_logic", "entry": {}})
    validate_prompt_row(row(domain="logic", answer="", verification=entry))
    validate_prompt_row(row(answer="", verification='{"kind": "my_checker"}'))

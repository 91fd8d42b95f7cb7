"""Bad input, generated (hypothesis): every case ends in a clear error naming the file, the row or
key, and the reason, or is accepted; never a traceback.

- **Config files**: every stage config shipped in ``configs/`` mutated at random: unknown keys at
  any depth, wrong types at any key, required keys removed, cross-key conflicts (the checks a
  stage runs across keys), a wrong ``kind``, and YAML text that is not a mapping or not YAML;
  pipeline files with broken steps. Accepted or ``ConfigError`` whose every line starts with the
  file and names a key (or the kind) with a reason.
- **Prompt rows** (``{source: file}``, JSONL and parquet) and **SFT rows** (``data.sft``):
  random records; accepted or ``BadRowError`` / ``SFTRowError`` naming the file and the row.
- **``r1 rewards score`` input**: random JSONL lines through the command itself; exit 0, or
  exit 2 with ``error: FILE:LINE: reason`` and no traceback.
- **Preference pairs** (``data.preference.read_pairs``, JSONL): random records; accepted or
  ``PreferenceRowError`` naming the file, the line and the field.

Examples are derandomized (the same cases in every run); ``CASES`` counts the cases tried and
the last test prints the figures that docs/reliability.md quotes.
"""

from __future__ import annotations

import copy
import json
import string
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import stages
from pipeline.config import ConfigError, read_yaml
from pipeline.runner import load_pipeline, parse_stage_config

REPO = Path(__file__).resolve().parents[1]
SOURCE = "fuzz.yaml"
CONFIGS = sorted(p for p in REPO.glob("configs/*/*/*.yaml") if p.parent.parent.name != "accelerate")
BASES = {str(p.relative_to(REPO)): read_yaml(p) for p in CONFIGS}
CASES: dict[str, int] = {}
SETTINGS = settings(
    max_examples=150,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


def _count(name: str) -> None:
    CASES[name] = CASES.get(name, 0) + 1


# ----------------------------------------------------------------------------- configs

ANY_VALUE = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**6), 10**6),
    st.floats(allow_nan=True),
    st.text(max_size=12),
    st.lists(st.integers(-3, 3), max_size=3),
    st.dictionaries(st.text(string.ascii_lowercase, min_size=1, max_size=5), st.integers(), max_size=2),
)
KEY = st.text(string.ascii_lowercase + "_", min_size=1, max_size=14)


def _paths(node, prefix=()):
    """Every path (tuple of keys / indices) into a nested config, with its value."""
    yield prefix, node
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _paths(v, (*prefix, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _paths(v, (*prefix, i))


def _at(node, path):
    for part in path:
        node = node[part]
    return node


# Cross-key conflicts: each takes a config of its kind and breaks a check that spans keys.
CONFLICTS = {
    "grpo": [
        lambda c: {**c, "num_generations": 3, "per_device_train_batch_size": 4, "gradient_accumulation_steps": 1},
        lambda c: {**c, "epsilon": 0.3, "epsilon_high": 0.1},
        lambda c: {**c, "use_vllm": False, "vllm_mode": "server"},
        lambda c: {**c, "rewards": [c["rewards"][0], c["rewards"][0]]},
        lambda c: {**c, "num_generations": 1},
    ],
    "generate": [
        lambda c: {**c, "mix": [{"dataset": "x.jsonl", "share": 0.6}, {"dataset": "y.jsonl", "share": 0.5}]},
        lambda c: {**c, "rewards": ["format"], "filters": {**c.get("filters", {}), "require_correct": True}},
        lambda c: {**c, "output": "prompts", "rewards": ["format"]},
        lambda c: {**c, "shard_size": 0},
    ],
    "eval": [
        lambda c: {**c, "models": ["a", "b"], "sampling": {"backend": "server", "server_url": "http://x:1"}},
        lambda c: {**c, "pass_k": [0]},
    ],
    "distill": [lambda c: {**c, "student": "some/model", "student_layers": 2}, lambda c: {**c, "student_layers": 0}],
    "preference_pairs": [
        lambda c: {**c, "sampling": {**c["sampling"], "num_samples": 1}, "rules": ["correct_vs_incorrect"]},
        lambda c: {**c, "refusal_samples": 2, "refusal_few_shot": []},
        lambda c: {**c, "rules": []},
    ],
    "reward_model": [
        lambda c: {**c, "eval_share": 1.0},
        lambda c: {**c, "max_steps": -1, "num_train_epochs": 0},
        lambda c: {**c, "warmup_ratio": 1.5},
    ],
    "sft": [
        lambda c: {**c, "max_steps": -1, "num_train_epochs": 0},
        lambda c: {**c, "warmup_ratio": 1.5},
        lambda c: {**c, "report_to": ["wandb", "wandb"]},
    ],
}


@st.composite
def mutated_config(draw):
    name = draw(st.sampled_from(sorted(BASES)))
    config = copy.deepcopy(BASES[name])
    kind = config["kind"]
    how = draw(st.sampled_from(["unknown_key", "wrong_type", "missing", "conflict", "kind"]))
    paths = [p for p, _ in _paths(config) if p]
    if how == "unknown_key":
        parents = [p for p, v in _paths(config) if isinstance(v, dict)]
        parent = _at(config, draw(st.sampled_from(parents)))
        key = draw(KEY.filter(lambda k: k not in parent))
        parent[key] = draw(ANY_VALUE)
    elif how == "wrong_type":
        path = draw(st.sampled_from(paths))
        _at(config, path[:-1])[path[-1]] = draw(ANY_VALUE)
    elif how == "missing":
        keyed = [p for p in paths if isinstance(p[-1], str)]
        path = draw(st.sampled_from(keyed))
        del _at(config, path[:-1])[path[-1]]
    elif how == "conflict":
        config = draw(st.sampled_from(CONFLICTS[kind]))(config)
    else:
        config["kind"] = draw(st.one_of(st.sampled_from([k for k in stages.kinds() if k != kind]), ANY_VALUE))
    return name, how, config


def _clear(message: str, config: dict) -> bool:
    """Every line names the file; the message names a key (or the kind), and says why."""
    lines = message.splitlines()
    named = (
        "key" in message or "kind" in message or any(f"'{k}'" in message or k in message for k, _ in _walk_keys(config))
    )
    return (
        bool(lines)
        and all(line.startswith(SOURCE) for line in lines)
        and named
        and all(len(line) > len(SOURCE) + 10 for line in lines)
    )


def _walk_keys(node):
    for path, value in _paths(node):
        if path and isinstance(path[-1], str):
            yield path[-1], value


@settings(SETTINGS, max_examples=300)
@given(mutated_config())
def test_a_mutated_stage_config_is_accepted_or_a_clear_config_error(case):
    name, how, config = case
    _count(f"stage config ({how})")
    try:
        parse_stage_config(config, SOURCE)
    except ConfigError as err:
        assert _clear(str(err), config), f"{name} ({how}): unclear error: {err}"
    else:
        assert how in ("wrong_type", "unknown_key", "missing", "kind"), f"{name}: conflict {config} was accepted"


@SETTINGS
@given(
    st.one_of(
        st.text(max_size=60),
        st.binary(max_size=60).map(lambda b: b.decode("latin-1")),
        st.lists(st.integers(), max_size=3).map(yaml.safe_dump),
        st.sampled_from(
            [
                "kind: [sft]\n",
                "kind: {a: 1}\n",
                "kind: null\n",
                "- a\n- b\n",
                ": :\n",
                "a: [\n",
                "steps: 3\n",
                "steps: [1, 2]\n",
                "name: x\nrun: y\nsteps: [{name: a}]\n",
                "name: x\nrun: y\nsteps: [{name: a, config_file: nowhere.yaml}]\n",
                "name: x\nrun: y\nsteps: [{name: a, config: {kind: sft}}, {name: a, config: {}}]\n",
            ]
        ),
    )
)
def test_any_file_text_is_a_config_or_a_clear_config_error(tmp_path_factory, text):
    _count("file text (YAML, pipelines)")
    path = tmp_path_factory.mktemp("fz") / SOURCE
    path.write_text(text, encoding="utf-8", errors="surrogateescape")
    try:
        data = read_yaml(path)
        if "kind" in data:
            parse_stage_config(data, str(path))
        else:
            load_pipeline(path)
    except ConfigError as err:
        message = str(err)
        assert str(path) in message.splitlines()[0] and len(message) > len(str(path)) + 10, message


# ----------------------------------------------------------------------------- prompt and SFT rows

JSON_SCALAR = st.one_of(
    st.none(), st.booleans(), st.integers(-(10**20), 10**20), st.floats(allow_nan=False), st.text(max_size=20)
)
JSON = st.recursive(
    JSON_SCALAR,
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=8), inner, max_size=3)),
    max_leaves=8,
)
MESSAGE = st.fixed_dictionaries(
    {
        "role": st.sampled_from(["user", "assistant", "system", 3]),
        "content": st.one_of(st.text(max_size=20), st.none(), st.integers()),
    }
)
PROMPT_RECORD = st.one_of(
    JSON,
    st.fixed_dictionaries(
        {},
        optional={
            "question": JSON,
            "problem": JSON,
            "prompt": st.one_of(JSON, st.lists(MESSAGE)),
            "answer": JSON,
            "id": JSON,
            "domain": JSON,
            "split": JSON,
            "verification": JSON,
            "data_source": JSON,
        },
    ),
    st.fixed_dictionaries(
        {"question": st.text(min_size=1, max_size=30), "answer": st.text(max_size=10)},
        optional={
            "domain": st.sampled_from(["math", "code", "logic", "general", "bio"]),
            "split": st.sampled_from(["train", "test", "dev"]),
        },
    ),
)
LINE = st.one_of(PROMPT_RECORD.map(json.dumps), st.text(max_size=30), st.just(""), st.just('{"question": '))


@SETTINGS
@given(st.lists(LINE, min_size=1, max_size=6))
def test_random_prompt_rows_load_or_name_file_row_and_field(tmp_path_factory, lines):
    from data.sources.files import FileSource
    from data.sources.records import BadRowError

    _count("prompt rows (JSONL)")
    path = tmp_path_factory.mktemp("rows") / "prompts.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8", errors="surrogatepass")
    try:
        FileSource(path=path).load(split=None)
    except BadRowError as err:
        assert str(err).startswith(f"{path}: row {err.row}: ") and 1 <= err.row <= len(lines), err
        assert len(str(err)) > len(str(path)) + 20


@SETTINGS
@given(st.lists(PROMPT_RECORD.filter(lambda r: isinstance(r, dict)), min_size=1, max_size=5))
def test_random_prompt_rows_in_parquet_load_or_name_file_row_and_field(tmp_path_factory, records):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from data.sources.files import FileSource
    from data.sources.records import BadRowError

    _count("prompt rows (parquet)")
    path = tmp_path_factory.mktemp("rows") / "prompts.parquet"
    # parquet columns have one type: each field stored as its JSON text, except plain strings
    flat = [{k: v if isinstance(v, str) or v is None else json.dumps(v) for k, v in r.items()} for r in records]
    keys = sorted({k for r in flat for k in r})
    pq.write_table(
        pa.table(
            {k: pa.array([r.get(k) for r in flat], pa.string()) for k in keys}
            if keys
            else {"empty": pa.array([None] * len(flat), pa.string())}
        ),
        path,
    )
    try:
        FileSource(path=path).load(split=None)
    except BadRowError as err:
        assert str(err).startswith(f"{path}: row {err.row}: ") and 1 <= err.row <= len(records), err


SFT_RECORD = st.one_of(
    JSON,
    st.fixed_dictionaries(
        {"messages": st.one_of(st.lists(MESSAGE, max_size=3), JSON, st.lists(MESSAGE, max_size=2).map(json.dumps))},
        optional={"id": JSON, "rewards": JSON, "meta": JSON, "domain": JSON},
    ),
)


@SETTINGS
@given(st.lists(st.one_of(SFT_RECORD.map(json.dumps), st.text(max_size=20)), min_size=1, max_size=5))
def test_random_sft_rows_load_or_name_file_and_line(tmp_path_factory, lines):
    from data.sft import SFTRowError, load_messages, load_sft_rows

    _count("SFT rows (JSONL)")
    path = tmp_path_factory.mktemp("sft") / "rows.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8", errors="surrogatepass")
    for load in (load_sft_rows, load_messages):
        try:
            load(path)
        except SFTRowError as err:
            assert str(err).startswith(f"{path}:") and str(err).split(":", 2)[1].strip().isdigit(), err
        except (ValueError, FileNotFoundError) as err:  # a file with no row at all is refused by name
            assert str(path) in str(err), err


PAIR_RECORD = st.one_of(
    JSON,
    st.fixed_dictionaries(
        {
            "prompt": st.one_of(st.text(max_size=20), st.lists(MESSAGE, max_size=2), JSON),
            "chosen": st.one_of(st.text(max_size=20), st.lists(MESSAGE, max_size=2), JSON),
            "rejected": st.one_of(st.text(max_size=20), st.lists(MESSAGE, max_size=2), JSON),
        },
        optional={
            "id": JSON,
            "prompt_id": JSON,
            "rule": JSON,
            "domain": st.one_of(JSON, st.sampled_from(["general", "x"])),
            "data_source": JSON,
            "meta": st.one_of(JSON, JSON.map(json.dumps)),
        },
    ),
)


@SETTINGS
@given(st.lists(st.one_of(PAIR_RECORD.map(json.dumps), st.text(max_size=20)), min_size=1, max_size=5))
def test_random_preference_pairs_load_or_name_file_line_and_field(tmp_path_factory, lines):
    from data.preference import PreferenceRowError, read_pairs

    _count("preference pairs (JSONL)")
    path = tmp_path_factory.mktemp("pairs") / "pairs.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8", errors="surrogatepass")
    try:
        read_pairs(path)
    except PreferenceRowError as err:
        assert str(err).startswith(f"{path}:{err.line}: field {err.field!r}: ") and 1 <= err.line <= len(lines), err
        assert len(err.reason) > 5, err


# ----------------------------------------------------------------------------- r1 rewards score

SCORE_ROW = st.one_of(
    JSON,
    st.fixed_dictionaries(
        {},
        optional={
            "completion": st.one_of(JSON, st.lists(MESSAGE, max_size=2)),
            "answer": JSON,
            "prompt": st.one_of(JSON, st.lists(MESSAGE, max_size=2)),
            "verification": JSON,
            "completion_ids": JSON,
        },
    ),
    st.fixed_dictionaries(
        {"completion": st.text(max_size=40), "answer": st.one_of(st.text(max_size=5), st.integers())}
    ),
)


@settings(
    max_examples=60,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(st.lists(st.one_of(SCORE_ROW.map(json.dumps), st.text(max_size=20)), min_size=1, max_size=4))
def test_r1_rewards_score_scores_or_names_file_line_and_reason(tmp_path_factory, lines):
    from typer.testing import CliRunner

    from rewards.cli import app

    _count("r1 rewards score input")
    folder = tmp_path_factory.mktemp("score")
    path = folder / "in.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8", errors="surrogatepass")
    result = CliRunner().invoke(
        app,
        ["score", str(path), "--output", str(folder / "out.jsonl"), "--rewards", "format,accuracy", "--workers", "1"],
    )
    output = result.output + (result.stderr if result.stderr_bytes is not None else "")
    assert result.exception is None or isinstance(result.exception, SystemExit), (lines, result.exception)
    assert result.exit_code in (0, 2), (lines, output)
    assert "Traceback" not in output
    if result.exit_code == 2:  # "error: FILE:LINE: reason" (rich may wrap it: compare without whitespace)
        flat = "".join(output.split())
        assert f"error:{path}:" in flat and flat.split(f"{path}:", 1)[1].split(":", 1)[0].replace("-", "").isdigit(), (
            output
        )
        assert not (folder / "out.jsonl").exists()
    else:
        assert len((folder / "out.jsonl").read_text().splitlines()) == sum(1 for line in lines if line.strip())


def test_zz_fuzz_figures(capsys):
    """The number of generated cases per input kind (docs/reliability.md quotes it)."""
    if not CASES:
        pytest.skip("no fuzz test ran in this session")
    with capsys.disabled():
        print("\nfuzzed inputs: cases tried (all ended accepted or in a clear error; crashes: 0)")
        for name, n in sorted(CASES.items()):
            print(f"  {name:<40} {n:>5}")
        print(f"  {'total':<40} {sum(CASES.values()):>5}")

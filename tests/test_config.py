"""Config parsing and validation: the mistakes users make fail loudly and say what is valid.

Covers ``pipeline.config`` (parse, apply_overrides, frozen models) and the config half of
``pipeline.runner`` (parse_stage_config, load_pipeline, single_step_pipeline), and walks
``configs/`` to validate every shipped YAML with the same code path as ``r1 validate``.
No stage runs here: parsing a config never starts an engine or a trainer.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError
from typer.testing import CliRunner

import stages
from pipeline.config import ConfigError, StrictModel, apply_overrides, deep_merge, parse, read_yaml
from pipeline.runner import PipelineConfig, load_pipeline, parse_stage_config, single_step_pipeline

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"
# accelerate launcher files are accelerate's format, not ours: neither a pipeline nor a stage.
NOT_OURS = {"accelerate"}

GENERATE = {
    "kind": "generate",
    "model": "some-model",
    "prompts": [{"source": "reasoning_gym", "task": "basic_arithmetic", "n_train": 4, "n_test": 0}],
}


def _flat(text: str) -> str:
    """Collapse whitespace (rich wraps long lines at the terminal width)."""
    return " ".join(text.split())


def _write(path: Path, data) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _valid_keys(message: str) -> set[str]:
    """The keys listed after 'valid keys:' on the first line of an error message."""
    tail = message.split("valid keys:", 1)[1].splitlines()[0]
    return {k.strip(" []'") for k in tail.split(",")}


# ----------------------------------------------------------------------------- unknown keys


def test_unknown_top_level_key_names_it_and_lists_valid_keys():
    with pytest.raises(ConfigError) as info:
        parse_stage_config({**GENERATE, "modle": "x"}, "gen.yaml")
    msg = str(info.value)
    assert "gen.yaml" in msg and "'modle'" in msg
    assert _valid_keys(msg) == set(stages.get("generate").Config.model_fields)


def test_unknown_nested_key_names_dotted_path_and_nested_valid_keys():
    with pytest.raises(ConfigError) as info:
        parse_stage_config({**GENERATE, "sampling": {"temprature": 0.5}}, "gen.yaml")
    msg = str(info.value)
    assert "'sampling.temprature'" in msg
    # the valid keys are those of the *sampling* block, not of the stage config
    from stages.common.sampling import SamplingConfig

    assert _valid_keys(msg) == set(SamplingConfig.model_fields)
    assert "temperature" in _valid_keys(msg)


def test_unknown_key_in_filters_block_lists_filter_keys():
    with pytest.raises(ConfigError) as info:
        parse_stage_config({**GENERATE, "filters": {"max_per_promt": 3}}, "gen.yaml")
    assert "'filters.max_per_promt'" in str(info.value)
    assert "max_per_prompt" in _valid_keys(str(info.value))


def test_unknown_key_inside_prompt_source_names_it_and_lists_source_keys():
    bad = {**GENERATE, "prompts": [{"source": "reasoning_gym", "task": "basic_arithmetic", "n_trian": 3}]}
    with pytest.raises(ConfigError) as info:
        parse_stage_config(bad, "gen.yaml")
    msg = str(info.value)
    assert "prompts.0" in msg and "n_trian" in msg
    assert {"n_train", "n_test", "task", "seed"} <= _valid_keys(msg)


def test_unknown_prompt_source_lists_the_valid_sources():
    with pytest.raises(ConfigError) as info:
        parse_stage_config({**GENERATE, "prompts": [{"source": "nosuch"}]}, "gen.yaml")
    msg = str(info.value)
    assert "nosuch" in msg and "prompts.0" in msg
    for source in ("reasoning_gym", "humaneval", "file", "hub"):
        assert source in msg


def test_every_problem_is_reported_at_once():
    with pytest.raises(ConfigError) as info:
        parse_stage_config({**GENERATE, "modle": "x", "shard_size": "lots"}, "gen.yaml")
    lines = str(info.value).splitlines()
    assert len(lines) == 2
    assert any("'modle'" in line for line in lines) and any("'shard_size'" in line for line in lines)


# ----------------------------------------------------------------------------- wrong types


@pytest.mark.parametrize(
    ("override", "key", "expected"),
    [
        ({"shard_size": "lots"}, "'shard_size'", "expected int"),  # top level
        ({"sampling": {"num_samples": "many"}}, "'sampling.num_samples'", "expected int"),  # nested
        ({"filters": {"dedupe": "maybe"}}, "'filters.dedupe'", "expected bool"),  # nested bool
        ({"rewards": 5}, "'rewards'", "expected list[str]"),  # generic type spelled in full
        ({"model": 3}, "'model'", "expected str"),  # no silent int -> str coercion
    ],
)
def test_wrong_type_names_key_and_expected_type(override, key, expected):
    with pytest.raises(ConfigError) as info:
        parse_stage_config({**GENERATE, **override}, "gen.yaml")
    msg = str(info.value)
    assert key in msg and expected in msg, msg


def test_wrong_type_inside_prompt_source_names_key_and_type():
    bad = {**GENERATE, "prompts": [{"source": "reasoning_gym", "task": "basic_arithmetic", "n_train": "many"}]}
    with pytest.raises(ConfigError) as info:
        parse_stage_config(bad, "gen.yaml")
    msg = str(info.value)
    assert "prompts.0" in msg and "n_train" in msg and "integer" in msg


def test_literal_choice_lists_the_allowed_values():
    with pytest.raises(ConfigError) as info:
        parse_stage_config({**GENERATE, "split": "validation"}, "gen.yaml")
    msg = str(info.value)
    assert "'split'" in msg and "'train'" in msg and "'test'" in msg


def test_missing_required_key_is_named():
    with pytest.raises(ConfigError, match=r"missing required key 'model'"):
        parse_stage_config({"kind": "generate", "prompts": GENERATE["prompts"]}, "gen.yaml")


def test_parse_rejects_a_non_mapping():
    with pytest.raises(ConfigError, match="expected a mapping"):
        parse(PipelineConfig, ["not", "a", "mapping"], "p.yaml")


# ----------------------------------------------------------------------------- kinds


def test_missing_kind_lists_valid_kinds():
    with pytest.raises(ConfigError) as info:
        parse_stage_config({"model": "x"}, "noskind.yaml")
    msg = str(info.value)
    assert "noskind.yaml" in msg and "'kind'" in msg
    for kind in stages.kinds():
        assert kind in msg


def test_unknown_kind_lists_valid_kinds():
    with pytest.raises(ConfigError) as info:
        parse_stage_config({"kind": "gpro", "model": "x"}, "k.yaml")
    msg = str(info.value)
    assert "'gpro'" in msg and "valid kinds: " + ", ".join(stages.kinds()) in msg


def test_kinds_registry_is_the_stage_modules():
    """The registry is built from the files of stages/, never kept by hand."""
    on_disk = sorted(p.stem for p in (REPO / "stages").glob("*.py") if not p.stem.startswith("_"))
    assert stages.kinds() == on_disk
    for kind in on_disk:
        module = stages.get(kind)
        assert module.Config.model_fields["kind"].default == kind
        assert callable(module.run)


# ----------------------------------------------------------------------------- pipelines


def _pipeline(tmp_path: Path, steps: list[dict], **top) -> Path:
    return _write(tmp_path / "p.yaml", {"name": "t", "run": "t", **top, "steps": steps})


def _gen_step(name: str, model: str = "some-model") -> dict:
    return {"name": name, "config": {**GENERATE, "model": model}}


def test_load_pipeline_resolves_steps(tmp_path):
    path = _pipeline(
        tmp_path,
        [
            _gen_step("data"),
            {"name": "ev", "config": {"kind": "eval", "models": ["some-model"], "prompts": GENERATE["prompts"]}},
        ],
    )
    p = load_pipeline(path)
    assert [s.name for s in p.steps] == ["data", "ev"]
    assert [s.config.kind for s in p.steps] == ["generate", "eval"]
    assert p.step("ev").config.inputs() == {"models.0": "some-model"}
    with pytest.raises(ConfigError, match=r"no step 'nope'; steps: data, ev"):
        p.step("nope")


def test_duplicate_step_names_fail(tmp_path):
    path = _pipeline(tmp_path, [_gen_step("data"), _gen_step("data")])
    with pytest.raises(ConfigError, match=r"duplicate step name 'data' \(steps.1\)"):
        load_pipeline(path)


def test_input_naming_a_later_step_fails(tmp_path):
    path = _pipeline(tmp_path, [_gen_step("first", model="second"), _gen_step("second")])
    with pytest.raises(ConfigError) as info:
        load_pipeline(path)
    msg = str(info.value)
    assert "step first" in msg and "'model'" in msg and "'second'" in msg and "does not run before it" in msg


def test_input_naming_its_own_step_fails(tmp_path):
    path = _pipeline(tmp_path, [_gen_step("loop", model="loop")])
    with pytest.raises(ConfigError, match="does not run before it"):
        load_pipeline(path)


def test_input_naming_an_earlier_step_is_fine(tmp_path):
    path = _pipeline(tmp_path, [_gen_step("first"), _gen_step("second", model="first")])
    assert load_pipeline(path).step("second").config.model == "first"


def test_unknown_key_in_step_config_names_file_step_and_key(tmp_path):
    step = _gen_step("data")
    step["config"]["sampling"] = {"temprature": 1.0}
    path = _pipeline(tmp_path, [step])
    with pytest.raises(ConfigError) as info:
        load_pipeline(path)
    msg = str(info.value)
    assert str(path) in msg and "step data" in msg and "'sampling.temprature'" in msg
    assert "temperature" in _valid_keys(msg)


def test_unknown_key_in_step_spec_lists_step_keys(tmp_path):
    path = _pipeline(tmp_path, [{**_gen_step("data"), "confg": {}}])
    with pytest.raises(ConfigError) as info:
        load_pipeline(path)
    msg = str(info.value)
    assert "'steps.0.confg'" in msg and _valid_keys(msg) == {"name", "config_file", "config"}


def test_unknown_top_level_pipeline_key(tmp_path):
    path = _pipeline(tmp_path, [_gen_step("data")], sead=1)
    with pytest.raises(ConfigError) as info:
        load_pipeline(path)
    assert "'sead'" in str(info.value) and _valid_keys(str(info.value)) == set(PipelineConfig.model_fields)


def test_step_config_file_is_merged_with_inline_config(tmp_path):
    stage_file = _write(tmp_path / "gen.yaml", {**GENERATE, "shard_size": 7, "seed": 3})
    path = _pipeline(tmp_path, [{"name": "data", "config_file": str(stage_file), "config": {"seed": 9}}])
    cfg = load_pipeline(path).step("data").config
    assert (cfg.shard_size, cfg.seed) == (7, 9)  # file value kept, inline value wins


def test_missing_config_file_names_pipeline_and_step(tmp_path):
    path = _pipeline(tmp_path, [{"name": "zero_rl", "config_file": "configs/nope/missing.yaml"}])
    with pytest.raises(ConfigError) as info:
        load_pipeline(path)
    msg = str(info.value)
    assert "configs/nope/missing.yaml" in msg and "no such config file" in msg
    # which pipeline file and which step point at the missing file
    assert str(path) in msg and "zero_rl" in msg, msg


def test_empty_steps_is_a_config_error_not_a_crash(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("name: t\nrun: t\nsteps:\n")  # a half-written file: `steps` is null
    with pytest.raises(ConfigError, match="steps"):
        load_pipeline(path)


def test_read_yaml_errors_name_the_file(tmp_path):
    with pytest.raises(ConfigError, match="no such config file"):
        read_yaml(tmp_path / "absent.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("kind: [unclosed\n")
    with pytest.raises(ConfigError, match=re.escape(str(bad)) + ": invalid YAML"):
        read_yaml(bad)
    listy = tmp_path / "list.yaml"
    listy.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="expected a mapping"):
        read_yaml(listy)


# ----------------------------------------------------------------------------- overrides


def test_apply_overrides_nested_keys_lists_and_yaml_values():
    data = {"sampling": {"temperature": 0.8, "top_p": 0.95}, "prompts": [{"seed": 1}, {"seed": 2}], "seed": 0}
    out = apply_overrides(
        data,
        [
            "sampling.temperature=0.5",  # nested: sibling keys survive
            "rewards=[accuracy, format]",  # YAML list
            "prompts.1.seed=7",  # index into a list
            "filters.dedupe=false",  # missing intermediate mapping is created; YAML bool
            "seed=3",  # YAML int
            "note=null",  # YAML null
            "name=a=b",  # only the first '=' splits
            "empty=",  # empty value -> empty string
        ],
    )
    assert out["sampling"] == {"temperature": 0.5, "top_p": 0.95}
    assert out["rewards"] == ["accuracy", "format"]
    assert out["prompts"] == [{"seed": 1}, {"seed": 7}]
    assert out["filters"] == {"dedupe": False}
    assert out["seed"] == 3 and out["note"] is None and out["name"] == "a=b" and out["empty"] == ""
    assert data["sampling"]["temperature"] == 0.8 and data["prompts"][1]["seed"] == 2  # input untouched


def test_apply_overrides_replace_whole_list_element():
    out = apply_overrides({"models": ["a", "b"]}, ["models.1=c"])
    assert out["models"] == ["a", "c"]


@pytest.mark.parametrize(
    ("override", "match"),
    [
        ("max_steps", "expected KEY=VALUE"),  # no '='
        ("seed.x=1", "'seed' is not a mapping"),  # scalar in the middle of the path
    ],
)
def test_apply_overrides_malformed(override, match):
    with pytest.raises(ConfigError, match=match) as info:
        apply_overrides({"seed": 0}, [override])
    assert repr(override) in str(info.value)


@pytest.mark.parametrize(
    "override",
    [
        "prompts.3.seed=1",  # index past the end of the list
        "prompts.5=1",  # assignment past the end of the list
        "prompts.seed=1",  # a name where a list index is needed
    ],
)
def test_apply_overrides_bad_list_path_is_a_config_error(override):
    """A typo in a list path must be a ConfigError (exit 2 naming the override), not a traceback."""
    with pytest.raises(ConfigError) as info:
        apply_overrides({"prompts": [{"seed": 0}]}, [override])
    assert repr(override) in str(info.value)


def test_apply_overrides_then_parse_catches_unknown_key():
    data = apply_overrides(GENERATE, ["sampling.temprature=0.1"])
    with pytest.raises(ConfigError, match=r"'sampling.temprature'"):
        parse_stage_config(data, "<--set>")


def test_load_pipeline_step_and_top_level_overrides(tmp_path):
    path = _pipeline(tmp_path, [_gen_step("a"), _gen_step("b")])
    p = load_pipeline(path, ["b.sampling.temperature=0.1", "a.seed=5", "seed=42", "run=other"])
    assert p.config.seed == 42 and p.config.run == "other"
    assert p.step("a").config.seed == 5 and p.step("b").config.seed == 0
    assert p.step("b").config.sampling.temperature == 0.1
    assert p.step("a").config.sampling.temperature != 0.1


def test_load_pipeline_override_with_unknown_key_names_step(tmp_path):
    path = _pipeline(tmp_path, [_gen_step("a")])
    with pytest.raises(ConfigError) as info:
        load_pipeline(path, ["a.sampling.temprature=0.1"])
    assert "step a" in str(info.value) and "'sampling.temprature'" in str(info.value)


def test_single_step_pipeline_applies_overrides(tmp_path):
    stage_file = _write(tmp_path / "gen.yaml", GENERATE)
    p = single_step_pipeline(stage_file, ["seed=11", "sampling.num_samples=2"], run="r")
    assert p.config.run == "r" and [s.name for s in p.steps] == ["generate"]
    cfg = p.steps[0].config
    assert (cfg.seed, cfg.sampling.num_samples) == (11, 2)
    assert single_step_pipeline(stage_file, None, run="r", step="mine").steps[0].name == "mine"
    with pytest.raises(ConfigError, match="'shard_sise'"):
        single_step_pipeline(stage_file, ["shard_sise=3"], run="r")


def test_deep_merge_merges_mappings_and_replaces_the_rest():
    base = {"a": {"x": 1, "y": 2}, "l": [1, 2]}
    out = deep_merge(base, {"a": {"y": 3}, "l": [9]})
    assert out == {"a": {"x": 1, "y": 3}, "l": [9]}
    assert base == {"a": {"x": 1, "y": 2}, "l": [1, 2]}


# ----------------------------------------------------------------------------- frozen


def test_configs_are_frozen():
    cfg = parse_stage_config(GENERATE, "gen.yaml")
    with pytest.raises(ValidationError, match="frozen"):
        cfg.model = "other"
    with pytest.raises(ValidationError, match="frozen"):
        cfg.sampling.temperature = 2.0
    with pytest.raises(ValidationError, match="frozen"):
        cfg.prompts[0].n_train = 1
    pipe = parse(PipelineConfig, {"name": "t", "run": "t", "steps": []})
    with pytest.raises(ValidationError, match="frozen"):
        pipe.seed = 1


def test_strict_model_forbids_extra_and_is_frozen():
    class Small(StrictModel):
        a: int = 0

    with pytest.raises(ConfigError, match=r"unknown key 'b'; valid keys: a"):
        parse(Small, {"b": 1})
    with pytest.raises(ValidationError):
        parse(Small, {}).a = 1


# ----------------------------------------------------------------------------- configs/


def _config_files() -> list[Path]:
    return sorted(p for p in CONFIGS.rglob("*.yaml") if p.relative_to(CONFIGS).parts[0] not in NOT_OURS)


CONFIG_FILES = _config_files()


def _validate(path: Path) -> str:
    """What ``r1 validate`` does with one file; returns 'pipeline' or the stage kind."""
    data = read_yaml(path)
    if "steps" in data:
        load_pipeline(path)
        return "pipeline"
    return parse_stage_config(data, str(path)).kind


def test_config_walk_finds_nested_files():
    rel = [p.relative_to(CONFIGS) for p in CONFIG_FILES]
    assert any(r.parts[0] == "pipeline" for r in rel)
    assert any(len(r.parts) >= 3 for r in rel), "stage configs live in configs/<stage>/<model>/<variant>.yaml"


@pytest.mark.parametrize("path", CONFIG_FILES, ids=[str(p.relative_to(CONFIGS)) for p in CONFIG_FILES])
def test_every_config_validates(path):
    rel = path.relative_to(CONFIGS)
    data = read_yaml(path)
    if rel.parts[0] == "pipeline":
        assert "steps" in data, f"{rel}: a pipeline file needs `steps`"
        assert _validate(path) == "pipeline"
    else:
        assert "kind" in data, f"{rel}: a stage config needs `kind`"
        # configs/<stage>/<model>/<variant>.yaml: the folder says the kind
        assert _validate(path) == rel.parts[0]


@pytest.mark.parametrize("path", CONFIG_FILES, ids=[str(p.relative_to(CONFIGS)) for p in CONFIG_FILES])
def test_every_config_starts_with_its_command(path):
    """Each YAML's first line is the command that runs it (so it can be copied)."""
    rel = path.relative_to(CONFIGS)
    first = path.read_text().splitlines()[0]
    command = "run" if rel.parts[0] == "pipeline" else rel.parts[0].replace("_", "-")  # r1 reward-model
    assert first.startswith("#") and f"r1 {command} configs/{rel}" in first, first


def test_r1_validate_accepts_every_config():
    from pipeline.cli import app

    result = CliRunner().invoke(app, ["validate", *map(str, CONFIG_FILES)])
    out = _flat(result.output)
    assert result.exit_code == 0, out
    assert out.count("ok ") == len(CONFIG_FILES)


def test_r1_validate_rejects_a_bad_file_with_exit_2(tmp_path):
    from pipeline.cli import app

    bad = _write(tmp_path / "bad.yaml", {**GENERATE, "sampling": {"temprature": 0.5}})
    good = _write(tmp_path / "good.yaml", GENERATE)
    result = CliRunner().invoke(app, ["validate", str(good), str(bad)])
    out = _flat(result.output)
    assert result.exit_code == 2
    assert "sampling.temprature" in out and "temperature" in out and "ok" in out

"""Reward models: the reward_model stage on the tiny model, the `reward_model` reward (scope,
domains, normalisation), its vLLM server backend, and how grpo names and resolves them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from conftest import toy_pairs, train_toy_reward_model
from pipeline.config import ConfigError
from pipeline.runner import Resolver, load_pipeline, parse_stage_config
from rewards import get, registry
from rewards import reward_model as rm
from rewards.base import Reward
from stages.reward_model import held_out

PROMPT = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Tell me about apple river stone."}]


def _result(model_dir: Path) -> dict:
    return json.loads((model_dir.parent / "result.json").read_text())


# ----------------------------------------------------------------------------- the stage


def test_tiny_reward_model_learns_to_rank_held_out_pairs(tiny_reward_model, tiny_model, tmp_path):
    """Trained on separable pairs, the classifier ranks every held-out pair right; trained on
    the same pairs flipped, it ranks them the other way: the ranking comes from training, not
    from the random head (whose start accuracies are complementary)."""
    result = _result(tiny_reward_model)
    assert result["counts"]["pairs_train"] + result["counts"]["pairs_held_out"] == 96
    assert 12 <= result["counts"]["pairs_held_out"] <= 36  # eval_share 0.25 of 96 prompts, hashed
    assert result["counts"]["steps"] == 24
    assert result["metrics"]["held_out_accuracy"] == 1.0
    assert result["metrics"]["held_out_margin_mean"] > 1.0  # logits
    assert result["metrics"]["loss_last"] < result["metrics"]["loss_first"]
    flipped = _result(train_toy_reward_model(tiny_model, tmp_path, flip=True) / "model")
    assert flipped["metrics"]["held_out_accuracy"] == 1.0  # on the flipped held-out pairs
    start, start_flipped = result["metrics"]["held_out_accuracy_start"], flipped["metrics"]["held_out_accuracy_start"]
    assert start + start_flipped == pytest.approx(1.0)  # same init, opposite labels (no ties)
    # scored by the flipped model, the original held-out pairs rank the wrong way round
    test = [p for p in toy_pairs(96) if held_out(p["prompt_id"], 0.25)]
    fn = get("reward_model", model=str(tmp_path / "work" / "model"), domains=[], normalize="none", dtype="float32")
    chosen = fn([p["prompt"] for p in test], [p["chosen"] for p in test])
    rejected = fn([p["prompt"] for p in test], [p["rejected"] for p in test])
    assert len(test) == result["counts"]["pairs_held_out"] and all(c < r for c, r in zip(chosen, rejected))


def test_trainable_layers_trains_only_the_top_layer_norm_and_head(tiny_model, tmp_path):
    """``trainable_layers: 1`` on the 2-layer tiny model: the embeddings and layer 0 come out
    bit-identical to the base, layer 1, the final norm and the score head move, the counts add
    up to the model's parameters, and the frozen model still learns to rank the toy pairs."""
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    work = train_toy_reward_model(tiny_model, tmp_path, trainable_layers=1)
    result = _result(work / "model")
    base = dict(AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32).named_parameters())
    trained = dict(AutoModelForSequenceClassification.from_pretrained(work / "model").named_parameters())
    same = {n for n, p in trained.items() if n in base and torch.equal(p, base[n])}
    assert "model.embed_tokens.weight" in same
    assert all(n in same for n in trained if n.startswith("model.layers.0."))
    assert not any(n in same for n in trained if n.startswith("model.layers.1.") and n.endswith("proj.weight"))
    assert "score.weight" in trained  # new head, trained (not in the causal LM)
    counts = result["counts"]
    assert counts["layers_trainable"] == 1
    total = sum(p.numel() for p in trained.values())
    assert counts["parameters_trainable"] + counts["parameters_frozen"] == total
    layer_1 = sum(p.numel() for n, p in trained.items() if n.startswith("model.layers.1."))
    head_and_norm = trained["score.weight"].numel() + trained["model.norm.weight"].numel()
    assert counts["parameters_trainable"] == layer_1 + head_and_norm
    assert result["metrics"]["held_out_accuracy"] > result["metrics"]["held_out_accuracy_start"]
    assert result["metrics"]["loss_last"] < result["metrics"]["loss_first"]


def test_trainable_layers_unset_keeps_the_config_hash():
    """A key added after steps ran: unset, it leaves the step's identity (and hash) alone."""
    raw = yaml.safe_load((Path(__file__).parents[1] / "configs/reward_model/tiny/smoke.yaml").read_text())
    config = parse_stage_config(raw, "smoke.yaml")
    assert "trainable_layers" not in config.identity()
    assert parse_stage_config({**raw, "trainable_layers": 1}, "smoke.yaml").identity()["trainable_layers"] == 1
    with pytest.raises(ConfigError, match="trainable_layers"):
        parse_stage_config({**raw, "trainable_layers": 0}, "smoke.yaml")


def test_model_folder_is_a_one_logit_sequence_classifier(tiny_reward_model):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(tiny_reward_model)
    tokenizer = AutoTokenizer.from_pretrained(tiny_reward_model)
    assert model.config.num_labels == 1 and model.config.architectures == ["LlamaForSequenceClassification"]
    assert model.config.pad_token_id == tokenizer.pad_token_id is not None
    info = json.loads((tiny_reward_model / rm.INFO_FILE).read_text())
    assert info["scope"] == "answer" and info["calibration"]["from"] == "held-out pairs"
    assert info["calibration"]["std"] > 0 and info["held_out"]["accuracy"] == 1.0
    assert not (tiny_reward_model / "training_args.bin").exists()


def test_stage_config_errors_name_the_key():
    base = {"kind": "reward_model", "dataset": "pairs"}
    assert parse_stage_config(base, "rm.yaml").model == "smollm2-135m-instruct"  # the embedded base by default
    with pytest.raises(ConfigError, match=r"unknown key 'scopes'.*valid keys: .*scope"):
        parse_stage_config({**base, "scopes": "answer"}, "rm.yaml")
    with pytest.raises(ConfigError, match="eval_share must be in"):
        parse_stage_config({**base, "eval_share": 1.0}, "rm.yaml")


def test_no_pair_selected_is_an_error(tmp_path, tiny_model):
    from pipeline.stage import StepContext
    from stages import reward_model

    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps(r) + "\n" for r in toy_pairs(4)))
    config = reward_model.Config(model=str(tiny_model), dataset=str(pairs), rules=["refusal_vs_compliance"])
    ctx = StepContext(run="t", step="rm", run_dir=tmp_path, work_dir=tmp_path, resolver=Resolver(tmp_path, set()))
    with pytest.raises(ValueError, match=r"no pairs of rules \['refusal_vs_compliance'\].* among 4 pairs"):
        reward_model.run(config, ctx)


# ----------------------------------------------------------------------------- the reward


def test_scope_answer_scores_only_the_answer_text(tiny_reward_model):
    answer = "Gladly! apple river stone: great clear."
    texts = [
        f"<think>\nfirst reasoning, awful useless\n</think>\n<answer>{answer}</answer>",
        f"<think>\nother reasoning, great helpful\n</think>\n<answer>{answer}</answer>",
        answer,
    ]  # no reasoning block: the whole text is the answer
    fn = get(
        "reward_model", model=str(tiny_reward_model), scope="answer", domains=[], normalize="none", dtype="float32"
    )
    scores = fn([PROMPT] * 3, texts)
    assert scores[1] == pytest.approx(scores[0], abs=1e-5) and scores[2] == pytest.approx(scores[0], abs=1e-5)
    full = get(
        "reward_model", model=str(tiny_reward_model), scope="full", domains=[], normalize="none", dtype="float32"
    )([PROMPT] * 3, texts)
    assert len(set(full)) == 3  # the reasoning is read too
    _, tokenizer, _ = rm.load(str(tiny_reward_model), "float32")
    ids = rm.encode(tokenizer, PROMPT, texts[0], "answer")
    assert ids == rm.encode(tokenizer, PROMPT, texts[1], "answer") == rm.encode(tokenizer, PROMPT, texts[2], "answer")
    assert tokenizer.decode(ids).endswith(f"<|im_start|>assistant\n{answer}<|im_end|>\n")
    assert "reasoning" not in tokenizer.decode(ids)


def test_none_outside_its_domains_without_loading_a_model():
    fn = get("reward_model", model="/no/such/reward/model", domains=["general", "safety"])
    assert fn([PROMPT] * 2, ["a", "b"], domain=["math", "code"]) == [None, None]
    assert fn([PROMPT], ["a"]) == [None]  # no domain column: not in the domains
    assert fn.stats.none_count == 3


def test_rows_in_and_out_of_domain_and_calibration(tiny_reward_model):
    texts = [
        "<think>\nx\n</think>\n<answer>Gladly! great.</answer>",
        "<think>\nx\n</think>\n<answer>No. awful.</answer>",
    ]
    cols = {"domain": ["general", "math"]}
    raw = get("reward_model", model=str(tiny_reward_model), normalize="none", dtype="float32")
    calibrated = get("reward_model", model=str(tiny_reward_model), dtype="float32")
    info = json.loads((tiny_reward_model / rm.INFO_FILE).read_text())["calibration"]
    r, c = raw([PROMPT] * 2, texts, **cols), calibrated([PROMPT] * 2, texts, **cols)
    assert r[1] is None and c[1] is None
    assert c[0] == pytest.approx((r[0] - info["mean"]) / info["std"])
    both = raw([PROMPT] * 2, texts, domain=["general", "general"])
    assert both[0] > both[1]  # praise over scolding, as trained


def test_calibrated_needs_the_stage_calibration(tmp_path, tiny_reward_model):
    import shutil

    bare = tmp_path / "bare"
    shutil.copytree(tiny_reward_model, bare)
    (bare / rm.INFO_FILE).unlink()
    fn = get("reward_model", model=str(bare), dtype="float32")
    with pytest.raises(ValueError, match="no calibration.*use normalize: none"):
        fn([PROMPT], ["x"], domain=["general"])
    assert get("reward_model", model=str(bare), normalize="none", dtype="float32")([PROMPT], ["x"], domain=["general"])


@pytest.mark.parametrize(
    "params,message",
    [
        ({"scope": "reasoning"}, "scope 'reasoning'; valid values: answer, full"),
        ({"dtype": "bf16"}, "dtype 'bf16'; valid values: auto, bfloat16, float16, float32"),
        ({"normalize": "zscore"}, "normalize 'zscore'; valid values: calibrated, none"),
        ({"backend": "server"}, "needs server_url"),
        ({"batch_size": 0}, "must be >= 1"),
    ],
)
def test_bad_params_fail_at_construction(params, message):
    with pytest.raises(ValueError, match=message):
        get("reward_model", model="m", **params)
    with pytest.raises(TypeError, match="valid parameters: model, scope"):
        get("reward_model", model="m", scopes="answer")


def test_long_inputs_keep_their_last_tokens(tiny_reward_model):
    _, tokenizer, _ = rm.load(str(tiny_reward_model), "float32")
    whole = rm.encode(tokenizer, PROMPT, "word " * 200, "full")
    cut = rm.encode(tokenizer, PROMPT, "word " * 200, "full", max_length=50)
    assert len(cut) == 50 and cut == whole[-50:]


# ----------------------------------------------------------------------------- grpo wiring


def _grpo(rewards: list[dict]) -> dict:
    return {"kind": "grpo", "model": "tiny-random-llama", "prompts": [{"source": "humaneval"}], "rewards": rewards}


def test_grpo_lists_reward_models_as_inputs_and_needs_distinct_labels():
    rewards = [
        {"name": "accuracy"},
        {"name": "reward_model", "params": {"model": "helpfulness_rm", "label": "helpfulness"}},
        {
            "name": "reward_model",
            "params": {"model": "harmlessness_rm", "label": "harmlessness", "scope": "full", "domains": ["safety"]},
        },
    ]
    config = parse_stage_config(_grpo(rewards), "grpo.yaml")
    assert config.inputs() == {
        "model": "tiny-random-llama",
        "rewards.1.model": "helpfulness_rm",
        "rewards.2.model": "harmlessness_rm",
    }
    assert config.input_type("rewards.2.model") == "model" and config.input_type("model") == "model"
    unlabelled = [
        {"name": "reward_model", "params": {"model": "a"}},
        {"name": "reward_model", "params": {"model": "b"}},
    ]
    with pytest.raises(ConfigError, match=r"duplicate names \['reward_model', 'reward_model'\].*distinct `label`"):
        parse_stage_config(_grpo(unlabelled), "grpo.yaml")
    assert registry.log_name("reward_model", rewards[1]["params"]) == "reward_model_helpfulness"
    built = get("reward_model", **rewards[1]["params"])
    assert built.__name__ == "reward_model_helpfulness"


def test_pipeline_orders_reward_model_steps_and_resolves_them(tmp_path):
    rm_step = {"name": "helpfulness_rm", "config": {"kind": "reward_model", "dataset": "pairs.jsonl"}}
    grpo_step = {"name": "rl", "config": _grpo([{"name": "reward_model", "params": {"model": "helpfulness_rm"}}])}
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump({"name": "p", "run": "p", "steps": [grpo_step, rm_step]}))
    with pytest.raises(ConfigError, match="input 'rewards.0.model' names step 'helpfulness_rm', which does not run"):
        load_pipeline(path)
    path.write_text(yaml.safe_dump({"name": "p", "run": "p", "steps": [rm_step, grpo_step]}))
    assert [s.name for s in load_pipeline(path).steps] == ["helpfulness_rm", "rl"]
    # what grpo.run does before building the reward: the step name becomes its model/ folder
    finished = tmp_path / "run" / "helpfulness_rm"
    finished.mkdir(parents=True)
    (finished / "manifest.json").write_text("{}")
    resolver = Resolver(tmp_path / "run", {"helpfulness_rm"})
    params = registry.with_resolved_models("reward_model", {"model": "helpfulness_rm", "scope": "full"}, resolver.model)
    assert params == {"model": str(finished / "model"), "scope": "full"}
    # ... and `dtype` (unset: its default `auto`) becomes what the stage resolves it to on this machine
    seen = []
    params = registry.with_resolved_models(
        "reward_model", {"model": "helpfulness_rm"}, resolver.model, lambda choice: seen.append(choice) or "bfloat16"
    )
    assert params["dtype"] == "bfloat16" and seen == ["auto"]
    params = registry.with_resolved_models("reward_model", {"model": "m", "dtype": "float32"}, str, lambda c: c)
    assert params["dtype"] == "float32"


def test_auto_unresolved_by_a_caller_scores_in_float32(tiny_reward_model):
    import torch

    scorer, _, _ = rm.load(str(tiny_reward_model), "auto")  # r1 rewards score, a script: no stage resolved it
    assert scorer.dtype == "float32" and next(scorer.model.parameters()).dtype == torch.float32


class _Recorder(Reward):
    """Records what it is called with (a stand-in reward reading the conversation)."""

    reads_messages = True

    def __init__(self):
        super().__init__()
        self.__name__ = "recorder"
        self.calls = []

    def __call__(self, prompts, completions, **columns):
        self.calls.append((list(prompts), list(completions)))
        return [0.0] * len(completions)

    def score_batch(self, batch, tally):
        return [0.0] * len(batch)


def test_grpo_hands_a_reward_model_the_messages_and_the_whole_assistant_turn(prefill_think_model):
    """TRL calls the rewards with message-list prompts and completions; a reward model gets the
    messages (an r1_zero string: its question) and the template's <think> prefill + completion,
    what preference_pairs stores and the reward_model stage trains on."""
    from transformers import AutoTokenizer

    from data.prompts import render_prompt
    from stages.common.scoring import AssistantTurns, RenderedPrompts, with_rendered_prompts

    tokenizer = AutoTokenizer.from_pretrained(prefill_think_model)  # its generation prompt ends with <think>\n
    recorder = _Recorder()
    wrapped = with_rendered_prompts(recorder, tokenizer)
    assert isinstance(wrapped, AssistantTurns) and wrapped.__name__ == "recorder"
    assert type(with_rendered_prompts(get("format"), tokenizer)) is RenderedPrompts  # a text reward: rendered
    completion = [{"role": "assistant", "content": "hm\n</think>\n<answer>Hi.</answer>"}]
    r1_zero = render_prompt("Say hi.", "r1_zero")
    wrapped([PROMPT, r1_zero], [completion, "hm</think><answer>Hi.</answer>"])
    prompts, turns = recorder.calls[0]
    assert prompts == [PROMPT, [{"role": "user", "content": "Say hi."}]]
    assert turns[0] == "<think>\nhm\n</think>\n<answer>Hi.</answer>"  # the chat template's prefill, then the completion
    assert turns[1] == "hm</think><answer>Hi.</answer>"  # r1_zero ends with "Assistant:": no prefill


def test_grpo_step_with_a_reward_model_named_by_step(tiny_model, tiny_reward_model, tmp_path):
    """One real GRPO step (HF generate) over math and ShareGPT prompts: the reward model, named
    by its step, is resolved to the step's model/, scores the general rows only, and counts its
    seconds; TRL logs its mean."""
    import shutil

    from pipeline.config import parse, read_yaml
    from pipeline.stage import StepContext
    from stages import grpo

    run_dir = tmp_path / "run"
    (run_dir / "helpfulness_rm").mkdir(parents=True)
    shutil.copytree(tiny_reward_model, run_dir / "helpfulness_rm" / "model")
    (run_dir / "helpfulness_rm" / "manifest.json").write_text("{}")
    raw = read_yaml(Path(__file__).resolve().parents[1] / "configs/grpo/tiny/hf_generate.yaml")
    config = parse(
        grpo.Config,
        {
            **raw,
            "model": str(tiny_model),
            "max_steps": 1,
            "save_steps": 5,
            "max_completion_length": 8,
            "num_generations": 4,
            "per_device_train_batch_size": 8,
            "prompt_order": "stratified",
            "prompts": [
                {"source": "reasoning_gym", "task": "basic_arithmetic", "n_train": 2, "n_test": 0, "seed": 1},
                {"source": "sharegpt", "max_prompt_chars": 200, "limit": 2},
            ],
            "rewards": [
                {"name": "format"},
                {"name": "reward_model", "params": {"model": "helpfulness_rm", "label": "helpfulness"}},
            ],
        },
        "test",
    )
    assert config.inputs()["rewards.1.model"] == "helpfulness_rm"
    work = run_dir / ".partial" / "grpo"
    work.mkdir(parents=True)
    result = grpo.run(
        config,
        StepContext(
            run="t", step="grpo", run_dir=run_dir, work_dir=work, resolver=Resolver(run_dir, {"helpfulness_rm"})
        ),
    )
    assert result.counts["steps"] == 1
    logged = [json.loads(x) for x in (work / "metrics.jsonl").read_text().splitlines()]
    step = next(e for e in logged if "reward" in e)
    assert "rewards/reward_model_helpfulness/mean" in step
    assert step["reward_stats/reward_model_helpfulness/scored"] == 8  # 2 prompts x G=4 (it sees every row)
    assert step["reward_stats/reward_model_helpfulness/none_count"] == 4  # the math rows
    assert step["reward_stats/reward_model_helpfulness/seconds"] > 0

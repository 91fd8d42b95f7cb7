"""Rejection sampling (the ``generate`` stage) and its filters.

Three layers, cheapest first:

- the filter functions of ``stages.common.filters`` on constructed samples (one row per rule);
- the whole stage with a scripted sampler (no model): a prompt set with known duplicates,
  mixed-language reasoning, a contaminated prompt and mixed-in data, checking that each is
  removed and counted in the card, and that the funnel adds up;
- the stage on the tiny random model with vLLM (one engine shared by the runs of this
  module): an interrupted run resumed from its shards gives the same bytes as an
  uninterrupted run.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from data.dedupe import near_duplicate_flags
from pipeline.config import ConfigError
from pipeline.runner import Resolver, parse_stage_config
from pipeline.stage import StepContext
from stages import generate
from stages.common.filters import (
    FILTERS,
    Filters,
    Sample,
    funnel,
    has_code_block,
    is_language_mixed,
    longest_paragraph_chars,
    pass_rate,
    verdicts,
)

GOOD = "<think>\nI add 2 and 3. Two plus three gives five, so the sum is five.\n</think>\n<answer>5</answer>"
OK = {"accuracy": 1.0, "format": 1.0}


def _s(
    text: str = GOOD, prompt: str = "p", index: int = 0, domain: str = "math", rewards: dict | None = None, **kw
) -> Sample:
    return Sample(
        prompt_id=prompt, index=index, domain=domain, text=text, rewards=dict(OK if rewards is None else rewards), **kw
    )


def _one(sample: Sample, **filters) -> str | None:
    return verdicts([sample], Filters(**filters))[0]


# ----------------------------------------------------------------------------- per-sample rules


@pytest.mark.parametrize(
    "sample, filters, expected",
    [
        # a clean, correct, formatted sample survives every default filter
        (_s(), {}, None),
        # stopped at max_tokens: unfinished reasoning
        (_s(truncated=True), {}, "truncated"),
        # ... unless the filter is off
        (_s(truncated=True), {"drop_truncated": False}, None),
        # length limits count generated tokens
        (_s(num_tokens=300), {"max_tokens": 256}, "length"),
        (_s(num_tokens=3), {"min_tokens": 4}, "length"),
        # wrong answer
        (_s(rewards={"accuracy": 0.0, "format": 1.0}), {}, "incorrect"),
        # partial credit (code: 3 of 4 tests) is not correct
        (_s(rewards={"accuracy": 0.75, "format": 1.0}), {}, "incorrect"),
        # unverifiable (accuracy None) dropped by default, kept when configured
        (_s(rewards={"accuracy": None, "format": 1.0}), {}, "unverifiable"),
        (_s(rewards={"accuracy": None, "format": 1.0}), {"keep_unverifiable": True}, None),
        # correctness not required: a wrong answer passes
        (_s(rewards={"accuracy": 0.0, "format": 1.0}), {"require_correct": False}, None),
        # layout broken
        (_s(rewards={"accuracy": 1.0, "format": 0.0}), {}, "bad_format"),
        # Chinese words inside English reasoning: language mixing
        (_s("<think>First add 2 and 3, 然后 检查 the sum is five.</think><answer>5</answer>"), {}, "language_mixing"),
        # ... not judged when the check is off
        (
            _s("<think>First add 2 and 3, 然后 检查 the sum is five.</think><answer>5</answer>"),
            {"language": None},
            None,
        ),
        # a reasoning made of arithmetic only has no words: cannot be judged, kept
        (_s("<think>2+3=5</think><answer>5</answer>"), {}, None),
        # a 2,500-character paragraph
        (_s("<think>" + "add " * 625 + "</think><answer>5</answer>"), {}, "long_paragraph"),
        # the same text in short paragraphs is fine
        (_s("<think>" + "add add add\n\n" * 200 + "</think><answer>5</answer>"), {}, None),
        # a code block in a math answer
        (_s("<think>compute</think><answer>```python\nprint(5)\n```</answer>"), {}, "unexpected_code"),
        # ... is expected in the code domain
        (_s("<think>compute</think><answer>```python\nprint(5)\n```</answer>", domain="code"), {}, None),
    ],
)
def test_per_sample_rules(sample, filters, expected):
    assert _one(sample, **filters) == expected


def test_rule_helpers():
    assert is_language_mixed("<think>Сначала add the numbers then check</think>", "en", 0.95)
    assert not is_language_mixed("<think>Сначала add the numbers then check</think>", "en", 0.5)
    assert longest_paragraph_chars("<think>ab\n\nabcd</think><answer>abcdef</answer>") == 6  # characters
    assert has_code_block("```\nx\n```") and not has_code_block("use `x` inline")
    assert pass_rate([_s(rewards={"accuracy": a}) for a in (1.0, 0.0, None, 1.0)]) == pytest.approx(2 / 3)
    assert pass_rate([_s(rewards={"accuracy": None})]) is None


# ----------------------------------------------------------------------------- duplicates


def test_exact_and_near_duplicates_within_a_prompt():
    near = GOOD.replace("five.", "five!")
    samples = [
        _s(GOOD, index=0),
        _s(GOOD + "  \n", index=1),
        _s(near, index=2),
        _s("<think>Three plus two is five as well.</think><answer>5</answer>", index=3),
        _s(GOOD, prompt="other", index=0),
    ]  # the same text for another prompt is no duplicate
    assert verdicts(samples, Filters(max_per_prompt=None)) == [None, "duplicate", "near_duplicate", None, None]
    assert verdicts(samples, Filters(max_per_prompt=None, near_duplicate_threshold=None)) == [
        None,
        "duplicate",
        None,
        None,
        None,
    ]
    assert verdicts(samples, Filters(max_per_prompt=None, dedupe_scope="dataset"))[4] == "duplicate"
    # two prompt ids with the same question text (generators repeat questions) are one prompt here
    same = [_s(GOOD, prompt="a", prompt_text="Calculate 2 + 3."), _s(GOOD, prompt="b", prompt_text="Calculate 2 + 3.")]
    assert verdicts(same, Filters()) == [None, "duplicate"]


def test_near_duplicates_across_a_large_set_use_minhash_lsh():
    # 70 texts > EXACT_LIMIT: the MinHash LSH path. Every 10th text is a near copy of its predecessor.
    base = [
        f"<think>Problem {i}: we multiply {i} by {i + 7} and check the product carefully.</think>"
        f"<answer>{i * (i + 7)}</answer>"
        for i in range(70)
    ]
    texts = [base[i - 1].replace("carefully", "carefully!") if i % 10 == 9 else base[i] for i in range(70)]
    flags = near_duplicate_flags(texts, 0.85)
    assert [i for i, f in enumerate(flags) if f] == [9, 19, 29, 39, 49, 59, 69]


# ----------------------------------------------------------------------------- prompt-level rules


def test_pass_rate_band_drops_too_easy_and_too_hard_prompts():
    samples = (
        [_s(prompt="easy", index=i) for i in range(4)]
        + [_s(prompt="mid", index=i, rewards={"accuracy": float(i < 2), "format": 1.0}) for i in range(4)]
        + [_s(prompt="hard", index=i, rewards={"accuracy": 0.0, "format": 1.0}) for i in range(4)]
    )
    out = verdicts(
        samples,
        Filters(min_pass_rate=0.1, max_pass_rate=0.9, max_per_prompt=None, dedupe=False, near_duplicate_threshold=None),
    )
    assert out[:4] == ["pass_rate"] * 4  # all correct: too easy
    assert out[4:8] == [None, None, "incorrect", "incorrect"]
    assert out[8:] == ["incorrect"] * 4  # never correct: counted where it first fails


def test_selection_first_best_and_all():
    texts = [
        f"<think>Variant number {w} of a reasoning about five.</think><answer>5</answer>"
        for w in ("one", "two", "three", "four")
    ]
    lang = [0.96, 1.0, 0.97, 0.99]
    samples = [
        _s(t, index=i, rewards={"accuracy": 1.0, "format": 1.0, "language": v})
        for i, (t, v) in enumerate(zip(texts, lang))
    ]
    assert verdicts(samples, Filters(max_per_prompt=2)) == [None, None, "over_max_per_prompt", "over_max_per_prompt"]
    best = verdicts(samples, Filters(max_per_prompt=2, select="best", select_reward="language"))
    assert best == ["over_max_per_prompt", None, "over_max_per_prompt", None]
    assert verdicts(samples, Filters(max_per_prompt=None)) == [None] * 4  # all correct ones


def test_funnel_adds_up_and_names_every_filter():
    v = [None, "truncated", "duplicate", None, "incorrect", "incorrect"]
    rows = funnel(v)
    assert [r["filter"] for r in rows] == list(FILTERS)
    assert sum(r["dropped"] for r in rows) + rows[-1]["remaining"] == len(v)
    assert rows[-1]["remaining"] == 2


# ----------------------------------------------------------------------------- config


BASE = {
    "kind": "generate",
    "model": "m",
    "prompts": [{"source": "reasoning_gym", "task": "basic_arithmetic", "n_train": 4, "n_test": 0}],
}


@pytest.mark.parametrize(
    "extra, message",
    [
        ({"rewards": ["format"]}, "accuracy"),  # require_correct needs the accuracy reward
        ({"filters": {"select": "best", "select_reward": "language"}}, "language"),
        ({"filters": {"min_pass_rate": 0.9, "max_pass_rate": 0.1}}, "min_pass_rate"),
        ({"filters": {"language": "xx"}}, "supported"),
        ({"filters": {"max_per_prompt": 0}}, "max_per_prompt"),
        ({"mix": [{"dataset": "a.jsonl", "share": 0.6}, {"dataset": "b.jsonl", "share": 0.5}]}, "shares"),
    ],
)
def test_invalid_configs_fail_at_parse_time(extra, message):
    with pytest.raises(ConfigError) as info:
        parse_stage_config({**BASE, **extra}, "gen.yaml")
    assert message in str(info.value)


def test_old_filter_fields_still_parse():
    cfg = parse_stage_config(
        {
            **BASE,
            "filters": {
                "drop_truncated": True,
                "require_correct": True,
                "keep_unverifiable": False,
                "require_format": True,
                "dedupe": True,
                "max_per_prompt": 2,
            },
        },
        "gen.yaml",
    )
    assert cfg.filters.max_per_prompt == 2 and generate.FILTER_ORDER == FILTERS


# ----------------------------------------------------------------------------- the stage, scripted sampler


class _Tokenizer:
    """Whitespace 'tokens' (enough for the stage's reasoning/answer counts)."""

    def __call__(self, texts, add_special_tokens=False):
        return {"input_ids": [t.split() for t in texts]}


class ScriptedSampler:
    """Returns fixed completions per question; records which prompt ids it was asked for."""

    def __init__(self, script: dict[str, list]):
        self.script = script
        self.asked: list[str] = []
        self.tokenizer = _Tokenizer()

    def render(self, prompt):
        """The prompt as text (no chat template here: the last message's content)."""
        return prompt if isinstance(prompt, str) else prompt[-1]["content"]

    def sample(self, prompts, ids, texts=None):
        from stages.common.sampling import Completion

        self.asked += ids
        out = []
        for p in prompts:
            question = p[-1]["content"]
            out.append([Completion(t, len(t.split()), trunc) for t, trunc in self.script[question]])
        return out

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        pass


CONTAMINATED = "Please compute the sum of the first ten positive integers exactly."
SCRIPT = {
    "What is 2 + 3?": [
        (GOOD, False),  # kept
        (GOOD, False),  # duplicate
        (GOOD.replace("five.", "five!"), False),  # near_duplicate
        (
            "<think>\nFirst add 2 and 3, 然后 我们 检查 the sum is five.\n</think>\n<answer>5</answer>",
            False,
        ),  # language_mixing
        ("<think>\nTwo plus three is six.\n</think>\n<answer>6</answer>", False),  # incorrect
        ("<think>\nIn code:\n```python\nprint(2 + 3)\n```\n</think>\n<answer>5</answer>", False),  # unexpected_code
        ("<think>\n" + "add " * 600 + "\n</think>\n<answer>5</answer>", False),  # long_paragraph
        ("<answer>5</answer>", False),  # bad_format
        (GOOD.replace("so the", "hence the"), True),  # truncated
    ],
    "Compute 10 minus 4.": [  # always solved: outside the pass-rate band
        ("<think>\nTen minus four leaves six.\n</think>\n<answer>6</answer>", False),
        ("<think>\nCount down four from ten: six.\n</think>\n<answer>6</answer>", False),
    ],
    "What is 7 times 6?": [
        ("<think>\nSeven sixes make forty-two.\n</think>\n<answer>42</answer>", False),  # kept
        ("<think>\nSeven sixes make forty.\n</think>\n<answer>40</answer>", False),  # incorrect
    ],
    "How many apples are there?": [  # a gold that does not parse: unverifiable
        ("<think>\nI count them.\n</think>\n<answer>42</answer>", False),
    ],
}
EXPECTED_DROPS = {
    "truncated": 1,
    "incorrect": 2,
    "unverifiable": 1,
    "bad_format": 1,
    "language_mixing": 1,
    "long_paragraph": 1,
    "unexpected_code": 1,
    "pass_rate": 2,
    "duplicate": 1,
    "near_duplicate": 1,
}


def _jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def _ctx(work: Path) -> StepContext:
    work.mkdir(parents=True, exist_ok=True)
    return StepContext(
        run="t", step="rejection_sampling", run_dir=work.parent, work_dir=work, resolver=Resolver(work.parent, set())
    )


@pytest.fixture(scope="module")
def scripted_run(tmp_path_factory):
    """Run the stage on four prompts (+ one contaminated) with the scripted sampler."""
    tmp_path = tmp_path_factory.mktemp("scripted")
    train = [
        {"id": "q/add", "question": "What is 2 + 3?", "answer": "5"},
        {"id": "q/contaminated", "question": CONTAMINATED, "answer": "55"},
        {"id": "q/sub", "question": "Compute 10 minus 4.", "answer": "6"},
        {"id": "q/mul", "question": "What is 7 times 6?", "answer": "42"},
        {"id": "q/apples", "question": "How many apples are there?", "answer": "forty-two apples"},
    ]
    evals = [
        {
            "id": "e/1",
            "question": "Compute the sum of the first ten positive integers exactly, please.",
            "answer": "55",
            "split": "test",
        }
    ]
    general = [
        {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}
        for q, a in [
            ("Who are you?", "<think>\nIdentity.\n</think>\n<answer>An assistant.</answer>"),
            (
                "Tell me the sum of the first ten positive integers exactly.",
                "<think>\nx\n</think>\n<answer>55</answer>",
            ),
            ("Say hello.", "<think>\nGreeting.\n</think>\n<answer>Hello!</answer>"),
            ("Name a colour.", "<think>\nAny colour.\n</think>\n<answer>Blue.</answer>"),
        ]
    ]
    cfg = parse_stage_config(
        {
            "kind": "generate",
            "model": "scripted",
            "prompts": [{"source": "file", "path": _jsonl(tmp_path / "train.jsonl", train), "domain": "math"}],
            "sampling": {"num_samples": 9},
            "filters": {"max_per_prompt": 2, "max_pass_rate": 0.9},
            "decontaminate": {
                "eval_prompts": [{"source": "file", "path": _jsonl(tmp_path / "eval.jsonl", evals), "domain": "math"}]
            },
            "mix": [
                {"dataset": _jsonl(tmp_path / "general.jsonl", general), "share": 0.5, "data_source": "general_demo"}
            ],
            "shard_size": 2,
        },
        "scripted.yaml",
    )
    sampler = ScriptedSampler(SCRIPT)
    work = tmp_path / "step"
    work.mkdir()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(generate, "open_sampler", lambda *a, **k: sampler)
        result = generate.run(
            cfg, StepContext(run="t", step="rs", run_dir=tmp_path, work_dir=work, resolver=_NoModelResolver(tmp_path))
        )
    return result, work, sampler


class _NoModelResolver(Resolver):
    """The scripted sampler needs no model: pass the reference through."""

    def __init__(self, run_dir):
        super().__init__(run_dir, set())

    def model(self, ref):
        return ref


def test_scripted_run_removes_and_counts_each_problem(scripted_run):
    result, work, sampler = scripted_run
    card = json.loads((work / "dataset" / "card.json").read_text())
    # the contaminated prompt was never sampled, and is counted
    assert "q/contaminated" not in sampler.asked and card["prompts"]["decontaminated"] == 1
    assert card["decontamination"]["removed_ids"] == ["q/contaminated"]
    dropped = {r["filter"]: r["dropped"] for r in card["funnel"] if r["dropped"]}
    assert dropped == EXPECTED_DROPS
    # the funnel adds up to the sampled total
    assert card["sampled"] == 14 == sum(r["dropped"] for r in card["funnel"]) + card["kept_sampled"]
    assert result.counts["kept"] == card["kept_sampled"] == 2
    data = pd.read_parquet(work / "dataset" / "data.parquet")
    kept_texts = [m[-1]["content"] for m in data["messages"]]
    assert GOOD in kept_texts and not any("然后" in t for t in kept_texts)
    assert data["id"].is_unique
    # every sample is in samples.parquet with its verdict
    samples = pd.read_parquet(work / "samples.parquet")
    assert len(samples) == 14 and samples["dropped_by"].isna().sum() == 2
    assert samples.set_index("id").loc["q/add#3", "dropped_by"] == "language_mixing"


def test_scripted_run_mixes_in_extra_data_with_its_share(scripted_run):
    result, work, _ = scripted_run
    card = json.loads((work / "dataset" / "card.json").read_text())
    (mix,) = card["mix"]
    # 2 sampled rows kept, share 0.5 -> 2 mixed rows; the contaminated general row is removed first
    assert mix["decontaminated"] == 1 and mix["available"] == 3 and mix["rows"] == 2
    assert mix["share"] == pytest.approx(0.5)
    assert card["rows"] == 4 and card["per_source"]["general_demo"] == 2
    assert card["per_domain"] == {"general": 2, "math": 2}
    data = pd.read_parquet(work / "dataset" / "data.parquet")
    mixed = data[data["data_source"] == "general_demo"]
    assert all(json.loads(m)["mixed_from"] == "general_demo" for m in mixed["meta"])
    assert not any("ten positive integers" in m[0]["content"] for m in mixed["messages"])


def test_card_says_how_the_data_was_made(scripted_run):
    _, work, _ = scripted_run
    readme = (work / "dataset" / "README.md").read_text()
    for needle in (
        "scripted",
        "9 samples per prompt",
        "temperature",
        "accuracy, format",
        "| language_mixing | 1 |",
        "| duplicate | 1 |",
        "| near_duplicate | 1 |",
        "1 removed by decontamination",
        "general_demo",
        "| math | 2 |",
    ):
        assert needle in readme, needle
    for name in FILTERS:
        assert f"| {name} |" in readme


# ----------------------------------------------------------------------------- the stage on the tiny model (vLLM)

TINY = {
    "kind": "generate",
    "model": "MODEL",
    "prompts": [{"source": "reasoning_gym", "task": "basic_arithmetic", "n_train": 10, "n_test": 0, "seed": 1}],
    "sampling": {
        "backend": "vllm",
        "num_samples": 2,
        "temperature": 1.0,
        "top_p": 1.0,
        "max_tokens": 12,
        "max_model_len": 512,
    },
    "rewards": ["format", "language"],  # no `accuracy`: a random model is never right, and the
    # scripted test above covers it (this keeps the reward worker pool out of this test)
    "filters": {"drop_truncated": False, "require_correct": False, "require_format": False, "max_per_prompt": 2},
    "shard_size": 3,  # 4 shards: 3 + 3 + 3 + 1 prompts
    "seed": 5,
}


@pytest.fixture(scope="module")
def shared_engine(tiny_model):
    """One vLLM engine for every run of this module (starting one costs ~25 s)."""
    from stages.common.sampling import Sampler

    cfg = parse_stage_config({**TINY, "model": str(tiny_model)}, "tiny.yaml")
    with Sampler(str(tiny_model), cfg.sampling, seed=cfg.seed) as sampler:
        yield cfg, sampler


class _Borrowed:
    """The shared engine as a context manager that does not close it."""

    def __init__(self, sampler):
        self.sampler = sampler

    def __enter__(self):
        return self.sampler

    def __exit__(self, *exc):
        pass


def _run_tiny(cfg, sampler, work: Path, monkeypatch):
    monkeypatch.setattr(
        generate,
        "open_sampler",
        lambda path, sampling, seed: (
            _Borrowed(sampler)
            if (sampling, seed) == (cfg.sampling, cfg.seed)
            else pytest.fail("engine settings differ")
        ),
    )
    return generate.run(cfg, _ctx(work))


def test_interrupted_run_resumes_to_the_same_bytes(shared_engine, tmp_path, monkeypatch):
    cfg, sampler = shared_engine
    full = tmp_path / "uninterrupted"
    _run_tiny(cfg, sampler, full, monkeypatch)

    # Interrupt the second run after two shards (Ctrl-C while sampling shard 2).
    calls: list[int] = []
    real = generate._sample_shard

    def interrupting(s, c, rows):
        if len(calls) == 2:
            raise KeyboardInterrupt
        calls.append(len(rows))
        return real(s, c, rows)

    part = tmp_path / "interrupted"
    monkeypatch.setattr(generate, "_sample_shard", interrupting)
    with pytest.raises(KeyboardInterrupt):
        _run_tiny(cfg, sampler, part, monkeypatch)
    assert sorted(p.name for p in (part / "shards").glob("*.parquet")) == ["shard-00000.parquet", "shard-00001.parquet"]
    assert not (part / "dataset").exists()

    # The rerun samples only the two missing shards (3 + 1 prompts).
    resumed: list[int] = []
    monkeypatch.setattr(generate, "_sample_shard", lambda s, c, rows: resumed.append(len(rows)) or real(s, c, rows))
    result = _run_tiny(cfg, sampler, part, monkeypatch)
    assert resumed == [3, 1]

    for name in ("dataset/data.parquet", "dataset/README.md", "dataset/card.json", "samples.parquet"):
        assert (part / name).read_bytes() == (full / name).read_bytes(), name
    samples = pd.read_parquet(part / "samples.parquet")
    assert len(samples) == 10 * 2 and samples["id"].is_unique  # no duplicated rows
    card = json.loads((part / "dataset" / "card.json").read_text())
    assert (
        card["sampled"] == result.counts["sampled"] == sum(r["dropped"] for r in card["funnel"]) + card["kept_sampled"]
    )
    meta = json.loads(pd.read_parquet(part / "dataset" / "data.parquet")["meta"].iloc[0])
    assert {"reasoning_tokens", "answer_tokens", "num_tokens", "truncated"} <= set(meta)


def test_filter_docstring_examples():
    import doctest

    import stages.common.filters

    result = doctest.testmod(stages.common.filters)
    assert result.attempted >= 7 and result.failed == 0


# ----------------------------------------------------------------------------- output: prompts (pass rates)


def test_prompt_pool_records_each_prompts_pass_rate(tmp_path, monkeypatch):
    """`output: prompts` writes the prompt rows with pass rates over their samples: q/add is
    right in the samples that answer 5, q/sub in 2 of 2, q/mul in 1 of 2, and q/apples cannot be
    judged (its gold does not parse)."""
    train = [
        {"id": "q/add", "question": "What is 2 + 3?", "answer": "5"},
        {"id": "q/sub", "question": "Compute 10 minus 4.", "answer": "6"},
        {"id": "q/mul", "question": "What is 7 times 6?", "answer": "42"},
        {"id": "q/apples", "question": "How many apples are there?", "answer": "forty-two apples"},
    ]
    cfg = parse_stage_config(
        {
            "kind": "generate",
            "model": "scripted",
            "output": "prompts",
            "prompts": [{"source": "file", "path": _jsonl(tmp_path / "train.jsonl", train), "domain": "math"}],
            "sampling": {"num_samples": 9},
            "shard_size": 3,
        },
        "pool.yaml",
    )
    monkeypatch.setattr(generate, "open_sampler", lambda *a, **k: ScriptedSampler(SCRIPT))
    work = tmp_path / "step"
    work.mkdir()
    result = generate.run(
        cfg, StepContext(run="t", step="pool", run_dir=tmp_path, work_dir=work, resolver=_NoModelResolver(tmp_path))
    )
    pool = pd.read_parquet(work / "dataset" / "data.parquet").set_index("id")
    correct_add = sum(t.endswith("<answer>5</answer>") for t, _ in SCRIPT["What is 2 + 3?"])
    assert pool.loc["q/add", "pass_rate"] == pytest.approx(correct_add / 9)
    assert pool.loc["q/sub", "pass_rate"] == 1.0 and pool.loc["q/mul", "pass_rate"] == 0.5
    assert pd.isna(pool.loc["q/apples", "pass_rate"]) and pool.loc["q/apples", "pass_samples"] == 0
    assert pool.loc["q/mul", "pass_samples"] == 2
    # the prompt-row schema survives, so GRPO can read the pool as prompts
    from data.schema import PROMPT_COLUMNS, validate_prompt_row

    for row in pd.read_parquet(work / "dataset" / "data.parquet").to_dict("records"):
        validate_prompt_row({k: (list(v) if k == "prompt" else v) for k, v in row.items() if k in PROMPT_COLUMNS})
    card = json.loads((work / "dataset" / "card.json").read_text())
    assert card["histogram"]["1"] == 1 and card["histogram"]["unjudged"] == 1
    assert result.counts["prompts_always_solved"] == 1 and result.counts["rows"] == 4
    assert result.metrics["mean_pass_rate"] == pytest.approx((correct_add / 9 + 1.0 + 0.5) / 3)
    assert "pass_rate" in (work / "dataset" / "README.md").read_text()


@pytest.mark.parametrize(
    "extra, message",
    [
        ({"rewards": ["format"], "filters": {"require_correct": False}}, "accuracy"),
        ({"few_shot": [{"question": "q", "response": "r"}]}, "few_shot"),
    ],
)
def test_prompt_pool_refuses_what_does_not_apply(extra, message):
    with pytest.raises(ConfigError, match=message):
        parse_stage_config(
            {"kind": "generate", "model": "m", "output": "prompts", "prompts": [{"source": "humaneval"}], **extra},
            "pool.yaml",
        )

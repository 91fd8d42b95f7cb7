"""The TRL reward contract, for every registered reward: signature, names, lengths, pickling,
threads and processes."""

import multiprocessing
import pickle
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor

import pytest

from rewards import REGISTRY, get

PROMPTS = ["What is 6*7?", [{"role": "user", "content": "What is 6*7?"}]]
COMPLETIONS = [
    "<think>\nFirst, 6*7 = 42.\n</think>\n<answer>\\boxed{42}</answer>",
    [{"role": "assistant", "content": "<think>\n6*7 is 41?\n</think>\n<answer>41</answer>"}],
]
COLUMNS = {
    "answer": ["42", "42"],
    "verification": ["", "{}"],
    "domain": ["math", "math"],
    "data_source": ["unit", "unit"],
    "id": ["a", "b"],
    "completion_ids": [[1] * 20, [1] * 30],
}


def _call(fn, **extra):
    return fn(PROMPTS, COMPLETIONS, **COLUMNS, **extra)


@pytest.fixture
def build(request):
    """`get(name)` with the parameters a reward cannot do without: `reward_model` gets a tiny
    trained reward model (built once per session) and this batch's domain, so it really scores."""

    def make(name):
        if name == "reward_model":
            model = request.getfixturevalue("tiny_reward_model")
            return get(name, model=str(model), domains=["math"], dtype="float32")
        return get(name)

    return make


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_trl_signature_names_and_values(name, build):
    fn = build(name)
    assert fn.__name__ == name
    logged = []
    scores = _call(fn, trainer_state=object(), log_metric=lambda key, value: logged.append(key), unknown_column=[1, 2])
    assert len(scores) == 2
    assert all(s is None or isinstance(s, float) for s in scores)
    assert f"rewards/{name}/none_frac" in logged
    assert fn.stats.scored == 2


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_wrong_lengths_raise_value_error_naming_the_reward(name, build):
    fn = build(name)
    with pytest.raises(ValueError, match=rf"{name}.*1 prompts but 2 completions"):
        fn(PROMPTS[:1], COMPLETIONS, **COLUMNS)
    with pytest.raises(ValueError, match=rf"{name}.*'answer' has 3 values but there are 2"):
        fn(PROMPTS, COMPLETIONS, **{**COLUMNS, "answer": ["1", "2", "3"]})


def test_known_values_of_the_shared_batch():
    assert _call(get("accuracy")) == [1.0, 0.0]
    assert _call(get("format")) == [1.0, 1.0]
    assert _call(get("reasoning_steps")) == [pytest.approx(1 / 3), 0.0]


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_pickle_roundtrip_keeps_behaviour(name, build):
    fn = build(name)
    before = _call(fn)
    clone = pickle.loads(pickle.dumps(fn))
    assert clone.__name__ == name
    assert _call(clone) == before


def test_rewards_in_worker_threads():
    # math-verify's signal.alarm fails off the main thread; our checks run in worker processes.
    fn = get("accuracy")
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda _: _call(fn), range(8)))
    assert results == [[1.0, 0.0]] * 8
    assert fn.stats.scored == 16


def _score_in_child(fn):
    return _call(fn)


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_rewards_in_worker_processes(method, build):
    fns = [get("accuracy"), get("format"), get("code"), build("reward_model")]
    _call(fns[0])  # start this process's pool first: a forked child must not reuse its pipes
    in_parent = _call(fns[3])  # the reward model is loaded here; a child loads its own copy
    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context(method)) as pool:
        results = list(pool.map(_score_in_child, fns))
    assert results[:3] == [[1.0, 0.0], [1.0, 1.0], [None, None]]
    assert results[3] == pytest.approx(in_parent, abs=1e-5) and all(isinstance(v, float) for v in in_parent)


def test_reward_model_in_worker_threads(build):
    fn = build("reward_model")
    alone = _call(fn)
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda _: _call(fn), range(8)))
    assert all(r == pytest.approx(alone, abs=1e-5) for r in results)


def test_rewards_in_a_daemonic_multiprocessing_pool():
    # multiprocessing.Pool workers are daemonic and may not start multiprocessing children;
    # the reward's workers are plain subprocesses, so this works.
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        assert pool.apply(_score_in_child, (get("accuracy"),)) == [1.0, 0.0]

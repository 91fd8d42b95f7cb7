"""The shared sampler (vLLM offline engine on the CPU): per-prompt seeds and batch independence.

One engine is started for the module (~25 s on 2 cores) and shared by its tests.
"""

from __future__ import annotations

import pytest

from stages.common.sampling import Sampler, SamplingConfig, prompt_seed


@pytest.fixture(scope="module")
def sampler(tiny_model):
    cfg = SamplingConfig(num_samples=3, temperature=1.0, top_p=1.0, max_tokens=8, max_model_len=512)
    with Sampler(str(tiny_model), cfg, seed=7) as s:
        yield s


def _long_prompts(n: int) -> tuple[list, list[str]]:
    # ~220 prompt tokens each: 40 of them exceed vLLM's 4096-token step budget, so without our
    # engine settings some prefills would be chunked across steps.
    filler = " ".join(f"word{i}" for i in range(100))
    prompts = [[{"role": "user", "content": f"Question {i}: {filler}"}] for i in range(n)]
    return prompts, [f"q{i}" for i in range(n)]


def test_prompt_seed_is_stable_and_distinct():
    assert prompt_seed(0, "a") == prompt_seed(0, "a")
    assert prompt_seed(0, "a") != prompt_seed(0, "b")
    assert prompt_seed(0, "a") != prompt_seed(1, "a")
    assert 0 <= prompt_seed(123, "x") < 2**31


def test_big_batch_with_per_prompt_seeds_does_not_crash(sampler):
    """vLLM rolls back a chunked prefill's generator with `set_offset`, which CPU generators
    lack ("CPU Generator does not use offset"). Disabling chunked prefill avoids the rollback;
    with `enable_chunked_prefill=True` this batch raises inside vLLM."""
    prompts, ids = _long_prompts(40)
    outs = sampler.sample(prompts, ids)
    assert len(outs) == 40
    assert all(len(o) == 3 for o in outs)
    assert all(c.num_tokens == 8 or not c.truncated for o in outs for c in o)


def test_samples_do_not_depend_on_batch_composition(sampler):
    """What makes resumed sampling reproduce an uninterrupted run: a prompt's samples depend
    only on (run seed, prompt id), not on which prompts share its batch."""
    prompts, ids = _long_prompts(6)
    together = sampler.sample(prompts, ids)
    alone = sampler.sample(prompts[4:5], ids[4:5])
    assert [c.text for c in together[4]] == [c.text for c in alone[0]]
    # and the k samples of one prompt are not all identical at temperature 1.0
    assert len({c.text for c in together[4]}) > 1


def test_chat_prompts_use_the_chat_template(sampler):
    text = sampler.render([{"role": "user", "content": "hi"}])
    assert text.startswith("<|im_start|>") and text.endswith("<|im_start|>assistant\n")
    assert sampler.render("plain") == "plain"

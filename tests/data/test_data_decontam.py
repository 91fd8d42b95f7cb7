"""8-gram decontamination finds an injected overlap and nothing else."""

from data import decontaminate, load_prompts, ngram_overlap, question_of, render_prompt
from data.decontam import content_ngrams, template_ngrams, word_ngrams

EVAL = "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May."


def test_ngram_overlap_finds_injected_copy():
    train = {
        "clean": "A farmer has 12 cows and buys 7 more cows at the market on Monday morning.",
        # case and punctuation differ
        "copied": "Intro text. NATALIA sold clips to 48 of her friends, in April! More text.",
        "short": "sold clips to 48",  # fewer than 8 words can never match
        "seven": "natalia sold clips to 48 of her",  # 7 shared words: below n
    }
    assert ngram_overlap(train, [EVAL]) == ["copied"]
    assert ngram_overlap(train, [EVAL], n=4) == ["copied", "short", "seven"]
    assert ngram_overlap(train, []) == []


def test_word_ngrams_normalise():
    assert word_ngrams("What is 2+3?", n=2) == {("what", "is"), ("is", "2"), ("2", "3")}
    assert word_ngrams("too short", n=8) == set()


def test_decontaminate_dataset_ignores_shared_template():
    train = load_prompts(
        [{"source": "reasoning_gym", "task": "gsm_symbolic", "n_train": 6, "n_test": 0}], template="r1_zero"
    )
    evaluation = load_prompts(
        [{"source": "reasoning_gym", "task": "gsm_symbolic", "n_train": 0, "n_test": 3}], template="r1_zero"
    )
    kept, removed = decontaminate(train, [evaluation])  # the R1-Zero preamble is shared but not counted
    assert removed == [] and len(kept) == 6
    leaked = evaluation.to_list()[0] | {"id": "leak", "split": "train"}
    leaked["prompt"] = render_prompt("Background. " + leaked["prompt"].split("User: ")[1], "r1_zero")
    kept, removed = decontaminate(train.add_item(leaked), [evaluation])
    assert removed == ["leak"] and len(kept) == 6


def test_instructions_shared_by_many_eval_texts_are_ignored():
    instructions = " Give the result as your final answer and do not include any units."
    evals = [f"Question {w} about apples.{instructions}" for w in ("one", "two", "three")]
    train = {"other": "A different question about pears." + instructions}
    assert ngram_overlap(train, evals) == []  # the instructions are template text
    assert ngram_overlap(train, evals, template_min_texts=None) == ["other"]
    assert ngram_overlap(train, evals[:2]) == ["other"]  # in only 2 eval texts: still counted


def _chain_sum(n_train, n_test, split):
    return load_prompts(
        [{"source": "reasoning_gym", "task": "chain_sum", "n_train": n_train, "n_test": n_test, "seed": 2}], split=split
    )


def test_tiny_eval_set_keeps_the_task(caplog):
    """Issue 19, item 10: 1-2 eval questions used to remove all 40 training prompts (their shared
    instructions could not reach 3 eval texts); the training side shows them as template."""
    train = _chain_sum(40, 0, "train")
    for n_test in (1, 2):
        kept, removed = decontaminate(train, [_chain_sum(40, n_test, "test")])
        assert removed == [] and len(kept) == 40
    assert "removed every prompt" not in caplog.text


def test_tiny_eval_set_still_catches_copies():
    evaluation = _chain_sum(40, 1, "test")
    [question] = [question_of(p) for p in evaluation["prompt"]]
    copy = _chain_sum(40, 0, "train").to_list()[0] | {"id": "copy", "prompt": render_prompt(question)}
    _, removed = decontaminate(_chain_sum(40, 0, "train").add_item(copy), [evaluation])
    assert removed == ["copy"]  # an exact copy: too short for an 8-gram of content
    gsm = load_prompts([{"source": "reasoning_gym", "task": "gsm_symbolic", "n_train": 20, "n_test": 1}])
    train, test = (
        gsm.filter(lambda s: s == "train", input_columns="split"),
        gsm.filter(lambda s: s == "test", input_columns="split"),
    )
    leak = train.to_list()[0] | {"id": "leak", "prompt": render_prompt("Background. " + question_of(test[0]["prompt"]))}
    _, removed = decontaminate(train.add_item(leak), [test])
    # train/11 is the same GSM8K problem as the test question with other names and numbers
    # ("...was preparing for a game night at her house, where she intended to serve..."): caught too.
    assert removed == ["reasoning_gym/gsm_symbolic/seed0/train/11", "leak"]


def test_exact_copy_rule_keeps_symbols():
    assert ngram_overlap({"plus": "Calculate 0 + 4.", "same": "calculate 0  -  4."}, ["Calculate 0 - 4."]) == ["same"]


def test_source_losing_every_prompt_is_a_warning(caplog):
    """Two training questions and one eval question cannot show the template: plain matching
    removes both, and the loss is logged with the source named."""
    kept, removed = decontaminate(_chain_sum(2, 0, "train"), [_chain_sum(2, 1, "test")])
    assert len(removed) == 2 and len(kept) == 0
    assert "removed every prompt of reasoning_gym/chain_sum (2/2)" in caplog.text


def test_content_ngrams_cut_template_words():
    template = {("state", "the", "final", "answer")}
    assert content_ngrams("State the final answer: 1 2 3", template, n=3) == {("1", "2", "3")}
    assert content_ngrams("a b c d", set(), n=4) == {("a", "b", "c", "d")}
    assert template_ngrams([["a b c d x"] * 1 + ["a b c d y", "a b c d z"]], min_texts=3) == {("a", "b", "c", "d")}
    assert template_ngrams([["a b c d x", "a b c d y"]], min_texts=3) == set()

"""8-gram decontamination finds an injected overlap and nothing else."""

from data import decontaminate, load_prompts, ngram_overlap, render_prompt
from data.decontam import word_ngrams

EVAL = "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May."


def test_ngram_overlap_finds_injected_copy():
    train = {
        "clean": "A farmer has 12 cows and buys 7 more cows at the market on Monday morning.",
        "copied": "Intro text. NATALIA sold clips to 48 of her friends, in April! More text.",  # case/punctuation differ
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
    train = load_prompts([{"source": "reasoning_gym", "task": "gsm_symbolic", "n_train": 6, "n_test": 0}],
                         template="r1_zero")
    evaluation = load_prompts([{"source": "reasoning_gym", "task": "gsm_symbolic", "n_train": 0, "n_test": 3}],
                              template="r1_zero")
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

r"""Language consistency of the reasoning (DeepSeek-R1 report, section 2.3.2).

R1 adds to the accuracy reward "the proportion of target language words in the CoT" to stop
the language mixing seen in R1-Zero. Here a *word* is a run of letters; Han, kana, Thai and
similar scripts written without spaces count one word per character. A word is in the target
language when its letters are in the language's script:

- ``en``: ASCII letters only (so "café" or "naïve" do not count: the price of not shipping a
  dictionary); other Latin-script languages (fr, de, es, it, pt, nl, ...) accept any Latin
  letter, so they are not told apart from each other or from English;
- ``zh``: Han; ``ja``: Han, hiragana, katakana; ``ko``: Hangul (and Han); ``ru``/``uk``:
  Cyrillic; ``ar``; ``el``; ``he``; ``hi``; ``th``.

The reasoning is the think block (prefill-aware; the whole completion without one). Fenced
code and LaTeX math (``$...$``, ``\(...\)``, ``\[...\]``) are removed first: they are not
prose in any language. Digits, symbols and punctuation are ignored.
"""

from __future__ import annotations

import re
import unicodedata
from functools import lru_cache

from rewards.base import Batch, Reward
from rewards.registry import register
from rewards.text import reasoning_text, think_prefill

_LATIN_LANGUAGES = ("fr", "de", "es", "it", "pt", "nl", "sv", "da", "no", "fi", "pl", "cs", "tr", "id", "vi")
_SCRIPTS: dict[str, tuple[str, ...]] = {
    "zh": ("CJK",),
    "ja": ("CJK", "HIRAGANA", "KATAKANA"),
    "ko": ("HANGUL", "CJK"),
    "ru": ("CYRILLIC",),
    "uk": ("CYRILLIC",),
    "ar": ("ARABIC",),
    "el": ("GREEK",),
    "he": ("HEBREW",),
    "hi": ("DEVANAGARI",),
    "th": ("THAI",),
    **{lang: ("LATIN",) for lang in _LATIN_LANGUAGES},
}
LANGUAGES = ("en", *sorted(_SCRIPTS))
_PER_CHARACTER_SCRIPTS = {"CJK", "HIRAGANA", "KATAKANA", "THAI"}

_NOT_PROSE = re.compile(r"```.*?(?:```|\Z)|\$\$.*?\$\$|\$[^$\n]*\$|\\\(.*?\\\)|\\\[.*?\\\]", re.DOTALL)
_LETTERS = re.compile(r"[^\W\d_]+")


@lru_cache(maxsize=65536)
def _script(ch: str) -> str:
    name = unicodedata.name(ch, "")
    return name.split(" ", 1)[0] if name else ""


def _words(text: str):
    """Yield (word, script) pairs; per-character scripts yield one pair per character."""
    for match in _LETTERS.finditer(text):
        run = match.group(0)
        start = 0
        current: str | None = _script(run[0])
        for j in range(1, len(run) + 1):
            script = _script(run[j]) if j < len(run) else None
            if script != current or current in _PER_CHARACTER_SCRIPTS:
                piece = run[start:j]
                if current in _PER_CHARACTER_SCRIPTS:
                    yield from ((ch, current) for ch in piece)
                else:
                    yield piece, current
                start, current = j, script


def language_share(text: str, language: str = "en") -> float | None:
    """Share of the words of `text` in `language` (see the module docstring), None if no words.

    >>> language_share("First add the numbers, then check.")
    1.0
    >>> language_share("First 我们 add")
    0.5
    >>> language_share("先计算 then", "zh")
    0.75
    """
    text = _NOT_PROSE.sub(" ", text)
    total = hits = 0
    for word, script in _words(text):
        total += 1
        if language == "en":
            hits += word.isascii()
        else:
            hits += script in _SCRIPTS[language]
    return hits / total if total else None


@register("language")
class LanguageConsistency(Reward):
    """Share of reasoning words in the target `language` (DeepSeek-R1's language-consistency reward); None if no words.

    Counts words (CJK: characters) of the think block, not tokens. Values in [0, 1].
    `language` is one of `rewards.language.LANGUAGES` ("en" by default).

    >>> LanguageConsistency()([""], ["<think>Add 2 and 2, 然后 check.</think><answer>4</answer>"])
    [0.6]

    Raises:
        ValueError: for an unsupported `language` (the message lists the supported ones).
    """

    def __init__(self, language: str = "en") -> None:
        super().__init__()
        if language not in LANGUAGES:
            raise ValueError(f"unsupported language {language!r}; supported: {', '.join(LANGUAGES)}")
        self.language = language

    def score(self, batch: Batch, i: int) -> float | None:
        think_open = bool(think_prefill(batch.prompts[i]))
        return language_share(reasoning_text(batch.completions[i], think_open), self.language)

"""Tokenization shared by papers and filters, so both sides of a match agree.

* Text is folded first (LaTeX accents, Unicode, case, accents): ``Poincar\\'e``,
  ``Poincaré`` and ``POINCARE`` are one token.
* A token is a run of letters and digits (``3d``, ``lora``, ``gpt``); hyphens and
  other punctuation split (``Mixture-of-Experts`` -> ``mixture of experts``), and
  a filter word that splits becomes a phrase, so it still needs its parts in order.
* Each CJK character is a token of its own (there are no spaces to split on);
  a CJK word in a filter is then a phrase of its characters.
* Stems come from the Snowball English stemmer, so ``model``, ``models`` and
  ``modeling`` meet. Tokens with digits are not stemmed (``gpt4``, ``3d``), and an
  all-capitals acronym keeps its plural apart: ``LLMs`` is ``llm``, and so is a
  stemmed ``llms`` or ``LLMS`` (a word without vowels loses its plural "s").
"""

from __future__ import annotations

import re
from functools import lru_cache

import Stemmer

from newsletter.text import fold, latex_to_text

_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff"
_TOKEN_RE = re.compile(rf"[{_CJK}]|[^\W_{_CJK}]+")
# An acronym in capitals with a plural "s": LLMs, GANs, CNNs, VLMs.
_ACRONYM_PLURAL_RE = re.compile(r"\b([A-Z][A-Z0-9]+)s\b")
_STEMMER = Stemmer.Stemmer("english")


def tokens(text: str) -> list[str]:
    """Folded tokens of ``text``, unstemmed: what exact matching and wildcards see."""
    return _TOKEN_RE.findall(fold(_ACRONYM_PLURAL_RE.sub(r"\1", text)))


def surface_tokens(text: str) -> list[tuple[str, str]]:
    """(folded token, the word as written) pairs, for highlighting what matched.

    Each written word is tokenized on its own, so a word that folds to several
    tokens ("GPT-4") maps each of them to the whole word, which is what a
    reader wants to see highlighted anyway. Tokens line up with ``tokens(text)``.
    """
    pairs: list[tuple[str, str]] = []
    for word in text.split():
        pairs.extend(_surface_word(word))
    return pairs


@lru_cache(maxsize=100_000)
def _surface_word(word: str) -> tuple[tuple[str, str], ...]:
    # Cached: most words of an abstract ("the", "model", "we") recur across papers.
    shown = latex_to_text(word).strip(".,;:!?()[]{}\"'“”‘’")
    return tuple((tok, shown) for tok in tokens(word))


_VOWELS = frozenset("aeiouy")


@lru_cache(maxsize=200_000)
def stem(token: str) -> str:
    if any(c.isdigit() for c in token) or not token.isascii():
        return token
    if len(token) > 3 and token[-1] == "s" and _VOWELS.isdisjoint(token):
        # An acronym's plural not written "LLMs" (a filter typed "llms", a title in
        # capitals): the stemmer leaves a word without vowels alone, and "llms" would
        # meet only itself, never the "llm" every "LLMs" is. Three letters are too
        # few to tell: GPS, FPS and DNS are no plurals (and "gp" is Gaussian processes).
        return token[:-1]
    return _STEMMER.stemWord(token)

"""The dedupe key: one paper, one key, however a dump spells its title."""

from __future__ import annotations

import re

from newsletter.text import fold

_NON_WORD_RE = re.compile(r"[\W_]+")


def canonical_key(title: str) -> str:
    """Folded words joined by single spaces.

    "Poincaré ResNet", "Poincar\\'e  ResNet" and "POINCARE RESNET" share a key;
    punctuation and spacing differences between dumps do not split a paper.
    """
    return _NON_WORD_RE.sub(" ", fold(title)).strip()

"""The dedupe key: one paper, one key, however a dump spells its title."""

from __future__ import annotations

import re
import unicodedata

# \'e, \"{o}, \`{a}, \^o, \~n: LaTeX accents as they appear in the dumps.
_LATEX_ACCENT_RE = re.compile(r"""\\['"`^~=.]\{?\\?([A-Za-z])\}?""")
_NON_WORD_RE = re.compile(r"[\W_]+")


def canonical_key(title: str) -> str:
    """Unicode-normalized, accent-free, case-folded words joined by single spaces.

    "Poincaré ResNet", "Poincar\\'e  ResNet" and "POINCARE RESNET" share a key;
    punctuation and spacing differences between dumps do not split a paper.
    """
    text = _LATEX_ACCENT_RE.sub(r"\1", title)
    text = unicodedata.normalize("NFKD", text)
    text = "".join(c for c in text if not unicodedata.combining(c))
    text = unicodedata.normalize("NFKC", text).casefold()
    return _NON_WORD_RE.sub(" ", text).strip()

"""The BM25F an ideal paper reaches for a filter's words: what a topic's lexical score
is a share of (``relevance/score.py``).

Each word saturated (idf x (k1 + 1)); a phrase sums its words' idf; an OR takes its
best branch, an AND adds its parts; NOT, comparisons, metadata and ``*`` score
nothing. ``ceiling`` walks the tree, the plain reference; ``compile_ceiling`` turns
the tree into closures once per filter, with its stems worked out (as ``compile_tree``
does for matching): planning asks for the ceilings of every distinct filter of the
day, and the walk cost a twentieth of its score stage.
"""

from __future__ import annotations

from collections.abc import Callable

from newsletter.filters.ast import And, Node, Or, Phrase, Term
from newsletter.filters.bm25 import K1, CorpusStats
from newsletter.filters.tokens import stem

Idf = Callable[[str], float]  # a stem's idf (``CorpusStats.idf``, perhaps memoized)
Ceiling = Callable[[Idf], float]

_SCORED = (None, "title", "abstract")  # the fields BM25F weighs


def ceiling(node: Node, stats: CorpusStats) -> float:
    """The ceiling of this filter's words (0: it names none)."""
    match node:
        case Term(word=word, field=field) if field in _SCORED:
            return stats.idf(stem(word)) * (K1 + 1)
        case Phrase(words=words, field=field) if field in _SCORED:
            return sum(stats.idf(stem(w)) for w in words) * (K1 + 1)
        case Or(children=children):
            return max(ceiling(c, stats) for c in children)
        case And(children=children):
            return sum(ceiling(c, stats) for c in children)
        case _:  # NOT, comparisons, org:, *: nothing to score
            return 0.0


def compile_ceiling(node: Node) -> Ceiling:
    """``ceiling`` as closures: ``compile_ceiling(node)(stats.idf) == ceiling(node,
    stats)``, the same arithmetic in the same order, bit for bit."""
    match node:
        case Term(word=word, field=field) if field in _SCORED:
            key = stem(word)
            return lambda idf: idf(key) * (K1 + 1)
        case Phrase(words=words, field=field) if field in _SCORED:
            keys = tuple(stem(w) for w in words)
            return lambda idf: sum(map(idf, keys)) * (K1 + 1)
        case Or(children=children):
            branches = [compile_ceiling(c) for c in children]
            return lambda idf: max([b(idf) for b in branches])
        case And(children=children):
            parts = [compile_ceiling(c) for c in children]
            return lambda idf: sum([p(idf) for p in parts])
        case _:
            return lambda idf: 0.0

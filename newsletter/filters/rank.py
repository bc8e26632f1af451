"""Which papers a subscriber gets, best first, and why each one matched.

Score of a paper for a subscriber: relevance, the sum over their filters that
match it of BM25F over each filter's positive words (a title occurrence counts
``TITLE_BOOST`` times an abstract one; rarer words weigh more), raised by at
most ``UPVOTE_BOOST`` for upvotes (logarithmic, capped: popularity reorders
near-equals but never lifts an abstract mention over a title hit). Equal
scores go to more upvotes, then to the fresher paper; with no words to score
(the ``*`` filter) that is exactly: upvotes, then freshness.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

from newsletter.filters.ast import Node, Phrase, Term, positive_leaves
from newsletter.filters.index import K1, TITLE_BOOST, B, DayIndex, anchors, iter_bits
from newsletter.filters.parser import parse_filter
from newsletter.filters.tokens import stem

UPVOTE_BOOST = 0.25  # at most +25%: below what a title hit adds over an abstract one
UPVOTES_FOR_FULL_BOOST = 1000


@dataclass(frozen=True, slots=True)
class CompiledFilter:
    """A stored filter, parsed and analysed once."""

    query: str
    tree: Node
    anchors: frozenset[tuple[str, str]] | None
    leaves: tuple[Term | Phrase, ...]


@lru_cache(maxsize=100_000)
def compile_filter(query: str) -> CompiledFilter:
    """Parse and analyse; raises FilterSyntaxError. Cached: subscribers share filters."""
    tree = parse_filter(query)
    return CompiledFilter(
        query=query,
        tree=tree,
        anchors=anchors(tree),
        leaves=tuple(dict.fromkeys(positive_leaves(tree))),
    )


@dataclass(frozen=True, slots=True)
class PaperMatch:
    index: int  # position in the DayIndex
    paper_id: int
    score: float
    filters: tuple[str, ...]  # the subscriber's filters that matched, as they typed them
    words: tuple[str, ...]  # the words that matched, as the paper writes them


@dataclass(frozen=True, slots=True)
class Ranked:
    matches: tuple[PaperMatch, ...]
    total: int

    @property
    def more(self) -> int:
        return self.total - len(self.matches)


class Ranker:
    """Matches and ranks subscribers' filters against one DayIndex, caching shared work."""

    def __init__(self, index: DayIndex) -> None:
        self.index = index
        self._filter_bits: dict[str, int] = {}
        self._leaf: dict[tuple[Term | Phrase, int], tuple[float, tuple[str, ...]]] = {}

    def filter_bits(self, flt: CompiledFilter) -> int:
        bits = self._filter_bits.get(flt.query)
        if bits is None:
            # Presearch: when none of the words the filter needs occurs, skip evaluating it.
            bits = self.index.evaluate(flt.tree) if self.index.could_match(flt.anchors) else 0
            self._filter_bits[flt.query] = bits
        return bits

    def matching(self, filters: Sequence[CompiledFilter]) -> int:
        """Bitset of the papers any of ``filters`` matches (all papers for no filters)."""
        if not filters:
            return self.index.everything
        bits = 0
        for flt in filters:
            bits |= self.filter_bits(flt)
        return bits

    def leaf(self, leaf: Term | Phrase, i: int) -> tuple[float, tuple[str, ...]]:
        """BM25F score of one word or phrase in paper i, and the words as written."""
        key = (leaf, i)
        cached = self._leaf.get(key)
        if cached is not None:
            return cached
        hits = self.index.leaf_hits(leaf, i)
        if not hits:
            cached = (0.0, ())
        else:
            stats = self.index.stats
            tf = sum((TITLE_BOOST if f == "title" else 1.0) * n for f, n, _ in hits)
            fields = self.index.fields[i]
            length = TITLE_BOOST * len(fields["title"].stems) + len(fields["abstract"].stems)
            words = leaf.words if isinstance(leaf, Phrase) else (leaf.word,)
            idf = sum(stats.idf(stem(w)) for w in words)
            norm = K1 * (1 - B + B * length / stats.avg_len)
            cached = (idf * tf * (K1 + 1) / (tf + norm), tuple(shown for _, _, shown in hits))
        self._leaf[key] = cached
        return cached

    def popularity(self, i: int) -> float:
        """The factor upvotes multiply relevance by: 1 to 1 + UPVOTE_BOOST."""
        upvotes = self.index.papers[i].upvotes or 0
        return 1 + UPVOTE_BOOST * min(1.0, math.log1p(upvotes) / math.log1p(UPVOTES_FOR_FULL_BOOST))

    def rank(
        self, filters: Sequence[CompiledFilter], *, within: int | None = None, limit: int
    ) -> Ranked:
        """Papers matching any filter (restricted to ``within``), best first, at most ``limit``."""
        bits = self.matching(filters)
        if within is not None:
            bits &= within
        found: list[PaperMatch] = []
        for i in iter_bits(bits):
            score = 0.0
            names: list[str] = []
            words: dict[str, None] = {}
            for flt in filters:
                if not (self._filter_bits.get(flt.query, 0) >> i) & 1:
                    continue
                names.append(flt.query)
                for leaf in flt.leaves:
                    leaf_score, shown = self.leaf(leaf, i)
                    score += leaf_score
                    words.update(dict.fromkeys(shown))
            doc = self.index.papers[i]
            score *= self.popularity(i)
            found.append(PaperMatch(i, doc.id, score, tuple(names) or ("*",), tuple(words)))
        papers = self.index.papers
        found.sort(
            key=lambda m: (
                -m.score,
                -(papers[m.index].upvotes or 0),
                -self._seen(m.index),
                m.paper_id,
            )
        )
        return Ranked(matches=tuple(found[:limit]), total=len(found))

    def _seen(self, i: int) -> float:
        seen = self.index.papers[i].first_seen_at
        return seen.timestamp() if seen is not None else 0.0

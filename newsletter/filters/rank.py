"""Which papers a subscriber gets, best first, and why each one matched.

Score of a paper for a subscriber: relevance, the sum over their filters that
match it of BM25F over each filter's positive words (a title occurrence counts
``TITLE_BOOST`` times an abstract one; rarer words weigh more), raised by at
most ``UPVOTE_BOOST`` for upvotes (logarithmic, capped: popularity reorders
near-equals but never lifts an abstract mention over a title hit). Equal
scores go to more upvotes, then to the fresher paper; with no words to score
(the ``*`` filter) that is exactly: upvotes, then freshness. Comparisons and
metadata (``upvotes>=5``, ``author:``, ``category:``, ``has:code``) only narrow the
matches: they are not words, so they score nothing and highlight nothing.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from newsletter.bounded import Bounded
from newsletter.filters.ast import Node, Phrase, Term, positive_leaves
from newsletter.filters.bitsets import iter_bits
from newsletter.filters.bm25 import K1, TITLE_BOOST, B
from newsletter.filters.ceiling import Ceiling, compile_ceiling
from newsletter.filters.index import DayIndex, Evaluator, compile_tree
from newsletter.filters.keys import anchors
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
    run: Evaluator  # the tree as closures: run(index) -> bitset
    ceiling: Ceiling  # its words' ceiling as closures: ceiling(stats.idf) (ceiling.py)


@lru_cache(maxsize=500_000)
def compile_filter(query: str) -> CompiledFilter:
    """Parse and analyse; raises FilterSyntaxError. Cached: subscribers share filters."""
    tree = parse_filter(query)
    return CompiledFilter(
        query=query,
        tree=tree,
        anchors=anchors(tree),
        leaves=tuple(dict.fromkeys(positive_leaves(tree))),
        run=compile_tree(tree),
        ceiling=compile_ceiling(tree),
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
    """Matches and ranks subscribers' filters against one DayIndex, caching shared work.

    Matching is bitsets (see index.py). Ranking is vectors: each distinct
    word or phrase gets its BM25F score for every paper once, each distinct
    filter the sum of its words' vectors, and a subscriber's scores are the
    sum of their filters' vectors, so ranking a subscriber costs a few array
    operations plus sorting their own matches. Explanations are worked out
    only for the papers that make the digest.
    """

    def __init__(self, index: DayIndex) -> None:
        self.index = index
        n = index.n
        self._filter_bits: dict[str, int] = {}
        self._filter_scores = Bounded(4096)  # query -> scores: day-sized, so bounded
        # Bounded (see Bounded): a million readers' long tail must not be kept whole.
        # leaf -> its score in every paper: about 128 MB at most, whatever the day's size
        self._leaf_scores = Bounded(max(256, 16_000_000 // max(index.n, 1)))
        self._shown = Bounded(200_000)  # (leaf, paper) -> its words as the paper writes them
        self._ranked: dict[tuple[tuple[str, ...], int | None, int], Ranked] = {}
        self.upvotes, self.seen, self.ids = index.upvotes, index.seen, index.ids
        self.popularity = 1 + UPVOTE_BOOST * np.minimum(
            1.0, np.log1p(self.upvotes) / math.log1p(UPVOTES_FOR_FULL_BOOST)
        )
        self._zeros = np.zeros(n)
        self._lengths = index.lengths
        # BM25's length normalisation, per paper: the same for every word (the index's
        # statistics are fixed when it is built), so worked out once, not once a word.
        self._norm = K1 * (1 - B + B * self._lengths / index.stats.avg_len)
        self._nbytes = (n + 7) // 8

    # --- matching -------------------------------------------------------------------

    def filter_bits(self, flt: CompiledFilter) -> int:
        bits = self._filter_bits.get(flt.query)
        if bits is None:
            # Presearch: when none of the words the filter needs occurs, skip evaluating it.
            bits = flt.run(self.index) if self.index.could_match(flt.anchors) else 0
            self._filter_bits[flt.query] = bits
        return bits

    def trim(self, *, most: int) -> None:
        """Forget every filter's matches (and the index's cached evaluations) once they
        are more than ``most``: for a ranker that lives long and is asked about whatever
        readers type (the preview), where planning's is asked about stored filters for
        one run."""
        if self.cached() > most:
            self._filter_bits.clear()
            self.index.forget()

    def cached(self) -> int:
        """Matches kept: each filter's, and the index's evaluations."""
        return len(self._filter_bits) + self.index.cached()

    def matching(self, filters: Sequence[CompiledFilter]) -> int:
        """Bitset of the papers any of ``filters`` matches (all papers for no filters)."""
        if not filters:
            return self.index.everything
        bits = 0
        for flt in filters:
            bits |= self.filter_bits(flt)
        return bits

    # --- scoring ----------------------------------------------------------------------

    def leaf_scores(self, leaf: Term | Phrase, *, keep: bool = True) -> np.ndarray:
        """BM25F score of one word or phrase in every paper (0 where absent); cached
        unless ``keep`` is false (planning's word table keeps its own copy)."""
        cached = self._leaf_scores.get(leaf)
        if cached is not None:
            return cached
        index, stats = self.index, self.index.stats
        words = leaf.words if isinstance(leaf, Phrase) else (leaf.word,)
        idf = sum(stats.idf(stem(w)) for w in words)
        tf = index.leaf_tf(leaf)  # counted at indexing, scored at once
        # Only where the word occurs (a few papers in a hundred, for most words): the
        # same arithmetic, element by element, as over the whole day.
        at = np.flatnonzero(tf)
        scores = np.zeros(index.n)
        counts = tf[at]
        scores[at] = idf * counts * (K1 + 1) / (counts + self._norm[at])
        return self._leaf_scores.put(leaf, scores) if keep else scores

    def leaf_scores_by_paper(self, leaf: Term | Phrase) -> np.ndarray:
        """``leaf_scores`` the plain way, paper by paper: the oracle the array version
        is tested against."""
        index, stats = self.index, self.index.stats
        words = leaf.words if isinstance(leaf, Phrase) else (leaf.word,)
        idf = sum(stats.idf(stem(w)) for w in words)
        scores = np.zeros(index.n)
        for i in iter_bits(index.evaluate(leaf)):
            tf = sum(
                (TITLE_BOOST if f == "title" else 1.0) * n for f, n in index.leaf_counts(leaf, i)
            )
            fields = index.fields[i]
            length = TITLE_BOOST * len(fields["title"].stems) + len(fields["abstract"].stems)
            norm = K1 * (1 - B + B * length / stats.avg_len)
            scores[i] = idf * tf * (K1 + 1) / (tf + norm)
        return scores

    def filter_scores(self, flt: CompiledFilter) -> np.ndarray:
        """Relevance of every paper to one filter: its words' scores where it matches."""
        cached = self._filter_scores.get(flt.query)
        if cached is None:
            total = self._zeros
            for leaf in flt.leaves:
                total = total + self.leaf_scores(leaf)
            cached = self._filter_scores.put(flt.query, total * self.mask(self.filter_bits(flt)))
        return cached

    def mask(self, bits: int) -> np.ndarray:
        """A bitset as a boolean array over the papers."""
        raw = np.frombuffer(bits.to_bytes(self._nbytes, "little"), dtype=np.uint8)
        return np.unpackbits(raw, bitorder="little")[: self.index.n].astype(bool)

    def shown(self, leaf: Term | Phrase, i: int) -> tuple[str, ...]:
        key = (leaf, i)
        cached = self._shown.get(key)
        if cached is None:
            cached = self._shown.put(key, tuple(s for _, s in self.index.leaf_hits(leaf, i)))
        return cached

    # --- ranking ----------------------------------------------------------------------

    def rank(
        self, filters: Sequence[CompiledFilter], *, within: int | None = None, limit: int
    ) -> Ranked:
        """Papers matching any filter (restricted to ``within``), best first, at most ``limit``.

        Memoized: subscribers who chose the same filters and are due the same
        papers (the usual case for popular topics) share one ranking."""
        key = (tuple(f.query for f in filters), within, limit)
        ranked = self._ranked.get(key)
        if ranked is None:
            ranked = self._ranked[key] = self._rank(filters, within=within, limit=limit)
        return ranked

    def _rank(self, filters: Sequence[CompiledFilter], *, within: int | None, limit: int) -> Ranked:
        bits = self.matching(filters)
        if within is not None:
            bits &= within
        if not bits:
            return Ranked(matches=(), total=0)
        candidates = np.flatnonzero(self.mask(bits))
        relevance = self._zeros
        for flt in filters:
            relevance = relevance + self.filter_scores(flt)
        score = relevance[candidates] * self.popularity[candidates]
        # Best first: score, then upvotes, then the fresher, then the lower id (stable).
        order = np.lexsort(
            (self.ids[candidates], -self.seen[candidates], -self.upvotes[candidates], -score)
        )
        matches = []
        for j in order[:limit]:
            i = int(candidates[j])
            names: list[str] = []
            words: dict[str, None] = {}
            for flt in filters:
                if (self._filter_bits[flt.query] >> i) & 1:
                    names.append(flt.query)
                    for leaf in flt.leaves:
                        words.update(dict.fromkeys(self.shown(leaf, i)))
            matches.append(
                PaperMatch(
                    i, int(self.ids[i]), float(score[j]), tuple(names) or ("*",), tuple(words)
                )
            )
        return Ranked(matches=tuple(matches), total=len(candidates))

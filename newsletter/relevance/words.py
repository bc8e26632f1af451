"""The day's word scores as planning's batches sum them: one row per word or phrase.

A batch's lexical scores are its filters' words' BM25F summed at each match
(``Scorer._matched``). Looked up word by word and stacked for every batch, the same
words' rows were fetched and copied hundreds of times (a long tail of topics shares
a few thousand words); here each word's row is written once into one table, each
filter's rows are remembered by its query, and a batch reads the table in place.

The table holds at most ``CELLS`` scores (words x papers, 128 MB of float64, the
ceiling the ranker's own cache of them has; its pages are taken as rows are written,
and a day's words rarely fill it); when a group of topics brings words that do not
fit, it is emptied and refilled with that group's. Groups are cut (``groups``) so
that one group's words fit, unless a single filter alone names more: the table then
grows to hold it. Emptied, it must write its words again: a table smaller than a
day's words costs their scores again and again (a quarter of the score stage at 32 MB
on bench/match.py's worst case, 10,940 distinct words). Beside it: each filter's rows
(at most 400,000 filters' tuples). ``filters test`` and the reference read the ranker's
own cache of word scores, which has the same ceiling.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import numpy as np

from newsletter.bounded import Bounded
from newsletter.filters.ast import Phrase, Term

Leaf = Term | Phrase
CELLS = 16_000_000  # words x papers in the table at once: 128 MB


class WordTable:
    def __init__(self, scores: Callable[[Leaf], np.ndarray], *, papers: int) -> None:
        self._scores = scores  # a word's score in every paper
        self._papers = papers
        self._row: dict[Leaf, int] = {}  # word -> its row in the table
        # (query, names words) -> its words' rows, in order; bounded, as a million
        # readers' long tail of filters must not be kept whole (rebuilt from ``_row``)
        self._rows = Bounded(400_000)
        self._table = np.empty((0, papers))

    def groups(self, leaves: Sequence[tuple[Leaf, ...]]) -> Iterator[tuple[int, int]]:
        """Consecutive ranges of topics (each given by its words) whose distinct words
        fit in the table together."""
        n = max(self._papers, 1)
        if len(set().union(*leaves)) * n <= CELLS:  # the usual case: one group
            yield 0, len(leaves)
            return
        start, seen = 0, set()
        for k, ls in enumerate(leaves):
            fresh = {leaf for leaf in ls if leaf not in seen}
            if k > start and (len(seen) + len(fresh)) * n > CELLS:
                yield start, k
                start, seen = k, set()
            seen.update(ls)
        yield start, len(leaves)

    def rows(
        self, queries: Sequence[str], leaves: Sequence[tuple[Leaf, ...]]
    ) -> list[tuple[int, ...]]:
        """Each filter's words' rows, in its order, all in the table together: one group
        (``groups``); ``queries`` name the filters, ``leaves`` their words."""
        found = self._lookup(queries, leaves)
        if found is None:  # another group's words fill the table: make room, then again
            need = len(set().union(*leaves))
            self._row.clear()
            self._rows.clear()
            size = max(CELLS // max(self._papers, 1), need, 1)
            if size != len(self._table):
                self._table = np.empty((size, self._papers))  # pages taken as rows fill
            found = self._lookup(queries, leaves)
        assert found is not None  # an empty table of ``need`` rows holds the group
        return found

    def _lookup(
        self, queries: Sequence[str], leaves: Sequence[tuple[Leaf, ...]]
    ) -> list[tuple[int, ...]] | None:
        """``rows``, writing the words not in the table yet; None when it is full."""
        out = []
        row, rows, table = self._row, self._rows, self._table
        for q, ls in zip(queries, leaves, strict=True):
            # a filter that names no words is given none, whatever its tree holds
            key = (q, bool(ls))
            found = rows.get(key)
            if found is None:
                mine = []
                for leaf in ls:
                    r = row.get(leaf)
                    if r is None:
                        r = len(row)
                        if r == len(table):
                            return None
                        table[r] = self._scores(leaf)
                        row[leaf] = r
                    mine.append(r)
                found = rows.put(key, tuple(mine))
            out.append(found)
        return out

    def sums(self, rows: Sequence[tuple[int, ...]], by: np.ndarray, at: np.ndarray) -> np.ndarray:
        """For each entry (topic ``by`` in ``rows``, paper ``at``), its filter's words'
        scores summed at that paper in the filter's order (as ``Ranker.filter_scores``,
        bit for bit): one word position of every filter at a time, over the entries
        whose filter has a word there."""
        total = np.zeros(len(by))
        lengths = np.array([len(r) for r in rows], np.int64)
        for place in range(int(lengths.max(initial=0))):
            which = np.array([r[place] if place < len(r) else -1 for r in rows], np.int64)
            sel = np.flatnonzero(lengths[by] > place)
            total[sel] = total[sel] + self._table[which[by[sel]], at[sel]]
        return total

"""The ``DayIndex`` of every stored paper, read from stored postings (``segments``).

``filters test`` and the preview look at the whole store, which grows by a thousand
papers a day. Building a ``DayIndex`` over it analyses every paper's text again and
keeps a bitset as long as the store for every word and word pair: 57 s and 17 GB for
200,000 papers. This index analyses nothing up front: a word's papers are read from
its stored postings when a filter asks for it (a bitset is made only for what is
asked), a phrase is a join on positions, and a paper's text is read and analysed
only when its words are shown. What ranking needs of every paper (ids, upvotes,
first seen, lengths, the numbers ``upvotes>=`` compares) comes from one catalogue
of small arrays.

It answers exactly as a ``DayIndex`` built over the same papers
(``tests/test_stored_index.py`` checks it against the naive matcher and the
in-memory index).
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import date
from typing import Any, Protocol

import numpy as np

from newsletter.bounded import Bounded
from newsletter.filters.ast import Compare, Phrase, Term
from newsletter.filters.bm25 import TITLE_BOOST, CorpusStats
from newsletter.filters.docs import FIELDS, PaperDoc, analyse, field_text, name_words
from newsletter.filters.index import DayIndex
from newsletter.filters.keys import leaf_fields
from newsletter.filters.segments import Occurrences, Segment, build
from newsletter.filters.tokens import stem

_OPS: dict[str, Callable[[Any, Any], Any]] = {
    ">=": operator.ge,
    "<=": operator.le,
    ">": operator.gt,
    "<": operator.lt,
    "=": operator.eq,
}


class Store(Protocol):
    """Where the postings and the papers are kept (the database, or memory in tests)."""

    def occurrences(self, field: str, key: str) -> list[tuple[int, Occurrences]]:
        """(segment, occurrences) of a key, one per segment holding it."""
        ...

    def keys_with_prefix(self, field: str, prefix: str) -> list[str]: ...

    def docs(self, ids: Sequence[int]) -> dict[int, PaperDoc]: ...


@dataclass(frozen=True, slots=True)
class Catalogue:
    """Every indexed paper, in first-seen order, as arrays."""

    ids: np.ndarray  # int64
    segment: np.ndarray  # int64: the segment holding the paper's current postings, -1 none
    upvotes: np.ndarray  # float64, 0 where unknown (nobody voted)
    authors: np.ndarray  # float64, NaN where unknown
    day: np.ndarray  # float64 date ordinals (published, else first seen), NaN unknown
    seen: np.ndarray  # float64 timestamps of first seen
    title: np.ndarray  # stems in the title
    abstract: np.ndarray  # stems in the abstract


class _Lazy:
    """Paper i's something, made on first use and kept within a bound."""

    def __init__(self, make: Callable[[int], Any], size: int = 4096) -> None:
        self._make, self._cache = make, Bounded(size)

    def __getitem__(self, i: int) -> Any:
        found = self._cache.get(i)
        return found if found is not None else self._cache.put(i, self._make(i))


class _Keys:
    """A field's postings as the evaluator reads them: ``get(key, 0)`` is a bitset."""

    def __init__(self, index: StoredIndex, field: str) -> None:
        self._index, self._field = index, field

    def get(self, key: str, default: int = 0) -> int:
        return self._index.key_bits(self._field, key) or default

    def __contains__(self, key: str) -> bool:
        return bool(self._index.key_bits(self._field, key))


class StoredIndex(DayIndex):
    """A ``DayIndex`` over a store's papers (``catalogue``), reading postings on demand."""

    def __init__(self, store: Store, catalogue: Catalogue, *, stats: CorpusStats) -> None:
        # Not DayIndex.__init__: that analyses every paper, which is what this avoids.
        self.store, self.stats, self._catalogue = store, stats, catalogue
        self.ids = catalogue.ids
        self.n = len(self.ids)
        self.everything = (1 << self.n) - 1
        self.upvotes, self.seen = catalogue.upvotes, catalogue.seen
        self.lengths = TITLE_BOOST * catalogue.title + catalogue.abstract.astype(np.float64)
        self._position = np.full(int(self.ids.max(initial=0)) + 2, -1, np.int64)
        self._position[self.ids] = np.arange(self.n)
        self.papers: Any = _Lazy(self._doc)
        self.fields: Any = _Lazy(
            lambda i: {f: analyse(field_text(self.papers[i], f)) for f in FIELDS}
        )
        self.names: Any = _Lazy(
            lambda i: tuple(ws for ws in map(name_words, self.papers[i].author_names) if ws)
        )
        self.postings: Any = {f: _Keys(self, f) for f in FIELDS}
        self.name_postings: Any = _Keys(self, "author")
        self.category_postings: Any = _Keys(self, "category")
        self._occurrences_cache = Bounded(4096)
        self._bits = Bounded(4096)
        self._expanded: dict[tuple[str, str], list[str]] = {}
        self._start_caches()
        self.has_code = self.key_bits("has", "code")

    def _doc(self, i: int) -> PaperDoc:
        pid = int(self.ids[i])
        return self.store.docs([pid])[pid]

    def positions(self, ids: np.ndarray) -> np.ndarray:
        """Where each paper id is in this index; -1 for ids it does not hold."""
        return self._position[np.minimum(ids, len(self._position) - 1)]

    # --- postings --------------------------------------------------------------------

    def occurrences(self, field: str, key: str) -> tuple[np.ndarray, np.ndarray]:
        """(paper positions, values) of a key's live occurrences, by position then value.
        A paper indexed again has its old segment's entries ignored."""
        found = self._occurrences_cache.get((field, key))
        if found is not None:
            return found
        parts_p, parts_v = [], []
        for segment, occ in self.store.occurrences(field, key):
            at = self.positions(occ.papers)
            live = (at >= 0) & (self._catalogue.segment[np.maximum(at, 0)] == segment)
            parts_p.append(at[live])
            parts_v.append(occ.values[live])
        p = np.concatenate(parts_p) if parts_p else np.zeros(0, np.int64)
        v = np.concatenate(parts_v) if parts_v else np.zeros(0, np.int64)
        order = np.lexsort((v, p))
        return self._occurrences_cache.put((field, key), (p[order], v[order]))

    def phrase_counts(self, field: str, stems: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
        """Papers where ``stems`` occur adjacent and in order, and how many times."""
        papers, at = self.occurrences(field, stems[0])
        starts = (papers << 32) | at
        for offset, s in enumerate(stems[1:], start=1):
            if not len(starts):
                break
            p, a = self.occurrences(field, s)
            keep = a >= offset
            starts = starts[np.isin(starts, (p[keep] << 32) | (a[keep] - offset))]
        return np.unique(starts >> 32, return_counts=True)

    def key_counts(self, f: str, key: str) -> tuple[np.ndarray, np.ndarray]:
        return self.phrase_counts(f, tuple(key.split(" ")))

    def key_bits(self, field: str, key: str) -> int:
        bits = self._bits.get((field, key))
        if bits is None:
            if field in FIELDS:
                papers = self.key_counts(field, key)[0]
            else:
                papers = self.occurrences(field, key)[0]
            bits = self._bits.put((field, key), self._bitset(papers))
        return bits

    def _bitset(self, positions: np.ndarray) -> int:
        if not len(positions):
            return 0
        mask = np.zeros(self.n, bool)
        mask[positions] = True
        return int.from_bytes(np.packbits(mask, bitorder="little").tobytes(), "little")

    def expand(self, f: str, prefix: str) -> list[str]:
        found = self._expanded.get((f, prefix))
        if found is None:
            keys = self.store.keys_with_prefix(f, "=" + prefix)
            found = self._expanded[(f, prefix)] = sorted(k[1:] for k in keys)
        return found

    def counts_in(self, f: str, leaf: Term | Phrase) -> tuple[np.ndarray, np.ndarray]:
        """Papers holding ``leaf`` in field f, and how many times."""
        if isinstance(leaf, Phrase):
            return self.phrase_counts(f, tuple(stem(w) for w in leaf.words))
        if not (leaf.prefix or leaf.exact):
            return self.phrase_counts(f, (stem(leaf.word),))
        words = self.expand(f, leaf.word) if leaf.prefix else [leaf.word]
        tf = np.zeros(self.n, np.int64)
        for word in words:
            papers, counts = self.occurrences(f, "=" + word)
            tf[papers] += counts
        papers = np.flatnonzero(tf)
        return papers, tf[papers]

    def leaf_tf(self, leaf: Term | Phrase) -> np.ndarray:
        tf = np.zeros(self.n)
        for f in leaf_fields(leaf):
            papers, counts = self.counts_in(f, leaf)
            tf[papers] += (TITLE_BOOST if f == "title" else 1.0) * counts
        return tf

    def exact_bits(self, f: str, word: str) -> int:
        return self._bitset(self.occurrences(f, "=" + word)[0])

    def _leaf(self, node: Any) -> int:
        if isinstance(node, Term | Phrase):
            bits = 0
            for f in leaf_fields(node):
                bits |= self._bitset(self.counts_in(f, node)[0])
            return bits
        if isinstance(node, Compare):
            values = {"upvotes": self.upvotes, "authors": self._catalogue.authors}.get(
                node.field, self._catalogue.day
            )
            right = node.value.toordinal() if isinstance(node.value, date) else node.value
            with np.errstate(invalid="ignore"):  # NaN (unknown) satisfies no comparison
                return self._bitset(np.flatnonzero(_OPS[node.op](values, right)))
        return super()._leaf(node)


def catalogue_of(docs: Sequence[PaperDoc], segment: Segment, number: int = 1) -> Catalogue:
    """The catalogue of papers indexed in one segment (tests, and small corpora)."""

    return Catalogue(
        ids=np.array([d.id for d in docs], dtype=np.int64),
        segment=np.full(len(docs), number, np.int64),
        upvotes=np.array([d.upvotes or 0 for d in docs], dtype=np.float64),
        authors=floats([d.authors for d in docs]),
        day=floats([d.day.toordinal() if d.day else None for d in docs]),
        seen=np.array([d.first_seen_at.timestamp() if d.first_seen_at else 0.0 for d in docs]),
        title=np.array([segment.lengths[d.id].title for d in docs], dtype=np.int64),
        abstract=np.array([segment.lengths[d.id].abstract for d in docs], dtype=np.int64),
    )


def floats(values: Sequence[Any]) -> np.ndarray:
    """Numbers as float64, NaN where unknown (NaN satisfies no comparison)."""
    return np.array([np.nan if v is None else v for v in values], dtype=np.float64)


class MemoryStore:
    """A store of one segment held in memory: the tests' way to check the stored index."""

    def __init__(self, docs: Sequence[PaperDoc], number: int = 1) -> None:
        self.segment, self.number = build(docs), number
        self._docs = {d.id: d for d in docs}
        self.catalogue = catalogue_of(docs, self.segment, number)

    def occurrences(self, field: str, key: str) -> list[tuple[int, Occurrences]]:
        found = self.segment.postings.get((field, key))
        return [(self.number, found)] if found is not None else []

    def keys_with_prefix(self, field: str, prefix: str) -> list[str]:
        return [k for f, k in self.segment.postings if f == field and k.startswith(prefix)]

    def docs(self, ids: Sequence[int]) -> dict[int, PaperDoc]:
        return {i: self._docs[i] for i in ids}

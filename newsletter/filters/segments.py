"""Postings built once, at ingest, and stored: what lets a filter be tested against a
year of papers without analysing a year of text on every query.

A segment indexes a batch of papers. For each field and each key it holds two
parallel arrays sorted by paper then position, as compact as the occurrences are
few (a rare word costs a few bytes, not a bit per paper of the corpus):

* a stem in ``title``, ``abstract`` or ``org``: (paper id, token position) per
  occurrence. Two-word and longer phrases are joins on positions, so word pairs
  need no keys of their own;
* ``=word``, the word as written (folded, unstemmed): (paper id, occurrences), for
  exact words and prefixes;
* ``author`` (a word of an author's name), ``category`` (``category_keys``) and
  ``has`` (``code``): (paper id, 1).

The in-memory ``DayIndex`` reads the same analysis (``docs.analyse``, ``name_words``,
``category_keys``), so the two cannot disagree about what a paper says.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np

from newsletter.filters.docs import (
    FIELDS,
    PaperDoc,
    category_keys,
    field_text,
    name_words,
)
from newsletter.filters.tokens import stem, tokens

TEXT_FIELDS = FIELDS  # title, abstract, org: positions
META_FIELDS = ("author", "category", "has")


@dataclass(frozen=True, slots=True)
class Occurrences:
    """Paper ids and, per entry, a position (stems) or a count (everything else)."""

    papers: np.ndarray  # int64
    values: np.ndarray  # int64

    def encode(self) -> tuple[bytes, bytes]:
        # Sorted ids compress well; level 1 keeps ingest fast.
        return (
            zlib.compress(self.papers.astype("<i4").tobytes(), 1),
            zlib.compress(self.values.astype("<u4").tobytes(), 1),
        )

    @classmethod
    def decode(cls, papers: bytes, values: bytes) -> Occurrences:
        return cls(
            np.frombuffer(zlib.decompress(papers), "<i4").astype(np.int64),
            np.frombuffer(zlib.decompress(values), "<u4").astype(np.int64),
        )


@dataclass(frozen=True, slots=True)
class Lengths:
    """Per paper of a segment: how many stems its title and abstract have (BM25's length)."""

    title: int
    abstract: int


@dataclass(slots=True)
class Segment:
    postings: dict[tuple[str, str], Occurrences]
    lengths: dict[int, Lengths]  # paper id -> its lengths


def build(docs: Iterable[PaperDoc]) -> Segment:
    """Index a batch of papers. Keys get numbers once and each token costs a list append;
    grouping by key is one sort, not a dictionary of lists per word."""
    keys: dict[tuple[str, str], int] = {}
    key_of, paper_of, value_of = [], [], []  # one entry per occurrence
    lengths: dict[int, Lengths] = {}
    for doc in docs:
        counted: dict[int, int] = {}  # key -> count, for the per-paper kinds
        for f in TEXT_FIELDS:
            words = tokens(field_text(doc, f))
            ids = [keys.setdefault((f, stem(w)), len(keys)) for w in words]
            key_of.extend(ids)
            paper_of.extend([doc.id] * len(ids))
            value_of.extend(range(len(ids)))
            for w in words:
                k = keys.setdefault((f, "=" + w), len(keys))
                counted[k] = counted.get(k, 0) + 1
            if f == "title":
                title = len(ids)
            elif f == "abstract":
                lengths[doc.id] = Lengths(title, len(ids))
        for word in {w for name in doc.author_names for w in name_words(name)}:
            counted[keys.setdefault(("author", word), len(keys))] = 1
        for key in {k for c in doc.categories for k in category_keys(c)}:
            counted[keys.setdefault(("category", key), len(keys))] = 1
        if doc.has_code:
            counted[keys.setdefault(("has", "code"), len(keys))] = 1
        key_of.extend(counted)
        paper_of.extend([doc.id] * len(counted))
        value_of.extend(counted.values())
    k, p, v = (np.array(a, dtype=np.int64) for a in (key_of, paper_of, value_of))
    order = np.lexsort((v, p, k))
    k, p, v = k[order], p[order], v[order]
    cuts = np.flatnonzero(np.diff(k)) + 1
    names = list(keys)
    postings = {
        names[int(kk[0])]: Occurrences(pp, vv)
        for kk, pp, vv in zip(np.split(k, cuts), np.split(p, cuts), np.split(v, cuts), strict=True)
        if len(kk)
    }
    return Segment(postings=postings, lengths=lengths)


def rows(segment: Segment) -> Iterator[tuple[str, str, bytes, bytes]]:
    """(field, key, papers, values) to store, one per key."""
    for (f, key), occ in segment.postings.items():
        yield (f, key, *occ.encode())

"""Match many filters against a day's papers without trying every (filter, paper) pair.

The day's papers are indexed once: for each field, each stem (and each exact
word) maps to a bitset of the papers holding it, a Python int with bit i for
paper i. A filter is then evaluated once for all papers together: a word is a
dictionary look-up, AND / OR / NOT are integer operations on 1,000-bit ints,
a phrase intersects its words' bitsets and checks positions only in the papers
left. Results are cached per sub-tree, so a filter (or part of one) shared by
many subscribers costs one evaluation.

Before that, a presearch in the manner of Lucene's Monitor: each filter's
anchor terms (words one of which must occur for it to match) are extracted
once when it is compiled, and a filter none of whose anchors occurs today is
skipped without evaluation.
"""

from __future__ import annotations

import bisect
import math
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime

from newsletter.filters.ast import All, And, Compare, Node, Not, Or, Phrase, Term
from newsletter.filters.tokens import stem, surface_tokens, tokens

FIELDS = ("title", "abstract", "org")
DEFAULT_FIELDS = ("title", "abstract")  # a word without a field looks here


@dataclass(frozen=True, slots=True)
class PaperDoc:
    """What a filter can see of a paper."""

    id: int
    title: str
    abstract: str
    organization: str | None = None
    upvotes: int | None = None
    authors: int | None = None
    published_on: date | None = None
    first_seen_at: datetime | None = None

    @property
    def day(self) -> date | None:
        """``date:`` compares the publication date, else the day the paper was first seen."""
        if self.published_on is not None:
            return self.published_on
        return self.first_seen_at.date() if self.first_seen_at else None


@dataclass(slots=True)
class _Field:
    """One field of one paper: its words and their stems, in order."""

    stems: list[str]
    words: list[str]  # folded, unstemmed
    counts: Counter[str] = field(default_factory=Counter)


def _analyse(text: str) -> _Field:
    words = tokens(text)
    stems = [stem(w) for w in words]
    return _Field(stems=stems, words=words, counts=Counter(stems))


def field_text(doc: PaperDoc, name: str) -> str:
    if name == "title":
        return doc.title
    if name == "abstract":
        return doc.abstract
    return doc.organization or ""


def compare(op: str, left: int | date | None, right: int | date) -> bool:
    if left is None:
        return False  # unknown metadata never satisfies a comparison
    if op == ">=":
        return left >= right  # type: ignore[operator]
    if op == "<=":
        return left <= right  # type: ignore[operator]
    if op == ">":
        return left > right  # type: ignore[operator]
    if op == "<":
        return left < right  # type: ignore[operator]
    return left == right


def numeric_value(doc: PaperDoc, name: str) -> int | date | None:
    if name == "upvotes":
        return doc.upvotes if doc.upvotes is not None else 0  # no count shown: nobody voted
    if name == "authors":
        return doc.authors
    return doc.day


def phrase_at(stems: list[str], words: tuple[str, ...]) -> Iterator[int]:
    """Start positions where ``words`` (stemmed) occur in order."""
    want = [stem(w) for w in words]
    first, k = want[0], len(want)
    for i, s in enumerate(stems):
        if s == first and stems[i : i + k] == want:
            yield i


def anchors(node: Node) -> frozenset[tuple[str, str]] | None:
    """Keys (field, stem) one of which must occur for ``node`` to match; None: can't tell."""
    match node:
        case Term(word, fld, exact, prefix):
            if prefix:
                return None
            key = word if exact else stem(word)
            return frozenset(
                (f, ("=" if exact else "") + key) for f in ((fld,) if fld else DEFAULT_FIELDS)
            )
        case Phrase(words, fld):
            # Every word must occur; the longest is likely the rarest, so the best filter.
            word = max(words, key=len)
            return frozenset((f, stem(word)) for f in ((fld,) if fld else DEFAULT_FIELDS))
        case And(children):
            known = [a for c in children if (a := anchors(c)) is not None]
            return min(known, key=len) if known else None
        case Or(children):
            union: set[tuple[str, str]] = set()
            for child in children:
                a = anchors(child)
                if a is None:
                    return None
                union |= a
            return frozenset(union)
    return None


class DayIndex:
    """An index of a batch of papers (a day's, or the last 30 days')."""

    def __init__(self, papers: Sequence[PaperDoc], *, stats: CorpusStats | None = None) -> None:
        self.papers = list(papers)
        self.n = len(self.papers)
        self.everything = (1 << self.n) - 1
        self.fields: list[dict[str, _Field]] = []
        self.postings: dict[tuple[str, str], int] = {}  # (field, stem or "=word") -> bitset
        vocab: dict[str, set[str]] = {f: set() for f in FIELDS}
        for i, doc in enumerate(self.papers):
            bit = 1 << i
            analysed = {f: _analyse(field_text(doc, f)) for f in FIELDS}
            self.fields.append(analysed)
            for f, fa in analysed.items():
                for key in set(fa.stems) | {"=" + w for w in fa.words}:
                    self.postings[(f, key)] = self.postings.get((f, key), 0) | bit
                vocab[f].update(fa.words)
        self.vocab = {f: sorted(words) for f, words in vocab.items()}
        self.stats = stats or CorpusStats.of(self)
        self._cache: dict[Node, int] = {}
        self._shown: dict[tuple[int, str], list[str]] = {}

    # --- evaluation ---------------------------------------------------------------

    def could_match(self, anchor_keys: frozenset[tuple[str, str]] | None) -> bool:
        return anchor_keys is None or any(k in self.postings for k in anchor_keys)

    def evaluate(self, node: Node) -> int:
        """Bitset of the papers ``node`` matches."""
        cached = self._cache.get(node)
        if cached is None:
            cached = self._cache[node] = self._evaluate(node)
        return cached

    def _evaluate(self, node: Node) -> int:
        match node:
            case Term(word, fld, exact, prefix):
                bits = 0
                for f in (fld,) if fld else DEFAULT_FIELDS:
                    if prefix:
                        vocab = self.vocab[f]
                        start = bisect.bisect_left(vocab, word)
                        for w in vocab[start:]:
                            if not w.startswith(word):
                                break
                            bits |= self.postings[(f, "=" + w)]
                    else:
                        bits |= self.postings.get((f, ("=" + word) if exact else stem(word)), 0)
                return bits
            case Phrase(words, fld):
                bits = 0
                for f in (fld,) if fld else DEFAULT_FIELDS:
                    candidates = self.everything
                    for w in words:
                        candidates &= self.postings.get((f, stem(w)), 0)
                        if not candidates:
                            break
                    if len(words) > 1:
                        for i in iter_bits(candidates):
                            if next(phrase_at(self.fields[i][f].stems, words), None) is None:
                                candidates &= ~(1 << i)
                    bits |= candidates
                return bits
            case Compare(name, op, value):
                bits = 0
                for i, doc in enumerate(self.papers):
                    if compare(op, numeric_value(doc, name), value):
                        bits |= 1 << i
                return bits
            case All():
                return self.everything
            case Not(child):
                return self.everything & ~self.evaluate(child)
            case And(children):
                bits = self.everything
                for child in children:
                    bits &= self.evaluate(child)
                    if not bits:
                        break
                return bits
            case Or(children):
                bits = 0
                for child in children:
                    bits |= self.evaluate(child)
                return bits
        raise TypeError(f"not a filter node: {node!r}")

    # --- ranking and explanation ----------------------------------------------------

    def leaf_hits(self, leaf: Term | Phrase, i: int) -> list[tuple[str, int, str]]:
        """(field, occurrences, words as written) for each field holding ``leaf`` in paper i."""
        hits = []
        for f in (leaf.field,) if leaf.field else DEFAULT_FIELDS:
            fa = self.fields[i][f]
            if isinstance(leaf, Phrase):
                starts = list(phrase_at(fa.stems, leaf.words))
                if starts:
                    shown = self.shown(i, f)[starts[0] : starts[0] + len(leaf.words)]
                    hits.append((f, len(starts), " ".join(dict.fromkeys(shown))))
                continue
            if leaf.prefix:
                where = [j for j, w in enumerate(fa.words) if w.startswith(leaf.word)]
            elif leaf.exact:
                where = [j for j, w in enumerate(fa.words) if w == leaf.word]
            else:
                key = stem(leaf.word)
                where = [j for j, s in enumerate(fa.stems) if s == key] if key in fa.counts else []
            if where:
                hits.append((f, len(where), self.shown(i, f)[where[0]]))
        return hits

    def shown(self, i: int, f: str) -> list[str]:
        """Paper i's field as written, one entry per token: only explanations need it,
        so it is worked out for the few papers that make it into a digest."""
        key = (i, f)
        cached = self._shown.get(key)
        if cached is None:
            cached = self._shown[key] = [
                s for _, s in surface_tokens(field_text(self.papers[i], f))
            ]
        return cached


@dataclass(frozen=True, slots=True)
class CorpusStats:
    """Document frequencies for BM25's idf: rarer words weigh more."""

    n: int
    df: dict[str, int]
    avg_len: float

    @classmethod
    def of(cls, index: DayIndex) -> CorpusStats:
        df: Counter[str] = Counter()
        total = 0
        for fields in index.fields:
            df.update(set(fields["title"].stems) | set(fields["abstract"].stems))
            total += TITLE_BOOST * len(fields["title"].stems) + len(fields["abstract"].stems)
        return cls(n=index.n, df=dict(df), avg_len=(total / index.n) if index.n else 1.0)

    def idf(self, stem_key: str) -> float:
        df = self.df.get(stem_key, 0)
        return math.log(1 + (self.n - df + 0.5) / (df + 0.5))


TITLE_BOOST = 3.0  # a word in the title says more about a paper than one in its abstract
K1, B = 1.2, 0.75


def iter_bits(bits: int) -> Iterator[int]:
    """Indexes of the set bits, lowest first."""
    while bits:
        low = bits & -bits
        yield low.bit_length() - 1
        bits ^= low

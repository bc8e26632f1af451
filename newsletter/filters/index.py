"""Match many filters against a day's papers without trying every (filter, paper) pair.

The day's papers are indexed once: for each field, each stem (and each exact
word) maps to a bitset of the papers holding it, a Python int with bit i for
paper i. A filter is then evaluated once for all papers together: a word is a
dictionary look-up, AND / OR / NOT are integer operations on 1,000-bit ints,
a phrase intersects its words' bitsets and checks positions only in the papers
left. Results are cached per sub-tree, so a filter (or part of one) shared by
many subscribers costs one evaluation.

Metadata is indexed the same way: each category (and ``archive.*``) maps to a
bitset, so does ``has:code``, and each folded word of an author's name maps to
the papers with an author bearing it; ``author:"ada lovelace"`` intersects its
words' bitsets and checks, only in the papers left, that one name holds them
in order.

Before that, a presearch in the manner of Lucene's Monitor: each filter's
anchor terms (words one of which must occur for it to match) are extracted
once when it is compiled, and a filter none of whose anchors occurs today is
skipped without evaluation.
"""

from __future__ import annotations

import bisect
from collections import defaultdict
from collections.abc import Callable, Sequence

import numpy as np

from newsletter.filters.ast import (
    All,
    And,
    Author,
    Category,
    Compare,
    Has,
    Node,
    Not,
    Or,
    Phrase,
    Term,
)
from newsletter.filters.bitsets import bits_of, iter_bits
from newsletter.filters.bm25 import TITLE_BOOST, CorpusStats
from newsletter.filters.docs import (
    FIELDS,
    Field,
    PaperDoc,
    analyse,
    author_has,
    category_keys,
    compare,
    field_text,
    name_words,
    numeric_value,
    phrase_at,
)
from newsletter.filters.keys import leaf_fields, phrase_keys, plain_key
from newsletter.filters.tokens import stem, surface_tokens

Evaluator = Callable[["DayIndex"], int]


def compile_tree(node: Node) -> Evaluator:
    """Turn a tree into nested closures over the index, once per filter.

    Stems and index keys are worked out here, not on every evaluation, and
    evaluating is then plain calls and dictionary look-ups: a few microseconds
    per filter, which is what lets 100,000 subscribers be matched in a second.
    The result equals ``DayIndex.evaluate(node)``.
    """
    match node:
        case Term(word, _, exact, prefix) if not prefix and not exact:
            key = stem(word)
            return _lookup(tuple((f, key) for f in leaf_fields(node)))
        case Phrase(words) if len(words) <= 2:
            (key,) = phrase_keys(words)
            return _lookup(tuple((f, key) for f in leaf_fields(node)))
        case Category(name):
            return lambda ix: ix.category_postings.get(name, 0)
        case Has("code"):
            return lambda ix: ix.has_code
        case Term() | Phrase() | Compare() | Author() | Has():
            # exact, prefixes, long phrases, numbers, names: cached
            return lambda ix: ix.evaluate(node)
        case All():
            return lambda ix: ix.everything
        case Not(child):
            inner = compile_tree(child)
            return lambda ix: ix.everything & ~inner(ix)
        case And(children):
            parts = [compile_tree(c) for c in children]

            def run_and(ix: DayIndex) -> int:
                bits = ix.everything
                for part in parts:
                    bits &= part(ix)
                    if not bits:
                        break
                return bits

            return run_and
        case Or(children):
            parts = [compile_tree(c) for c in children]

            def run_or(ix: DayIndex) -> int:
                bits = 0
                for part in parts:
                    bits |= part(ix)
                return bits

            return run_or
    raise TypeError(f"not a filter node: {node!r}")


def _lookup(keys: tuple[tuple[str, str], ...]) -> Evaluator:
    if len(keys) == 1:
        ((f, key),) = keys
        return lambda ix: ix.postings[f].get(key, 0)
    (f1, k1), (f2, k2) = keys
    return lambda ix: ix.postings[f1].get(k1, 0) | ix.postings[f2].get(k2, 0)


class DayIndex:
    """An index of a batch of papers (a day's, or the last 30 days')."""

    def __init__(self, papers: Sequence[PaperDoc], *, stats: CorpusStats | None = None) -> None:
        self.papers = list(papers)
        self.n = len(self.papers)
        self.everything = (1 << self.n) - 1
        self.fields: list[dict[str, Field]] = []
        # field -> key -> papers, where key is a stem or two adjacent stems "a b"
        # (so a two-word phrase is one look-up, not a scan). Exact words are
        # looked up on demand (exact_bits): few filters use them.
        members: dict[str, defaultdict[str, list[int]]] = {f: defaultdict(list) for f in FIELDS}
        occurrences: dict[str, defaultdict[str, list[int]]] = {f: defaultdict(list) for f in FIELDS}
        vocab: dict[str, set[str]] = {f: set() for f in FIELDS}
        # Metadata: each paper's names as words, and name word / category -> papers.
        self.names: list[tuple[tuple[str, ...], ...]] = []
        name_members: defaultdict[str, list[int]] = defaultdict(list)
        category_members: defaultdict[str, list[int]] = defaultdict(list)
        with_code: list[int] = []
        for i, doc in enumerate(self.papers):
            names = tuple(ws for ws in map(name_words, doc.author_names) if ws)
            self.names.append(names)
            for word in {w for ws in names for w in ws}:
                name_members[word].append(i)
            for key in {k for c in doc.categories for k in category_keys(c)}:
                category_members[key].append(i)
            if doc.has_code:
                with_code.append(i)
        self.name_postings = {w: bits_of(v) for w, v in name_members.items()}
        self.category_postings = {k: bits_of(v) for k, v in category_members.items()}
        self.has_code = bits_of(with_code) if with_code else 0
        for i, doc in enumerate(self.papers):
            analysed = {f: analyse(field_text(doc, f)) for f in FIELDS}
            self.fields.append(analysed)
            for f, fa in analysed.items():
                field_members, field_occurrences = members[f], occurrences[f]
                for counter in (fa.counts, fa.bigrams):
                    for key, count in counter.items():
                        field_members[key].append(i)
                        field_occurrences[key].append(count)
                vocab[f].update(fa.words)
        self._members, self._occurrences = members, occurrences
        self._counts: dict[tuple[str, str], tuple[np.ndarray, np.ndarray]] = {}
        self.postings: dict[str, dict[str, int]] = {
            f: {k: bits_of(v) for k, v in m.items()} for f, m in members.items()
        }
        self.vocab = {f: sorted(words) for f, words in vocab.items()}
        self.stats = stats or CorpusStats.of(self)
        # What ranking reads of every paper, as arrays.
        self.ids = np.array([p.id for p in self.papers], dtype=np.int64)
        self.upvotes = np.array([p.upvotes or 0 for p in self.papers], dtype=np.float64)
        self.seen = np.array(
            [p.first_seen_at.timestamp() if p.first_seen_at else 0.0 for p in self.papers]
        )
        self.lengths = np.array(
            [TITLE_BOOST * len(f["title"].stems) + len(f["abstract"].stems) for f in self.fields]
        )
        self._start_caches()

    def forget(self) -> None:
        """Drop what evaluating filters has cached (a long-lived index that readers'
        input reaches, the preference centre's preview, must not keep it all)."""
        self._start_caches()

    def cached(self) -> int:
        """How many evaluations are cached."""
        return len(self._cache) + len(self._shown) + len(self._exact) + len(self._first)

    def _start_caches(self) -> None:
        self._cache: dict[Node, int] = {}
        self._shown: dict[tuple[int, str], list[str]] = {}
        self._exact: dict[tuple[str, str], int] = {}
        self._first: dict[tuple[int, str], dict[str, int]] = {}

    # --- evaluation ---------------------------------------------------------------

    def could_match(self, anchor_keys: frozenset[tuple[str, str]] | None) -> bool:
        if anchor_keys is None:
            return True
        postings = self.postings
        return any(key in postings[f] for f, key in anchor_keys)

    def evaluate(self, node: Node) -> int:
        """Bitset of the papers ``node`` matches.

        Composite nodes go through ``compile_tree``, the one evaluator of AND, OR and
        NOT; leaves are worked out here and cached (many filters share words). Whole
        filters are cached by the Ranker, by their text.
        """
        if not isinstance(node, Term | Phrase | Compare | Author | Category | Has):
            return compile_tree(node)(self)
        cached = self._cache.get(node)
        if cached is None:
            cached = self._cache[node] = self._leaf(node)
        return cached

    def _leaf(self, node: Term | Phrase | Compare | Author | Category | Has) -> int:
        match node:
            case Term(word, _, exact, prefix):
                bits = 0
                for f in leaf_fields(node):
                    if prefix:
                        for w in self.expand(f, word):
                            bits |= self.exact_bits(f, w)
                    elif exact:
                        bits |= self.exact_bits(f, word)
                    else:
                        bits |= self.postings[f].get(stem(word), 0)
                return bits
            case Phrase(words):
                keys = phrase_keys(words)
                bits = 0
                for f in leaf_fields(node):
                    candidates = self.everything
                    for key in keys:
                        candidates &= self.postings[f].get(key, 0)
                        if not candidates:
                            break
                    if len(words) > 2:  # adjacent pairs all present; check they chain up
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
            case Author(words):
                candidates = self.everything
                for word in dict.fromkeys(words):
                    candidates &= self.name_postings.get(word, 0)
                    if not candidates:
                        return 0
                if len(words) > 1:  # every word is some author's; is there one holding all?
                    for i in iter_bits(candidates):
                        if not author_has(self.names[i], words):
                            candidates &= ~(1 << i)
                return candidates
            case Category(name):
                return self.category_postings.get(name, 0)
            case Has(what):
                return self.has_code if what == "code" else 0
        raise TypeError(f"not a filter leaf: {node!r}")

    # --- ranking and explanation ----------------------------------------------------

    def exact_bits(self, f: str, word: str) -> int:
        """Papers holding ``word`` exactly (unstemmed) in field f."""
        key = (f, word)
        bits = self._exact.get(key)
        if bits is None:
            papers = self.word_counts(f, word)[0].tolist()
            bits = self._exact[key] = bits_of(papers) if papers else 0
        return bits

    def word_counts(self, f: str, word: str) -> tuple[np.ndarray, np.ndarray]:
        """The papers holding ``word`` exactly (unstemmed) in field f, and how many times
        each: its stem's papers, checked. Counted on demand (few filters name exact
        words or prefixes), then kept."""
        key = (f, "=" + word)  # "=" is in no stem: no clash with key_counts' keys
        found = self._counts.get(key)
        if found is None:
            fields, papers, counts = self.fields, [], []
            for i in self._members[f].get(stem(word), ()):
                n = fields[i][f].word_counts.get(word, 0)
                if n:
                    papers.append(i)
                    counts.append(n)
            found = self._counts[key] = (
                np.array(papers, dtype=np.int64),
                np.array(counts, dtype=np.float64),
            )
        return found

    def key_counts(self, f: str, key: str) -> tuple[np.ndarray, np.ndarray]:
        """The papers holding a stem (or two adjacent stems "a b") in field f, and how
        many times each: for scoring a word over all papers at once."""
        found = self._counts.get((f, key))
        if found is None:
            found = self._counts[(f, key)] = (
                np.array(self._members[f].get(key, ()), dtype=np.int64),
                np.array(self._occurrences[f].get(key, ()), dtype=np.float64),
            )
        return found

    def leaf_tf(self, leaf: Term | Phrase) -> np.ndarray:
        """Occurrences of ``leaf`` in every paper (a title one counts ``TITLE_BOOST``),
        from the counts kept at indexing: a stem or a pair of stems is one look-up, an
        exact word or a prefix's words are counted once each (``word_counts``), a longer
        phrase only in the papers it matches. ``Ranker.leaf_scores_by_paper``
        is the oracle."""
        key = plain_key(leaf)
        tf = np.zeros(self.n)
        for f in leaf_fields(leaf):
            boost = TITLE_BOOST if f == "title" else 1.0
            if key is not None:
                papers, counts = self.key_counts(f, key)
                tf[papers] += boost * counts
            elif isinstance(leaf, Phrase):  # three words or more: where it is in this field
                for i in iter_bits(self.evaluate(Phrase(leaf.words, f))):
                    tf[i] += boost * sum(1 for _ in phrase_at(self.fields[i][f].stems, leaf.words))
            else:  # an exact word, or a prefix's words
                words = self.expand(f, leaf.word) if leaf.prefix else (leaf.word,)
                for word in words:
                    papers, counts = self.word_counts(f, word)
                    tf[papers] += boost * counts
        return tf

    def leaf_counts(self, leaf: Term | Phrase, i: int) -> list[tuple[str, int]]:
        """(field, occurrences) of ``leaf`` in paper i, from the per-field counters."""
        out = []
        for f in leaf_fields(leaf):
            fa = self.fields[i][f]
            if isinstance(leaf, Phrase):
                keys = phrase_keys(leaf.words)
                if len(keys) == 1:
                    n = (fa.bigrams if len(leaf.words) == 2 else fa.counts).get(keys[0], 0)
                else:
                    n = sum(1 for _ in phrase_at(fa.stems, leaf.words))
            elif leaf.prefix:
                n = sum(fa.word_counts.get(w, 0) for w in self.expand(f, leaf.word))
            elif leaf.exact:
                n = fa.word_counts.get(leaf.word, 0)
            else:
                n = fa.counts.get(stem(leaf.word), 0)
            if n:
                out.append((f, n))
        return out

    def expand(self, f: str, prefix: str) -> list[str]:
        """The field's words starting with ``prefix``."""
        vocab = self.vocab[f]
        start = bisect.bisect_left(vocab, prefix)
        end = bisect.bisect_left(vocab, prefix + "\uffff", start)
        return vocab[start:end]

    def leaf_hits(self, leaf: Term | Phrase, i: int) -> list[tuple[str, str]]:
        """(field, the words as written at the first occurrence) where ``leaf`` is in paper i."""
        hits = []
        for f in leaf_fields(leaf):
            first = self.first_positions(i, f)
            width = 1
            if isinstance(leaf, Phrase):
                keys = phrase_keys(leaf.words)
                width = len(leaf.words)
                if len(keys) == 1:
                    at = first.get(keys[0])
                else:
                    at = next(phrase_at(self.fields[i][f].stems, leaf.words), None)
            elif leaf.prefix:
                words = self.fields[i][f].words
                at = next((j for j, w in enumerate(words) if w.startswith(leaf.word)), None)
            else:
                at = first.get(("=" + leaf.word) if leaf.exact else stem(leaf.word))
            if at is not None:
                hits.append((f, " ".join(dict.fromkeys(self.shown(i, f)[at : at + width]))))
        return hits

    def first_positions(self, i: int, f: str) -> dict[str, int]:
        """Where each stem, "=word" and "stem stem" pair first occurs in paper i's field f."""
        key = (i, f)
        cached = self._first.get(key)
        if cached is None:
            fa = self.fields[i][f]
            cached = {}
            for j in range(len(fa.stems) - 1, -1, -1):  # backwards, so the first one wins
                cached[fa.stems[j]] = j
                cached["=" + fa.words[j]] = j
                if j + 1 < len(fa.stems):
                    cached[f"{fa.stems[j]} {fa.stems[j + 1]}"] = j
            self._first[key] = cached
        return cached

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

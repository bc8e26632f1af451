"""Which papers a topic gets: a calibrated score that fuses the filter with meaning.

For one topic (a filter, and optionally a sentence about it) and one paper:

* ``lexical``: the filter's BM25F for the paper divided by the filter's ceiling, the
  score an ideal paper would reach (each word saturated: idf x (k1 + 1); an OR takes
  its best branch, an AND adds its parts), capped at 1.5. It needs no labels and no
  other paper: a filter whose words are rare and a filter whose words are common
  land on one scale.
* ``semantic``: the cosine between the topic's vector (its sentence, else its
  filter's words) and the paper's, as a z-score against the reference window's
  papers (``reference.py``): raw cosines do not transfer between topics, z-scores do.

A paper the filter matches is in when ``lexical + ALPHA * semantic`` reaches the
threshold of the subscriber's dial step; a paper it does not match is in only when
its meaning alone is far out (``semantic >= enter``, and a cosine of at least
``MIN_COSINE``: the filter missed a synonym).
A filter that names no words (``upvotes>=5``, ``org:"ZIP Lab"``) is taken at its
word: its matches are in. ``*`` is everything, by upvotes. The constants were
chosen on hand-judged topics (bench/relevance.py) and are the same for every topic.

Planning decides its topics in batches (``Scorer.prepare``), one row per topic, with
the rules of ``decisions.py``; ``filters test`` and the reference decide one topic the
same way, and the cosines are exact (``meaning.py``), so both give the same answer.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import replace
from functools import lru_cache

import numpy as np

from newsletter.bounded import Bounded
from newsletter.filters import CompiledFilter, Ranker, compile_filter
from newsletter.filters.ast import All
from newsletter.relevance.decisions import (
    ALPHA,
    LEXICAL_CAP,
    MIN_COSINE,
    NEAR,
    Decided,
    Rows,
    Step,
    Topic,
    TopicScores,
    cells,
    decide,
    entries,
    sparse,
)
from newsletter.relevance.feedback import neighbours, rocchio, split_votes
from newsletter.relevance.meaning import (
    as_cosines,
    cosines,
    product_at_least,
    products,
    quantise,
)
from newsletter.relevance.pick import (
    CARRIED,
    MATCHED,
    VOTED,
    Day,
    Decision,
    Merged,
    Pick,
    Picked,
    merge_many,
)
from newsletter.relevance.reference import Reference
from newsletter.relevance.words import WordTable

__all__ = ["ALPHA", "MIN_COSINE", "NEAR", "Step", "Topic", "TopicScores"]

UNSURE = 2  # papers just below the line a digest may ask about ("not sure this is for you")
BATCH = 256  # topics decided together: the day's arrays for each, a few MB at a time

DIAL: dict[int, Step] = {
    1: Step("Fewest, surest papers", 0.80, 3.5),
    2: Step("Fewer papers", 0.70, 3.25),
    3: Step("Balanced", 0.60, 3.0),
    4: Step("More papers", 0.48, 2.75),
    5: Step("More, broader papers", 0.36, 2.5),
}
DEFAULT_DIAL = 3
_CANDIDATE = product_at_least(MIN_COSINE - NEAR / 3)  # the least close ``decide`` can use
EVERYTHING = (Topic("*"),)  # what a reader with no topic is given: every paper, by upvotes


# (topics, within: a bitset of papers in reach or None for all, limit, dial step)
Reader = tuple[Sequence[Topic], int | None, int, int]
SentenceSource = Callable[[int], tuple[np.ndarray, list[tuple[int, int]]] | None]


class Scorer:
    """Scores topics against one day's papers, caching what subscribers share."""

    def __init__(
        self,
        ranker: Ranker,
        *,
        reference: Reference,
        vectors: np.ndarray | None,
        present: np.ndarray | None,
        topic_vectors: dict[str, np.ndarray],
        topic_text: Callable[[Topic], str],
        sentences: SentenceSource | None = None,
        voted: Mapping[int, np.ndarray] | None = None,
        voted_titles: Mapping[int, str] | None = None,
    ) -> None:
        self.ranker, self.reference = ranker, reference
        self.vectors, self.present = vectors, present
        self.topic_vectors, self.topic_text = topic_vectors, topic_text
        self.sentences = sentences
        self.voted = dict(voted or {})  # vectors of the papers readers voted on, by id
        self.voted_titles = dict(voted_titles or {})
        # Bounded: a million readers' long tail of topics and combinations must not be
        # kept whole; what many share stays (see Bounded).
        self._topics = Bounded(256)  # Topic -> TopicScores (day-sized arrays)
        self._decided = Bounded(100_000)  # (Topic, dial) -> Decision (sparse)
        self._shown = Bounded(400_000)  # (query, index) -> words as the paper writes them
        self._picks = Bounded(400_000)  # (decision uids, index) -> Pick
        self._picked = Bounded(10_000)  # (topics, within, limit, dial) -> Picked
        self._ceilings = Bounded(400_000)  # query -> its words' ceiling
        # a stem's idf, worked out once a day: at most the words the day's filters name
        self._idf = lru_cache(maxsize=None)(ranker.index.stats.idf)
        n = ranker.index.n
        # planning's batches read their words' scores from here (not kept by the ranker)
        self._words = WordTable(lambda leaf: ranker.leaf_scores(leaf, keep=False), papers=n)
        self._everything = np.ones(n, bool)
        self._zero, self._nothing = np.zeros(n), np.zeros(n, bool)
        if self.present is None:
            self.present = np.ones(n, bool)
        self._all_present = bool(self.present.all())
        self._meaning = vectors is not None and reference.normalises
        self._papers8 = quantise(vectors) if self._meaning else None  # type: ignore[arg-type]
        self._day = Day(ranker.popularity, ranker.upvotes, ranker.seen, ranker.ids)

    # --- one topic over every paper (filters test, the reference) ---------------------

    def topic(self, topic: Topic) -> TopicScores:
        found = self._topics.get(topic)
        if found is None:
            found = self._topics.put(topic, self._score(topic))
        return found

    def _lexical(self, topic: Topic) -> tuple[np.ndarray, np.ndarray, bool, bool]:
        """(matched, lexical, words_only, everything) of the topic's filter."""
        flt, matched, top, words_only, everything = self._filter(topic)
        if top > 0:
            lexical = np.minimum(self.ranker.filter_scores(flt) / top, LEXICAL_CAP)
        else:
            lexical = matched.astype(float)
        return matched, lexical, words_only, everything

    def _matched(self, topics: Sequence[Topic]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``_lexical`` of many topics at once, where their filters match: (matched,
        topics x papers; its entries' lexical scores, by topic, papers ascending;
        ``[words_only, everything]`` per topic), the same values."""
        n = self.ranker.index.n
        filters = [self._filter_parts(t) for t in topics]
        nbytes = (n + 7) // 8
        raw = b"".join(bits.to_bytes(nbytes, "little") for _, bits, *_ in filters)
        packed = np.frombuffer(raw, np.uint8).reshape(len(topics), nbytes)
        matched = np.unpackbits(packed, axis=1, bitorder="little")[:, :n].view(bool)  # 0s and 1s
        by, at = cells(matched)
        tops = np.array([top for _, _, top, *_ in filters])
        lexical = np.ones(len(by))  # a filter that names no word: 1 where it matches
        bounds = np.searchsorted(by, np.arange(len(topics) + 1))
        leaves = [flt.leaves if top > 0 else () for flt, _, top, *_ in filters]
        for a, b in self._words.groups(leaves):
            lo, hi = bounds[a], bounds[b]
            rows = self._words.rows([f[0].query for f in filters[a:b]], leaves[a:b])
            total = self._words.sums(rows, by[lo:hi] - a, at[lo:hi])
            top = tops[by[lo:hi]]
            scored = top > 0
            lexical[lo:hi][scored] = np.minimum(total[scored] / top[scored], LEXICAL_CAP)
        words_only = np.array([f[3] for f in filters], bool)
        everything = np.array([f[4] for f in filters], bool)
        return matched, lexical, np.stack([words_only, everything])

    def _filter_parts(self, topic: Topic) -> tuple[CompiledFilter, int, float, bool, bool]:
        """The topic's filter, what it matches (a bitset), its words' ceiling (0: it
        names none), and whether it names no words (words_only) or is "*" (everything)."""
        flt = compile_filter(topic.query)
        top = self._ceilings.get(flt.query)
        if top is None:
            top = self._ceilings.put(flt.query, flt.ceiling(self._idf))
        everything = isinstance(flt.tree, All)
        return flt, self.ranker.filter_bits(flt), top, top == 0.0 and not everything, everything

    def _filter(self, topic: Topic) -> tuple[CompiledFilter, np.ndarray, float, bool, bool]:
        """``_filter_parts`` with what the filter matches as a mask over the papers."""
        flt, bits, top, words_only, everything = self._filter_parts(topic)
        return flt, self.ranker.mask(bits), top, words_only, everything

    def _semantic(self, q: np.ndarray, cosine: np.ndarray) -> np.ndarray:
        centre, spread = self.reference.spread(q[None, :])  # as in any batch (meaning.py)
        semantic = (cosine - centre[0]) / spread[0]
        return semantic if self._all_present else np.where(self.present, semantic, 0.0)

    def _score(self, topic: Topic) -> TopicScores:
        matched, lexical, words_only, everything = self._lexical(topic)
        semantic, cosine, has_meaning = self._zero, self._zero, self._nothing
        shift, carrier, liked_ids = self._zero, None, []
        q = self.topic_vectors.get(self.topic_text(topic)) if self._meaning else None
        if q is not None:
            liked_ids, liked, disliked = split_votes(topic.taught, self.voted)
            if liked or disliked:
                q = rocchio(q, liked=liked, disliked=disliked)
                shift, carrier = neighbours(
                    self.vectors, reference=self.reference, liked=liked, disliked=disliked,
                    alpha=ALPHA,
                )  # type: ignore[arg-type]  # fmt: skip
                if not self._all_present:
                    shift = np.where(self.present, shift, 0.0)
            has_meaning = self.present  # rows without a vector are zeros: cosine 0
            cosine = cosines(self._papers8, quantise(q[None, :]))[0]  # type: ignore[arg-type]
            semantic = self._semantic(q, cosine)
        fused = lexical + ALPHA * semantic + shift
        return TopicScores(
            topic, matched, lexical, semantic, cosine, has_meaning, words_only, everything, fused,
            shift, tuple(liked_ids), carrier,
        )  # fmt: skip

    def _dense(self, topic: Topic, dial: int) -> tuple[TopicScores, Decided, np.ndarray | None]:
        """The topic's decision over every paper, one row; and what votes carried in."""
        s, step = self.topic(topic), DIAL.get(dial, DIAL[DEFAULT_DIAL])
        d = decide(s.rows(), step)
        if not s.liked:
            return s, d, None
        # In because of the votes: out for the topic as the reader wrote it.
        voted = d.inside & ~self._dense(Topic(topic.query, topic.about), dial)[1].inside
        return s, replace(d, carried=d.carried & ~voted), voted  # a vote carried it

    # --- many topics at once (planning) ------------------------------------------------

    def prepare(self, topics: Mapping[int, Iterable[Topic]]) -> None:
        """Decide the topics not decided yet (``{dial step: topics}``), in batches.

        A chunk of planning is prepared at once: when the decisions' cache must be
        emptied to hold the new ones, the chunk's topics decided already (at any of its
        dial steps) stay, or each would be decided again alone when its readers are
        merged (``_decision``). A chunk's topics must fit in the cache: 5,000 readers
        of 20 topics do.
        """
        wanted = [(t, dial) for dial, ts in topics.items() for t in dict.fromkeys(ts)]
        missing = [(t, dial) for t, dial in wanted if (t, dial) not in self._decided]
        self._decided.room(len(missing), keep=wanted)
        for t, dial in missing:
            if t.taught:  # its own centre and neighbours: one at a time
                s, d, voted = self._dense(t, dial)
                carrier = s.carrier[None] if s.carrier is not None else None
                (decision,) = sparse(
                    d, s.rows(), keys=[(t, dial)], queries=[t.query],
                    voted=voted, liked=carrier, liked_ids=s.liked,
                )  # fmt: skip
                self._decided.put(decision.key, decision)
        for dial in topics:
            plain = [t for t, at in missing if at == dial and not t.taught]
            for start in range(0, len(plain), BATCH):
                for decision in self._batch(plain[start : start + BATCH], dial):
                    self._decided.put(decision.key, decision)

    def _batch(self, topics: list[Topic], dial: int) -> list[Decision]:
        """Untaught topics decided together, on the papers that can be in or near their
        lines only: what each filter matches, what is close enough in meaning to be let
        in by it, everything for "*". The rest of the day is neither whatever its
        scores, so the rules never see it; the values they see are the reference's
        (``_score``), computed element by element the same way."""
        m = len(topics)
        matched, values, (words_only, everything) = self._matched(topics)
        with_q, qs = [], []
        if self._meaning:
            vector, text = self.topic_vectors.get, self.topic_text
            for t, topic in enumerate(topics):
                q = vector(text(topic))
                if q is not None:
                    with_q.append(t)
                    qs.append(q)
        candidate = matched | everything[:, None]
        if qs:
            # The products, not the cosines: a batch's cosines are made only where read.
            found = products(self._papers8, quantise(np.stack(qs)))  # type: ignore[arg-type]
            # Nothing less close can be near the line by meaning (``decide``).
            close = found >= _CANDIDATE
            if len(with_q) == m:  # every topic has a vector (the usual case): no copy
                candidate |= close
            else:
                candidate[with_q] |= close
        rows, papers = cells(candidate)
        semantic, cosine = np.zeros(len(rows)), np.zeros(len(rows))
        has_meaning = np.zeros(len(rows), bool)
        if qs:
            centre, spread = self.reference.spread(np.stack(qs))  # exact, as one alone
            which = np.full(m, -1)
            which[with_q] = np.arange(len(qs))
            some = np.flatnonzero(which[rows] >= 0)
            k, i = which[rows[some]], papers[some]
            cosine[some] = as_cosines(found[k, i])
            semantic[some] = (cosine[some] - centre[k]) / spread[k]
            has_meaning[some] = self.present[i]  # type: ignore[index]
            if not self._all_present:
                semantic = np.where(has_meaning, semantic, 0.0)
        shift = np.zeros(len(rows))
        hit = matched[rows, papers]
        lexical = np.zeros(len(rows))
        lexical[hit] = values  # the matched cells are candidates, in the same order
        r = Rows(
            hit, lexical, semantic, cosine, has_meaning, shift,
            lexical + ALPHA * semantic + shift, words_only[rows], everything[rows],
        )  # fmt: skip
        step = DIAL.get(dial, DIAL[DEFAULT_DIAL])
        return entries(
            decide(r, step), r, rows=rows, papers=papers,
            keys=[(t, dial) for t in topics], queries=[t.query for t in topics],
        )  # fmt: skip

    def _decision(self, topic: Topic, dial: int) -> Decision:
        found = self._decided.get((topic, dial))
        if found is None:
            self.prepare({dial: [topic]})
            found = self._decided[(topic, dial)]
        return found

    # --- a subscriber's pick ------------------------------------------------------------

    def pick(
        self, topics: Sequence[Topic], *, within: int | None, limit: int, dial: int = DEFAULT_DIAL
    ) -> Picked:
        """The papers ``topics`` let in at this dial step, best first, at most ``limit``,
        and those just below the line. Memoized: subscribers who chose the same topics
        and dial, due the same papers, share the answer."""
        return self.pick_many([(topics, within, limit, dial)])[0]

    def pick_many(self, readers: Sequence[Reader]) -> list[Picked]:
        """``pick`` for many readers (a chunk of planning): those not memoized are
        merged together (``merge_many``), then explained."""
        out: list[Picked | None] = []
        missing: dict[tuple[tuple[Topic, ...], int | None, int, int], list[int]] = {}
        for k, (topics, within, limit, dial) in enumerate(readers):
            key = (tuple(topics), within, limit, dial)
            found = self._picked.get(key)
            out.append(found)
            if found is None:
                missing.setdefault(key, []).append(k)
        keys = list(missing)
        for key, merged in zip(keys, self.order_many(keys), strict=True):
            decided, result = merged
            picked = self._picked.put(key, self._explained(decided, result))
            for k in missing[key]:
                out[k] = picked
        return out  # type: ignore[return-value]

    def order_many(self, readers: Sequence[Reader]) -> list[tuple[list[Decision], Merged]]:
        """The picks without explanations: per reader, their topics' decisions, and the
        best ``limit`` papers in and just below the line, with the count of those in;
        the readers merged together (``merge_many``)."""
        decided = [
            [self._decision(t, dial) for t in topics or EVERYTHING]
            for topics, _, _, dial in readers
        ]
        reaches: dict[int | None, int] = {}  # within -> index in masks
        masks: list[np.ndarray] = []
        by_limit: dict[int, list[int]] = {}
        for k, (_, within, limit, _) in enumerate(readers):
            if within not in reaches:
                reaches[within] = len(masks)
                masks.append(self._everything if within is None else self.ranker.mask(within))
            by_limit.setdefault(limit, []).append(k)
        out: list[tuple[list[Decision], Merged]] = [None] * len(readers)  # type: ignore[list-item]
        for limit, ks in by_limit.items():
            merged = merge_many(
                [(decided[k], reaches[readers[k][1]]) for k in ks],
                day=self._day,
                reaches=masks,
                limit=limit,
            )
            for k, m in zip(ks, merged, strict=True):
                out[k] = (decided[k], m)
        return out

    def _explained(self, decided: list[Decision], merged: Merged) -> Picked:
        holding: dict[int, tuple[list[Decision], tuple[int, ...]]] = {}  # holders -> (them, uids)
        near = tuple(self._explain(i, v, decided, h, holding) for i, v, h in merged.below)
        margin = merged.margin
        closest = sorted(range(len(near)), key=lambda k: (margin[k], k))
        return Picked(
            matches=tuple(self._explain(i, v, decided, h, holding) for i, v, h in merged.shown),
            total=merged.total,
            near=near,
            unsure=tuple(near[k] for k in closest[:UNSURE]),
        )

    def decide(
        self, topics: Sequence[Topic], *, within: int | None, dial: int = DEFAULT_DIAL
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The plain reference ``pick`` is tested against, over the day's arrays: the
        papers in and just below the line (indexes, best first), and their scores."""
        decided = [self._dense(t, dial)[1] for t in topics or EVERYTHING]
        reach = self.ranker.mask(within) if within is not None else self._everything
        inside = np.logical_or.reduce([d.inside[0] for d in decided]) & reach
        near = np.logical_or.reduce([d.near[0] for d in decided]) & reach & ~inside
        best = np.max(
            [np.where(d.inside[0] | d.near[0], d.value[0], -np.inf) for d in decided], axis=0
        )
        return self._order(inside, best), self._order(near, best), best

    def _order(self, chosen: np.ndarray, best: np.ndarray) -> np.ndarray:
        """Best first: score (raised by at most 25% for upvotes), upvotes, freshness, id."""
        r = self.ranker
        candidates = np.flatnonzero(chosen)
        if len(candidates) < 2:
            return candidates
        score = best[candidates] * r.popularity[candidates]
        order = np.lexsort((r.ids[candidates], -r.seen[candidates], -r.upvotes[candidates], -score))
        return candidates[order]

    def _explain(
        self,
        i: int,
        value: float,
        decided: list[Decision],
        holders: int,
        holding: dict[int, tuple[list[Decision], tuple[int, ...]]],
    ) -> Pick:
        """Why paper i is in (or near): shared by every reader whose topics that hold
        it (``holders``: bit k for ``decided[k]``, as ``merge`` found them) are the same."""
        found_mine = holding.get(holders)
        if found_mine is None:
            them = [d for k, d in enumerate(decided) if (holders >> k) & 1]
            found_mine = holding[holders] = (them, tuple([d.uid for d in them]))
        mine, uids = found_mine
        key = (uids, i)
        found = self._picks.get(key)
        if found is not None:
            return found
        names: list[str] = []
        words: dict[str, None] = {}
        meaning: Topic | None = None
        lexical, semantic, liked = 0.0, None, None
        for d, row in _carrier_first(mine, i):
            names.append(d.query)
            lexical = max(lexical, float(d.lexical[row]))
            if not math.isnan(d.semantic[row]):
                semantic = max(semantic or -math.inf, float(d.semantic[row]))
            flags = int(d.flags[row])
            if flags & MATCHED:
                words.update(dict.fromkeys(self.words_of(d.query, i)))
            if flags & CARRIED and meaning is None:
                meaning = d.key[0]  # type: ignore[assignment]
            if flags & VOTED and liked is None and d.liked[row] >= 0:
                liked = self.voted_titles.get(d.liked_ids[int(d.liked[row])])
        return self._picks.put(
            key,
            Pick(
                index=i,
                paper_id=int(self.ranker.ids[i]),
                score=value,
                lexical=lexical,
                semantic=semantic,
                filters=tuple(names) or ("*",),
                words=tuple(words),
                meaning=meaning is not None,
                close_to=meaning.about if meaning is not None else None,
                sentence=self._nearest(i, meaning) if meaning is not None else None,
                liked=liked,
            ),
        )

    def words_of(self, query: str, i: int) -> tuple[str, ...]:
        """The filter's words as paper ``i`` writes them (for highlighting)."""
        key = (query, i)
        found = self._shown.get(key)
        if found is None:
            words: dict[str, None] = {}
            for leaf in compile_filter(query).leaves:
                words.update(dict.fromkeys(self.ranker.shown(leaf, i)))
            found = self._shown.put(key, tuple(words))
        return found

    def _nearest(self, i: int, topic: Topic) -> tuple[int, int] | None:
        q = self.topic_vectors.get(self.topic_text(topic))
        found = self.sentences(int(self.ranker.ids[i])) if self.sentences is not None else None
        if q is None or found is None or not found[1]:
            return None
        vectors, spans = found
        similarity = vectors @ q
        if not np.any(similarity):
            return None
        return spans[int(np.argmax(similarity))]


def _carrier_first(holding: list[Decision], i: int) -> list[tuple[Decision, int]]:
    """The decisions holding paper ``i`` with its row in each, the one that carried it
    first: of those that let it in, the best score; when none does, the one whose line
    it is nearest. A vote on the paper teaches that topic, and the digest names it first."""
    rows = [(d, d.row(i)) for d in holding]
    if len(rows) < 2:
        return rows
    return sorted(
        rows,
        key=lambda dr: (
            (0, -dr[0].value[dr[1]]) if dr[0].let_in[dr[1]] else (1, dr[0].margin[dr[1]])
        ),
    )  # stable: ties keep the reader's order

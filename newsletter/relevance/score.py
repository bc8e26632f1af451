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
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from newsletter.filters import CorpusStats, Ranker, compile_filter
from newsletter.filters.ast import All, And, Node, Or, Phrase, Term
from newsletter.filters.bm25 import K1
from newsletter.filters.tokens import stem
from newsletter.relevance.feedback import neighbours, rocchio, split_votes
from newsletter.relevance.reference import Reference

ALPHA = 0.2  # what one standard deviation of meaning is worth, in ceiling shares
# Meaning alone lets a paper in only when it is also close in absolute terms: a topic
# no recent paper is about still has papers 4 deviations "closer" than the rest (at a
# cosine of 0.2-0.3 with this model); a synonym-only paper sits at 0.5 and above.
MIN_COSINE = 0.45
LEXICAL_CAP = 1.5
NEAR = 0.15  # "near the line": this far below it (a quarter of that for meaning alone)
UNSURE = 2  # papers just below the line a digest may ask about ("not sure this is for you")


@dataclass(frozen=True, slots=True)
class Step:
    label: str
    threshold: float  # lexical + ALPHA * semantic, for a paper the filter matches
    enter: float  # semantic alone, for a paper it does not


DIAL: dict[int, Step] = {
    1: Step("Fewest, surest papers", 0.80, 3.5),
    2: Step("Fewer papers", 0.70, 3.25),
    3: Step("Balanced", 0.60, 3.0),
    4: Step("More papers", 0.48, 2.75),
    5: Step("More, broader papers", 0.36, 2.5),
}
DEFAULT_DIAL = 3


@dataclass(frozen=True, slots=True)
class Topic:
    query: str
    about: str | None = None
    # The reader's votes in this topic, (paper id, +1 or -1), sorted: part of what the
    # topic is, so subscribers who taught nothing still share one decision.
    taught: tuple[tuple[int, int], ...] = ()


def ceiling(node: Node, stats: CorpusStats) -> float:
    """The BM25F an ideal paper reaches for this filter's words (0: it names none)."""
    match node:
        case Term(word=word, field=field) if field in (None, "title", "abstract"):
            return stats.idf(stem(word)) * (K1 + 1)
        case Phrase(words=words, field=field) if field in (None, "title", "abstract"):
            return sum(stats.idf(stem(w)) for w in words) * (K1 + 1)
        case Or(children=children):
            return max(ceiling(c, stats) for c in children)
        case And(children=children):
            return sum(ceiling(c, stats) for c in children)
        case _:  # NOT, comparisons, org:, *: nothing to score
            return 0.0


@dataclass(frozen=True, slots=True)
class TopicScores:
    """One topic over the day's papers (arrays indexed like the day's index)."""

    topic: Topic
    matched: np.ndarray  # bool
    lexical: np.ndarray  # 0 where unmatched
    semantic: np.ndarray  # z-scores; 0 where a paper or the topic has no vector
    cosine: np.ndarray  # the raw cosines behind them
    has_meaning: np.ndarray  # bool: a z-score was computed for this paper
    words_only: bool  # the filter names no words: its matches are the answer
    everything: bool  # "*"
    fused: np.ndarray  # lexical + ALPHA * semantic + shift
    shift: np.ndarray  # what nearness to voted papers adds (+) or takes (-); 0 untaught
    liked: tuple[int, ...] = ()  # ids of the liked papers with a vector
    carrier: np.ndarray | None = None  # per paper, the index in ``liked`` of the nearest

    def included(self, step: Step) -> np.ndarray:
        if self.everything:
            return np.ones_like(self.matched)
        if self.words_only:
            return self.matched
        by_filter = self.matched & (self.fused >= step.threshold)
        by_meaning = (
            self.has_meaning
            & (self.semantic >= step.enter)
            & (self.cosine >= MIN_COSINE)
            & (self.shift >= 0)  # not a near-duplicate of a paper the reader turned down
        )
        # "More like this": a close neighbour of a liked paper, over the line on its own
        by_vote = (self.shift > 0) & (self.fused >= step.threshold)
        return by_filter | by_meaning | by_vote

    def near(self, step: Step) -> np.ndarray:
        if self.everything or self.words_only:
            return np.zeros_like(self.matched)
        fused = self.fused
        close = self.matched & (fused >= step.threshold - NEAR)
        meaning = (
            self.has_meaning
            & (self.semantic >= step.enter - 4 * NEAR)
            & (self.cosine >= MIN_COSINE - NEAR / 3)
        )
        return (close | meaning) & ~self.included(step)


@dataclass(frozen=True, slots=True)
class Pick:
    """A paper for a subscriber, and why."""

    index: int
    paper_id: int
    score: float
    lexical: float
    semantic: float | None
    filters: tuple[str, ...]  # the topics' filters that let it in, as typed
    words: tuple[str, ...]  # the words that matched, as the paper writes them
    meaning: bool  # its meaning carried it over the line
    close_to: str | None  # the topic sentence it is close to
    sentence: tuple[int, int] | None  # span of the abstract sentence nearest the topic
    liked: str | None = None  # the title of the liked paper whose vote carried it in


@dataclass(frozen=True, slots=True)
class Picked:
    matches: tuple[Pick, ...]
    total: int  # papers in, before the digest's cap
    near: tuple[Pick, ...]  # papers just below the line, best first
    # Of ``near``, the UNSURE closest to the line, closest first: where the topic's
    # decision is least certain, so a vote there teaches the most.
    unsure: tuple[Pick, ...] = ()

    @property
    def more(self) -> int:
        return self.total - len(self.matches)


SentenceSource = Callable[[int], tuple[np.ndarray, list[tuple[int, int]]] | None]


@dataclass(frozen=True, slots=True)
class _Decided:
    """One topic at one dial step, worked out once for all subscribers who share it."""

    scores: TopicScores
    inside: np.ndarray  # bool: let in
    near: np.ndarray  # bool: just below the line
    value: np.ndarray  # what orders them (the fused score; 0 for "*")
    carried: np.ndarray  # bool: meaning carried it over the line
    voted: np.ndarray  # bool: a liked paper's nearness carried it over the line
    margin: np.ndarray  # how far below the line, in fused-score units (for "unsure")


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
        self.voted = voted or {}  # vectors of the papers readers voted on, by paper id
        self.voted_titles = voted_titles or {}
        self._topics: dict[Topic, TopicScores] = {}
        self._decided: dict[tuple[Topic, int], _Decided] = {}
        self._words: dict[tuple[str, int], tuple[str, ...]] = {}
        self._picked: dict[tuple[tuple[Topic, ...], int | None, int, int], Picked] = {}
        n = ranker.index.n
        self._everything = np.ones(n, bool)
        self._zero, self._nothing = np.zeros(n), np.zeros(n, bool)
        if self.present is None:
            self.present = np.ones(n, bool)
        self._all_present = bool(self.present.all())

    def topic(self, topic: Topic) -> TopicScores:
        found = self._topics.get(topic)
        if found is None:
            found = self._topics[topic] = self._score(topic)
        return found

    def _score(self, topic: Topic) -> TopicScores:
        flt = compile_filter(topic.query)
        everything = isinstance(flt.tree, All)
        matched = self.ranker.mask(self.ranker.filter_bits(flt))
        top = ceiling(flt.tree, self.ranker.index.stats)
        words_only = top == 0.0 and not everything
        if top > 0:
            lexical = np.minimum(self.ranker.filter_scores(flt) / top, LEXICAL_CAP)
        else:
            lexical = matched.astype(float)
        semantic, cosine, has_meaning = self._zero, self._zero, self._nothing
        shift, carrier, liked_ids = self._zero, None, []
        q = self.topic_vectors.get(self.topic_text(topic))
        if q is not None and self.vectors is not None and self.reference.vectors >= 2:
            liked_ids, liked, disliked = split_votes(topic.taught, self.voted)
            if liked or disliked:
                q = rocchio(q, liked=liked, disliked=disliked)
                shift, carrier = neighbours(
                    self.vectors, reference=self.reference, liked=liked, disliked=disliked,
                    alpha=ALPHA,
                )  # fmt: skip
            centre, spread = self.reference.spread(q[None, :])
            has_meaning = self.present
            cosine = self.vectors @ q  # rows without a vector are zeros: cosine 0
            semantic = (cosine - centre[0]) / spread[0]
            if not self._all_present:
                semantic = np.where(has_meaning, semantic, 0.0)
                shift = np.where(has_meaning, shift, 0.0)
        fused = lexical + ALPHA * semantic + shift
        return TopicScores(
            topic, matched, lexical, semantic, cosine, has_meaning, words_only, everything, fused,
            shift, tuple(liked_ids), carrier,
        )  # fmt: skip

    def _decision(self, topic: Topic, dial: int) -> _Decided:
        key = (topic, dial)
        found = self._decided.get(key)
        if found is None:
            s, step = self.topic(topic), DIAL.get(dial, DIAL[DEFAULT_DIAL])
            inside = s.included(step)
            meaning = s.has_meaning & (~s.matched | (s.lexical < step.threshold))
            carried = inside & meaning & (not s.words_only) & (not s.everything)
            voted = np.zeros_like(inside)
            if s.liked:  # in because of the votes: out for the topic as the reader wrote it
                voted = inside & ~self._decision(Topic(topic.query, topic.about), dial).inside
                carried &= ~voted  # a vote carried it, not the topic's sentence
            value = np.zeros(len(inside)) if s.everything else s.fused
            # Below the line by the filter's score when it matched, else by meaning alone.
            margin = np.where(
                s.matched, step.threshold - s.fused, ALPHA * (step.enter - s.semantic)
            )
            found = self._decided[key] = _Decided(
                s, inside, s.near(step), value, carried, voted, margin
            )
        return found

    def pick(
        self, topics: Sequence[Topic], *, within: int | None, limit: int, dial: int = DEFAULT_DIAL
    ) -> Picked:
        """The papers ``topics`` let in at this dial step, best first, at most ``limit``,
        and those just below the line. Memoized: subscribers who chose the same topics
        and dial, due the same papers, share the answer."""
        key = (tuple(topics), within, limit, dial)
        found = self._picked.get(key)
        if found is None:
            found = self._picked[key] = self._pick(topics, within=within, limit=limit, dial=dial)
        return found

    def _pick(
        self, topics: Sequence[Topic], *, within: int | None, limit: int, dial: int
    ) -> Picked:
        decided, shown, below, best = self.decide(topics, within=within, dial=dial)
        near = tuple(self._explain(i, decided, best) for i in below[:limit])
        margin = np.min([np.where(d.near, d.margin, np.inf) for d in decided], axis=0)
        closest = sorted(range(len(near)), key=lambda k: (margin[near[k].index], k))
        return Picked(
            matches=tuple(self._explain(i, decided, best) for i in shown[:limit]),
            total=len(shown),
            near=near,
            unsure=tuple(near[k] for k in closest[:UNSURE]),
        )

    def decide(
        self, topics: Sequence[Topic], *, within: int | None, dial: int = DEFAULT_DIAL
    ) -> tuple[list[_Decided], np.ndarray, np.ndarray, np.ndarray]:
        """The decision without explanations: the topics' decisions, the papers in and
        just below the line (indexes, best first), and the scores that order them."""
        decided = [self._decision(t, dial) for t in topics or (Topic("*"),)]
        reach = self.ranker.mask(within) if within is not None else self._everything
        if len(decided) == 1:
            d = decided[0]
            inside, near, best = d.inside & reach, d.near & reach & ~d.inside, d.value
        else:
            inside = np.logical_or.reduce([d.inside for d in decided]) & reach
            near = np.logical_or.reduce([d.near for d in decided]) & reach & ~inside
            best = np.max([np.where(d.inside | d.near, d.value, -np.inf) for d in decided], axis=0)
        return decided, self._order(inside, best), self._order(near, best), best

    def _order(self, chosen: np.ndarray, best: np.ndarray) -> np.ndarray:
        """Best first: score (raised by at most 25% for upvotes), upvotes, freshness, id."""
        r = self.ranker
        candidates = np.flatnonzero(chosen)
        if len(candidates) < 2:
            return candidates
        score = best[candidates] * r.popularity[candidates]
        order = np.lexsort((r.ids[candidates], -r.seen[candidates], -r.upvotes[candidates], -score))
        return candidates[order]

    def _explain(self, i: int, decided: list[_Decided], best: np.ndarray) -> Pick:
        i = int(i)
        names: list[str] = []
        words: dict[str, None] = {}
        meaning_topic: TopicScores | None = None
        lexical, semantic, liked = 0.0, None, None
        for d in decided:
            if not (d.inside[i] or d.near[i]):
                continue
            s = d.scores
            names.append(s.topic.query)
            lexical = max(lexical, float(s.lexical[i]))
            if s.has_meaning[i]:
                semantic = max(semantic or -math.inf, float(s.semantic[i]))
            if s.matched[i]:
                words.update(dict.fromkeys(self.words_of(s.topic.query, i)))
            if d.carried[i] and meaning_topic is None:
                meaning_topic = s
            if d.voted[i] and liked is None and s.carrier is not None:
                liked = self.voted_titles.get(s.liked[int(s.carrier[i])])
        sentence = self._nearest(i, meaning_topic) if meaning_topic is not None else None
        return Pick(
            index=i,
            paper_id=int(self.ranker.ids[i]),
            score=float(best[i]),
            lexical=lexical,
            semantic=semantic,
            filters=tuple(names) or ("*",),
            words=tuple(words),
            meaning=meaning_topic is not None,
            close_to=meaning_topic.topic.about if meaning_topic is not None else None,
            sentence=sentence,
            liked=liked,
        )

    def words_of(self, query: str, i: int) -> tuple[str, ...]:
        """The filter's words as paper ``i`` writes them (for highlighting)."""
        key = (query, i)
        found = self._words.get(key)
        if found is None:
            words: dict[str, None] = {}
            for leaf in compile_filter(query).leaves:
                words.update(dict.fromkeys(self.ranker.shown(leaf, i)))
            found = self._words[key] = tuple(words)
        return found

    def _nearest(self, i: int, scores: TopicScores) -> tuple[int, int] | None:
        q = self.topic_vectors.get(self.topic_text(scores.topic))
        found = self.sentences(int(self.ranker.ids[i])) if self.sentences is not None else None
        if q is None or found is None or not found[1]:
            return None
        vectors, spans = found
        similarity = vectors @ q
        if not np.any(similarity):
            return None
        return spans[int(np.argmax(similarity))]

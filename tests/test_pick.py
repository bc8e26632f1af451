"""The fast pick (topics' sparse decisions merged, stopping once the digest is full)
against the plain reference over the day's arrays (``Scorer.decide``), on the bundled
corpus: random topic combinations, dial steps, reaches and digest sizes, with votes,
with ``*`` and with a filter that names no words."""

from __future__ import annotations

import random

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from newsletter.embed.encoder import DIM
from newsletter.filters import DayIndex, Ranker, compile_filter
from newsletter.filters.ast import Phrase, Term
from newsletter.relevance import Reference, Scorer, Topic, pick
from newsletter.relevance.decisions import cells
from newsletter.relevance.score import UNSURE
from newsletter.relevance.words import WordTable
from tests.test_filters import load_corpus_docs

QUERIES = [
    "diffusion", "language model", '"language model"', "video OR audio", "reasoning -math",
    "agents", "retrieval AND NOT video", "title:transformer", "quantiz*", "upvotes>=5", "*",
    "speech", "robot OR robotics", "3D", "benchmark",
]  # fmt: skip


@pytest.fixture(scope="module")
def scorer() -> Scorer:
    docs = load_corpus_docs()
    rng = np.random.default_rng(5)

    def unit(rows: int) -> np.ndarray:
        v = rng.standard_normal((rows, DIM)).astype(np.float32)
        return v / np.linalg.norm(v, axis=1, keepdims=True)

    index = DayIndex(docs)
    vectors = unit(len(docs))
    # Topic vectors near some papers, so meaning lets papers in and near the line too.
    texts = [*QUERIES, *(f"{q} | about" for q in QUERIES)]
    topic_vectors = {}
    for k, text in enumerate(texts):
        v = vectors[k * 7] + 0.5 * unit(1)[0]
        topic_vectors[text] = v / np.linalg.norm(v)
    window = unit(800)
    reference = Reference(
        stats=index.stats, mean=window.mean(0), covariance=np.cov(window, rowvar=False),
        papers=800, vectors=800,
    )  # fmt: skip
    voted = {int(docs[k].id): vectors[k] for k in range(0, 60, 3)}
    present = np.ones(len(docs), bool)
    present[::11] = False  # some papers have no vector yet
    return Scorer(
        Ranker(index), reference=reference, vectors=vectors * present[:, None], present=present,
        topic_vectors=topic_vectors, topic_text=_text, voted=voted,
        voted_titles={pid: f"paper {pid}" for pid in voted},
    )  # fmt: skip


def _text(topic: Topic) -> str:
    return f"{topic.query} | about" if topic.about else topic.query


def _topic(rng: random.Random, scorer: Scorer) -> Topic:
    query = rng.choice(QUERIES)
    about = "about" if rng.random() < 0.4 else None
    ids = sorted(scorer.voted)
    taught = ()
    if rng.random() < 0.3:
        taught = tuple(sorted((pid, rng.choice((1, -1))) for pid in rng.sample(ids, 3)))
    return Topic(query, about, taught)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(seed=st.integers(0, 10**9), limit=st.integers(0, 25), dial=st.integers(1, 5))
def test_the_pick_equals_the_reference(scorer: Scorer, seed: int, limit: int, dial: int) -> None:
    rng = random.Random(seed)
    topics = [_topic(rng, scorer) for _ in range(rng.randint(0, 4))]
    within = _within(rng, scorer.ranker.index.n)
    # Decided in a batch with every other topic, as planning does; compared with each
    # topic decided alone.
    scorer.prepare({dial: [Topic(q, a) for q in QUERIES for a in (None, "about")]})
    picked = scorer.pick(topics, within=within, limit=limit, dial=dial)
    _assert_reference(scorer, picked, topics, within, limit, dial)

    # "Not sure": of the papers below the line, the closest to it (by the reference's margins).
    margins = [
        min(
            float(d.margin[0][m.index])
            for d in (scorer._dense(t, dial)[1] for t in topics or [Topic("*")])
            if d.near[0][m.index]
        )
        for m in picked.near
    ]
    closest = sorted(range(len(picked.near)), key=lambda k: (margins[k], k))[:UNSURE]
    assert [m.index for m in picked.unsure] == [picked.near[k].index for k in closest]
    for m in picked.matches:  # what carried it is named: a word, meaning, or a vote
        wordless = set(m.filters) & {"*", "upvotes>=5"}  # filters that name no words
        assert m.words or m.meaning or m.liked or wordless, m


def test_a_paper_names_first_the_topic_that_carried_it(scorer: Scorer) -> None:
    """A vote on a paper teaches the topic the digest names first: of the reader's
    topics that let it in, the one that scores it best; for a paper below every line,
    the topic whose line it is nearest. Not simply the first of the reader's topics."""
    rng = random.Random(7)
    reordered = 0
    for _ in range(60):
        queries = rng.sample(QUERIES, 3)
        topics = [Topic(q, rng.choice((None, "about"))) for q in queries]
        dial = rng.randint(1, 5)
        picked = scorer.pick(topics, within=None, limit=25, dial=dial)
        dense = {t.query: scorer._dense(t, dial)[1] for t in topics}
        for m in picked.matches:
            letting = [q for q in m.filters if dense[q].inside[0][m.index]]
            assert m.filters[0] in letting, m
            assert dense[m.filters[0]].value[0][m.index] == max(
                dense[q].value[0][m.index] for q in letting
            ), m
            reordered += m.filters[0] != next(q for q in queries if q in m.filters)
        for m in picked.near:
            assert not any(dense[q].inside[0][m.index] for q in m.filters), m
            assert dense[m.filters[0]].margin[0][m.index] == min(
                dense[q].margin[0][m.index] for q in m.filters
            ), m
            reordered += m.filters[0] != next(q for q in queries if q in m.filters)
    assert reordered > 10  # cases where the reader's first topic is not the carrier


def _within(rng: random.Random, n: int) -> int | None:
    if rng.random() < 0.3:
        return None
    within = ((1 << n) - 1) & ~((1 << rng.randint(0, n)) - 1)  # a suffix of new papers
    for _ in range(rng.randint(0, 40)):  # minus some already sent
        within &= ~(1 << rng.randrange(n))
    return within


def _assert_reference(scorer: Scorer, picked, topics, within, limit, dial) -> None:  # type: ignore[no-untyped-def]
    shown, below, best = scorer.decide(topics, within=within, dial=dial)
    assert [m.index for m in picked.matches] == shown[:limit].tolist()
    assert picked.total == len(shown)
    assert [m.index for m in picked.near] == below[:limit].tolist()
    assert [m.score for m in picked.matches + picked.near] == [
        float(best[i]) for i in [*shown[:limit], *below[:limit]]
    ]


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(seed=st.integers(0, 10**9), dial=st.integers(1, 5))
def test_a_chunk_of_readers_merged_together_equals_the_reference(
    scorer: Scorer, seed: int, dial: int
) -> None:
    """Planning merges a chunk of readers at once (``pick_many``): readers with no
    topic, the same topics twice, other reaches and digest sizes, side by side."""
    rng = random.Random(seed)
    n = scorer.ranker.index.n
    readers = []
    for _ in range(rng.randint(1, 30)):
        if readers and rng.random() < 0.2:
            readers.append(rng.choice(readers))  # the same reader's choices again
            continue
        topics = [_topic(rng, scorer) for _ in range(rng.randint(0, 4))]
        readers.append((topics, _within(rng, n), rng.choice((0, 3, 20)), dial))
    scorer._picked.clear()  # nothing memoized: every reader merged in the chunk
    for (topics, within, limit, dial_), picked in zip(
        readers, scorer.pick_many(readers), strict=True
    ):
        _assert_reference(scorer, picked, topics, within, limit, dial_)


def test_readers_whose_topics_hold_no_paper_get_an_empty_pick(scorer: Scorer) -> None:
    """Merged together: nothing in any reader's reach, or no paper in any topic."""
    n = scorer.ranker.index.n
    nothing = [Topic("zyxwvut"), Topic("qwertyuiop AND diffusion")]
    readers = [
        (nothing, None, 20, 3),
        (nothing[:1], (1 << n) - 1, 20, 3),
        ([Topic("diffusion")], 0, 5, 3),
    ]
    scorer._picked.clear()
    for topics, within, limit, dial in readers:
        picked = scorer.pick_many([(topics, within, limit, dial)])[0]
        assert (picked.matches, picked.near, picked.total) == ((), (), 0)
        _assert_reference(scorer, picked, topics, within, limit, dial)
    scorer._picked.clear()
    assert all(p.total == 0 for p in scorer.pick_many(readers))


def test_a_chunks_topics_decided_before_the_cache_is_emptied_stay_decided(scorer: Scorer) -> None:
    """Planning decides a chunk's new topics, then merges its readers. When the new ones
    do not fit, the cache is emptied first; the chunk's topics decided by an earlier
    chunk, at any of its dial steps, must stay, or each would be decided again alone
    (a 2.5 s stall on a 1,000-paper day in bench/match.py)."""
    from newsletter.bounded import Bounded

    topics = [Topic(q) for q in QUERIES[:12]]
    before = scorer._decided
    scorer._decided = Bounded(12)
    try:
        scorer.prepare({3: topics[:6], 1: topics[:4]})
        earlier = {(t, d): scorer._decided[(t, d)].uid for t in topics[2:4] for d in (1, 3)}
        # 10 held + 4 new > 12: emptied, keeping the 6 this chunk decided before
        scorer.prepare({3: topics[2:8], 1: topics[2:6]})
        assert all((t, 3) in scorer._decided for t in topics[2:8])
        assert all((t, 1) in scorer._decided for t in topics[2:6])
        assert {key: scorer._decided[key].uid for key in earlier} == earlier
        assert (topics[0], 3) not in scorer._decided  # the cache was emptied indeed
    finally:
        scorer._decided = before


BATCHED = [
    *QUERIES, "NOT video", "-video", 'org:"ZIP Lab"', 'org:"ZIP Lab" OR diffusion',
    "reasoning OR reasoning", "model language", "language AND model AND diffusion",
    '(video OR "language model") AND NOT audio reasoning', "=models", "has:code",
    "nothingsuchword", "abstract:diffusion title:model", "diffusion model video audio speech",
]  # fmt: skip


# The word table's room: every word at once; one word (one group per topic, the table
# grown for each longer filter); three words (emptied and refilled again and again).
@pytest.mark.parametrize("words", [None, 1, 3])
def test_a_batchs_lexical_scores_are_each_topics_own_bit_for_bit(
    scorer: Scorer, words: int | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Planning sums a batch's words at its matches together, from its word table;
    ``filters test`` and the reference score one topic over the day's arrays. The same
    float operations in the same order, so the same bits: for filters naming no words,
    shared words in other orders, NOT, fields, exact words and filters repeated, in
    two batches (the second reads rows the first wrote, or refills them)."""
    n = scorer.ranker.index.n
    if words is not None:
        monkeypatch.setattr("newsletter.relevance.words.CELLS", words * n)
    written: list[object] = []

    def scores(leaf: Term | Phrase) -> np.ndarray:
        written.append(leaf)
        return scorer.ranker.leaf_scores(leaf, keep=False)

    table = WordTable(scores, papers=n)
    monkeypatch.setattr(scorer, "_words", table)
    topics = [Topic(q) for q in [*BATCHED, *reversed(BATCHED)]]
    shuffled = random.Random(3).sample(topics, len(topics))  # other groups, rows mixed
    for batch in (topics, shuffled):
        matched, values, (words_only, everything) = scorer._matched(batch)
        at = 0
        for k, topic in enumerate(batch):
            mine, lexical, alone_words_only, alone_everything = scorer._lexical(topic)
            assert np.array_equal(matched[k], mine), topic.query
            got = values[at : at + int(mine.sum())]
            assert np.array_equal(got.view(np.int64), lexical[mine].view(np.int64)), topic.query
            assert (words_only[k], everything[k]) == (alone_words_only, alone_everything)
            at += int(mine.sum())
        assert at == len(values)
        assert words_only.any() and everything.any() and (values != 1.0).any()
    distinct = {leaf for t in topics for leaf in compile_filter(t.query).leaves}
    if words is None:  # each word written once, the second batch read the first's rows
        assert sorted(map(repr, written)) == sorted(map(repr, distinct))
    else:  # the table was emptied and refilled
        assert set(written) <= distinct and len(written) > 2 * len(distinct)


@given(rows=st.integers(0, 5), columns=st.integers(0, 9), seed=st.integers(0, 2**32 - 1))
def test_cells_are_numpys_nonzero(rows: int, columns: int, seed: int) -> None:
    mask = np.random.default_rng(seed).random((rows, columns)) < 0.3
    got, want = cells(mask), np.nonzero(mask)
    assert all(np.array_equal(g, w) for g, w in zip(got, want, strict=True))


@given(
    seed=st.integers(0, 2**32 - 1),
    readers=st.integers(1, 6),
    entries=st.integers(0, 80),
    limit=st.integers(0, 12),
    distinct=st.sampled_from([1, 3, 1000]),  # all keys equal; many ties; few
    scale=st.sampled_from([0.01, 3.0, 1e6, 1e-310, 1.5e305]),  # subnormal to overflowing
    odd=st.sampled_from([None, np.inf, -np.inf, np.nan]),
)
def test_contenders_keep_every_readers_best_of_each_kind(
    seed: int,
    readers: int,
    entries: int,
    limit: int,
    distinct: int,
    scale: float,
    odd: float | None,
) -> None:
    """What the merge may drop before ordering: never one of a reader's ``limit`` best
    in, nor of its ``limit`` best below (best: highest key, then first), whatever ties,
    spreads (subnormal, overflowing) and non-numbers the keys have."""
    rng = np.random.default_rng(seed)
    reader = np.sort(rng.integers(0, readers, entries))
    key = rng.integers(0, distinct, entries) * scale
    below = rng.random(entries) < 0.2
    key[below] = -key[below]  # some below zero: a spread of 3e308 is no number
    if odd is not None and entries:
        key[rng.integers(0, entries)] = odd
    inside = rng.random(entries) < 0.6
    kept = pick.contenders(reader, key, inside, limit=limit, readers=readers)
    for r in range(readers):
        for kind in (inside, ~inside):
            mine = np.flatnonzero((reader == r) & kind)
            best = mine[np.lexsort((mine, -key[mine]))][:limit]
            assert kept[best].all(), (r, best, np.flatnonzero(kept))
    if entries and distinct == 1000 and limit and odd is None and 1e-300 < scale < 1e300:
        # spread keys: most of a crowd is dropped
        crowded = np.bincount(reader[inside], minlength=readers) > 8 * limit
        dropped = ~kept & inside & crowded[reader]
        assert dropped.sum() >= (inside & crowded[reader]).sum() // 3 or not crowded.any()

"""The index over stored postings answers exactly as the in-memory index and the naive
matcher: the same papers for every filter, the same word scores, the same explanations."""

from __future__ import annotations

import dataclasses
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlmodel import Session, select

from newsletter import db
from newsletter.corpus.ingest import ingest
from newsletter.corpus.postings import index_pending, stored_index
from newsletter.embed.encoder import MODEL_NAME
from newsletter.embed.store import embed_papers, ensure_topic_vectors
from newsletter.filters import (
    CorpusStats,
    DayIndex,
    PaperDoc,
    Ranker,
    compile_filter,
    naive,
    parse_filter,
)
from newsletter.filters.ast import Node, Phrase, Term
from newsletter.filters.bitsets import iter_bits
from newsletter.filters.index import compile_tree
from newsletter.filters.segments import Occurrences, build
from newsletter.filters.stored import MemoryStore, StoredIndex
from newsletter.filters.tokens import tokens
from newsletter.models import IndexSegment, Paper
from newsletter.relevance import Topic
from newsletter.relevance.day import corpus_scorer, day_scorer, text_of
from newsletter.relevance.reference import load_reference
from tests.conftest import CORPUS
from tests.test_cli import run
from tests.test_filters import (
    _agreement_queries,
    load_corpus_docs,
    metadata_papers,
    trees,
    with_metadata,
)


@pytest.fixture(scope="module")
def docs() -> list[PaperDoc]:
    return with_metadata(load_corpus_docs())


@pytest.fixture(scope="module")
def memory(docs: list[PaperDoc]) -> DayIndex:
    return DayIndex(docs)


@pytest.fixture(scope="module")
def stored(docs: list[PaperDoc], memory: DayIndex) -> StoredIndex:
    store = MemoryStore(docs)
    return StoredIndex(store, store.catalogue, stats=memory.stats)


def test_stored_index_matches_as_the_in_memory_one_over_the_corpus(
    docs: list[PaperDoc], memory: DayIndex, stored: StoredIndex
) -> None:
    queries = _agreement_queries(docs, 1500, seed=20261130)
    split = 0
    for query in queries:
        tree = parse_filter(query)
        expected = memory.evaluate(tree)
        assert stored.evaluate(tree) == expected, query
        assert compile_filter(query).run(stored) == expected, query
        split += 0 < expected.bit_count() < len(docs)
    assert split > len(queries) // 2
    # word prefixes, exact words, long phrases and numbers are among them
    assert any("*" in q for q in queries) and any('"' in q for q in queries)
    assert any("=" in q for q in queries) and any(">" in q or "<" in q for q in queries)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(metadata_papers, min_size=1, max_size=8), trees(3))
def test_stored_index_agrees_with_naive_on_random_papers(
    papers: list[PaperDoc], tree: Node
) -> None:
    papers = [dataclasses.replace(p, id=i + 1) for i, p in enumerate(papers)]
    store = MemoryStore(papers)
    index = StoredIndex(store, store.catalogue, stats=DayIndex(papers).stats)
    expected = {i for i, doc in enumerate(papers) if naive.matches(tree, doc)}
    assert set(iter_bits(index.evaluate(tree))) == expected
    assert set(iter_bits(compile_tree(tree)(index))) == expected


def test_stored_word_scores_equal_the_paper_by_paper_oracle(
    docs: list[PaperDoc], memory: DayIndex, stored: StoredIndex
) -> None:
    """Every leaf kind, the ones the in-memory index scores paper by paper included
    (prefixes, exact words, phrases of three words or more)."""
    fast, oracle = Ranker(stored), Ranker(memory)
    leaves: set[Term | Phrase] = set()
    for doc in docs[::9]:
        words = tokens(doc.title)
        for a, b, c in zip(words, words[1:], words[2:], strict=False):
            leaves |= {Term(a), Term(a, "title", exact=True), Phrase((a, b, c))}
            leaves |= {Term(a[:3], prefix=True), Phrase((a, b), "abstract")}
    assert len(leaves) > 400
    for leaf in leaves:
        got, want = fast.leaf_scores(leaf), oracle.leaf_scores_by_paper(leaf)
        assert np.allclose(got, want, rtol=1e-12, atol=1e-12), leaf
        assert got.any() == want.any()
    assert sum(bool(fast.leaf_scores(leaf).any()) for leaf in leaves) > 300


def test_stored_ranking_and_shown_words_equal_the_in_memory_ones(
    docs: list[PaperDoc], memory: DayIndex, stored: StoredIndex
) -> None:
    queries = ["diffusion -video", '"language model*"', "=Models OR lora", "3d AND upvotes>=5"]
    for query in queries + _agreement_queries(docs, 200, seed=5):
        flt = compile_filter(query)
        got = Ranker(stored).rank([flt], limit=20)
        want = Ranker(memory).rank([flt], limit=20)
        assert got == want, query


class _Reindexed(MemoryStore):
    """Papers 1 and 2 indexed again in a second segment, after their text changed."""

    def __init__(self, before: list[PaperDoc], after: list[PaperDoc]) -> None:
        super().__init__(before)
        self.second = build(after)
        self._docs.update({d.id: d for d in after})
        changed = {d.id for d in after}
        self.catalogue.segment[np.isin(self.catalogue.ids, list(changed))] = 2
        for d in after:
            self.segment.lengths[d.id] = self.second.lengths[d.id]

    def occurrences(self, field: str, key: str) -> list[tuple[int, Occurrences]]:
        found = self.second.postings.get((field, key))
        return super().occurrences(field, key) + ([(2, found)] if found is not None else [])

    def keys_with_prefix(self, field: str, prefix: str) -> list[str]:
        old = super().keys_with_prefix(field, prefix)
        return old + [k for f, k in self.second.postings if f == field and k.startswith(prefix)]


def test_a_paper_indexed_again_is_found_by_its_new_words_only() -> None:
    before = [
        PaperDoc(1, "Diffusion for video", "We study video diffusion."),
        PaperDoc(2, "Graph networks", "Message passing on graphs."),
        PaperDoc(3, "Video transformers", "Attention over frames."),
    ]
    after = [PaperDoc(1, "Diffusion for audio", "We study audio diffusion.")]
    store = _Reindexed(before, after)
    index = StoredIndex(store, store.catalogue, stats=DayIndex(before).stats)
    assert set(iter_bits(index.evaluate(parse_filter("video")))) == {2}  # papers 3, not 1
    assert set(iter_bits(index.evaluate(parse_filter("audio")))) == {0}
    assert set(iter_bits(index.evaluate(parse_filter("audi*")))) == {0}
    assert set(iter_bits(index.evaluate(parse_filter('"audio diffusion"')))) == {0}
    assert set(iter_bits(index.evaluate(parse_filter("graph*")))) == {1}


# --- stored in the database ------------------------------------------------------------------

NOW = datetime(2026, 11, 23, 9, 0, tzinfo=UTC)


def _stored_corpus(database_url: str) -> sa.Engine:
    engine = db.make_engine(database_url)
    db.upgrade(engine=engine)
    ingest(engine=engine, paths=[CORPUS], now=NOW - timedelta(days=3))
    embed_papers(engine=engine)  # the bundled vectors
    return engine


def test_every_stored_paper_scores_as_an_in_memory_day_of_them(database_url: str) -> None:
    """What ``filters test`` decides from the stored postings equals the decision over
    an in-memory index of the same papers: the same papers in the same order, with the
    same scores, words and "not sure" papers, at every dial step."""
    engine = _stored_corpus(database_url)
    topics = [
        Topic("diffusion -video", "Diffusion models for image synthesis"),
        Topic("lora OR adapter*", "Parameter-efficient fine-tuning"),
        Topic('"large language model*" AND reason*'),
        Topic("=Transformer OR upvotes>=40"),
    ]
    ensure_topic_vectors(engine=engine, texts=[text_of(t) for t in topics])
    assert index_pending(engine=engine) == 575
    assert index_pending(engine=engine) == 0  # nothing left
    with db.session_scope(engine=engine) as session:
        papers = list(session.exec(select(Paper).order_by(Paper.first_seen_at, Paper.id)))
        memory = day_scorer(session, papers=papers, now=NOW, topics=topics)
        stored = corpus_scorer(session, engine=engine, now=NOW, topics=topics)
    assert isinstance(stored.ranker.index, StoredIndex)
    for topic in topics:
        for dial in (1, 3, 5):
            want = memory.pick([topic], within=None, limit=10**6, dial=dial)
            got = stored.pick([topic], within=None, limit=10**6, dial=dial)
            assert got == want, (topic, dial)
            assert want.matches, topic


def test_a_changed_paper_is_indexed_again_and_found_by_its_new_words(database_url: str) -> None:
    engine = _stored_corpus(database_url)
    index_pending(engine=engine)
    with db.session_scope(engine=engine) as session:
        paper = session.exec(select(Paper).where(Paper.title.contains("Reversal Curse"))).first()  # type: ignore[attr-defined]
        pid, first = paper.id, paper.index_segment
    assert first is not None
    # What ingest does when a later dump changes a paper: new text, no segment.
    title = paper.title
    with db.session_scope(engine=engine) as session:
        row = session.get(Paper, pid)
        row.abstract = "A study of zebrafish swimming."  # type: ignore[union-attr]
        row.index_segment = None  # type: ignore[union-attr]
        row.updated_at = NOW  # type: ignore[union-attr]
    assert index_pending(engine=engine) == 1
    with db.session_scope(engine=engine) as session:
        assert session.get(Paper, pid).index_segment not in (None, first)  # type: ignore[union-attr]
        index = stored_index(engine=engine, session=session, stats=_stats(session))
        at = int(np.flatnonzero(index.ids == pid)[0])
        assert (index.evaluate(parse_filter("zebrafish")) >> at) & 1
        assert not (index.evaluate(parse_filter('"reversal curse" AND abstract:curse')) >> at) & 1
        assert (index.evaluate(parse_filter(f'title:"{title.split()[0]}"')) >> at) & 1
        assert index.evaluate(parse_filter("zebrafish")).bit_count() == 1


def _stats(session: Session) -> CorpusStats:
    return load_reference(session, now=NOW, model=MODEL_NAME).stats


def test_ingest_indexes_what_it_stores_and_reindex_keeps_the_answers(tmp_path: Path) -> None:
    """The defaults a user gets: `ingest` leaves nothing to index, `filters test` reads the
    postings, `papers reindex` rebuilds them into fresh segments with the same answers."""
    run(tmp_path, "db", "upgrade")
    run(tmp_path, "ingest")
    engine = db.make_engine(f"sqlite:///{tmp_path / 'data' / 'newsletter.db'}")
    with db.session_scope(engine=engine) as session:
        segments = set(session.exec(select(Paper.index_segment)))
    assert len(segments) == 1 and None not in segments  # one batch, every paper in it
    query = ["filters", "test", '"language model*" -video', "--all", "--json"]
    before = json.loads(run(tmp_path, *query).stdout)
    assert before["matched"] > 20 and before["papers"] and before["below"]
    reindexed = run(tmp_path, "papers", "reindex")
    assert "indexed 575 papers" in reindexed.stdout
    with db.session_scope(engine=engine) as session:  # the old segment went with its postings
        assert len(set(session.exec(select(Paper.index_segment)))) == 1
        assert len(session.exec(select(IndexSegment)).all()) == 1
    assert json.loads(run(tmp_path, *query).stdout) == before

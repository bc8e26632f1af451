"""A day's scorer: the papers to decide on, indexed against the reference window, with
their stored vectors and the topics' (planning, ``filters test`` and the benchmark
all build one here)."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from datetime import datetime

import numpy as np
import sqlalchemy as sa
from sqlmodel import Session, select

from newsletter.corpus.postings import paper_doc, stored_index
from newsletter.embed.encoder import DIM, MODEL_NAME
from newsletter.embed.store import text_hash, topic_text, unpack
from newsletter.errors import UNREADABLE
from newsletter.filters import DayIndex, Ranker
from newsletter.filters.stored import StoredIndex
from newsletter.models import Paper, PaperVector, TopicVector
from newsletter.relevance.reference import Reference, load_reference
from newsletter.relevance.score import Scorer, SentenceSource, Topic
from newsletter.text import latex_to_text

_CHUNK = 500


def text_of(topic: Topic) -> str:
    return topic_text(query=topic.query, about=topic.about)


def day_scorer(
    session: Session, *, papers: Sequence[Paper], now: datetime, topics: Iterable[Topic] = ()
) -> Scorer:
    """A scorer over ``papers`` (first-seen order), ready for ``topics`` (more can be
    added with ``add_topics``)."""
    reference = load_reference(session, now=now, model=MODEL_NAME)
    ranker = Ranker(DayIndex([paper_doc(p) for p in papers], stats=reference.stats))
    vectors, present, sentences = _paper_vectors(session, [p.id for p in papers])  # type: ignore[misc]
    return _scorer(session, ranker, reference, vectors, present, sentences.get, topics)


def corpus_scorer(
    session: Session, *, engine: sa.Engine, now: datetime, topics: Iterable[Topic] = ()
) -> Scorer:
    """A scorer over every stored paper (``filters test``): the index reads the stored
    postings (``corpus/postings.py``; index what is pending first), the vectors are read
    whole, a paper's sentences only when its explanation needs them."""
    reference = load_reference(session, now=now, model=MODEL_NAME)
    index = stored_index(engine=engine, session=session, stats=reference.stats)
    vectors, present = _all_vectors(session, index)

    def sentences(pid: int) -> tuple[np.ndarray, list[tuple[int, int]]] | None:
        with Session(engine) as own:
            return _paper_vectors(own, [pid])[2].get(pid)

    return _scorer(session, Ranker(index), reference, vectors, present, sentences, topics)


def _scorer(
    session: Session,
    ranker: Ranker,
    reference: Reference,
    vectors: np.ndarray,
    present: np.ndarray,
    sentences: SentenceSource,
    topics: Iterable[Topic],
) -> Scorer:
    scorer = Scorer(
        ranker,
        reference=reference,
        vectors=vectors,
        present=present,
        topic_vectors={},
        topic_text=text_of,
        sentences=sentences,
        voted={},
        voted_titles={},
    )
    add_topics(session, scorer=scorer, topics=topics)
    return scorer


def _all_vectors(session: Session, index: StoredIndex) -> tuple[np.ndarray, np.ndarray]:
    """Every stored paper's vector, in the index's order (zeros and not ``present`` where one
    is missing, of another model or does not decode). Kept as stored, in float16 (half
    the memory of a year of vectors; products upcast them exactly), and decoded a
    chunk at a time into the one array."""
    vectors = np.zeros((index.n, DIM), np.float16)
    present = np.zeros(index.n, bool)
    for chunk in _vector_rows(session):
        pids = np.array([pid for pid, _ in chunk], dtype=np.int64)
        sizes = np.array([len(blob) for _, blob in chunk])
        at = index.positions(pids)
        keep = np.flatnonzero((at >= 0) & (sizes == 2 * DIM))
        if not len(keep):
            continue
        decoded = np.frombuffer(b"".join(chunk[k][1] for k in keep), "<f2").reshape(-1, DIM)
        finite = np.isfinite(decoded).all(1)
        vectors[at[keep][finite]], present[at[keep][finite]] = decoded[finite], True
    return vectors, present


def _vector_rows(session: Session) -> Iterator[Sequence[tuple[int, bytes]]]:
    """(paper id, vector) of every stored vector of the model, in chunks."""
    if session.get_bind().dialect.name == "postgresql":
        # psycopg sends bytea as hex text unless asked for binary: half the time for a
        # year of vectors (0.9 s against 0.4 s for 200,000 measured).
        driver = session.connection().connection.driver_connection
        with driver.cursor(binary=True) as cursor:  # type: ignore[union-attr]
            cursor.execute(
                "SELECT paper_id, vector FROM paper_vectors WHERE model = %s", (MODEL_NAME,)
            )
            while chunk := cursor.fetchmany(_CHUNK * 20):
                yield chunk
        return
    found = session.execute(
        sa.select(PaperVector.paper_id, PaperVector.vector).where(PaperVector.model == MODEL_NAME)
    )
    while chunk := found.fetchmany(_CHUNK * 20):
        yield chunk  # type: ignore[misc]


def add_topics(session: Session, *, scorer: Scorer, topics: Iterable[Topic]) -> None:
    """Load what ``topics`` need that the scorer lacks: their vectors, and those and the
    titles of the papers their readers voted on."""
    topics = list(topics)
    texts = {text_of(t) for t in topics} - scorer.topic_vectors.keys()
    hashes = {text_hash(MODEL_NAME, text): text for text in texts}
    keys = list(hashes)
    for start in range(0, len(keys), _CHUNK):
        for digest, blob, model in session.exec(
            select(TopicVector.text_hash, TopicVector.vector, TopicVector.model).where(
                TopicVector.text_hash.in_(keys[start : start + _CHUNK])  # type: ignore[attr-defined]
            )
        ):
            vector = unpack(blob, 1) if model == MODEL_NAME else None
            if vector is not None:
                scorer.topic_vectors[hashes[digest]] = vector[0]
    voted_ids = sorted({pid for t in topics for pid, _ in t.taught} - scorer.voted.keys())
    if not voted_ids:
        return
    voted_rows, voted_present, _ = _paper_vectors(session, voted_ids)
    voted = {pid: voted_rows[i] for i, pid in enumerate(voted_ids) if voted_present[i]}
    scorer.voted.update(voted)  # type: ignore[attr-defined]
    scorer.voted_titles.update(  # type: ignore[attr-defined]
        (pid, latex_to_text(title))
        for pid, title in session.exec(select(Paper.id, Paper.title).where(Paper.id.in_(voted)))  # type: ignore[union-attr]
    )


def _paper_vectors(
    session: Session, ids: list[int]
) -> tuple[np.ndarray, np.ndarray, dict[int, tuple[np.ndarray, list[tuple[int, int]]]]]:
    """The papers' vectors (rows in ``ids`` order; zeros and ``present`` False where one is
    missing, of another model, or does not decode) and their sentences'."""
    position = {pid: i for i, pid in enumerate(ids)}
    vectors = np.zeros((len(ids), DIM), np.float32)
    present = np.zeros(len(ids), bool)
    sentences: dict[int, tuple[np.ndarray, list[tuple[int, int]]]] = {}
    for start in range(0, len(ids), _CHUNK):
        for row in session.exec(
            select(PaperVector).where(PaperVector.paper_id.in_(ids[start : start + _CHUNK]))  # type: ignore[attr-defined]
        ):
            vector = unpack(row.vector, 1) if row.model == MODEL_NAME else None
            if vector is None:
                continue  # recomputed by the next embedding run; lexical only till then
            vectors[position[row.paper_id]] = vector[0]
            present[position[row.paper_id]] = True
            spans = _spans(row.spans)
            matrix = unpack(row.sentences, len(spans)) if spans else None
            if matrix is not None:
                sentences[row.paper_id] = (matrix, spans)  # type: ignore[assignment]
    return vectors, present, sentences


def _spans(stored: str) -> list[tuple[int, int]]:
    """A paper's sentences' (start, end) as stored; none when they do not decode (its
    vector still counts; its explanation names no sentence until it is embedded again,
    ``newsletter papers embed --rebuild``): one paper's row never stops planning."""
    try:
        return [(int(a), int(b)) for a, b in json.loads(stored)]
    except UNREADABLE:  # "garbage", 1e400, Infinity
        return []

"""A day's scorer: the papers to decide on, indexed against the reference window, with
their stored vectors and the topics' (planning, ``filters test`` and the benchmark
all build one here)."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from datetime import datetime

import numpy as np
from sqlmodel import Session, select

from newsletter.embed.encoder import DIM, MODEL_NAME
from newsletter.embed.store import text_hash, topic_text, unpack
from newsletter.filters import DayIndex, PaperDoc, Ranker
from newsletter.models import Paper, PaperVector, TopicVector
from newsletter.relevance.reference import load_reference
from newsletter.relevance.score import Scorer, Topic
from newsletter.text import latex_to_text

_CHUNK = 500


def paper_doc(paper: Paper) -> PaperDoc:
    organization = " ".join(x for x in (paper.organization_handle, paper.organization) if x)
    return PaperDoc(
        id=paper.id,  # type: ignore[arg-type]
        title=paper.title,
        abstract=paper.abstract,
        organization=organization or None,
        upvotes=paper.upvotes,
        authors=paper.authors,
        published_on=paper.published_on,
        first_seen_at=paper.first_seen_at,
        author_names=tuple(json.loads(paper.author_names)) if paper.author_names else (),
        categories=tuple(paper.categories.split()) if paper.categories else (),
        has_code=paper.code_url is not None,
    )


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
    scorer = Scorer(
        ranker,
        reference=reference,
        vectors=vectors,
        present=present,
        topic_vectors={},
        topic_text=text_of,
        sentences=sentences.get,
        voted={},
        voted_titles={},
    )
    add_topics(session, scorer=scorer, topics=topics)
    return scorer


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
            spans = [tuple(s) for s in json.loads(row.spans)]
            matrix = unpack(row.sentences, len(spans)) if spans else None
            if matrix is not None:
                sentences[row.paper_id] = (matrix, spans)  # type: ignore[assignment]
    return vectors, present, sentences

"""The reference window every score is normalised against: recent papers, not the day's.

A day's batch varies in size (20 papers, 1,000), so nothing about the decision is
taken from it. The reference is the papers first seen in the ``days`` before the
planning day (at most ``most`` of them, the newest); when the store holds fewer than
``least`` such papers (a new install), the newest ``least`` papers up to now. From
it come BM25's corpus statistics (idf and average length) and the mean and
covariance of the papers' embeddings, which turn a topic's cosine into a z-score:
how unusually close a paper is to this topic, in units this topic's own spread.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, time, timedelta

import numpy as np
from sqlmodel import Session, select

from newsletter.embed.encoder import DIM
from newsletter.embed.store import unpack
from newsletter.filters import CorpusStats, PaperDoc
from newsletter.filters.bm25 import corpus_stats
from newsletter.models import Paper, PaperVector
from newsletter.relevance import meaning

WINDOW_DAYS = 30
MOST = 2000
LEAST = 200
# Vectors that make a window's covariance worth z-scoring against, when it holds more
# papers than that: a handful out of hundreds (the rest without a readable vector) gave
# z-scores of -57 to +27, and so a line drawn somewhere else.
ENOUGH = 30


@dataclass(frozen=True, slots=True)
class Reference:
    stats: CorpusStats
    mean: np.ndarray  # (DIM,) of the window's paper vectors
    covariance: np.ndarray  # (DIM, DIM)
    papers: int
    vectors: int  # how many of them had one
    _window: meaning.Window = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_window", meaning.window(self.mean, self.covariance))

    @property
    def normalises(self) -> bool:
        """Whether cosines can be z-scored against the window: at least two vectors, and
        ``ENOUGH`` of them or half its papers (a new install's few papers have theirs);
        otherwise papers are decided on their words."""
        return self.vectors >= 2 and (self.vectors >= ENOUGH or 2 * self.vectors >= self.papers)

    def spread(self, topics: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """For unit topic vectors (rows): the window's mean cosine and its std, the same
        for a row in any batch (``meaning.spread``)."""
        return meaning.spread(meaning.quantise(topics), self._window)


def load_reference(
    session: Session, *, now: datetime, model: str, days: int = WINDOW_DAYS
) -> Reference:
    day = datetime.combine(now.date(), time(), tzinfo=now.tzinfo)
    query = select(Paper).order_by(Paper.first_seen_at.desc(), Paper.id.desc())  # type: ignore[attr-defined]
    recent = query.where(
        Paper.first_seen_at >= day - timedelta(days=days), Paper.first_seen_at < day
    )
    papers = list(session.exec(recent.limit(MOST)))
    if len(papers) < LEAST:
        papers = list(session.exec(query.where(Paper.first_seen_at <= now).limit(LEAST)))
    docs = [PaperDoc(id=p.id, title=p.title, abstract=p.abstract) for p in papers]  # type: ignore[arg-type]
    ids = [p.id for p in papers]
    vectors = []
    for start in range(0, len(ids), 500):
        for blob, name in session.exec(
            select(PaperVector.vector, PaperVector.model).where(
                PaperVector.paper_id.in_(ids[start : start + 500])  # type: ignore[attr-defined]
            )
        ):
            vector = unpack(blob, 1) if name == model else None
            if vector is not None:
                vectors.append(vector[0])
    if len(vectors) >= 2:
        matrix = np.stack(vectors)
        mean = matrix.mean(0)
        covariance = np.cov(matrix, rowvar=False).astype(np.float32)
    else:  # nothing to normalise against: semantic scores are left out
        mean, covariance = np.zeros(DIM, np.float32), np.zeros((DIM, DIM))
    return Reference(corpus_stats(docs), mean, covariance, len(papers), len(vectors))

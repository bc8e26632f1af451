"""The stored papers' postings: written once per batch of new or changed papers, read
by the index of every stored paper (``filters/stored.py``).

``index_pending`` runs after each ingest (and before anything reads the postings): the
papers with no current postings are analysed in batches, each batch a segment. A paper
whose text changes is marked unindexed by ingest and lands in a later segment; the
earlier segment's entries for it are then ignored (the paper row names the segment
that holds it). ``newsletter papers reindex`` rebuilds everything into fresh segments.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import sqlalchemy as sa
from sqlmodel import Session, select

from newsletter import db
from newsletter.filters import CorpusStats, PaperDoc
from newsletter.filters.segments import Occurrences, build, rows
from newsletter.filters.stored import Catalogue, StoredIndex, floats
from newsletter.models import IndexSegment, Paper, Posting, stored_list, utcnow

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
BATCH = 20_000  # papers per segment: bounds the memory of indexing a big catch-up
_IN = 500  # ids per IN (...): under every database's bound-parameter limit


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
        author_names=stored_list(paper.author_names),
        categories=tuple(paper.categories.split()) if paper.categories else (),
        has_code=paper.code_url is not None,
    )


def index_pending(
    *, engine: sa.Engine, on_progress: Callable[[int, int], None] | None = None
) -> int:
    """Index the papers with no current postings; how many were indexed."""
    with db.session_scope(engine=engine) as session:
        pending = list(
            session.exec(select(Paper.id).where(Paper.index_segment.is_(None)).order_by(Paper.id))  # type: ignore[union-attr]
        )
    for start in range(0, len(pending), BATCH):
        with db.session_scope(engine=engine) as session:
            _index_batch(session, pending[start : start + BATCH])
        if on_progress is not None:
            on_progress(min(start + BATCH, len(pending)), len(pending))
    return len(pending)


def _index_batch(session: Session, ids: list[int]) -> None:
    papers = []
    for start in range(0, len(ids), _IN):
        papers.extend(session.exec(select(Paper).where(Paper.id.in_(ids[start : start + _IN]))))  # type: ignore[union-attr]
    if not papers:
        return
    segment = build([paper_doc(p) for p in papers])
    row = IndexSegment(created_at=utcnow(), papers=len(papers))
    session.add(row)
    session.flush()
    table = Posting.__table__  # type: ignore[attr-defined]
    values = [
        {"segment": row.id, "field": f, "key": k, "papers": p, "vals": v}
        for f, k, p, v in rows(segment)
    ]
    for start in range(0, len(values), 10_000):
        session.execute(table.insert(), values[start : start + 10_000])
    # A paper changed by an ingest while this batch was analysed keeps no segment (its
    # updated_at moved), so the next run indexes its new text.
    papers_table = Paper.__table__  # type: ignore[attr-defined]
    session.execute(
        papers_table.update()
        .where(papers_table.c.id == sa.bindparam("pid"))
        .where(papers_table.c.updated_at == sa.bindparam("stamp"))
        .values(
            index_segment=row.id,
            title_stems=sa.bindparam("n_title"),
            abstract_stems=sa.bindparam("n_abstract"),
        ),
        [
            {
                "pid": p.id,
                "stamp": p.updated_at,
                "n_title": segment.lengths[p.id].title,  # type: ignore[index]
                "n_abstract": segment.lengths[p.id].abstract,  # type: ignore[index]
            }
            for p in papers
        ],
    )


def reindex(*, engine: sa.Engine, on_progress: Callable[[int, int], None] | None = None) -> int:
    """Drop every segment and index every paper again (after an analysis change, or to
    fold many small segments and their stale entries into few)."""
    with db.session_scope(engine=engine) as session:
        session.execute(sa.update(Paper).values(index_segment=None))
        session.execute(sa.delete(Posting))
        session.execute(sa.delete(IndexSegment))
    return index_pending(engine=engine, on_progress=on_progress)


class DbStore:
    """Postings and papers read from the database, a key at a time."""

    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine

    def occurrences(self, field: str, key: str) -> list[tuple[int, Occurrences]]:
        query = sa.select(Posting.segment, Posting.papers, Posting.vals).where(
            Posting.field == field, Posting.key == key
        )
        with self.engine.connect() as conn:
            found = conn.execute(query).all()
        return [(segment, Occurrences.decode(p, v)) for segment, p, v in found]

    def keys_with_prefix(self, field: str, prefix: str) -> list[str]:
        query = (
            sa.select(Posting.key)
            .where(Posting.field == field, Posting.key.startswith(prefix, autoescape=True))  # type: ignore[attr-defined]
            .distinct()
        )
        with self.engine.connect() as conn:
            return [k for (k,) in conn.execute(query) if k.startswith(prefix)]

    def docs(self, ids: Sequence[int]) -> dict[int, PaperDoc]:
        with Session(self.engine) as session:
            found = session.exec(select(Paper).where(Paper.id.in_(list(ids))))  # type: ignore[union-attr]
            return {p.id: paper_doc(p) for p in found}  # type: ignore[misc]


def catalogue(session: Session) -> Catalogue:
    """Every stored paper in first-seen order, as ``StoredIndex`` reads them."""
    table = Paper.__table__  # type: ignore[attr-defined]
    # The first-seen times raw (SQLite: the stored text; PostgreSQL: the driver's
    # datetime), not through the UTC column type: a year of papers, read in one go.
    raw = sa.type_coerce(table.c.first_seen_at, sa.String)
    found = session.execute(
        sa.select(
            table.c.id,
            raw,
            table.c.upvotes,
            table.c.authors,
            table.c.published_on,
            table.c.index_segment,
            table.c.title_stems,
            table.c.abstract_stems,
        ).order_by(table.c.first_seen_at, table.c.id)
    ).all()
    columns = [list(c) for c in zip(*found, strict=True)] if found else [[] for _ in range(8)]
    ids, seen, upvotes, authors, published, segment, title, abstract = columns
    micros = _microseconds(seen)
    first_day = micros // 86_400_000_000 + _EPOCH_ORDINAL
    days = [
        p.toordinal() if p is not None else float(d)
        for p, d in zip(published, first_day.tolist(), strict=True)
    ]

    return Catalogue(
        ids=np.array(ids, dtype=np.int64),
        segment=np.array([-1 if s is None else s for s in segment], dtype=np.int64),
        upvotes=np.array([u or 0 for u in upvotes], dtype=np.float64),
        authors=floats(authors),
        day=floats(days),
        seen=micros / 1e6,  # as datetime.timestamp() has it, to the last bit
        title=np.array([t or 0 for t in title], dtype=np.int64),
        abstract=np.array([a or 0 for a in abstract], dtype=np.int64),
    )


_EPOCH_ORDINAL = 719_163  # date(1970, 1, 1).toordinal()


def _microseconds(values: list[Any]) -> np.ndarray:
    """UTC microseconds since the epoch of first-seen times as the driver gives them."""
    if values and isinstance(values[0], str):  # SQLite: "YYYY-MM-DD HH:MM:SS[.ffffff]", UTC
        return np.array(values, dtype="datetime64[us]").astype(np.int64)
    return np.array([(v - _EPOCH) // timedelta(microseconds=1) for v in values], dtype=np.int64)


def stored_index(*, engine: sa.Engine, session: Session, stats: CorpusStats) -> StoredIndex:
    """The index of every stored paper (run ``index_pending`` first)."""
    return StoredIndex(DbStore(engine), catalogue(session), stats=stats)

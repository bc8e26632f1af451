"""How many recent papers each topic would have matched: the preference centre's preview."""

from __future__ import annotations

import threading
from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlmodel import select

from newsletter.db import session_scope
from newsletter.errors import FilterSyntaxError
from newsletter.filters import DayIndex, Ranker, compile_filter
from newsletter.models import Paper
from newsletter.relevance.day import paper_doc
from newsletter.subscribers import split_topic

WINDOW = timedelta(days=30)
# Cached evaluations kept between previews (each about a kilobyte): what readers preview
# is whatever they type, and the index lives until the month's papers change.
MAX_CACHED = 20_000


class RecentPapers:
    """The last 30 days' papers, indexed once and again only when they change (an index
    of the sample corpus takes a few hundred milliseconds; a page view must not). At
    most ``max_papers``, the newest: the web process's memory is bounded whatever a busy
    month holds (``NEWSLETTER_PREVIEW_MAX_PAPERS``)."""

    def __init__(self, *, engine: sa.Engine, max_papers: int = 5000) -> None:
        self.engine, self.max_papers = engine, max_papers
        self._lock = threading.Lock()
        self._key: tuple[object, ...] | None = None
        self._ranker: Ranker | None = None

    def counts(self, *, topics: list[str], now: datetime) -> dict[str, int]:
        ranker = self._current(now)
        counts = {}
        for t in topics:
            try:
                flt = compile_filter(split_topic(t).query)
            except FilterSyntaxError:
                continue  # stored around the checks: shown without a count, to be fixed here
            counts[t] = ranker.filter_bits(flt).bit_count()
        ranker.trim(most=MAX_CACHED)
        return counts

    def cached(self) -> int:
        """Evaluations kept between previews (0 before the first)."""
        return self._ranker.cached() if self._ranker is not None else 0

    def _current(self, now: datetime) -> Ranker:
        since = now - WINDOW
        with session_scope(engine=self.engine) as session:
            key = (
                now.date(),
                *session.exec(
                    select(
                        sa.func.count(), sa.func.max(Paper.id), sa.func.max(Paper.updated_at)
                    ).where(Paper.first_seen_at > since)
                ).one(),
            )
            with self._lock:
                if key != self._key or self._ranker is None:
                    newest = session.exec(
                        select(Paper)
                        .where(Paper.first_seen_at > since)
                        .order_by(Paper.first_seen_at.desc(), Paper.id.desc())  # type: ignore[attr-defined]
                        .limit(self.max_papers)
                    )
                    papers = list(newest)[::-1]
                    self._ranker = Ranker(DayIndex([paper_doc(p) for p in papers]))
                    self._key = key
                return self._ranker

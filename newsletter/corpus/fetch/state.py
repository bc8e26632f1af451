"""A source's recorded state: each outcome into ``source_state`` and events, and back-off."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

import sqlalchemy as sa

from newsletter.corpus.fetch.http import _Answer
from newsletter.db import session_scope
from newsletter.events import EventKind
from newsletter.models import Event, SourceState

if TYPE_CHECKING:
    from newsletter.corpus.fetch import FetchResult

FAILURE_BACKOFF = timedelta(minutes=15)
"""After one failure a source is left alone this long; it doubles with each in a row."""
MAX_BACKOFF = timedelta(hours=24)


def _header(value: str | None, limit: int) -> str | None:
    return value if value and len(value) <= limit else None


def _record(
    *, engine: sa.Engine, result: FetchResult, now: datetime, answer: _Answer | None
) -> None:
    """The source's state after this fetch and its event, in one transaction."""
    target = result.target
    with session_scope(engine=engine) as session:
        state = session.get(SourceState, target.name) or SourceState(
            name=target.name, url=target.url
        )
        state.url = target.url
        state.fetched_at = now
        state.next_after = result.next_after
        if result.outcome == "failed":
            state.failures += 1
            state.last_status = (result.error.message if result.error else "failed")[:300]
            detail: dict[str, object] = {
                "source": target.name,
                "url": target.url,
                "error": result.error.message if result.error else None,
                "http_status": result.http_status,
                "tries": result.tries,
                "failures": state.failures,
                "next_after": result.next_after.isoformat() if result.next_after else None,
            }
            kind = EventKind.SOURCE_FAILED
        else:
            state.failures = 0
            if answer is not None:
                etag = _header(answer.headers.get("etag"), 500)
                modified = _header(answer.headers.get("last-modified"), 100)
                if answer.status == 200:
                    state.etag, state.last_modified = etag, modified
                else:  # a 304 may renew them
                    state.etag = etag or state.etag
                    state.last_modified = modified or state.last_modified
            if result.outcome == "fetched":
                state.papers = result.papers
                state.last_status = f"200: {result.papers} papers ({result.new_papers} new)"
            else:
                state.last_status = "304: not modified"
            detail = {
                "source": target.name,
                "url": target.url,
                "http_status": result.http_status,
                "papers": result.papers,
                "new": result.new_papers,
                "updated": result.updated_papers,
                "tries": result.tries,
                "path": str(result.path) if result.path else None,
                "skipped": list(result.items_skipped[:20]),
            }
            kind = EventKind.SOURCE_FETCHED
        session.add(state)
        session.add(Event(at=now, kind=kind, detail=json.dumps(detail)))


def failure_backoff(failures: int) -> timedelta:
    """How long a source is left alone after ``failures`` errors in a row."""
    return min(MAX_BACKOFF, FAILURE_BACKOFF * 2 ** max(0, min(failures, 20) - 1))


def _due(state: SourceState | None, *, now: datetime) -> bool:
    return state is None or state.next_after is None or state.next_after <= now

"""Live sources: fetch Daily Papers and arXiv answers over HTTP, keep them, ingest them.

One run (``fetch_sources``) asks each URL of the configured live sources once:

* **Daily Papers**: ``NEWSLETTER_DAILY_PAPERS_URL?date=YYYY-MM-DD``, today (UTC) or
  each day since ``since``;
* **arXiv**: the RSS feed of each category (today's announcements), or with ``since``
  one query per category and day to ``NEWSLETTER_ARXIV_API_URL``.

Each URL has a row in ``source_state`` (named ``daily_papers:2026-11-27``,
``arxiv:cs.CL``, ``arxiv:cs.CL:2026-11-27``). A request carries the validators of
the last good answer (``If-None-Match``, ``If-Modified-Since``): 304 stores nothing.
A 200 is read up to ``NEWSLETTER_FETCH_MAX_MB`` (a larger answer is refused, not read
to its end), parsed by ``corpus.sources.parse_bytes`` as the kind asked for, written
atomically under ``data/fetched/<kind>/`` and ingested from that file by
``ingest.ingest_file``, so a saved answer copied into the corpus folder is read the
same way again. Anything that does not parse whole stores nothing.

Faults: 429, 5xx, timeouts and dropped connections are tried again (``MAX_TRIES`` in
all, exponential back-off with jitter, ``Retry-After`` honoured) while the wait stays
under ``IN_RUN_WAIT_CAP``; a longer wait ends the run's tries and is kept as the
source's ``next_after``. Other answers (4xx, a body that is not what was asked for)
fail at once. Every failure is one log line (source, URL, what happened), an event,
``failures + 1`` and a back-off that doubles with each failure in a row (up to a day);
until it passes, a run skips the source without a request unless forced. A good answer
resets the count and the source is not asked again for ``NEWSLETTER_FETCH_MINUTES``.
Requests to one host are ``NEWSLETTER_FETCH_DELAY`` seconds apart; after a host fails
(down, overloaded) its other URLs wait for the next run.

The parts: ``targets`` (what to ask), ``http`` (asking, with retries), ``saving`` (keeping
a good answer) and ``state`` (each outcome recorded, back-off); this module runs them.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import sqlalchemy as sa

from newsletter.config import Settings
from newsletter.corpus.fetch.http import (
    IN_RUN_WAIT_CAP,
    MAX_TRIES,
    RETRY_BASE_SECONDS,
    _Answer,
    _Asker,
    _Failure,
    _Stopped,
    retry_after_seconds,
    user_agent,
)
from newsletter.corpus.fetch.saving import _keep, fetched_dir, write_atomically
from newsletter.corpus.fetch.state import (
    FAILURE_BACKOFF,
    MAX_BACKOFF,
    _due,
    _record,
    failure_backoff,
)
from newsletter.corpus.fetch.targets import (
    ARXIV_API_MAX_RESULTS,
    MAX_SINCE_DAYS,
    Target,
    days_since,
    plan_targets,
)
from newsletter.db import error_reason, session_scope
from newsletter.errors import NewsletterError
from newsletter.models import SourceState

__all__ = [
    "ARXIV_API_MAX_RESULTS",
    "FAILURE_BACKOFF",
    "IN_RUN_WAIT_CAP",
    "MAX_BACKOFF",
    "MAX_SINCE_DAYS",
    "MAX_TRIES",
    "RETRY_BASE_SECONDS",
    "FetchError",
    "FetchReport",
    "FetchResult",
    "Target",
    "days_since",
    "failure_backoff",
    "fetch_one",
    "fetch_sources",
    "fetched_dir",
    "plan_targets",
    "retry_after_seconds",
    "user_agent",
    "write_atomically",
]

log = logging.getLogger("newsletter.fetch")


class FetchError(NewsletterError):
    """A live source's URL that gave nothing usable: which, where, and what happened."""

    def __init__(
        self, *, source: str, url: str, message: str, http_status: int | None = None
    ) -> None:
        self.source, self.url, self.message, self.http_status = source, url, message, http_status
        super().__init__(f"{source}: {url}: {message}")


@dataclass(slots=True)
class FetchResult:
    target: Target
    outcome: str
    """``fetched`` (a 200, parsed and stored), ``not_modified`` (304), ``skipped`` (not
    asked: in its back-off, or its host failed just before) or ``failed``."""
    papers: int = 0
    new_papers: int = 0
    updated_papers: int = 0
    items_skipped: tuple[str, ...] = ()
    """Items of a good answer left out, each with why (the rest went in)."""
    http_status: int | None = None
    tries: int = 0
    next_after: datetime | None = None
    path: Path | None = None
    error: FetchError | None = None
    transient: bool = False
    """A failure that may pass (429, 5xx, timeout, connection): its host is left alone."""
    note: str = ""

    def describe(self) -> str:
        """What happened, in one line (without the source and URL)."""
        if self.outcome == "fetched":
            text = f"fetched {self.papers} papers ({self.new_papers} new, "
            text += f"{self.updated_papers} updated)"
            text += f"; {len(self.items_skipped)} items left out" if self.items_skipped else ""
        elif self.outcome == "not_modified":
            text = "not modified since the last fetch (304)"
        elif self.outcome == "skipped":
            text = f"skipped: {self.note}"
        else:
            text = self.error.message if self.error is not None else "failed"
            if self.next_after is not None:
                text += f"; next try after {self.next_after:%Y-%m-%d %H:%M:%S} UTC"
        if self.tries > 1:
            text += f" [{self.tries} tries]"
        if self.note and self.outcome != "skipped":
            text += f" ({self.note})"
        return text


@dataclass(slots=True)
class FetchReport:
    results: list[FetchResult] = field(default_factory=list)

    @property
    def new_papers(self) -> int:
        return sum(r.new_papers for r in self.results)

    @property
    def failed(self) -> list[FetchResult]:
        return [r for r in self.results if r.outcome == "failed"]


def fetch_one(
    *,
    engine: sa.Engine,
    settings: Settings,
    asker: _Asker,
    target: Target,
    now: datetime,
    force: bool = False,
) -> FetchResult:
    with session_scope(engine=engine) as session:
        state = session.get(SourceState, target.name)
    if not force and not _due(state, now=now):
        assert state is not None and state.next_after is not None
        why = f"not before {state.next_after:%Y-%m-%d %H:%M:%S} UTC"
        if state.failures:
            why += f" (after {state.failures} failures: {state.last_status}; --force to try now)"
        else:
            why += " (fetched recently; --force to fetch now)"
        log.info("source skipped", extra={"source": target.name, "url": target.url, "why": why})
        return FetchResult(target=target, outcome="skipped", next_after=state.next_after, note=why)
    headers: dict[str, str] = {}
    if state is not None and state.url == target.url:
        if state.etag:
            headers["If-None-Match"] = state.etag
        if state.last_modified:
            headers["If-Modified-Since"] = state.last_modified
    result = FetchResult(target=target, outcome="failed")
    answer: _Answer | None = None
    try:
        answer = asker.get(target, headers)
        result.http_status, result.tries = answer.status, answer.tries
        if answer.status == 304:
            result.outcome = "not_modified"
            result.papers = state.papers if state is not None else 0
        else:
            _keep(engine=engine, settings=settings, target=target, answer=answer, now=now,
                  result=result)  # fmt: skip
            result.outcome = "fetched"
        interval = timedelta(minutes=settings.fetch_minutes)
        # A scheduled run a moment early still finds the source due.
        result.next_after = now + interval - min(interval / 10, timedelta(minutes=1))
    except _Failure as exc:
        failures = (state.failures if state is not None else 0) + 1
        wait = failure_backoff(failures)
        if exc.retry_after is not None:
            wait = max(wait, min(MAX_BACKOFF, timedelta(seconds=exc.retry_after)))
        result.outcome, result.next_after = "failed", now + wait
        result.http_status, result.transient = exc.http_status, exc.transient
        result.tries = answer.tries if answer is not None else exc.tries
        result.error = FetchError(
            source=target.name, url=target.url, message=exc.message, http_status=exc.http_status
        )
        log.warning(
            "source fetch failed",
            extra={"source": target.name, "url": target.url, "error": exc.message,
                   "failures": failures, "next_after": result.next_after.isoformat()},
        )  # fmt: skip
    _record(engine=engine, result=result, now=now, answer=answer)
    if result.outcome != "failed":
        log.info(
            "source fetched",
            extra={"source": target.name, "url": target.url, "http_status": result.http_status,
                   "papers": result.papers, "new_papers": result.new_papers},
        )  # fmt: skip
    return result


def fetch_sources(
    *,
    engine: sa.Engine,
    settings: Settings,
    now: datetime,
    since: date | None = None,
    force: bool = False,
    sleep: Callable[[float], object] = time.sleep,
    polite_delay: float | None = None,
    stop: Callable[[], bool] = lambda: False,
    on_start: Callable[[Target], None] | None = None,
    on_result: Callable[[FetchResult], None] | None = None,
) -> FetchReport:
    """Fetch every URL of the configured live sources once (see the module's text).

    ``now`` is the run's time (UTC): the day fetched, the clock of every back-off.
    ``sleep`` and ``polite_delay`` (default ``NEWSLETTER_FETCH_DELAY``) let tests wait
    for nothing; ``stop`` ends the run between requests (the service stopping)."""
    now = now.astimezone(UTC)
    targets = plan_targets(settings=settings, today=now.date(), since=since)
    report = FetchReport()
    if not targets:
        return report
    asker = _Asker(
        settings=settings,
        now=now,
        sleep=sleep,
        polite_delay=settings.fetch_delay if polite_delay is None else polite_delay,
        stop=stop,
    )
    failing: dict[str, str] = {}  # host -> the URL that failed on it in this run
    try:
        for target in targets:
            if stop():
                break
            if on_start is not None:
                on_start(target)
            if target.host in failing:
                note = f"{target.host} failed just before ({failing[target.host]}); next run"
                result = FetchResult(target=target, outcome="skipped", note=note)
            else:
                try:
                    result = fetch_one(
                        engine=engine, settings=settings, asker=asker, target=target,
                        now=now, force=force,
                    )  # fmt: skip
                except _Stopped:
                    break
                except sa.exc.DBAPIError as exc:  # its state unrecorded: the next run retries
                    message = f"database error: {error_reason(exc)}"
                    log.error("source fetch failed", extra={"source": target.name,
                              "url": target.url, "error": message})  # fmt: skip
                    error = FetchError(source=target.name, url=target.url, message=message)
                    result = FetchResult(target=target, outcome="failed", error=error)
                if result.outcome == "failed" and result.transient:
                    failing[target.host] = target.name
            report.results.append(result)
            if on_result is not None:
                on_result(result)
    finally:
        asker.close()
    return report

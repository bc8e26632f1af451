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
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import re
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from email.utils import parsedate_to_datetime
from pathlib import Path
from urllib.parse import urlencode, urlsplit

import httpx
import sqlalchemy as sa

from newsletter import __version__
from newsletter.config import Settings
from newsletter.corpus.ingest import ingest_file
from newsletter.corpus.sources import parse_bytes
from newsletter.db import error_reason, session_scope
from newsletter.errors import CorpusError, NewsletterError
from newsletter.events import EventKind
from newsletter.models import Event, SourceState
from newsletter.text import one_line

log = logging.getLogger("newsletter.fetch")

MAX_TRIES = 4
"""Requests per URL in one run: the first and three retries."""
RETRY_BASE_SECONDS = 1.0
"""The first retry's wait (before jitter); it doubles with each retry."""
IN_RUN_WAIT_CAP = 10.0
"""The longest wait inside a run; a longer Retry-After ends the run's tries."""
FAILURE_BACKOFF = timedelta(minutes=15)
"""After one failure a source is left alone this long; it doubles with each in a row."""
MAX_BACKOFF = timedelta(hours=24)
MAX_SINCE_DAYS = 31
"""How far back ``since`` may reach (one request per day, category and source)."""
ARXIV_API_MAX_RESULTS = 1000
"""Papers asked of the arXiv API per category and day (a busy day has a few hundred)."""

_SUFFIX = {"daily_papers": ".json", "rss": ".rss", "api": ".atom"}
_UNSAFE_NAME_RE = re.compile(r"[^A-Za-z0-9._-]")
_TOTAL_RE = re.compile(rb"<opensearch:totalResults[^>]*>\s*(\d+)\s*<")


class FetchError(NewsletterError):
    """A live source's URL that gave nothing usable: which, where, and what happened."""

    def __init__(
        self, *, source: str, url: str, message: str, http_status: int | None = None
    ) -> None:
        self.source, self.url, self.message, self.http_status = source, url, message, http_status
        super().__init__(f"{source}: {url}: {message}")


@dataclass(frozen=True, slots=True)
class Target:
    """One URL of a live source, and where its answer is kept."""

    name: str
    """Its ``source_state`` row: ``daily_papers:2026-11-27``, ``arxiv:cs.CL``..."""
    kind: str
    """What the answer must be: ``daily_papers`` or ``arxiv`` (``sources.KINDS``)."""
    url: str
    file: str
    """The saved answer's name under ``data/fetched/<kind>/``."""

    @property
    def host(self) -> str:
        return urlsplit(self.url).netloc.lower()


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


# --- what to ask ------------------------------------------------------------------


def _safe(name: str) -> str:
    return _UNSAFE_NAME_RE.sub("_", name)


def _with_query(url: str, query: str) -> str:
    return f"{url}{'&' if urlsplit(url).query else '?'}{query}"


def days_since(*, since: date | None, today: date) -> list[date]:
    """``since`` to ``today``, both included (just today without ``since``)."""
    if since is None:
        return [today]
    if since > today:
        raise NewsletterError(f"--since {since} is after today ({today}, UTC)")
    if (today - since).days >= MAX_SINCE_DAYS:
        raise NewsletterError(
            f"--since {since} reaches back more than {MAX_SINCE_DAYS} days; fetch in parts"
        )
    return [since + timedelta(days=n) for n in range((today - since).days + 1)]


def plan_targets(*, settings: Settings, today: date, since: date | None = None) -> list[Target]:
    """The URLs one run asks, in order: Daily Papers days, then arXiv by category."""
    days = days_since(since=since, today=today)
    targets: list[Target] = []
    if "daily_papers" in settings.live_sources:
        for day in days:
            url = _with_query(settings.daily_papers_url, f"date={day.isoformat()}")
            targets.append(Target(f"daily_papers:{day}", "daily_papers", url, f"{day}.json"))
    if "arxiv" in settings.live_sources:
        for category in settings.arxiv_categories:
            if since is None:
                base = settings.arxiv_rss_url
                url = f"{base}{category}" if base.endswith("/") else f"{base}/{category}"
                name = f"rss_{_safe(category)}_{today}{_SUFFIX['rss']}"
                targets.append(Target(f"arxiv:{category}", "arxiv", url, name))
                continue
            for day in days:
                stamp = f"{day:%Y%m%d}"
                query = urlencode(
                    {
                        "search_query": f"cat:{category} AND "
                        f"submittedDate:[{stamp}0000 TO {stamp}2359]",
                        "sortBy": "submittedDate",
                        "sortOrder": "descending",
                        "start": 0,
                        "max_results": ARXIV_API_MAX_RESULTS,
                    }
                )
                url = _with_query(settings.arxiv_api_url, query)
                name = f"query_{_safe(category)}_{day}{_SUFFIX['api']}"
                targets.append(Target(f"arxiv:{category}:{day}", "arxiv", url, name))
    return targets


def user_agent(settings: Settings) -> str:
    return f"newsletter/{__version__} (+{settings.base_url})"


# --- asking -----------------------------------------------------------------------


class _Failure(Exception):
    """One URL's failure inside a run; ``transient`` ones may succeed if tried again."""

    def __init__(
        self,
        message: str,
        *,
        transient: bool,
        http_status: int | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message, self.transient = message, transient
        self.http_status, self.retry_after = http_status, retry_after
        self.tries = 1


class _Stopped(Exception):
    """The service is stopping: leave the URL for the next run."""


@dataclass(frozen=True, slots=True)
class _Answer:
    status: int
    headers: httpx.Headers
    body: bytes
    tries: int


def retry_after_seconds(value: str | None, *, now: datetime) -> float | None:
    """``Retry-After`` as seconds from ``now``: a number of seconds or an HTTP-date
    (RFC 9110 10.2.3); None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():
        return float(int(value))
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - now).total_seconds())


def _mib(n: int) -> str:
    return f"{n / 2**20:g} MiB"


def _read(
    client: httpx.Client, *, url: str, headers: dict[str, str], max_bytes: int, timeout: float
) -> tuple[int, httpx.Headers, bytes]:
    """One GET. A 200's body is read whole, but never past ``max_bytes`` nor past
    ``timeout`` seconds in all; other answers' bodies are not read."""
    deadline = time.monotonic() + timeout
    with client.stream("GET", url, headers=headers) as response:
        if response.status_code != 200:
            return response.status_code, response.headers, b""
        declared = response.headers.get("content-length", "")
        if declared.isascii() and declared.isdigit() and int(declared) > max_bytes:
            raise _Failure(
                f"the answer is {_mib(int(declared))}, over NEWSLETTER_FETCH_MAX_MB "
                f"({_mib(max_bytes)}); not read",
                transient=False,
                http_status=200,
            )
        body = bytearray()
        for chunk in response.iter_bytes():
            body += chunk
            if len(body) > max_bytes:
                raise _Failure(
                    f"the answer grew past NEWSLETTER_FETCH_MAX_MB ({_mib(max_bytes)}); "
                    "stopped reading, nothing stored",
                    transient=False,
                    http_status=200,
                )
            if time.monotonic() > deadline:
                raise httpx.ReadTimeout("the whole answer took too long")
        return 200, response.headers, bytes(body)


class _Asker:
    """Requests with the run's manners: one client, a pause between requests to a
    host, retries of what may pass, and an early stop when the service stops."""

    def __init__(
        self,
        *,
        settings: Settings,
        now: datetime,
        sleep: Callable[[float], object],
        polite_delay: float,
        stop: Callable[[], bool],
    ) -> None:
        self.settings, self.now, self.sleep, self.stop = settings, now, sleep, stop
        self.polite_delay = polite_delay
        self.last_request: dict[str, float] = {}
        self.client = httpx.Client(
            timeout=httpx.Timeout(settings.fetch_timeout),
            follow_redirects=True,
            max_redirects=5,
            headers={"User-Agent": user_agent(settings)},
        )

    def close(self) -> None:
        self.client.close()

    def _pause(self, host: str) -> None:
        last = self.last_request.get(host)
        if last is not None and self.polite_delay > 0:
            wait = last + self.polite_delay - time.monotonic()
            if wait > 0:
                self.sleep(wait)
        if self.stop():
            raise _Stopped

    def once(self, target: Target, headers: dict[str, str]) -> tuple[int, httpx.Headers, bytes]:
        self._pause(target.host)
        timeout = self.settings.fetch_timeout
        try:
            return _read(
                self.client,
                url=target.url,
                headers=headers,
                max_bytes=self.settings.fetch_max_bytes,
                timeout=timeout,
            )
        except httpx.TimeoutException:
            message = f"timed out (NEWSLETTER_FETCH_TIMEOUT={timeout:g} s)"
            raise _Failure(message, transient=True) from None
        except httpx.TooManyRedirects:
            raise _Failure("too many redirects", transient=False) from None
        except httpx.UnsupportedProtocol as exc:
            raise _Failure(f"redirected to an unusable URL: {exc}", transient=False) from None
        except httpx.TransportError as exc:  # refused, reset, cut short
            reason = one_line(str(exc))[:200] or type(exc).__name__
            raise _Failure(f"connection failed: {reason}", transient=True) from None
        except httpx.HTTPError as exc:  # e.g. a body whose gzip is broken
            reason = one_line(str(exc))[:200] or type(exc).__name__
            raise _Failure(f"unreadable answer: {reason}", transient=False) from None
        finally:
            self.last_request[target.host] = time.monotonic()

    def get(self, target: Target, headers: dict[str, str]) -> _Answer:
        """The answer (200 or 304), trying again what may pass; ``_Failure`` otherwise."""
        for tries in range(1, MAX_TRIES + 1):
            try:
                status, got, body = self.once(target, headers)
            except _Failure as exc:
                exc.tries = tries
                if not exc.transient:
                    raise
                failure = exc
            else:
                if status in (200, 304):
                    return _Answer(status=status, headers=got, body=body, tries=tries)
                phrase = httpx.codes.get_reason_phrase(status)
                message = f"HTTP {status} {phrase}".rstrip()
                if status != 429 and status < 500:
                    failure = _Failure(message, transient=False, http_status=status)
                    failure.tries = tries
                    raise failure
                failure = _Failure(
                    message,
                    transient=True,
                    http_status=status,
                    retry_after=retry_after_seconds(got.get("retry-after"), now=self.now),
                )
            failure.tries = tries
            if tries == MAX_TRIES:
                raise failure
            wait = failure.retry_after
            if wait is None:
                wait = RETRY_BASE_SECONDS * 2 ** (tries - 1) * random.uniform(0.5, 1.0)
            if wait > IN_RUN_WAIT_CAP:
                failure.message += f" (Retry-After {wait:g} s: later, not in this run)"
                raise failure
            log.info(
                "source retry",
                extra={"source": target.name, "url": target.url, "error": failure.message,
                       "in_seconds": round(wait, 3)},
            )  # fmt: skip
            self.sleep(wait)
            if self.stop():
                raise _Stopped
        raise AssertionError("unreachable")


# --- keeping ----------------------------------------------------------------------


def fetched_dir(settings: Settings, kind: str) -> Path:
    return settings.data_dir / "fetched" / kind


def write_atomically(path: Path, data: bytes) -> None:
    """``data`` at ``path`` whole or not at all: a temporary file beside it, renamed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _keep(
    *,
    engine: sa.Engine,
    settings: Settings,
    target: Target,
    answer: _Answer,
    now: datetime,
    result: FetchResult,
) -> None:
    """Parse a 200 as the kind asked for; if whole, save it and ingest the saved file."""
    if not answer.body.strip():
        raise _Failure("the answer is empty", transient=False, http_status=200)
    try:
        batch = parse_bytes(data=answer.body, source=target.url, today=now.date(), kind=target.kind)
    except CorpusError as exc:
        raise _Failure(
            f"line {exc.line}: {exc.message}", transient=False, http_status=200
        ) from None
    path = fetched_dir(settings, target.kind) / target.file
    write_atomically(path, answer.body)
    try:
        stored = ingest_file(engine=engine, path=path, now=now, max_bytes=settings.fetch_max_bytes)
    except (OSError, sa.exc.DBAPIError) as exc:
        reason = error_reason(exc) if isinstance(exc, sa.exc.DBAPIError) else str(exc)
        raise _Failure(f"not stored: {reason}", transient=False, http_status=200) from None
    if stored.error is not None:
        raise _Failure(
            f"not stored: line {stored.error.line}: {stored.error.message}",
            transient=False,
            http_status=200,
        )
    result.path = path
    result.papers = stored.papers
    result.new_papers, result.updated_papers = stored.new_papers, stored.updated_papers
    result.items_skipped = stored.skipped if stored.status != "unchanged" else batch.skipped
    total = _TOTAL_RE.search(answer.body[:4096])
    if total is not None and int(total[1]) > len(batch.papers) + len(batch.skipped):
        result.note = f"the source has {int(total[1])}; the first {ARXIV_API_MAX_RESULTS} taken"


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

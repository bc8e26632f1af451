"""Live sources fetched from a real HTTP server on 127.0.0.1 (no mock of httpx):
answers of each kind, conditional requests, retries, back-off, every fault a source can
throw, and the `sources` commands and the scheduler run as real processes."""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
import sqlalchemy as sa
from sqlmodel import func, select

from newsletter import __version__, db
from newsletter.config import Settings
from newsletter.corpus.fetch import (
    FetchReport,
    FetchResult,
    fetch_sources,
    plan_targets,
    retry_after_seconds,
)
from newsletter.corpus.fetch.http import LONGEST_RETRY_AFTER
from newsletter.corpus.fetch.state import MAX_BACKOFF
from newsletter.corpus.ingest import ingest_file
from newsletter.corpus.records import merge_records
from newsletter.corpus.sources import parse_bytes
from newsletter.events import EventKind
from newsletter.logs import TextFormatter
from newsletter.models import Event, Paper, SourceState
from newsletter.service import Jobs, Leadership
from tests.conftest import REPO, make_settings
from tests.test_cli import run as run_cli

FIXTURES = REPO / "tests" / "fixtures" / "sources"
DAILY = (FIXTURES / "daily_papers_2026-11-27.json").read_bytes()
EMPTY_DAY = (FIXTURES / "daily_papers_empty.json").read_bytes()
RSS = (FIXTURES / "arxiv_cs.CL.rss").read_bytes()
ATOM = (FIXTURES / "arxiv_query_cs.CL.atom").read_bytes()
NOW = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
TODAY = NOW.date()


def papers_in(data: bytes) -> int:
    """How many papers an answer holds, as the parser reads it."""
    return len(merge_records(parse_bytes(data=data, source="x", today=TODAY).papers))


# --- the server ---------------------------------------------------------------------


@dataclass
class Reply:
    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0  # seconds before answering
    stream: int = 0  # send this many filler bytes instead of ``body``...
    declared: bool = False  # ...announcing their length (else: until the connection closes)
    drip: float = 0.0  # seconds between two pieces of ``body``


@dataclass
class Seen:
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    at: float


class Script:
    """What the server answers, per path: a list of replies taken in turn (the last
    repeats) or a function of the request; and every request it saw."""

    def __init__(self) -> None:
        self.base = ""
        self.routes: dict[str, list[Reply] | Callable[[Seen], Reply]] = {}
        self.requests: list[Seen] = []
        self.streamed: list[int] = []  # bytes of each streamed answer that got out
        self.lock = threading.Lock()

    def route(self, path: str, *replies: Reply, each: Callable[[Seen], Reply] | None = None):
        self.routes[path] = each if each is not None else list(replies)

    def reply(self, seen: Seen) -> Reply:
        with self.lock:
            self.requests.append(seen)
            route = self.routes.get(seen.path)
            if route is None:
                return Reply(404, b"no such page")
            if callable(route):
                return route(seen)
            return route.pop(0) if len(route) > 1 else route[0]

    def paths(self) -> list[str]:
        return [s.path for s in self.requests]

    def wait_streamed(self, count: int = 1, timeout: float = 20.0) -> list[int]:
        deadline = time.monotonic() + timeout
        while len(self.streamed) < count and time.monotonic() < deadline:
            time.sleep(0.02)
        return self.streamed


class Handler(BaseHTTPRequestHandler):
    server: ThreadingHTTPServer

    def do_GET(self) -> None:
        script: Script = self.server.script  # type: ignore[attr-defined]
        parts = urlsplit(self.path)
        seen = Seen(parts.path, parse_qs(parts.query), dict(self.headers), time.monotonic())
        reply = script.reply(seen)
        time.sleep(reply.delay)
        try:
            self.send_response(reply.status)
            for name, value in reply.headers.items():
                self.send_header(name, value)
            if reply.stream:
                self._stream(script, reply)
                return
            if reply.status != 304:
                self.send_header("Content-Length", str(len(reply.body)))
            self.end_headers()
            if not reply.drip:
                self.wfile.write(reply.body)
                return
            for i in range(0, len(reply.body), 64):
                self.wfile.write(reply.body[i : i + 64])
                time.sleep(reply.drip)
        except (BrokenPipeError, ConnectionResetError):
            pass

    def _stream(self, script: Script, reply: Reply) -> None:
        if reply.declared:
            self.send_header("Content-Length", str(reply.stream))
        self.end_headers()
        sent, piece = 0, b" " * 65536
        try:
            while sent < reply.stream:
                self.wfile.write(piece)
                sent += len(piece)
        except (BrokenPipeError, ConnectionResetError):
            pass
        finally:
            script.streamed.append(sent)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[Script]:
    script = Script()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.script = script  # type: ignore[attr-defined]
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    script.base = f"http://127.0.0.1:{httpd.server_address[1]}"
    try:
        yield script
    finally:
        httpd.shutdown()
        httpd.server_close()


# --- helpers ------------------------------------------------------------------------


def live_env(server: Script, sources: str = "daily_papers", **extra: str) -> dict[str, str]:
    return {
        "NEWSLETTER_SOURCES": sources,
        "NEWSLETTER_DAILY_PAPERS_URL": f"{server.base}/api/daily_papers",
        "NEWSLETTER_ARXIV_RSS_URL": f"{server.base}/rss/",
        "NEWSLETTER_ARXIV_API_URL": f"{server.base}/api/query",
        "NEWSLETTER_ARXIV_CATEGORIES": "cs.CL",
        "NEWSLETTER_FETCH_TIMEOUT": "5",
        "NEWSLETTER_FETCH_DELAY": "0",
        **extra,
    }


@pytest.fixture
def make_live(
    tmp_path: Path, sqlite_url: str, server: Script
) -> Callable[..., tuple[sa.Engine, Settings]]:
    def make(sources: str = "daily_papers", **extra: str) -> tuple[sa.Engine, Settings]:
        settings = make_settings(tmp_path, sqlite_url, **live_env(server, sources, **extra))
        return db.make_engine(sqlite_url), settings

    return make


def fetch(
    engine: sa.Engine,
    settings: Settings,
    *,
    now: datetime = NOW,
    slept: list[float] | None = None,
    **options: object,
) -> FetchReport:
    waits = slept if slept is not None else []
    return fetch_sources(
        engine=engine,
        settings=settings,
        now=now,
        sleep=waits.append,
        polite_delay=0,
        **options,  # type: ignore[arg-type]
    )


def only(report: FetchReport) -> FetchResult:
    assert len(report.results) == 1, report.results
    return report.results[0]


def paper_count(engine: sa.Engine) -> int:
    with db.session_scope(engine=engine) as session:
        return session.exec(select(func.count()).select_from(Paper)).one()


def state(engine: sa.Engine, name: str) -> SourceState:
    with db.session_scope(engine=engine) as session:
        row = session.get(SourceState, name)
    assert row is not None, f"no source_state row {name}"
    return row


def events(engine: sa.Engine, kind: EventKind) -> list[dict[str, object]]:
    with db.session_scope(engine=engine) as session:
        rows = session.exec(select(Event).where(Event.kind == kind).order_by(Event.id))
        return [json.loads(e.detail) for e in rows]


def log_lines(caplog: pytest.LogCaptureFixture, message: str) -> list[str]:
    fmt = TextFormatter()
    return [fmt.format(r) for r in caplog.records if r.getMessage() == message]


DAY_PATH = "/api/daily_papers"
TODAY_NAME = f"daily_papers:{TODAY}"


# --- a good answer ------------------------------------------------------------------


def test_a_day_of_daily_papers_is_stored_and_saved_as_it_came(make_live, server) -> None:
    engine, settings = make_live()
    server.route(
        DAY_PATH,
        Reply(
            body=DAILY,
            headers={"ETag": '"day-v1"', "Last-Modified": "Fri, 27 Nov 2026 11:00:00 GMT"},
        ),
    )
    result = only(fetch(engine, settings))

    expected = papers_in(DAILY)
    assert (result.outcome, result.papers, result.new_papers) == ("fetched", expected, expected)
    assert result.items_skipped == ("item 6: no title", "item 7: not an object")
    assert paper_count(engine) == expected
    (seen,) = server.requests
    assert seen.query == {"date": ["2026-11-27"]}
    assert seen.headers["User-Agent"] == f"newsletter/{__version__} (+https://papers.example)"
    assert "If-None-Match" not in seen.headers
    saved = settings.data_dir / "fetched" / "daily_papers" / "2026-11-27.json"
    assert result.path == saved and saved.read_bytes() == DAILY
    assert not [p for p in saved.parent.iterdir() if p != saved]  # no temporary left
    row = state(engine, TODAY_NAME)
    assert (row.failures, row.papers, row.etag) == (0, expected, '"day-v1"')
    assert row.last_modified == "Fri, 27 Nov 2026 11:00:00 GMT"
    assert row.fetched_at == NOW and row.next_after == NOW + timedelta(minutes=59)
    assert row.last_status == f"200: {expected} papers ({expected} new)"
    (event,) = events(engine, EventKind.SOURCE_FETCHED)
    assert event["papers"] == expected and event["new"] == expected
    assert event["source"] == TODAY_NAME and event["http_status"] == 200
    # The saved answer, dropped into a corpus folder, is read the same way again.
    replay = settings.home / "corpus-copy" / "daily_papers_2026-11-27.json"
    replay.parent.mkdir()
    replay.write_bytes(saved.read_bytes())
    again = ingest_file(engine=engine, path=replay, now=NOW + timedelta(hours=1))
    assert (again.kind, again.papers, again.new_papers) == ("daily_papers", expected, 0)


def test_an_empty_day_is_fine_with_no_papers(make_live, server) -> None:
    engine, settings = make_live()
    server.route(DAY_PATH, Reply(body=EMPTY_DAY))
    result = only(fetch(engine, settings))
    assert (result.outcome, result.papers, result.error) == ("fetched", 0, None)
    row = state(engine, TODAY_NAME)
    assert (row.failures, row.papers) == (0, 0)
    assert paper_count(engine) == 0


# --- conditional requests and the polite interval -------------------------------------


def test_a_repeat_fetch_is_conditional_and_304_stores_nothing_new(make_live, server) -> None:
    engine, settings = make_live()
    validators = {"ETag": '"day-v1"', "Last-Modified": "Fri, 27 Nov 2026 11:00:00 GMT"}

    def answer(seen: Seen) -> Reply:
        if seen.headers.get("If-None-Match") == '"day-v1"':
            return Reply(304, headers={"ETag": '"day-v1"'})
        return Reply(body=DAILY, headers=validators)

    server.route(DAY_PATH, each=answer)
    fetch(engine, settings)
    stored = paper_count(engine)

    result = only(fetch(engine, settings, now=NOW + timedelta(hours=1)))

    assert result.outcome == "not_modified"
    assert result.describe() == "not modified since the last fetch (304)"
    second = server.requests[1].headers
    assert second["If-None-Match"] == '"day-v1"'
    assert second["If-Modified-Since"] == "Fri, 27 Nov 2026 11:00:00 GMT"
    assert paper_count(engine) == stored
    assert len(events(engine, EventKind.FILE_INGESTED)) == 1  # the first answer only
    assert [e["http_status"] for e in events(engine, EventKind.SOURCE_FETCHED)] == [200, 304]
    row = state(engine, TODAY_NAME)
    assert (row.failures, row.papers, row.etag) == (0, stored, '"day-v1"')
    assert row.last_status == "304: not modified"


def test_a_source_is_not_asked_again_within_the_interval_unless_forced(make_live, server) -> None:
    engine, settings = make_live()
    server.route(DAY_PATH, Reply(body=DAILY))
    fetch(engine, settings)

    soon = only(fetch(engine, settings, now=NOW + timedelta(minutes=10)))
    assert soon.outcome == "skipped" and "fetched recently" in soon.describe()
    assert len(server.requests) == 1
    forced = only(fetch(engine, settings, now=NOW + timedelta(minutes=10), force=True))
    assert forced.outcome == "fetched" and forced.new_papers == 0
    assert len(server.requests) == 2


# --- overload and outages -------------------------------------------------------------


def test_429_with_a_short_retry_after_waits_that_long_then_succeeds(make_live, server) -> None:
    engine, settings = make_live()
    server.route(DAY_PATH, Reply(429, headers={"Retry-After": "1"}), Reply(body=DAILY))
    slept: list[float] = []

    def sleep(seconds: float) -> None:  # really waits: the server sees the gap
        slept.append(seconds)
        time.sleep(seconds)

    result = only(
        fetch_sources(engine=engine, settings=settings, now=NOW, sleep=sleep, polite_delay=0)
    )

    assert (result.outcome, result.tries) == ("fetched", 2)
    assert slept == [1.0]
    first, second = server.requests
    assert second.at - first.at >= 1.0
    assert paper_count(engine) == papers_in(DAILY)
    assert state(engine, TODAY_NAME).failures == 0
    assert events(engine, EventKind.SOURCE_FAILED) == []


def test_429_with_a_long_retry_after_sets_next_after_and_later_runs_wait(
    make_live, server, caplog: pytest.LogCaptureFixture
) -> None:
    engine, settings = make_live()
    server.route(DAY_PATH, Reply(429, headers={"Retry-After": "7200"}), Reply(body=DAILY))
    caplog.set_level(logging.INFO, logger="newsletter.fetch")
    slept: list[float] = []

    first = only(fetch(engine, settings, slept=slept))

    assert first.outcome == "failed" and first.tries == 1 and slept == []
    assert first.error is not None and first.error.http_status == 429
    assert "HTTP 429 Too Many Requests (Retry-After 7200 s: later, not in this run)" in str(
        first.error
    )
    row = state(engine, TODAY_NAME)
    assert row.next_after == NOW + timedelta(hours=2) and row.failures == 1
    (line,) = log_lines(caplog, "source fetch failed")
    assert f"source={TODAY_NAME}" in line and f"url={server.base}{DAY_PATH}?date=" in line
    assert "429 Too Many Requests" in line and "\n" not in line

    later = only(fetch(engine, settings, now=NOW + timedelta(minutes=30)))
    assert later.outcome == "skipped" and len(server.requests) == 1
    assert "not before 2026-11-27 14:00:00 UTC" in later.describe()

    forced = only(fetch(engine, settings, now=NOW + timedelta(minutes=30), force=True))
    assert forced.outcome == "fetched" and len(server.requests) == 2
    assert state(engine, TODAY_NAME).failures == 0


@pytest.mark.parametrize("absurd", ["100000000000000", "9" * 5000])
def test_an_absurd_retry_after_waits_the_longest_back_off_and_the_run_goes_on(
    make_live, server, absurd: str
) -> None:
    """A server's "come back in three million years" (or a number of 5,000 digits, which
    int() refuses) is the longest back-off, recorded; before, it raised out of the run,
    so the source kept no state, got no back-off and broke every run that asked it."""
    engine, settings = make_live()
    server.route(DAY_PATH, Reply(429, headers={"Retry-After": absurd}))
    first = only(fetch(engine, settings, slept=[]))
    assert first.outcome == "failed" and first.error is not None
    assert first.error.http_status == 429
    row = state(engine, TODAY_NAME)
    assert row.failures == 1 and row.next_after == NOW + MAX_BACKOFF


def test_retry_after_is_read_as_seconds_or_an_http_date() -> None:
    assert retry_after_seconds("120", now=NOW) == 120
    assert retry_after_seconds("Fri, 27 Nov 2026 14:00:00 GMT", now=NOW) == 7200
    assert retry_after_seconds("Fri, 27 Nov 2026 11:00:00 GMT", now=NOW) == 0  # past
    assert retry_after_seconds("soon", now=NOW) is None
    assert retry_after_seconds(None, now=NOW) is None
    assert retry_after_seconds("9" * 5000, now=NOW) == LONGEST_RETRY_AFTER
    assert retry_after_seconds("0000000005", now=NOW) == 5  # leading zeros are no years
    assert retry_after_seconds("Fri, 27 Nov 9999 14:00:00 GMT", now=NOW) == LONGEST_RETRY_AFTER


def test_500_then_200_recovers_within_the_run(make_live, server) -> None:
    engine, settings = make_live()
    server.route(DAY_PATH, Reply(500), Reply(body=DAILY))
    slept: list[float] = []
    result = only(fetch(engine, settings, slept=slept))
    assert (result.outcome, result.tries) == ("fetched", 2)
    assert len(slept) == 1 and 0.5 <= slept[0] <= 1.0  # backoff with jitter
    assert paper_count(engine) == papers_in(DAILY)
    assert state(engine, TODAY_NAME).failures == 0


def test_a_source_that_always_fails_backs_off_longer_each_time(
    make_live, server, caplog: pytest.LogCaptureFixture
) -> None:
    engine, settings = make_live()
    server.route(DAY_PATH, Reply(500, b"<h1>oops</h1>"))
    caplog.set_level(logging.WARNING, logger="newsletter.fetch")
    slept: list[float] = []
    at, gaps = NOW, []
    for failures in (1, 2, 3):
        result = only(fetch(engine, settings, now=at, slept=slept))
        assert result.outcome == "failed" and result.tries == 4
        assert result.error is not None and result.error.message == "HTTP 500 Internal Server Error"
        row = state(engine, TODAY_NAME)
        assert row.failures == failures
        assert row.next_after is not None
        gaps.append(row.next_after - at)
        at = row.next_after  # the next run comes when it may
    assert gaps == [timedelta(minutes=15), timedelta(minutes=30), timedelta(minutes=60)]
    assert len(server.requests) == 12  # 4 tries a run, never more
    # In-run waits double, with jitter: 0.5-1 s, 1-2 s, 2-4 s.
    for wait, base in zip(slept[:3], (1, 2, 4), strict=True):
        assert base / 2 <= wait <= base
    assert [e["failures"] for e in events(engine, EventKind.SOURCE_FAILED)] == [1, 2, 3]
    assert paper_count(engine) == 0
    assert len(log_lines(caplog, "source fetch failed")) == 3


def test_a_host_that_fails_is_not_asked_for_its_other_urls_in_that_run(make_live, server) -> None:
    engine, settings = make_live()
    server.route(DAY_PATH, Reply(503))
    report = fetch(engine, settings, since=TODAY - timedelta(days=2))
    assert [r.outcome for r in report.results] == ["failed", "skipped", "skipped"]
    assert "failed just before" in report.results[1].describe()
    assert len(server.requests) == 4  # the first day's tries only


@pytest.mark.parametrize("how", ["no answer", "answer dripping"])
def test_a_timeout_is_a_clear_error(make_live, server, how: str) -> None:
    engine, settings = make_live(NEWSLETTER_FETCH_TIMEOUT="0.3")
    if how == "no answer":
        server.route(DAY_PATH, Reply(body=DAILY, delay=2.0))
    else:  # answers at once, then a piece every 0.1 s: never a read timeout, too slow in all
        server.route(DAY_PATH, Reply(body=DAILY, drip=0.1))
    started = time.monotonic()
    result = only(fetch(engine, settings))
    elapsed = time.monotonic() - started
    assert result.outcome == "failed" and result.tries == 4
    assert result.error is not None
    assert result.error.message == "timed out (NEWSLETTER_FETCH_TIMEOUT=0.3 s)"
    assert str(result.error).startswith(f"{TODAY_NAME}: {server.base}{DAY_PATH}?date=2026-11-27: ")
    assert elapsed < 6  # each try given up after the timeout, not after the answer
    assert paper_count(engine) == 0 and state(engine, TODAY_NAME).failures == 1


def test_a_refused_connection_is_retried_then_reported(tmp_path: Path, sqlite_url: str) -> None:
    from tests.smtp_server import free_port

    dead = f"http://127.0.0.1:{free_port()}/api/daily_papers"
    settings = make_settings(
        tmp_path, sqlite_url, NEWSLETTER_SOURCES="daily_papers", NEWSLETTER_DAILY_PAPERS_URL=dead
    )
    result = only(fetch(db.make_engine(sqlite_url), settings))
    assert result.outcome == "failed" and result.tries == 4
    assert result.error is not None and result.error.message.startswith("connection failed: ")


# --- answers that are not what was asked for -------------------------------------------


@pytest.mark.parametrize(
    ("sources", "path", "good", "says"),
    [
        ("daily_papers", DAY_PATH, DAILY, "line 100: not valid JSON: Unterminated string"),
        ("arxiv", "/rss/cs.CL", RSS, "line 41: not a well-formed feed"),
    ],
)
def test_a_truncated_answer_stores_nothing_and_a_good_one_recovers(
    make_live, server, sources: str, path: str, good: bytes, says: str
) -> None:
    engine, settings = make_live(sources)
    cut = good[: len(good) // 2] if sources == "daily_papers" else good[: len(good) * 6 // 10]
    server.route(path, Reply(body=cut), Reply(body=good))

    broken = only(fetch(engine, settings))

    assert broken.outcome == "failed" and broken.tries == 1  # no retry: it would say the same
    assert broken.error is not None and says in broken.error.message
    assert paper_count(engine) == 0
    assert not (settings.data_dir / "fetched").exists()
    name = broken.target.name
    assert state(engine, name).failures == 1
    (event,) = events(engine, EventKind.SOURCE_FAILED)
    assert says in str(event["error"]) and event["source"] == name

    healed = only(fetch(engine, settings, now=NOW + timedelta(minutes=15)))
    assert healed.outcome == "fetched" and healed.new_papers == papers_in(good) > 0
    assert state(engine, name).failures == 0


def test_malformed_json_is_refused_with_its_line(make_live, server) -> None:
    engine, settings = make_live()
    server.route(DAY_PATH, Reply(body=b'[\n {"paper": {"id": "2411.00001",\n "title": }}\n]\n'))
    result = only(fetch(engine, settings))
    assert result.outcome == "failed" and result.error is not None
    assert result.error.message.startswith("line 3: not valid JSON: Expecting value")
    assert paper_count(engine) == 0


def test_an_html_page_where_json_was_expected_is_a_clear_error(make_live, server) -> None:
    engine, settings = make_live()
    page = b"<!DOCTYPE html>\n<html><body><h1>We'll be right back</h1></body></html>\n"
    server.route(DAY_PATH, Reply(body=page, headers={"Content-Type": "text/html"}))
    result = only(fetch(engine, settings))
    assert result.outcome == "failed" and result.error is not None
    assert result.error.message == "line 1: expected daily papers content, found '<!DOCTYPE html>'"
    assert paper_count(engine) == 0


def test_other_4xx_fail_at_once(make_live, server) -> None:
    engine, settings = make_live()
    server.route(DAY_PATH, Reply(404, b"not found"))
    result = only(fetch(engine, settings))
    assert (result.outcome, result.tries, result.http_status) == ("failed", 1, 404)
    assert result.error is not None and result.error.message == "HTTP 404 Not Found"
    assert state(engine, TODAY_NAME).next_after == NOW + timedelta(minutes=15)


@pytest.mark.parametrize("declared", [True, False], ids=["content-length", "until-close"])
def test_a_huge_answer_is_refused_without_reading_it_all(make_live, server, declared: bool) -> None:
    engine, settings = make_live(NEWSLETTER_FETCH_MAX_MB="1")
    huge = 256 * 2**20
    server.route(DAY_PATH, Reply(stream=huge, declared=declared))
    result = only(fetch(engine, settings))
    assert result.outcome == "failed" and result.tries == 1
    assert result.error is not None
    if declared:
        assert result.error.message == (
            "the answer is 256 MiB, over NEWSLETTER_FETCH_MAX_MB (1 MiB); not read"
        )
    else:
        assert result.error.message == (
            "the answer grew past NEWSLETTER_FETCH_MAX_MB (1 MiB); stopped reading, nothing stored"
        )
    (sent,) = server.wait_streamed()
    assert sent < huge // 4  # the connection was dropped early
    assert not (settings.data_dir / "fetched").exists()
    assert paper_count(engine) == 0


# --- arXiv and --since ---------------------------------------------------------------


def test_arxiv_rss_is_fetched_per_category(make_live, server) -> None:
    engine, settings = make_live("arxiv", NEWSLETTER_ARXIV_CATEGORIES="cs.CL,cs.LG")
    server.route("/rss/cs.CL", Reply(body=RSS))
    server.route("/rss/cs.LG", Reply(body=RSS.replace(b"cs.CL", b"cs.LG")))
    report = fetch(engine, settings)
    assert [(r.target.name, r.outcome) for r in report.results] == [
        ("arxiv:cs.CL", "fetched"),
        ("arxiv:cs.LG", "fetched"),
    ]
    assert server.paths() == ["/rss/cs.CL", "/rss/cs.LG"]
    assert report.new_papers == papers_in(RSS)  # the same papers: stored once
    folder = settings.data_dir / "fetched" / "arxiv"
    assert sorted(p.name for p in folder.iterdir()) == [
        "rss_cs.CL_2026-11-27.rss",
        "rss_cs.LG_2026-11-27.rss",
    ]
    with db.session_scope(engine=engine) as session:
        assert {p.sources for p in session.exec(select(Paper))} == {"arxiv"}


def test_since_asks_the_arxiv_api_per_category_and_day(make_live, server) -> None:
    engine, settings = make_live("arxiv", NEWSLETTER_ARXIV_CATEGORIES="cs.CL,cs.LG")
    server.route("/api/query", Reply(body=ATOM))
    report = fetch(engine, settings, since=TODAY - timedelta(days=1))
    assert [r.target.name for r in report.results] == [
        "arxiv:cs.CL:2026-11-26",
        "arxiv:cs.CL:2026-11-27",
        "arxiv:cs.LG:2026-11-26",
        "arxiv:cs.LG:2026-11-27",
    ]
    assert all(r.outcome == "fetched" for r in report.results)
    first = server.requests[0].query
    assert first["search_query"] == ["cat:cs.CL AND submittedDate:[202611260000 TO 202611262359]"]
    assert first["sortBy"] == ["submittedDate"] and first["max_results"] == ["1000"]
    assert report.new_papers == papers_in(ATOM)
    assert (settings.data_dir / "fetched/arxiv/query_cs.LG_2026-11-27.atom").read_bytes() == ATOM


def test_since_fetches_every_day_of_daily_papers(make_live, server) -> None:
    engine, settings = make_live()
    server.route(
        DAY_PATH,
        each=lambda seen: Reply(body=DAILY if seen.query["date"] == ["2026-11-27"] else EMPTY_DAY),
    )
    report = fetch(engine, settings, since=date(2026, 11, 25))
    assert [s.query["date"][0] for s in server.requests] == [
        "2026-11-25",
        "2026-11-26",
        "2026-11-27",
    ]
    assert [r.papers for r in report.results] == [0, 0, papers_in(DAILY)]
    assert {s.name for s in _states(engine)} == {
        "daily_papers:2026-11-25",
        "daily_papers:2026-11-26",
        "daily_papers:2026-11-27",
    }


def _states(engine: sa.Engine) -> list[SourceState]:
    with db.session_scope(engine=engine) as session:
        return list(session.exec(select(SourceState)))


def test_since_is_bounded(make_live) -> None:
    _engine, settings = make_live()
    with pytest.raises(Exception, match="after today"):
        plan_targets(settings=settings, today=TODAY, since=TODAY + timedelta(days=1))
    with pytest.raises(Exception, match="more than 31 days"):
        plan_targets(settings=settings, today=TODAY, since=TODAY - timedelta(days=40))


def test_requests_to_one_host_are_spaced(make_live, server) -> None:
    engine, settings = make_live("daily_papers,arxiv", NEWSLETTER_FETCH_DELAY="0.4")
    server.route(DAY_PATH, Reply(body=EMPTY_DAY))
    server.route("/rss/cs.CL", Reply(body=RSS))
    fetch_sources(engine=engine, settings=settings, now=NOW)  # the setting's delay, real sleep
    first, second = server.requests
    assert second.at - first.at >= 0.4


# --- the service's job ----------------------------------------------------------------


def test_the_service_job_fetches_when_a_live_source_is_configured(make_live, server) -> None:
    engine, settings = make_live(NEWSLETTER_FETCH_DELAY="0")
    server.route(DAY_PATH, Reply(body=DAILY))
    jobs = Jobs(
        engine=engine,
        settings=settings,
        leadership=Leadership(engine=engine, settings=settings),
        now=lambda: NOW,
    )
    jobs.fetch()
    assert paper_count(engine) == papers_in(DAILY)
    jobs.leadership.release()


def test_the_service_job_is_offline_by_default(tmp_path: Path, sqlite_url: str, server) -> None:
    env = live_env(server)
    del env["NEWSLETTER_SOURCES"]
    settings = make_settings(tmp_path, sqlite_url, **env)
    engine = db.make_engine(sqlite_url)
    Jobs(
        engine=engine, settings=settings, leadership=Leadership(engine=engine, settings=settings)
    ).fetch()
    assert server.requests == []


# --- the commands, as real processes ----------------------------------------------------


def test_default_settings_list_only_the_corpus_folder_and_fetch_nothing(
    tmp_path: Path, server
) -> None:
    env = live_env(server)  # URLs that would answer, were anything asked
    del env["NEWSLETTER_SOURCES"]
    run_cli(tmp_path, "db", "upgrade", env=env)
    listed = run_cli(tmp_path, "sources", "list", env=env).stdout
    table, hint = listed.strip().rsplit("\n", 1)
    assert [line.split()[0] for line in table.splitlines()[1:]] == ["dumps"]
    assert hint.startswith("offline: no live source configured")
    fetched = run_cli(tmp_path, "sources", "fetch", env=env)
    assert "no live source configured" in fetched.stdout
    assert server.requests == []


def test_sources_fetch_and_list_against_a_live_server(tmp_path: Path, server) -> None:
    env = live_env(server, "dumps,daily_papers,arxiv")
    server.route(DAY_PATH, Reply(body=DAILY, headers={"ETag": '"v1"'}))
    server.route("/rss/cs.CL", Reply(404, b"gone"))
    run_cli(tmp_path, "db", "upgrade", env=env)
    today = datetime.now(UTC).date()

    proc = run_cli(tmp_path, "sources", "fetch", env=env, ok=False)

    assert proc.returncode == 1, proc.stderr
    day_url = f"{server.base}{DAY_PATH}?date={today}"
    n = papers_in(DAILY)
    assert f"daily_papers:{today} {day_url}: fetched {n} papers ({n} new, 0 updated)" in proc.stdout
    assert re.search(r"^embedded \d+ papers", proc.stdout, re.M)  # the catch-up `ingest` runs
    assert f"2 URLs (1 fetched, 1 failed); {n} new papers" in proc.stdout
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in proc.stderr
    assert errors[0].startswith(
        f"error: arxiv:cs.CL {server.base}/rss/cs.CL: HTTP 404 Not Found; next try after "
    )
    assert "warning: daily_papers" in proc.stderr  # the two items left out, named

    listed = run_cli(tmp_path, "sources", "list", env=env).stdout
    day_row = next(line for line in listed.splitlines() if f"daily_papers:{today}" in line)
    assert day_url in day_row and f"200: {n} papers ({n} new)" in day_row
    arxiv_row = next(line for line in listed.splitlines() if "arxiv:cs.CL" in line)
    assert "HTTP 404 Not Found" in arxiv_row and " 1 " in arxiv_row
    rows = json.loads(run_cli(tmp_path, "sources", "list", "--json", env=env).stdout)
    assert [r["source"] for r in rows] == ["dumps", f"daily_papers:{today}", "arxiv:cs.CL"]
    assert rows[2]["failures"] == 1 and rows[2]["next_after"] is not None

    again = run_cli(tmp_path, "sources", "fetch", env=env)  # within the hour: nobody asked
    assert "2 URLs (2 skipped); 0 new papers" in again.stdout
    assert len(server.requests) == 2
    bad = run_cli(tmp_path, "sources", "fetch", "--since", "yesterday", env=env, ok=False)
    assert bad.returncode != 0 and "expected a date YYYY-MM-DD" in bad.stderr


def test_the_scheduler_fetches_live_sources_and_stops_on_sigterm(tmp_path: Path, server) -> None:
    env = live_env(server, "daily_papers")
    server.route(DAY_PATH, Reply(body=DAILY))
    run_cli(tmp_path, "db", "upgrade", env=env)
    full_env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("NEWSLETTER_") and k != "DATABASE_URL"
    } | {"NEWSLETTER_HOME": str(tmp_path), **env}
    proc = subprocess.Popen(
        [sys.executable, "-m", "newsletter", "scheduler"],
        cwd=tmp_path,
        env=full_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    engine = db.make_engine(f"sqlite:///{tmp_path / 'data' / 'newsletter.db'}")
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not _states(engine):
            time.sleep(0.2)
        assert server.paths() == [DAY_PATH]
        assert paper_count(engine) == papers_in(DAILY)
    finally:
        proc.send_signal(signal.SIGTERM)
        _out, logged = proc.communicate(timeout=60)
    assert proc.returncode == 0, logged
    assert "source fetched" in logged and "service stopped" in logged

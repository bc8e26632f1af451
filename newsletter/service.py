"""``newsletter run``: the whole pipeline as one long-lived process.

One asyncio loop holds:
  - the scheduler (APScheduler 3.11, AsyncIOScheduler): ingest the corpus folder
    every ``NEWSLETTER_INGEST_MINUTES`` (when ``dumps`` is among
    ``NEWSLETTER_SOURCES``), fetch the live sources every ``NEWSLETTER_FETCH_MINUTES``
    (when any is configured), plan every ``NEWSLETTER_PLAN_MINUTES`` (all once right
    at start-up too), forget unconfirmed sign-ups hourly, and the operator's daily
    report at ``NEWSLETTER_REPORT_AT`` UTC;
  - the delivery worker (``deliver.run_worker``); the web app (uvicorn), unless
    ``web`` is off; the bounce listener, when ``NEWSLETTER_BOUNCE_LISTEN`` is set.

Planning and ingest are done by one process at a time: the *leader*, which holds
a PostgreSQL advisory lock (or, on SQLite, an exclusive lock on a file next to the
database). Another ``newsletter run`` against the same database delivers and
serves, and takes over the scheduled jobs as soon as the leader is gone (the lock
dies with its connection or process). Planning is safe to repeat anyway (one digest
per subscriber and edition); the lock keeps the work from being done twice.

Catch-up needs no bookkeeping: planning asks "whose latest send time has passed, without
a digest for it?" (``due.due_edition``): after downtime each gets one digest of all since.

SIGTERM or SIGINT: the scheduler stops, the worker finishes and records the batch
in hand (leases cover anything cut short), the web server closes, exit 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import logging
import os
import threading
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO

import sqlalchemy as sa
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from sqlmodel import select

from newsletter import db, embed, eventloop, signups
from newsletter.backends import EmailBackend
from newsletter.bounces.listener import serve_bounces
from newsletter.config import Settings
from newsletter.corpus.ingest import ingest
from newsletter.corpus.postings import index_pending
from newsletter.deliver import DeliverReport, Outcome, deliver_due, run_worker
from newsletter.due import due_edition
from newsletter.events import EventKind
from newsletter.health import WorkerHealth
from newsletter.models import Event, utcnow
from newsletter.plan import plan_digests
from newsletter.report import send_report
from newsletter.runtime import Runtime
from newsletter.values import clock_time

log = logging.getLogger("newsletter.service")
_LOCK_KEY = 0x6E6C7374  # "nlst": the advisory lock every scheduler of one database shares


class Leadership:
    """Who runs the scheduled jobs: whoever holds the lock. ``held()`` tries to take it
    (cheap when already held) and says whether this process leads now."""

    def __init__(self, *, engine: sa.Engine, settings: Settings) -> None:
        self.engine = engine
        self.settings = settings
        self._pg: sa.Connection | None = None
        self._file: IO[bytes] | None = None
        self._lock = threading.Lock()

    def held(self) -> bool:
        with self._lock:  # asked from the scheduler's threads, which share the connection
            if self.engine.dialect.name == "postgresql":
                return self._held_pg()
            return self._held_file()

    def _held_pg(self) -> bool:
        if self._pg is not None:
            try:  # still ours only while our connection lives
                self._pg.execute(sa.text("SELECT 1"))
                # Ended at once: an open transaction would sit "idle in transaction",
                # which a server's timeout ends, and the session's lock with it.
                self._pg.commit()
                return True
            except sa.exc.DBAPIError:
                self._pg = None
        conn = self.engine.connect()
        try:
            got = conn.execute(
                sa.text("SELECT pg_try_advisory_lock(:k)"), {"k": _LOCK_KEY}
            ).scalar()
            conn.commit()
        except sa.exc.DBAPIError:
            conn.close()
            return False
        if got:
            self._pg = conn
            log.info("leading: this process plans and ingests")
            return True
        conn.close()
        return False

    def _held_file(self) -> bool:
        if self._file is not None:
            return True
        path = lock_path(self.settings)
        path.parent.mkdir(parents=True, exist_ok=True)
        handle = path.open("a+b")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.close()
            return False
        self._file = handle
        log.info("leading: this process plans and ingests")
        return True

    def release(self) -> None:
        with self._lock:
            self._release()

    def _release(self) -> None:
        if self._pg is not None:
            with contextlib.suppress(sa.exc.DBAPIError):
                self._pg.execute(sa.text("SELECT pg_advisory_unlock(:k)"), {"k": _LOCK_KEY})
                self._pg.commit()
            self._pg.close()
            self._pg = None
        if self._file is not None:
            self._file.close()  # closing drops the flock
            self._file = None


@dataclass
class Jobs:
    """The scheduled jobs, as plain functions of a clock: tests call them with a
    simulated one; the service with the real one."""

    engine: sa.Engine
    settings: Settings
    leadership: Leadership
    now: Callable[[], datetime] = utcnow
    stopping: threading.Event = field(default_factory=threading.Event)
    """Set when the service stops: a fetch in progress ends between two requests."""
    # The jobs run in the scheduler's threads, at once: the ingests and fetches storing
    # papers now, by the time they stamp them with (``storing``).
    _storing: list[datetime] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @contextlib.contextmanager
    def storing(self) -> Iterator[datetime]:
        """Held while papers stamped first seen at the time it yields are stored, a file
        (or a feed) at a time: planning meanwhile covers only the papers seen before it,
        or it would count the files still to come as covered, and they would never be
        sent (``planning_window``). The clock is read under the lock, as planning reads
        it: a stamp taken before planning looked, registered after, would slip by."""
        with self._lock:
            now = self.now()
            self._storing.append(now)
        try:
            yield now
        finally:
            with self._lock:
                self._storing.remove(now)  # one of the equal stamps: any is the same

    def planning_window(self) -> tuple[datetime, datetime]:
        """(now, until when the papers first seen are all stored): ``now``, or just
        before the stamp of the oldest ingest or fetch still storing."""
        with self._lock:
            now = self.now()
            oldest = min(self._storing, default=None)
        return now, now if oldest is None else min(now, oldest - timedelta(microseconds=1))

    def ingest(self) -> None:
        if not self.leadership.held():
            return
        with self.storing() as now:
            report = ingest(
                engine=self.engine,
                paths=[self.settings.corpus_dir],
                now=now,
                max_bytes=self.settings.corpus_max_bytes,
            )
        for result in report.files:
            if result.status == "error":
                log.warning(
                    "corpus file failed to parse",
                    extra={"path": result.path, "error": str(result.error)},
                )
            elif result.status != "unchanged":
                log.info(
                    "corpus file ingested",
                    extra={"path": result.path, "new_papers": result.new_papers,
                           "papers": result.papers},
                )  # fmt: skip
        if report.new_papers:
            self._new_papers()

    def _new_papers(self) -> None:
        """Embed and index what ingest stored (off the planning path)."""
        embedded = embed.catch_up(engine=self.engine)
        indexed = index_pending(engine=self.engine)
        log.info("papers embedded and indexed", extra={"indexed": indexed,
                 "embedded": embedded.embedded if embedded else None})  # fmt: skip

    def fetch(self) -> None:
        """The live sources (``corpus.fetch`` logs each URL's outcome), then embeddings."""
        if not self.settings.live_sources or not self.leadership.held():
            return
        from newsletter.corpus.fetch import fetch_sources

        with self.storing() as now:
            report = fetch_sources(
                engine=self.engine,
                settings=self.settings,
                now=now,
                sleep=self.stopping.wait,
                stop=self.stopping.is_set,
            )
        if report.results:
            log.info(
                "sources fetched",
                extra={"urls": len(report.results), "failed": len(report.failed),
                       "new_papers": report.new_papers},
            )  # fmt: skip
        if report.new_papers:
            self._new_papers()

    def plan(self) -> None:
        if not self.leadership.held():
            return
        embed.catch_up(engine=self.engine)  # new topics (and anything ingest missed)
        now, settled = self.planning_window()
        report = plan_digests(
            engine=self.engine, settings=self.settings, now=now, papers_until=settled,
            keep=False,
            on_planned=lambda planned: log.info(
                "digest planned",
                extra={"delivery_id": planned.delivery_id, "subscriber_id": planned.subscriber_id,
                       "edition": planned.edition.isoformat(),
                       "papers": len(planned.ranked.matches)},
            ),
        )  # fmt: skip
        if (done := report.counts)["planned"]:
            log.info("planning done", extra={k: done[k] for k in ("planned", "no_match")})

    def expire(self) -> None:
        if not self.leadership.held():
            return
        with db.session_scope(engine=self.engine) as session:
            n = signups.expire(session=session, now=self.now(), hours=self.settings.confirm_hours)
        if n:
            log.info("unconfirmed sign-ups forgotten", extra={"count": n})

    def report(self) -> None:
        """Send the operator's report now (and note the day it was sent)."""
        if not self.settings.operator_email or not self.leadership.held():
            return
        now = self.now()
        sent = send_report(engine=self.engine, settings=self.settings, now=now)
        with db.session_scope(engine=self.engine) as session:
            session.add(Event(at=now, kind=EventKind.REPORT_SENT, detail=json.dumps({"day": sent})))
        log.info("operator report sent", extra={"to": self.settings.operator_email, "day": sent})

    def report_if_due(self) -> None:
        """The report, once a day, at the first run from ``NEWSLETTER_REPORT_AT`` UTC on:
        a service down at that hour sends it when it is back, and a send that failed is
        tried again at the next run (a cron trigger fires once, and lost both). Due as a
        reader's digest is (``due.due_edition``, in UTC): since the latest report time,
        or the one before when it was missed and is the nearer."""
        if not self.settings.operator_email or not self.leadership.held():
            return
        now = self.now()
        day = due_edition(now=now, timezone="UTC", send_at=self.settings.report_at)
        if day is None:
            return
        due = datetime.combine(day, clock_time(self.settings.report_at), tzinfo=UTC)
        with db.session_scope(engine=self.engine) as session:
            sent = session.exec(
                select(sa.func.count())
                .select_from(Event)
                .where(Event.kind == EventKind.REPORT_SENT, Event.at >= due)
            ).one()
        if not sent:
            self.report()


async def run(
    *,
    runtime: Runtime,
    web: bool = True,
    deliver: bool = True,
    schedule: bool = True,
    stop: asyncio.Event | None = None,
) -> None:
    """The service until SIGTERM/SIGINT (or ``stop``)."""
    settings, engine = runtime.settings, runtime.engine
    stop = eventloop.stop_on_signals(stop)
    leadership = Leadership(engine=engine, settings=settings)
    jobs = Jobs(engine=engine, settings=settings, leadership=leadership)
    tasks: list[asyncio.Task[object]] = []
    scheduler: AsyncIOScheduler | None = None
    server = None
    health = WorkerHealth(poll_seconds=_POLL_SECONDS) if deliver else None
    log.info(
        "service starting",
        extra={"pid": os.getpid(), "web": web, "deliver": deliver, "schedule": schedule},
    )
    if schedule:
        scheduler = AsyncIOScheduler(timezone="UTC")
        start = utcnow()
        common = {"max_instances": 1, "coalesce": True, "misfire_grace_time": None}
        every = {"ingest": settings.ingest_minutes, "plan": settings.plan_minutes}
        if "dumps" in settings.sources:
            scheduler.add_job(
                jobs.ingest, "interval", minutes=every["ingest"], next_run_time=start,
                id="ingest", **common,
            )  # fmt: skip
        if settings.live_sources:
            # In the scheduler's threads, like every job here: its waits block no one.
            scheduler.add_job(
                jobs.fetch, "interval", minutes=settings.fetch_minutes, next_run_time=start,
                id="fetch", **common,
            )  # fmt: skip
        # Planning starts a moment after ingest, so a first run plans what it just read.
        scheduler.add_job(
            jobs.plan, "interval", minutes=every["plan"], id="plan",
            next_run_time=start + timedelta(seconds=1), **common,
        )  # fmt: skip
        scheduler.add_job(jobs.expire, "interval", hours=1, id="expire", **common)
        scheduler.add_job(
            jobs.report_if_due, "interval", minutes=10, next_run_time=start + timedelta(seconds=5),
            id="report", **common,
        )  # fmt: skip
        scheduler.start()
    if health is not None:

        async def worker() -> None:
            await run_worker(
                runtime=runtime,
                backend=runtime.backend(),
                now=utcnow,
                stop=stop,
                poll_seconds=_POLL_SECONDS,
                on_outcome=_log_outcome,
                on_round=health.beat,
            )

        tasks.append(asyncio.create_task(supervised(worker, stop=stop, health=health)))
    if web:
        import uvicorn

        from newsletter.web import create_app

        config = uvicorn.Config(
            create_app(runtime=runtime, health=health),
            host=settings.web_host,
            port=settings.web_port,
            log_config=None,  # our handlers, our format
            lifespan="off",
            server_header=False,
            **proxy_options(settings),
        )
        server = uvicorn.Server(config)
        server.install_signal_handlers = lambda: None  # type: ignore[method-assign]  # ours stop it
        tasks.append(asyncio.create_task(server.serve()))
    if settings.bounce_listen:
        listener = serve_bounces(runtime=runtime, listen=settings.bounce_listen, stop=stop)
        tasks.append(asyncio.create_task(listener))
    try:
        await stop.wait()
    finally:
        log.info("service stopping")
        jobs.stopping.set()
        if scheduler is not None:
            scheduler.shutdown(wait=False)
        if server is not None:
            server.should_exit = True
        stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)
        leadership.release()
        log.info("service stopped")


_POLL_SECONDS = 2.0
_RESTART_MAX_SECONDS = 60.0


async def supervised(
    body: Callable[[], Awaitable[None]], *, stop: asyncio.Event, health: WorkerHealth
) -> None:
    """Run ``body`` until ``stop``; when it dies, log why and start it again, waiting
    longer after each failure in a row (1 s, 2 s, ... one minute). ``/healthz`` says
    503 while it is down, so a dead worker never hides behind a live web server."""
    delay = 1.0
    while not stop.is_set():
        try:
            await body()
            return
        except Exception:
            health.failed()
            log.exception("delivery worker died; restarting", extra={"in_seconds": delay})
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=delay)
        delay = min(delay * 2, _RESTART_MAX_SECONDS)


def proxy_options(settings: Settings) -> dict[str, object]:
    """uvicorn's forwarding options: X-Forwarded-For is believed from the operator's
    proxies only (by default from nobody, so a client cannot pick its own address)."""
    if not settings.trusted_proxies:
        return {"proxy_headers": False}
    return {"proxy_headers": True, "forwarded_allow_ips": ",".join(settings.trusted_proxies)}


def deliver_now(
    *,
    runtime: Runtime,
    backend: EmailBackend,
    subscriber_id: int | None = None,
    on_outcome: Callable[[Outcome], None] | None = None,
) -> DeliverReport:
    """``newsletter send``'s delivery in this process: everything due, once."""
    return eventloop.run(
        deliver_due(
            runtime=runtime,
            backend=backend,
            now=utcnow,
            subscriber_id=subscriber_id,
            on_outcome=on_outcome,
        )
    )


def work(
    *, runtime: Runtime, poll_seconds: float, on_outcome: Callable[[Outcome], None] | None = None
) -> int:
    """``newsletter worker``: deliver until SIGTERM or Ctrl-C; returns the attempts made."""

    async def main() -> int:
        return await run_worker(
            runtime=runtime,
            backend=runtime.backend(),
            now=utcnow,
            stop=eventloop.stop_on_signals(),
            poll_seconds=poll_seconds,
            on_outcome=on_outcome,
        )

    return eventloop.run(main())


def _log_outcome(outcome: Outcome) -> None:
    log.info(
        f"delivery {outcome.status}",
        extra={
            "delivery_id": outcome.delivery_id,
            "subscriber_id": outcome.subscriber_id,
            "error": outcome.error,
        },
    )


def lock_path(settings: Settings) -> Path:
    """The SQLite leader's lock file, beside the database file: two services with
    other homes (``NEWSLETTER_HOME``) but one ``DATABASE_URL`` must meet on one lock,
    or both would plan and both send the operator's report."""
    database = sa.engine.make_url(settings.database_url).database
    if not database or database == ":memory:":
        return settings.data_dir / "scheduler.lock"
    path = Path(database).resolve()
    return path.with_name(path.name + ".scheduler.lock")

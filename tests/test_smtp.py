"""SMTP delivery against a real aiosmtpd server that misbehaves on purpose.

For every fault a relay can produce, the ledger must end with each deliverable
subscriber holding exactly one accepted copy (counted on the server), every
permanent failure recorded as a bounce and the subscriber suppressed, and
nothing left pending or claimed.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Iterator
from datetime import date, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlmodel import select

from newsletter import db
from newsletter.backends.base import EmailBackend, OutgoingMessage
from newsletter.backends.smtp import SMTPBackend, wire_bytes
from newsletter.config import Settings
from newsletter.deliver import DeliverReport
from newsletter.ledger.reputation import rates_by_edition
from newsletter.models import Delivery, Event, Subscriber
from newsletter.plan import plan_digests
from newsletter.ratelimit import TokenBucket
from tests.conftest import make_settings
from tests.helpers import add_paper, deliver, subscribe
from tests.smtp_server import Faults, SMTPServer
from tests.test_deliver import _Contract


class Clock:
    def __init__(self, start: datetime) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture(params=[False, True], ids=["one-by-one", "pipelined"])
def pipelining(request: pytest.FixtureRequest) -> bool:
    """Each fault, against a relay that takes commands one by one and one that
    pipelines them (RFC 2920: the client sends MAIL, RCPT and DATA at once)."""
    return bool(request.param)


@pytest.fixture
def server(pipelining: bool) -> Iterator[SMTPServer]:
    srv = SMTPServer(pipelining=pipelining).start()
    yield srv
    srv.stop()


def smtp_settings(tmp_path: Path, url: str, port: int, **env: str) -> Settings:
    defaults = {
        "NEWSLETTER_DELIVERY": "smtp",
        "NEWSLETTER_SMTP_HOST": "127.0.0.1",
        "NEWSLETTER_SMTP_PORT": str(port),
        "NEWSLETTER_SMTP_TIMEOUT": "0.5",
        "NEWSLETTER_SMTP_POOL_SIZE": "3",
        "NEWSLETTER_SMTP_MAX_PER_CONNECTION": "7",
        "NEWSLETTER_RETRY_BASE_SECONDS": "1",
        "NEWSLETTER_RETRY_MAX_SECONDS": "2",
        "NEWSLETTER_RETRY_DEADLINE_HOURS": "1",
    }
    return make_settings(tmp_path, url, **(defaults | env))


def populate(engine: sa.Engine, settings: Settings, now: datetime, emails: list[str]) -> None:
    for i in range(2):
        add_paper(
            engine,
            title=f"Diffusion paper {i}",
            abstract="About diffusion.",
            seen=now - timedelta(hours=1),
        )
    for address in emails:
        subscribe(engine, email=address, topics=["diffusion"], now=now)
    assert len(
        plan_digests(engine=engine, settings=settings, now=now, due_only=False).planned
    ) == len(emails)


def drain(
    engine: sa.Engine, settings: Settings, clock: Clock, *, rounds: int = 60
) -> list[DeliverReport]:
    """Deliver, jump past every backoff, repeat until nothing is pending."""
    reports = []
    for _ in range(rounds):
        reports.append(deliver(engine, settings, SMTPBackend(settings=settings.smtp), clock.now))
        with db.session_scope(engine=engine) as session:
            left = session.exec(
                select(sa.func.count())
                .select_from(Delivery)
                .where(Delivery.status.in_(["pending", "sending"]))  # type: ignore[attr-defined]
            ).one()
        if not left:
            return reports
        clock.now += timedelta(seconds=settings.retry.max_seconds + 1)
    raise AssertionError("deliveries still pending after every round")


def assert_ledger(
    engine: sa.Engine, server: SMTPServer, *, delivered: list[str], bounced: list[str]
) -> None:
    copies = server.handler.copies()
    assert {a: copies[a] for a in delivered} == {a: 1 for a in delivered}, "each exactly once"
    assert all(copies[a] == 0 for a in bounced)
    with db.session_scope(engine=engine) as session:
        rows = {d.to_address: d for d in session.exec(select(Delivery))}
        subs = {s.email: s for s in session.exec(select(Subscriber))}
        hard = [
            json.loads(e.detail) | {"sid": e.subscriber_id}
            for e in session.exec(select(Event).where(Event.kind == "bounce.hard"))
        ]
    accepted_ids = {a.recipient: a.message_id for a in server.handler.accepted}
    for address in delivered:
        assert rows[address].status == "sent"
        assert accepted_ids[address] == rows[address].message_id  # the one chosen at planning
        assert subs[address].status == "active"
    for address in bounced:
        assert rows[address].status == "failed" and rows[address].lease_until is None
        assert subs[address].status == "suppressed"
    assert sorted(h["code"] for h in hard) == sorted(
        server.handler.faults.permanent[a] for a in bounced
    )
    assert not [r for r in rows.values() if r.status in ("pending", "sending")]


def test_transient_replies_permanent_refusals_and_full_mailboxes(
    tmp_path, sqlite_engine, sqlite_url, now, pipelining
) -> None:  # type: ignore[no-untyped-def]
    emails = [f"s{i}@example.org" for i in range(60)]
    faults = Faults(
        transient_rate=0.3,
        permanent={"s3@example.org": 550, "s17@example.org": 553},
        full_for={"s5@example.org": 2, "s8@example.org": 1},  # 552 is transient (RFC 5321)
        seed=4,
    )
    server = SMTPServer(faults, pipelining=pipelining).start()
    try:
        settings = smtp_settings(tmp_path, sqlite_url, server.port)
        populate(sqlite_engine, settings, now, emails)
        drain(sqlite_engine, settings, Clock(now))
        bounced = list(faults.permanent)
        assert_ledger(
            sqlite_engine,
            server,
            delivered=[e for e in emails if e not in bounced],
            bounced=bounced,
        )
        assert {"421", "451", "452", "552", "permanent"} <= set(server.handler.injected)
        # Refused at RCPT is bounced as much as a report that comes back later: the
        # edition's rate counts them (it read 0% while half a list could be dead).
        (edition,) = rates_by_edition(engine=sqlite_engine)
        assert (edition.sent, edition.bounced) == (len(emails), len(bounced))
    finally:
        server.stop()


def test_connection_dropped_in_the_middle_of_data_is_retried(
    tmp_path, sqlite_engine, sqlite_url, now, pipelining
) -> None:  # type: ignore[no-untyped-def]
    emails = [f"d{i}@example.org" for i in range(40)]
    server = SMTPServer(Faults(drop_in_data_rate=0.35, seed=2), pipelining=pipelining).start()
    try:
        settings = smtp_settings(tmp_path, sqlite_url, server.port)
        populate(sqlite_engine, settings, now, emails)
        drain(sqlite_engine, settings, Clock(now))
        assert server.handler.injected["drop"] > 5
        assert_ledger(sqlite_engine, server, delivered=emails, bounced=[])
    finally:
        server.stop()


def test_server_down_for_a_while_then_back(tmp_path, sqlite_engine, sqlite_url, now) -> None:  # type: ignore[no-untyped-def]
    emails = [f"o{i}@example.org" for i in range(20)]
    server = SMTPServer()  # not started: the relay is down
    settings = smtp_settings(tmp_path, sqlite_url, server.port)
    populate(sqlite_engine, settings, now, emails)
    clock = Clock(now)
    for _ in range(3):
        report = deliver(sqlite_engine, settings, SMTPBackend(settings=settings.smtp), clock.now)
        assert report.count("retrying") == len(emails)
        clock.now += timedelta(seconds=3)
    server.start()
    try:
        drain(sqlite_engine, settings, clock)
        assert_ledger(sqlite_engine, server, delivered=emails, bounced=[])
        with db.session_scope(engine=sqlite_engine) as session:
            attempts = {d.attempts for d in session.exec(select(Delivery))}
        assert attempts == {4}  # three refused connections, then the one that worked
    finally:
        server.stop()


def test_server_slower_than_the_timeout(
    tmp_path, sqlite_engine, sqlite_url, now, pipelining
) -> None:  # type: ignore[no-untyped-def]
    emails = [f"w{i}@example.org" for i in range(15)]
    server = SMTPServer(
        Faults(slow_rate=0.3, slow_seconds=1.0, seed=3), pipelining=pipelining
    ).start()
    try:
        settings = smtp_settings(tmp_path, sqlite_url, server.port)  # timeout 0.5 s
        populate(sqlite_engine, settings, now, emails)
        reports = drain(sqlite_engine, settings, Clock(now))
        assert server.handler.injected["slow"] >= 2
        assert any("retrying" in {o.status for o in r.outcomes} for r in reports)
        assert_ledger(sqlite_engine, server, delivered=emails, bounced=[])
    finally:
        server.stop()


def test_mailbox_full_past_the_deadline_is_a_soft_bounce_and_suppresses(
    tmp_path, sqlite_engine, sqlite_url, now, pipelining
) -> None:  # type: ignore[no-untyped-def]
    server = SMTPServer(
        Faults(full_for={"full@example.org": 10_000}), pipelining=pipelining
    ).start()
    try:
        settings = smtp_settings(
            tmp_path,
            sqlite_url,
            server.port,
            NEWSLETTER_RETRY_DEADLINE_HOURS="0.002",  # 7.2 s
            NEWSLETTER_SOFT_BOUNCE_LIMIT="1",
        )
        populate(sqlite_engine, settings, now, ["full@example.org", "fine@example.org"])
        drain(sqlite_engine, settings, Clock(now))
        with db.session_scope(engine=sqlite_engine) as session:
            rows = {d.to_address: d for d in session.exec(select(Delivery))}
            subs = {s.email: s for s in session.exec(select(Subscriber))}
            kinds = [
                e.kind
                for e in session.exec(
                    select(Event).where(Event.subscriber_id == subs["full@example.org"].id)
                )
            ]
        assert (
            rows["full@example.org"].status == "failed" and rows["full@example.org"].attempts >= 2
        )
        assert "552" in (rows["full@example.org"].last_error or "")
        assert "bounce.soft" in kinds and "subscriber.suppressed" in kinds
        assert subs["full@example.org"].status == "suppressed"
        assert (rows["fine@example.org"].status, subs["fine@example.org"].status) == (
            "sent",
            "active",
        )
    finally:
        server.stop()


@pytest.mark.parametrize(
    "reply",
    [b"452 4.2.2 Bo\xeete pleine", b"451 4.3.0 busy\x00now", b"550 5.1.1 \xff\xfe unknown \x1b[2J"],
    ids=["latin-1", "nul", "bytes-and-escape"],
)
def test_a_relays_reply_in_any_bytes_is_recorded_and_delivery_goes_on(
    tmp_path, database_url, engine, now, pipelining, reply
) -> None:  # type: ignore[no-untyped-def]
    """A relay's reply text is whatever it sends: one that no database can store as it
    came (a Latin-1 byte, a NUL PostgreSQL refuses) is recorded cleaned, and the rest of
    the batch is delivered, every round."""
    server = SMTPServer(Faults(rcpt_bytes={"odd@example.org": reply}), pipelining=pipelining)
    server.start()
    try:
        settings = smtp_settings(tmp_path, database_url, server.port)
        emails = ["odd@example.org", *(f"n{i}@example.org" for i in range(5))]
        populate(engine, settings, now, emails)
        deliver(engine, settings, SMTPBackend(settings=settings.smtp), now)
        assert server.handler.copies() == {a: 1 for a in emails[1:]}
        with db.session_scope(engine=engine) as session:
            odd = session.exec(select(Delivery).where(Delivery.to_address == emails[0])).one()
        assert odd.status in ("pending", "failed") and odd.last_error is not None
        status = reply.split()[1].decode()  # its enhanced status code, kept
        assert status in odd.last_error
        assert not any(ch in odd.last_error for ch in "\x00\x1b\udcee\udcff\udcfe")
    finally:
        server.stop()


@pytest.mark.parametrize(
    ("reply", "bounce", "status"),
    [
        ("552 5.2.2 mailbox full", "bounce.soft", "suppressed"),  # a full mailbox, after DATA
        ("550 5.2.1 mailbox disabled", "bounce.hard", "suppressed"),
        ("554 5.6.0 message content rejected", "delivery.failed", "active"),  # this message's
    ],
)
def test_a_refusal_after_data_about_the_mailbox_is_the_recipients(
    tmp_path, sqlite_engine, sqlite_url, now, pipelining, reply, bounce, status
) -> None:  # type: ignore[no-untyped-def]
    """A digest has one recipient, so a refusal of the message that is about the mailbox
    (552, or an enhanced status x.2.x) bounces like one at RCPT; one about the message
    (content, size, policy) fails that digest alone."""
    server = SMTPServer(Faults(after_data={"x@example.org": reply}), pipelining=pipelining).start()
    try:
        settings = smtp_settings(
            tmp_path, sqlite_url, server.port,
            NEWSLETTER_RETRY_DEADLINE_HOURS="0.001", NEWSLETTER_SOFT_BOUNCE_LIMIT="1",
        )  # fmt: skip
        populate(sqlite_engine, settings, now, ["x@example.org", "fine@example.org"])
        drain(sqlite_engine, settings, Clock(now))
        with db.session_scope(engine=sqlite_engine) as session:
            subs = {s.email: s for s in session.exec(select(Subscriber))}
            kinds = {
                e.kind
                for e in session.exec(
                    select(Event).where(Event.subscriber_id == subs["x@example.org"].id)
                )
            }
        assert bounce in kinds and subs["x@example.org"].status == status
        assert subs["fine@example.org"].status == "active"
        assert server.handler.copies() == {"fine@example.org": 1}
    finally:
        server.stop()


def test_connections_are_reused_up_to_the_cap(
    tmp_path, sqlite_engine, sqlite_url, now, server
) -> None:  # type: ignore[no-untyped-def]
    emails = [f"r{i}@example.org" for i in range(30)]
    settings = smtp_settings(tmp_path, sqlite_url, server.port)  # pool 3, 7 per connection
    populate(sqlite_engine, settings, now, emails)
    sessions: list[int] = []
    original = SMTPBackend._connect

    async def counting(self):  # type: ignore[no-untyped-def]
        sessions.append(1)
        return await original(self)

    SMTPBackend._connect = counting  # type: ignore[method-assign]
    try:
        deliver(sqlite_engine, settings, SMTPBackend(settings=settings.smtp), now)
    finally:
        SMTPBackend._connect = original  # type: ignore[method-assign]
    assert server.handler.copies() == {e: 1 for e in emails}
    assert 5 <= len(sessions) <= 7  # 30 messages / 7 per session, over 3 parallel connections


@pytest.mark.parametrize(
    ("body", "wire_ready"),
    [
        (b"Message-ID: <dots@x>\r\n\r\n.starts\r\n.\r\nmid . dot\r\n..two\r\nend", False),
        (b"Message-ID: <dots@x>\r\n\r\n.starts\n.\rmid . dot\r\n..two\r\nend\r\n", False),
        # What our renderer writes: CRLF only, and a line's first dot encoded (=2E).
        (b"Message-ID: <dots@x>\r\n\r\n=2Estarts\r\nmid . dot\r\nend", True),
    ],
)
def test_message_bytes_arrive_exactly_dots_and_all(server, body, wire_ready) -> None:  # type: ignore[no-untyped-def]
    """Transparency (RFC 5321 4.5.2): lines starting with a dot, a lone "." line, lone
    line breaks and a last line without CRLF reach the server as written (line breaks
    as CRLF)."""
    message = OutgoingMessage(
        message_id="<dots@x>",
        sender="papers@example.org",
        recipients=("dots@example.org",),
        data=body,
        edition=date(2024, 5, 29),
        wire_ready=wire_ready,
    )

    async def send() -> None:
        settings = smtp_settings(Path("."), "sqlite://", server.port).smtp
        async with SMTPBackend(settings=settings) as backend:
            await backend.send(message)

    asyncio.run(send())
    expected = re.sub(rb"\r\n|\r|\n", b"\r\n", body).removesuffix(b"\r\n") + b"\r\n"
    assert [a.data for a in server.handler.accepted] == [expected]


def test_wire_bytes_normalizes_lone_line_breaks_and_stuffs_dots() -> None:
    assert wire_bytes(b".a\nb\r.c\r\n.") == b"..a\r\nb\r\n..c\r\n..\r\n.\r\n"
    assert wire_bytes(b"a\r\n", ready=True) == b"a\r\n.\r\n"
    assert wire_bytes(b"a", ready=True) == b"a\r\n.\r\n"


def test_a_refused_recipient_does_not_cost_the_session(
    tmp_path, sqlite_engine, sqlite_url, now, pipelining
) -> None:  # type: ignore[no-untyped-def]
    bounced = [f"x{i}@example.org" for i in range(6)]
    emails = [f"y{i}@example.org" for i in range(6)] + bounced
    server = SMTPServer(
        Faults(permanent=dict.fromkeys(bounced, 550)), pipelining=pipelining
    ).start()
    try:
        settings = smtp_settings(
            tmp_path, sqlite_url, server.port, NEWSLETTER_SMTP_POOL_SIZE="1",
            NEWSLETTER_SMTP_MAX_PER_CONNECTION="100",
        )  # fmt: skip
        populate(sqlite_engine, settings, now, emails)
        deliver(sqlite_engine, settings, SMTPBackend(settings=settings.smtp), now)
        assert_ledger(sqlite_engine, server, delivered=emails[:6], bounced=bounced)
        assert server.handler.sessions == 1  # RSET after each 550, not a reconnect
    finally:
        server.stop()


def test_token_bucket_holds_the_rate() -> None:
    async def run() -> float:
        bucket = TokenBucket(rate=50)
        loop = asyncio.get_running_loop()
        start = loop.time()
        await asyncio.gather(*(bucket.acquire() for _ in range(100)))
        return loop.time() - start

    elapsed = asyncio.run(run())
    assert 0.9 <= elapsed <= 2.5  # 100 at 50/s with a 50 burst: about one second


class TestSMTPBackendContract(_Contract):
    @pytest.fixture(autouse=True)
    def _server(self, server: SMTPServer) -> None:
        self.server = server

    def make(self, tmp_path: Path) -> EmailBackend:
        settings = smtp_settings(tmp_path, "sqlite://", self.server.port)
        return SMTPBackend(settings=settings.smtp)

    def stored(self, backend: EmailBackend) -> list[bytes]:
        return [a.data for a in self.server.handler.accepted]


def _smtp_env(port: int) -> dict[str, str]:
    return {
        "NEWSLETTER_DELIVERY": "smtp",
        "NEWSLETTER_SMTP_HOST": "127.0.0.1",
        "NEWSLETTER_SMTP_PORT": str(port),
        "NEWSLETTER_SMTP_TIMEOUT": "2",
    }


def test_cli_send_bounce_stats_and_operator_retry(tmp_path: Path) -> None:
    from tests.test_cli import run

    server = SMTPServer(Faults(permanent={"gone@example.org": 550})).start()
    env = _smtp_env(server.port)
    try:
        run(tmp_path, "db", "upgrade")
        run(tmp_path, "ingest")
        run(tmp_path, "subscribers", "add", "ok@example.org", "--topic", "diffusion")
        run(tmp_path, "subscribers", "add", "gone@example.org", "--topic", "diffusion")
        sent = run(tmp_path, "send", "--now", env=env, ok=False)
        assert sent.returncode == 1  # a failure is worth a non-zero exit for cron
        assert "delivered: 1 failed, 1 sent" in sent.stdout
        assert "gone@example.org: failed: 550" in sent.stderr
        counts = json.loads(run(tmp_path, "stats", "--json").stdout)
        assert {
            k: counts[k] for k in ("sent", "failed", "hard_bounces", "subscribers_suppressed")
        } == {
            "sent": 1,
            "failed": 1,
            "hard_bounces": 1,
            "subscribers_suppressed": 1,
        }
        # The bounce counts among the unsubscribes of its edition, with its source.
        assert counts["unsubscribes"] == 1 and list(counts["unsubscribes_by_edition"].values()) == [
            1
        ]
        failed = json.loads(run(tmp_path, "deliveries", "--status", "failed", "--json").stdout)
        assert [(d["to_address"], d["attempts"]) for d in failed] == [("gone@example.org", 1)]

        server.handler.faults.permanent.clear()  # the operator fixed the address
        assert "requeued 1 failed" in run(tmp_path, "deliveries", "retry", "--failed").stdout
        assert "delivered: 1 sent" in run(tmp_path, "send", env=env).stdout
        assert server.handler.copies() == {"ok@example.org": 1, "gone@example.org": 1}
        assert json.loads(run(tmp_path, "stats", "--json").stdout)["subscribers_suppressed"] == 0
    finally:
        server.stop()


def test_worker_delivers_continuously_and_stops_cleanly_on_sigterm(tmp_path: Path, now) -> None:  # type: ignore[no-untyped-def]
    import os
    import signal
    import subprocess
    import sys
    import time

    from tests.test_cli import run

    server = SMTPServer(Faults(transient_rate=0.2, seed=9)).start()
    try:
        run(tmp_path, "db", "upgrade")
        env = {k: v for k, v in os.environ.items() if not k.startswith("NEWSLETTER_")}
        env |= {"NEWSLETTER_HOME": str(tmp_path), "NEWSLETTER_RETRY_BASE_SECONDS": "0.2"}
        env |= {"NEWSLETTER_RETRY_MAX_SECONDS": "0.5", **_smtp_env(server.port)}
        proc = subprocess.Popen(
            [sys.executable, "-m", "newsletter", "worker", "--poll", "0.2"],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        engine = db.make_engine(f"sqlite:///{tmp_path / 'data' / 'newsletter.db'}")
        settings = make_settings(tmp_path, f"sqlite:///{tmp_path / 'data' / 'newsletter.db'}")
        emails = [f"k{i}@example.org" for i in range(12)]
        real_now = datetime.now(now.tzinfo)
        populate(engine, settings, real_now, emails)  # planned while the worker runs
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and sum(server.handler.copies().values()) < len(emails):
            time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        out, errors = proc.communicate(timeout=30)
        assert proc.returncode == 0, errors
        assert "worker stopped after" in out
        assert server.handler.copies() == {e: 1 for e in emails}
        with db.session_scope(engine=engine) as session:
            states = {d.status for d in session.exec(select(Delivery))}
        assert states == {"sent"}
    finally:
        server.stop()


@pytest.mark.postgres
def test_rate_limit_is_shared_by_every_worker_on_postgresql(pg_server: str) -> None:
    from newsletter.ratelimit import SharedTokenBucket
    from tests.conftest import drop_pg_database, make_pg_database

    url = make_pg_database(pg_server)
    try:
        engine = db.make_engine(url)
        db.upgrade(engine=engine)

        async def worker(bucket: SharedTokenBucket, n: int) -> None:
            for _ in range(n):
                await bucket.acquire()

        async def run() -> float:
            # Two workers' buckets over one row: 20/s in all, not 20/s each.
            buckets = [SharedTokenBucket(engine=engine, rate=20) for _ in range(2)]
            loop = asyncio.get_running_loop()
            start = loop.time()
            await asyncio.gather(worker(buckets[0], 30), worker(buckets[1], 30))
            return loop.time() - start

        elapsed = asyncio.run(run())
        # 60 tokens at 20/s with a 20-token burst: at least 2 s; separate buckets: 1 s.
        assert 1.8 <= elapsed <= 6, elapsed
    finally:
        drop_pg_database(pg_server, url)


def test_a_worker_keeps_its_smtp_sessions_open_across_rounds(
    tmp_path: Path, server: SMTPServer, now: datetime
) -> None:
    """The pool is opened once per worker life: a digest planned between two polls goes
    out on a session opened for an earlier one, not on a new connection per round."""
    from newsletter.deliver import run_worker
    from tests.helpers import runtime_for

    url = f"sqlite:///{tmp_path / 't.db'}"
    engine = db.make_engine(url)
    db.upgrade(engine=engine)
    settings = smtp_settings(tmp_path, url, server.port, NEWSLETTER_SMTP_POOL_SIZE="1",
                             NEWSLETTER_SMTP_MAX_PER_CONNECTION="100")  # fmt: skip
    populate(engine, settings, now, ["r1@example.org"])
    rounds: list[int] = []
    stop = asyncio.Event()

    def on_round() -> None:
        rounds.append(server.handler.sessions)
        if len(rounds) == 2:  # between polls, a new subscriber's digest is planned
            subscribe(engine, email="r2@example.org", topics=["diffusion"], now=now)
            plan_digests(engine=engine, settings=settings, now=now, due_only=False)
        if len(rounds) == 4:
            stop.set()

    asyncio.run(
        run_worker(
            runtime=runtime_for(settings, engine),
            backend=SMTPBackend(settings=settings.smtp),
            now=lambda: now,
            stop=stop,
            poll_seconds=0.05,
            on_round=on_round,
        )
    )
    assert sorted(server.handler.copies()) == ["r1@example.org", "r2@example.org"]
    assert rounds == [1, 1, 1, 1], "one session for the worker's whole life"

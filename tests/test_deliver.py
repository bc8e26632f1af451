"""Delivery: claims with leases, retries on transient errors, no resend of what was accepted."""

from __future__ import annotations

import asyncio
import email
import email.policy
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlmodel import select

from newsletter import db, tokens
from newsletter import deliver as delivery
from newsletter.backends.base import EmailBackend, OutgoingMessage
from newsletter.backends.file import FileBackend
from newsletter.backends.memory import MemoryBackend
from newsletter.errors import PermanentDeliveryError, TransientDeliveryError
from newsletter.ledger import LEASE, claim, retry_failed
from newsletter.models import Delivery, Event, Subscriber, SubscriberStatus
from newsletter.plan import plan_digests
from tests.conftest import make_settings
from tests.helpers import (
    ScriptedBackend,
    add_paper,
    bulk_subscribe,
    deliver,
    runtime_for,
    subscribe,
)


@pytest.fixture
def planned(engine, settings, now) -> int:  # type: ignore[no-untyped-def]
    """One subscriber with one planned digest; returns the subscriber id."""
    add_paper(
        engine,
        title="Diffusion <b>bold</b> & co",
        abstract="About diffusion.",
        seen=now - timedelta(hours=1),
    )
    sid = subscribe(engine, email="ada@example.org", topics=["diffusion"], now=now, name="Ada")
    plan_digests(engine=engine, settings=settings, now=now, due_only=False)
    return sid


def _row(engine) -> Delivery:  # type: ignore[no-untyped-def]
    with db.session_scope(engine=engine) as session:
        return session.exec(select(Delivery)).one()


def test_file_backend_writes_one_eml_and_its_html_per_digest(
    engine, settings, now, planned, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    backend = FileBackend(directory=tmp_path / "outbox")
    assert deliver(engine, settings, backend, now).count("sent") == 1
    (eml,) = (tmp_path / "outbox" / "2026-11-23").glob("*.eml")
    assert eml.with_suffix(".html").read_text().startswith("<!doctype html>")
    raw = eml.read_bytes()
    assert all(len(line) <= 998 for line in raw.split(b"\r\n"))
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    assert msg.get_content_type() == "multipart/alternative"
    assert [p.get_content_type() for p in msg.iter_parts()] == ["text/plain", "text/html"]
    assert msg["To"] == "Ada <ada@example.org>"
    assert msg["Message-ID"] == _row(engine).message_id
    url = msg["List-Unsubscribe"].strip("<>")
    assert url.startswith("https://papers.example/u/")
    token = url.rsplit("/", 1)[1]
    row = _row(engine)
    claim_ = tokens.read_token(token)
    assert claim_ is not None and claim_.ids == (row.subscriber_id, row.id)
    with db.session_scope(engine=engine) as session:
        salt = session.get(Subscriber, row.subscriber_id).token_salt  # type: ignore[union-attr]
    assert tokens.verify(
        key=settings.secret_key.encode(), purpose=tokens.UNSUBSCRIBE, claim=claim_, salt=salt
    )
    assert msg["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    html = msg.get_body(("html",)).get_content()
    assert "&lt;b&gt;bold&lt;/b&gt; &amp; co" in html and "<b>bold</b>" not in html
    assert _row(engine).status == "sent"


def test_resend_after_a_crash_overwrites_the_same_file(
    engine, settings, now, planned, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    backend = FileBackend(directory=tmp_path / "outbox")
    deliver(engine, settings, backend, now)
    with db.session_scope(
        engine=engine
    ) as session:  # as if the worker died before recording "sent"
        row = session.exec(select(Delivery)).one()
        row.status, row.lease_until = "sending", now - timedelta(seconds=1)
    deliver(engine, settings, backend, now + LEASE)
    assert len(list((tmp_path / "outbox").rglob("*.eml"))) == 1


def test_transient_error_is_retried_later_with_backoff(engine, settings, now, planned) -> None:  # type: ignore[no-untyped-def]
    backend = ScriptedBackend([TransientDeliveryError("451 try later")])
    assert deliver(engine, settings, backend, now).count("retrying") == 1
    row = _row(engine)
    assert (row.status, row.attempts, row.last_error) == ("pending", 1, "451 try later")
    assert now + timedelta(seconds=30) <= row.next_attempt_at <= now + timedelta(seconds=60)
    assert deliver(engine, settings, backend, now + timedelta(seconds=10)).outcomes == []  # not yet
    assert deliver(engine, settings, backend, now + timedelta(minutes=2)).count("sent") == 1
    assert len(backend.sent) == 1 and _row(engine).attempts == 2


def test_permanent_error_fails_once_and_records_an_event(engine, settings, now, planned) -> None:  # type: ignore[no-untyped-def]
    backend = ScriptedBackend([PermanentDeliveryError("550 no such user")])
    assert deliver(engine, settings, backend, now).count("failed") == 1
    assert deliver(engine, settings, backend, now + timedelta(days=1)).outcomes == []
    with db.session_scope(engine=engine) as session:
        (event,) = session.exec(select(Event).where(Event.kind == "delivery.failed"))
    assert "550 no such user" in event.detail and event.subscriber_id == planned
    assert backend.sent == []


def test_unsubscribed_while_pending_is_not_sent(engine, settings, now, planned) -> None:  # type: ignore[no-untyped-def]
    with db.session_scope(engine=engine) as session:
        session.get(Subscriber, planned).status = SubscriberStatus.UNSUBSCRIBED  # type: ignore[union-attr]
    backend = MemoryBackend()
    assert deliver(engine, settings, backend, now).count("cancelled") == 1
    assert backend.sent == []


def test_a_digest_past_the_deadline_is_given_up_not_taken_forever(engine, settings, now) -> None:  # type: ignore[no-untyped-def]
    """A row whose worker is killed each time it sends it counts no attempt, and a
    digest left over from an outage is old news: due for longer than the retry
    deadline (48 hours by default), the next round records both failed, sends neither,
    and sends what is still in time; requeued by the operator, they get their try."""
    add_paper(engine, title="Diffusion", abstract="About diffusion.", seen=now - timedelta(hours=1))
    for who in ("killed", "stale", "fresh"):
        subscribe(engine, email=f"{who}@example.org", topics=["diffusion"], now=now)
    plan_digests(engine=engine, settings=settings, now=now, due_only=False)
    deadline = timedelta(hours=settings.retry.deadline_hours)
    assert deadline == timedelta(hours=48)  # the default a user gets
    with db.session_scope(engine=engine) as session:
        rows = {d.to_address: d for d in session.exec(select(Delivery))}
        rows["fresh@example.org"].next_attempt_at = now + deadline  # planned later
        rows["killed@example.org"].status = "sending"  # claimed, its worker gone
        rows["killed@example.org"].lease_until = now + deadline
        session.add_all(rows.values())
    later = now + deadline + timedelta(minutes=1)
    backend = MemoryBackend()
    report = deliver(engine, settings, backend, later)
    assert [m.recipients for m in backend.sent] == [("fresh@example.org",)]
    assert report.count("failed") == 2
    with db.session_scope(engine=engine) as session:
        done = {d.to_address: (d.status, d.last_error) for d in session.exec(select(Delivery))}
        events = [
            e.kind for e in session.exec(select(Event).where(Event.kind == "delivery.failed"))
        ]
    assert done["stale@example.org"] == ("failed", "not sent within 48 hours of being due")
    assert done["killed@example.org"] == done["stale@example.org"]
    assert events == ["delivery.failed"] * 2
    assert retry_failed(engine=engine, now=later) == 2
    assert deliver(engine, settings, backend, later + timedelta(minutes=1)).count("sent") == 2


def test_text_that_is_not_utf8_in_sqlite_spoils_only_what_holds_it(
    sqlite_engine, tmp_path, sqlite_url, now
) -> None:  # type: ignore[no-untyped-def]
    """SQLite keeps whatever bytes a TEXT value was given (by hand, another program): a
    snapshot, a reader's name or a paper's title that is not UTF-8 must not stop the
    batch that meets it, every lease: the snapshot's digest fails alone, the name and
    the title show their bad bytes as U+FFFD, and everyone else's digest goes out."""
    engine, settings = sqlite_engine, make_settings(tmp_path, sqlite_url)
    for title in ("Diffusion", "Transformers", "Speech"):
        add_paper(engine, title=title, abstract=f"About {title.lower()}.",
                  seen=now - timedelta(hours=1))  # fmt: skip
    for who, topic in (("ada", "diffusion"), ("bob", "transformers"), ("cy", "speech")):
        subscribe(engine, email=f"{who}@example.org", topics=[topic], now=now)
    plan_digests(engine=engine, settings=settings, now=now, due_only=False)
    with engine.begin() as conn:
        conn.execute(sa.text(
            "UPDATE snapshots SET items = CAST(x'5b7b226964223a317d2cff5d' AS TEXT) WHERE id ="
            " (SELECT snapshot_id FROM deliveries WHERE to_address = 'ada@example.org')"
        ))  # fmt: skip
        conn.execute(sa.text("UPDATE subscribers SET name = CAST(x'426f62ff' AS TEXT)"
                             " WHERE email = 'bob@example.org'"))  # fmt: skip
        conn.execute(sa.text("UPDATE papers SET title = CAST(x'5370ff65656368' AS TEXT)"
                             " WHERE title = 'Speech'"))  # fmt: skip
    backend = MemoryBackend()
    report = deliver(engine, settings, backend, now)
    assert sorted(r for m in backend.sent for r in m.recipients) == [
        "bob@example.org", "cy@example.org",
    ]  # fmt: skip
    assert report.count("failed") == 1
    sent = {m.recipients[0]: email.message_from_bytes(m.data, policy=email.policy.default)
            for m in backend.sent}  # fmt: skip
    assert "Bob\ufffd" in str(sent["bob@example.org"]["To"])
    assert "Sp\ufffdeech" in sent["cy@example.org"].get_body(("plain",)).get_content()


def test_claim_skips_live_leases_and_takes_expired_ones(engine, now, planned) -> None:  # type: ignore[no-untyped-def]
    assert claim(engine=engine, now=now, limit=10) == [_row(engine).id]
    assert claim(engine=engine, now=now + LEASE - timedelta(seconds=1), limit=10) == []
    assert claim(engine=engine, now=now + LEASE + timedelta(seconds=1), limit=10) == [
        _row(engine).id
    ]


def test_resent_message_is_byte_identical(engine, settings, now, planned) -> None:  # type: ignore[no-untyped-def]
    first = MemoryBackend()
    deliver(engine, settings, first, now)
    with db.session_scope(engine=engine) as session:
        row = session.exec(select(Delivery)).one()
        row.status, row.lease_until = "sending", now
    again = MemoryBackend()
    deliver(engine, settings, again, now + LEASE * 2)
    assert again.sent[0].data == first.sent[0].data


class _Contract:
    """What every backend promises: accept a message and keep it retrievable."""

    def make(self, tmp_path: Path) -> EmailBackend:
        raise NotImplementedError

    def stored(self, backend: EmailBackend) -> list[bytes]:
        raise NotImplementedError

    def test_accepts_and_keeps_each_message(self, tmp_path: Path, now) -> None:  # type: ignore[no-untyped-def]
        backend = self.make(tmp_path)
        messages = [
            OutgoingMessage(
                f"<{i}@x>", "a@x.org", (f"r{i}@x.org",), b"Subject: hi\r\n\r\nbody\r\n", now.date()
            )
            for i in range(3)
        ]

        async def send_all() -> None:
            async with backend:
                for m in messages:
                    await backend.send(m)

        asyncio.run(send_all())
        assert sorted(self.stored(backend)) == sorted(m.data for m in messages)


class TestFileBackendContract(_Contract):
    def make(self, tmp_path: Path) -> EmailBackend:
        return FileBackend(directory=tmp_path)

    def stored(self, backend: EmailBackend) -> list[bytes]:
        assert isinstance(backend, FileBackend)
        return [p.read_bytes() for p in backend.directory.rglob("*.eml")]


class TestMemoryBackendContract(_Contract):
    def make(self, tmp_path: Path) -> EmailBackend:
        return MemoryBackend()

    def stored(self, backend: EmailBackend) -> list[bytes]:
        assert isinstance(backend, MemoryBackend)
        return [m.data for m in backend.sent]


def test_file_backend_full_disk_is_transient(tmp_path: Path, now) -> None:  # type: ignore[no-untyped-def]
    blocked = tmp_path / "outbox"
    blocked.write_text("a file where the directory should be")
    msg = OutgoingMessage("<1@x>", "a@x.org", ("r@x.org",), b"x", now.date())
    with pytest.raises(TransientDeliveryError, match="outbox"):
        asyncio.run(FileBackend(directory=blocked).send(msg))


class _BreaksOnce(EmailBackend):
    """Accepts after a short wait (so sends overlap), and breaks (not a delivery error:
    a bug, a closed transport) on the fifth."""

    def __init__(self) -> None:
        self.sent: list[str] = []
        self.calls = 0

    async def send(self, message: OutgoingMessage) -> None:
        self.calls += 1
        if self.calls == 5:
            raise RuntimeError("the transport went away")
        self.sent.append(message.recipients[0])  # the relay has it; its reply comes later
        await asyncio.sleep(0.01)


def test_a_lane_that_breaks_stops_the_others_and_what_went_out_is_recorded(
    engine, settings, now
) -> None:  # type: ignore[no-untyped-def]
    """Every lane ends before the loop raises: none is left sending unrecorded, and no new
    job is taken after the failure (those claimed wait for their lease, as after a crash)."""
    add_paper(engine, title="Diffusion one", abstract="A.", seen=now - timedelta(hours=1))
    for k in range(40):
        subscribe(engine, email=f"r{k}@example.org", topics=["diffusion"], now=now)
    plan_digests(engine=engine, settings=settings, now=now, due_only=False)
    backend = _BreaksOnce()
    with pytest.raises(RuntimeError, match="the transport went away"):
        deliver(engine, settings, backend, now)
    with db.session_scope(engine=engine) as session:
        rows = session.exec(select(Delivery)).all()
    sent = sorted(r.to_address for r in rows if r.status == "sent")
    assert sent == sorted(backend.sent), "what the backend took is recorded as sent"
    assert backend.calls < 5 + settings.smtp.pool_size, "no lane took a job after the failure"
    assert {r.status for r in rows if r.to_address not in sent} == {"sending"}


class SlowBackend(EmailBackend):
    """A relay that takes ``seconds`` to accept each message (a slow or rate-limited one)."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.sent: list[str] = []

    async def send(self, message: OutgoingMessage) -> None:
        await asyncio.sleep(self.seconds)
        self.sent.append(message.message_id)


def _plan_many(engine, settings, now, count: int) -> None:  # type: ignore[no-untyped-def]
    add_paper(engine, title="Diffusion", abstract="About diffusion.", seen=now - timedelta(hours=1))
    bulk_subscribe(engine, prefix="lease", count=count, query="diffusion", now=now)
    assert (
        len(plan_digests(engine=engine, settings=settings, now=now, due_only=False).planned)
        == count
    )


def _slow_round(settings, engine, backend, *, then) -> None:  # type: ignore[no-untyped-def]
    """One delivery round on the real clock (one lane, one batch of everything), with
    ``then`` running beside it: what another worker does meanwhile."""
    loop = delivery.DeliveryLoop(
        runtime=runtime_for(settings, engine), backend=backend,
        now=lambda: datetime.now(UTC), batch_size=10, concurrency=1,
    )  # fmt: skip

    async def main() -> None:
        async with backend:
            await asyncio.gather(loop.drain(), then())

    asyncio.run(main())


def test_a_batch_outlasting_its_lease_is_renewed_not_taken_over(
    engine, tmp_path, database_url, now
) -> None:  # type: ignore[no-untyped-def]
    """Five messages at 0.6 s each under a 2 s lease (renewed every 0.67 s): another
    worker claiming after the first lease ran out finds nothing, and each message goes
    out once. (A stall of over a second would be needed to lose a renewal.)"""
    settings = make_settings(tmp_path, database_url, NEWSLETTER_LEASE_SECONDS="2")
    _plan_many(engine, settings, datetime.now(UTC), 5)  # sent on the real clock
    backend, taken = SlowBackend(0.6), []

    async def other_worker() -> None:
        await asyncio.sleep(2.5)
        taken.extend(claim(engine=engine, now=datetime.now(UTC), limit=10))

    _slow_round(settings, engine, backend, then=other_worker)
    assert taken == []
    assert len(backend.sent) == len(set(backend.sent)) == 5
    with db.session_scope(engine=engine) as session:
        assert {r.status for r in session.exec(select(Delivery))} == {"sent"}


def test_rows_another_worker_took_are_neither_sent_nor_recorded_from_here(
    engine, tmp_path, database_url, now
) -> None:  # type: ignore[no-untyped-def]
    """Every lease runs out and another worker claims the rows while the first message
    is in flight: the renewal finds them gone and the other two are not sent from here
    (the one the relay took is sent, whoever holds it)."""
    settings = make_settings(tmp_path, database_url, NEWSLETTER_LEASE_SECONDS="2")
    _plan_many(engine, settings, datetime.now(UTC), 3)  # sent on the real clock
    backend = SlowBackend(1.0)  # the renewal (at 0.67 s) comes before the second send
    theirs = datetime.now(UTC) + timedelta(hours=1)

    async def other_worker() -> None:
        await asyncio.sleep(0.1)
        with db.session_scope(engine=engine) as session:
            session.execute(sa.update(Delivery).values(lease_until=theirs))

    _slow_round(settings, engine, backend, then=other_worker)
    assert len(backend.sent) == 1  # the one already in flight when they were taken
    with db.session_scope(engine=engine) as session:
        rows = list(session.exec(select(Delivery)))
    assert sorted((r.status, r.lease_until) for r in rows) == [
        ("sending", theirs),
        ("sending", theirs),
        ("sent", None),
    ]


def test_a_refused_outcome_write_is_kept_and_nothing_is_sent_twice(
    engine, settings, now, monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    """The ledger refuses the first write of outcomes (locked, connection lost): the
    round stops, what was sent is still recorded as sent, and nothing goes out twice."""
    _plan_many(engine, settings, now, 3)
    real, calls = delivery.record_sent, []

    def refused_once(**kwargs) -> None:  # type: ignore[no-untyped-def]
        calls.append(1)
        if len(calls) == 1:
            raise sa.exc.OperationalError("UPDATE deliveries", {}, Exception("database is locked"))
        real(**kwargs)

    monkeypatch.setattr(delivery, "record_sent", refused_once)
    backend = ScriptedBackend()
    with pytest.raises(sa.exc.OperationalError):
        deliver(engine, settings, backend, now)
    deliver(engine, settings, backend, now + LEASE + timedelta(seconds=1))
    assert len(backend.sent) == len({m.message_id for m in backend.sent}) == 3
    with db.session_scope(engine=engine) as session:
        assert {r.status for r in session.exec(select(Delivery))} == {"sent"}


def test_a_group_recorded_in_part_is_tried_again_for_the_rest_only(
    engine, settings, now, monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    """The sent digests of a group are written, then the ledger refuses a failure's write
    (locked): the group is tried again from there, so a sent digest counts one attempt,
    not one for each time its group was written (it counted two), and the failure is
    written on the second try."""
    _plan_many(engine, settings, now, 3)
    real, calls = delivery.record_failure, []

    def refused_once(**kwargs):  # type: ignore[no-untyped-def]
        calls.append(1)
        if len(calls) == 1:
            raise sa.exc.OperationalError("UPDATE deliveries", {}, Exception("database is locked"))
        return real(**kwargs)

    monkeypatch.setattr(delivery, "record_failure", refused_once)
    backend = ScriptedBackend([TransientDeliveryError("421 try later")])
    with pytest.raises(sa.exc.OperationalError):  # the round stops, as for any refused write
        deliver(engine, settings, backend, now)
    assert len(backend.sent) == 2 and len(calls) == 2  # written on the second try
    with db.session_scope(engine=engine) as session:
        rows = sorted((r.status, r.attempts) for r in session.exec(select(Delivery)))
    assert rows == [("pending", 1), ("sent", 1), ("sent", 1)]  # the failure waits to retry


def test_an_outcome_another_worker_recorded_stands(engine, settings, now, planned) -> None:  # type: ignore[no-untyped-def]
    """A late failure from a worker whose lease ran out does not turn a digest another
    worker sent back into one to retry."""
    from newsletter.ledger import OutcomeStatus, record_failure

    with db.session_scope(engine=engine) as session:
        session.exec(select(Delivery)).one().status = "sent"
    status = record_failure(
        engine=engine, delivery_id=_row(engine).id, held=now + LEASE, now=now,
        error=TransientDeliveryError("451 later"), policy=settings.retry,
    )  # fmt: skip
    assert status == OutcomeStatus.SENT
    row = _row(engine)
    assert (row.status, row.attempts, row.last_error) == ("sent", 0, None)
    # Still sending, but under another worker's lease: theirs to record.
    with db.session_scope(engine=engine) as session:
        taken = session.exec(select(Delivery)).one()
        taken.status, taken.lease_until = "sending", now + 2 * LEASE
    status = record_failure(
        engine=engine, delivery_id=row.id, held=now + LEASE, now=now,  # type: ignore[arg-type]
        error=TransientDeliveryError("451 later"), policy=settings.retry,
    )  # fmt: skip
    assert status == OutcomeStatus.RETRYING
    assert (_row(engine).status, _row(engine).attempts) == ("sending", 0)


def test_a_paper_with_unreadable_authors_still_goes_out(engine, settings, now, planned) -> None:  # type: ignore[no-untyped-def]
    """A stored list that is not one (written by hand, an older release) reads as empty:
    the digest goes out without the names instead of stopping the batch."""
    from newsletter.models import Paper

    with db.session_scope(engine=engine) as session:
        session.exec(select(Paper)).one().author_names = "{"
    backend = ScriptedBackend()
    assert deliver(engine, settings, backend, now).count("sent") == 1
    assert b"Diffusion" in backend.sent[0].data


@pytest.mark.parametrize("items", ["[" * 100_000, "[1, 2]", '{"id": 1}'])
def test_an_unreadable_snapshot_fails_its_digest_alone(engine, settings, now, items) -> None:  # type: ignore[no-untyped-def]
    from newsletter.models import Snapshot

    add_paper(engine, title="Diffusion", abstract="About diffusion.", seen=now - timedelta(hours=1))
    subscribe(engine, email="ada@example.org", topics=["diffusion"], now=now)
    subscribe(engine, email="bob@example.org", topics=["diffusion"], now=now)
    plan_digests(engine=engine, settings=settings, now=now, due_only=False)
    with db.session_scope(engine=engine) as session:
        ada = session.exec(select(Subscriber).where(Subscriber.email == "ada@example.org")).one()
        row = session.exec(select(Delivery).where(Delivery.subscriber_id == ada.id)).one()
        bad = Snapshot(id="f" * 32, items=items, created_at=now)
        session.add(bad)
        session.flush()
        row.snapshot_id = bad.id
    backend = ScriptedBackend()
    report = deliver(engine, settings, backend, now)
    assert report.count("sent") == 1 and report.count("failed") == 1
    (failed,) = [o for o in report.outcomes if o.status == "failed"]
    assert failed.email == "ada@example.org" and "snapshots.items" in (failed.error or "")


def test_a_relay_down_past_the_deadline_fails_the_digest_not_the_reader(
    engine, tmp_path, database_url, now, planned
) -> None:  # type: ignore[no-untyped-def]
    """Connection refused, login rejected: the relay's fault. Past the deadline the
    digest fails, but counts as no soft bounce: a long outage must not suppress a list."""
    settings = make_settings(tmp_path, database_url, NEWSLETTER_SOFT_BOUNCE_LIMIT="1")
    down = [TransientDeliveryError("cannot connect to the relay: refused") for _ in range(2)]
    backend = ScriptedBackend(down)
    assert deliver(engine, settings, backend, now).count("retrying") == 1
    late = now + timedelta(hours=settings.retry.deadline_hours + 1)
    assert deliver(engine, settings, backend, late).count("failed") == 1
    with db.session_scope(engine=engine) as session:
        sub = session.get(Subscriber, planned)
        kinds = [e.kind for e in session.exec(select(Event).where(Event.subscriber_id == planned))]
    assert (sub.status, sub.soft_bounces) == ("active", 0)  # type: ignore[union-attr]
    assert "delivery.failed" in kinds and "bounce.soft" not in kinds
    assert _row(engine).status == "failed"


def test_the_daily_report_counts_what_failed_that_day_and_quotes_paths_on_one_line(
    engine, settings, now
) -> None:  # type: ignore[no-untyped-def]
    """Retries run 48 hours by default: a digest planned the day before fails within
    the report's day and is counted there. A failed file's path is quoted on its line
    (a path holding a line break would forge report lines)."""
    from newsletter.report import daily_figures, report_text

    add_paper(engine, title="Diffusion", abstract="About diffusion.", seen=now - timedelta(hours=1))
    subscribe(engine, email="late@example.org", topics=["diffusion"], now=now)
    plan_digests(engine=engine, settings=settings, now=now, due_only=False)
    later = now + timedelta(hours=49)
    assert deliver(engine, settings, MemoryBackend(), later).count("failed") == 1  # past due
    with db.session_scope(engine=engine) as session:
        forged = json.dumps({"path": "x.json\nWARNING: papers ingested 999"})
        session.add(Event(at=later, kind="ingest.file_failed", detail=forged))
    text = report_text(daily_figures(engine=engine, now=later + timedelta(minutes=1)))
    assert "  failed               1" in text
    assert "\nWARNING: papers" not in text and "x.json\\nWARNING" in text


def test_a_digest_requeued_after_its_deadline_is_retried_for_a_deadline_of_its_own(
    engine, settings, now
) -> None:  # type: ignore[no-untyped-def]
    """The relay was down past the deadline; the operator fixed it and requeued the
    digest: a greylisting 451 on its first try is retried, not the end of it."""
    from newsletter.backends.memory import MemoryBackend as Kept

    add_paper(engine, title="Diffusion", abstract="About diffusion.", seen=now - timedelta(hours=1))
    subscribe(engine, email="grey@example.org", topics=["diffusion"], now=now)
    plan_digests(engine=engine, settings=settings, now=now, due_only=False)
    later = now + timedelta(hours=72)
    with db.session_scope(engine=engine) as session:  # failed when the relay was down
        session.execute(sa.update(Delivery).values(status="failed", attempts=5))
    assert retry_failed(engine=engine, now=later) == 1
    greylisted = ScriptedBackend([TransientDeliveryError("451 4.7.1 greylisted", code=451)])
    assert deliver(engine, settings, greylisted, later).count("retrying") == 1
    done = deliver(engine, settings, Kept(), later + timedelta(hours=2))
    assert done.count("sent") == 1

"""Delivery: claims with leases, retries on transient errors, no resend of what was accepted."""

from __future__ import annotations

import asyncio
import email
import email.policy
from datetime import timedelta
from pathlib import Path

import pytest
from sqlmodel import select

from newsletter import db, tokens
from newsletter.backends.base import EmailBackend, OutgoingMessage
from newsletter.backends.file import FileBackend
from newsletter.backends.memory import MemoryBackend
from newsletter.errors import PermanentDeliveryError, TransientDeliveryError
from newsletter.ledger import LEASE, claim
from newsletter.models import Delivery, Event, Subscriber, SubscriberStatus
from newsletter.plan import plan_digests
from tests.helpers import ScriptedBackend, add_paper, deliver, subscribe


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

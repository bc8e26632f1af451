"""Crash safety: SIGKILL a sending process at random moments, restart it, until done.

Afterwards no subscriber lacks their digest, and the only duplicates are
messages that were in flight at a kill (handed to the server, not yet recorded
as sent), each carrying the same Message-ID and the same bytes as its twin.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlmodel import select

from newsletter import db
from newsletter.deliver import RECORD_EVERY
from newsletter.models import Delivery, DeliveryStatus
from newsletter.plan import plan_digests
from tests.conftest import drop_pg_database, make_pg_database, make_settings
from tests.helpers import add_paper, bulk_subscribe
from tests.smtp_server import SMTPServer

LEASE_SECONDS = 1.0


def _prepare(tmp_path: Path, count: int, url: str) -> tuple[str, sa.Engine]:
    engine = db.make_engine(url)
    db.upgrade(engine=engine)
    now = datetime.now(UTC)
    for i in range(3):
        add_paper(
            engine,
            title=f"Diffusion {i}",
            abstract="About diffusion.",
            seen=now - timedelta(hours=1),
        )
    bulk_subscribe(engine, prefix="c", count=count, query="diffusion", now=now)
    planned = plan_digests(
        engine=engine, settings=make_settings(tmp_path, url), now=now, due_only=False
    )
    assert len(planned.planned) == count
    return url, engine


def _sender(tmp_path: Path, url: str, port: int, workers: str = "1") -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NEWSLETTER_")}
    env |= {
        "NEWSLETTER_HOME": str(tmp_path),
        "DATABASE_URL": url,
        "NEWSLETTER_SECRET_KEY": "c" * 40,
        "NEWSLETTER_DELIVERY": "smtp",
        "NEWSLETTER_SMTP_HOST": "127.0.0.1",
        "NEWSLETTER_SMTP_PORT": str(port),
        "NEWSLETTER_LEASE_SECONDS": str(LEASE_SECONDS),
        "NEWSLETTER_SEND_WORKERS": workers,
    }
    log = open(tmp_path / "send.log", "ab")  # noqa: SIM115 (the child writes to it)
    return subprocess.Popen(
        [sys.executable, "-m", "newsletter", "send"],
        cwd=tmp_path,
        env=env,
        stdout=log,
        stderr=log,
    )


def _left(engine: sa.Engine) -> tuple[int, int]:
    with db.session_scope(engine=engine) as session:
        rows = session.exec(
            select(Delivery.status, sa.func.count()).group_by(Delivery.status)  # type: ignore[call-overload]
        ).all()
    counts = dict(rows)
    return counts.get(DeliveryStatus.PENDING, 0), counts.get(DeliveryStatus.SENDING, 0)


def _kill_until_done(
    tmp_path: Path, count: int, kills: int, seed: int, url: str, workers: str = "1"
) -> None:
    rng = random.Random(seed)
    url, engine = _prepare(tmp_path, count, url)
    server = SMTPServer().start()
    in_flight_at_kills = 0
    try:
        for _ in range(kills):
            proc = _sender(tmp_path, url, server.port, workers)
            # Kill mid-send, at a random point of progress (not of time: sending speed
            # varies with the machine): after some more messages reached the server.
            target = len(server.handler.accepted) + rng.randint(1, count // (kills + 1))
            deadline = time.monotonic() + 120
            # (A sender with nothing left to do exits by itself: then there is nothing
            # to wait for. With the default one delivery process per core, and a dead
            # parent's children finishing their batch, that can happen early.)
            while (
                len(server.handler.accepted) < target
                and proc.poll() is None
                and time.monotonic() < deadline
            ):
                time.sleep(0.002)
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            in_flight_at_kills += _left(engine)[1]  # claimed, maybe handed over, not recorded
            time.sleep(LEASE_SECONDS + 0.2)  # the dead process's leases run out
        for _ in range(20):
            proc = _sender(tmp_path, url, server.port)
            assert proc.wait(timeout=600) == 0, (tmp_path / "send.log").read_text()[-2000:]
            if _left(engine) == (0, 0):
                break
            time.sleep(LEASE_SECONDS + 0.2)
        assert _left(engine) == (0, 0)

        copies = server.handler.copies()
        assert len(copies) == count and min(copies.values()) >= 1, "nobody lacks their digest"
        duplicates = sum(n - 1 for n in copies.values())
        assert duplicates <= in_flight_at_kills
        # Outcomes are recorded in groups as they come: a kill resends at most the group
        # in hand plus what was on the wire (one message per SMTP session).
        window = RECORD_EVERY + int(os.environ.get("NEWSLETTER_SMTP_POOL_SIZE", "4"))
        per_kill = duplicates / kills
        print(f"\n{engine.dialect.name}: {count} digests, {kills} kills, {duplicates} resent "
              f"({per_kill:.1f} per kill; bound {window})")  # fmt: skip
        assert duplicates <= kills * window
        by_rcpt: dict[str, set[tuple[str, bytes]]] = {}
        for a in server.handler.accepted:
            by_rcpt.setdefault(a.recipient, set()).add((a.message_id, a.data))
        assert all(len(v) == 1 for v in by_rcpt.values()), "a resend is the same message"
        with db.session_scope(engine=engine) as session:
            ledger = {d.to_address: d.message_id for d in session.exec(select(Delivery))}
        assert {r: next(iter(v))[0] for r, v in by_rcpt.items()} == ledger
        assert in_flight_at_kills > 0, "the kills should have caught sends in flight"
    finally:
        server.stop()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def crash_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A database file or a fresh PostgreSQL database (not yet migrated)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'data' / 'newsletter.db'}"
        return
    admin = request.getfixturevalue("pg_server")
    url = make_pg_database(admin)
    try:
        yield url
    finally:
        drop_pg_database(admin, url)


@pytest.mark.parametrize("workers", ["1", "auto"])
def test_sigkill_mid_send_loses_nothing_and_duplicates_only_in_flight(
    tmp_path: Path, crash_url: str, workers: str
) -> None:
    """One delivery process, and the default (one per core: killing the parent leaves
    its children to finish the batch in hand, recorded)."""
    _kill_until_done(tmp_path, count=400, kills=3, seed=5, url=crash_url, workers=workers)


@pytest.mark.slow
def test_sigkill_many_times_over_thousands_of_digests(tmp_path: Path, crash_url: str) -> None:
    _kill_until_done(tmp_path, count=3000, kills=6, seed=8, url=crash_url)

"""Many delivery workers on one PostgreSQL ledger: every digest accepted exactly once."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlmodel import select

from newsletter import db
from newsletter.models import Delivery
from newsletter.plan import plan_digests
from tests.conftest import drop_pg_database, make_pg_database, make_settings
from tests.helpers import add_paper, bulk_subscribe
from tests.smtp_server import Faults, SMTPServer

pytestmark = pytest.mark.postgres


def _fill(url: str, tmp_path: Path, count: int) -> None:
    engine = db.make_engine(url)
    db.upgrade(engine=engine)
    now = datetime.now(UTC)
    add_paper(
        engine,
        title="Diffusion for everyone",
        abstract="About diffusion.",
        seen=now - timedelta(hours=1),
    )
    bulk_subscribe(engine, prefix="w", count=count, query="diffusion", now=now)
    settings = make_settings(tmp_path, url)
    assert (
        len(plan_digests(engine=engine, settings=settings, now=now, due_only=False).planned)
        == count
    )


def _workers(url: str, tmp_path: Path, port: int, n: int) -> list[subprocess.Popen[str]]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NEWSLETTER_")}
    env |= {
        "NEWSLETTER_HOME": str(tmp_path),
        "DATABASE_URL": url,
        "NEWSLETTER_SECRET_KEY": "s" * 40,
        "NEWSLETTER_DELIVERY": "smtp",
        "NEWSLETTER_SMTP_HOST": "127.0.0.1",
        "NEWSLETTER_SMTP_PORT": str(port),
        "NEWSLETTER_RETRY_BASE_SECONDS": "0.2",
        "NEWSLETTER_RETRY_MAX_SECONDS": "0.5",
    }
    return [
        subprocess.Popen(
            [sys.executable, "-m", "newsletter", "worker", "--poll", "0.2"],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        for _ in range(n)
    ]


def _run(pg_server: str, tmp_path: Path, count: int, timeout: float) -> None:
    url = make_pg_database(pg_server)
    server = SMTPServer(Faults(transient_rate=0.05, seed=11)).start()
    procs: list[subprocess.Popen[str]] = []
    try:
        _fill(url, tmp_path, count)
        procs = _workers(url, tmp_path, server.port, 4)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and sum(server.handler.copies().values()) < count:
            if any(p.poll() is not None for p in procs):
                raise AssertionError("a worker died")
            time.sleep(0.5)
        for p in procs:
            p.send_signal(signal.SIGTERM)
        outputs = [p.communicate(timeout=60)[0] for p in procs]
        assert [p.returncode for p in procs] == [0, 0, 0, 0]
        copies = server.handler.copies()
        assert len(copies) == count and set(copies.values()) == {1}, (
            "each digest accepted exactly once"
        )
        attempts = [int(o.split("after ")[1].split()[0]) for o in outputs]
        assert sum(1 for a in attempts if a > 0) >= 2, f"the work was shared: {attempts}"
        with db.session_scope(engine=db.make_engine(url)) as session:
            assert {d.status for d in session.exec(select(Delivery))} == {"sent"}
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
        server.stop()
        drop_pg_database(pg_server, url)


def test_four_workers_share_the_queue_and_send_each_digest_once(
    pg_server: str, tmp_path: Path
) -> None:
    _run(pg_server, tmp_path, count=400, timeout=120)


@pytest.mark.slow
def test_four_workers_over_ten_thousand_deliveries(pg_server: str, tmp_path: Path) -> None:
    _run(pg_server, tmp_path, count=10_000, timeout=900)

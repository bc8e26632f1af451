"""`newsletter send --workers N`: delivery processes beside planning, one ledger.

Run as the real command against a real SMTP server that refuses some tries:
every digest ends accepted exactly once, whatever the backend database.
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from newsletter import db
from newsletter.config import load_settings
from newsletter.parallel import worker_settings
from tests.conftest import drop_pg_database, make_pg_database
from tests.helpers import add_paper, bulk_subscribe
from tests.smtp_server import Faults, SMTPServer
from tests.test_cli import run

COUNT = 1500  # more than one planning batch, so delivery starts while planning goes on


def _send_until_done(home: Path, url: str, port: int) -> list[str]:
    env = {
        "DATABASE_URL": url,
        "NEWSLETTER_SECRET_KEY": "p" * 40,
        "NEWSLETTER_DELIVERY": "smtp",
        "NEWSLETTER_SMTP_HOST": "127.0.0.1",
        "NEWSLETTER_SMTP_PORT": str(port),
        "NEWSLETTER_SMTP_TIMEOUT": "5",
        "NEWSLETTER_RETRY_BASE_SECONDS": "0.2",
        "NEWSLETTER_RETRY_MAX_SECONDS": "0.4",
    }
    summaries = []
    for _ in range(30):
        proc = run(home, "send", "--now", "--workers", "2", env=env)
        summaries.append(proc.stdout.strip().splitlines()[-1])
        stats = json.loads(run(home, "stats", "--json", env=env).stdout)
        if stats["pending"] + stats["retrying"] + stats["sending"] == 0:
            return summaries
        time.sleep(0.5)  # the retries' backoff
    raise AssertionError(f"digests left after every run: {stats}")


def _check(home: Path, url: str) -> None:
    engine = db.make_engine(url)
    db.upgrade(engine=engine)
    now = datetime.now(UTC)
    add_paper(
        engine, title="Diffusion now", abstract="About diffusion.", seen=now - timedelta(hours=1)
    )
    bulk_subscribe(engine, prefix="m", count=COUNT, query="diffusion", now=now)
    server = SMTPServer(Faults(transient_rate=0.05, seed=21)).start()
    try:
        summaries = _send_until_done(home, url, server.port)
        assert summaries[0].startswith("delivered: ") and "sent" in summaries[0]
        copies = server.handler.copies()
        assert len(copies) == COUNT and set(copies.values()) == {1}, "each accepted exactly once"
        assert server.handler.injected["421"] + server.handler.injected["451"] > 0
        stats = json.loads(run(home, "stats", "--json", env={"DATABASE_URL": url}).stdout)
        assert stats["sent"] == COUNT
    finally:
        server.stop()


def test_send_with_two_delivery_processes_on_sqlite(tmp_path: Path) -> None:
    _check(tmp_path, f"sqlite:///{tmp_path / 'data' / 'newsletter.db'}")


@pytest.mark.postgres
def test_send_with_two_delivery_processes_on_postgresql(tmp_path: Path, pg_server: str) -> None:
    url = make_pg_database(pg_server)
    try:
        _check(tmp_path, url)
    finally:
        drop_pg_database(pg_server, url)


def test_the_global_rate_is_split_between_processes_unless_shared(tmp_path: Path) -> None:
    settings = load_settings(
        environ={"NEWSLETTER_HOME": str(tmp_path), "NEWSLETTER_SMTP_RATE": "90"},
        dotenv_path=tmp_path / "none",
    )
    split = worker_settings(settings=settings, workers=3, postgresql=False)
    assert split.smtp.rate == 30 and split.smtp.pool_size == settings.smtp.pool_size
    assert worker_settings(settings=settings, workers=3, postgresql=True).smtp.rate == 90

"""The service: digests at each subscriber's local hour across DST, catch-up after
downtime, one leader per database, the daily report, and `newsletter run` as a real
process that picks up a new corpus file and stops cleanly on SIGTERM."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy as sa
from sqlmodel import select

from newsletter import db
from newsletter.config import Settings
from newsletter.models import Delivery, Subscriber
from newsletter.service import Jobs, Leadership
from newsletter.snapshot import decode
from tests.conftest import CORPUS, drop_pg_database, make_pg_database, make_settings
from tests.helpers import add_paper, items_of, subscribe
from tests.smtp_server import free_port

ZONES = ("Asia/Tokyo", "Europe/Paris", "America/Los_Angeles")


class Clock:
    def __init__(self, start: datetime) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now


def _setup(tmp_path: Path, **env: str) -> tuple[sa.Engine, Settings]:
    url = f"sqlite:///{tmp_path / 'service.db'}"
    engine = db.make_engine(url)
    db.upgrade(engine=engine)
    return engine, make_settings(tmp_path, url, **env)


def _jobs(engine: sa.Engine, settings: Settings, now: Callable[[], datetime] | None = None) -> Jobs:
    lead = Leadership(engine=engine, settings=settings)
    return Jobs(
        engine=engine, settings=settings, leadership=lead, now=now or (lambda: datetime.now(UTC))
    )


def _digests(engine: sa.Engine) -> list[tuple[str, datetime, int]]:
    """(address, planned at, papers matched: shown and counted beyond the cap)."""
    with db.session_scope(engine=engine) as session:
        return [
            (d.to_address, d.created_at, len(decode(items_of(engine, d))) + d.more_count)
            for d in session.exec(select(Delivery).order_by(Delivery.id))
        ]


def test_each_zone_gets_one_digest_a_day_at_its_8_oclock_across_dst(tmp_path: Path) -> None:
    """Two weeks in 15-minute steps of a simulated clock, over both DST ends (Europe
    on 25 October 2026, the US on 1 November): one digest per local day each, planned
    in the quarter hour after 08:00 local; the weekly subscriber gets one a week."""
    engine, settings = _setup(tmp_path)
    start = datetime(2026, 10, 19, 0, 0, tzinfo=UTC)
    # "*": every new paper, so what is tested is when digests go out, not what they hold.
    for zone in ZONES:
        subscribe(engine, email=f"{zone.split('/')[1].lower()}@example.org", topics=["*"],
                  now=start, tz=zone)  # fmt: skip
    subscribe(engine, email="weekly@example.org", topics=["*"], now=start, tz="Europe/Paris")
    with db.session_scope(engine=engine) as session:
        row = session.exec(select(Subscriber).where(Subscriber.email == "weekly@example.org")).one()
        row.cadence, row.weekday = "weekly", 2  # Wednesdays
        session.add(row)
    clock = Clock(start)
    jobs = Jobs(
        engine=engine,
        settings=settings,
        leadership=Leadership(engine=engine, settings=settings),
        now=clock,
    )
    end = start + timedelta(days=14)
    while clock.now < end:
        if clock.now.minute == 0:  # a new paper every hour, so every digest has news
            add_paper(engine, title=f"Diffusion at {clock.now:%m%d%H}", abstract="About diffusion.",
                      seen=clock.now)  # fmt: skip
        jobs.plan()
        clock.now += timedelta(minutes=15)

    digests = _digests(engine)
    for zone in ZONES:
        address = f"{zone.split('/')[1].lower()}@example.org"
        local = [at.astimezone(ZoneInfo(zone)) for a, at, _ in digests if a == address]
        days = Counter(t.date() for t in local)
        assert set(days.values()) == {1}, f"{zone}: exactly one per local day"
        assert len(days) in (14, 15), zone  # the window's days in that zone
        # The clock starts past 08:00 somewhere: that first digest comes at once (catch-up).
        late = [t for t in local if not (t.hour == 8 and t.minute < 15) and t != start]
        assert not late, f"{zone}: at 08:00 local, not {late[:3]}"
    weekly = [
        at.astimezone(ZoneInfo("Europe/Paris")) for a, at, _ in digests if a == "weekly@example.org"
    ]
    assert [t.strftime("%a %H") for t in weekly] == ["Wed 08", "Wed 08"]
    assert all(n > 0 for _, _, n in digests)
    # The weekly one covers the whole week since the last: about 7 x 24 hourly papers.
    assert [n for a, _, n in digests if a == "weekly@example.org"][1] >= 7 * 24 - 1


def test_catch_up_after_downtime_plans_each_missed_edition_once(tmp_path: Path) -> None:
    engine, settings = _setup(tmp_path)
    day = datetime(2026, 11, 23, tzinfo=UTC)
    subscribe(engine, email="paris@example.org", topics=["diffusion"], now=day - timedelta(days=10),
              tz="Europe/Paris")  # fmt: skip  # 08:00 Paris is 07:00 UTC in November
    clock = Clock(day)
    jobs = Jobs(
        engine=engine,
        settings=settings,
        leadership=Leadership(engine=engine, settings=settings),
        now=clock,
    )
    add_paper(
        engine, title="Diffusion early", abstract="About diffusion.", seen=day - timedelta(hours=5)
    )
    # Down from 06:00 to 10:00 UTC (the send time, 07:00 UTC, passed while down).
    clock.now = day.replace(hour=10)
    jobs.plan()
    jobs.plan()  # and the next run finds nothing more to do
    assert [(a, at.hour) for a, at, _ in _digests(engine)] == [("paris@example.org", 10)]
    # Down for three days: one digest when back, covering every paper it missed.
    for offset in (1, 2, 3):
        add_paper(engine, title=f"Diffusion missed {offset}", abstract="About diffusion.",
                  seen=day + timedelta(days=offset, hours=2))  # fmt: skip
    clock.now = day + timedelta(days=3, hours=12)
    jobs.plan()
    jobs.plan()
    digests = _digests(engine)
    assert len(digests) == 2 and digests[1][2] == 3, "one catch-up digest with the 3 papers"


@pytest.mark.postgres
def test_only_one_scheduler_leads_and_another_takes_over(tmp_path: Path, pg_server: str) -> None:
    url = make_pg_database(pg_server)
    try:
        engine = db.make_engine(url)
        db.upgrade(engine=engine)
        settings = make_settings(tmp_path, url)
        first, second = (Leadership(engine=engine, settings=settings) for _ in range(2))
        assert first.held() and not second.held()
        assert first.held() and not second.held()  # holding it is stable
        # ... and costs no open transaction, which a server's
        # idle_in_transaction_session_timeout would end, and the lock with it.
        with engine.connect() as conn:
            stuck = conn.execute(sa.text(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                " AND state = 'idle in transaction'"
            )).scalar()  # fmt: skip
        assert stuck == 0
        now = datetime.now(UTC)
        subscribe(
            engine, email="a@example.org", topics=[], now=now - timedelta(days=1), send_at="00:00"
        )
        add_paper(engine, title="Anything", abstract="x", seen=now - timedelta(hours=1))
        jobs = [Jobs(engine=engine, settings=settings, leadership=lead) for lead in (first, second)]
        for _ in range(3):
            for j in jobs:
                j.plan()
        assert len(_digests(engine)) == 1
        first.release()  # the leader is gone (its connection closed)
        assert second.held()
    finally:
        drop_pg_database(pg_server, url)


def test_daily_report_counts_the_day_and_warns_when_nothing_arrived(tmp_path: Path) -> None:
    engine, settings = _setup(tmp_path, NEWSLETTER_OPERATOR_EMAIL="ops@example.org")
    now = datetime.now(UTC)
    jobs = Jobs(
        engine=engine, settings=settings, leadership=Leadership(engine=engine, settings=settings)
    )
    jobs.report()
    add_paper(engine, title="Diffusion", abstract="x", seen=now - timedelta(hours=2))
    subscribe(engine, email="a@example.org", topics=["diffusion"], now=now - timedelta(days=1),
              send_at="00:00")  # fmt: skip
    jobs.plan()
    jobs.report()
    reports = sorted(settings.outbox_dir.rglob("*.eml"), key=lambda p: p.stat().st_mtime)
    assert len(reports) == 2
    quiet, busy = (p.read_text() for p in reports)
    assert "WARNING: no new paper arrived" in quiet and "(no new papers!)" in quiet
    assert "WARNING" not in busy
    assert "papers ingested      1" in busy and "digests planned      1" in busy


def test_run_picks_up_a_new_file_writes_digests_and_stops_on_sigterm(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    url = f"sqlite:///{tmp_path / 'data' / 'newsletter.db'}"
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("NEWSLETTER_") and k != "DATABASE_URL"
    }
    secret = "s3cr3t" * 8
    port = free_port()
    env |= {
        "NEWSLETTER_HOME": str(tmp_path),
        "NEWSLETTER_CORPUS_DIR": str(corpus),
        "NEWSLETTER_SECRET_KEY": secret,
        "NEWSLETTER_WEB_PORT": str(port),
        "NEWSLETTER_INGEST_MINUTES": "0.01",
        "NEWSLETTER_PLAN_MINUTES": "0.01",
        "NEWSLETTER_LOG_FORMAT": "json",
    }

    def cli(*args: str) -> None:
        command = [sys.executable, "-m", "newsletter", *args]
        subprocess.run(command, env=env, cwd=tmp_path, check=True, capture_output=True)

    cli("db", "upgrade")
    cli("subscribers", "add", "ada@example.org", "--topic", "diffusion", "--send-at", "00:00")
    proc = subprocess.Popen([sys.executable, "-m", "newsletter", "run"], env=env, cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        time.sleep(2)
        assert not list((tmp_path / "outbox").rglob("*.eml")), "nothing to send before a file"
        shutil.copy(sorted(CORPUS.glob("*.txt"))[1], corpus / "today.txt")  # a new dump arrives
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not list((tmp_path / "outbox").rglob("*.eml")):
            time.sleep(0.2)
        assert list((tmp_path / "outbox").rglob("*.eml")), "the digest was written"
        proc.send_signal(signal.SIGTERM)
        _, errors = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, errors
    lines = [json.loads(line) for line in errors.splitlines() if line.startswith("{")]
    events = [line["event"] for line in lines]
    assert "corpus file ingested" in events and "digest planned" in events
    assert "delivery sent" in events and events[-1] == "service stopped"
    for event in ("delivery sent", "digest planned"):  # ids, never addresses, in the logs
        (line,) = [line for line in lines if line["event"] == event]
        assert {"delivery_id", "subscriber_id"} <= set(line) and "ada@" not in json.dumps(line)
    assert secret not in errors
    engine = db.make_engine(url)
    with db.session_scope(engine=engine) as session:
        states = Counter(d.status for d in session.exec(select(Delivery)))
    assert states == {"sent": 1}, "nothing left claimed or pending"


@pytest.mark.parametrize("send_empty", ["no", "yes"])
def test_empty_days_send_nothing_unless_asked(tmp_path: Path, send_empty: str) -> None:
    engine, settings = _setup(tmp_path, NEWSLETTER_SEND_EMPTY=send_empty)
    now = datetime(2026, 11, 23, 12, tzinfo=UTC)
    subscribe(engine, email="q@example.org", topics=["quantum"], now=now - timedelta(days=1))
    add_paper(
        engine, title="Diffusion only", abstract="Nothing else.", seen=now - timedelta(hours=1)
    )
    jobs = _jobs(engine, settings, lambda: now)
    jobs.plan()
    digests = _digests(engine)
    if send_empty == "no":
        assert digests == []
        return
    assert [(a, n) for a, _, n in digests] == [("q@example.org", 0)]
    from newsletter.backends.memory import MemoryBackend
    from tests.helpers import deliver

    backend = MemoryBackend()
    deliver(engine, settings, backend, now)
    (message,) = backend.sent
    assert b"No new papers matched your topics" in message.data


@pytest.mark.postgres
def test_a_second_scheduler_process_waits_then_takes_over(tmp_path: Path, pg_server: str) -> None:
    """Two `newsletter scheduler` processes on one PostgreSQL database: one leads; when
    it is killed (no chance to clean up), the other takes the lock and plans."""
    url = make_pg_database(pg_server)
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("NEWSLETTER_") and k != "DATABASE_URL"
    }
    env |= {
        "NEWSLETTER_HOME": str(tmp_path),
        "DATABASE_URL": url,
        "NEWSLETTER_SECRET_KEY": "k" * 40,
        "NEWSLETTER_CORPUS_DIR": str(tmp_path / "corpus"),
        "NEWSLETTER_INGEST_MINUTES": "0.01",
        "NEWSLETTER_PLAN_MINUTES": "0.01",
        "NEWSLETTER_LOG_FORMAT": "json",
    }
    (tmp_path / "corpus").mkdir()
    procs: list[subprocess.Popen[str]] = []

    def start(name: str) -> subprocess.Popen[str]:
        log = open(tmp_path / f"{name}.log", "w")  # noqa: SIM115 (the child writes to it)
        proc = subprocess.Popen([sys.executable, "-m", "newsletter", "scheduler"], env=env,
                                cwd=tmp_path, stdout=log, stderr=log, text=True)  # fmt: skip
        procs.append(proc)
        return proc

    def leads(name: str) -> bool:
        path = tmp_path / f"{name}.log"
        return path.exists() and '"leading: this process plans and ingests"' in path.read_text()

    def wait_for(condition: Callable[[], bool], seconds: float = 30) -> bool:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if condition():
                return True
            time.sleep(0.1)
        return False

    try:
        first = start("first")
        assert wait_for(lambda: leads("first")), (tmp_path / "first.log").read_text()
        start("second")
        time.sleep(3)  # many planning rounds: the second never leads while the first lives
        assert not leads("second")
        first.kill()  # SIGKILL: its session, and with it the advisory lock, just disappears
        first.wait()
        assert wait_for(lambda: leads("second")), (tmp_path / "second.log").read_text()
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                proc.wait(timeout=30)
        drop_pg_database(pg_server, url)


def test_planning_while_an_ingest_stores_leaves_its_files_to_the_next_digest(
    tmp_path: Path,
) -> None:
    """The scheduler runs ingest and planning in threads, at once (at start-up planning
    follows ingest by a second). An ingest stamps every paper with its start and
    commits a file at a time: a planning run between two files must not count the
    files still to come as covered, or their papers are never sent."""
    from newsletter.corpus.ingest import ingest_file

    engine, settings = _setup(tmp_path)
    start = datetime(2026, 11, 23, 9, 0, tzinfo=UTC)
    clock = Clock(start)
    jobs = _jobs(engine, settings, clock)
    subscribe(engine, email="all@example.org", topics=["*"], now=start - timedelta(days=1))
    add_paper(engine, title="Seen before", abstract="A.", seen=start - timedelta(hours=1))
    first, second = sorted(CORPUS.glob("*.txt"))[:2]
    with jobs.storing() as stamp:  # what jobs.ingest holds while it stores
        new = ingest_file(engine=engine, path=first, now=stamp).new_papers
        clock.now += timedelta(seconds=1)
        jobs.plan()  # planning, meanwhile
        new += ingest_file(engine=engine, path=second, now=stamp).new_papers
    assert jobs.planning_window() == (clock(), clock())  # nothing storing: all settled
    clock.now = start + timedelta(days=1)
    jobs.plan()
    # The first digest held what was settled; the next, both files, every paper once.
    assert [n for _, _, n in _digests(engine)] == [1, new]


def test_two_homes_on_one_sqlite_database_have_one_leader(tmp_path: Path) -> None:
    """The lock is beside the database, not in each home's data folder: two services
    with other NEWSLETTER_HOMEs and one DATABASE_URL would otherwise both plan, and
    both send the operator's report."""
    url = f"sqlite:///{tmp_path / 'shared' / 'news.db'}"
    engine = db.make_engine(url)
    db.upgrade(engine=engine)
    leaders = []
    for home in ("a", "b"):
        (tmp_path / home).mkdir()
        settings = make_settings(tmp_path / home, url)
        leaders.append(Leadership(engine=engine, settings=settings))
    assert leaders[0].held() and not leaders[1].held()
    leaders[0].release()
    assert leaders[1].held()
    leaders[1].release()


def test_the_daily_report_is_sent_once_a_day_and_made_up_after_downtime(
    tmp_path: Path,
) -> None:
    """Checked every ten minutes from NEWSLETTER_REPORT_AT on: sent at the first check
    after that hour, once; a service that was down at that hour sends it when back."""
    engine, settings = _setup(
        tmp_path, NEWSLETTER_OPERATOR_EMAIL="ops@example.org", NEWSLETTER_REPORT_AT="07:00"
    )
    clock = Clock(datetime(2026, 11, 23, 6, 50, tzinfo=UTC))
    jobs = _jobs(engine, settings, clock)

    def reports() -> int:
        return len(list(settings.outbox_dir.rglob("*.eml")))

    for minutes in range(0, 60, 10):  # 06:50 to 07:40
        clock.now = datetime(2026, 11, 23, 6, 50, tzinfo=UTC) + timedelta(minutes=minutes)
        jobs.report_if_due()
        assert reports() == (0 if clock.now.hour < 7 else 1), clock.now
    clock.now = datetime(2026, 11, 24, 11, 30, tzinfo=UTC)  # down from 06:00 to 11:30
    jobs.report_if_due()
    jobs.report_if_due()
    assert reports() == 2

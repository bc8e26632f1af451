"""Planning and the sent-ledger: one digest per subscriber and edition, nothing sent twice."""

from __future__ import annotations

import os
import threading
from datetime import UTC, date, datetime, timedelta

import sqlalchemy as sa
from sqlmodel import select

from newsletter import db, snapshot
from newsletter.backends.memory import MemoryBackend
from newsletter.config import Settings
from newsletter.ledger.claims import LEDGER_COLUMNS
from newsletter.ledger.jobs import JobLoader
from newsletter.ledger.planned import PlannedRow, insert_planned
from newsletter.models import Delivery, Paper, Snapshot
from newsletter.plan import plan_digests
from newsletter.subscribers import add_subscriber, remove_subscriber, validate_subscriber
from tests.conftest import make_settings
from tests.helpers import add_paper, deliver, items_of, links_for, subscribe


def _plan(engine: sa.Engine, settings: Settings, now: datetime, **kw):  # type: ignore[no-untyped-def]
    return plan_digests(engine=engine, settings=settings, now=now, due_only=False, **kw)


def _deliveries(engine: sa.Engine) -> list[Delivery]:
    with db.session_scope(engine=engine) as session:
        return list(session.exec(select(Delivery).order_by(Delivery.id)))


def test_second_send_the_same_day_plans_and_sends_nothing(engine, settings, now) -> None:  # type: ignore[no-untyped-def]
    add_paper(engine, title="Diffusion for all", abstract="A.", seen=now - timedelta(hours=2))
    subscribe(engine, email="a@example.org", topics=["diffusion"], now=now)
    backend = MemoryBackend()
    first = _plan(engine, settings, now)
    assert [p.email for p in first.planned] == ["a@example.org"]
    assert deliver(engine, settings, backend, now).count("sent") == 1

    later = now + timedelta(hours=3)
    add_paper(engine, title="More diffusion", abstract="B.", seen=later - timedelta(minutes=5))
    second = _plan(engine, settings, later)
    assert second.planned == [] and second.already_planned == ["a@example.org"]
    assert deliver(engine, settings, backend, later).outcomes == []
    assert len(backend.sent) == 1 and len(_deliveries(engine)) == 1


def test_subscriber_with_nothing_matching_gets_no_email(engine, settings, now) -> None:  # type: ignore[no-untyped-def]
    add_paper(engine, title="Diffusion", abstract="A.", seen=now - timedelta(hours=1))
    subscribe(engine, email="a@example.org", topics=['"protein folding"'], now=now)
    report = _plan(engine, settings, now)
    assert report.no_match == ["a@example.org"] and report.planned == []
    assert _deliveries(engine) == []


def test_next_digest_holds_only_papers_new_since_the_previous_one(engine, settings, now) -> None:  # type: ignore[no-untyped-def]
    old = add_paper(engine, title="Diffusion one", abstract="A.", seen=now - timedelta(hours=1))
    subscribe(engine, email="a@example.org", topics=["diffusion"], now=now)
    _plan(engine, settings, now)
    tomorrow = now + timedelta(days=1)
    new = add_paper(
        engine, title="Diffusion two", abstract="B.", seen=tomorrow - timedelta(hours=1)
    )
    report = _plan(engine, settings, tomorrow)
    assert [m.paper_id for m in report.planned[0].ranked.matches] == [new]
    items = [i.paper_id for d in _deliveries(engine) for i in snapshot.decode(items_of(engine, d))]
    assert sorted(items) == sorted([old, new])


def test_first_digest_looks_back_the_configured_days(engine, tmp_path, database_url, now) -> None:  # type: ignore[no-untyped-def]
    settings = make_settings(tmp_path, database_url, NEWSLETTER_FIRST_DIGEST_DAYS="2")
    add_paper(engine, title="Diffusion old", abstract="A.", seen=now - timedelta(days=3))
    recent = add_paper(
        engine, title="Diffusion recent", abstract="A.", seen=now - timedelta(days=1)
    )
    subscribe(engine, email="a@example.org", topics=["diffusion"], now=now)
    report = _plan(engine, settings, now)
    assert [m.paper_id for m in report.planned[0].ranked.matches] == [recent]


def test_dry_run_records_nothing(engine, settings, now) -> None:  # type: ignore[no-untyped-def]
    add_paper(engine, title="Diffusion", abstract="A.", seen=now - timedelta(hours=1))
    subscribe(engine, email="a@example.org", topics=["diffusion"], now=now)
    report = _plan(engine, settings, now, dry_run=True)
    assert report.planned[0].delivery_id is None
    assert _deliveries(engine) == []


def test_digest_is_capped_and_counts_the_rest(engine, tmp_path, database_url, now) -> None:  # type: ignore[no-untyped-def]
    settings = make_settings(tmp_path, database_url, NEWSLETTER_DIGEST_MAX_PAPERS="3")
    for i in range(5):
        add_paper(
            engine, title=f"Diffusion {i}", abstract="A.", seen=now - timedelta(minutes=i + 1)
        )
    subscribe(engine, email="a@example.org", topics=["diffusion"], now=now)
    _plan(engine, settings, now)
    (row,) = _deliveries(engine)
    assert (row.paper_count, row.more_count) == (3, 2)


def test_title_hits_rank_above_abstract_hits_and_upvotes_break_ties(engine, settings, now) -> None:  # type: ignore[no-untyped-def]
    seen = now - timedelta(hours=1)
    in_abstract = add_paper(
        engine, title="Something", abstract="About diffusion.", seen=seen, upvotes=99
    )
    in_title = add_paper(engine, title="Diffusion today", abstract="A.", seen=seen)
    in_title_popular = add_paper(
        engine, title="Diffusion again", abstract="A.", seen=seen, upvotes=10
    )
    subscribe(engine, email="a@example.org", topics=["diffusion"], now=now)
    ranked = _plan(engine, settings, now).planned[0].ranked
    # A passing mention in an abstract stays below the line: counted, not shown.
    assert [m.paper_id for m in ranked.matches] == [in_title_popular, in_title]
    assert [m.paper_id for m in ranked.near] == [in_abstract]


def test_only_subscribers_past_their_local_send_time_are_due(engine, settings, now) -> None:  # type: ignore[no-untyped-def]
    # now is 09:00 UTC: 18:00 in Tokyo, 01:00 in Los Angeles.
    add_paper(engine, title="Diffusion", abstract="A.", seen=now - timedelta(hours=1))
    subscribe(engine, email="tokyo@example.org", topics=["diffusion"], now=now, tz="Asia/Tokyo")
    subscribe(
        engine, email="la@example.org", topics=["diffusion"], now=now, tz="America/Los_Angeles"
    )
    report = plan_digests(engine=engine, settings=settings, now=now)
    assert [p.email for p in report.planned] == ["tokyo@example.org"]
    assert report.not_due == ["la@example.org"]
    assert report.planned[0].edition.isoformat() == "2026-11-23"


def test_message_id_is_chosen_once_at_planning(engine, settings, now) -> None:  # type: ignore[no-untyped-def]
    add_paper(engine, title="Diffusion", abstract="A.", seen=now - timedelta(hours=1))
    subscribe(engine, email="a@example.org", topics=["diffusion"], now=now)
    _plan(engine, settings, now)
    (row,) = _deliveries(engine)
    assert row.message_id.startswith("<20261123.") and row.message_id.endswith("@papers.example>")
    backend = MemoryBackend()
    deliver(engine, settings, backend, now)
    assert backend.sent[0].message_id == row.message_id
    assert f"Message-ID: {row.message_id}".encode() in backend.sent[0].data


def test_concurrent_planners_make_one_digest_each(engine, settings, now) -> None:  # type: ignore[no-untyped-def]
    add_paper(engine, title="Diffusion", abstract="A.", seen=now - timedelta(hours=1))
    for i in range(20):
        subscribe(engine, email=f"s{i}@example.org", topics=["diffusion"], now=now)
    barrier = threading.Barrier(3)
    errors: list[BaseException] = []

    def run() -> None:
        try:
            barrier.wait()
            _plan(engine, settings, now)
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    rows = _deliveries(engine)
    assert len(rows) == 20 and len({r.subscriber_id for r in rows}) == 20


def test_star_or_no_topic_gets_the_day_ranked_by_upvotes_then_freshness(
    engine, settings, now
) -> None:  # type: ignore[no-untyped-def]
    older_popular = add_paper(
        engine, title="A", abstract="x.", seen=now - timedelta(hours=5), upvotes=9
    )
    fresh = add_paper(engine, title="B", abstract="x.", seen=now - timedelta(hours=1), upvotes=2)
    stale = add_paper(engine, title="C", abstract="x.", seen=now - timedelta(hours=3), upvotes=2)
    subscribe(engine, email="star@example.org", topics=["*"], now=now)
    subscribe(engine, email="none@example.org", topics=[], now=now)
    report = _plan(engine, settings, now)
    for planned in report.planned:
        assert [m.paper_id for m in planned.ranked.matches] == [older_popular, fresh, stale]
    assert len(report.planned) == 2


def test_each_item_records_which_filters_and_words_matched(engine, settings, now) -> None:  # type: ignore[no-untyped-def]
    import json

    add_paper(
        engine,
        title="Poincaré Embeddings",
        abstract="Hyperbolic models.",
        seen=now - timedelta(hours=1),
    )
    subscribe(engine, email="a@example.org", topics=["poincare", "model -video", "graph"], now=now)
    _plan(engine, settings, now)
    with db.session_scope(engine=engine) as session:
        (delivery,) = session.exec(select(Delivery)).all()
    (item,) = json.loads(items_of(engine, delivery))
    assert item["topics"] == ["poincare", "model -video"]
    assert item["terms"] == ["Poincaré", "models"]


def test_planning_in_processes_makes_the_same_digests(engine, settings, now, tmp_path) -> None:  # type: ignore[no-untyped-def]
    words = ["diffusion", "agents", "speech", "retrieval", "robots", "graphs"]
    for k, word in enumerate(words * 3):
        add_paper(engine, title=f"{word.title()} study {k}", abstract=f"On {word}.",
                  seen=now - timedelta(minutes=10 + k), upvotes=k)  # fmt: skip
    for k in range(45):
        topics = [words[k % 6], words[(k * 5) % 6]] if k % 9 else ['"protein folding"']
        subscribe(engine, email=f"r{k}@example.org", topics=topics, now=now)
    subscribe(engine, email="late@example.org", topics=["agents"], now=now, send_at="23:59")
    alone = plan_digests(engine=engine, settings=settings, now=now, dry_run=True)

    seen_by = tmp_path / "pids"

    def note(_planned: object) -> None:  # runs in the planning processes
        with seen_by.open("a") as f:
            f.write(f"{os.getpid()}\n")

    shared = plan_digests(
        engine=engine, settings=settings, now=now, keep=False, workers=3, on_planned=note
    )
    pids = seen_by.read_text().split()
    assert len(pids) == 40 and len(set(pids)) == 3 and str(os.getpid()) not in pids

    assert shared.planned == []  # counts only, as `newsletter send` asks
    assert shared.counts["planned"] == len(alone.planned) == 40
    assert shared.counts["no_match"] == len(alone.no_match) == 5
    assert shared.counts["not_due"] == 1 and shared.editions == {now.date()}
    recorded = {d.to_address: items_of(engine, d) for d in _deliveries(engine)}
    assert recorded == {p.email: p.items for p in alone.planned}  # the same digests, once each
    again = plan_digests(engine=engine, settings=settings, now=now, keep=False, workers=3)
    assert again.counts["already_planned"] == 40 and len(_deliveries(engine)) == 40


# What COPY's text format must escape: tabs, newlines, backslashes, quotes, non-ASCII.
ODD = '[{"t": "a\tb\nc\\\\d \\" é \\\\N"}]'


def test_planned_rows_go_in_once_with_every_column_as_the_model_has_it(engine, now) -> None:  # type: ignore[no-untyped-def]
    """The bulk insert (arrays unnested on PostgreSQL, multi-row VALUES on SQLite): rows
    read back as the ORM would have written them; a batch that overlaps what is there
    inserts only the new rows and returns only their ids."""
    a = subscribe(engine, email="a@example.org", topics=["x"], now=now)
    b = subscribe(engine, email="b@example.org", topics=["x"], now=now)
    edition = now.date()

    def row(sid: int, items: str) -> PlannedRow:
        return PlannedRow(sid, edition, f"<{sid}.m@x>", f"{sid}@example.org", 3, 1, items)

    with db.session_scope(engine=engine) as session:  # two batches in one transaction
        first = insert_planned(session.connection(), [row(a, ODD)], now=now)
        second = insert_planned(session.connection(), [row(a, "[]"), row(b, "[2]")], now=now)
    with db.session_scope(engine=engine) as session:
        assert insert_planned(session.connection(), [row(b, "[3]")], now=now) == {}
    (one, two) = _deliveries(engine)
    assert list(first) == [a] and list(second) == [b] and second[b] == two.id
    assert (one.id, one.subscriber_id, items_of(engine, one), one.message_id) == (
        first[a],
        a,
        ODD,
        f"<{a}.m@x>",
    )
    # Each text stored once, under its hash; none that no row refers to (those of the
    # rows planned first elsewhere) is kept.
    with db.session_scope(engine=engine) as session:
        stored = dict(session.exec(select(Snapshot.items, Snapshot.id)).all())
    assert stored == {ODD: snapshot.key(ODD), "[2]": snapshot.key("[2]")}
    assert one.snapshot_id == snapshot.key(ODD)
    assert (one.kind, one.status, one.attempts, one.paper_count, one.more_count) == (
        "digest", "pending", 0, 3, 1,
    )  # fmt: skip
    assert one.covers_until == one.next_attempt_at == one.created_at == now
    assert one.edition == edition and one.sent_at is None and one.lease_until is None
    assert one.to_address == f"{a}@example.org" and items_of(engine, two) == "[2]"


def test_readers_of_one_ranking_share_one_stored_snapshot_and_removal_forgets_theirs(
    engine, settings, now
) -> None:  # type: ignore[no-untyped-def]
    """A snapshot is stored once for every digest that holds the same; it names the
    reader's topics, so it goes when the last subscriber whose digest held it is removed."""
    add_paper(engine, title="Diffusion for all", abstract="A.", seen=now - timedelta(hours=1))
    add_paper(engine, title="Agents at work", abstract="B.", seen=now - timedelta(hours=1))
    for who, topic in (("a", "diffusion"), ("b", "diffusion"), ("c", "agents")):
        subscribe(engine, email=f"{who}@example.org", topics=[topic], now=now)
    assert len(_plan(engine, settings, now).planned) == 3

    def stored() -> list[str]:
        with db.session_scope(engine=engine) as session:
            texts = session.exec(select(Snapshot.items)).all()
        return sorted(t for i in map(snapshot.decode, texts) for t in i[0].topics)

    assert stored() == ["agents", "diffusion"]
    for email, left in (("c", ["diffusion"]), ("a", ["diffusion"]), ("b", [])):
        with db.session_scope(engine=engine) as session:
            remove_subscriber(session=session, email=f"{email}@example.org", now=now)
        assert stored() == left, email


def test_a_corrupt_stored_snapshot_fails_its_digests_alone(engine, settings, now) -> None:  # type: ignore[no-untyped-def]
    """A snapshot edited by hand into something that is not a digest: the digests that
    refer to it fail with the reason, the others go out."""
    add_paper(engine, title="Diffusion for all", abstract="A.", seen=now - timedelta(hours=1))
    add_paper(engine, title="Agents at work", abstract="B.", seen=now - timedelta(hours=1))
    for who, topic in (("a", "diffusion"), ("b", "agents"), ("c", "agents")):
        subscribe(engine, email=f"{who}@example.org", topics=[topic], now=now)
    _plan(engine, settings, now)
    (bad,) = [d for d in _deliveries(engine) if d.to_address == "a@example.org"]
    with engine.begin() as connection:
        connection.execute(
            sa.update(Snapshot).where(Snapshot.id == bad.snapshot_id).values(items="[{")  # type: ignore[arg-type]
        )
    backend = MemoryBackend()
    report = deliver(engine, settings, backend, now)
    assert sorted(m.recipients[0] for m in backend.sent) == ["b@example.org", "c@example.org"]
    (failed,) = [d for d in _deliveries(engine) if d.status == "failed"]
    assert failed.to_address == "a@example.org"
    assert "snapshots.items: not a digest's item list" in (failed.last_error or "")
    assert report.count("sent") == 2


def test_the_loader_reads_a_papers_text_again_once_its_seconds_have_passed(
    engine, settings, now
) -> None:  # type: ignore[no-untyped-def]
    """A big send reads each paper's text once, not once per batch; a link a source gave
    since shows up once ``texts_seconds`` have passed."""
    pid = add_paper(engine, title="Diffusion for all", abstract="A.", seen=now - timedelta(hours=1))
    subscribe(engine, email="a@example.org", topics=["diffusion"], now=now)
    _plan(engine, settings, now)
    loader = JobLoader(links=links_for(settings), texts_seconds=3600)

    def code_url() -> str | None:
        with db.session_scope(engine=engine) as session:
            rows = list(session.exec(select(*LEDGER_COLUMNS)))  # type: ignore[call-overload]
            (job,) = loader.load(session=session, rows=rows)
        return job.digest.papers[0].code_url  # type: ignore[union-attr]

    assert code_url() is None
    with engine.begin() as connection:
        connection.execute(
            sa.update(Paper).where(Paper.id == pid).values(code_url="https://github.com/a/b")  # type: ignore[arg-type]
        )
    assert code_url() is None  # within the hour: as read
    loader.texts_seconds = 0
    assert code_url() == "https://github.com/a/b"


def test_planners_storing_the_same_snapshots_at_once_do_not_deadlock(engine, now) -> None:  # type: ignore[no-untyped-def]
    """Two planners insert batches that share snapshots, met in opposite orders: both go
    in whole (PostgreSQL detected a deadlock here when each inserted in its own order)."""
    with db.session_scope(engine=engine) as session:
        ids = [
            add_subscriber(
                session=session,
                subscriber=validate_subscriber(
                    email=f"s{k}@example.org", topics=["x"], name=None, timezone="UTC",
                    send_at="08:00",
                ),
                now=now,
            ).id
            for k in range(1200)
        ]  # fmt: skip

    def row(sid: int, k: int, day: int) -> PlannedRow:
        edition = now.date() + timedelta(days=day)
        return PlannedRow(sid, edition, f"<{sid}.{day}@x>", f"{sid}@x.org", 1, 0, f"[{day},{k}]")

    errors: list[str] = []
    for day in range(5):  # a deadlock needs the two to interleave: five chances to
        halves = (
            [row(ids[k], k, day) for k in range(600)],
            [row(ids[600 + k], 599 - k, day) for k in range(600)],  # the same texts, backwards
        )
        both = threading.Barrier(2)

        def plan(rows: list[PlannedRow], both: threading.Barrier = both) -> None:
            try:
                with engine.begin() as connection:
                    both.wait()
                    insert_planned(connection, rows, now=now)
            except Exception as exc:
                errors.append(f"{type(exc).__name__}: {exc}")

        threads = [threading.Thread(target=plan, args=(h,)) for h in halves]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert errors == []
    assert len(_deliveries(engine)) == 5 * 1200
    with db.session_scope(engine=engine) as session:
        assert len(session.exec(select(Snapshot.id)).all()) == 5 * 600


def test_a_subscriber_whose_stored_time_cannot_be_read_waits_and_the_rest_are_planned(
    engine, settings, now
) -> None:  # type: ignore[no-untyped-def]
    """Time zones and send times are checked when stored; a row written around the
    checks (by hand, an older release), or a zone this machine's tzdata lacks, skips
    that reader with a reason, and everyone else is planned."""
    from newsletter.models import Subscriber

    add_paper(engine, title="Diffusion", abstract="About diffusion.", seen=now - timedelta(hours=1))
    good = subscribe(engine, email="good@example.org", topics=["diffusion"], now=now)
    for email, column, value in [
        ("mars@example.org", "timezone", "Mars/Olympus_Mons"),
        ("late@example.org", "send_at", "25:00"),
        ("odd@example.org", "send_at", "7"),
        ("week@example.org", "weekday", None),  # weekly, waiting for a day that never came
    ]:
        sid = subscribe(engine, email=email, topics=["diffusion"], now=now)
        with db.session_scope(engine=engine) as session:
            values = {column: value} | ({"cadence": "weekly"} if column == "weekday" else {})
            session.execute(sa.update(Subscriber).where(Subscriber.id == sid).values(values))
    report = plan_digests(engine=engine, settings=settings, now=now)
    assert [d.subscriber_id for d in report.planned] == [good]
    assert sorted(report.unreadable) == [
        "late@example.org", "mars@example.org", "odd@example.org", "week@example.org"
    ]  # fmt: skip


def test_a_send_time_between_two_planning_runs_or_during_downtime_is_made_up(
    engine, settings, now
) -> None:  # type: ignore[no-untyped-def]
    """Planning runs every few minutes from whenever the service started: a send time
    just before local midnight can fall between two runs every day, and a service that
    was down misses sends. Each reader still gets one digest per local day (or week),
    at the first run after their send time, and a reader who joined after a missed
    send waits for their next one."""
    from newsletter.models import Subscriber

    start = datetime(2026, 11, 23, 10, 2, 31, tzinfo=UTC)  # runs at :02:31, :07:31, ...
    add_paper(engine, title="Diffusion", abstract="A.", seen=start - timedelta(hours=1))
    subscribe(engine, email="late@example.org", topics=["diffusion"], now=start, send_at="23:58")
    subscribe(engine, email="ktm@example.org", topics=["diffusion"], now=start,
              tz="Asia/Kathmandu", send_at="23:59")  # fmt: skip
    subscribe(engine, email="early@example.org", topics=["diffusion"], now=start)
    week = subscribe(engine, email="week@example.org", topics=["diffusion"], now=start,
                     tz="Europe/Paris")  # fmt: skip
    with db.session_scope(engine=engine) as session:  # weekly, Wednesdays 08:00 in Paris
        session.execute(sa.update(Subscriber).where(Subscriber.id == week)
                        .values(cadence="weekly", weekday=2))  # fmt: skip
    planned: dict[str, list[tuple[date, datetime]]] = {}
    down = (datetime(2026, 11, 25, 6, tzinfo=UTC), datetime(2026, 11, 26, 1, tzinfo=UTC))
    t = start
    while t < start + timedelta(days=4):
        if t.minute == 2 and t.hour % 3 == 0:  # new papers through the day
            add_paper(engine, title=f"Diffusion {t:%d %H}", abstract="A.", seen=t)
        if not down[0] <= t < down[1]:
            report = plan_digests(engine=engine, settings=settings, now=t, keep=False)
            assert report.counts["unreadable"] == 0
        t += timedelta(minutes=5)
    for d in _deliveries(engine):
        planned.setdefault(d.to_address, []).append((d.edition, d.created_at))
    days = [date(2026, 11, 23) + timedelta(days=k) for k in range(4)]
    # 23:58 UTC falls between the runs at 23:57:31 and 00:02:31: made up five minutes late.
    assert [e for e, _ in planned["late@example.org"]] == days
    assert [at.strftime("%d %H:%M") for _, at in planned["late@example.org"]] == [
        "24 00:02", "25 00:02", "26 01:02", "27 00:02",  # the 25th's when it came back
    ]  # fmt: skip
    assert [e for e, _ in planned["ktm@example.org"]] == days  # 23:59 there, 18:14 UTC
    # The 25th's 08:00 fell in the downtime and the 26th's was nearer when it came
    # back (at 01:00): one digest, at 08:00, covers both days.
    assert [e.day for e, _ in planned["early@example.org"]] == [23, 24, 26, 27]
    # Wednesday's 08:00 Paris fell in the downtime: sent when the service came back.
    assert planned["week@example.org"] == [
        (date(2026, 11, 25), datetime(2026, 11, 26, 1, 2, 31, tzinfo=UTC))
    ]
    # Joined at 10:00 UTC after a 23:58 send: nothing until their own next one.
    joined = start + timedelta(days=4)
    subscribe(engine, email="new@example.org", topics=["diffusion"], now=joined, send_at="23:58")
    report = plan_digests(engine=engine, settings=settings, now=joined, dry_run=True)
    assert "new@example.org" in report.not_due


def test_a_planning_run_with_the_clock_fast_loses_no_paper(engine, settings, now) -> None:  # type: ignore[no-untyped-def]
    """A digest covers the papers it was planned from, until the newest of them: not
    until the planner's clock, which, a day fast once (or another host's), would count
    the papers of the day to come as covered, and they would never be sent."""
    add_paper(engine, title="Diffusion today", abstract="A.", seen=now - timedelta(hours=1))
    subscribe(engine, email="a@example.org", topics=["diffusion"], now=now - timedelta(days=1))
    fast = plan_digests(engine=engine, settings=settings, now=now + timedelta(days=1))
    assert [p.email for p in fast.planned] == ["a@example.org"]
    later = add_paper(engine, title="Diffusion later", abstract="A.", seen=now + timedelta(hours=2))
    report = plan_digests(engine=engine, settings=settings, now=now + timedelta(days=2))
    assert [m.paper_id for p in report.planned for m in p.ranked.matches] == [later]


def test_planners_write_the_ledger_one_after_the_other(engine, now) -> None:  # type: ignore[no-untyped-def]
    """Two planners at once (``send`` by hand beside the service) whose rankings differ
    order the same readers differently, and inserting in opposite orders deadlocked
    PostgreSQL (one planner's batch rolled back). A planner's ledger writes wait for
    the other's commit instead, as SQLite's one writer does."""
    from newsletter.ledger.planned import PlannedRow, insert_planned

    ids = [subscribe(engine, email=f"p{k}@example.org", topics=["x"], now=now) for k in (0, 1)]

    def row(sid: int) -> PlannedRow:
        return PlannedRow(subscriber_id=sid, edition=now.date(), message_id=f"<{sid}@x.org>",
                          to_address=f"p{sid}@example.org", paper_count=0, more_count=0,
                          items="[]")  # fmt: skip

    done = threading.Event()

    def other_planner() -> None:
        with engine.connect() as conn:
            insert_planned(conn, [row(ids[1])], now=now)
            conn.commit()
        done.set()

    with engine.connect() as first:
        assert list(insert_planned(first, [row(ids[0])], now=now)) == [ids[0]]
        other = threading.Thread(target=other_planner)
        other.start()
        assert not done.wait(0.5), "the second planner wrote while the first had not committed"
        first.commit()
    other.join(30)
    assert done.is_set() and len(_deliveries(engine)) == 2

"""Storage on SQLite and PostgreSQL: migrations match the models, the ledger's constraints hold."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta, timezone

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlmodel import SQLModel, select

from newsletter import db, snapshot
from newsletter.models import Delivery, Paper, Subscriber
from tests.conftest import drop_pg_database, make_pg_database


def test_migrations_create_exactly_the_models_schema(engine: sa.Engine) -> None:
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), SQLModel.metadata)
    assert diff == [], "models changed without a migration: add one under newsletter/migrations"
    assert db.is_up_to_date(engine=engine)


def test_upgrade_is_idempotent(engine: sa.Engine) -> None:
    db.upgrade(engine=engine)
    assert db.current_revision(engine=engine) == db.head_revision()


def test_sqlite_runs_in_wal_mode(sqlite_engine: sa.Engine) -> None:
    with sqlite_engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1


def _subscriber(session, email: str = "a@example.org") -> Subscriber:  # type: ignore[no-untyped-def]
    now = datetime.now(UTC)
    sub = Subscriber(email=email, created_at=now, updated_at=now)
    session.add(sub)
    session.flush()
    return sub


def _delivery(sub: Subscriber, edition: date, message_id: str) -> Delivery:
    now = datetime.now(UTC)
    return Delivery(
        subscriber_id=sub.id,  # type: ignore[arg-type]
        edition=edition,
        message_id=message_id,
        to_address=sub.email,
        covers_until=now,
        next_attempt_at=now,
        created_at=now,
    )


def test_one_delivery_per_subscriber_and_edition_is_enforced(engine: sa.Engine) -> None:
    with db.session_scope(engine=engine) as session:
        sub = _subscriber(session)
        session.add(_delivery(sub, date(2026, 11, 23), "<1@x>"))
    with pytest.raises(sa.exc.IntegrityError), db.session_scope(engine=engine) as session:
        session.add(_delivery(sub, date(2026, 11, 23), "<2@x>"))
    with db.session_scope(engine=engine) as session:
        assert len(session.exec(select(Delivery)).all()) == 1
        session.add(_delivery(sub, date(2026, 11, 24), "<3@x>"))  # the next edition is fine


def test_times_round_trip_as_aware_utc(engine: sa.Engine) -> None:
    paris = timezone(timedelta(hours=1))
    seen = datetime(2026, 3, 29, 1, 30, 15, tzinfo=paris)
    with db.session_scope(engine=engine) as session:
        session.add(
            Paper(
                key="k",
                title="T",
                abstract="A",
                source_file="f",
                first_seen_at=seen,
                updated_at=seen,
            )
        )
    with db.session_scope(engine=engine) as session:
        paper = session.exec(select(Paper)).one()
    assert paper.first_seen_at == seen
    assert paper.first_seen_at.tzinfo is not None
    assert paper.first_seen_at.utcoffset() == timedelta(0)


def test_naive_datetimes_are_refused(engine: sa.Engine) -> None:
    with (
        pytest.raises(sa.exc.StatementError, match="naive datetime"),
        db.session_scope(engine=engine) as s,
    ):
        naive = datetime(2026, 1, 1)
        s.add(
            Paper(
                key="k",
                title="T",
                abstract="A",
                source_file="f",
                first_seen_at=naive,
                updated_at=naive,
            )
        )


def test_deleting_a_subscriber_removes_their_ledger(engine: sa.Engine) -> None:
    with db.session_scope(engine=engine) as session:
        sub = _subscriber(session)
        session.add(_delivery(sub, date(2026, 11, 23), "<1@x>"))
    with db.session_scope(engine=engine) as session:
        session.delete(session.get(Subscriber, sub.id))
    with db.session_scope(engine=engine) as session:
        assert session.exec(select(Delivery)).all() == []


def _carry_over(url: str) -> None:
    """0004 moves delivery_items into deliveries.items and back, losing nothing."""
    engine = db.make_engine(url)
    db.upgrade(engine=engine, revision="0003")
    at = datetime(2024, 5, 29, 8, tzinfo=UTC)
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO papers (id, key, title, abstract, upvotes, authors, organization,"
                " published_on, source_file, first_seen_at, updated_at) VALUES"
                " (1, 'a', 'A', 'x', 5, 3, 'Lab', '2024-05-28', 't', :at, :at),"
                " (2, 'b', 'B', 'y', NULL, NULL, NULL, NULL, 't', :at, :at)"
            ),
            {"at": at},
        )
        conn.execute(
            sa.text(
                "INSERT INTO subscribers (id, email, timezone, send_at, status, created_at,"
                " updated_at, soft_bounces) VALUES (1, 'a@example.org', 'UTC', '08:00',"
                " 'active', :at, :at, 0)"
            ),
            {"at": at},
        )
        conn.execute(
            sa.text(
                "INSERT INTO deliveries (id, subscriber_id, edition, status, message_id,"
                " to_address, covers_until, paper_count, more_count, attempts, next_attempt_at,"
                " created_at) VALUES (1, 1, '2024-05-29', 'pending', '<m@x>', 'a@example.org',"
                " :at, 2, 0, 0, :at, :at)"
            ),
            {"at": at},
        )
        conn.execute(
            sa.text(
                "INSERT INTO delivery_items (delivery_id, paper_id, position, matched_topics,"
                " matched_terms) VALUES (1, 2, 0, '[\"b\"]', '[\"B\"]'),"
                ' (1, 1, 1, \'["a", "lab"]\', \'["A"]\')'
            )
        )
    db.upgrade(engine=engine)
    with engine.connect() as conn:
        text = conn.execute(
            sa.text("SELECT s.items FROM deliveries d JOIN snapshots s ON s.id = d.snapshot_id")
        ).scalar_one()
    assert snapshot.decode(text) == (
        snapshot.Item(2, ("b",), ("B",)),
        snapshot.Item(1, ("a", "lab"), ("A",), 5, 3, "Lab", date(2024, 5, 28)),
    )
    db.downgrade(engine=engine, revision="0003")
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text(
                "SELECT paper_id, position, matched_topics FROM delivery_items ORDER BY position"
            )
        ).all()
    assert [(p, pos, json.loads(t)) for p, pos, t in rows] == [(2, 0, ["b"]), (1, 1, ["a", "lab"])]


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def bare_url(request: pytest.FixtureRequest, tmp_path) -> Iterator[str]:  # type: ignore[no-untyped-def]
    """A database no migration has run on yet, on each backend."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'm.db'}"
        return
    server = request.getfixturevalue("pg_server")
    url = make_pg_database(server)
    try:
        yield url
    finally:
        drop_pg_database(server, url)


def test_migration_0004_carries_digest_items_over(bare_url: str) -> None:
    _carry_over(bare_url)


def _subscriber_from_0006(conn: sa.Connection, at: datetime) -> None:
    """Subscriber 1 as the schema from revision 0006 on stores one, in plain SQL."""
    conn.execute(
        sa.text(
            "INSERT INTO subscribers (id, email, timezone, send_at, status, created_at,"
            " updated_at, soft_bounces, token_salt) VALUES (1, 'a@example.org', 'UTC',"
            " '08:00', 'active', :at, :at, 0, 'ab')"
        ),
        {"at": at},
    )


def _snapshots_moved(url: str) -> None:
    """0012 moves each digest's items into snapshots, one row per distinct text, and
    back, losing nothing; other mail refers to none."""
    engine = db.make_engine(url)
    db.upgrade(engine=engine, revision="0011")
    at = datetime(2026, 11, 29, 8, tzinfo=UTC)
    shared, own = '[{"id":1,"topics":["a"],"terms":[]}]', '[{"id":2,"topics":["é\\n"],"terms":[]}]'
    with engine.begin() as conn:
        _subscriber_from_0006(conn, at)
        for i, (kind, items) in enumerate(
            [("digest", shared), ("digest", own), ("digest", shared), ("confirm", "[]")], 1
        ):
            conn.execute(
                sa.text(
                    "INSERT INTO deliveries (id, subscriber_id, edition, kind, status, message_id,"
                    " to_address, covers_until, paper_count, more_count, attempts,"
                    " next_attempt_at, created_at, items) VALUES (:i, 1, :edition, :kind,"
                    " 'sent', :m, 'a@example.org', :at, 1, 0, 1, :at, :at, :items)"
                ),
                {"i": i, "edition": date(2026, 11, i) if kind == "digest" else None,
                 "kind": kind, "m": f"<{i}@x>", "at": at, "items": items},
            )  # fmt: skip
    db.upgrade(engine=engine)
    with engine.connect() as conn:
        stored = dict(conn.execute(sa.text("SELECT id, items FROM snapshots")).all())
        refs = conn.execute(sa.text("SELECT id, snapshot_id FROM deliveries ORDER BY id")).all()
    assert stored == {snapshot.key(shared): shared, snapshot.key(own): own}
    assert refs == [
        (1, snapshot.key(shared)), (2, snapshot.key(own)), (3, snapshot.key(shared)), (4, None)
    ]  # fmt: skip
    db.downgrade(engine=engine, revision="0011")
    with engine.connect() as conn:
        back = conn.execute(sa.text("SELECT id, items FROM deliveries ORDER BY id")).all()
    assert back == [(1, shared), (2, own), (3, shared), (4, "[]")]
    engine.dispose()


def test_migration_0012_stores_each_snapshot_once(bare_url: str) -> None:
    _snapshots_moved(bare_url)


def test_migration_0007_leaves_existing_topics_without_a_sentence(bare_url: str) -> None:
    """Topics stored before sentences existed keep their filter, gain no sentence (their
    filter's words stand in for meaning) and their readers get the default dial."""
    from newsletter.models import Subscriber
    from newsletter.relevance import DEFAULT_DIAL
    from newsletter.subscribers import topic_rows

    engine = db.make_engine(bare_url)
    db.upgrade(engine=engine, revision="0006")
    at = datetime(2026, 11, 1, 8, tzinfo=UTC)
    with engine.begin() as conn:
        _subscriber_from_0006(conn, at)
        for i, query in enumerate(['"language model"', "diffusion"], 1):
            conn.execute(
                sa.text(
                    "INSERT INTO topic_filters (id, subscriber_id, query, created_at)"
                    " VALUES (:i, 1, :q, :at)"
                ),
                {"i": i, "q": query, "at": at},
            )
    db.upgrade(engine=engine)
    with db.session_scope(engine=engine) as session:
        topics = topic_rows(session=session, ids=[1])[1]
        assert [(t.query, t.about) for t in topics] == [
            ('"language model"', None),
            ("diffusion", None),
        ]
        assert session.get(Subscriber, 1).dial == DEFAULT_DIAL  # type: ignore[union-attr]
    engine.dispose()


def test_migration_0013_has_every_paper_analysed_again(bare_url: str) -> None:
    """The stemmer's analysis changed (an acronym's plural in lower case or capitals):
    postings written under the old one are dropped and every paper indexed again by
    the next ``index_pending``, so a filter and the stored papers agree."""
    from newsletter.corpus.postings import index_pending
    from tests.helpers import add_paper

    engine = db.make_engine(bare_url)
    db.upgrade(engine=engine, revision="0012")
    seen = datetime(2026, 11, 23, tzinfo=UTC)
    ids = [add_paper(engine, title=f"LLMS {k}", abstract="a.", seen=seen) for k in range(3)]
    assert index_pending(engine=engine) == 3

    def unindexed() -> int:
        with engine.connect() as conn:
            return conn.execute(
                sa.text("SELECT count(*) FROM papers WHERE index_segment IS NULL")
            ).scalar_one()

    assert unindexed() == 0
    db.upgrade(engine=engine)
    assert unindexed() == len(ids)
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM postings")).scalar_one() == 0
    assert index_pending(engine=engine) == len(ids) and unindexed() == 0

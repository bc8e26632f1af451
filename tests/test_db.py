"""Storage on SQLite and PostgreSQL: migrations match the models, the ledger's constraints hold."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta, timezone

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlmodel import SQLModel, select

from newsletter import db
from newsletter.models import Delivery, Paper, Subscriber


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

"""Shared fixtures: real databases (SQLite files, PostgreSQL when it answers), settings, clock."""

from __future__ import annotations

import os
import secrets
import socket
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import sqlalchemy as sa

from newsletter import db
from newsletter.config import Settings, load_settings

REPO = Path(__file__).resolve().parent.parent
CORPUS = REPO / "corpus"
PG_ADMIN_URL = os.environ.get(
    "NEWSLETTER_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
NOW = datetime(2026, 11, 23, 9, 0, tzinfo=UTC)
IN_CI = os.environ.get("CI") == "true"


def _pg_answers() -> bool:
    url = sa.make_url(PG_ADMIN_URL)
    try:
        with socket.create_connection((url.host or "127.0.0.1", url.port or 5432), timeout=1):
            return True
    except OSError:
        return False


@pytest.fixture(scope="session")
def pg_server() -> str:
    """The admin URL of a PostgreSQL server; skips outside CI when none answers."""
    if not _pg_answers():
        if IN_CI:
            pytest.fail(f"PostgreSQL does not answer at {PG_ADMIN_URL} (CI needs it)")
        pytest.skip(f"no PostgreSQL server answers at {PG_ADMIN_URL}; these tests run in CI")
    return PG_ADMIN_URL


def make_pg_database(admin_url: str) -> str:
    name = f"nl_test_{os.getpid()}_{secrets.token_hex(4)}"
    admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    return sa.make_url(admin_url).set(database=name).render_as_string(hide_password=False)


def drop_pg_database(admin_url: str, url: str) -> None:
    name = sa.make_url(url).database
    db.make_engine(url).dispose()
    admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh, migrated database on each backend."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'test.db'}"
        db.upgrade(engine=db.make_engine(url))
        yield url
        db.make_engine(url).dispose()
        return
    admin_url = request.getfixturevalue("pg_server")
    url = make_pg_database(admin_url)
    db.upgrade(engine=db.make_engine(url))
    try:
        yield url
    finally:
        drop_pg_database(admin_url, url)


@pytest.fixture
def sqlite_url(tmp_path: Path) -> Iterator[str]:
    """A fresh, migrated SQLite database, for tests that need only one backend."""
    url = f"sqlite:///{tmp_path / 'test.db'}"
    db.upgrade(engine=db.make_engine(url))
    yield url
    db.make_engine(url).dispose()


@pytest.fixture
def engine(database_url: str) -> sa.Engine:
    return db.make_engine(database_url)


@pytest.fixture
def sqlite_engine(sqlite_url: str) -> sa.Engine:
    return db.make_engine(sqlite_url)


@pytest.fixture
def settings(tmp_path: Path, database_url: str) -> Settings:
    return make_settings(tmp_path, database_url)


def make_settings(tmp_path: Path, database_url: str, **env: str) -> Settings:
    environ = {
        "NEWSLETTER_HOME": str(tmp_path),
        "DATABASE_URL": database_url,
        "NEWSLETTER_CORPUS_DIR": str(CORPUS),
        "NEWSLETTER_FROM": "digest@papers.example",
        "NEWSLETTER_BASE_URL": "https://papers.example",
        "NEWSLETTER_SECRET_KEY": "k" * 40,
        **env,
    }
    return load_settings(environ=environ, dotenv_path=tmp_path / "no.env")


@pytest.fixture
def now() -> datetime:
    return NOW

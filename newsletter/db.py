"""Engine, sessions and migrations. SQLite (WAL) by default, PostgreSQL by URL."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING

import sqlalchemy as sa
from sqlmodel import Session

if TYPE_CHECKING:
    from alembic.config import Config

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"


def _lenient_text(raw: bytes) -> str:
    return raw.decode("utf-8", "replace")


def _sqlite_pragmas(dbapi_connection, _record) -> None:  # type: ignore[no-untyped-def]
    # SQLite stores whatever bytes a TEXT value was given (by hand, another program, a
    # CAST): one value that is not UTF-8 made every read that met it raise, and with it
    # a whole delivery batch, every lease. Read so, its bad bytes show as U+FFFD, and
    # whatever holds it fails alone if it no longer makes sense (a snapshot's JSON).
    dbapi_connection.text_factory = _lenient_text
    cur = dbapi_connection.cursor()
    # WAL lets readers run while the writer writes; busy_timeout waits for the
    # writer's lock instead of failing at once; foreign keys are off by default.
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


@cache
def make_engine(url: str) -> sa.Engine:
    """One engine per URL per process (engines own connection pools)."""
    if url.startswith("sqlite"):
        path = url.removeprefix("sqlite:///")
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = sa.create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})
        sa.event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    return sa.create_engine(url, pool_pre_ping=True)


@contextmanager
def session_scope(*, engine: sa.Engine) -> Iterator[Session]:
    """A session whose work commits on success and rolls back on any error."""
    with Session(engine, expire_on_commit=False) as session:
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise


def _alembic_config(url: str) -> Config:
    from alembic.config import Config  # a fifth of a second: only the schema's commands pay it

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def upgrade(*, engine: sa.Engine, revision: str = "head") -> None:
    """Apply migrations up to ``revision`` (idempotent)."""
    from alembic import command

    _migrate(engine, command.upgrade, revision)


def downgrade(*, engine: sa.Engine, revision: str) -> None:
    """Undo migrations down to ``revision`` (an operator rolling back a release)."""
    from alembic import command

    _migrate(engine, command.downgrade, revision)


def _migrate(engine: sa.Engine, step: Callable[[Config, str], None], revision: str) -> None:
    cfg = _alembic_config(engine.url.render_as_string(hide_password=False))
    sqlite = engine.dialect.name == "sqlite"
    with engine.connect() as connection:
        if sqlite:
            # SQLite changes a column by rebuilding its table, and dropping the old table
            # with foreign keys on would cascade: deleting every subscriber's filters and
            # ledger. Its documented procedure: keys off (outside a transaction), migrate,
            # check, keys on.
            connection.exec_driver_sql("PRAGMA foreign_keys=OFF")
            connection.commit()  # pysqlite sent no BEGIN for the pragma: it took effect
        try:
            with connection.begin():
                if engine.dialect.name == "postgresql":
                    # Services starting together take turns; the later ones find nothing to do.
                    connection.exec_driver_sql("SELECT pg_advisory_xact_lock(7238591)")
                cfg.attributes["connection"] = connection
                step(cfg, revision)
                if sqlite:
                    broken = connection.exec_driver_sql("PRAGMA foreign_key_check").all()
                    if broken:
                        raise RuntimeError(f"migration left dangling references: {broken[:5]}")
        finally:
            if sqlite:
                connection.exec_driver_sql("PRAGMA foreign_keys=ON")
                connection.commit()


def current_revision(*, engine: sa.Engine) -> str | None:
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def head_revision() -> str | None:
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(_alembic_config("sqlite://")).get_current_head()


def is_up_to_date(*, engine: sa.Engine) -> bool:
    return current_revision(engine=engine) == head_revision()


def error_reason(exc: BaseException) -> str:
    """What the database said, on one line: no statement, no parameters, no URL."""
    orig = getattr(exc, "orig", None) or exc
    lines = str(orig).strip().splitlines()
    return lines[0] if lines else type(exc).__name__

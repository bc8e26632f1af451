"""Planned digests into the ledger: one row per (subscriber, edition), in bulk.

ON CONFLICT DO NOTHING on (subscriber, edition): a digest another planner inserted
first is skipped, not an error that would undo the whole batch; the rows inserted
come back with their ids.

On PostgreSQL the batch is loaded with COPY into a temporary table, then moved over
with one INSERT ... SELECT: the multi-row VALUES form (what SQLite gets) has a dozen
parameters per row, which the driver parses and adapts one by one (200 to 260 µs a
row with a 1 kB snapshot, against 72 to 82 µs this way, measured on this machine; as
arrays to unnest, 516 µs: psycopg adapts a list of long strings slowly). As the
importer does. One column list serves both: the staging table takes the ledger's
column types from the ledger itself.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime

import sqlalchemy as sa
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from newsletter.models import Delivery, DeliveryKind, DeliveryStatus


@dataclass(frozen=True, slots=True)
class PlannedRow:
    subscriber_id: int
    edition: date
    message_id: str
    to_address: str
    paper_count: int
    more_count: int
    items: str


def insert_planned(
    connection: sa.Connection, rows: Sequence[PlannedRow], *, now: datetime
) -> dict[int, int]:
    """Insert the rows that are not there yet; the delivery id created per subscriber."""
    if not rows:
        return {}
    values = [
        {
            "subscriber_id": r.subscriber_id,
            "edition": r.edition,
            "kind": DeliveryKind.DIGEST.value,
            "status": DeliveryStatus.PENDING.value,
            "message_id": r.message_id,
            "to_address": r.to_address,
            "covers_until": now,
            "paper_count": r.paper_count,
            "more_count": r.more_count,
            "attempts": 0,
            "next_attempt_at": now,
            "created_at": now,
            "items": r.items,
        }
        for r in rows
    ]
    if connection.dialect.name == "postgresql":
        return _copied(connection, values)
    statement = (
        sqlite_insert(Delivery.__table__)  # type: ignore[attr-defined]
        .on_conflict_do_nothing(index_elements=["subscriber_id", "edition"])
        .returning(Delivery.id, Delivery.subscriber_id)
    )
    return {sid: did for did, sid in connection.execute(statement, values)}


def _copied(connection: sa.Connection, values: list[dict[str, object]]) -> dict[int, int]:
    columns = ", ".join(values[0])
    cursor = connection.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
    # Private to the session, with the ledger's column types; emptied at commit, and
    # after each batch, so a batch never sees the previous one's rows.
    cursor.execute(
        "CREATE TEMPORARY TABLE IF NOT EXISTS planned_rows ON COMMIT DELETE ROWS"
        f" AS SELECT {columns} FROM deliveries WITH NO DATA"
    )
    with cursor.copy(f"COPY planned_rows ({columns}) FROM STDIN") as copy:
        for row in values:
            copy.write_row(tuple(row.values()))
    cursor.execute(
        f"INSERT INTO deliveries ({columns}) SELECT {columns} FROM planned_rows"
        " ON CONFLICT (subscriber_id, edition) DO NOTHING RETURNING id, subscriber_id"
    )
    found = {sid: did for did, sid in cursor.fetchall()}
    cursor.execute("DELETE FROM planned_rows")
    return found

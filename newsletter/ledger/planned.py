"""Planned digests into the ledger: one row per (subscriber, edition), in bulk.

ON CONFLICT DO NOTHING on (subscriber, edition): a digest another planner inserted
first is skipped, not an error that would undo the whole batch; the rows inserted
come back with their ids.

On PostgreSQL the batch is loaded with COPY into a temporary table, then moved over
with one INSERT ... SELECT: the multi-row VALUES form (what SQLite gets) has a dozen
parameters per row, which the driver parses and adapts one by one (263 µs a row with
a 1 kB snapshot, against 57 µs this way, measured on this machine; as arrays to
unnest, 516 µs: psycopg adapts a list of long strings slowly). As the importer does.
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


# Private to the session; emptied at commit, and by us after each batch, so a batch
# never sees the previous one's rows within one transaction.
_STAGING = (
    "CREATE TEMPORARY TABLE IF NOT EXISTS planned_rows (subscriber_id integer, edition date,"
    " message_id text, to_address text, paper_count integer, more_count integer, items text)"
    " ON COMMIT DELETE ROWS"
)
_MOVE = (
    "INSERT INTO deliveries (subscriber_id, edition, kind, status, message_id, to_address,"
    " covers_until, paper_count, more_count, attempts, next_attempt_at, created_at, items)"
    " SELECT subscriber_id, edition, %(kind)s, %(status)s, message_id, to_address, %(now)s,"
    " paper_count, more_count, 0, %(now)s, %(now)s, items FROM planned_rows"
    " ON CONFLICT (subscriber_id, edition) DO NOTHING RETURNING id, subscriber_id"
)


def insert_planned(
    connection: sa.Connection, rows: Sequence[PlannedRow], *, now: datetime
) -> dict[int, int]:
    """Insert the rows that are not there yet; the delivery id created per subscriber."""
    if not rows:
        return {}
    if connection.dialect.name == "postgresql":
        return _copied(connection, rows, now=now)
    statement = (
        sqlite_insert(Delivery.__table__)  # type: ignore[attr-defined]
        .on_conflict_do_nothing(index_elements=["subscriber_id", "edition"])
        .returning(Delivery.id, Delivery.subscriber_id)
    )
    values = [
        {
            "subscriber_id": r.subscriber_id,
            "edition": r.edition,
            "status": DeliveryStatus.PENDING,
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
    found = connection.execute(statement, values)
    return {sid: did for did, sid in found}


def _copied(
    connection: sa.Connection, rows: Sequence[PlannedRow], *, now: datetime
) -> dict[int, int]:
    cursor = connection.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
    cursor.execute(_STAGING)
    columns = "subscriber_id, edition, message_id, to_address, paper_count, more_count, items"
    with cursor.copy(f"COPY planned_rows ({columns}) FROM STDIN") as copy:
        for r in rows:
            copy.write_row(
                (r.subscriber_id, r.edition, r.message_id, r.to_address, r.paper_count,
                 r.more_count, r.items)
            )  # fmt: skip
    params = {"kind": DeliveryKind.DIGEST.value, "status": DeliveryStatus.PENDING.value}
    cursor.execute(_MOVE, params | {"now": now})
    found = {sid: did for did, sid in cursor.fetchall()}
    cursor.execute("DELETE FROM planned_rows")
    return found

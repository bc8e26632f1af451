"""Claiming due rows: pending ones whose time has come, and sending ones whose lease
ran out (their worker died mid-send). A claim sets a lease; since a row is rendered
from what the ledger recorded, with the Message-ID chosen at planning, a resend after
a crash is the same message. A live worker renews the leases of the rows it holds
(``renew``), so a batch that takes longer than one lease (a slow relay, a low send
rate) is never taken over while it is still being sent."""

from __future__ import annotations

import json
from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlmodel import select

from newsletter.db import session_scope
from newsletter.events import EventKind
from newsletter.models import Delivery, DeliveryStatus, Event

LEASE = timedelta(minutes=5)

# What rebuilding a job needs of a row (ledger.jobs reads them by name).
LEDGER_COLUMNS = (
    Delivery.id,
    Delivery.subscriber_id,
    Delivery.to_address,
    Delivery.edition,
    Delivery.more_count,
    Delivery.message_id,
    Delivery.created_at,
    Delivery.snapshot_id,
    Delivery.kind,
)


def claim(
    *,
    engine: sa.Engine,
    now: datetime,
    limit: int,
    subscriber_id: int | None = None,
    lease: timedelta = LEASE,
) -> list[int]:
    """Take up to ``limit`` due rows; their ids, in order."""
    rows = claim_rows(engine=engine, now=now, limit=limit, subscriber_id=subscriber_id, lease=lease)
    return sorted(r.id for r in rows)


def claim_rows(
    *, engine: sa.Engine, now: datetime, limit: int, subscriber_id: int | None, lease: timedelta
) -> list[sa.Row[tuple[object, ...]]]:
    """``claim``, handing back ``LEDGER_COLUMNS`` of each claimed row."""
    with session_scope(engine=engine) as session:
        due = sa.or_(
            sa.and_(Delivery.status == DeliveryStatus.PENDING, Delivery.next_attempt_at <= now),
            sa.and_(Delivery.status == DeliveryStatus.SENDING, Delivery.lease_until < now),  # type: ignore[operator]
        )
        if subscriber_id is not None:
            due = sa.and_(due, Delivery.subscriber_id == subscriber_id)
        # No ORDER BY: it would make every claim sort the whole backlog to take its first
        # `limit` (quadratic over a big send); the index hands out due rows oldest first.
        query = select(Delivery.id).where(due).limit(limit)
        claim_them = sa.update(Delivery).values(
            status=DeliveryStatus.SENDING, lease_until=now + lease
        )
        if session.get_bind().dialect.name == "sqlite":
            # One statement, so the choice is made under SQLite's write lock: worker
            # processes on one file take turns instead of picking the same rows.
            return list(
                session.execute(
                    claim_them.where(Delivery.id.in_(query.scalar_subquery())).returning(  # type: ignore[union-attr]
                        *LEDGER_COLUMNS
                    )
                )
            )
        # PostgreSQL: rows another worker holds are skipped, not waited for, so any
        # number of workers share the queue.
        ids = list(session.exec(query.with_for_update(skip_locked=True)))
        if not ids:
            return []
        # The guard repeats ``due`` so a row another worker claimed in between is not taken twice.
        return list(
            session.execute(
                claim_them.where(Delivery.id.in_(ids), due).returning(*LEDGER_COLUMNS)  # type: ignore[union-attr]
            )
        )


def expire(
    *, engine: sa.Engine, now: datetime, deadline: timedelta, subscriber_id: int | None = None
) -> list[sa.Row[tuple[int, str, int]]]:
    """Give up on the rows due for longer than ``deadline`` (since planning, their last
    retry's time or the operator's requeue): failed, and their (id, address,
    subscriber). A row taken back after every lease (its worker killed each time it
    sends it, out of memory, say) counts no attempt and would be taken forever; a
    digest left over from an outage longer than the deadline is no news. Retries are
    due within the deadline of planning (``record_failure``), so this gives up on no
    row a worker could still have sent in time."""
    with session_scope(engine=engine) as session:
        due = sa.and_(
            Delivery.next_attempt_at < now - deadline,
            sa.or_(
                sa.and_(Delivery.status == DeliveryStatus.PENDING, Delivery.next_attempt_at <= now),
                sa.and_(Delivery.status == DeliveryStatus.SENDING, Delivery.lease_until < now),  # type: ignore[operator]
            ),
        )
        if subscriber_id is not None:
            due = sa.and_(due, Delivery.subscriber_id == subscriber_id)
        # Asked before every round of every worker, and nearly always none: a read
        # first, so no write (SQLite's one lock) is taken for nothing.
        if session.exec(select(Delivery.id).where(due).limit(1)).first() is None:
            return []
        hours = deadline.total_seconds() / 3600
        gone = list(
            session.execute(
                sa.update(Delivery)
                .where(due)
                .values(
                    status=DeliveryStatus.FAILED,
                    lease_until=None,
                    last_error=f"not sent within {hours:g} hours of being due",
                )
                .returning(Delivery.id, Delivery.to_address, Delivery.subscriber_id)
            )
        )
        session.add_all(
            Event(at=now, kind=EventKind.FAILED, subscriber_id=sid, delivery_id=did,
                  detail=json.dumps({"why": "past the deadline", "hours": hours}))
            for did, _, sid in gone
        )  # fmt: skip
        return gone  # type: ignore[return-value]


def renew(*, engine: sa.Engine, ids: list[int], held_until: datetime, until: datetime) -> set[int]:
    """Extend to ``until`` the lease of those of ``ids`` still held with ``held_until``
    (still sending, under the lease this worker set); returns them. A row missing from
    the answer was recorded, or taken by another worker after its lease ran out."""
    if not ids:
        return set()
    with session_scope(engine=engine) as session:
        kept = session.execute(
            sa.update(Delivery)
            .where(
                Delivery.id.in_(ids),  # type: ignore[union-attr]
                Delivery.status == DeliveryStatus.SENDING,
                Delivery.lease_until == held_until,
            )
            .values(lease_until=until)
            .returning(Delivery.id)
        )
        return {int(row[0]) for row in kept}

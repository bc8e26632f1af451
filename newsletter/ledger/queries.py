"""What an operator asks of the ledger, and the one admin action on it (requeue)."""

from __future__ import annotations

import json
from datetime import datetime

import sqlalchemy as sa
from sqlmodel import select

from newsletter.db import session_scope
from newsletter.events import EventKind
from newsletter.models import Delivery, DeliveryStatus, Event, Subscriber, SubscriberStatus
from newsletter.subscribers import reactivate


def stats(*, engine: sa.Engine) -> dict[str, int]:
    """Where every digest stands, bounces, subscribers by state, unsubscribes."""
    with session_scope(engine=engine) as session:
        by_status = dict(
            session.exec(
                select(Delivery.status, sa.func.count()).group_by(Delivery.status)  # type: ignore[call-overload]
            ).all()
        )
        retrying = session.exec(
            select(sa.func.count())
            .select_from(Delivery)
            .where(Delivery.status == DeliveryStatus.PENDING, Delivery.attempts > 0)
        ).one()
        events = dict(
            session.exec(
                select(Event.kind, sa.func.count())  # type: ignore[call-overload]
                .where(
                    Event.kind.in_(  # type: ignore[attr-defined]
                        [EventKind.HARD_BOUNCE, EventKind.SOFT_BOUNCE, EventKind.COMPLAINT]
                    )
                )
                .group_by(Event.kind)
            ).all()
        )
        subscribers = dict(
            session.exec(
                select(Subscriber.status, sa.func.count()).group_by(Subscriber.status)  # type: ignore[call-overload]
            ).all()
        )
        unsubscribes = session.exec(
            select(sa.func.count()).select_from(Event).where(Event.kind == EventKind.UNSUBSCRIBED)
        ).one()
    return {
        "pending": by_status.get(DeliveryStatus.PENDING, 0) - retrying,
        "retrying": retrying,
        "sending": by_status.get(DeliveryStatus.SENDING, 0),
        "sent": by_status.get(DeliveryStatus.SENT, 0),
        "failed": by_status.get(DeliveryStatus.FAILED, 0),
        "cancelled": by_status.get(DeliveryStatus.CANCELLED, 0),
        "hard_bounces": events.get(EventKind.HARD_BOUNCE, 0),
        "soft_bounces": events.get(EventKind.SOFT_BOUNCE, 0),
        "complaints": events.get(EventKind.COMPLAINT, 0),
        "subscribers_active": subscribers.get(SubscriberStatus.ACTIVE, 0),
        "subscribers_suppressed": subscribers.get(SubscriberStatus.SUPPRESSED, 0),
        "subscribers_unsubscribed": subscribers.get(SubscriberStatus.UNSUBSCRIBED, 0),
        "unsubscribes": unsubscribes,
    }


def unsubscribes_by_edition(*, engine: sa.Engine) -> dict[str, int]:
    """Unsubscribes per digest edition (the digest whose link was used; "no digest" for
    the rest: an operator's removal, a link from a preview)."""
    with session_scope(engine=engine) as session:
        rows = session.exec(
            select(Delivery.edition, sa.func.count())  # type: ignore[call-overload]
            .select_from(Event)
            .join(Delivery, Delivery.id == Event.delivery_id, isouter=True)  # type: ignore[arg-type]
            .where(Event.kind == EventKind.UNSUBSCRIBED)
            .group_by(Delivery.edition)
        ).all()
    return {(str(edition) if edition else "no digest"): n for edition, n in sorted(rows, key=str)}


def retry_failed(*, engine: sa.Engine, now: datetime, subscriber_id: int | None = None) -> int:
    """Requeue failed digests an operator has fixed the cause of, and reactivate their
    suppressed subscribers (otherwise the retry would only be cancelled)."""
    with session_scope(engine=engine) as session:
        query = select(Delivery).where(Delivery.status == DeliveryStatus.FAILED)
        if subscriber_id is not None:
            query = query.where(Delivery.subscriber_id == subscriber_id)
        rows = list(session.exec(query))
        for row in rows:
            row.status, row.next_attempt_at, row.lease_until = DeliveryStatus.PENDING, now, None
            session.add(
                Event(
                    at=now,
                    kind=EventKind.REQUEUED,
                    subscriber_id=row.subscriber_id,
                    delivery_id=row.id,
                    detail=json.dumps({"by": "operator"}),
                )
            )
            subscriber = session.get(Subscriber, row.subscriber_id)
            if subscriber is not None and subscriber.status == SubscriberStatus.SUPPRESSED:
                reactivate(session=session, row=subscriber, now=now, by="operator")
        return len(rows)

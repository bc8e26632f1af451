"""Recording what became of each attempt, and what it means for the subscriber.

Transient failures are retried with backoff until ``deadline_hours`` after
planning; past that the digest fails, as a soft bounce when the recipient's server
refused it (mailbox full, greylisting), and ``soft_bounce_limit`` of those in a row
suppress the subscriber; a relay that stayed down fails the digest and nothing more.
A permanent failure that is the recipient's fault (5xx to RCPT) is a hard bounce:
suppressed at once. Any other permanent failure (the message refused, or a row that
cannot be rendered) fails that digest and leaves the subscriber as they are.
"""

from __future__ import annotations

import enum
import json
import random
from collections.abc import Iterable
from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlmodel import Session, select

from newsletter.config import RetryPolicy
from newsletter.db import session_scope
from newsletter.errors import DeliveryError, TransientDeliveryError
from newsletter.events import EventKind
from newsletter.models import (
    Delivery,
    DeliveryStatus,
    Event,
    Subscriber,
    SubscriberStatus,
    UTCDateTime,
)
from newsletter.text import one_line


class OutcomeStatus(enum.StrEnum):
    """What one attempt came to (a ledger status, or "retrying": pending again)."""

    SENT = "sent"
    RETRYING = "retrying"
    FAILED = "failed"
    CANCELLED = "cancelled"


_AS_RECORDED = {
    DeliveryStatus.SENT: OutcomeStatus.SENT,
    DeliveryStatus.PENDING: OutcomeStatus.RETRYING,
    DeliveryStatus.FAILED: OutcomeStatus.FAILED,
    DeliveryStatus.CANCELLED: OutcomeStatus.CANCELLED,
}  # a row still sending is another worker's: retrying, as far as this one can say


def backoff(*, attempts: int, policy: RetryPolicy, rng: random.Random | None = None) -> timedelta:
    """Exponential backoff with jitter: base * 2^(attempts-1), capped, then drawn from
    its upper half, so retries of many digests spread out instead of arriving together."""
    ceiling = min(policy.max_seconds, policy.base_seconds * 2 ** min(attempts - 1, 60))
    return timedelta(seconds=(rng or random).uniform(ceiling / 2, ceiling))


def record_sent(*, engine: sa.Engine, deliveries: Iterable[tuple[int, int]], now: datetime) -> None:
    """These (delivery, subscriber) pairs were accepted: two statements for any number,
    on a plain connection (every 32 messages: the ORM session's bookkeeping for two bulk
    updates was a tenth of a delivery process's time). Whatever the row's state and
    whoever holds it now: the relay took the message, so it is sent."""
    pairs = list(deliveries)
    if not pairs:
        return
    with engine.begin() as connection:
        connection.execute(
            sa.update(Delivery)
            .where(Delivery.id.in_([d for d, _ in pairs]))  # type: ignore[union-attr]
            .values(
                status=DeliveryStatus.SENT,
                sent_at=now,
                attempts=Delivery.attempts + 1,
                last_error=None,
                lease_until=None,
            )
        )
        connection.execute(  # "soft bounces in a row": a delivered digest resets the count
            sa.update(Subscriber)
            .where(
                Subscriber.id.in_({s for _, s in pairs}),  # type: ignore[attr-defined]
                Subscriber.soft_bounces > 0,
            )
            .values(soft_bounces=0)
        )


def record_cancelled(*, engine: sa.Engine, delivery_ids: Iterable[int], now: datetime) -> None:
    """The subscriber left before these went out."""
    ids = list(delivery_ids)
    if not ids:
        return
    with session_scope(engine=engine) as session:
        session.execute(
            sa.update(Delivery)
            .where(Delivery.id.in_(ids))  # type: ignore[union-attr]
            .values(
                status=DeliveryStatus.CANCELLED,
                last_error="subscriber is no longer active",
                lease_until=None,
            )
        )


def _retrying_since(session: Session, row: Delivery) -> datetime:
    """When the digest's retries began: planned, or the operator's latest requeue (a
    digest requeued after its deadline gets a deadline of its own, not one try)."""
    requeued = session.exec(
        select(sa.type_coerce(sa.func.max(Event.at), UTCDateTime())).where(
            Event.delivery_id == row.id, Event.kind == EventKind.REQUEUED
        )
    ).one()
    return max(row.created_at, requeued) if requeued is not None else row.created_at


def delivery_event(
    session: Session, *, kind: EventKind, row: Delivery, now: datetime, **detail: object
) -> None:
    session.add(
        Event(
            at=now,
            kind=kind,
            subscriber_id=row.subscriber_id,
            delivery_id=row.id,
            detail=json.dumps(detail),
        )
    )


def suppress(
    session: Session, *, subscriber: Subscriber | None, row: Delivery, now: datetime, why: str
) -> None:
    if subscriber is None or subscriber.status != SubscriberStatus.ACTIVE:
        return
    subscriber.status, subscriber.updated_at = SubscriberStatus.SUPPRESSED, now
    delivery_event(session, kind=EventKind.SUPPRESSED, row=row, now=now, reason=why)
    # Counted with the unsubscribes too (source "bounce"), against the digest that
    # bounced: an operator reading unsubscribes per edition sees everyone the list lost.
    delivery_event(session, kind=EventKind.UNSUBSCRIBED, row=row, now=now, source="bounce")


def record_failure(
    *,
    engine: sa.Engine,
    delivery_id: int,
    held: datetime,
    now: datetime,
    error: DeliveryError,
    policy: RetryPolicy,
) -> OutcomeStatus:
    """Record one failed attempt: retrying, or failed (and maybe a bounce). ``held``:
    the lease this worker holds the row by."""
    with session_scope(engine=engine) as session:
        row = session.get(Delivery, delivery_id)
        if row is None:  # the subscriber was removed meanwhile, ledger and all
            return OutcomeStatus.CANCELLED
        if row.status != DeliveryStatus.SENDING or row.lease_until != held:
            # Another worker took the row after this one's lease ran out: what it
            # records stands (a retry from here would send it once more).
            return _AS_RECORDED.get(row.status, OutcomeStatus.RETRYING)
        subscriber = session.get(Subscriber, row.subscriber_id)
        row.lease_until = None
        row.attempts += 1
        # A relay's reply is whatever bytes it sent (a Latin-1 letter arrives as a lone
        # surrogate, which no database encodes; PostgreSQL refuses a NUL): stored as
        # one line of text, or the write fails and the batch with it, every lease.
        row.last_error = one_line(str(error))
        detail = {"code": error.code, "text": one_line(error.text), "attempt": row.attempts}
        if isinstance(error, TransientDeliveryError):
            retry_at = now + backoff(attempts=row.attempts, policy=policy)
            if retry_at <= _retrying_since(session, row) + timedelta(hours=policy.deadline_hours):
                row.status, row.next_attempt_at = DeliveryStatus.PENDING, retry_at
                delivery_event(session, kind=EventKind.RETRY, row=row, now=now, **detail)
                return OutcomeStatus.RETRYING
            row.status = DeliveryStatus.FAILED
            if not error.recipient_fault:
                # The relay, not the mailbox, kept refusing (down, login, MAIL FROM): the
                # digest is lost, the subscriber did nothing wrong and stays as they are.
                delivery_event(session, kind=EventKind.FAILED, row=row, now=now, **detail)
                return OutcomeStatus.FAILED
            delivery_event(session, kind=EventKind.SOFT_BOUNCE, row=row, now=now, **detail)
            if subscriber is not None:
                subscriber.soft_bounces += 1
                if subscriber.soft_bounces >= policy.soft_bounce_limit:
                    suppress(session, subscriber=subscriber, row=row, now=now, why="soft bounces")
            return OutcomeStatus.FAILED
        row.status = DeliveryStatus.FAILED
        if error.recipient_fault:
            delivery_event(session, kind=EventKind.HARD_BOUNCE, row=row, now=now, **detail)
            suppress(session, subscriber=subscriber, row=row, now=now, why="hard bounce")
        else:
            delivery_event(session, kind=EventKind.FAILED, row=row, now=now, **detail)
        return OutcomeStatus.FAILED

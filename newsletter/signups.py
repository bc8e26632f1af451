"""Double opt-in: a web sign-up is held, confirmed by a link, or forgotten.

Three steps, each its own transaction:

1. ``hold`` (the web request): the sign-up is stored as it came, whatever the
   address. One insert on every path, so the answer takes as long for an active
   address as for a new one, and says the same.
2. ``queue_confirmations`` (right after the request, and by every delivery loop in
   case the process died in between): an address already active or suppressed
   gets nothing; any other gets a confirmation mail on the ledger. A new address
   gets a ``pending`` subscriber row with no name and no topics: the stranger who
   typed the form decides nothing stored about anyone.
3. ``confirm`` (the link, by POST): what the sign-up asked for is applied and the
   subscriber becomes active. ``expire`` forgets sign-ups not confirmed in time,
   and only the rows they created: an unsubscribed person who was signed up by
   someone else keeps their row, their name, their topics and their history.
"""

from __future__ import annotations

import json
import logging
import secrets
from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlmodel import Session, select

from newsletter.db import session_scope
from newsletter.events import EventKind
from newsletter.models import (
    Delivery,
    DeliveryKind,
    SignUp,
    Subscriber,
    SubscriberStatus,
)
from newsletter.subscribers import NewSubscriber, event, new_row, replace_topics

log = logging.getLogger(__name__)

CONFIRM_RESEND_AFTER = timedelta(minutes=10)  # a second sign-up sooner sends nothing more
_QUEUE_BATCH = 100


def hold(*, session: Session, subscriber: NewSubscriber, now: datetime) -> None:
    """Keep a validated web sign-up until ``queue_confirmations`` looks at it."""
    session.add(
        SignUp(
            email=subscriber.email,
            name=subscriber.name,
            topics=json.dumps(list(subscriber.topics)),
            timezone=subscriber.timezone,
            send_at=subscriber.send_at,
            created_at=now,
        )
    )


def queue_confirmations(*, engine: sa.Engine, now: datetime, message_id_domain: str) -> int:
    """Turn held sign-ups into confirmation mail on the ledger; returns how many were
    queued. Safe to run in several processes at once: each sign-up is taken by one."""
    queued, after = 0, 0
    while True:
        with session_scope(engine=engine) as session:
            ids = list(
                session.exec(
                    select(SignUp.id)
                    .where(SignUp.processed_at.is_(None), SignUp.id > after)  # type: ignore[union-attr,arg-type,operator]
                    .order_by(SignUp.id)
                    .limit(_QUEUE_BATCH)
                )
            )
        if ids:  # onwards: one that stays unprocessed (refused twice) is not read again
            after = ids[-1]
        for signup_id in ids:
            queued += _queue_retrying(
                engine, signup_id=signup_id, now=now, domain=message_id_domain
            )
        if len(ids) < _QUEUE_BATCH:
            return queued


def _queue_retrying(engine: sa.Engine, *, signup_id: int, now: datetime, domain: str) -> int:
    """``_queue_one``, once more when another process made the same new address's
    subscriber row at the same moment (the unique address refuses the second): the
    second try finds the row. One sign-up that still fails waits for the next round;
    it never stops the others, nor the delivery round that queues them."""
    for attempt in range(2):
        try:
            with session_scope(engine=engine) as session:
                return _queue_one(session, signup_id=signup_id, now=now, domain=domain)
        except sa.exc.IntegrityError as exc:
            if attempt:
                log.warning("cannot queue a confirmation: %s", type(exc).__name__,
                            extra={"signup_id": signup_id})  # fmt: skip
    return 0


def _queue_one(session: Session, *, signup_id: int, now: datetime, domain: str) -> int:
    # Taking the sign-up is the first write: a second process finds it taken.
    taken = session.execute(
        sa.update(SignUp)
        .where(SignUp.id == signup_id, SignUp.processed_at.is_(None))  # type: ignore[arg-type,union-attr]
        .values(processed_at=now)
    )
    if taken.rowcount != 1:  # type: ignore[attr-defined]
        return 0
    signup = session.get(SignUp, signup_id)
    assert signup is not None
    row = session.exec(select(Subscriber).where(Subscriber.email == signup.email)).first()
    if row is not None and row.status in (SubscriberStatus.ACTIVE, SubscriberStatus.SUPPRESSED):
        session.delete(signup)  # nothing to confirm, and nothing to tell the stranger
        return 0
    if row is None:
        row = new_row(session=session, email=signup.email, status=SubscriberStatus.PENDING, now=now)
    else:
        recent = session.exec(
            select(Delivery.id).where(
                Delivery.subscriber_id == row.id,
                Delivery.kind == DeliveryKind.CONFIRM,
                Delivery.created_at > now - CONFIRM_RESEND_AFTER,
            )
        ).first()
        if recent is not None:  # one confirmation per ten minutes is plenty
            session.delete(signup)
            return 0
    mail = Delivery(
        subscriber_id=row.id,  # type: ignore[arg-type]
        kind=DeliveryKind.CONFIRM,
        edition=None,
        message_id=f"<confirm.{secrets.token_hex(12)}@{domain}>",
        to_address=row.email,
        covers_until=now,
        next_attempt_at=now,
        created_at=now,
    )
    session.add(mail)
    session.flush()
    signup.subscriber_id, signup.delivery_id = row.id, mail.id
    session.add(signup)
    session.add(event(kind=EventKind.SIGNED_UP, subscriber_id=row.id, now=now))
    return 1


def confirm(
    *, session: Session, subscriber_id: int, delivery_id: int, now: datetime
) -> Subscriber | None:
    """Apply the sign-up the confirmation mail ``delivery_id`` was sent for; None when
    there is no such sign-up (expired, or never). Idempotent: a second click finds the
    subscriber active and changes nothing."""
    row = session.get(Subscriber, subscriber_id)
    if row is None:
        return None
    signup = session.exec(
        select(SignUp).where(SignUp.delivery_id == delivery_id, SignUp.subscriber_id == row.id)
    ).first()
    if signup is None:
        mail = session.get(Delivery, delivery_id)
        confirmed_before = (
            mail is not None
            and mail.kind == DeliveryKind.CONFIRM
            and mail.subscriber_id == row.id
            and row.status == SubscriberStatus.ACTIVE
        )
        return row if confirmed_before else None
    row.name, row.timezone, row.send_at = signup.name, signup.timezone, signup.send_at
    replace_topics(session=session, subscriber_id=row.id, topics=json.loads(signup.topics), now=now)  # type: ignore[arg-type]
    if row.status != SubscriberStatus.ACTIVE:
        row.status = SubscriberStatus.ACTIVE
        session.add(event(kind=EventKind.CONFIRMED, subscriber_id=row.id, now=now))
    row.updated_at = now
    session.add(row)
    session.execute(sa.delete(SignUp).where(SignUp.subscriber_id == row.id))  # type: ignore[arg-type]
    return row


def expire(*, session: Session, now: datetime, hours: float) -> int:
    """Forget sign-ups not confirmed within ``hours``, and the pending subscriber rows
    only they created; returns how many sign-ups went."""
    cutoff = now - timedelta(hours=hours)
    old = list(session.exec(select(SignUp).where(SignUp.created_at < cutoff)))
    for signup in old:
        session.delete(signup)
    session.flush()
    waiting = select(SignUp.id).where(SignUp.subscriber_id == Subscriber.id).exists()
    orphans = session.exec(
        select(Subscriber).where(
            Subscriber.status == SubscriberStatus.PENDING,
            Subscriber.updated_at < cutoff,
            ~waiting,
        )
    )
    for row in orphans:
        session.add(event(kind=EventKind.EXPIRED, subscriber_id=row.id, now=now))
        session.delete(row)  # its confirmation mail goes with it (ON DELETE CASCADE)
    return len(old)

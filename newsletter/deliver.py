"""Delivery: claim due rows, render them from the ledger, hand them to a backend, record.

States: pending -> sending -> sent | failed (| cancelled when the subscriber
left before it went out). A claim sets a lease; a row whose lease ran out
(its worker died) is claimable again, and since the bytes are rendered from
what the ledger recorded, with the Message-ID chosen at planning, a resend is
the same message.
"""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlmodel import Session, select

from newsletter import render
from newsletter.backends.base import EmailBackend, OutgoingMessage
from newsletter.config import Settings
from newsletter.db import session_scope
from newsletter.errors import DeliveryError, PermanentDeliveryError, TransientDeliveryError
from newsletter.links import Links
from newsletter.models import (
    Delivery,
    DeliveryItem,
    DeliveryStatus,
    Event,
    Paper,
    Subscriber,
    SubscriberStatus,
)

LEASE = timedelta(minutes=5)
RETRY_BASE = timedelta(seconds=60)
RETRY_MAX = timedelta(hours=1)


@dataclass(frozen=True, slots=True)
class Outcome:
    delivery_id: int
    email: str
    status: str
    error: str | None = None


@dataclass(slots=True)
class DeliverReport:
    outcomes: list[Outcome] = field(default_factory=list)

    def count(self, status: str) -> int:
        return sum(1 for o in self.outcomes if o.status == status)


def digest_paper(*, paper: Paper, item: DeliveryItem) -> render.DigestPaper:
    return render.DigestPaper(
        title=paper.title,
        abstract=paper.abstract,
        authors=paper.authors,
        organization=paper.organization,
        published_on=paper.published_on,
        upvotes=paper.upvotes,
        matched_topics=tuple(json.loads(item.matched_topics)),
        matched_terms=tuple(json.loads(item.matched_terms)),
    )


def load_digest(*, session: Session, delivery: Delivery, links: Links) -> render.Digest:
    """Rebuild a digest from the ledger alone: the same rows give the same bytes."""
    subscriber = session.get(Subscriber, delivery.subscriber_id)
    rows = session.exec(
        select(DeliveryItem, Paper)
        .join(Paper, Paper.id == DeliveryItem.paper_id)  # type: ignore[arg-type]
        .where(DeliveryItem.delivery_id == delivery.id)
        .order_by(DeliveryItem.position)
    ).all()
    return render.Digest(
        to_address=delivery.to_address,
        to_name=subscriber.name if subscriber else None,
        edition=delivery.edition,
        papers=tuple(digest_paper(paper=p, item=i) for i, p in rows),
        more_count=delivery.more_count,
        message_id=delivery.message_id,
        date=delivery.created_at,
        unsubscribe_url=links.unsubscribe(subscriber_id=delivery.subscriber_id),
        preferences_url=links.preferences(subscriber_id=delivery.subscriber_id),
        archive_url=links.archive(delivery_id=delivery.id),  # type: ignore[arg-type]
    )


def outgoing(*, digest: render.Digest, sender: render.Sender) -> OutgoingMessage:
    rendered = render.render_digest(digest=digest, sender=sender)
    return OutgoingMessage(
        message_id=digest.message_id,
        sender=sender.address,
        recipients=(digest.to_address,),
        data=render.to_mime_bytes(rendered=rendered),
        edition=digest.edition,
        html=rendered.html,
    )


def claim(
    *, engine: sa.Engine, now: datetime, limit: int, subscriber_id: int | None = None
) -> list[int]:
    """Take up to ``limit`` due rows: pending ones whose time has come, and
    sending ones whose lease expired (their worker died mid-send)."""
    with session_scope(engine=engine) as session:
        due = sa.or_(
            sa.and_(Delivery.status == DeliveryStatus.PENDING, Delivery.next_attempt_at <= now),
            sa.and_(Delivery.status == DeliveryStatus.SENDING, Delivery.lease_until < now),  # type: ignore[operator]
        )
        if subscriber_id is not None:
            due = sa.and_(due, Delivery.subscriber_id == subscriber_id)
        ids = list(session.exec(select(Delivery.id).where(due).order_by(Delivery.id).limit(limit)))
        if not ids:
            return []
        # The guard repeats ``due`` so a row another worker claimed in between is not taken twice.
        result = session.execute(
            sa.update(Delivery)
            .where(Delivery.id.in_(ids), due)  # type: ignore[union-attr]
            .values(status=DeliveryStatus.SENDING, lease_until=now + LEASE)
            .returning(Delivery.id)
        )
        return sorted(r[0] for r in result)


def backoff(*, attempts: int, rng: random.Random | None = None) -> timedelta:
    """Exponential backoff with full jitter, capped."""
    ceiling = min(RETRY_MAX.total_seconds(), RETRY_BASE.total_seconds() * 2 ** (attempts - 1))
    return timedelta(seconds=(rng or random).uniform(ceiling / 2, ceiling))


def _finish(
    *,
    engine: sa.Engine,
    delivery_id: int,
    now: datetime,
    error: DeliveryError | None,
    cancelled: bool = False,
) -> str:
    with session_scope(engine=engine) as session:
        row = session.get(Delivery, delivery_id)
        assert row is not None
        row.attempts += 0 if cancelled else 1
        row.lease_until = None
        if cancelled:
            row.status, row.last_error = DeliveryStatus.CANCELLED, "subscriber is no longer active"
        elif error is None:
            row.status, row.sent_at, row.last_error = DeliveryStatus.SENT, now, None
        elif isinstance(error, TransientDeliveryError):
            row.status, row.last_error = DeliveryStatus.PENDING, str(error)
            row.next_attempt_at = now + backoff(attempts=row.attempts)
        else:
            row.status, row.last_error = DeliveryStatus.FAILED, str(error)
            session.add(
                Event(
                    at=now,
                    kind="delivery.failed",
                    subscriber_id=row.subscriber_id,
                    delivery_id=row.id,
                    detail=json.dumps({"error": str(error)}),
                )
            )
        return row.status


async def deliver_due(
    *,
    engine: sa.Engine,
    settings: Settings,
    backend: EmailBackend,
    links: Links,
    now: Callable[[], datetime],
    batch_size: int = 200,
    on_outcome: Callable[[Outcome], None] | None = None,
    subscriber_id: int | None = None,
) -> DeliverReport:
    """Send every due delivery once; returns when nothing due is left."""
    report = DeliverReport()
    sender = render.Sender(address=settings.from_address, name=settings.from_name or None)
    async with backend:
        while ids := claim(engine=engine, now=now(), limit=batch_size, subscriber_id=subscriber_id):
            for delivery_id in ids:
                outcome = await _deliver_one(
                    engine=engine,
                    delivery_id=delivery_id,
                    backend=backend,
                    links=links,
                    sender=sender,
                    now=now,
                )
                report.outcomes.append(outcome)
                if on_outcome is not None:
                    on_outcome(outcome)
            await asyncio.sleep(0)
    return report


async def _deliver_one(
    *,
    engine: sa.Engine,
    delivery_id: int,
    backend: EmailBackend,
    links: Links,
    sender: render.Sender,
    now: Callable[[], datetime],
) -> Outcome:
    with session_scope(engine=engine) as session:
        delivery = session.get(Delivery, delivery_id)
        assert delivery is not None
        subscriber = session.get(Subscriber, delivery.subscriber_id)
        active = subscriber is not None and subscriber.status == SubscriberStatus.ACTIVE
        message = None
        error: DeliveryError | None = None
        if active:
            try:
                message = outgoing(
                    digest=load_digest(session=session, delivery=delivery, links=links),
                    sender=sender,
                )
            except (render.RenderError, render.HeaderInjectionError) as exc:
                error = PermanentDeliveryError(f"cannot render: {exc}")
        email = delivery.to_address
    if not active:
        status = _finish(
            engine=engine, delivery_id=delivery_id, now=now(), error=None, cancelled=True
        )
        return Outcome(delivery_id, email, status, "subscriber is no longer active")
    if message is not None:
        try:
            await backend.send(message)
        except DeliveryError as exc:
            error = exc
    status = _finish(engine=engine, delivery_id=delivery_id, now=now(), error=error)
    return Outcome(delivery_id, email, status, str(error) if error else None)

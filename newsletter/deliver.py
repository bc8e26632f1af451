"""Delivery: claim due rows, render them from the ledger, hand them to a backend, record.

States: pending -> sending -> sent | failed (| cancelled when the subscriber
left before it went out). A claim sets a lease; a row whose lease ran out
(its worker died) is claimable again, and since the bytes are rendered from
what the ledger recorded, with the Message-ID chosen at planning, a resend is
the same message.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlmodel import Session, select

from newsletter import render, snapshot
from newsletter.backends.base import EmailBackend, OutgoingMessage
from newsletter.config import RetryPolicy, Settings
from newsletter.db import session_scope
from newsletter.errors import DeliveryError, PermanentDeliveryError, TransientDeliveryError
from newsletter.links import Links
from newsletter.models import (
    Delivery,
    DeliveryKind,
    DeliveryStatus,
    Event,
    Paper,
    Subscriber,
    SubscriberStatus,
)
from newsletter.signing import Signer, signer_for

LEASE = timedelta(minutes=5)


@dataclass(frozen=True, slots=True)
class Outcome:
    delivery_id: int
    email: str
    status: str
    error: str | None = None
    subscriber_id: int | None = None  # for logs: ids, not addresses


@dataclass(slots=True)
class DeliverReport:
    outcomes: list[Outcome] = field(default_factory=list)

    def count(self, status: str) -> int:
        return sum(1 for o in self.outcomes if o.status == status)


def digest_papers(
    *, items: tuple[snapshot.Item, ...], texts: dict[int, tuple[str, str]]
) -> tuple[render.DigestPaper, ...]:
    """A digest's papers to render: the ledger's snapshot, titles and abstracts by paper id."""
    try:
        return tuple(
            render.DigestPaper(
                *texts[i.paper_id],
                authors=i.authors,
                organization=i.organization,
                published_on=i.published_on,
                upvotes=i.upvotes,
                matched_topics=i.topics,
                matched_terms=i.terms,
            )
            for i in items
        )
    except KeyError as exc:
        raise snapshot.SnapshotError(f"deliveries.items: no paper {exc}") from None


# Across batches, per snapshot text: the same tuple of papers for every digest of one
# ranking, so the renderer's per-tuple cache hits from one batch to the next. Kept only
# while the papers' titles and abstracts are what they were.
_SHARED: dict[str, tuple[tuple[tuple[str, str], ...], tuple[render.DigestPaper, ...]]] = {}
_SHARED_MAX = 20_000


def _shared_papers(
    text: str, items: tuple[snapshot.Item, ...], texts: dict[int, tuple[str, str]]
) -> tuple[render.DigestPaper, ...]:
    try:
        shown = tuple(texts[i.paper_id] for i in items)
    except KeyError as exc:
        raise snapshot.SnapshotError(f"deliveries.items: no paper {exc}") from None
    entry = _SHARED.get(text)
    if entry is not None and entry[0] == shown:
        return entry[1]
    papers = digest_papers(items=items, texts=texts)
    if len(_SHARED) >= _SHARED_MAX:
        _SHARED.clear()
    _SHARED[text] = (shown, papers)
    return papers


@dataclass(frozen=True, slots=True)
class _Job:
    delivery_id: int
    subscriber_id: int
    email: str
    message: OutgoingMessage | None
    error: DeliveryError | None
    active: bool


@dataclass(frozen=True, slots=True)
class Loaded:
    delivery_id: int
    subscriber_id: int
    to_address: str
    active: bool  # still wanted: the subscriber is active (pending, for a confirmation)
    digest: render.Digest | None  # None when the ledger row cannot be read back
    problem: str | None = None  # why not
    confirmation: render.Confirmation | None = None  # a double opt-in mail, not a digest


# What rendering needs of a ledger row; a claim hands them back with the claimed ids.
_LEDGER_COLUMNS = (
    Delivery.id,
    Delivery.subscriber_id,
    Delivery.to_address,
    Delivery.edition,
    Delivery.more_count,
    Delivery.message_id,
    Delivery.created_at,
    Delivery.items,
    Delivery.kind,
)


def load_digests(*, session: Session, ids: list[int], links: Links) -> list[Loaded]:
    """Rebuild digests from the ledger alone, in three queries whatever the batch size:
    the same rows give the same bytes, so a resend is the same message."""
    rows = session.exec(select(*_LEDGER_COLUMNS).where(Delivery.id.in_(ids)))  # type: ignore[union-attr,call-overload]
    return _digests(session=session, deliveries=list(rows), links=links)


def _digests(
    *,
    session: Session,
    deliveries: list[sa.Row[tuple[object, ...]]],
    links: Links,
    confirm_hours: float = 48,
) -> list[Loaded]:
    """Digests from ledger rows (_LEDGER_COLUMNS): their subscribers and papers in two
    more queries."""
    subscribers = {
        sid: (status, name)
        for sid, status, name in session.exec(
            select(Subscriber.id, Subscriber.status, Subscriber.name).where(
                Subscriber.id.in_({d[1] for d in deliveries})  # type: ignore[union-attr]
            )
        )
    }
    decoded: dict[str, tuple[snapshot.Item, ...] | str] = {}
    for text in {d[7] for d in deliveries}:
        try:
            decoded[text] = snapshot.decode(text)
        except snapshot.SnapshotError as exc:
            decoded[text] = str(exc)
    wanted = {i.paper_id for items in decoded.values() if not isinstance(items, str) for i in items}
    texts = {
        pid: (title, abstract)
        for pid, title, abstract in session.exec(
            select(Paper.id, Paper.title, Paper.abstract).where(Paper.id.in_(wanted))  # type: ignore[union-attr]
        )
    }
    # One tuple of papers per distinct snapshot: digests of the same ranking share the
    # objects, which the renderer's caches then find by identity.
    papers: dict[str, tuple[render.DigestPaper, ...] | str] = {}
    for text, items in decoded.items():
        try:
            papers[text] = items if isinstance(items, str) else _shared_papers(text, items, texts)
        except snapshot.SnapshotError as exc:
            papers[text] = str(exc)
    loaded = []
    for delivery_id, sid, to_address, edition, more, message_id, created, text, kind in deliveries:
        status, name = subscribers.get(sid, (None, None))
        if kind == DeliveryKind.CONFIRM:
            confirmation = render.Confirmation(
                to_address=to_address,
                to_name=name,
                confirm_url=links.confirm(subscriber_id=sid, delivery_id=delivery_id),
                message_id=message_id,
                date=created,
                expires_hours=confirm_hours,
            )
            wanted = status == SubscriberStatus.PENDING
            loaded.append(Loaded(delivery_id, sid, to_address, wanted, None, None, confirmation))
            continue
        active = status == SubscriberStatus.ACTIVE
        shown = papers[text]
        if isinstance(shown, str):
            loaded.append(Loaded(delivery_id, sid, to_address, active, None, shown))
            continue
        digest = render.Digest(
            to_address=to_address,
            to_name=name,
            edition=edition,
            papers=shown,
            more_count=more,
            message_id=message_id,
            date=created,
            unsubscribe_url=links.unsubscribe(subscriber_id=sid, delivery_id=delivery_id),
            preferences_url=links.preferences(subscriber_id=sid),
            archive_url=links.archive(delivery_id=delivery_id),
        )
        loaded.append(Loaded(delivery_id, sid, to_address, active, digest))
    return loaded


def _prepare(
    *,
    engine: sa.Engine,
    rows: list[sa.Row[tuple[object, ...]]],
    links: Links,
    sender: render.Sender,
    signer: Signer | None = None,
    confirm_hours: float = 48,
) -> list[_Job]:
    """Load a claimed batch and render every digest in it that is still wanted."""
    with session_scope(engine=engine) as session:
        loaded = _digests(
            session=session, deliveries=rows, links=links, confirm_hours=confirm_hours
        )
    jobs = []
    for item in loaded:
        message, error = None, None
        if item.active and item.confirmation is not None:
            message = outgoing_confirmation(
                confirmation=item.confirmation, sender=sender, signer=signer
            )
        elif item.active and item.digest is None:
            error = PermanentDeliveryError(f"cannot render: {item.problem}")
        elif item.active and item.digest is not None:
            try:
                message = outgoing(digest=item.digest, sender=sender, signer=signer)
            except (render.RenderError, render.HeaderInjectionError) as exc:
                error = PermanentDeliveryError(f"cannot render: {exc}")
        jobs.append(
            _Job(
                item.delivery_id,
                item.subscriber_id,
                item.to_address,
                message,
                error,
                item.active,
            )
        )
    return jobs


def _record_sent(*, engine: sa.Engine, jobs: list[_Job], now: datetime) -> None:
    """The common case in two statements: these digests were accepted."""
    if not jobs:
        return
    with session_scope(engine=engine) as session:
        session.execute(
            sa.update(Delivery)
            .where(Delivery.id.in_([j.delivery_id for j in jobs]))  # type: ignore[union-attr]
            .values(
                status=DeliveryStatus.SENT,
                sent_at=now,
                attempts=Delivery.attempts + 1,
                last_error=None,
                lease_until=None,
            )
        )
        session.execute(  # "soft bounces in a row": a delivered digest resets the count
            sa.update(Subscriber)
            .where(
                Subscriber.id.in_({j.subscriber_id for j in jobs}),  # type: ignore[attr-defined]
                Subscriber.soft_bounces > 0,
            )
            .values(soft_bounces=0)
        )


def outgoing_confirmation(
    *, confirmation: render.Confirmation, sender: render.Sender, signer: Signer | None = None
) -> OutgoingMessage:
    rendered = render.render_confirmation(confirmation=confirmation, sender=sender)
    data = render.to_mime_bytes(rendered=rendered)
    return OutgoingMessage(
        message_id=confirmation.message_id,
        sender=sender.address,
        recipients=(confirmation.to_address,),
        data=data if signer is None else signer.sign(data),
        edition=confirmation.date.date(),
        html=rendered.html,
        crlf_only=True,
    )


def outgoing(
    *, digest: render.Digest, sender: render.Sender, signer: Signer | None = None
) -> OutgoingMessage:
    rendered = render.render_digest(digest=digest, sender=sender)
    data = render.to_mime_bytes(rendered=rendered)
    return OutgoingMessage(
        message_id=digest.message_id,
        sender=sender.address,
        recipients=(digest.to_address,),
        data=data if signer is None else signer.sign(data),
        edition=digest.edition,
        html=rendered.html,
        crlf_only=True,  # to_mime_bytes writes CRLF only
    )


def claim(
    *,
    engine: sa.Engine,
    now: datetime,
    limit: int,
    subscriber_id: int | None = None,
    lease: timedelta = LEASE,
) -> list[int]:
    """Take up to ``limit`` due rows: pending ones whose time has come, and
    sending ones whose lease expired (their worker died mid-send)."""
    rows = _claim_rows(
        engine=engine, now=now, limit=limit, subscriber_id=subscriber_id, lease=lease
    )
    return sorted(r[0] for r in rows)


def _claim_rows(
    *, engine: sa.Engine, now: datetime, limit: int, subscriber_id: int | None, lease: timedelta
) -> list[sa.Row[tuple[object, ...]]]:
    """``claim``, handing back what rendering needs of each row (_LEDGER_COLUMNS)."""
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
        claim_rows = sa.update(Delivery).values(
            status=DeliveryStatus.SENDING, lease_until=now + lease
        )
        if session.get_bind().dialect.name == "sqlite":
            # One statement, so the choice is made under SQLite's write lock: worker
            # processes on one file take turns instead of picking the same rows.
            return list(
                session.execute(
                    claim_rows.where(Delivery.id.in_(query.scalar_subquery())).returning(  # type: ignore[union-attr]
                        *_LEDGER_COLUMNS
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
                claim_rows.where(Delivery.id.in_(ids), due).returning(*_LEDGER_COLUMNS)  # type: ignore[union-attr]
            )
        )


def backoff(*, attempts: int, policy: RetryPolicy, rng: random.Random | None = None) -> timedelta:
    """Exponential backoff with jitter: base * 2^(attempts-1), capped, then drawn from
    its upper half, so retries of many digests spread out instead of arriving together."""
    ceiling = min(policy.max_seconds, policy.base_seconds * 2 ** min(attempts - 1, 60))
    return timedelta(seconds=(rng or random).uniform(ceiling / 2, ceiling))


def _event(session: Session, *, kind: str, row: Delivery, now: datetime, **detail: object) -> None:
    session.add(
        Event(
            at=now,
            kind=kind,
            subscriber_id=row.subscriber_id,
            delivery_id=row.id,
            detail=json.dumps(detail),
        )
    )


def _suppress(
    session: Session, *, subscriber: Subscriber | None, row: Delivery, now: datetime, why: str
) -> None:
    if subscriber is None or subscriber.status != SubscriberStatus.ACTIVE:
        return
    subscriber.status, subscriber.updated_at = SubscriberStatus.SUPPRESSED, now
    _event(session, kind="subscriber.suppressed", row=row, now=now, reason=why)
    # Counted with the unsubscribes too (source "bounce"), against the digest that
    # bounced: an operator reading unsubscribes per edition sees everyone the list lost.
    _event(session, kind=UNSUBSCRIBED_EVENT, row=row, now=now, source="bounce")


def record_outcome(
    *,
    engine: sa.Engine,
    delivery_id: int,
    now: datetime,
    error: DeliveryError | None,
    policy: RetryPolicy,
    cancelled: bool = False,
) -> str:
    """Record one attempt on the ledger, and what it means for the subscriber.

    Transient: retried with backoff until ``deadline_hours`` after planning;
    past that it fails as a soft bounce, and ``soft_bounce_limit`` of those in
    a row suppress the subscriber. Permanent and the recipient's fault (RCPT
    5xx): a hard bounce, the subscriber is suppressed at once. Permanent
    otherwise (the message refused): this digest fails, the subscriber stays.
    """
    with session_scope(engine=engine) as session:
        row = session.get(Delivery, delivery_id)
        assert row is not None
        subscriber = session.get(Subscriber, row.subscriber_id)
        row.lease_until = None
        if cancelled:
            row.status, row.last_error = DeliveryStatus.CANCELLED, "subscriber is no longer active"
            return row.status
        row.attempts += 1
        if error is None:
            row.status, row.sent_at, row.last_error = DeliveryStatus.SENT, now, None
            if subscriber is not None and subscriber.soft_bounces:
                subscriber.soft_bounces = 0  # "in a row": a delivered digest resets the count
            return row.status
        row.last_error = str(error)
        detail = {"code": error.code, "text": error.text, "attempt": row.attempts}
        if isinstance(error, TransientDeliveryError):
            retry_at = now + backoff(attempts=row.attempts, policy=policy)
            if retry_at <= row.created_at + timedelta(hours=policy.deadline_hours):
                row.status, row.next_attempt_at = DeliveryStatus.PENDING, retry_at
                _event(session, kind="delivery.retry", row=row, now=now, **detail)
                return "retrying"
            row.status = DeliveryStatus.FAILED
            _event(session, kind="bounce.soft", row=row, now=now, **detail)
            if subscriber is not None:
                subscriber.soft_bounces += 1
                if subscriber.soft_bounces >= policy.soft_bounce_limit:
                    _suppress(session, subscriber=subscriber, row=row, now=now, why="soft bounces")
            return row.status
        row.status = DeliveryStatus.FAILED
        if error.recipient_fault:
            _event(session, kind="bounce.hard", row=row, now=now, **detail)
            _suppress(session, subscriber=subscriber, row=row, now=now, why="hard bounce")
        else:
            _event(session, kind="delivery.failed", row=row, now=now, **detail)
        return row.status


async def deliver_due(
    *,
    engine: sa.Engine,
    settings: Settings,
    backend: EmailBackend,
    links: Links,
    now: Callable[[], datetime],
    batch_size: int = 200,
    concurrency: int | None = None,
    subscriber_id: int | None = None,
    on_outcome: Callable[[Outcome], None] | None = None,
    stop: asyncio.Event | None = None,
) -> DeliverReport:
    """Send every due delivery once; returns when nothing due is left (or on ``stop``,
    after the batch in hand is finished and recorded).

    Up to ``concurrency`` sends are in flight at once (default: the SMTP pool
    size), so a pool of connections is kept busy.
    """
    report = DeliverReport()
    sender = render.Sender(address=settings.from_address, name=settings.from_name or None)
    width = concurrency or settings.smtp.pool_size
    signer = signer_for(settings.dkim)
    policy = settings.retry

    async def send(job: _Job) -> DeliveryError | None:
        if job.message is None:
            return job.error
        try:
            await backend.send(job.message)
        except DeliveryError as exc:
            return exc
        return None

    async def send_all(jobs: list[_Job]) -> list[DeliveryError | None]:
        # `width` lanes take the next job from one shared iterator: as many sends in
        # flight as connections, without a task and a semaphore round per message.
        results: list[DeliveryError | None] = [None] * len(jobs)
        queue = iter(enumerate(jobs))

        async def lane() -> None:
            for k, job in queue:
                results[k] = await send(job)

        await asyncio.gather(*(lane() for _ in range(min(width, len(jobs)))))
        return results

    async with backend:
        while not (stop and stop.is_set()) and (
            rows := _claim_rows(
                engine=engine,
                now=now(),
                limit=batch_size,
                subscriber_id=subscriber_id,
                lease=timedelta(seconds=settings.lease_seconds),
            )
        ):
            jobs = _prepare(
                engine=engine,
                rows=rows,
                links=links,
                sender=sender,
                signer=signer,
                confirm_hours=settings.confirm_hours,
            )
            live = [j for j in jobs if j.active]
            errors = await send_all(live)
            finished = now()
            accepted = [j for j, e in zip(live, errors, strict=True) if e is None]
            _record_sent(engine=engine, jobs=accepted, now=finished)
            outcomes = [
                Outcome(j.delivery_id, j.email, DeliveryStatus.SENT, None, j.subscriber_id)
                for j in accepted
            ]
            for job, error in zip(live, errors, strict=True):
                if error is not None:
                    status = record_outcome(
                        engine=engine,
                        delivery_id=job.delivery_id,
                        now=finished,
                        error=error,
                        policy=policy,
                    )
                    outcomes.append(
                        Outcome(job.delivery_id, job.email, status, str(error), job.subscriber_id)
                    )
            for job in jobs:
                if not job.active:
                    status = record_outcome(
                        engine=engine,
                        delivery_id=job.delivery_id,
                        now=finished,
                        error=None,
                        policy=policy,
                        cancelled=True,
                    )
                    outcomes.append(
                        Outcome(
                            job.delivery_id,
                            job.email,
                            status,
                            "subscriber is no longer active",
                            job.subscriber_id,
                        )
                    )
            for outcome in outcomes:
                report.outcomes.append(outcome)
                if on_outcome is not None:
                    on_outcome(outcome)
    return report


async def run_worker(
    *,
    engine: sa.Engine,
    settings: Settings,
    backend: EmailBackend,
    links: Links,
    now: Callable[[], datetime],
    stop: asyncio.Event,
    poll_seconds: float = 5.0,
    on_outcome: Callable[[Outcome], None] | None = None,
    on_round: Callable[[], None] | None = None,
    until: Callable[[], bool] | None = None,
    batch_size: int = 200,
) -> int:
    """Deliver continuously until ``stop`` is set, or until ``until()`` held before a
    round that found nothing due; returns how many attempts were made.

    The backend (the SMTP pool) stays open across polls.
    """
    attempts = 0
    async with backend:
        while not stop.is_set():
            last_round = until is not None and until()  # read before delivering
            report = await deliver_due(
                engine=engine,
                settings=settings,
                backend=backend,
                links=links,
                now=now,
                batch_size=batch_size,
                on_outcome=on_outcome,
                stop=stop,
            )
            attempts += len(report.outcomes)
            if on_round is not None:
                on_round()
            if last_round and not report.outcomes:
                break
            with contextlib.suppress(TimeoutError):  # the poll interval passed: look again
                await asyncio.wait_for(stop.wait(), timeout=poll_seconds)
    return attempts


def stats(*, engine: sa.Engine) -> dict[str, int]:
    """What an operator asks first: where every digest stands, and who is suppressed."""
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
                .where(Event.kind.in_(["bounce.hard", "bounce.soft"]))  # type: ignore[attr-defined]
                .group_by(Event.kind)
            ).all()
        )
        subscribers = dict(
            session.exec(
                select(Subscriber.status, sa.func.count()).group_by(Subscriber.status)  # type: ignore[call-overload]
            ).all()
        )
        unsubscribes = session.exec(
            select(sa.func.count()).select_from(Event).where(Event.kind == UNSUBSCRIBED_EVENT)
        ).one()
    return {
        "pending": by_status.get(DeliveryStatus.PENDING, 0) - retrying,
        "retrying": retrying,
        "sending": by_status.get(DeliveryStatus.SENDING, 0),
        "sent": by_status.get(DeliveryStatus.SENT, 0),
        "failed": by_status.get(DeliveryStatus.FAILED, 0),
        "cancelled": by_status.get(DeliveryStatus.CANCELLED, 0),
        "hard_bounces": events.get("bounce.hard", 0),
        "soft_bounces": events.get("bounce.soft", 0),
        "subscribers_active": subscribers.get(SubscriberStatus.ACTIVE, 0),
        "subscribers_suppressed": subscribers.get(SubscriberStatus.SUPPRESSED, 0),
        "subscribers_unsubscribed": subscribers.get(SubscriberStatus.UNSUBSCRIBED, 0),
        "unsubscribes": unsubscribes,
    }


UNSUBSCRIBED_EVENT = "subscriber.unsubscribed"


def unsubscribes_by_edition(*, engine: sa.Engine) -> dict[str, int]:
    """Unsubscribes per digest edition (the digest whose link was used; "no digest" for
    the rest: an operator's removal, a link from a preview)."""
    with session_scope(engine=engine) as session:
        rows = session.exec(
            select(Delivery.edition, sa.func.count())  # type: ignore[call-overload]
            .select_from(Event)
            .join(Delivery, Delivery.id == Event.delivery_id, isouter=True)  # type: ignore[arg-type]
            .where(Event.kind == UNSUBSCRIBED_EVENT)
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
            _event(session, kind="delivery.requeued", row=row, now=now, by="operator")
            subscriber = session.get(Subscriber, row.subscriber_id)
            if subscriber is not None and subscriber.status == SubscriberStatus.SUPPRESSED:
                subscriber.status, subscriber.soft_bounces, subscriber.updated_at = (
                    SubscriberStatus.ACTIVE,
                    0,
                    now,
                )
                _event(session, kind="subscriber.reactivated", row=row, now=now, by="operator")
        return len(rows)

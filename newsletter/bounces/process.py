"""A bounce or complaint message in, its consequence in the ledger out.

The message is tied to one delivery by its VERP return path (signed, so a forged
bounce cannot suppress a stranger: a return path whose MAC does not check is refused
and recorded), else by the Message-ID of the quoted original together with the
recipient the report names (both must match a digest we sent). What follows, as
events with their source:

* hard bounce: the subscriber is suppressed at once;
* soft bounce: suppressed once ``soft_bounce_limit`` digests in a row bounced (a digest
  that did not bounce breaks the run);
* complaint: unsubscribed at once (source ``complaint``);
* a delay or an auto-reply: nothing; unrecognised or unmatched: an event for the
  operator, nothing guessed.

The same message processed twice (a replayed mailbox) changes nothing the second time.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime

import sqlalchemy as sa
from sqlmodel import Session, select

from newsletter import subscribers
from newsletter.bounces import verp
from newsletter.bounces.classify import Kind, Report, classify, parse
from newsletter.config import RetryPolicy
from newsletter.db import session_scope
from newsletter.events import EventKind
from newsletter.ledger.outcomes import delivery_event, suppress
from newsletter.models import Delivery, DeliveryKind, Event, Subscriber, SubscriberStatus
from newsletter.text import has_unsafe, one_line

_ADDRESS_HEADERS = ("Delivered-To", "X-Original-To", "Envelope-To", "X-Envelope-To", "To")
_RECORDED = (
    EventKind.HARD_BOUNCE, EventKind.SOFT_BOUNCE, EventKind.COMPLAINT, EventKind.REJECTED,
    EventKind.BOUNCE_UNMATCHED, EventKind.BOUNCE_REFUSED,
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class Outcome:
    report: Report
    action: str  # what was done, for the operator
    subscriber_id: int | None = None
    delivery_id: int | None = None


@dataclass(frozen=True, slots=True)
class BounceAddress:
    """Our bounce mailbox, and the key its return paths are signed with."""

    localpart: str
    domain: str
    key: bytes = field(repr=False)  # the secret key: never in a repr or a log line


def process_message(
    *,
    engine: sa.Engine,
    data: bytes,
    address: BounceAddress | None,
    policy: RetryPolicy,
    now: datetime,
    source: str,
    envelope_to: Sequence[str] = (),
) -> Outcome:
    """Classify one message and record what follows (``source``: "file", "lmtp", ...)."""
    candidates = [*envelope_to]
    try:
        msg = parse(data)
        report = classify(msg)
        for header in _ADDRESS_HEADERS:
            candidates += [str(v) for v in msg.get_all(header, [])]
        bounce_id = str(msg.get("Message-ID") or "").strip()
        subject = str(msg.get("Subject", ""))
    except Exception:  # a message no reader makes sense of (nesting, broken MIME) is kept
        report, bounce_id, subject = Report(Kind.UNRECOGNISED, how="unparsable"), "", ""
    return record(
        engine=engine,
        report=report,
        bounce_id=bounce_id or hashlib.sha256(data).hexdigest(),
        source=source,
        address=address,
        candidates=candidates,
        policy=policy,
        now=now,
        subject=subject,
    )


def _storable(report: Report) -> Report:
    """What a report quotes, fit to look up and store: a bounce or a relay quotes whatever
    came its way, and a NUL (PostgreSQL refuses it in text) or a lone surrogate (no
    database can encode it) would fail the whole record, every retry. No message id or
    address of ours holds such a character, so one that does names nothing of ours."""
    mid = report.original_message_id
    return replace(
        report,
        recipients=tuple(r for r in report.recipients if not has_unsafe(r)),
        original_message_id=None if mid is None or has_unsafe(mid) else mid,
        diagnostic=one_line(report.diagnostic),
        details={one_line(k): one_line(v) for k, v in report.details.items()},
    )


def record(
    *,
    engine: sa.Engine,
    report: Report,
    bounce_id: str,
    source: str,
    address: BounceAddress | None,
    candidates: Sequence[str],
    policy: RetryPolicy,
    now: datetime,
    subject: str = "",
    by_recipient: bool = False,
) -> Outcome:
    """Record what a report (from a message, or a relay's webhook) means. ``candidates``:
    addresses that may be our return path; ``by_recipient``: when nothing else ties it
    to a digest, the latest digest sent to the reported address (a relay's webhook,
    authenticated, that names no message of ours)."""
    report, bounce_id, subject = _storable(report), one_line(bounce_id), one_line(subject)
    candidates = [c for c in candidates if not has_unsafe(c)]
    detail = {"bounce_id": bounce_id[:200], "source": source, "how": report.how}
    if report.kind in (Kind.AUTO_REPLY, Kind.DELAYED):
        return Outcome(report, f"nothing: {report.kind.value.replace('_', ' ')}")
    with session_scope(engine=engine) as session:
        if _seen(session, bounce_id[:200]):
            return Outcome(report, "nothing: already processed")
        if report.kind == Kind.UNRECOGNISED:
            why = {"why": "unrecognised", "subject": subject[:200]}
            _note(session, EventKind.BOUNCE_UNMATCHED, now, detail | why)
            return Outcome(report, "kept for the operator: not recognised as a bounce")
        found = _delivery(session, report, address, candidates, by_recipient)
        if isinstance(found, str):
            forged = found.startswith("forged")
            kind = EventKind.BOUNCE_REFUSED if forged else EventKind.BOUNCE_UNMATCHED
            _note(session, kind, now, detail | {"why": found})
            return Outcome(report, f"kept for the operator: {found}")
        row, subscriber = found
        detail |= {"status": report.status, "text": report.diagnostic}
        action = _apply(session, report, row, subscriber, detail, policy, now)
        return Outcome(report, action, subscriber.id, row.id)


def _seen(session: Session, bounce_id: str) -> bool:
    """Whether this report was recorded before: a text search narrows the events (its
    wildcards escaped), an exact comparison decides (SQLite's LIKE ignores case)."""
    marker = f'"bounce_id": {json.dumps(bounce_id)}'
    details = session.exec(
        select(Event.detail).where(
            Event.kind.in_(_RECORDED),  # type: ignore[attr-defined]
            Event.detail.contains(marker, autoescape=True),  # type: ignore[attr-defined]
        )
    )
    return any(json.loads(d).get("bounce_id") == bounce_id for d in details)


def _note(session: Session, kind: EventKind, now: datetime, detail: dict[str, object]) -> None:
    session.add(Event(at=now, kind=kind, detail=json.dumps(detail)))


def _delivery(
    session: Session,
    report: Report,
    address: BounceAddress | None,
    candidates: Sequence[str],
    by_recipient: bool,
) -> tuple[Delivery, Subscriber] | str:
    """The digest (or confirmation) the report is about, or why there is none."""
    if address is not None:
        for text in candidates:
            for part in text.split(","):
                named = verp.read(part, localpart=address.localpart, domain=address.domain)
                if named is None:
                    continue
                subscriber = session.get(Subscriber, named.subscriber_id)
                row = session.get(Delivery, named.delivery_id)
                salt = subscriber.token_salt if subscriber is not None else "-"
                if not verp.verify(named, key=address.key, salt=salt):
                    return "forged return path (its signature does not check)"
                if subscriber is None or row is None or row.subscriber_id != subscriber.id:
                    return "return path of a digest that no longer exists"
                return row, subscriber
    row = None
    if report.original_message_id is not None:
        row = session.exec(
            select(Delivery).where(Delivery.message_id == report.original_message_id)
        ).first()
    if row is None and by_recipient and report.recipients and report.original_message_id is None:
        # Only a digest that went out; and not when the relay named a message that is
        # not ours (another application on the same relay account).
        row = session.exec(
            select(Delivery)
            .where(
                sa.func.lower(Delivery.to_address) == report.recipients[0],
                Delivery.kind == DeliveryKind.DIGEST,
                Delivery.sent_at.is_not(None),  # type: ignore[union-attr]
            )
            .order_by(Delivery.id.desc())  # type: ignore[union-attr]
        ).first()
    if row is None and report.original_message_id is None:
        return "no return path of ours and no quoted Message-ID"
    if row is None:
        return f"no message {report.original_message_id} was sent"
    if report.recipients and row.to_address.lower() not in report.recipients:
        return "the report names another recipient than the message it quotes"
    subscriber = session.get(Subscriber, row.subscriber_id)
    if subscriber is None:
        return "the subscriber is gone"
    return row, subscriber


def _apply(
    session: Session,
    report: Report,
    row: Delivery,
    subscriber: Subscriber,
    detail: dict[str, object],
    policy: RetryPolicy,
    now: datetime,
) -> str:
    def event(kind: EventKind) -> None:
        delivery_event(session, kind=kind, row=row, now=now, **detail)

    if report.kind == Kind.COMPLAINT:
        event(EventKind.COMPLAINT)
        subscribers.unsubscribe(
            session=session,
            subscriber_id=subscriber.id,  # type: ignore[arg-type]
            now=now,
            source="complaint",
            delivery_id=row.id,
        )
        return "unsubscribed: the reader reported it as spam"
    if report.kind == Kind.REJECTED:
        event(EventKind.REJECTED)
        return "recorded: the message was refused (policy or content), not the address"
    if report.kind == Kind.HARD:
        event(EventKind.HARD_BOUNCE)
        was = subscriber.status
        suppress(session, subscriber=subscriber, row=row, now=now, why="hard bounce")
        return "suppressed: hard bounce" if was == SubscriberStatus.ACTIVE else "hard bounce"
    event(EventKind.SOFT_BOUNCE)
    session.flush()
    run, latest = _soft_runs(session, subscriber.id, row.id)  # type: ignore[arg-type]
    subscriber.soft_bounces = latest
    session.add(subscriber)
    if run >= policy.soft_bounce_limit and subscriber.status == SubscriberStatus.ACTIVE:
        suppress(session, subscriber=subscriber, row=row, now=now, why="soft bounces")
        return f"suppressed: {run} digests in a row bounced"
    return f"soft bounce ({run} of {policy.soft_bounce_limit} in a row)"


def _soft_runs(session: Session, subscriber_id: int, delivery_id: int) -> tuple[int, int]:
    """The run of softly bounced digests in a row that holds this one (late reports come
    in any order), and the run ending at the subscriber's newest digest."""
    ids = list(
        session.exec(
            select(Delivery.id)
            .where(
                Delivery.subscriber_id == subscriber_id,
                Delivery.kind == DeliveryKind.DIGEST,
                Delivery.sent_at.is_not(None),  # type: ignore[union-attr]
            )
            .order_by(Delivery.id.desc())  # type: ignore[union-attr]
            .limit(200)
        )
    )
    bounced = set(
        session.exec(
            select(Event.delivery_id).where(
                Event.kind == EventKind.SOFT_BOUNCE,
                Event.delivery_id.in_(ids),  # type: ignore[union-attr]
            )
        )
    )
    flags = [did in bounced for did in ids]  # newest first
    latest = next((k for k, flag in enumerate(flags) if not flag), len(flags))
    if delivery_id not in ids:
        return 1, latest
    start = end = ids.index(delivery_id)
    while start > 0 and flags[start - 1]:
        start -= 1
    while end + 1 < len(flags) and flags[end + 1]:
        end += 1
    return end - start + 1, latest

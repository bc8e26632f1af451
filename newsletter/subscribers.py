"""Subscribers and their topic filters: the one place every field is checked, then
add, list, remove, and the status changes (unsubscribe, resubscribe, reactivate).

Every entrance (web forms, admin API, ``subscribers add`` and ``import``) checks
fields with the functions here, so a rule is written once.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa
from email_validator import EmailNotValidError, validate_email
from sqlmodel import Session, select

from newsletter.errors import (
    ConfigError,
    DuplicateSubscriberError,
    FilterSyntaxError,
    SubscriberError,
)
from newsletter.events import EventKind
from newsletter.filters import compile_filter
from newsletter.models import Cadence, Event, Subscriber, SubscriberStatus, TopicFilter
from newsletter.text import has_unsafe
from newsletter.tokens import new_salt
from newsletter.values import ascii_int, validate_send_at, validate_timezone

# Bounds on what one subscriber may store: they also bound the digest they get (every
# topic can show on every paper), which must stay under Gmail's 102 kB clipping.
MAX_TOPICS = 20
MAX_TOPIC_CHARS = 200
MAX_NAME_CHARS = 200
MAX_EMAIL_CHARS = 254  # RFC 5321's limit on a path, less the angle brackets


@dataclass(frozen=True, slots=True)
class NewSubscriber:
    """A validated subscriber, ready to store."""

    email: str
    topics: tuple[str, ...]
    name: str | None
    timezone: str
    send_at: str


def normalize_email(address: str) -> str:
    """Validated (syntax only, no DNS) and normalized: the form stored and compared.

    Non-ASCII before the @ is refused: such a mailbox needs SMTPUTF8 from every relay
    on the way, and a digest that cannot be delivered is worse than a clear "no" at
    sign-up. Non-ASCII domains are fine (they travel as IDNA).
    """
    if not isinstance(address, str) or has_unsafe(address):
        raise SubscriberError(f"{address!r} is not a valid address", field="email")
    local = address.strip().rpartition("@")[0]
    if not local.isascii():
        raise SubscriberError(
            f"{address!r}: addresses with non-ASCII characters before the @ are not supported",
            field="email",
        )
    try:
        result = validate_email(address.strip(), check_deliverability=False)
    except EmailNotValidError as exc:
        raise SubscriberError(f"{address!r} is not a valid address: {exc}", field="email") from None
    if len(result.normalized) > MAX_EMAIL_CHARS:
        raise SubscriberError(f"longer than {MAX_EMAIL_CHARS} characters", field="email")
    # Mailbox names are case-insensitive at every provider that matters;
    # lower-casing makes Alice@X and alice@x one subscriber.
    return result.normalized.lower()


def validate_name(name: object) -> str | None:
    """A display name: one line, no control or bidi characters, at most 200 characters."""
    if name is None:
        return None
    if not isinstance(name, str):
        raise SubscriberError("must be text", field="name")
    folded = " ".join(name.split())  # line breaks and tabs fold to spaces
    if has_unsafe(folded):
        raise SubscriberError("must not contain control characters", field="name")
    if len(folded) > MAX_NAME_CHARS:
        raise SubscriberError(f"at most {MAX_NAME_CHARS} characters", field="name")
    return folded or None


def validate_topic(topic: object) -> str:
    """One topic filter, parsed; errors keep the filter's column (chained for the caret)."""
    if not isinstance(topic, str):
        raise SubscriberError("each topic must be text", field="topic")
    topic = topic.strip()
    if has_unsafe(topic):
        raise SubscriberError(f"{topic!r}: must not contain control characters", field="topic")
    if len(topic) > MAX_TOPIC_CHARS:
        raise SubscriberError(f"a topic has at most {MAX_TOPIC_CHARS} characters", field="topic")
    try:
        compile_filter(topic)
    except FilterSyntaxError as exc:
        raise SubscriberError(
            f"{topic!r}: {exc.message} (column {exc.column})", field="topic"
        ) from exc
    return topic


def validate_topics(topics: Sequence[object]) -> tuple[str, ...]:
    """Every topic checked, blanks and repeats dropped, at most ``MAX_TOPICS``.

    No topic at all is allowed: it asks for everything, ranked by upvotes (like "*").
    """
    clean: list[str] = []
    for topic in topics:
        if isinstance(topic, str) and not topic.strip():
            continue
        checked = validate_topic(topic)
        if checked not in clean:
            clean.append(checked)
    if len(clean) > MAX_TOPICS:
        raise SubscriberError(f"at most {MAX_TOPICS} topics", field="topic")
    return tuple(clean)


def validate_schedule(*, timezone: object, send_at: object) -> tuple[str, str]:
    if not isinstance(timezone, str) or not isinstance(send_at, str):
        raise SubscriberError(
            "must be text", field="timezone" if not isinstance(timezone, str) else "send_at"
        )
    try:
        return (
            validate_timezone(timezone.strip(), setting="timezone"),
            validate_send_at(send_at, setting="send_at"),
        )
    except ConfigError as exc:
        raise SubscriberError(str(exc).split(": ", 1)[1], field=exc.setting) from None


def validate_cadence(*, cadence: object, weekday: object) -> tuple[str, int | None]:
    """Daily, paused, or weekly on a weekday (0 = Monday; an int, or ASCII digits)."""
    if cadence not in tuple(Cadence):
        raise SubscriberError("must be daily, weekly or paused", field="cadence")
    if cadence != Cadence.WEEKLY:
        return str(cadence), None
    day = ascii_int(weekday) if isinstance(weekday, str) else weekday
    if not isinstance(day, int) or isinstance(day, bool) or not 0 <= day <= 6:
        raise SubscriberError("weekly needs a weekday, 0 (Monday) to 6", field="weekday")
    return str(cadence), day


def validate_subscriber(
    *,
    email: str,
    topics: Sequence[object],
    name: object = None,
    timezone: str,
    send_at: str,
) -> NewSubscriber:
    """Check every field; the first bad one raises SubscriberError naming it."""
    address = normalize_email(email)
    clean_topics = validate_topics(topics)
    clean_name = validate_name(name)
    tz, at = validate_schedule(timezone=timezone, send_at=send_at)
    return NewSubscriber(
        email=address, topics=clean_topics, name=clean_name, timezone=tz, send_at=at
    )


def event(*, kind: EventKind, subscriber_id: int | None, now: datetime, **detail: object) -> Event:
    return Event(
        at=now,
        kind=kind,
        subscriber_id=subscriber_id,
        detail=json.dumps(detail) if detail else "{}",
    )


def add_subscriber(*, session: Session, subscriber: NewSubscriber, now: datetime) -> Subscriber:
    """Store a validated subscriber; a duplicate address raises SubscriberError."""
    exists = session.exec(select(Subscriber.id).where(Subscriber.email == subscriber.email)).first()
    if exists is not None:
        raise DuplicateSubscriberError(f"{subscriber.email} is already subscribed", field="email")
    row = Subscriber(
        email=subscriber.email,
        name=subscriber.name,
        timezone=subscriber.timezone,
        send_at=subscriber.send_at,
        status=SubscriberStatus.ACTIVE,
        token_salt=new_salt(),
        created_at=now,
        updated_at=now,
    )
    session.add(row)
    session.flush()
    for topic in subscriber.topics:
        session.add(TopicFilter(subscriber_id=row.id, query=topic, created_at=now))
    session.add(event(kind=EventKind.ADDED, subscriber_id=row.id, now=now))
    return row


def find(*, session: Session, email: str) -> Subscriber:
    address = normalize_email(email)
    row = session.exec(select(Subscriber).where(Subscriber.email == address)).first()
    if row is None:
        raise SubscriberError(f"no subscriber {address}", field="email")
    return row


def remove_subscriber(*, session: Session, email: str, now: datetime) -> None:
    """Delete a subscriber with their filters and ledger (they asked to be forgotten)."""
    row = find(session=session, email=email)
    session.add(event(kind=EventKind.REMOVED, subscriber_id=row.id, now=now))
    session.delete(row)


def revoke_links(*, session: Session, email: str, now: datetime) -> Subscriber:
    """A new token salt: every link this subscriber was ever sent stops working."""
    row = find(session=session, email=email)
    row.token_salt, row.updated_at = new_salt(), now
    session.add(row)
    session.add(event(kind=EventKind.LINKS_REVOKED, subscriber_id=row.id, now=now))
    return row


def topics_by_subscriber(
    *, session: Session, ids: Sequence[int] | None = None
) -> dict[int, list[str]]:
    query = select(TopicFilter.subscriber_id, TopicFilter.query).order_by(TopicFilter.id)
    if ids is not None:
        query = query.where(TopicFilter.subscriber_id.in_(ids))  # type: ignore[attr-defined]
    result: dict[int, list[str]] = {}
    for sid, topic in session.exec(query):
        result.setdefault(sid, []).append(topic)
    return result


def replace_topics(
    *, session: Session, subscriber_id: int, topics: Sequence[str], now: datetime
) -> None:
    session.execute(sa.delete(TopicFilter).where(TopicFilter.subscriber_id == subscriber_id))  # type: ignore[arg-type]
    for topic in topics:
        session.add(TopicFilter(subscriber_id=subscriber_id, query=topic, created_at=now))


# --- status changes ---------------------------------------------------------------------

UNSUBSCRIBE_SOURCES = ("one-click", "page", "admin", "bounce")


def unsubscribe(
    *,
    session: Session,
    subscriber_id: int,
    now: datetime,
    source: str,
    delivery_id: int | None = None,
) -> Subscriber | None:
    """Stop all email to a subscriber; None when there is no such subscriber.

    Idempotent: asking again changes nothing and records nothing more, so a mail
    client retrying its one-click POST does not count twice. The event names the
    source and the digest the link came from (unsubscribes per edition).
    """
    if source not in UNSUBSCRIBE_SOURCES:
        raise ValueError(f"unknown unsubscribe source {source!r}")
    row = session.get(Subscriber, subscriber_id)
    if row is None or row.status == SubscriberStatus.UNSUBSCRIBED:
        return row
    row.status, row.updated_at = SubscriberStatus.UNSUBSCRIBED, now
    unsubscribed = event(kind=EventKind.UNSUBSCRIBED, subscriber_id=row.id, now=now, source=source)
    unsubscribed.delivery_id = delivery_id
    session.add(unsubscribed)
    return row


def resubscribe(*, session: Session, subscriber_id: int, now: datetime) -> Subscriber | None:
    """Undo an unsubscribe (the confirmation page's button); a suppressed address stays
    suppressed: bounces are the operator's to clear."""
    row = session.get(Subscriber, subscriber_id)
    if row is None or row.status != SubscriberStatus.UNSUBSCRIBED:
        return row
    row.status, row.updated_at = SubscriberStatus.ACTIVE, now
    session.add(event(kind=EventKind.RESUBSCRIBED, subscriber_id=row.id, now=now))
    return row


def reactivate(*, session: Session, row: Subscriber, now: datetime, by: str) -> None:
    """An operator takes a subscriber back (after fixing what bounced, say)."""
    row.status, row.soft_bounces, row.updated_at = SubscriberStatus.ACTIVE, 0, now
    session.add(row)
    session.add(event(kind=EventKind.REACTIVATED, subscriber_id=row.id, now=now, by=by))

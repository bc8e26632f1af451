"""Subscribers and their topic filters: the one place every field is checked, then
add, list, remove, and the status changes (unsubscribe, resubscribe, reactivate).

Every entrance (web forms, admin API, ``subscribers add`` and ``import``) checks
fields with the functions here, so a rule is written once.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

import sqlalchemy as sa
from email_validator import EmailNotValidError, validate_email
from sqlmodel import Session, select

from newsletter import snapshot
from newsletter.errors import (
    ConfigError,
    DuplicateSubscriberError,
    FilterSyntaxError,
    SubscriberError,
)
from newsletter.events import EventKind
from newsletter.filters import compile_filter
from newsletter.models import (
    Cadence,
    Delivery,
    Event,
    Subscriber,
    SubscriberStatus,
    TopicFilter,
)
from newsletter.relevance.score import DIAL, Topic
from newsletter.text import has_unsafe
from newsletter.tokens import new_salt
from newsletter.values import ascii_int, validate_send_at, validate_timezone

# Bounds on what one subscriber may store: they also bound the digest they get (every
# topic can show on every paper), which must stay under Gmail's 102 kB clipping.
MAX_TOPICS = 20
MAX_TOPIC_CHARS = 200
# Entries looked at, repeats and blanks included, before any is parsed: a form field or a
# JSON list of 140,000 filters took 12 s of the web process's event loop to refuse.
MAX_TOPIC_ENTRIES = 5 * MAX_TOPICS
MAX_ABOUT_CHARS = 300
ABOUT_SEPARATOR = "|"  # "diffusion -video | Diffusion models for image generation"
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


def split_topic(line: str) -> Topic:
    """``FILTER`` or ``FILTER | a sentence about it``, as one line: the form a topic is
    written in everywhere (the forms, the CLI, CSV and JSON files, the API)."""
    query, _, about = line.partition(ABOUT_SEPARATOR)
    return Topic(query.strip(), about.strip() or None)


def topic_line(topic: Topic) -> str:
    return f"{topic.query} {ABOUT_SEPARATOR} {topic.about}" if topic.about else topic.query


def validate_topic(topic: object) -> str:
    """One topic (a line, or ``{"filter": ..., "about": ...}``), its filter parsed and its
    sentence checked; returned as a line. Filter errors keep their column (chained, for
    the caret)."""
    if isinstance(topic, dict):
        query, about = topic.get("filter"), topic.get("about")
        if not isinstance(query, str) or not (about is None or isinstance(about, str)):
            raise SubscriberError('a topic is {"filter": text, "about": text}', field="topic")
        topic = f"{query} {ABOUT_SEPARATOR} {about}" if about else query
    if not isinstance(topic, str):
        raise SubscriberError("each topic must be text", field="topic")
    written, _, sentence = topic.partition(ABOUT_SEPARATOR)  # before stripping: "\x1f" is a space
    if has_unsafe(written):
        raise SubscriberError(f"{written!r}: must not contain control characters", field="topic")
    parts = split_topic(topic)
    query = parts.query
    if has_unsafe(sentence):
        raise SubscriberError(
            f"the sentence about {query!r} must not contain control characters", field="about"
        )
    if len(query) > MAX_TOPIC_CHARS:
        raise SubscriberError(f"a topic has at most {MAX_TOPIC_CHARS} characters", field="topic")
    try:
        compile_filter(query)
    except FilterSyntaxError as exc:
        raise SubscriberError(
            f"{query!r}: {exc.message} (column {exc.column})", field="topic"
        ) from exc
    about = " ".join((parts.about or "").split())
    if about and len(about) > MAX_ABOUT_CHARS:
        raise SubscriberError(
            f"the sentence about {query!r} has at most {MAX_ABOUT_CHARS} characters", field="about"
        )
    if about and len(about) < 3:
        raise SubscriberError(f"the sentence about {query!r} is too short", field="about")
    return topic_line(Topic(query, about or None))


def validate_topics(topics: Sequence[object]) -> tuple[str, ...]:
    """Every topic checked, blanks and repeated filters dropped, at most ``MAX_TOPICS``.

    No topic at all is allowed: it asks for everything, ranked by upvotes (like "*").
    """
    entries = [t for t in topics if not (isinstance(t, str) and not t.strip())]
    check_topic_count(len(entries))
    clean = distinct_topics(validate_topic(topic) for topic in entries)
    if len(clean) > MAX_TOPICS:
        raise SubscriberError(f"at most {MAX_TOPICS} topics", field="topic")
    return tuple(clean)


def check_topic_count(entries: int) -> None:
    """Refuse, before parsing any, more topic entries (blanks left out) than a list of
    ``MAX_TOPICS`` with repeats could hold."""
    if entries > MAX_TOPIC_ENTRIES:
        raise SubscriberError(f"at most {MAX_TOPICS} topics", field="topic")


def distinct_topics(lines: Iterable[str]) -> list[str]:
    """One topic per filter, the first line standing: a subscriber has one row per
    filter, so ``diffusion`` and ``diffusion | Diffusion models`` are one topic."""
    first: dict[str, str] = {}
    for line in lines:
        first.setdefault(split_topic(line).query, line)
    return list(first.values())


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


def validate_dial(value: object) -> int:
    """A dial step, 1 (fewer, surer papers) to 5 (more, broader); an int or ASCII digits."""
    step = ascii_int(value) if isinstance(value, str) else value
    if not isinstance(step, int) or isinstance(step, bool) or step not in DIAL:
        raise SubscriberError(
            f"must be a whole number from {min(DIAL)} to {max(DIAL)}", field="dial"
        )
    return step


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


def new_row(
    *, session: Session, email: str, status: SubscriberStatus, now: datetime, **fields: object
) -> Subscriber:
    """A new subscriber row with its own link salt, flushed so it has an id."""
    row = Subscriber(
        email=email,
        status=status,
        token_salt=new_salt(),
        created_at=now,
        updated_at=now,
        **fields,  # type: ignore[arg-type]
    )
    session.add(row)
    session.flush()
    return row


def add_subscriber(*, session: Session, subscriber: NewSubscriber, now: datetime) -> Subscriber:
    """Store a validated subscriber; a duplicate address raises SubscriberError."""
    exists = session.exec(select(Subscriber.id).where(Subscriber.email == subscriber.email)).first()
    if exists is not None:
        raise DuplicateSubscriberError(f"{subscriber.email} is already subscribed", field="email")
    row = new_row(
        session=session,
        email=subscriber.email,
        status=SubscriberStatus.ACTIVE,
        now=now,
        name=subscriber.name,
        timezone=subscriber.timezone,
        send_at=subscriber.send_at,
    )
    replace_topics(session=session, subscriber_id=row.id, topics=subscriber.topics, now=now)  # type: ignore[arg-type]
    session.add(event(kind=EventKind.ADDED, subscriber_id=row.id, now=now))
    return row


def find(*, session: Session, email: str) -> Subscriber:
    address = normalize_email(email)
    row = session.exec(select(Subscriber).where(Subscriber.email == address)).first()
    if row is None:
        raise SubscriberError(f"no subscriber {address}", field="email")
    return row


def remove_subscriber(*, session: Session, email: str, now: datetime) -> None:
    """Delete a subscriber with their filters, ledger and votes (they asked to be
    forgotten), and cut their history loose from them: SQLite gives the next subscriber
    the id of the last one deleted, and votes are replayed by id, so a newcomer would
    be taught what the removed reader voted (and counted their hour's votes). The other
    events stay, naming no one (no id, no detail): the bounce, complaint and unsubscribe
    counters are counters, and must never go down."""
    row = find(session=session, email=email)
    theirs_only = Event.subscriber_id == row.id
    session.execute(sa.delete(Event).where(theirs_only, Event.kind == EventKind.VOTED))  # type: ignore[arg-type]
    anonymous = {"subscriber_id": None, "delivery_id": None, "detail": "{}"}
    session.execute(sa.update(Event).where(theirs_only).values(**anonymous))  # type: ignore[arg-type]
    session.add(event(kind=EventKind.REMOVED, subscriber_id=None, now=now))
    theirs = set(
        session.exec(
            select(Delivery.snapshot_id).where(
                Delivery.subscriber_id == row.id,
                Delivery.snapshot_id.is_not(None),  # type: ignore[union-attr]
            )
        )
    )
    session.delete(row)
    session.flush()  # their ledger goes (ON DELETE CASCADE), then what only it named
    snapshot.forget_unused(session.connection(), theirs)  # type: ignore[arg-type]


def revoke_links(*, session: Session, email: str, now: datetime) -> Subscriber:
    """A new token salt: every link this subscriber was ever sent stops working."""
    row = find(session=session, email=email)
    row.token_salt, row.updated_at = new_salt(), now
    session.add(row)
    session.add(event(kind=EventKind.LINKS_REVOKED, subscriber_id=row.id, now=now))
    return row


def topic_rows(*, session: Session, ids: Sequence[int] | None = None) -> dict[int, list[Topic]]:
    """Each subscriber's topics, in the order they wrote them."""
    query = select(TopicFilter.subscriber_id, TopicFilter.query, TopicFilter.about).order_by(
        TopicFilter.id
    )
    result: dict[int, list[Topic]] = {}
    id_list = list(ids) if ids is not None else [None]
    for start in range(0, len(id_list), 5000):
        chunk = query
        if ids is not None:
            chunk = query.where(TopicFilter.subscriber_id.in_(id_list[start : start + 5000]))  # type: ignore[attr-defined]
        for sid, q, about in session.exec(chunk):
            result.setdefault(sid, []).append(Topic(q, about))
    return result


def topics_by_subscriber(
    *, session: Session, ids: Sequence[int] | None = None
) -> dict[int, list[str]]:
    """Each subscriber's topics as lines (``FILTER`` or ``FILTER | sentence``)."""
    rows = topic_rows(session=session, ids=ids)
    return {sid: [topic_line(t) for t in topics] for sid, topics in rows.items()}


def replace_topics(
    *, session: Session, subscriber_id: int, topics: Sequence[str], now: datetime
) -> None:
    """Store checked topic lines (``validate_topics``) as the subscriber's topics."""
    session.execute(sa.delete(TopicFilter).where(TopicFilter.subscriber_id == subscriber_id))  # type: ignore[arg-type]
    for line in topics:
        topic = split_topic(line)
        session.add(
            TopicFilter(
                subscriber_id=subscriber_id, query=topic.query, about=topic.about, created_at=now
            )
        )


# --- status changes ---------------------------------------------------------------------

UNSUBSCRIBE_SOURCES = ("one-click", "page", "admin", "bounce", "complaint")
UNDO_SOURCES = ("one-click", "page")  # the reader's own unsubscribes, which they may undo


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
    if row is None:
        return row
    if row.status == SubscriberStatus.UNSUBSCRIBED:
        # Already out by their own hand (which the link in any digest may undo): a
        # complaint, bounce or operator's removal that follows makes it final, so it is
        # recorded, or a forwarded digest's link could take back a spam report.
        if source not in UNDO_SOURCES and _last_unsubscribe(session, row.id) in UNDO_SOURCES:  # type: ignore[arg-type]
            _record_unsubscribe(
                session, row, now=now, source=source, delivery_id=delivery_id,
                kind=EventKind.UNSUBSCRIBE_FINAL,
            )  # fmt: skip
        return row
    # A suppressed address too: its reader asked for no mail, so an operator clearing
    # the bounce later must not mail them again.
    row.status, row.updated_at = SubscriberStatus.UNSUBSCRIBED, now
    _record_unsubscribe(session, row, now=now, source=source, delivery_id=delivery_id)
    return row


_UNSUBSCRIBES = (EventKind.UNSUBSCRIBED, EventKind.UNSUBSCRIBE_FINAL)


def _record_unsubscribe(
    session: Session,
    row: Subscriber,
    *,
    now: datetime,
    source: str,
    delivery_id: int | None,
    kind: EventKind = EventKind.UNSUBSCRIBED,
) -> None:
    unsubscribed = event(kind=kind, subscriber_id=row.id, now=now, source=source)
    unsubscribed.delivery_id = delivery_id
    session.add(unsubscribed)


def _last_unsubscribe(session: Session, subscriber_id: int) -> str | None:
    """The source of the subscriber's last unsubscribe event, if any."""
    detail = session.exec(
        select(Event.detail)
        .where(Event.subscriber_id == subscriber_id, Event.kind.in_(_UNSUBSCRIBES))  # type: ignore[attr-defined]
        .order_by(Event.id.desc())  # type: ignore[attr-defined]
        .limit(1)
    ).first()
    return _source(detail)


def _source(detail: str | None) -> str | None:
    try:
        found = json.loads(detail).get("source") if detail else None
    except (ValueError, AttributeError):  # not what this code writes: no undoable source
        return None
    return found if isinstance(found, str) else None


UNDO_WITHIN = timedelta(days=7)


def resubscribe(
    *, session: Session, subscriber_id: int, now: datetime
) -> tuple[Subscriber, str] | None:
    """Undo an unsubscribe (the confirmation page's button); the subscriber and what
    came of it: "active", "bounced" (suppressed before, and no operator has cleared
    it since: bounces are the operator's to clear) or "refused". Only the reader's own
    unsubscribe (one-click or the page) within ``UNDO_WITHIN`` is undone: the link is in
    every digest and can be forwarded, so it must not take back a spam complaint, an
    operator's removal or an old decision. Anyone can sign up again (double opt-in)."""
    row = session.get(Subscriber, subscriber_id)
    if row is None:
        return None
    if row.status != SubscriberStatus.UNSUBSCRIBED:
        return row, "active" if row.status == SubscriberStatus.ACTIVE else "refused"
    history = list(
        session.exec(
            select(Event.kind, Event.at, Event.detail)
            .where(
                Event.subscriber_id == row.id,
                Event.kind.in_(  # type: ignore[attr-defined]
                    [*_UNSUBSCRIBES, EventKind.SUPPRESSED, EventKind.REACTIVATED]
                ),
            )
            .order_by(Event.id)  # type: ignore[arg-type]
        )
    )
    last = next((h for h in reversed(history) if h[0] in _UNSUBSCRIBES), None)
    source = _source(last[2]) if last is not None else None
    if source not in UNDO_SOURCES or last[1] < now - UNDO_WITHIN:  # type: ignore[index]
        return row, "refused"
    cleared = (EventKind.SUPPRESSED, EventKind.REACTIVATED)
    if next((k for k, _, _ in reversed(history) if k in cleared), None) == EventKind.SUPPRESSED:
        return row, "bounced"
    row.status, row.updated_at = SubscriberStatus.ACTIVE, now
    session.add(event(kind=EventKind.RESUBSCRIBED, subscriber_id=row.id, now=now))
    return row, "active"


def reactivate(*, session: Session, row: Subscriber, now: datetime, by: str) -> None:
    """An operator takes a subscriber back (after fixing what bounced, say)."""
    row.status, row.soft_bounces, row.updated_at = SubscriberStatus.ACTIVE, 0, now
    session.add(row)
    session.add(event(kind=EventKind.REACTIVATED, subscriber_id=row.id, now=now, by=by))

"""Subscribers and their topic filters: validation, add, import, list, remove."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from email_validator import EmailNotValidError, validate_email
from sqlmodel import Session, select

from newsletter.config import validate_send_at, validate_timezone
from newsletter.db import session_scope
from newsletter.errors import (
    ConfigError,
    DuplicateSubscriberError,
    FilterSyntaxError,
    SubscriberError,
)
from newsletter.filters import compile_filter
from newsletter.models import (
    Delivery,
    DeliveryKind,
    Event,
    Subscriber,
    SubscriberStatus,
    TopicFilter,
)

MAX_TOPICS = 50
MAX_NAME_CHARS = 200


@dataclass(frozen=True, slots=True)
class NewSubscriber:
    """A validated subscriber, ready to store."""

    email: str
    topics: tuple[str, ...]
    name: str | None
    timezone: str
    send_at: str


def normalize_email(address: str) -> str:
    """Validated (syntax only, no DNS) and normalized: the form stored and compared."""
    try:
        result = validate_email(address.strip(), check_deliverability=False)
    except EmailNotValidError as exc:
        raise SubscriberError(f"{address!r} is not a valid address: {exc}", field="email") from None
    # Mailbox names are case-insensitive at every provider that matters;
    # lower-casing makes Alice@X and alice@x one subscriber.
    return result.normalized.lower()


def validate_subscriber(
    *,
    email: str,
    topics: Sequence[str],
    name: str | None = None,
    timezone: str,
    send_at: str,
) -> NewSubscriber:
    """Check every field; the first bad one raises SubscriberError naming it."""
    address = normalize_email(email)
    clean_topics: list[str] = []
    for topic in topics:
        topic = topic.strip()
        if not topic:
            continue
        try:
            compile_filter(topic)
        except FilterSyntaxError as exc:
            # Chained, so the CLI (and the web form) can show the caret under the column.
            raise SubscriberError(
                f"{topic!r}: {exc.message} (column {exc.column})", field="topic"
            ) from exc
        if topic not in clean_topics:
            clean_topics.append(topic)
    # No topic at all is allowed: it asks for everything, ranked by upvotes (like "*").
    if len(clean_topics) > MAX_TOPICS:
        raise SubscriberError(f"at most {MAX_TOPICS} topics", field="topic")
    if name is not None:
        name = " ".join(name.split()) or None  # no CR/LF or tabs can reach a header
        if name and len(name) > MAX_NAME_CHARS:
            raise SubscriberError(f"at most {MAX_NAME_CHARS} characters", field="name")
    try:
        tz = validate_timezone(timezone.strip(), setting="timezone")
        at = validate_send_at(send_at, setting="send_at")
    except ConfigError as exc:
        raise SubscriberError(str(exc).split(": ", 1)[1], field=exc.setting) from None
    return NewSubscriber(
        email=address, topics=tuple(clean_topics), name=name, timezone=tz, send_at=at
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
        created_at=now,
        updated_at=now,
    )
    session.add(row)
    session.flush()
    for topic in subscriber.topics:
        session.add(TopicFilter(subscriber_id=row.id, query=topic, created_at=now))
    session.add(Event(at=now, kind="subscriber.added", subscriber_id=row.id))
    return row


def remove_subscriber(*, session: Session, email: str, now: datetime) -> None:
    """Delete a subscriber with their filters and ledger (they asked to be forgotten)."""
    address = normalize_email(email)
    row = session.exec(select(Subscriber).where(Subscriber.email == address)).first()
    if row is None:
        raise SubscriberError(f"no subscriber {address}", field="email")
    session.add(Event(at=now, kind="subscriber.removed", subscriber_id=row.id))
    session.delete(row)


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


# --- import -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RowError:
    line: int
    message: str


@dataclass(slots=True)
class ImportReport:
    added: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # already subscribed, with --skip-existing
    errors: list[RowError] = field(default_factory=list)


def _csv_rows(text: str) -> Iterator[tuple[int, dict[str, Any]]]:
    reader = csv.DictReader(io.StringIO(text))
    if not reader.fieldnames or "email" not in [f.strip() for f in reader.fieldnames]:
        raise SubscriberError("the CSV header must name an 'email' column", field="line 1")
    for row in reader:
        # line_num is where the reader is now: the last line of this record.
        yield reader.line_num, {(k or "").strip(): v for k, v in row.items()}


def _json_rows(text: str) -> Iterator[tuple[int, Any]]:
    """Items of a JSON array (or JSON Lines) with the line each one starts on."""
    decoder = json.JSONDecoder()
    stripped = text.lstrip()
    if stripped.startswith("["):
        pos = text.index("[") + 1
        while True:
            while pos < len(text) and text[pos] in " \t\r\n,":
                pos += 1
            if pos >= len(text):
                raise SubscriberError(
                    "the JSON array is never closed", field=f"line {text.count(chr(10)) + 1}"
                )
            if text[pos] == "]":
                return
            line = text.count("\n", 0, pos) + 1
            try:
                item, pos = decoder.raw_decode(text, pos)
            except json.JSONDecodeError as exc:
                raise SubscriberError(
                    f"invalid JSON: {exc.msg}", field=f"line {exc.lineno}"
                ) from None
            yield line, item
    for line, raw in enumerate(text.splitlines(), start=1):
        if raw.strip():
            try:
                yield line, json.loads(raw)
            except json.JSONDecodeError as exc:
                yield line, exc


def _topics_of(value: Any) -> list[str]:
    if isinstance(value, list):
        return [str(t) for t in value]
    if isinstance(value, str):
        # CSV: topics separated by ";" (a filter never needs one).
        return [t for t in value.split(";")]
    return []


def import_subscribers(
    *,
    engine: sa.Engine,
    path: Path,
    now: datetime,
    default_timezone: str,
    default_send_at: str,
    skip_existing: bool = False,
) -> ImportReport:
    """Import CSV or JSON; every bad row is reported with its line, the good ones stored."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise SubscriberError(f"cannot read {path}: {exc}", field="file") from None
    is_json = path.suffix.lower() in (".json", ".jsonl") or text.lstrip().startswith(("[", "{"))
    rows = _json_rows(text) if is_json else _csv_rows(text)
    report = ImportReport()
    seen: set[str] = set()
    with session_scope(engine=engine) as session:
        for line, row in rows:
            if isinstance(row, json.JSONDecodeError):
                report.errors.append(
                    RowError(line, f"invalid JSON: {row.msg} (column {row.colno})")
                )
                continue
            if not isinstance(row, dict):
                report.errors.append(RowError(line, "expected an object with an 'email' field"))
                continue
            try:
                sub = validate_subscriber(
                    email=str(row.get("email") or ""),
                    topics=_topics_of(row.get("topics", row.get("topic"))),
                    name=(str(row["name"]) if row.get("name") else None),
                    timezone=str(row.get("timezone") or default_timezone),
                    send_at=str(row.get("send_at") or default_send_at),
                )
                if sub.email in seen:
                    raise SubscriberError(f"{sub.email} appears twice in this file", field="email")
                seen.add(sub.email)
                with session.begin_nested():
                    add_subscriber(session=session, subscriber=sub, now=now)
                report.added.append(sub.email)
            except DuplicateSubscriberError as exc:
                if skip_existing:
                    report.skipped.append(str(row.get("email")))
                else:
                    report.errors.append(RowError(line, str(exc)))
            except SubscriberError as exc:
                report.errors.append(RowError(line, str(exc)))
    return report


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
    session.add(
        Event(
            at=now,
            kind="subscriber.unsubscribed",  # deliver.UNSUBSCRIBED_EVENT
            subscriber_id=row.id,
            delivery_id=delivery_id,
            detail=json.dumps({"source": source}),
        )
    )
    return row


def resubscribe(*, session: Session, subscriber_id: int, now: datetime) -> Subscriber | None:
    """Undo an unsubscribe (the confirmation page's button); a suppressed address stays
    suppressed: bounces are the operator's to clear."""
    row = session.get(Subscriber, subscriber_id)
    if row is None or row.status != SubscriberStatus.UNSUBSCRIBED:
        return row
    row.status, row.updated_at = SubscriberStatus.ACTIVE, now
    session.add(Event(at=now, kind="subscriber.resubscribed", subscriber_id=row.id))
    return row


# --- double opt-in ----------------------------------------------------------------------

CONFIRM_RESEND_AFTER = timedelta(minutes=10)  # a second sign-up sooner sends nothing more


def sign_up(
    *, session: Session, subscriber: NewSubscriber, now: datetime, message_id: str
) -> Delivery | None:
    """A web sign-up: the address becomes pending and a confirmation goes on the ledger.

    Returns the queued confirmation, or None when nothing is sent: the address is
    already active or suppressed, or a confirmation went out moments ago. The web
    page answers the same in every case, so it reveals no one's subscription.
    """
    row = session.exec(select(Subscriber).where(Subscriber.email == subscriber.email)).first()
    if row is not None and row.status not in (
        SubscriberStatus.PENDING,
        SubscriberStatus.UNSUBSCRIBED,
    ):
        return None
    if row is None:
        row = Subscriber(email=subscriber.email, created_at=now)
    elif row.status == SubscriberStatus.PENDING:
        recent = session.exec(
            select(Delivery.id).where(
                Delivery.subscriber_id == row.id,
                Delivery.kind == DeliveryKind.CONFIRM,
                Delivery.created_at > now - CONFIRM_RESEND_AFTER,
            )
        ).first()
        if recent is not None:
            return None
    # What they asked for this time; it takes effect when they confirm.
    row.name, row.timezone, row.send_at = subscriber.name, subscriber.timezone, subscriber.send_at
    row.status, row.updated_at = SubscriberStatus.PENDING, now
    session.add(row)
    session.flush()
    replace_topics(session=session, subscriber_id=row.id, topics=subscriber.topics, now=now)  # type: ignore[arg-type]
    confirmation = Delivery(
        subscriber_id=row.id,  # type: ignore[arg-type]
        kind=DeliveryKind.CONFIRM,
        edition=None,
        message_id=message_id,
        to_address=row.email,
        covers_until=now,
        next_attempt_at=now,
        created_at=now,
    )
    session.add(confirmation)
    session.add(Event(at=now, kind="subscriber.signed_up", subscriber_id=row.id))
    session.flush()
    return confirmation


def confirm(
    *, session: Session, subscriber_id: int, delivery_id: int, now: datetime
) -> Subscriber | None:
    """Activate a pending subscriber from their confirmation link (idempotent: a second
    click finds them active). None when the link names no such confirmation."""
    mail = session.get(Delivery, delivery_id)
    row = session.get(Subscriber, subscriber_id)
    if (
        row is None
        or mail is None
        or mail.kind != DeliveryKind.CONFIRM
        or mail.subscriber_id != subscriber_id
    ):
        return None
    if row.status == SubscriberStatus.PENDING:
        row.status, row.updated_at = SubscriberStatus.ACTIVE, now
        session.add(Event(at=now, kind="subscriber.confirmed", subscriber_id=row.id))
    return row


def expire_pending(*, session: Session, now: datetime, hours: float) -> int:
    """Forget sign-ups not confirmed within ``hours``: the address, filters and mail."""
    rows = list(
        session.exec(
            select(Subscriber).where(
                Subscriber.status == SubscriberStatus.PENDING,
                Subscriber.updated_at < now - timedelta(hours=hours),
            )
        )
    )
    for row in rows:
        session.add(Event(at=now, kind="subscriber.expired", subscriber_id=row.id))
        session.delete(row)  # filters and the confirmation go with it (ON DELETE CASCADE)
    return len(rows)


def replace_topics(
    *, session: Session, subscriber_id: int, topics: Sequence[str], now: datetime
) -> None:
    session.execute(sa.delete(TopicFilter).where(TopicFilter.subscriber_id == subscriber_id))  # type: ignore[arg-type]
    for topic in topics:
        session.add(TopicFilter(subscriber_id=subscriber_id, query=topic, created_at=now))

"""Phase 1 of planning: whose digest is to be planned now, and since when it covers papers.

Active subscribers whose latest local send time has passed (``due_edition``: on their
weekday, for weekly ones) and who have no digest for its edition yet. A digest covers
the papers first seen since their previous one (``covers_until`` of that row; for a
first digest, ``first_digest_days`` back). The edition is the local date of that send.
Subscribers are read a chunk at a time, in id order, so a million of them never sit in
memory at once.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo

import sqlalchemy as sa
from sqlmodel import Session, select

from newsletter.errors import UNREADABLE, SubscriberError
from newsletter.models import (
    Cadence,
    Delivery,
    DeliveryKind,
    Subscriber,
    SubscriberStatus,
    UTCDateTime,
)
from newsletter.relevance import DEFAULT_DIAL
from newsletter.subscribers import validate_cadence
from newsletter.values import clock_time

log = logging.getLogger(__name__)

CHUNK = 5000  # subscribers read, ranked and recorded together


def active_ids(session: Session) -> list[int]:
    """The ids of everyone planning may consider, in order (to share them out)."""
    return list(
        session.exec(
            select(Subscriber.id)
            .where(
                Subscriber.status == SubscriberStatus.ACTIVE, Subscriber.cadence != Cadence.PAUSED
            )
            .order_by(Subscriber.id)  # type: ignore[arg-type]
        )
    )  # type: ignore[arg-type]


def local_edition(*, now: datetime, timezone: str) -> date:
    return now.astimezone(ZoneInfo(timezone)).date()


def due_edition(
    *,
    now: datetime,
    timezone: str,
    send_at: str,
    weekday: int | None = None,
    joined: datetime | None = None,
) -> date | None:
    """The edition a subscriber's send time makes due now, or None: the local date of
    their latest scheduled send (daily, or on ``weekday``) at or before ``now``, when
    that is today, or when it was missed (after they ``joined``: a send before that was
    never theirs) and is still nearer than the next one.

    Planning runs every few minutes from whenever the service started, so a send time
    just before local midnight can fall between two runs, and a service that was down
    misses sends: a missed send is made up at once (in its own edition) rather than
    dropped, unless the next is nearer, which then covers both.
    """
    zone = ZoneInfo(timezone)
    send = clock_time(send_at)
    today = now.astimezone(zone).date()
    every = timedelta(days=1 if weekday is None else 7)
    day = today if weekday is None else today - timedelta(days=(today.weekday() - weekday) % 7)

    def at(d: date) -> datetime:  # a time the clocks skip counts from the hour after
        return datetime.combine(d, send, tzinfo=zone)

    if at(day) > now:
        day -= every
    latest, following = at(day), at(day + every)
    if day == today or (now - latest < following - now and (joined is None or joined <= latest)):
        return day
    return None


@dataclass(frozen=True, slots=True)
class Due:
    subscriber_id: int
    email: str
    edition: date
    since: datetime  # papers first seen after this are new for them
    dial: int = DEFAULT_DIAL
    ask: bool = True  # the digest may ask about papers just below the line


@dataclass(frozen=True, slots=True)
class Skipped:
    email: str
    why: str  # "already_planned" | "not_due" | "unreadable"


def due_chunks(
    session: Session,
    *,
    now: datetime,
    first_since: datetime,
    only_email: str | None = None,
    due_only: bool = True,
    next_edition: bool = False,
    ids: tuple[int, int] | None = None,
    size: int = CHUNK,
) -> Iterator[tuple[list[Due], list[Skipped]]]:
    """Per chunk of active subscribers (id order; ``ids``: only those from first to
    last): who is due, and who is not and why."""
    # Columns, not ORM objects: planning reads nine fields of every subscriber.
    query = select(
        Subscriber.id,
        Subscriber.email,
        Subscriber.timezone,
        Subscriber.send_at,
        Subscriber.cadence,
        Subscriber.weekday,
        Subscriber.dial,
        Subscriber.ask_feedback,
        Subscriber.created_at,
    ).where(Subscriber.status == SubscriberStatus.ACTIVE, Subscriber.cadence != Cadence.PAUSED)
    if only_email is not None:
        query = query.where(Subscriber.email == only_email)
    if ids is not None:
        query = query.where(Subscriber.id.between(*ids))  # type: ignore[union-attr]
    after = 0
    while True:
        rows = list(
            session.exec(query.where(Subscriber.id > after).order_by(Subscriber.id).limit(size))
        )  # type: ignore[arg-type,operator]
        if not rows:
            return
        after = rows[-1][0]
        last = _last_digests(session, first=rows[0][0], last=after)
        due: list[Due] = []
        skipped: list[Skipped] = []
        for sid, email, timezone, send_at, cadence, weekday, dial, ask, joined in rows:
            try:
                day = validate_cadence(cadence=cadence, weekday=weekday)[1]  # None: daily
                edition: date | None = local_edition(now=now, timezone=timezone)
                if due_only:
                    edition = due_edition(
                        now=now, timezone=timezone, send_at=send_at, weekday=day, joined=joined
                    )
                elif day is not None and edition.weekday() != day:  # type: ignore[union-attr]
                    edition = None  # their weekday only, even --now
                prev = last.get(sid)
                if edition is None:
                    skipped.append(Skipped(email, "not_due"))
                elif prev is not None and prev[0] >= edition and not next_edition:
                    skipped.append(Skipped(email, "already_planned"))
                else:
                    since = prev[1] if prev is not None else first_since
                    due.append(Due(sid, email, edition, since, dial, ask))
            except (*UNREADABLE, SubscriberError) as exc:
                # Checked when stored, so written around the checks (by hand, an older
                # release) or a zone this machine's tzdata lacks: this reader waits,
                # the others are planned.
                log.warning(
                    "cannot plan a subscriber: time zone %r, send time %r or weekday %r "
                    "unreadable: %s", timezone, send_at, weekday, exc,
                    extra={"subscriber_id": sid},
                )  # fmt: skip
                skipped.append(Skipped(email, "unreadable"))
        yield due, skipped


def _last_digests(session: Session, *, first: int, last: int) -> dict[int, tuple[date, datetime]]:
    """Each subscriber's latest edition and covered-until, for ids first..last."""
    return {
        sid: (edition, covers_until)
        for sid, edition, covers_until in session.exec(
            select(
                Delivery.subscriber_id,
                # type_coerce keeps the column types' conversions on the aggregates
                sa.type_coerce(sa.func.max(Delivery.edition), sa.Date()),
                sa.type_coerce(sa.func.max(Delivery.covers_until), UTCDateTime()),
            )
            .where(
                Delivery.kind == DeliveryKind.DIGEST,
                Delivery.subscriber_id.between(first, last),  # type: ignore[attr-defined]
            )
            .group_by(Delivery.subscriber_id)
        )
    }

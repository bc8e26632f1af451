"""Planning: due subscribers -> matched, ranked papers -> delivery rows (the ledger).

Three phases, one function each:

1. ``_who_is_due``: active subscribers whose local send time has passed (and whose
   weekday it is, for weekly ones) and who have no digest for their edition yet. A
   digest covers the papers first seen since their previous one (``covers_until`` of
   that row; for a first digest, ``first_digest_days`` back) that were never sent to
   them. The edition is the subscriber's local calendar date.
2. ``matcher.Matcher``: the candidate papers indexed once (``filters.DayIndex``) against the
   reference window, with stored vectors; each distinct topic, as its reader taught it
   (``feedback``), scored once for all papers (``relevance``); a digest is what the
   topics let in at the dial step, new to the reader, ranked, and what is just below.
3. ``_record``: rows inserted in bulk. One row per (subscriber, edition) is a unique
   constraint, so planning twice, or two planners at once, cannot make two digests:
   the loser's insert is skipped and it moves on. The Message-ID is chosen here, once,
   so a resend carries it. Batches are committed as they go, so delivery workers start
   on the first digests while the rest are planned.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlmodel import Session, select

from newsletter import render, snapshot
from newsletter.config import Settings
from newsletter.db import session_scope
from newsletter.feedback import taught_topics
from newsletter.ledger.jobs import digest_papers, paper_text
from newsletter.links import Links, Recipient
from newsletter.matcher import Matcher
from newsletter.models import (
    Cadence,
    Delivery,
    DeliveryKind,
    DeliveryStatus,
    Paper,
    Subscriber,
    SubscriberStatus,
    UTCDateTime,
)
from newsletter.relevance import DEFAULT_DIAL, Picked
from newsletter.subscribers import find, normalize_email

RECORD_BATCH = 1000  # digests written per round trip batch
FIRST_RECORD_BATCH = 100  # doubling up to RECORD_BATCH


def local_edition(*, now: datetime, timezone: str) -> date:
    return now.astimezone(ZoneInfo(timezone)).date()


def is_due(*, now: datetime, timezone: str, send_at: str) -> bool:
    """Has the subscriber's local send time passed today?"""
    local = now.astimezone(ZoneInfo(timezone))
    hh, mm = (int(x) for x in send_at.split(":"))
    return local.time() >= time(hh, mm)


def new_message_id(*, edition: date, subscriber_id: int, domain: str) -> str:
    return f"<{edition:%Y%m%d}.{subscriber_id}.{secrets.token_hex(8)}@{domain}>"


@dataclass(frozen=True, slots=True)
class PlannedDigest:
    email: str
    edition: date
    ranked: Picked
    delivery_id: int | None  # None on a dry run
    subscriber_id: int | None = None
    items: str = ""  # the ledger snapshot of what it holds (``snapshot.encode``)


@dataclass(slots=True)
class PlanReport:
    planned: list[PlannedDigest] = field(default_factory=list)
    no_match: list[str] = field(default_factory=list)
    already_planned: list[str] = field(default_factory=list)
    not_due: list[str] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class _Due:
    subscriber_id: int
    email: str
    edition: date
    since: datetime  # papers first seen after this are new for them
    dial: int = DEFAULT_DIAL
    ask: bool = True  # the digest may ask about papers just below the line


@dataclass(frozen=True, slots=True)
class _Draft:
    due: _Due
    ranked: Picked
    items: str  # the ledger snapshot (``snapshot.encode``)


def plan_digests(
    *,
    engine: sa.Engine,
    settings: Settings,
    now: datetime,
    only_email: str | None = None,
    due_only: bool = True,
    dry_run: bool = False,
    next_edition: bool = False,
) -> PlanReport:
    """Plan today's digest for each active subscriber (due ones, unless ``due_only`` is off).

    ``next_edition`` (with ``dry_run``) looks past an edition already planned
    today at what the next digest would hold: what ``preview`` shows.
    """
    report = PlanReport()
    with session_scope(engine=engine) as session:
        due = _who_is_due(
            session,
            report,
            now=now,
            first_since=now - timedelta(days=settings.first_digest_days),
            only_email=only_email,
            due_only=due_only,
            next_edition=next_edition,
        )
        if not due:
            return report
        topics = taught_topics(session=session, ids=[d.subscriber_id for d in due])
        wanted = {t for ts in topics.values() for t in ts}
        matcher = Matcher.load(session, since=min(d.since for d in due), now=now, topics=wanted)
        drafts: list[_Draft] = []
        batch_size = FIRST_RECORD_BATCH
        for d in due:
            ranked, key = matcher.rank(
                subscriber_id=d.subscriber_id,
                since=d.since,
                topics=topics.get(d.subscriber_id, []),
                limit=settings.digest_max_papers,
                dial=d.dial,
                ask=d.ask,
            )
            if not ranked.matches and not settings.send_empty:
                report.no_match.append(d.email)  # empty days send nothing by default
                continue
            if dry_run:
                items = matcher.snapshot(ranked, key)
                report.planned.append(
                    PlannedDigest(d.email, d.edition, ranked, None, d.subscriber_id, items)
                )
                continue
            drafts.append(_Draft(d, ranked, matcher.snapshot(ranked, key)))
            if len(drafts) >= batch_size:
                _record(session, drafts, report, now=now, settings=settings)
                # Committed batch by batch: delivery workers start on these while the
                # rest is planned, and SQLite's write lock is not held for the whole run.
                # The first batches are small, so they start early.
                session.commit()
                drafts = []
                batch_size = min(batch_size * 2, RECORD_BATCH)
        _record(session, drafts, report, now=now, settings=settings)
        if dry_run:
            session.rollback()
    return report


def _who_is_due(
    session: Session,
    report: PlanReport,
    *,
    now: datetime,
    first_since: datetime,
    only_email: str | None,
    due_only: bool,
    next_edition: bool,
) -> list[_Due]:
    """Phase 1: whose digest is to be planned now, and since when it covers papers."""
    # Columns, not ORM objects: planning reads six fields of every subscriber.
    query = select(
        Subscriber.id,
        Subscriber.email,
        Subscriber.timezone,
        Subscriber.send_at,
        Subscriber.cadence,
        Subscriber.weekday,
        Subscriber.dial,
        Subscriber.ask_feedback,
    ).where(Subscriber.status == SubscriberStatus.ACTIVE, Subscriber.cadence != Cadence.PAUSED)
    if only_email is not None:
        query = query.where(Subscriber.email == only_email)
    subscribers = list(session.exec(query.order_by(Subscriber.id)))
    if not subscribers:
        return []
    last = {
        sid: (edition, covers_until)
        for sid, edition, covers_until in session.exec(
            select(
                Delivery.subscriber_id,
                # type_coerce keeps the column types' conversions on the aggregates
                sa.type_coerce(sa.func.max(Delivery.edition), sa.Date()),
                sa.type_coerce(sa.func.max(Delivery.covers_until), UTCDateTime()),
            )
            .where(Delivery.kind == DeliveryKind.DIGEST)
            .group_by(Delivery.subscriber_id)
        )
    }
    due: list[_Due] = []
    for sid, email, timezone, send_at, cadence, weekday, dial, ask in subscribers:
        edition = local_edition(now=now, timezone=timezone)
        prev = last.get(sid)
        if prev is not None and prev[0] >= edition and not next_edition:
            report.already_planned.append(email)
        elif cadence == Cadence.WEEKLY and edition.weekday() != weekday:
            report.not_due.append(email)  # weekly: on their weekday only, even --now
        elif due_only and not is_due(now=now, timezone=timezone, send_at=send_at):
            report.not_due.append(email)
        else:
            since = prev[1] if prev is not None else first_since
            due.append(_Due(sid, email, edition, since, dial, ask))
    return due


def _record(
    session: Session, drafts: list[_Draft], report: PlanReport, *, now: datetime, settings: Settings
) -> None:
    """Phase 3: insert the drafts' rows in bulk and report each digest once, complete;
    a digest another planner recorded first is reported as already planned."""
    created = _insert(session, drafts, now=now, settings=settings)
    for draft in drafts:
        d = draft.due
        delivery_id = created.get(d.subscriber_id)
        if delivery_id is None:
            report.already_planned.append(d.email)
        else:
            report.planned.append(
                PlannedDigest(
                    d.email, d.edition, draft.ranked, delivery_id, d.subscriber_id, draft.items
                )
            )


def _insert(
    session: Session, drafts: list[_Draft], *, now: datetime, settings: Settings
) -> dict[int, int]:
    """Insert deliveries in bulk; returns the delivery id created per subscriber.

    ON CONFLICT DO NOTHING on (subscriber, edition): a digest another planner
    inserted first is skipped, not an error that would undo the whole batch.
    """
    if not drafts:
        return {}
    rows = [
        {
            "subscriber_id": d.due.subscriber_id,
            "edition": d.due.edition,
            "status": DeliveryStatus.PENDING,
            "message_id": new_message_id(
                edition=d.due.edition,
                subscriber_id=d.due.subscriber_id,
                domain=settings.message_id_domain,
            ),
            "to_address": d.due.email,
            "covers_until": now,
            "paper_count": len(d.ranked.matches),
            "more_count": d.ranked.more,
            "attempts": 0,
            "next_attempt_at": now,
            "created_at": now,
            "items": d.items,
        }
        for d in drafts
    ]
    insert = pg_insert if session.get_bind().dialect.name == "postgresql" else sqlite_insert
    statement = (
        insert(Delivery.__table__)  # type: ignore[attr-defined]
        .on_conflict_do_nothing(index_elements=["subscriber_id", "edition"])
        .returning(Delivery.id, Delivery.subscriber_id)
    )
    return {sid: did for did, sid in session.connection().execute(statement, rows)}


def preview_digest(
    *, engine: sa.Engine, settings: Settings, email: str, now: datetime, links: Links
) -> render.Digest | None:
    """The digest ``email`` would get next, built without recording anything."""
    address = normalize_email(email)
    report = plan_digests(
        engine=engine,
        settings=settings,
        now=now,
        only_email=address,
        due_only=False,
        dry_run=True,
        next_edition=True,
    )
    with session_scope(engine=engine) as session:
        sub = find(session=session, email=address)
        if not report.planned:
            return None
        planned = report.planned[0]
        items = tuple(i for i in snapshot.decode(planned.items) if not i.near)
        ids = [i.paper_id for i in items]
        papers = {p.id: p for p in session.exec(select(Paper).where(Paper.id.in_(ids)))}  # type: ignore[union-attr]
        shown = digest_papers(items=items, texts={i: paper_text(p) for i, p in papers.items()})  # type: ignore[misc]
        who = Recipient(sub.id, sub.token_salt)  # type: ignore[arg-type]
        return render.Digest(
            to_address=sub.email,
            to_name=sub.name,
            edition=planned.edition,
            papers=shown,
            more_count=planned.ranked.more,
            message_id=new_message_id(
                edition=planned.edition,
                subscriber_id=sub.id,  # type: ignore[arg-type]
                domain=settings.message_id_domain,
            ),
            date=now,
            unsubscribe_url=links.unsubscribe(who=who),
            preferences_url=links.preferences(who=who),
            # Not recorded, so there is no archive copy yet: the preference centre instead.
            archive_url=links.preferences(who=who),
        )

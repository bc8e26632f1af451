"""Planning: due subscribers -> matched, ranked papers -> delivery rows (the ledger).

A digest covers the papers first seen since the subscriber's previous digest
(``covers_until`` of that row; for a first digest, ``first_digest_days``
back) that were never sent to them, matched against their filters. One row
per (subscriber, edition) is a unique constraint, so planning twice, or two
planners at once, cannot make two digests: the loser's insert fails and it
moves on. The Message-ID is chosen here, once, so a resend carries it.

The edition is the subscriber's local calendar date at planning time.

Matching indexes the candidate papers once (``filters.DayIndex``) and
evaluates each distinct filter once for all papers; a subscriber's digest is
then the union of their filters' matches, restricted to what is new for them.
"""

from __future__ import annotations

import bisect
import secrets
from dataclasses import dataclass, field, replace
from datetime import date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlmodel import Session, select

from newsletter import render, snapshot
from newsletter.config import Settings
from newsletter.db import session_scope
from newsletter.errors import SubscriberError
from newsletter.filters import DayIndex, PaperDoc, Ranked, Ranker, compile_filter
from newsletter.ledger.jobs import digest_papers
from newsletter.links import Links, Recipient
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
from newsletter.subscribers import normalize_email, topics_by_subscriber

# A subscriber's id, email, timezone, send_at, cadence, weekday.
_Due = sa.Row[tuple[int, str, str, str, str, int | None]]


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
    ranked: Ranked
    delivery_id: int | None  # None on a dry run
    subscriber_id: int | None = None


@dataclass(slots=True)
class PlanReport:
    planned: list[PlannedDigest] = field(default_factory=list)
    no_match: list[str] = field(default_factory=list)
    already_planned: list[str] = field(default_factory=list)
    not_due: list[str] = field(default_factory=list)


def paper_doc(paper: Paper) -> PaperDoc:
    organization = " ".join(x for x in (paper.organization_handle, paper.organization) if x)
    return PaperDoc(
        id=paper.id,  # type: ignore[arg-type]
        title=paper.title,
        abstract=paper.abstract,
        organization=organization or None,
        upvotes=paper.upvotes,
        authors=paper.authors,
        published_on=paper.published_on,
        first_seen_at=paper.first_seen_at,
    )


def _sent_papers(*, session: Session, since: datetime) -> dict[int, set[int]]:
    """Per subscriber, the papers of their digests planned after ``since``: a superset of
    those first seen after ``since`` (a digest holds only papers seen before it was planned)."""
    sent: dict[int, set[int]] = {}
    for sid, items in session.exec(
        select(Delivery.subscriber_id, Delivery.items).where(Delivery.created_at > since)
    ):
        sent.setdefault(sid, set()).update(i.paper_id for i in snapshot.decode(items))
    return sent


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
    first_since = now - timedelta(days=settings.first_digest_days)
    with session_scope(engine=engine) as session:
        # Columns, not ORM objects: planning reads four fields of every subscriber.
        query = select(
            Subscriber.id,
            Subscriber.email,
            Subscriber.timezone,
            Subscriber.send_at,
            Subscriber.cadence,
            Subscriber.weekday,
        ).where(Subscriber.status == SubscriberStatus.ACTIVE, Subscriber.cadence != Cadence.PAUSED)
        if only_email is not None:
            query = query.where(Subscriber.email == only_email)
        subscribers = list(session.exec(query.order_by(Subscriber.id)))
        if not subscribers:
            return report
        topics = topics_by_subscriber(session=session, ids=[s.id for s in subscribers])  # type: ignore[misc]
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

        work: list[tuple[_Due, date, datetime]] = []
        for sub in subscribers:
            edition = local_edition(now=now, timezone=sub.timezone)
            prev = last.get(sub.id)  # type: ignore[arg-type]
            if prev is not None and prev[0] >= edition and not next_edition:
                report.already_planned.append(sub.email)
            elif sub.cadence == Cadence.WEEKLY and edition.weekday() != sub.weekday:
                report.not_due.append(sub.email)  # weekly: on their weekday only, even --now
            elif due_only and not is_due(now=now, timezone=sub.timezone, send_at=sub.send_at):
                report.not_due.append(sub.email)
            else:
                since = prev[1] if prev is not None else first_since
                work.append((sub, edition, since))
        if not work:
            return report

        min_since = min(since for _, _, since in work)
        papers = list(
            session.exec(
                select(Paper)
                .where(Paper.first_seen_at > min_since, Paper.first_seen_at <= now)
                .order_by(Paper.first_seen_at, Paper.id)
            )
        )
        candidates = [paper_doc(p) for p in papers]  # oldest first: the since-masks need it
        items_json = _ItemsJson(papers)
        sent = _sent_papers(session=session, since=min_since)
        index = DayIndex(candidates)
        ranker = Ranker(index)
        position = {doc.id: i for i, doc in enumerate(candidates)}
        seen = [doc.first_seen_at for doc in candidates]
        batch: list[tuple[_Due, date, Ranked, str, int]] = []
        batch_size = FIRST_RECORD_BATCH
        for sub, edition, since in work:
            filters = [compile_filter(q) for q in topics.get(sub.id, [])]  # type: ignore[arg-type]
            # New for this subscriber: first seen after `since` (a suffix, the list
            # is in first-seen order), minus what one of their digests already held.
            first_new = bisect.bisect_right(seen, since)
            within = index.everything & ~((1 << first_new) - 1)
            for paper_id in sent.get(sub.id, ()):  # type: ignore[arg-type]
                if paper_id in position:
                    within &= ~(1 << position[paper_id])
            ranked = ranker.rank(filters, within=within, limit=settings.digest_max_papers)
            if not ranked.matches and not settings.send_empty:
                report.no_match.append(sub.email)  # empty days send nothing by default
                continue
            report.planned.append(PlannedDigest(sub.email, edition, ranked, None, sub.id))
            if not dry_run:
                batch.append((sub, edition, ranked, items_json(ranked), len(report.planned) - 1))
                if len(batch) >= batch_size:
                    _record_batch(session, batch, now=now, settings=settings, report=report)
                    # Committed batch by batch: delivery workers start on these while the
                    # rest is planned, and SQLite's write lock is not held for the whole run.
                    # The first batches are small, so they start early.
                    session.commit()
                    batch = []
                    batch_size = min(batch_size * 2, RECORD_BATCH)
        if batch:
            _record_batch(session, batch, now=now, settings=settings, report=report)
        if not dry_run:  # digests another planner recorded first are not ours to report
            lost = [p for p in report.planned if p.delivery_id is None]
            report.already_planned.extend(p.email for p in lost)
            report.planned[:] = [p for p in report.planned if p.delivery_id is not None]
        if dry_run:
            session.rollback()
    return report


RECORD_BATCH = 1000  # digests written per round trip batch
FIRST_RECORD_BATCH = 100  # doubling up to RECORD_BATCH


class _ItemsJson:
    """Each ranking's ledger snapshot, encoded once: subscribers who chose the same
    topics share a ranking (the ranker memoizes them, which also keeps them alive, so
    their ids are stable keys here)."""

    def __init__(self, papers: list[Paper]) -> None:
        self.shown = {p.id: (p.upvotes, p.authors, p.organization, p.published_on) for p in papers}
        self.encoded: dict[int, str] = {}

    def __call__(self, ranked: Ranked) -> str:
        text = self.encoded.get(id(ranked))
        if text is None:
            text = self.encoded[id(ranked)] = snapshot.encode(
                snapshot.Item(m.paper_id, m.filters, m.words, *self.shown[m.paper_id])
                for m in ranked.matches
            )
        return text


def _record_batch(
    session: Session,
    batch: list[tuple[_Due, date, Ranked, str, int]],
    *,
    now: datetime,
    settings: Settings,
    report: PlanReport,
) -> None:
    """Insert deliveries in bulk.

    ON CONFLICT DO NOTHING on (subscriber, edition): a digest another planner
    inserted first is skipped, not an error that would undo the whole batch.
    """
    rows = [
        {
            "subscriber_id": sub.id,
            "edition": edition,
            "status": DeliveryStatus.PENDING,
            "message_id": new_message_id(
                edition=edition,
                subscriber_id=sub.id,  # type: ignore[arg-type]
                domain=settings.message_id_domain,
            ),
            "to_address": sub.email,
            "covers_until": now,
            "paper_count": len(ranked.matches),
            "more_count": ranked.more,
            "attempts": 0,
            "next_attempt_at": now,
            "created_at": now,
            "items": items,
        }
        for sub, edition, ranked, items, _ in batch
    ]
    insert = pg_insert if session.get_bind().dialect.name == "postgresql" else sqlite_insert
    statement = (
        insert(Delivery.__table__)  # type: ignore[attr-defined]
        .on_conflict_do_nothing(index_elements=["subscriber_id", "edition"])
        .returning(Delivery.id, Delivery.subscriber_id)
    )
    created = dict((sid, did) for did, sid in session.connection().execute(statement, rows))
    for sub, _edition, _ranked, _items, at in batch:
        delivery_id = created.get(sub.id)  # type: ignore[arg-type]
        if delivery_id is not None:  # else lost the race: left without an id, dropped
            report.planned[at] = replace(report.planned[at], delivery_id=delivery_id)


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
        sub = session.exec(select(Subscriber).where(Subscriber.email == address)).first()
        if sub is None:
            raise SubscriberError(f"no subscriber {address}", field="email")
        if not report.planned:
            return None
        planned = report.planned[0]
        who = Recipient(sub.id, sub.token_salt)  # type: ignore[arg-type]
        papers = list(
            session.exec(
                select(Paper).where(Paper.id.in_([m.paper_id for m in planned.ranked.matches]))  # type: ignore[union-attr]
            )
        )
        shown = digest_papers(
            items=snapshot.decode(_ItemsJson(papers)(planned.ranked)),
            texts={p.id: (p.title, p.abstract) for p in papers},  # type: ignore[misc]
        )
        return render.Digest(
            to_address=sub.email,
            to_name=sub.name,
            edition=planned.edition,
            papers=shown,
            more_count=planned.ranked.more,
            message_id=new_message_id(
                edition=planned.edition, subscriber_id=sub.id, domain=settings.message_id_domain
            ),  # type: ignore[arg-type]
            date=now,
            unsubscribe_url=links.unsubscribe(who=who),
            preferences_url=links.preferences(who=who),
            # Not recorded, so there is no archive copy yet: the preference centre instead.
            archive_url=links.preferences(who=who),
        )

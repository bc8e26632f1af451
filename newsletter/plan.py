"""Planning: due subscribers -> matched, ranked papers -> delivery rows (the ledger).

A digest covers the papers first seen since the subscriber's previous digest
(``covers_until`` of that row; for a first digest, ``first_digest_days``
back) that were never sent to them, matched against their filters. One row
per (subscriber, edition) is a unique constraint, so planning twice, or two
planners at once, cannot make two digests: the loser's insert fails and it
moves on. The Message-ID is chosen here, once, so a resend carries it.

The edition is the subscriber's local calendar date at planning time.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import sqlalchemy as sa
from sqlmodel import Session, select

from newsletter import render
from newsletter.config import Settings
from newsletter.db import session_scope
from newsletter.errors import SubscriberError
from newsletter.filters import CompiledTopic, Document, compile_topic
from newsletter.links import Links
from newsletter.models import (
    Delivery,
    DeliveryItem,
    DeliveryStatus,
    Paper,
    Subscriber,
    SubscriberStatus,
    UTCDateTime,
)
from newsletter.subscribers import normalize_email, topics_by_subscriber

TITLE_WEIGHT = 3.0


@dataclass(frozen=True, slots=True)
class Candidate:
    """A paper as the matcher sees it: text prepared once, shared by all subscribers."""

    id: int
    doc: Document
    upvotes: int
    first_seen_at: datetime


@dataclass(frozen=True, slots=True)
class Match:
    paper_id: int
    score: float
    topics: tuple[str, ...]
    terms: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Ranked:
    matches: tuple[Match, ...]
    total: int

    @property
    def more(self) -> int:
        return self.total - len(self.matches)


def rank(*, topics: Sequence[CompiledTopic], candidates: Sequence[Candidate], limit: int) -> Ranked:
    """Pure core: every candidate any topic matches, best first, capped at ``limit``.

    Score: each matching topic adds its hits (title hits weigh TITLE_WEIGHT).
    Equal scores are ordered by upvotes, then freshness, then id, so the order
    is stable and popularity never outranks relevance.
    """
    found: list[Match] = []
    for cand in candidates:
        score = 0.0
        matched_topics: list[str] = []
        terms: dict[str, None] = {}
        for topic in topics:
            hits = topic.match(cand.doc)
            if hits:
                matched_topics.append(topic.query)
                score += sum(TITLE_WEIGHT if h.in_title else 1.0 for h in hits)
                terms.update((h.term, None) for h in hits)
        if matched_topics:
            found.append(Match(cand.id, score, tuple(matched_topics), tuple(terms)))
    order = {c.id: c for c in candidates}
    found.sort(
        key=lambda m: (
            -m.score,
            -order[m.paper_id].upvotes,
            -order[m.paper_id].first_seen_at.timestamp(),
            m.paper_id,
        )
    )
    return Ranked(matches=tuple(found[:limit]), total=len(found))


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


@dataclass(slots=True)
class PlanReport:
    planned: list[PlannedDigest] = field(default_factory=list)
    no_match: list[str] = field(default_factory=list)
    already_planned: list[str] = field(default_factory=list)
    not_due: list[str] = field(default_factory=list)


def load_candidates(*, session: Session, since: datetime, until: datetime) -> list[Candidate]:
    rows = session.exec(
        select(Paper.id, Paper.title, Paper.abstract, Paper.upvotes, Paper.first_seen_at)
        .where(Paper.first_seen_at > since, Paper.first_seen_at <= until)
        .order_by(Paper.id)
    )
    return [
        Candidate(id=pid, doc=Document.of(title=t, abstract=a), upvotes=u or 0, first_seen_at=fs)
        for pid, t, a, u, fs in rows
    ]


def _sent_papers(*, session: Session, since: datetime) -> dict[int, set[int]]:
    """Per subscriber, the papers first seen after ``since`` already in one of their digests."""
    rows = session.exec(
        select(Delivery.subscriber_id, DeliveryItem.paper_id)
        .join(DeliveryItem, DeliveryItem.delivery_id == Delivery.id)  # type: ignore[arg-type]
        .join(Paper, Paper.id == DeliveryItem.paper_id)  # type: ignore[arg-type]
        .where(Paper.first_seen_at > since)
    )
    sent: dict[int, set[int]] = {}
    for sid, pid in rows:
        sent.setdefault(sid, set()).add(pid)
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
        query = select(Subscriber).where(Subscriber.status == SubscriberStatus.ACTIVE)
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
                ).group_by(Delivery.subscriber_id)
            )
        }

        work: list[tuple[Subscriber, date, datetime]] = []
        for sub in subscribers:
            edition = local_edition(now=now, timezone=sub.timezone)
            prev = last.get(sub.id)  # type: ignore[arg-type]
            if prev is not None and prev[0] >= edition and not next_edition:
                report.already_planned.append(sub.email)
            elif due_only and not is_due(now=now, timezone=sub.timezone, send_at=sub.send_at):
                report.not_due.append(sub.email)
            else:
                since = prev[1] if prev is not None else first_since
                work.append((sub, edition, since))
        if not work:
            return report

        min_since = min(since for _, _, since in work)
        candidates = load_candidates(session=session, since=min_since, until=now)
        sent = _sent_papers(session=session, since=min_since)
        compiled: dict[str, CompiledTopic] = {}
        for sub, edition, since in work:
            filters = [compiled.setdefault(q, compile_topic(q)) for q in topics.get(sub.id, [])]  # type: ignore[arg-type]
            already = sent.get(sub.id, set())  # type: ignore[arg-type]
            mine = [c for c in candidates if c.first_seen_at > since and c.id not in already]
            ranked = rank(topics=filters, candidates=mine, limit=settings.digest_max_papers)
            if not ranked.matches:
                report.no_match.append(sub.email)
                continue
            delivery_id = None
            if not dry_run:
                delivery_id = _record(
                    session, sub=sub, edition=edition, ranked=ranked, now=now, settings=settings
                )
                if delivery_id is None:
                    report.already_planned.append(sub.email)
                    continue
            report.planned.append(PlannedDigest(sub.email, edition, ranked, delivery_id))
        if dry_run:
            session.rollback()
    return report


def _record(
    session: Session,
    *,
    sub: Subscriber,
    edition: date,
    ranked: Ranked,
    now: datetime,
    settings: Settings,
) -> int | None:
    """Insert the delivery and its items; None if another planner got there first."""
    try:
        with session.begin_nested():
            delivery = Delivery(
                subscriber_id=sub.id,  # type: ignore[arg-type]
                edition=edition,
                status=DeliveryStatus.PENDING,
                message_id=new_message_id(
                    edition=edition,
                    subscriber_id=sub.id,
                    domain=settings.message_id_domain,  # type: ignore[arg-type]
                ),
                to_address=sub.email,
                covers_until=now,
                paper_count=len(ranked.matches),
                more_count=ranked.more,
                next_attempt_at=now,
                created_at=now,
            )
            session.add(delivery)
            session.flush()
            session.add_all(
                DeliveryItem(
                    delivery_id=delivery.id,  # type: ignore[arg-type]
                    paper_id=m.paper_id,
                    position=pos,
                    matched_topics=json.dumps(m.topics),
                    matched_terms=json.dumps(m.terms),
                )
                for pos, m in enumerate(ranked.matches)
            )
            session.flush()
    except sa.exc.IntegrityError:
        return None
    return delivery.id


def preview_digest(
    *, engine: sa.Engine, settings: Settings, email: str, now: datetime, links: Links
) -> render.Digest | None:
    """The digest ``email`` would get next, built without recording anything."""
    from newsletter.deliver import digest_paper

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
        papers = {
            p.id: p
            for p in session.exec(
                select(Paper).where(Paper.id.in_([m.paper_id for m in planned.ranked.matches]))
            )
        }  # type: ignore[union-attr]
        items = [
            digest_paper(
                paper=papers[m.paper_id],
                item=DeliveryItem(
                    delivery_id=0,
                    paper_id=m.paper_id,
                    position=i,
                    matched_topics=json.dumps(m.topics),
                    matched_terms=json.dumps(m.terms),
                ),
            )
            for i, m in enumerate(planned.ranked.matches)
        ]
        return render.Digest(
            to_address=sub.email,
            to_name=sub.name,
            edition=planned.edition,
            papers=tuple(items),
            more_count=planned.ranked.more,
            message_id=new_message_id(
                edition=planned.edition, subscriber_id=sub.id, domain=settings.message_id_domain
            ),  # type: ignore[arg-type]
            date=now,
            unsubscribe_url=links.unsubscribe(subscriber_id=sub.id),  # type: ignore[arg-type]
            preferences_url=links.preferences(subscriber_id=sub.id),  # type: ignore[arg-type]
            archive_url=f"{settings.base_url}/d/preview",
        )

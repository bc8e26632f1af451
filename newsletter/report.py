"""The operator's daily report: what the pipeline did in the last 24 hours.

Sent to ``NEWSLETTER_OPERATOR_EMAIL`` through the configured backend (plain text: an
operator's inbox, not a subscriber's). A day with no new paper says so at the top,
so a quiet day cannot look like a broken pipeline, nor the reverse.
"""

from __future__ import annotations

import asyncio
import json
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import format_datetime

import sqlalchemy as sa
from sqlmodel import select

from newsletter.backends import get_backend
from newsletter.backends.base import OutgoingMessage
from newsletter.config import Settings
from newsletter.db import session_scope
from newsletter.events import EventKind
from newsletter.ledger.reputation import EditionRates, rates_by_edition
from newsletter.models import Delivery, DeliveryKind, DeliveryStatus, Event, Paper
from newsletter.text import terminal_safe


@dataclass(frozen=True, slots=True)
class DailyFigures:
    since: datetime
    until: datetime
    papers: int
    planned: int
    sent: int
    retrying: int
    failed: int
    hard_bounces: int
    soft_bounces: int
    unsubscribes: int
    complaints: int
    files_failed: list[str]
    editions: list[EditionRates]  # the latest few, newest first


# What a digest's last attempt records when it fails for good (``ledger.outcomes``,
# ``claims.expire``): a soft bounce only once retrying is over.
_FAILURES = (EventKind.FAILED, EventKind.HARD_BOUNCE, EventKind.SOFT_BOUNCE)


def daily_figures(*, engine: sa.Engine, now: datetime) -> DailyFigures:
    since = now - timedelta(days=1)

    def count(query: sa.Select[tuple[int]]) -> int:
        return int(session.exec(query).one())  # type: ignore[call-overload]

    def events(kind: str) -> int:
        return count(
            select(sa.func.count()).select_from(Event).where(Event.kind == kind, Event.at > since)
        )

    with session_scope(engine=engine) as session:
        digests = (
            select(sa.func.count())
            .select_from(Delivery)
            .where(Delivery.kind == DeliveryKind.DIGEST)
        )
        failed_files = [
            json.loads(e.detail).get("path", "?")
            for e in session.exec(
                select(Event).where(Event.kind == EventKind.FILE_FAILED, Event.at > since)
            )
        ]
        return DailyFigures(
            since=since,
            until=now,
            papers=count(
                select(sa.func.count()).select_from(Paper).where(Paper.first_seen_at > since)
            ),
            planned=count(digests.where(Delivery.created_at > since)),
            sent=count(digests.where(Delivery.sent_at > since)),  # type: ignore[operator]
            retrying=count(
                digests.where(Delivery.status == DeliveryStatus.PENDING, Delivery.attempts > 0)
            ),
            # Failed in the last day, whenever planned: retries run 48 hours by default,
            # so a digest planned before the window often fails within it.
            failed=count(
                select(sa.func.count(sa.distinct(Event.delivery_id)))
                .join(Delivery, Delivery.id == Event.delivery_id)
                .where(
                    Delivery.kind == DeliveryKind.DIGEST,
                    Delivery.status == DeliveryStatus.FAILED,
                    Event.kind.in_(_FAILURES),  # type: ignore[attr-defined]
                    Event.at > since,
                )
            ),
            hard_bounces=events(EventKind.HARD_BOUNCE),
            soft_bounces=events(EventKind.SOFT_BOUNCE),
            unsubscribes=events(EventKind.UNSUBSCRIBED),
            complaints=events(EventKind.COMPLAINT),
            files_failed=sorted(set(failed_files)),
            editions=rates_by_edition(engine=engine, last=3),
        )


def report_text(figures: DailyFigures) -> str:
    lines = []
    for r in figures.editions:
        lines += [f"WARNING: edition {r.edition}: {w}." for w in r.warnings]
    if lines:
        lines.append("")
    if figures.papers == 0:
        lines += [
            "WARNING: no new paper arrived in the last 24 hours. Check that corpus files",
            "are still being delivered to the corpus directory.",
            "",
        ]
    lines += [
        f"From {figures.since:%Y-%m-%d %H:%M} to {figures.until:%Y-%m-%d %H:%M} UTC:",
        "",
        f"  papers ingested      {figures.papers}",
        f"  digests planned      {figures.planned}",
        f"  digests sent         {figures.sent}",
        f"  retrying now         {figures.retrying}",
        f"  failed               {figures.failed}",
        f"  bounces              {figures.hard_bounces} hard, {figures.soft_bounces} soft",
        f"  complaints           {figures.complaints}",
        f"  unsubscribes         {figures.unsubscribes}",
        f"  files failed to parse {len(figures.files_failed)}",
    ]
    lines += [f"    {terminal_safe(path)}" for path in figures.files_failed]  # a line each
    for r in figures.editions:
        lines.append(
            f"  edition {r.edition}: {r.sent} sent, bounces {r.bounce_rate:.2%}, "
            f"complaints {r.complaint_rate:.2%}"
        )
    return "\n".join(lines) + "\n"


def send_report(*, engine: sa.Engine, settings: Settings, now: datetime) -> str:
    """Build and send today's report; returns the day it covers."""
    figures = daily_figures(engine=engine, now=now)
    message = EmailMessage(policy=SMTP)
    message["From"] = settings.from_address
    message["To"] = settings.operator_email
    quiet = " (no new papers!)" if figures.papers == 0 else ""
    message["Subject"] = f"newsletter daily report {now:%Y-%m-%d}{quiet}"
    message["Date"] = format_datetime(now)
    message_id = f"<report.{now:%Y%m%d}.{secrets.token_hex(6)}@{settings.message_id_domain}>"
    message["Message-ID"] = message_id
    message.set_content(report_text(figures))
    outgoing = OutgoingMessage(
        message_id=message_id,
        sender=settings.from_address,
        recipients=(settings.operator_email,),
        data=message.as_bytes(),
        edition=now.date(),
    )

    async def send() -> None:
        async with get_backend(settings=settings, engine=engine) as backend:
            await backend.send(outgoing)

    asyncio.run(send())  # the scheduler runs jobs in worker threads: a loop of its own here
    return now.date().isoformat()

"""Bounce and complaint rates per edition: what mailbox providers judge a sender by.

Rates are per digest sent in the edition, or refused by the relay when it was sent (a
digest counts once however many reports it drew): a refusal at RCPT is a bounce as
much as a report that comes back later, and left out, a list of dead addresses read
0% bounces. The thresholds are the ones providers publish for bulk senders: Gmail and
Yahoo ask for a spam-complaint rate under 0.3%; bounces above a few percent mark a
list that is not kept clean (2% here).
"""

from __future__ import annotations

from dataclasses import dataclass

import sqlalchemy as sa
import sqlalchemy.orm
from sqlmodel import select

from newsletter.db import session_scope
from newsletter.events import EventKind
from newsletter.models import Delivery, DeliveryKind, Event

COMPLAINT_RATE_LIMIT = 0.003
BOUNCE_RATE_LIMIT = 0.02


@dataclass(frozen=True, slots=True)
class EditionRates:
    edition: str
    sent: int  # digests handed to the relay: accepted, or refused there and then
    bounced: int  # digests that bounced, hard or soft, then or later
    complained: int

    @property
    def bounce_rate(self) -> float:
        return self.bounced / self.sent if self.sent else 0.0

    @property
    def complaint_rate(self) -> float:
        return self.complained / self.sent if self.sent else 0.0

    @property
    def warnings(self) -> list[str]:
        found = []
        if self.complaint_rate > COMPLAINT_RATE_LIMIT:
            found.append(
                f"complaints {self.complaint_rate:.2%} of digests (providers want under 0.3%)"
            )
        if self.bounce_rate > BOUNCE_RATE_LIMIT:
            found.append(f"bounces {self.bounce_rate:.2%} of digests (keep under 2%)")
        return found

    def as_dict(self) -> dict[str, object]:
        return {
            "sent": self.sent,
            "bounced": self.bounced,
            "complained": self.complained,
            "bounce_rate": round(self.bounce_rate, 5),
            "complaint_rate": round(self.complaint_rate, 5),
            "warnings": self.warnings,
        }


def rates_by_edition(*, engine: sa.Engine, last: int = 14) -> list[EditionRates]:
    """The ``last`` editions that sent digests, newest first."""
    digests = (Delivery.kind == DeliveryKind.DIGEST, Delivery.edition.is_not(None))  # type: ignore[union-attr]
    # Accepted, or bounced there and then (refused at RCPT): not a digest still retrying,
    # nor one lost to our relay being down, which would dilute the rate.
    bounce = sa.orm.aliased(Event)  # apart from the events a query below reads
    refused = (
        sa.select(bounce.id)
        .where(
            bounce.delivery_id == Delivery.id,
            bounce.kind.in_([EventKind.HARD_BOUNCE, EventKind.SOFT_BOUNCE, EventKind.REJECTED]),
        )
        .correlate(Delivery)
        .exists()
    )
    tried = sa.or_(Delivery.sent_at.is_not(None), refused)  # type: ignore[union-attr]
    with session_scope(engine=engine) as session:
        sent = session.exec(
            select(Delivery.edition, sa.func.count())  # type: ignore[call-overload]
            .where(*digests, tried)
            .group_by(Delivery.edition)
            .order_by(Delivery.edition.desc())  # type: ignore[union-attr]
            .limit(last)
        ).all()
        editions = [e for e, _ in sent]

        def digests_with(*kinds: EventKind) -> dict[object, int]:
            """Per edition, the digests that drew such a report (each counted once)."""
            return dict(
                session.exec(
                    select(Delivery.edition, sa.func.count(sa.distinct(Event.delivery_id)))  # type: ignore[call-overload]
                    .join(Delivery, Delivery.id == Event.delivery_id)
                    .where(
                        *digests,
                        tried,  # the same set as "sent"
                        Delivery.edition.in_(editions),  # type: ignore[union-attr]
                        Event.kind.in_(kinds),  # type: ignore[attr-defined]
                    )
                    .group_by(Delivery.edition)
                ).all()
            )

        bounced = digests_with(EventKind.HARD_BOUNCE, EventKind.SOFT_BOUNCE, EventKind.REJECTED)
        complained = digests_with(EventKind.COMPLAINT)
    return [
        EditionRates(str(edition), n, bounced.get(edition, 0), complained.get(edition, 0))
        for edition, n in sent
    ]

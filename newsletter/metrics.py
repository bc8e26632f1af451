"""Prometheus text exposition of what an operator watches (served at /metrics)."""

from __future__ import annotations

import sqlalchemy as sa
from sqlmodel import select

from newsletter.db import session_scope
from newsletter.ledger import stats
from newsletter.ledger.reputation import rates_by_edition
from newsletter.models import CorpusFile, UTCDateTime


def prometheus_text(*, engine: sa.Engine) -> str:
    counts = stats(engine=engine)
    with session_scope(engine=engine) as session:
        last_ingest = session.exec(  # type_coerce: the column's conversion, on the aggregate
            select(sa.type_coerce(sa.func.max(CorpusFile.ingested_at), UTCDateTime()))
        ).one()
    stamp = last_ingest.timestamp() if last_ingest else 0.0
    lines = [
        "# HELP newsletter_deliveries Digests in the ledger by state.",
        "# TYPE newsletter_deliveries gauge",
    ]
    for state in ("pending", "retrying", "sending", "sent", "failed", "cancelled"):
        lines.append(f'newsletter_deliveries{{status="{state}"}} {counts[state]}')
    lines += [
        "# HELP newsletter_bounces_total Bounces recorded, by kind.",
        "# TYPE newsletter_bounces_total counter",
        f'newsletter_bounces_total{{kind="hard"}} {counts["hard_bounces"]}',
        f'newsletter_bounces_total{{kind="soft"}} {counts["soft_bounces"]}',
        "# HELP newsletter_complaints_total Spam complaints recorded (feedback loops).",
        "# TYPE newsletter_complaints_total counter",
        f"newsletter_complaints_total {counts['complaints']}",
        "# HELP newsletter_unsubscribes_total Unsubscribes recorded.",
        "# TYPE newsletter_unsubscribes_total counter",
        f"newsletter_unsubscribes_total {counts['unsubscribes']}",
        "# HELP newsletter_subscribers Subscribers by state.",
        "# TYPE newsletter_subscribers gauge",
    ]
    for state in ("active", "suppressed", "unsubscribed"):
        lines.append(f'newsletter_subscribers{{status="{state}"}} {counts["subscribers_" + state]}')
    lines += [
        "# HELP newsletter_last_ingest_timestamp_seconds When a corpus file was last read.",
        "# TYPE newsletter_last_ingest_timestamp_seconds gauge",
        f"newsletter_last_ingest_timestamp_seconds {stamp:.3f}",
    ]
    latest = rates_by_edition(engine=engine, last=1)
    if latest:
        r = latest[0]
        lines += [
            "# HELP newsletter_edition_bounce_rate Digests that bounced, of those sent, in the "
            "latest edition.",
            "# TYPE newsletter_edition_bounce_rate gauge",
            f'newsletter_edition_bounce_rate{{edition="{r.edition}"}} {r.bounce_rate:.5f}',
            "# HELP newsletter_edition_complaint_rate Digests reported as spam, of those sent, "
            "in the latest edition.",
            "# TYPE newsletter_edition_complaint_rate gauge",
            f'newsletter_edition_complaint_rate{{edition="{r.edition}"}} {r.complaint_rate:.5f}',
        ]
    return "\n".join(lines) + "\n"

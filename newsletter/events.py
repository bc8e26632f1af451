"""The kinds of event the ledger's append-only history records (``events.kind``)."""

from __future__ import annotations

import enum


class EventKind(enum.StrEnum):
    # subscribers
    ADDED = "subscriber.added"
    REMOVED = "subscriber.removed"
    SIGNED_UP = "subscriber.signed_up"
    CONFIRMED = "subscriber.confirmed"
    EXPIRED = "subscriber.expired"
    UNSUBSCRIBED = "subscriber.unsubscribed"
    # A complaint, bounce or operator's removal after the reader's own unsubscribe: it
    # becomes final (not undone by a link); not a second unsubscribe to count
    UNSUBSCRIBE_FINAL = "subscriber.unsubscribe_final"
    RESUBSCRIBED = "subscriber.resubscribed"
    SUPPRESSED = "subscriber.suppressed"
    REACTIVATED = "subscriber.reactivated"
    LINKS_REVOKED = "subscriber.links_revoked"
    # deliveries
    RETRY = "delivery.retry"
    FAILED = "delivery.failed"
    REQUEUED = "delivery.requeued"
    HARD_BOUNCE = "bounce.hard"
    SOFT_BOUNCE = "bounce.soft"
    REJECTED = "bounce.rejected"  # the message refused for policy or content, not the address
    COMPLAINT = "bounce.complaint"  # a feedback-loop report: the reader called it spam
    BOUNCE_UNMATCHED = "bounce.unmatched"  # a report tied to no digest of ours, kept
    BOUNCE_REFUSED = "bounce.refused"  # a return path whose signature does not check
    # ingest
    FILE_INGESTED = "ingest.file"
    FILE_FAILED = "ingest.file_failed"
    PAPER_REVISED = "ingest.paper_revised"  # a new arXiv version replaced title and abstract
    # live sources
    SOURCE_FETCHED = "source.fetched"
    SOURCE_FAILED = "source.failed"
    # the operator
    REPORT_SENT = "operator.report_sent"  # the daily report, its day in the detail
    # feedback
    VOTED = "feedback.vote"  # "more like this", "not for me", or taking one back

"""Tables. The database is the ledger between stages: what is stored here is the truth.

Times are stored in UTC (``UTCDateTime`` gives back aware datetimes on SQLite
and PostgreSQL alike). Schema changes ship as Alembic migrations under
``newsletter/migrations``; tests/test_db.py checks the two agree.
"""

from __future__ import annotations

import enum
import json
from datetime import UTC, date, datetime

import sqlalchemy as sa
from sqlalchemy.types import TypeDecorator
from sqlmodel import Field, SQLModel

from newsletter.tokens import new_salt


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes in, aware UTC datetimes out, whatever the backend."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        value = value.astimezone(UTC)
        # SQLite has no time zones: store naive UTC so string comparison orders correctly.
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _ts(*, nullable: bool = False, index: bool = False) -> object:
    return Field(default=None, sa_type=UTCDateTime(), nullable=nullable, index=index)


class SubscriberStatus(enum.StrEnum):
    PENDING = "pending"  # signed up on the web, has not confirmed yet (double opt-in)
    ACTIVE = "active"
    UNSUBSCRIBED = "unsubscribed"
    SUPPRESSED = "suppressed"  # hard bounces: no more email until reactivated


class Cadence(enum.StrEnum):
    DAILY = "daily"
    WEEKLY = "weekly"  # on Subscriber.weekday
    PAUSED = "paused"


class DeliveryKind(enum.StrEnum):
    DIGEST = "digest"
    CONFIRM = "confirm"  # the double opt-in confirmation


class DeliveryStatus(enum.StrEnum):
    PENDING = "pending"
    SENDING = "sending"
    SENT = "sent"
    FAILED = "failed"
    CANCELLED = "cancelled"  # the subscriber left before it went out


def stored_list(value: str | None) -> tuple[str, ...]:
    """A JSON list column (``author_names``, ``keywords``) as strings. A value that is not
    a list of strings (written by hand, or by an older release) reads as empty: one odd
    row must not stop indexing, ingest or a delivery batch."""
    if not value:
        return ()
    try:
        items = json.loads(value)
    except (ValueError, RecursionError):
        return ()
    if not isinstance(items, list):
        return ()
    return tuple(item for item in items if isinstance(item, str))


class Paper(SQLModel, table=True):
    __tablename__ = "papers"
    __table_args__ = (sa.UniqueConstraint("arxiv_id", name="uq_papers_arxiv_id"),)

    id: int | None = Field(default=None, primary_key=True)
    key: str = Field(max_length=512, unique=True, description="normalized title: the dedupe key")
    title: str = Field(max_length=1000)
    abstract: str = Field(sa_type=sa.Text())
    authors: int | None = None
    organization: str | None = Field(default=None, max_length=300)
    organization_handle: str | None = Field(default=None, max_length=200)
    published_on: date | None = None
    upvotes: int | None = None
    page_date: date | None = None
    source_file: str = Field(max_length=1000, description="first corpus file it was seen in")
    first_seen_at: datetime = _ts(index=True)  # type: ignore[assignment]
    updated_at: datetime = _ts()  # type: ignore[assignment]
    # Identity and links (issue 13). Every one is filled by whichever source knows it
    # and never blanked by one that does not.
    arxiv_id: str | None = Field(
        default=None, max_length=32, description="without version: 2405.12345"
    )
    arxiv_version: int | None = Field(default=None, description="the newest version seen")
    author_names: str | None = Field(
        default=None, sa_type=sa.Text(), description="JSON list of names, in the paper's order"
    )
    categories: str | None = Field(
        default=None, max_length=300, description="arXiv categories, primary first, spaced"
    )
    code_url: str | None = Field(default=None, max_length=500)
    project_url: str | None = Field(default=None, max_length=500)
    summary: str | None = Field(
        default=None, sa_type=sa.Text(), description="a source's short summary (Hugging Face AI)"
    )
    keywords: str | None = Field(default=None, sa_type=sa.Text(), description="JSON list")
    sources: str | None = Field(
        default=None, max_length=100, description="the kinds of source it was seen in, spaced"
    )
    # The stored postings (issue 15): which segment holds this paper's current postings
    # (None: not indexed yet, or changed since), and its lengths in stems for BM25.
    index_segment: int | None = Field(default=None, index=True)
    title_stems: int | None = None
    abstract_stems: int | None = None


class SourceState(SQLModel, table=True):
    """What a live source last answered: validators for a conditional request, and
    when it may be asked again (after an error, not before its back-off)."""

    __tablename__ = "source_state"

    name: str = Field(primary_key=True, max_length=200, description="source and its URL's key")
    url: str = Field(max_length=1000)
    etag: str | None = Field(default=None, max_length=500)
    last_modified: str | None = Field(default=None, max_length=100)
    fetched_at: datetime | None = _ts(nullable=True)  # type: ignore[assignment]
    next_after: datetime | None = _ts(nullable=True)  # type: ignore[assignment]
    failures: int = Field(default=0, description="errors in a row")
    last_status: str | None = Field(default=None, max_length=300)
    papers: int = Field(default=0, description="papers in its last good answer")


class TopicLesson(SQLModel, table=True):
    """What a subscriber's topic has been taught by their votes, as of one event: a cache
    of the replay of the ``feedback.vote`` events (which stay the truth), so planning does
    not replay every vote ever cast. ``version`` is the last event it includes."""

    __tablename__ = "topic_lessons"
    __table_args__ = (sa.UniqueConstraint("subscriber_id", "query", name="uq_topic_lesson"),)

    id: int | None = Field(default=None, primary_key=True)
    subscriber_id: int = Field(
        sa_column=sa.Column(
            sa.Integer, sa.ForeignKey("subscribers.id", ondelete="CASCADE"), nullable=False
        )
    )
    query: str = Field(max_length=1000)
    version: int = Field(description="the id of the last vote event included")
    votes: str = Field(default="[]", sa_type=sa.Text(), description="[[paper id, 1 or -1], ...]")
    updated_at: datetime = _ts()  # type: ignore[assignment]


class CorpusFile(SQLModel, table=True):
    """One row per corpus file ever read: its hash makes re-ingest a no-op."""

    __tablename__ = "corpus_files"

    id: int | None = Field(default=None, primary_key=True)
    path: str = Field(max_length=1000, unique=True)
    sha256: str = Field(max_length=64)
    size: int
    status: str = Field(max_length=16, description="ok | error")
    papers: int = 0
    new_papers: int = 0
    error: str | None = Field(default=None, sa_type=sa.Text())
    ingested_at: datetime = _ts()  # type: ignore[assignment]


class Subscriber(SQLModel, table=True):
    __tablename__ = "subscribers"

    id: int | None = Field(default=None, primary_key=True)
    email: str = Field(max_length=320, unique=True)
    name: str | None = Field(default=None, max_length=200)
    timezone: str = Field(max_length=64, default="UTC")
    send_at: str = Field(max_length=5, default="08:00", description="local HH:MM")
    status: str = Field(max_length=16, default=SubscriberStatus.ACTIVE, index=True)
    soft_bounces: int = Field(
        default=0, sa_column_kwargs={"server_default": "0"}, description="soft bounces in a row"
    )
    cadence: str = Field(
        default=Cadence.DAILY, max_length=8, sa_column_kwargs={"server_default": "daily"}
    )
    weekday: int | None = Field(default=None, description="weekly cadence: 0 = Monday")
    dial: int = Field(
        default=3,
        sa_column_kwargs={"server_default": "3"},
        description="1 (fewer, surer papers) to 5 (more, broader): where the line falls",
    )
    ask_feedback: bool = Field(
        default=True,
        sa_column_kwargs={"server_default": sa.true()},
        description="digests may carry papers just below the line, asking for a vote",
    )
    token_salt: str = Field(
        default_factory=new_salt,
        max_length=32,
        sa_column_kwargs={"server_default": ""},
        description="signed into every link of this subscriber: ids may be reused, salts are not",
    )
    created_at: datetime = _ts()  # type: ignore[assignment]
    updated_at: datetime = _ts()  # type: ignore[assignment]


class SignUp(SQLModel, table=True):
    """A web sign-up waiting for its confirmation.

    Nothing about the subscriber changes until the link is used: what the sign-up
    asked for is kept here, applied on confirmation, and forgotten on expiry.
    """

    __tablename__ = "signups"

    id: int | None = Field(default=None, primary_key=True)
    email: str = Field(max_length=320, index=True)
    name: str | None = Field(default=None, max_length=200)
    topics: str = Field(default="[]", sa_type=sa.Text(), description="JSON list of filters")
    timezone: str = Field(max_length=64)
    send_at: str = Field(max_length=5)
    created_at: datetime = _ts(index=True)  # type: ignore[assignment]
    processed_at: datetime | None = _ts(nullable=True)  # type: ignore[assignment]
    subscriber_id: int | None = Field(
        default=None,
        sa_column=sa.Column(
            sa.Integer,
            sa.ForeignKey("subscribers.id", ondelete="CASCADE"),
            nullable=True,
            index=True,
        ),
    )
    delivery_id: int | None = Field(default=None, description="the confirmation mail")


class TopicFilter(SQLModel, table=True):
    __tablename__ = "topic_filters"
    __table_args__ = (sa.UniqueConstraint("subscriber_id", "query", name="uq_topic_filter"),)

    id: int | None = Field(default=None, primary_key=True)
    subscriber_id: int = Field(
        sa_column=sa.Column(
            sa.Integer,
            sa.ForeignKey("subscribers.id", ondelete="CASCADE"),
            nullable=False,
            index=True,
        )
    )
    query: str = Field(max_length=1000)
    about: str | None = Field(
        default=None, max_length=300, description="a sentence about the topic, for meaning"
    )
    created_at: datetime = _ts()  # type: ignore[assignment]


class IndexSegment(SQLModel, table=True):
    """A batch of papers indexed together (``corpus/postings.py``)."""

    __tablename__ = "index_segments"

    id: int | None = Field(default=None, primary_key=True)
    created_at: datetime = _ts()  # type: ignore[assignment]
    papers: int


class Posting(SQLModel, table=True):
    """One key's occurrences in one segment (``filters/segments.py``: zlib'd int32 arrays)."""

    __tablename__ = "postings"

    field: str = Field(max_length=16, primary_key=True)
    key: str = Field(sa_type=sa.Text(), primary_key=True)
    segment: int = Field(
        sa_column=sa.Column(
            sa.Integer,
            sa.ForeignKey("index_segments.id", ondelete="CASCADE"),
            primary_key=True,
        )
    )
    papers: bytes = Field(sa_type=sa.LargeBinary())
    vals: bytes = Field(sa_type=sa.LargeBinary())


class PaperVector(SQLModel, table=True):
    """A paper's embedding, computed once at ingest: what "close in meaning" compares."""

    __tablename__ = "paper_vectors"

    paper_id: int = Field(
        sa_column=sa.Column(
            sa.Integer, sa.ForeignKey("papers.id", ondelete="CASCADE"), primary_key=True
        )
    )
    model: str = Field(max_length=64)
    text_hash: str = Field(max_length=32, description="of the embedded text: changed, re-embed")
    vector: bytes = Field(sa_type=sa.LargeBinary(), description="float16, the model's dimension")
    sentences: bytes = Field(sa_type=sa.LargeBinary(), description="float16, one per sentence")
    spans: str = Field(sa_type=sa.Text(), description="JSON [[start, end], ...] in the abstract")
    updated_at: datetime = _ts()  # type: ignore[assignment]


class TopicVector(SQLModel, table=True):
    """A topic's embedding (its sentence, else its filter's words), shared by equal texts."""

    __tablename__ = "topic_vectors"

    text_hash: str = Field(primary_key=True, max_length=32)
    model: str = Field(max_length=64)
    vector: bytes = Field(sa_type=sa.LargeBinary())
    updated_at: datetime = _ts()  # type: ignore[assignment]


class Delivery(SQLModel, table=True):
    """The outbox and sent-ledger: one digest per subscriber and edition, enforced here."""

    __tablename__ = "deliveries"
    __table_args__ = (
        sa.UniqueConstraint("subscriber_id", "edition", name="uq_delivery_edition"),
        sa.Index("ix_deliveries_status_next", "status", "next_attempt_at"),
        # Deleting a snapshot checks no row refers to it (the foreign key, and
        # snapshot.forget_unused): without it, a scan of the whole ledger per snapshot.
        sa.Index("ix_deliveries_snapshot_id", "snapshot_id"),
    )

    id: int | None = Field(default=None, primary_key=True)
    subscriber_id: int = Field(
        sa_column=sa.Column(
            sa.Integer, sa.ForeignKey("subscribers.id", ondelete="CASCADE"), nullable=False
        )
    )
    edition: date | None = Field(
        default=None, description="a digest's local date; NULL for other mail"
    )
    kind: str = Field(
        default=DeliveryKind.DIGEST, max_length=16, sa_column_kwargs={"server_default": "digest"}
    )
    status: str = Field(max_length=16, default=DeliveryStatus.PENDING)
    message_id: str = Field(max_length=255, unique=True)
    to_address: str = Field(max_length=320)
    covers_until: datetime = _ts()  # type: ignore[assignment]
    paper_count: int = 0
    more_count: int = 0
    attempts: int = 0
    last_error: str | None = Field(default=None, sa_type=sa.Text())
    next_attempt_at: datetime = _ts()  # type: ignore[assignment]
    lease_until: datetime | None = _ts(nullable=True)  # type: ignore[assignment]
    created_at: datetime = _ts()  # type: ignore[assignment]
    sent_at: datetime | None = _ts(nullable=True)  # type: ignore[assignment]
    snapshot_id: str | None = Field(
        default=None,
        sa_column=sa.Column(
            sa.String(32),
            sa.ForeignKey("snapshots.id", name="fk_deliveries_snapshot"),
            nullable=True,
        ),
        description="the digest's papers as planned (a digest's; NULL for other mail)",
    )


class Snapshot(SQLModel, table=True):
    """A digest's papers as planned (JSON, see ``newsletter.snapshot``), stored once for
    every digest that holds the same: readers who share topics share a ranking, so a
    million digests hold a few thousand snapshots, and the ledger row a worker claims
    and updates stays small."""

    __tablename__ = "snapshots"

    id: str = Field(
        sa_column=sa.Column(sa.String(32), primary_key=True),
        description="the items' BLAKE2b-128, hex: the same snapshot has the same id",
    )
    items: str = Field(sa_type=sa.Text())
    created_at: datetime = _ts()  # type: ignore[assignment]


class Event(SQLModel, table=True):
    """Append-only history: ingests, bounces, unsubscribes, operator actions."""

    __tablename__ = "events"

    id: int | None = Field(default=None, primary_key=True)
    at: datetime = _ts(index=True)  # type: ignore[assignment]
    kind: str = Field(max_length=64, index=True)
    subscriber_id: int | None = Field(default=None, index=True)
    delivery_id: int | None = None
    detail: str = Field(default="{}", sa_type=sa.Text(), description="JSON object")


class RateBucket(SQLModel, table=True):
    """A token bucket shared by every worker (PostgreSQL): the relay's rate is global."""

    __tablename__ = "rate_buckets"

    name: str = Field(primary_key=True, max_length=64)
    tokens: float = 0.0
    updated_at: datetime = _ts()  # type: ignore[assignment]

"""Rebuilding what a claimed row is to send, from the ledger alone.

One small class per kind of job: a digest, a double opt-in confirmation, or a row
that cannot be read back (its snapshot corrupted, a paper gone). A row that fails
to rebuild becomes an ``UnreadableJob`` carrying the reason; it never stops the
others. The same rows give the same jobs, so a resend is the same message.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import NamedTuple

import sqlalchemy as sa
from sqlmodel import Session, select

from newsletter import snapshot
from newsletter.links import Links, Recipient
from newsletter.models import DeliveryKind, Paper, Subscriber, SubscriberStatus, stored_list
from newsletter.render import Confirmation, Digest, DigestPaper
from newsletter.render.content import AUTHORS_SHOWN


class PaperText(NamedTuple):
    """What a digest shows of a paper that is read from the paper, not the snapshot: its
    words and its links. A resend shows the same words; a link a source gave since the
    first attempt may be added."""

    title: str
    abstract: str
    arxiv_id: str | None = None
    code_url: str | None = None
    project_url: str | None = None
    author_names: tuple[str, ...] = ()  # the first few only
    summary: str | None = None


PAPER_TEXT_COLUMNS = (
    Paper.id,
    Paper.title,
    Paper.abstract,
    Paper.arxiv_id,
    Paper.code_url,
    Paper.project_url,
    Paper.author_names,
    Paper.summary,
)


def paper_text(row: Paper | sa.Row[tuple[object, ...]]) -> PaperText:
    """A ``Paper`` (or a row of ``PAPER_TEXT_COLUMNS``) as a digest shows it."""
    names = stored_list(row.author_names)  # type: ignore[arg-type]
    return PaperText(
        row.title,  # type: ignore[arg-type]
        row.abstract,  # type: ignore[arg-type]
        row.arxiv_id,  # type: ignore[arg-type]
        row.code_url,  # type: ignore[arg-type]
        row.project_url,  # type: ignore[arg-type]
        tuple(names[:AUTHORS_SHOWN]),
        row.summary,  # type: ignore[arg-type]
    )


def paper_texts(*, session: Session, ids: Iterable[int]) -> dict[int, PaperText]:
    wanted = list(set(ids))
    found: dict[int, PaperText] = {}
    for start in range(0, len(wanted), 500):  # stay under bound-parameter limits
        query = select(*PAPER_TEXT_COLUMNS).where(Paper.id.in_(wanted[start : start + 500]))  # type: ignore[union-attr,call-overload]
        found.update((row.id, paper_text(row)) for row in session.exec(query))
    return found


@dataclass(frozen=True, slots=True)
class DigestJob:
    delivery_id: int
    subscriber_id: int
    to_address: str
    wanted: bool  # the subscriber is still active
    digest: Digest
    return_path: str | None = None  # the envelope sender (VERP), when not the From address


@dataclass(frozen=True, slots=True)
class ConfirmationJob:
    delivery_id: int
    subscriber_id: int
    to_address: str
    wanted: bool  # the address is not active yet
    confirmation: Confirmation
    return_path: str | None = None


@dataclass(frozen=True, slots=True)
class UnreadableJob:
    delivery_id: int
    subscriber_id: int
    to_address: str
    wanted: bool
    problem: str


Job = DigestJob | ConfirmationJob | UnreadableJob


@dataclass(frozen=True, slots=True)
class _Papers:
    shown: tuple[DigestPaper, ...]  # in the email
    near: tuple[DigestPaper, ...]  # just below the line: counted in the email, listed online
    # Per shown paper, the end of its vote page's URL ("/<id>") when the reader can vote
    # on it (``snapshot.Item.votable``), else "": one tuple for every reader of the ranking.
    vote_ends: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class _Reader:
    status: str | None
    name: str | None
    salt: str


def digest_papers(
    *, items: tuple[snapshot.Item, ...], texts: dict[int, PaperText]
) -> tuple[DigestPaper, ...]:
    """A digest's papers to render: the ledger's snapshot, and what is read from each
    paper (``PaperText``) by id."""
    try:
        return tuple(
            DigestPaper(
                title=(t := texts[i.paper_id]).title,
                abstract=t.abstract,
                arxiv_id=t.arxiv_id,
                code_url=t.code_url,
                project_url=t.project_url,
                author_names=t.author_names,
                summary=t.summary,
                authors=i.authors,
                organization=i.organization,
                published_on=i.published_on,
                upvotes=i.upvotes,
                matched_topics=i.topics,
                matched_terms=i.terms,
                close_to=i.close_to,
                nearest=i.sentence,
                liked=i.liked,
                unsure=i.unsure,
            )
            for i in items
        )
    except KeyError as exc:
        raise snapshot.SnapshotError(f"snapshots.items: no paper {exc}") from None


@dataclass(slots=True)
class JobLoader:
    """Loads jobs batch after batch. Digests of one ranking share one snapshot; the
    loader hands them one tuple of papers (kept across batches while what they show of
    each paper is unchanged), so the renderer's caches find them at once. A snapshot's
    id is the hash of its text, so one read and decoded once is not read again. What a
    digest shows of its papers is read again once ``texts_seconds`` have passed: a big
    send reads each paper once, not once per batch (a batch's papers were a fixed 25 ms
    a batch), and a link a source gives later still shows up soon after."""

    links: Links
    confirm_hours: float = 48
    with_near: bool = False  # the archive page lists the papers just below the line too
    _papers: dict[str, tuple[tuple[PaperText, ...], _Papers]] = field(
        default_factory=dict, repr=False
    )
    _papers_max: int = 20_000
    _items: dict[str, tuple[snapshot.Item, ...]] = field(default_factory=dict, repr=False)
    texts_seconds: float = 60.0
    _texts: dict[int, PaperText] = field(default_factory=dict, repr=False)
    _texts_read: float = field(default=-math.inf, repr=False)

    def load(self, *, session: Session, rows: list[sa.Row[tuple[object, ...]]]) -> list[Job]:
        """Jobs for rows of ``claims.LEDGER_COLUMNS``: their subscribers and papers in two
        more queries, whatever the batch size."""
        readers = {
            r.id: _Reader(r.status, r.name, r.token_salt)
            for r in session.exec(
                select(
                    Subscriber.id, Subscriber.status, Subscriber.name, Subscriber.token_salt
                ).where(Subscriber.id.in_({row.subscriber_id for row in rows}))  # type: ignore[union-attr]
            )
        }
        ids = {row.snapshot_id for row in rows if row.kind == DeliveryKind.DIGEST}
        known = self._items
        if len(known) >= self._papers_max:
            known.clear()
        stored = snapshot.stored_texts(session.connection(), ids - known.keys() - {None})
        decoded: dict[str | None, tuple[snapshot.Item, ...] | str] = {}
        for key in ids:
            try:
                if key in known:
                    decoded[key] = known[key]  # type: ignore[index]
                elif key in stored:
                    decoded[key] = known[key] = snapshot.decode(stored[key])  # type: ignore[index]
                else:
                    raise snapshot.SnapshotError(f"deliveries.snapshot_id: no snapshot {key}")
            except snapshot.SnapshotError as exc:
                decoded[key] = str(exc)
        wanted = {i.paper_id for d in decoded.values() if not isinstance(d, str) for i in d}
        texts = self._paper_texts(session, wanted)
        papers: dict[str | None, _Papers | str] = {}
        for key, items in decoded.items():
            try:
                papers[key] = items if isinstance(items, str) else self._shared(key, items, texts)  # type: ignore[arg-type]
            except snapshot.SnapshotError as exc:
                papers[key] = str(exc)
        jobs: list[Job] = []
        for row in rows:
            reader = readers.get(row.subscriber_id, _Reader(None, None, ""))  # type: ignore[arg-type]
            try:
                jobs.append(self._job(row, reader, papers))
            except Exception as exc:  # one row that cannot be rebuilt fails alone
                jobs.append(
                    UnreadableJob(
                        row.id,  # type: ignore[arg-type]
                        row.subscriber_id,  # type: ignore[arg-type]
                        row.to_address,  # type: ignore[arg-type]
                        reader.status == SubscriberStatus.ACTIVE,
                        f"{type(exc).__name__}: {exc}",
                    )
                )
        return jobs

    def _paper_texts(self, session: Session, ids: set[int]) -> dict[int, PaperText]:
        if time.monotonic() - self._texts_read > self.texts_seconds or len(self._texts) > 50_000:
            self._texts, self._texts_read = {}, time.monotonic()
        missing = ids - self._texts.keys()
        if missing:
            self._texts.update(paper_texts(session=session, ids=missing))
        return self._texts

    def _job(
        self,
        row: sa.Row[tuple[object, ...]],
        reader: _Reader,
        papers: dict[str | None, _Papers | str],
    ) -> Job:
        delivery_id: int = row.id  # type: ignore[assignment]
        sid: int = row.subscriber_id  # type: ignore[assignment]
        to_address: str = row.to_address  # type: ignore[assignment]
        who = Recipient(sid, reader.salt)
        if row.kind == DeliveryKind.CONFIRM:
            # Wanted until the address is active (a confirmation of a sign-up by an
            # unsubscribed person keeps them unsubscribed until they click).
            wanted = reader.status in (SubscriberStatus.PENDING, SubscriberStatus.UNSUBSCRIBED)
            created: datetime = row.created_at  # type: ignore[assignment]
            return ConfirmationJob(
                delivery_id,
                sid,
                to_address,
                wanted,
                Confirmation(
                    to_address=to_address,
                    confirm_url=self.links.confirm(who=who, delivery_id=delivery_id),
                    message_id=row.message_id,  # type: ignore[arg-type]
                    date=created,
                    expires_hours=self.confirm_hours,
                ),
                self.links.return_path(who=who, delivery_id=delivery_id),
            )
        wanted = reader.status == SubscriberStatus.ACTIVE
        shown = papers[row.snapshot_id]  # type: ignore[index]
        if isinstance(shown, str):
            return UnreadableJob(delivery_id, sid, to_address, wanted, shown)
        edition: date = row.edition  # type: ignore[assignment]
        digest = Digest(
            to_address=to_address,
            to_name=reader.name,
            edition=edition,
            papers=shown.shown,
            near_count=len(shown.near),
            near_papers=shown.near if self.with_near else (),
            more_count=row.more_count,  # type: ignore[arg-type]
            message_id=row.message_id,  # type: ignore[arg-type]
            date=row.created_at,  # type: ignore[arg-type]
            unsubscribe_url=self.links.unsubscribe(who=who, delivery_id=delivery_id),
            preferences_url=self.links.preferences(who=who),
            archive_url=self.links.archive(who=who, delivery_id=delivery_id),
            vote_start=self.links.votes(who=who, delivery_id=delivery_id)
            if any(shown.vote_ends)
            else "",
            vote_ends=shown.vote_ends,
        )
        return DigestJob(
            delivery_id, sid, to_address, wanted, digest,
            self.links.return_path(who=who, delivery_id=delivery_id),
        )  # fmt: skip

    def _shared(
        self, key: str, items: tuple[snapshot.Item, ...], texts: dict[int, PaperText]
    ) -> _Papers:
        try:
            shown = tuple(texts[i.paper_id] for i in items)
        except KeyError as exc:
            raise snapshot.SnapshotError(f"snapshots.items: no paper {exc}") from None
        entry = self._papers.get(key)
        if entry is not None and entry[0] == shown:
            return entry[1]
        top = tuple(i for i in items if not i.near)
        papers = _Papers(
            digest_papers(items=top, texts=texts),
            digest_papers(items=tuple(i for i in items if i.near), texts=texts),
            tuple(f"/{i.paper_id}" if i.votable else "" for i in top),
        )
        if len(self._papers) >= self._papers_max:
            self._papers.clear()
        self._papers[key] = (shown, papers)
        return papers


def load_jobs(
    *, session: Session, rows: list[sa.Row[tuple[object, ...]]], links: Links
) -> list[Job]:
    """Jobs for a few rows, without keeping a loader (the archive page, a preview)."""
    return JobLoader(links=links).load(session=session, rows=rows)


def job_for(*, session: Session, delivery_id: int, links: Links) -> Job | None:
    """The job of one delivery row, as it was or would be sent (the archive page)."""
    from newsletter.ledger.claims import LEDGER_COLUMNS
    from newsletter.models import Delivery

    rows = list(session.exec(select(*LEDGER_COLUMNS).where(Delivery.id == delivery_id)))  # type: ignore[call-overload]
    jobs = JobLoader(links=links, with_near=True).load(session=session, rows=rows)
    return jobs[0] if jobs else None

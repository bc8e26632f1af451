"""Planning: due subscribers -> matched, ranked papers -> delivery rows (the ledger).

Three phases:

1. ``due.due_chunks``: whose digest is to be planned now, and since when it covers
   papers, a chunk of subscribers at a time (id order). A first pass finds the oldest
   ``since`` of anyone due, so the candidate papers are read once.
2. ``matcher.Matcher``: the candidate papers indexed once (``filters.DayIndex``) against the
   reference window, with stored vectors; per chunk, each distinct topic, as its reader
   taught it (``feedback``), decided once for all papers in batches (``relevance``); a
   digest is what the topics let in at the dial step, new to the reader, ranked, and
   what is just below.
3. ``_record``: rows inserted in bulk. One row per (subscriber, edition) is a unique
   constraint, so planning twice, or two planners at once, cannot make two digests:
   the loser's insert is skipped and it moves on. The Message-ID is chosen here, once,
   so a resend carries it. Batches are committed as they go, so delivery workers start
   on the first digests while the rest are planned.

Memory is the chunk's, not the list's: a million subscribers are planned with what
one chunk needs plus bounded caches of what readers share, and the report keeps
counts unless asked to keep each digest (``keep``; ``on_planned`` sees each one).
"""

from __future__ import annotations

import functools
import gc
import logging
import multiprocessing
import queue
import secrets
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta

import sqlalchemy as sa
from sqlmodel import Session, select

from newsletter import render, snapshot
from newsletter.bounded import rare_collections
from newsletter.config import Settings
from newsletter.db import session_scope
from newsletter.due import Due, Skipped, active_ids, due_chunks
from newsletter.errors import FilterSyntaxError, NewsletterError
from newsletter.feedback import taught_topics
from newsletter.filters import compile_filter
from newsletter.ledger.jobs import digest_papers, paper_text
from newsletter.ledger.planned import PlannedRow, insert_planned
from newsletter.links import Links, Recipient
from newsletter.matcher import Matcher, Wanted
from newsletter.models import Paper
from newsletter.relevance import Picked, Topic
from newsletter.subscribers import find, normalize_email


class PlanningError(NewsletterError):
    """A planning process failed; what the others recorded stands (a rerun adds the rest)."""


log = logging.getLogger(__name__)

RECORD_BATCH = 1000  # digests written per round trip batch
FIRST_RECORD_BATCH = 100  # doubling up to RECORD_BATCH


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
    """What planning did: counts always; each digest and address only with ``keep``."""

    keep: bool = True
    planned: list[PlannedDigest] = field(default_factory=list)
    no_match: list[str] = field(default_factory=list)
    already_planned: list[str] = field(default_factory=list)
    not_due: list[str] = field(default_factory=list)
    unreadable: list[str] = field(default_factory=list)  # zone, send time, or every filter
    counts: Counter[str] = field(default_factory=Counter)
    editions: set[date] = field(default_factory=set)
    on_planned: Callable[[PlannedDigest], None] | None = None

    def add(self, what: str, email: str) -> None:
        self.counts[what] += 1
        if self.keep:
            getattr(self, what).append(email)

    def add_planned(self, digest: PlannedDigest) -> None:
        self.counts["planned"] += 1
        self.editions.add(digest.edition)
        if self.keep:
            self.planned.append(digest)
        if self.on_planned is not None:
            self.on_planned(digest)


@dataclass(frozen=True, slots=True)
class _Draft:
    due: Due
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
    keep: bool = True,
    on_planned: Callable[[PlannedDigest], None] | None = None,
    workers: int = 1,
    papers_until: datetime | None = None,
) -> PlanReport:
    """Plan today's digest for each active subscriber (due ones, unless ``due_only`` is off).

    ``papers_until`` (at most ``now``): the papers first seen until then are settled, and
    the digests cover them; later ones are the next digests'. The service passes the
    start of an ingest still storing papers stamped with it, whose later files would
    otherwise be covered already and never sent.

    ``next_edition`` (with ``dry_run``) looks past an edition already planned
    today at what the next digest would hold: what ``preview`` shows. ``workers`` > 1
    (recording, without ``keep``) shares the subscribers out to that many processes,
    forked once the papers are scored, so they share them (``_in_processes``).
    """
    report = PlanReport(keep=keep, on_planned=on_planned)
    run = functools.partial(
        due_chunks, now=now, first_since=now - timedelta(days=settings.first_digest_days),
        only_email=only_email, due_only=due_only, next_edition=next_edition,
    )  # fmt: skip
    with session_scope(engine=engine) as session:
        since = min((d.since for due, _ in run(session) for d in due), default=None)
        if since is None:  # nobody due: only say why
            for _, skipped in run(session):
                for s in skipped:
                    report.add(s.why, s.email)
            return report
        matcher = Matcher.load(session, since=since, now=now, until=papers_until or now)
        ids = active_ids(session) if workers > 1 and not (keep or dry_run) else []
    if len(ids) > workers:
        share = -(-len(ids) // workers)
        ranges = [(ids[k], ids[min(k + share, len(ids)) - 1]) for k in range(0, len(ids), share)]
        return _in_processes(ranges, engine=engine, matcher=matcher, run=run, report=report,
                             now=now, settings=settings)  # fmt: skip
    with session_scope(engine=engine) as session:
        _plan_range(session, matcher, run, None, report, now=now, settings=settings,
                    dry_run=dry_run)  # fmt: skip
        if dry_run:
            session.rollback()
    return report


def _plan_range(
    session: Session,
    matcher: Matcher,
    run: Callable[..., Iterator[tuple[list[Due], list[Skipped]]]],
    ids: tuple[int, int] | None,
    report: PlanReport,
    *,
    now: datetime,
    settings: Settings,
    dry_run: bool,
) -> None:
    state = _Batches()
    with rare_collections():
        for due, skipped in run(session, ids=ids):
            for s in skipped:
                report.add(s.why, s.email)
            _plan_chunk(session, matcher, due, report, state, now=now, settings=settings,
                        dry_run=dry_run)  # fmt: skip
        _record(session, state.drafts, report, now=now, settings=settings, until=matcher.until)


def _in_processes(
    ranges: list[tuple[int, int]],
    *,
    engine: sa.Engine,
    matcher: Matcher,
    run: Callable[..., Iterator[tuple[list[Due], list[Skipped]]]],
    report: PlanReport,
    now: datetime,
    settings: Settings,
) -> PlanReport:
    """Plan each range of subscriber ids in its own forked process. The scored papers
    are shared copy-on-write; each process records and commits its own digests (the
    unique (subscriber, edition) keeps any overlap harmless) and reports its counts."""
    context = multiprocessing.get_context("fork")
    results = context.Queue()

    def child(ids: tuple[int, int]) -> None:
        engine.dispose(close=False)  # the parent's connections stay the parent's
        mine = PlanReport(keep=False, on_planned=report.on_planned)
        error = None
        try:
            with session_scope(engine=engine) as session:
                _plan_range(session, matcher, run, ids, mine, now=now, settings=settings,
                            dry_run=False)  # fmt: skip
        except Exception as exc:  # reported to the parent, which raises it
            error = f"{type(exc).__name__}: {exc}"
        results.put((dict(mine.counts), mine.editions, error))

    gc.collect()
    gc.freeze()  # the shared objects out of the collector's way: fewer pages copied
    try:
        processes = [context.Process(target=child, args=(r,), daemon=True) for r in ranges]
        for p in processes:
            p.start()
        errors, pending = [], len(processes)
        while pending:
            try:
                counts, editions, error = results.get(timeout=1.0)
            except queue.Empty:
                if any(p.is_alive() for p in processes):
                    continue
                break  # one died without a word (killed): said below
            pending -= 1
            report.counts.update(counts)
            report.editions |= editions
            if error:
                errors.append(error)
        for p in processes:
            p.join()
    finally:
        gc.unfreeze()
    if errors or any(p.exitcode for p in processes):
        raise PlanningError("a planning process failed: " + "; ".join(errors or ["it died"]))
    return report


@dataclass(slots=True)
class _Batches:
    drafts: list[_Draft] = field(default_factory=list)
    size: int = FIRST_RECORD_BATCH
    topics: dict[Topic, Topic] = field(default_factory=dict)  # one object per equal topic


def _plan_chunk(
    session: Session,
    matcher: Matcher,
    due: list[Due],
    report: PlanReport,
    state: _Batches,
    *,
    now: datetime,
    settings: Settings,
    dry_run: bool,
) -> None:
    """Phases 2 and 3 for one chunk of due subscribers."""
    if not due:
        return
    topics = taught_topics(session=session, ids=[d.subscriber_id for d in due])
    lost = _parsing(topics)
    if lost:  # planned with no topic, they would get everything
        for d in due:
            if d.subscriber_id in lost:
                report.add("unreadable", d.email)
        due = [d for d in due if d.subscriber_id not in lost]
        if not due:
            return
    if len(state.topics) > 200_000:
        state.topics.clear()
    for sid, ts in topics.items():  # equal topics as one object: less memory, faster keys
        topics[sid] = [state.topics.setdefault(t, t) for t in ts]
    matcher.prepare(session, due=due, topics=topics)
    ranks = matcher.rank_many(
        [
            Wanted(d.subscriber_id, d.since, topics.get(d.subscriber_id, []),
                   settings.digest_max_papers, d.dial, d.ask)
            for d in due
        ]
    )  # fmt: skip
    for d, (ranked, key) in zip(due, ranks, strict=True):
        if not ranked.matches and not settings.send_empty:
            report.add("no_match", d.email)  # empty days send nothing by default
            continue
        if dry_run:
            items = matcher.snapshot(ranked, key)
            report.add_planned(
                PlannedDigest(d.email, d.edition, ranked, None, d.subscriber_id, items)
            )
            continue
        state.drafts.append(_Draft(d, ranked, matcher.snapshot(ranked, key)))
        if len(state.drafts) >= state.size:
            _record(session, state.drafts, report, now=now, settings=settings, until=matcher.until)
            # Committed batch by batch: delivery workers start on these while the
            # rest is planned, and SQLite's write lock is not held for the whole run.
            # The first batches are small, so they start early.
            session.commit()
            state.drafts = []
            state.size = min(state.size * 2, RECORD_BATCH)


def _parsing(topics: dict[int, list[Topic]]) -> set[int]:
    """Drop, with a warning naming it, each topic whose filter does not parse (stored by
    hand, or by an older parser): one reader's row must not stop planning. Returns the
    readers left with none of the topics they had."""
    lost: set[int] = set()
    for sid, ts in topics.items():
        kept = [t for t in ts if _parses(sid, t)]
        if len(kept) < len(ts):
            topics[sid] = kept
            if not kept:
                lost.add(sid)
    return lost


def _parses(sid: int, topic: Topic) -> bool:
    try:
        compile_filter(topic.query)  # cached: planning compiles it anyway
    except FilterSyntaxError as exc:
        log.warning(
            "topic left out: its filter does not parse",
            extra={"subscriber": sid, "filter": topic.query[:200], "error": str(exc)},
        )
        return False
    return True


def _record(
    session: Session,
    drafts: list[_Draft],
    report: PlanReport,
    *,
    now: datetime,
    settings: Settings,
    until: datetime,
) -> None:
    """Phase 3: insert the drafts' rows in bulk and report each digest once, complete;
    a digest another planner recorded first is reported as already planned. Each
    covers the papers first seen ``until`` then."""
    created = _insert(session, drafts, now=now, settings=settings, until=until)
    for draft in drafts:
        d = draft.due
        delivery_id = created.get(d.subscriber_id)
        if delivery_id is None:
            report.add("already_planned", d.email)
        else:
            report.add_planned(
                PlannedDigest(
                    d.email, d.edition, draft.ranked, delivery_id, d.subscriber_id, draft.items
                )
            )


def _insert(
    session: Session, drafts: list[_Draft], *, now: datetime, settings: Settings, until: datetime
) -> dict[int, int]:
    """Insert deliveries in bulk (``ledger.planned``); the delivery id created per
    subscriber, for those another planner did not record first."""
    rows = [
        PlannedRow(
            subscriber_id=d.due.subscriber_id,
            edition=d.due.edition,
            message_id=new_message_id(
                edition=d.due.edition,
                subscriber_id=d.due.subscriber_id,
                domain=settings.message_id_domain,
            ),
            to_address=d.due.email,
            paper_count=len(d.ranked.matches),
            more_count=d.ranked.more,
            items=d.items,
        )
        for d in drafts
    ]
    return insert_planned(session.connection(), rows, now=now, covers_until=until)


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

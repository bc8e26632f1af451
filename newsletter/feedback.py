"""Votes: a reader's "more like this" and "not for me" on a paper, in one of their topics.

A vote is an event in the ledger (``feedback.vote``), never an update in place: what a
topic has been taught is the replay of its events, last vote per paper wins, and a vote
of ``none`` takes one back. So nothing learned is lost, any vote can be undone, and the
state can always be rebuilt (``taught``). A topic is named by its filter as stored: the
topic's row is replaced when the reader edits their topics, the filter is what they
taught. Editing a filter starts that topic afresh.
"""

from __future__ import annotations

import enum
import json
import logging
from collections.abc import Sequence
from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlmodel import Session, select

from newsletter.errors import UNREADABLE, SubscriberError, TooManyVotesError
from newsletter.events import EventKind
from newsletter.models import Event, Paper, Subscriber, TopicFilter, TopicLesson
from newsletter.relevance import Topic
from newsletter.subscribers import event, topic_rows

log = logging.getLogger(__name__)

HOUR = timedelta(hours=1)  # the window of ``record_vote``'s ``per_hour``


class Vote(enum.StrEnum):
    UP = "up"  # more like this
    DOWN = "down"  # not for me
    NONE = "none"  # take the vote back

    @property
    def sign(self) -> int:
        return {"up": 1, "down": -1, "none": 0}[self.value]


Taught = dict[tuple[int, str], tuple[tuple[int, int], ...]]  # (subscriber, filter) -> votes


def record_vote(
    *,
    session: Session,
    subscriber: Subscriber,
    query: str,
    paper_id: int,
    vote: Vote,
    source: str,
    now: datetime,
    delivery_id: int | None = None,
    per_hour: int | None = None,
) -> tuple[tuple[int, int], ...]:
    """Append one vote and return what the topic is taught now. The topic must be one of
    the subscriber's and the paper must exist; a vote equal to the current one is kept
    (a second tap changes nothing) but not written twice. With ``per_hour``, a reader
    who has voted that many times in the hour before ``now`` is refused
    (``TooManyVotesError``): counted in the ledger, so the limit holds across web
    processes and restarts, as one in a process's memory would not."""
    # One vote at a time per reader: two taps at once must not both start from the same
    # lesson and lose one, nor both pass the hour's count. PostgreSQL: the reader's row
    # locked. SQLite ignores FOR UPDATE, and pysqlite begins a transaction only at the
    # first write, so each read below would see the database as it is then: a write
    # that changes nothing comes first, to take SQLite's one write lock (waiting for a
    # vote in progress), and every read after it sees what that vote committed.
    if session.get_bind().dialect.name == "sqlite":
        session.execute(
            sa.update(Subscriber).where(Subscriber.id == subscriber.id).values(id=Subscriber.id)
        )
    else:
        session.exec(select(Subscriber.id).where(Subscriber.id == subscriber.id).with_for_update())
    topics = topics_of(session, subscriber.id)  # type: ignore[arg-type]
    if query not in topics:
        raise SubscriberError(f"{subscriber.email} has no topic {query!r}", field="topic")
    if session.get(Paper, paper_id) is None:
        raise SubscriberError(f"no paper with id {paper_id}", field="paper")
    before = taught(session=session, subscriber_ids=[subscriber.id]).get(  # type: ignore[list-item]
        (subscriber.id, query),
        (),  # type: ignore[arg-type]
    )
    current = dict(before).get(paper_id, 0)
    if current == vote.sign:
        return before  # nothing written, so nothing counted nor refused
    if per_hour is not None and votes_since(session, subscriber.id, now - HOUR) >= per_hour:  # type: ignore[arg-type]
        raise TooManyVotesError(f"{subscriber.email} voted {per_hour} times within the hour")
    ev = event(
        kind=EventKind.VOTED,
        subscriber_id=subscriber.id,
        now=now,
        paper=paper_id,
        topic=query,
        vote=vote.value,
        source=source,
    )
    ev.delivery_id = delivery_id
    session.add(ev)
    session.flush()
    votes = dict(before)
    if vote.sign:
        votes[paper_id] = vote.sign
    else:
        votes.pop(paper_id, None)
    state = tuple(sorted(votes.items()))
    _store(session, subscriber.id, query, state, version=ev.id, now=now)  # type: ignore[arg-type]
    return state


def votes_since(session: Session, subscriber_id: int, since: datetime) -> int:
    """How many votes the reader has recorded since ``since`` (the events' index on the
    subscriber finds theirs)."""
    return session.exec(
        select(sa.func.count())
        .select_from(Event)
        .where(
            Event.subscriber_id == subscriber_id,
            Event.kind == EventKind.VOTED,
            Event.at >= since,  # type: ignore[operator]
        )
    ).one()


def taught(
    *,
    session: Session,
    subscriber_ids: Sequence[int] | None = None,
    live: set[tuple[int, str]] | None = None,
) -> Taught:
    """What each (subscriber, topic) has been taught: its stored lesson, plus any vote
    event written after it (the events are the truth; the lesson saves replaying them
    all). Votes in a topic the subscriber no longer has are kept but not returned
    (``live``: their current topics, when the caller has read them already)."""
    lessons = _lessons(session, subscriber_ids)
    state = _replay(session, subscriber_ids, after=lessons)
    if live is None:
        live = _live_topics(session, {sid for sid, _ in state})
    return {
        key: tuple(sorted(votes.items())) for key, votes in state.items() if votes and key in live
    }


def rebuild(*, session: Session, now: datetime) -> tuple[int, int]:
    """Every lesson replayed from the events alone and stored again; returns (lessons
    written, lessons that differed from what was stored)."""
    stored = {key: dict(votes) for key, (_, votes) in _lessons(session, None).items()}
    replayed = _replay(session, None, after={})
    versions = dict(
        session.exec(
            select(Event.subscriber_id, sa.func.max(Event.id))  # type: ignore[call-overload]
            .where(Event.kind == EventKind.VOTED)
            .group_by(Event.subscriber_id)
        ).all()
    )
    session.execute(sa.delete(TopicLesson))
    for (sid, query), votes in replayed.items():
        _store(session, sid, query, tuple(sorted(votes.items())), versions[sid], now)
    differed = sum(1 for key in stored.keys() | replayed.keys()
                   if stored.get(key, {}) != replayed.get(key, {}))  # fmt: skip
    return len(replayed), differed


Lessons = dict[tuple[int, str], tuple[int, dict[int, int]]]  # key -> (version, votes)


def _lessons(session: Session, subscriber_ids: Sequence[int] | None) -> Lessons:
    query = select(TopicLesson)
    found: Lessons = {}
    for ids in _chunks(subscriber_ids):
        chunk = query if ids is None else query.where(TopicLesson.subscriber_id.in_(ids))  # type: ignore[attr-defined]
        for row in session.exec(chunk):
            try:
                votes = {int(pid): int(sign) for pid, sign in json.loads(row.votes)}
            except UNREADABLE as exc:
                # As if never stored: version 0, so ``_replay`` reads its votes from the
                # first event (and every lesson of these readers with it).
                log.warning(
                    "topic lesson unreadable, replayed from its votes",
                    extra={"subscriber": row.subscriber_id, "error": repr(exc)[:200]},
                )
                found[(row.subscriber_id, row.query)] = (0, {})
                continue
            found[(row.subscriber_id, row.query)] = (row.version, votes)
    return found


def _replay(
    session: Session, subscriber_ids: Sequence[int] | None, *, after: Lessons
) -> dict[tuple[int, str], dict[int, int]]:
    """The lessons ``after`` brought up to date with the vote events written since."""
    state = {key: dict(votes) for key, (_, votes) in after.items()}
    version = {key: v for key, (v, _) in after.items()}
    # Every vote writes its topic's lesson in the same transaction, so no event older
    # than the oldest lesson of these readers is missing from it: read only the newer.
    floor = min(version.values(), default=0)
    query = select(Event.id, Event.subscriber_id, Event.detail).where(
        Event.kind == EventKind.VOTED,
        Event.id > floor,  # type: ignore[operator]
    )
    for ids in _chunks(subscriber_ids):
        chunk = query
        if ids is not None:
            chunk = chunk.where(Event.subscriber_id.in_(ids))  # type: ignore[union-attr]
        for event_id, sid, detail in session.exec(chunk.order_by(Event.id)):  # type: ignore[union-attr]
            try:
                d = json.loads(detail)
                key, sign, paper = (sid, str(d["topic"])), Vote(d["vote"]).sign, int(d["paper"])
            except UNREADABLE as exc:  # written around the checks: it teaches nothing
                log.warning(
                    "vote event unreadable, left out",
                    extra={"event": event_id, "error": repr(exc)[:200]},
                )
                continue
            if event_id <= version.get(key, 0):
                continue  # already in the stored lesson
            votes = state.setdefault(key, {})
            if sign:
                votes[paper] = sign
            else:
                votes.pop(paper, None)
    return state


def _store(
    session: Session,
    subscriber_id: int,
    query: str,
    votes: tuple[tuple[int, int], ...],
    version: int,
    now: datetime,
) -> None:
    row = session.exec(
        select(TopicLesson).where(
            TopicLesson.subscriber_id == subscriber_id, TopicLesson.query == query
        )
    ).first()
    if row is None:
        row = TopicLesson(subscriber_id=subscriber_id, query=query, version=version)
    row.version, row.votes, row.updated_at = version, json.dumps(votes), now
    session.add(row)


def _chunks(ids: Sequence[int] | None) -> list[list[int] | None]:
    if ids is None:
        return [None]
    listed = list(ids)
    return [listed[i : i + 5000] for i in range(0, len(listed), 5000)] or [[]]


def taught_topics(*, session: Session, ids: Sequence[int]) -> dict[int, list[Topic]]:
    """Each subscriber's topics with what they taught them (planning, ``filters test``)."""
    topics = topic_rows(session=session, ids=ids)
    live = {(sid, t.query) for sid, ts in topics.items() for t in ts}
    state = taught(session=session, subscriber_ids=list(topics), live=live)
    if not state:
        return topics
    return {
        sid: [Topic(t.query, t.about, state.get((sid, t.query), ())) for t in ts]
        for sid, ts in topics.items()
    }


def topics_of(session: Session, subscriber_id: int) -> list[str]:
    return list(
        session.exec(
            select(TopicFilter.query)
            .where(TopicFilter.subscriber_id == subscriber_id)
            .order_by(TopicFilter.id)  # type: ignore[arg-type]
        )
    )


def _live_topics(session: Session, subscriber_ids: set[int]) -> set[tuple[int, str]]:
    ids, live = sorted(subscriber_ids), set()
    for start in range(0, len(ids), 5000):
        live.update(
            session.exec(
                select(TopicFilter.subscriber_id, TopicFilter.query).where(
                    TopicFilter.subscriber_id.in_(ids[start : start + 5000])  # type: ignore[attr-defined]
                )
            )
        )
    return live

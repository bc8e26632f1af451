"""Phase 2 of planning: the candidate papers scored once per distinct topic, and what
each due subscriber gets (their pick, and the ledger snapshot that records it)."""

from __future__ import annotations

import bisect
from dataclasses import replace
from datetime import datetime

from sqlmodel import Session, select

from newsletter import snapshot
from newsletter.embed.store import display
from newsletter.models import Delivery, Paper
from newsletter.relevance import Pick, Picked, Scorer, Topic
from newsletter.relevance.day import day_scorer


class Matcher:
    """Phase 2: the candidate papers, scored once per distinct topic, and each
    subscriber's pick. Subscribers who chose the same topics and dial and are due the
    same papers share one pick (the scorer memoizes it) and so one ledger snapshot,
    encoded once here under the pick's key: a value, never an object's identity."""

    def __init__(self, papers: list[Paper], sent: dict[int, set[int]], scorer: Scorer) -> None:
        self.scorer = scorer
        self.sent = sent
        self.position = {p.id: i for i, p in enumerate(papers)}  # oldest first
        self.seen = [p.first_seen_at for p in papers]
        self.everything = (1 << len(papers)) - 1
        self.shown = {p.id: (p.upvotes, p.authors, p.organization, p.published_on) for p in papers}
        self.abstracts = {p.id: p.abstract for p in papers}
        self._snapshots: dict[Key, str] = {}

    @classmethod
    def load(
        cls, session: Session, *, since: datetime, now: datetime, topics: set[Topic]
    ) -> Matcher:
        papers = list(
            session.exec(
                select(Paper)
                .where(Paper.first_seen_at > since, Paper.first_seen_at <= now)
                .order_by(Paper.first_seen_at, Paper.id)
            )
        )
        scorer = day_scorer(session, papers=papers, now=now, topics=topics)
        return cls(papers, _sent_papers(session=session, since=since), scorer)

    def rank(
        self,
        *,
        subscriber_id: int,
        since: datetime,
        topics: list[Topic],
        limit: int,
        dial: int,
        ask: bool,
    ) -> tuple[Picked, Key]:
        """The subscriber's pick, and its key: what makes two picks the same. ``ask``:
        the digest may carry papers just below the line, asking for a vote."""
        # New for this subscriber: first seen after `since` (a suffix, the list is in
        # first-seen order), minus what one of their digests already held.
        first_new = bisect.bisect_right(self.seen, since)
        within = self.everything & ~((1 << first_new) - 1)
        for paper_id in self.sent.get(subscriber_id, ()):
            if paper_id in self.position:
                within &= ~(1 << self.position[paper_id])
        key = (tuple(topics), within, limit, dial, ask)
        picked = self.scorer.pick(topics, within=within, limit=limit, dial=dial)
        return (picked if ask else replace(picked, unsure=())), key

    def snapshot(self, picked: Picked, key: Key) -> str:
        text = self._snapshots.get(key)
        if text is None:
            unsure = {m.paper_id for m in picked.unsure}
            text = self._snapshots[key] = snapshot.encode(
                [self._item(m, near=False) for m in picked.matches]
                + [self._item(m, near=False, unsure=True) for m in picked.unsure]
                + [self._item(m, near=True) for m in picked.near if m.paper_id not in unsure]
            )
        return text

    def _item(self, m: Pick, *, near: bool, unsure: bool = False) -> snapshot.Item:
        a, b = m.sentence or (0, 0)
        sentence = display(self.abstracts[m.paper_id])[a:b] if m.sentence is not None else None
        return snapshot.Item(
            m.paper_id, m.filters, m.words, *self.shown[m.paper_id],
            close_to=m.close_to if m.meaning else None, sentence=sentence, near=near,
            liked=m.liked, unsure=unsure,
        )  # fmt: skip


# (topics, papers in reach as a bitset, limit, dial, asking about unsure papers)
Key = tuple[tuple[Topic, ...], int, int, int, bool]


def _sent_papers(*, session: Session, since: datetime) -> dict[int, set[int]]:
    """Per subscriber, the papers of their digests planned after ``since``: a superset of
    those first seen after ``since`` (a digest holds only papers seen before it was planned)."""
    sent: dict[int, set[int]] = {}
    for sid, items in session.exec(
        select(Delivery.subscriber_id, Delivery.items).where(Delivery.created_at > since)
    ):
        sent.setdefault(sid, set()).update(i.paper_id for i in snapshot.decode(items))
    return sent

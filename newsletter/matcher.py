"""Phase 2 of planning: the candidate papers scored once per distinct topic, and what
each due subscriber gets (their pick, and the ledger snapshot that records it)."""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Sequence
from dataclasses import replace
from datetime import datetime
from typing import NamedTuple

from sqlmodel import Session, select

from newsletter import snapshot
from newsletter.bounded import Bounded
from newsletter.due import Due
from newsletter.embed.store import display
from newsletter.models import Delivery, DeliveryKind, Paper, Snapshot
from newsletter.relevance import Pick, Picked, Scorer, Topic
from newsletter.relevance.day import add_topics, day_scorer
from newsletter.relevance.score import EVERYTHING


class Matcher:
    """Phase 2: the candidate papers, scored once per distinct topic, and each
    subscriber's pick. Subscribers who chose the same topics and dial and are due the
    same papers share one pick (the scorer memoizes it) and so one ledger snapshot,
    encoded once here under the pick's key (a value)."""

    def __init__(self, papers: list[Paper], scorer: Scorer, *, until: datetime) -> None:
        self.scorer = scorer
        self.until = until  # these are the papers first seen until then
        self.position = {p.id: i for i, p in enumerate(papers)}  # oldest first
        self.seen = [p.first_seen_at for p in papers]
        self.everything = (1 << len(papers)) - 1
        self.shown = {p.id: (p.upvotes, p.authors, p.organization, p.published_on) for p in papers}
        self.abstracts = {p.id: p.abstract for p in papers}
        self.sent: dict[int, set[int]] = {}
        self._snapshots = Bounded(20_000)  # Key -> the ledger's JSON text
        # id of a Pick -> (the Pick, its JSON), one cache per way a snapshot lists it
        # (in, unsure, near): by identity, the Pick kept beside its text so the id
        # cannot be reused while the entry lives; hashing the Pick by value costs more
        # than encoding saves.
        self._items = (Bounded(100_000), Bounded(10_000), Bounded(100_000))

    @classmethod
    def load(
        cls, session: Session, *, since: datetime, now: datetime, until: datetime | None = None
    ) -> Matcher:
        """The papers first seen after ``since`` and until ``until`` (``now``), scored.
        Digests planned from them cover until the newest of them: not ``now``, which a
        clock running fast (or another host's) would put past papers yet to come."""
        until = now if until is None else min(until, now)
        papers = list(
            session.exec(
                select(Paper)
                .where(Paper.first_seen_at > since, Paper.first_seen_at <= until)
                .order_by(Paper.first_seen_at, Paper.id)
            )
        )
        newest = papers[-1].first_seen_at if papers else until  # they are in that order
        return cls(papers, day_scorer(session, papers=papers, now=now), until=newest)

    def prepare(self, session: Session, *, due: list[Due], topics: dict[int, list[Topic]]) -> None:
        """Ready for a chunk of due subscribers: their topics' vectors loaded and decided
        (in batches, per dial step), and the papers already sent to them."""
        add_topics(session, scorer=self.scorer, topics={t for ts in topics.values() for t in ts})
        by_dial: dict[int, set[Topic]] = {}
        for d in due:
            by_dial.setdefault(d.dial, set()).update(topics.get(d.subscriber_id) or EVERYTHING)
        self.scorer.prepare(by_dial)
        self.sent = _sent_papers(session=session, due=due)

    def rank_many(self, wanted: Sequence[Wanted]) -> list[tuple[Picked, Key]]:
        """Each subscriber's pick, and its key: what makes two picks the same (``ask``:
        the digest may carry papers just below the line, asking for a vote). A chunk
        of subscribers is merged together (``Scorer.pick_many``)."""
        keys = [(tuple(w.topics), self._within(w), w.limit, w.dial, w.ask) for w in wanted]
        picks = self.scorer.pick_many([key[:4] for key in keys])
        return [
            (picked if key[4] else replace(picked, unsure=()), key)
            for picked, key in zip(picks, keys, strict=True)
        ]

    def _within(self, w: Wanted) -> int:
        """The papers new for this subscriber: first seen after their ``since`` (a
        suffix, the list is in first-seen order), minus what one of their digests
        already held."""
        first_new = bisect.bisect_right(self.seen, w.since)
        within = self.everything & ~((1 << first_new) - 1)
        for paper_id in self.sent.get(w.subscriber_id, ()):
            if paper_id in self.position:
                within &= ~(1 << self.position[paper_id])
        return within

    def snapshot(self, picked: Picked, key: Key) -> str:
        text = self._snapshots.get(key)
        if text is None:
            unsure = {m.paper_id for m in picked.unsure}
            near = [m for m in picked.near if m.paper_id not in unsure]
            text = self._snapshots.put(
                key,
                snapshot.join(
                    self._encoded(picked.matches, IN)
                    + self._encoded(picked.unsure, UNSURE)
                    + self._encoded(near, NEAR)
                ),
            )
        return text

    def _encoded(self, picks: Iterable[Pick], way: int) -> list[str]:
        """The papers of a snapshot, each encoded once for every digest that lists it so."""
        cache, out = self._items[way], []
        for m in picks:
            found = cache.get(id(m))
            out.append(found[1] if found is not None and found[0] is m else self._item(m, way))
        return out

    def _item(self, m: Pick, way: int) -> str:
        a, b = m.sentence or (0, 0)
        sentence = display(self.abstracts[m.paper_id])[a:b] if m.sentence is not None else None
        item = snapshot.Item(
            m.paper_id, m.filters, m.words, *self.shown[m.paper_id],
            close_to=m.close_to if m.meaning else None, sentence=sentence, near=way == NEAR,
            liked=m.liked, unsure=way == UNSURE,
        )  # fmt: skip
        return self._items[way].put(id(m), (m, snapshot.encode_item(item)))[1]


IN, UNSURE, NEAR = 0, 1, 2  # how a snapshot lists a paper


class Wanted(NamedTuple):
    """A subscriber to rank: whose, since when, their topics, digest size, dial, and
    whether their digest may ask about papers just below the line."""

    subscriber_id: int
    since: datetime
    topics: list[Topic]
    limit: int
    dial: int
    ask: bool


# (topics, papers in reach as a bitset, limit, dial, asking about unsure papers)
Key = tuple[tuple[Topic, ...], int, int, int, bool]


def _sent_papers(*, session: Session, due: Iterable[Due]) -> dict[int, set[int]]:
    """Per due subscriber, the papers of their digests that cover beyond their ``since``:
    a superset of those first seen after it (a digest holds only papers seen until its
    ``covers_until``). Usually none: ``since`` is the last digest's ``covers_until``.
    (Not "planned after ``since``": a digest covers until the newest paper it was
    planned from, before it was planned, and every reader's last one would be read.)"""
    since = {d.subscriber_id: d.since for d in due}
    if not since:
        return {}
    sent: dict[int, set[int]] = {}
    ids = sorted(since)
    for start in range(0, len(ids), 5000):
        chunk = ids[start : start + 5000]
        rows = session.exec(
            select(Delivery.subscriber_id, Delivery.covers_until, Delivery.id).where(
                Delivery.kind == DeliveryKind.DIGEST,
                Delivery.subscriber_id.in_(chunk),  # type: ignore[attr-defined]
                Delivery.covers_until > min(since[s] for s in chunk),
            )
        )
        # Only the rows that cover beyond each reader's own `since` are decoded.
        wanted = [did for sid, covers, did in rows if covers > since[sid]]
        for w in range(0, len(wanted), 5000):
            for sid, items in session.exec(
                select(Delivery.subscriber_id, Snapshot.items)
                .join(Snapshot, Snapshot.id == Delivery.snapshot_id)  # type: ignore[arg-type]
                .where(Delivery.id.in_(wanted[w : w + 5000]))  # type: ignore[union-attr]
            ):
                sent.setdefault(sid, set()).update(i.paper_id for i in snapshot.decode(items))
    return sent

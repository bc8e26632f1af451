"""What a digest holds, as the ledger records it: ``snapshots.items``, one JSON array.

Best first, one object per paper::

    {"id": 42, "topics": ["diffusion"], "terms": ["Diffusion"],
     "upvotes": 17, "authors": 5, "org": "ZIP Lab", "published": "2024-05-28",
     "close_to": "Diffusion models for images", "sentence": "We propose ...", "near": true}

``topics`` are the subscriber's filters that matched, as typed; ``terms`` the words
to highlight, as the paper writes them. When meaning carried the paper over the line,
``close_to`` is the topic sentence it is close to and ``sentence`` the abstract's
sentence nearest it; ``near`` marks a paper just below the line (the archive lists
them; the email counts them). The three are left out when empty.

The metadata shown in the digest is kept as it was at planning: re-ingesting a page
raises upvotes, and a resend after a crash must be the same message. Title and
abstract are read from the paper, which never changes them.

One text, not a row per paper: a digest is written once and read whole. Subscribers
who chose the same topics share one ranking and so one JSON text, encoded once when
planning, stored once (the ``snapshots`` table, by ``key``: a hash of the text, so the
same text is the same row whoever plans it) and decoded once per batch when sending.
A snapshot names the reader's topics, so one that no delivery refers to any more (its
subscriber removed, or its digest planned by someone else first) is deleted, not kept
(``forget_unused``).
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from datetime import date

import sqlalchemy as sa

from newsletter.errors import UNREADABLE, NewsletterError
from newsletter.models import Delivery, Snapshot


class SnapshotError(NewsletterError):
    """A ledger row's items are not what planning writes (edited by hand, or corrupted)."""


@dataclass(frozen=True, slots=True)
class Item:
    paper_id: int
    topics: tuple[str, ...]
    terms: tuple[str, ...]
    upvotes: int | None = None
    authors: int | None = None
    organization: str | None = None
    published_on: date | None = None
    close_to: str | None = None
    sentence: str | None = None
    near: bool = False
    liked: str | None = None  # the title of the liked paper a vote carried it by
    unsure: bool = False  # just below the line, shown to ask the reader ("not sure…")

    @property
    def votable(self) -> bool:
        """Shown with vote links: in the email, and carried by a topic of the reader's
        (not "*", everything)."""
        return not self.near and bool(self.topics) and self.topics[0] != "*"


def _row(i: Item) -> dict[str, object]:
    row: dict[str, object] = {
        "id": i.paper_id,
        "topics": list(i.topics),
        "terms": list(i.terms),
        "upvotes": i.upvotes,
        "authors": i.authors,
        "org": i.organization,
        "published": i.published_on.isoformat() if i.published_on else None,
    }
    if i.close_to:
        row["close_to"] = i.close_to
    if i.sentence:
        row["sentence"] = i.sentence
    if i.near:
        row["near"] = True
    if i.liked:
        row["liked"] = i.liked
    if i.unsure:
        row["unsure"] = True
    return row


def encode(items: Iterable[Item]) -> str:
    return join([encode_item(i) for i in items])


def encode_item(item: Item) -> str:
    """One item's JSON object: planning encodes each (paper, why) once and joins them."""
    return json.dumps(_row(item), ensure_ascii=False, separators=(",", ":"))


def join(encoded: list[str]) -> str:
    """Encoded items as the column's array: the same text ``encode`` makes."""
    return "[" + ",".join(encoded) + "]"


def key(text: str) -> str:
    """A snapshot's id: its text's BLAKE2b-128, in hex."""
    return hashlib.blake2b(text.encode("utf-8"), digest_size=16).hexdigest()


@functools.lru_cache(maxsize=20_000)
def decode(text: str) -> tuple[Item, ...]:
    """The items of one digest (cached: digests of the same ranking share the text)."""
    try:
        return tuple(
            Item(
                paper_id=_paper_id(row["id"]),
                topics=tuple(row["topics"]),
                terms=tuple(row["terms"]),
                upvotes=row.get("upvotes"),
                authors=row.get("authors"),
                organization=row.get("org"),
                published_on=date.fromisoformat(row["published"]) if row.get("published") else None,
                close_to=row.get("close_to"),
                sentence=row.get("sentence"),
                near=bool(row.get("near", False)),
                liked=row.get("liked"),
                unsure=bool(row.get("unsure", False)),
            )
            for row in json.loads(text)
        )
    except UNREADABLE as exc:
        raise SnapshotError(f"snapshots.items: not a digest's item list: {exc!r}"[:300]) from exc


def _paper_id(value: object) -> int:
    """A paper id as the database holds one: a whole number from 1 to 2**31 - 1, the
    papers' INTEGER column on PostgreSQL (a float such as 1e23 would pass int(), and an
    id beyond the column's range fail the query that reads the papers, for the batch)."""
    if not isinstance(value, int) or isinstance(value, bool) or not 0 < value < 2**31:
        raise ValueError(f"not a paper id: {value!r}")
    return value


# --- stored: the snapshots table ---------------------------------------------------------

_CHUNK = 500  # ids per statement: under every driver's bound-parameter limit


def stored_texts(connection: sa.Connection, ids: Collection[str]) -> dict[str, str]:
    """The stored text of each snapshot id (those that exist)."""
    wanted, found = list(ids), {}
    for start in range(0, len(wanted), _CHUNK):
        query = sa.select(Snapshot.id, Snapshot.items).where(
            Snapshot.id.in_(wanted[start : start + _CHUNK])  # type: ignore[attr-defined]
        )
        found.update((k, text) for k, text in connection.execute(query))
    return found


def text_of(connection: sa.Connection, delivery: Delivery) -> str | None:
    """A delivery's snapshot text (None for mail that has none)."""
    if delivery.snapshot_id is None:
        return None
    return stored_texts(connection, [delivery.snapshot_id]).get(delivery.snapshot_id)


def forget_unused(connection: sa.Connection, ids: Collection[str]) -> None:
    """Delete those of ``ids`` no delivery refers to (a look-up each in the ledger's
    index on snapshot_id)."""
    wanted = sorted(ids)  # one order for everyone who deletes: no deadlock between them
    used = sa.exists().where(Delivery.snapshot_id == Snapshot.id)
    for start in range(0, len(wanted), _CHUNK):
        connection.execute(
            sa.delete(Snapshot).where(
                Snapshot.id.in_(wanted[start : start + _CHUNK]),  # type: ignore[attr-defined]
                ~used,
            )
        )

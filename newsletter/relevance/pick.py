"""A subscriber's pick, merged from their topics' decisions: the cost is the digest's
size, not the day's.

Each topic's decision at a dial step is worked out once for all its readers
(``score.py``) and kept sparse (``Decision``): the papers in and just below the line,
best first, and what their explanations need. A subscriber's pick merges their topics'
entries (``merge``: a paper scores its best in any of them, as the plain reference
``Scorer.decide`` takes the maximum over the day's arrays), keeps what is new to them,
and orders the rest: a few array operations over a few hundred entries. Explanations
are made for the digest's papers only, and shared by the readers of a topic
(``Scorer._explain``).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True, slots=True)
class Pick:
    """A paper for a subscriber, and why."""

    index: int
    paper_id: int
    score: float
    lexical: float
    semantic: float | None
    filters: tuple[str, ...]  # the topics' filters that let it in, as typed
    words: tuple[str, ...]  # the words that matched, as the paper writes them
    meaning: bool  # its meaning carried it over the line
    close_to: str | None  # the topic sentence it is close to
    sentence: tuple[int, int] | None  # span of the abstract sentence nearest the topic
    liked: str | None = None  # the title of the liked paper whose vote carried it in


@dataclass(frozen=True, slots=True)
class Picked:
    matches: tuple[Pick, ...]
    total: int  # papers in, before the digest's cap
    near: tuple[Pick, ...]  # papers just below the line, best first
    # Of ``near``, the UNSURE closest to the line, closest first: where the topic's
    # decision is least certain, so a vote there teaches the most.
    unsure: tuple[Pick, ...] = ()

    @property
    def more(self) -> int:
        return self.total - len(self.matches)


@dataclass(frozen=True, slots=True)
class Day:
    """What orders papers, per paper of the day: as the reference's ``_order`` has it."""

    popularity: np.ndarray
    upvotes: np.ndarray
    seen: np.ndarray
    ids: np.ndarray


MATCHED, CARRIED, VOTED, BELOW = 1, 2, 4, 8  # Decision.flags
_SERIAL = itertools.count()


@dataclass(frozen=True, slots=True)
class Decision:
    """One topic at one dial step, for every reader of it, over the papers it lets in
    (inside) or leaves just below the line (near, flagged ``BELOW``).

    ``papers`` are those papers' indexes, ascending; the other arrays are aligned with
    them; ``order`` lists positions in ``papers``, best first. A few hundred entries at
    most: what a digest can use, not the day's arrays.
    """

    key: tuple[object, int]  # (topic, dial)
    query: str
    papers: np.ndarray
    order: np.ndarray
    value: np.ndarray  # the fused score (0 for "*")
    lexical: np.ndarray
    semantic: np.ndarray  # nan where there is no meaning to compare
    # MATCHED | CARRIED (meaning carried it) | VOTED (a liked paper did) | BELOW (near the line)
    flags: np.ndarray
    margin: np.ndarray  # how far below the line, in fused-score units
    liked: np.ndarray  # index into ``liked_ids`` of the nearest liked paper, -1 none
    liked_ids: tuple[int, ...] = ()
    # A serial number, never reused: what explanations shared by its readers are keyed by.
    uid: int = field(default_factory=lambda: next(_SERIAL))
    _rows: dict[int, int] = field(default_factory=dict)
    let_in: np.ndarray = field(init=False)  # bool, aligned with ``papers``: inside

    def __post_init__(self) -> None:
        object.__setattr__(self, "let_in", (self.flags & BELOW) == 0)

    def row(self, i: int) -> int:
        """Where paper ``i`` is in the arrays."""
        found = self._rows.get(i)
        if found is None:
            found = self._rows[i] = int(np.searchsorted(self.papers, i))
        return found


@dataclass(frozen=True, slots=True)
class Merged:
    # (index, best score, holders), best first, at most ``limit``; holders: bit k set
    # when the k-th decision holds the paper (in or near), what its explanation names
    shown: list[tuple[int, float, int]]
    below: list[tuple[int, float, int]]
    total: int  # papers in, before the cap
    margin: list[float]  # of each paper in ``below``: how far below the nearest line


def merge(decisions: Sequence[Decision], *, day: Day, reach: np.ndarray, limit: int) -> Merged:
    """The papers in ``reach`` (a boolean mask) that the decisions let in (their count,
    and the best ``limit``) and the best ``limit`` just below all their lines.

    Over the decisions' entries only, a few hundred at most: a paper's score is its
    best in any topic that holds it, in or near; it is in when any topic lets it in.
    """
    if len(decisions) == 1:
        d = decisions[0]
        rows = d.order[reach[d.papers[d.order]]]  # best first already
        let_in = d.let_in[rows]
        shown, near = rows[let_in][:limit], rows[~let_in][:limit]
        return Merged(
            shown=_listed(d.papers[shown], d.value[shown]),
            below=_listed(d.papers[near], d.value[near]),
            total=int(let_in.sum()),
            margin=d.margin[near].tolist(),
        )
    papers = np.concatenate([d.papers for d in decisions])
    keep = reach[papers]
    papers = papers[keep]
    if not len(papers):
        return Merged([], [], 0, [])
    value = np.concatenate([d.value for d in decisions])[keep]
    inside = np.concatenate([d.let_in for d in decisions])[keep]
    margin = np.concatenate([d.margin for d in decisions])[keep]
    holder = np.repeat(1 << np.arange(len(decisions)), [len(d.papers) for d in decisions])[keep]
    # Each paper once: its best score, whether any topic lets it in, how far it is
    # below the nearest line of those it is near, and which decisions hold it.
    by_paper = np.lexsort((-value, papers))
    papers, value, inside = papers[by_paper], value[by_paper], inside[by_paper]
    margin = np.where(inside, np.inf, margin[by_paper])
    first = np.empty(len(papers), bool)
    first[0] = True
    np.not_equal(papers[1:], papers[:-1], out=first[1:])
    starts = np.flatnonzero(first)
    papers, value = papers[starts], value[starts]
    inside = np.logical_or.reduceat(inside, starts)
    margin = np.minimum.reduceat(margin, starts)
    holder = np.bitwise_or.reduceat(holder[by_paper], starts)
    score = value * day.popularity[papers]
    order = np.lexsort((day.ids[papers], -day.seen[papers], -day.upvotes[papers], -score))
    papers, value, inside = papers[order], value[order], inside[order]
    margin, holder, outside = margin[order], holder[order], ~inside
    return Merged(
        shown=_listed(papers[inside][:limit], value[inside][:limit], holder[inside][:limit]),
        below=_listed(papers[outside][:limit], value[outside][:limit], holder[outside][:limit]),
        total=int(inside.sum()),
        margin=margin[outside][:limit].tolist(),
    )


def _listed(
    papers: np.ndarray, value: np.ndarray, holders: np.ndarray | None = None
) -> list[tuple[int, float, int]]:
    """(index, value, holders) rows; one decision holds them all when ``holders`` is None."""
    held = holders.tolist() if holders is not None else [1] * len(papers)
    return list(zip(papers.tolist(), value.tolist(), held, strict=True))

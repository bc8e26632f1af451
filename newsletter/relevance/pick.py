"""A subscriber's pick, merged from their topics' decisions: the cost is the digest's
size, not the day's.

Each topic's decision at a dial step is worked out once for all its readers
(``score.py``) and kept sparse (``Decision``): the papers in and just below the line,
ascending, and what their explanations need. A subscriber's pick merges their topics'
entries (``merge_many``: a paper scores its best in any of them, as the plain reference
``Scorer.decide`` takes the maximum over the day's arrays), keeps what is new to them,
and orders the rest: a few hundred entries per reader, merged for hundreds of readers
at once by a few dozen array operations. Explanations are made for the digest's papers
only, and shared by the readers of a topic (``Scorer._explain``).
"""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Iterator, Sequence
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
    # each paper's place when scores tie: by upvotes, freshness, id (one sort key
    # standing for three); ``by_tie`` the papers in that order, and their popularity
    tie: np.ndarray = field(init=False)
    by_tie: np.ndarray = field(init=False)
    popularity_by_tie: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        by_tie = np.lexsort((self.ids, -self.seen, -self.upvotes))
        tie = np.empty(len(self.ids), np.int64)
        tie[by_tie] = np.arange(len(self.ids))
        object.__setattr__(self, "tie", tie)
        object.__setattr__(self, "by_tie", by_tie)
        object.__setattr__(self, "popularity_by_tie", self.popularity[by_tie])


MATCHED, CARRIED, VOTED, BELOW = 1, 2, 4, 8  # Decision.flags
_SERIAL = itertools.count()


# Not frozen, and compared by identity: a chunk of planning makes one for every topic
# it decides (100,000s), and a frozen dataclass's __init__ cost three times as much.
# Nothing changes one once made: readers share it from the cache.
@dataclass(slots=True, eq=False)
class Decision:
    """One topic at one dial step, for every reader of it, over the papers it lets in
    (inside) or leaves just below the line (near, flagged ``BELOW``).

    ``papers`` are those papers' indexes, ascending; the other arrays are aligned with
    them. A few hundred entries at most: what a digest can use, not the day's arrays;
    ordering them is the merge's work (``merge_many``), done once per reader.
    """

    key: tuple[object, int]  # (topic, dial)
    query: str
    papers: np.ndarray
    value: np.ndarray  # the fused score (0 for "*")
    lexical: np.ndarray
    semantic: np.ndarray  # nan where there is no meaning to compare
    # MATCHED | CARRIED (meaning carried it) | VOTED (a liked paper did) | BELOW (near the line)
    flags: np.ndarray
    let_in: np.ndarray  # bool: inside (``flags`` without BELOW)
    margin: np.ndarray  # how far below the line, in fused-score units
    liked: np.ndarray  # index into ``liked_ids`` of the nearest liked paper, -1 none
    liked_ids: tuple[int, ...] = ()
    # A serial number, never reused: what explanations shared by its readers are keyed by.
    uid: int = field(default_factory=lambda: next(_SERIAL))

    def row(self, i: int) -> int:
        """Where paper ``i`` is in the arrays. Asked for each paper a digest explains: a
        bisection through a memoryview costs half of ``np.searchsorted`` on a scalar,
        and keeps nothing (a Python list of the papers, a fifth of the cost, kept 2% more
        of a planning process's memory)."""
        return bisect.bisect_left(memoryview(self.papers), i)


@dataclass(slots=True)  # not frozen: made for every reader, and frozen costs a third more
class Listed:
    """Papers best first: their indexes, best scores and holders (bit k set when the
    k-th decision holds the paper, in or near: what its explanation names). Three
    lists, read together as (index, score, holders) rows."""

    index: list[int]
    value: list[float]
    holders: list[int]

    def __iter__(self) -> Iterator[tuple[int, float, int]]:
        return zip(self.index, self.value, self.holders, strict=True)

    def __len__(self) -> int:
        return len(self.index)


@dataclass(slots=True)
class Merged:
    shown: Listed  # at most ``limit``
    below: Listed  # at most ``limit``
    total: int  # papers in, before the cap
    margin: list[float]  # of each paper in ``below``: how far below the nearest line


def merge_many(
    readers: Sequence[tuple[Sequence[Decision], int]],
    *,
    day: Day,
    reaches: Sequence[np.ndarray],
    limit: int,
) -> list[Merged]:
    """Per reader, the papers in their reach that their topics' decisions let in (their
    count, and the best ``limit``) and the best ``limit`` just below all their lines.
    Each reader is given as (their decisions, the index in ``reaches`` of the mask of
    the papers in their reach).

    A paper's score is its best in any topic that holds it, in or near; it is in when
    any topic lets it in. Over the decisions' entries only, a few hundred per reader,
    with a few dozen array operations for a group of readers together: merged one
    reader at a time, the same operations on arrays of a few hundred entries cost what
    their calls cost, a fifth of planning a million digests.
    """
    out: list[Merged] = []
    masks = np.stack(reaches)
    whole = masks.all(axis=1)  # reaches that hold every paper: nothing to mask
    group = max(1, TABLE // max(1, len(day.ids)))
    for start in range(0, len(readers), group):
        out += _merge_group(readers[start : start + group], day, (masks, whole), limit)
    return out


# Readers merged together: as many as make a table (readers x the day's papers) of this
# many cells, 2 MB of float64, which stays in a core's cache (on a 1,000-paper day, the
# score stage of bench/match.py took 8.9 s to merge 250 readers a group, 10.8 s 500, 8.7 s 100).
TABLE = 250_000


def _merge_group(
    readers: Sequence[tuple[Sequence[Decision], int]],
    day: Day,
    reach: tuple[np.ndarray, np.ndarray],
    limit: int,
) -> list[Merged]:
    parts = [(r, k, d) for r, (ds, _) in enumerate(readers) for k, d in enumerate(ds)]
    if not parts:
        return _nothing(len(readers))
    sizes = [len(d.papers) for _, _, d in parts]
    papers = np.concatenate([d.papers for _, _, d in parts])
    reader = np.repeat(np.array([r for r, _, _ in parts], np.int64), sizes)
    if not papers.size:
        return _nothing(len(readers))
    masks, whole = reach
    which = np.array([w for _, w in readers], np.int64)
    keep: np.ndarray | slice
    if whole[which].all():  # every reader may have every paper (planning's usual case)
        keep = slice(None)
    else:
        keep = masks[which[reader], papers]
        if not keep.any():
            return _nothing(len(readers))
    # Each (reader, paper) once, in a table of readers x papers: its best score,
    # whether any topic lets it in, how far below the nearest line of those it is
    # near, and which decisions hold it. The papers' columns are in tie order, so the
    # table read row by row lists each reader's papers as ties are broken.
    n = len(day.ids)
    pair = (reader * n + day.tie[papers])[keep]
    value = np.concatenate([d.value for _, _, d in parts])[keep]
    inside = np.concatenate([d.let_in for _, _, d in parts])[keep]
    margin = np.concatenate([d.margin for _, _, d in parts])[keep]
    holder = np.repeat(np.array([1 << k for _, k, _ in parts], np.int64), sizes)[keep]
    best = np.full(len(readers) * n, -np.inf)
    np.maximum.at(best, pair, value)
    let_in = np.zeros(len(readers) * n, bool)
    let_in[pair[inside]] = True
    nearest = np.full(len(readers) * n, np.inf)
    np.minimum.at(nearest, pair, np.where(inside, np.inf, margin))  # of the lines it is near
    held = np.zeros(len(readers) * n, np.int64)
    np.add.at(held, pair, holder)  # an OR: a decision holds a paper once, one bit each
    seen = np.zeros(len(readers) * n, bool)
    seen[pair] = True
    pair = np.flatnonzero(seen)  # by reader, then tie order
    reader, column = np.divmod(pair, n)
    inside = let_in[pair]
    totals = np.bincount(reader[inside], minlength=len(readers)).tolist()
    value = best[pair]
    key = value * day.popularity_by_tie[column]  # what orders them (the reference's ``_order``)
    if n > limit:  # of each reader's papers in (and below), those that can be its best
        chosen = contenders(reader, key, inside, limit=limit, readers=len(readers))
        pair, reader, column = pair[chosen], reader[chosen], column[chosen]
        value, key, inside = value[chosen], key[chosen], inside[chosen]
    papers, margin, holder = day.by_tie[column], nearest[pair], held[pair]
    # Each reader's papers best first (as the reference's ``_order``): score, then
    # upvotes, freshness and id.
    order = best_first(reader, key, column)
    reader, papers, value = reader[order], papers[order], value[order]
    inside, margin, holder = inside[order], margin[order], holder[order]
    # Of each reader's, the first ``limit`` in and the first ``limit`` below: ranks
    # counted from the reader's first entry, apart for the two kinds.
    bounds = np.searchsorted(reader, np.arange(len(readers) + 1))
    counts = np.diff(bounds)
    shown = inside & (_ranks(inside, bounds, counts) < limit)
    below = ~inside & (_ranks(~inside, bounds, counts) < limit)
    i_shown, v_shown, h_shown = (
        papers[shown].tolist(),
        value[shown].tolist(),
        holder[shown].tolist(),
    )
    i_below, v_below, h_below = (
        papers[below].tolist(),
        value[below].tolist(),
        holder[below].tolist(),
    )
    margins = margin[below].tolist()
    cut_shown = np.searchsorted(np.flatnonzero(shown), bounds).tolist()
    cut_below = np.searchsorted(np.flatnonzero(below), bounds).tolist()
    out = []
    for r in range(len(readers)):
        a, b = cut_shown[r], cut_shown[r + 1]
        c, d = cut_below[r], cut_below[r + 1]
        out.append(
            Merged(
                Listed(i_shown[a:b], v_shown[a:b], h_shown[a:b]),
                Listed(i_below[c:d], v_below[c:d], h_below[c:d]),
                totals[r],
                margins[c:d],
            )
        )
    return out


def _nothing(readers: int) -> list[Merged]:
    return [Merged(Listed([], [], []), Listed([], [], []), 0, []) for _ in range(readers)]


LEVELS = 64  # the bands ``contenders`` cuts the scores into


def contenders(
    reader: np.ndarray, key: np.ndarray, inside: np.ndarray, *, limit: int, readers: int
) -> np.ndarray:
    """A mask over the entries (each a reader's paper: its ``reader``, ``key`` what orders
    it, best highest, and whether it is ``inside``) that keeps, of each reader's papers
    in and of those below, at least every one that can be among its best ``limit``.

    Ordering all of a merge group's entries cost a third of the merge, but a reader
    keeps only 2 x ``limit`` of a few hundred. So the keys are cut into ``LEVELS``
    bands of equal width (a band's number only grows with the key, exactly: each step
    of the arithmetic is monotonic); a reader's entries of one kind are counted by
    band, and those below the highest band that has ``limit`` of them at or above it
    are dropped: ``limit`` of its entries are better than each of them. No sort, a few
    passes over the entries; on bench/match.py's worst case it keeps about one in six.
    """
    if not len(key):
        return np.ones(0, bool)
    lo, hi = key.min(), key.max()
    with np.errstate(all="ignore"):
        span = hi - lo
        scale = LEVELS / span if span > 0 else np.inf
    if not (np.isfinite(lo) and np.isfinite(hi) and np.isfinite(span) and np.isfinite(scale)):
        return np.ones(len(key), bool)  # one band (or not numbers to band): keep them all
    band = ((key - lo) * scale).astype(np.int64)
    np.minimum(band, LEVELS, out=band)  # the highest key's own band, whatever the rounding
    width = LEVELS + 1
    group = reader * 2 + inside  # (reader, kind)
    counts = np.bincount(group * width + band, minlength=readers * 2 * width)
    # at or above each band, highest first: how many of the group's entries
    reach = counts.reshape(readers * 2, width)[:, ::-1].cumsum(1)
    enough = reach >= max(limit, 1)  # a digest of none still keeps each group's best
    lowest = np.where(enough[:, -1], LEVELS - np.argmax(enough, axis=1), 0)
    return band >= lowest[group]


def best_first(groups: np.ndarray, score: np.ndarray, tie: np.ndarray) -> np.ndarray:
    """Positions ordered by group, then score (highest first), then ``tie`` (each
    paper's place in ``Day.tie``): what ``np.lexsort((tie, -score, groups))`` gives,
    with two sorts instead of three: the scores' (their ranks), then one key distinct
    for each (group, paper): the group, the score's rank, the tie (a third of the time
    on a merge's entries). The key stays below groups x entries x papers: in a merge
    group, readers x papers is at most TABLE and so are the entries (each pair once),
    so below TABLE**2, 6 x 10**10."""
    levels, rank = np.unique(-score, return_inverse=True)
    places = int(tie.max()) + 1 if len(tie) else 1
    return np.argsort((groups * len(levels) + rank) * places + tie)


def _ranks(kind: np.ndarray, bounds: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """For each entry of ``kind``, how many of its reader's entries of that kind come
    before it (entries grouped by reader: ``bounds``, ``counts``)."""
    before = np.cumsum(kind) - kind  # of the kind, before this entry, all readers
    at_start = before[np.minimum(bounds[:-1], len(kind) - 1)]
    return before - np.repeat(at_start, counts)

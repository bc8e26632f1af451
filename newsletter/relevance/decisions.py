"""The line, as rules over arrays: one topic's row (``filters test``, the reference) or
thousands of topics' rows at once (planning), with the same element-wise arithmetic, so
a paper gets the same decision however many topics were decided with it.

A ``Topic`` is a filter, perhaps a sentence, and what its reader taught it;
``TopicScores`` one topic's scores over the day. ``Rows`` holds m topics x n papers,
or (planning) entries picked out of them, one-dimensional; ``decide`` applies a dial
step, element by element; ``sparse`` (``entries`` for picked entries) keeps of each
row what a digest can use (``pick.Decision``): the papers in or just below the line.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import NamedTuple

import numpy as np

from newsletter.relevance.pick import BELOW, CARRIED, MATCHED, VOTED, Decision

ALPHA = 0.2  # what one standard deviation of meaning is worth, in ceiling shares
# Meaning alone lets a paper in only when it is also close in absolute terms: a topic
# no recent paper is about still has papers 4 deviations "closer" than the rest (at a
# cosine of 0.2-0.3 with this model); a synonym-only paper sits at 0.5 and above.
MIN_COSINE = 0.45
NEAR = 0.15  # "near the line": this far below it (a quarter of that for meaning alone)
LEXICAL_CAP = 1.5


@dataclass(frozen=True, slots=True)
class Step:
    label: str
    threshold: float  # lexical + ALPHA * semantic, for a paper the filter matches
    enter: float  # semantic alone, for a paper it does not


class Topic(NamedTuple):
    """A filter, perhaps a sentence, and what its reader taught it. A named tuple, not a
    frozen dataclass: planning hashes and compares each of its topics four times (the
    batches' keys, the decisions' cache), and a tuple's hash and equality run in C, a
    dataclass's in Python (300,000 look-ups by equal topics: 0.08 s against 0.20 s;
    building one is no slower)."""

    query: str
    about: str | None = None
    # The reader's votes in this topic, (paper id, +1 or -1), sorted: part of what the
    # topic is, so subscribers who taught nothing still share one decision.
    taught: tuple[tuple[int, int], ...] = ()


@dataclass(frozen=True, slots=True)
class TopicScores:
    """One topic over the day's papers (arrays indexed like the day's index)."""

    topic: Topic
    matched: np.ndarray  # bool
    lexical: np.ndarray  # 0 where unmatched
    semantic: np.ndarray  # z-scores; 0 where a paper or the topic has no vector
    cosine: np.ndarray  # the raw cosines behind them
    has_meaning: np.ndarray  # bool: a z-score was computed for this paper
    words_only: bool  # the filter names no words: its matches are the answer
    everything: bool  # "*"
    fused: np.ndarray  # lexical + ALPHA * semantic + shift
    shift: np.ndarray  # what nearness to voted papers adds (+) or takes (-); 0 untaught
    liked: tuple[int, ...] = ()  # ids of the liked papers with a vector
    carrier: np.ndarray | None = None  # per paper, the index in ``liked`` of the nearest

    def rows(self) -> Rows:
        """This topic as the one row the rules take."""
        return Rows(
            self.matched[None], self.lexical[None], self.semantic[None], self.cosine[None],
            self.has_meaning[None], self.shift[None], self.fused[None],
            np.array([[self.words_only]]), np.array([[self.everything]]),
        )  # fmt: skip

    def near(self, step: Step) -> np.ndarray:
        return decide(self.rows(), step).near[0]


@dataclass(frozen=True, slots=True)
class Rows:
    """Topics' scores over the papers: each array (topics x papers) unless noted, or
    all one-dimensional, one element per (topic, paper) entry (``at``)."""

    matched: np.ndarray  # bool
    lexical: np.ndarray
    semantic: np.ndarray  # z-scores; 0 where there is no meaning
    cosine: np.ndarray
    has_meaning: np.ndarray  # bool
    shift: np.ndarray  # what votes add or take (0: untaught)
    fused: np.ndarray
    words_only: np.ndarray  # (topics, 1) bool: the filter names no words
    everything: np.ndarray  # (topics, 1) bool: "*"

    def at(self, index: tuple[np.ndarray, ...]) -> Rows:
        """The entries at ``index`` (numpy's fancy index), as one-dimensional rows."""
        shape = self.matched.shape
        return Rows(*(np.broadcast_to(getattr(self, f.name), shape)[index] for f in fields(self)))


@dataclass(frozen=True, slots=True)
class Decided:
    inside: np.ndarray  # bool: let in
    near: np.ndarray  # bool: just below the line
    value: np.ndarray  # what orders them (the fused score; 0 for "*")
    carried: np.ndarray  # bool: meaning carried it over the line
    margin: np.ndarray  # how far below the line, in fused-score units (for "unsure")

    def at(self, index: tuple[np.ndarray, ...]) -> Decided:
        return Decided(*(getattr(self, f.name)[index] for f in fields(self)))


def included(r: Rows, step: Step) -> np.ndarray:
    by_filter = r.matched & (r.fused >= step.threshold)
    by_meaning = (
        r.has_meaning
        & (r.semantic >= step.enter)
        & (r.cosine >= MIN_COSINE)
        & (r.shift >= 0)  # not a near-duplicate of a paper the reader turned down
    )
    # "More like this": a close neighbour of a liked paper, over the line on its own
    by_vote = (r.shift > 0) & (r.fused >= step.threshold)
    scored = by_filter | by_meaning | by_vote
    # "*" lets everything in; a filter naming no words (upvotes>=5) is taken at its word
    return np.where(r.everything, True, np.where(r.words_only, r.matched, scored))


def decide(r: Rows, step: Step) -> Decided:
    inside = included(r, step)
    close = r.matched & (r.fused >= step.threshold - NEAR)
    meaning = (
        r.has_meaning & (r.semantic >= step.enter - 4 * NEAR) & (r.cosine >= MIN_COSINE - NEAR / 3)
    )
    near = (close | meaning) & ~inside & ~(r.everything | r.words_only)
    carried = (
        inside
        & r.has_meaning
        & (~r.matched | (r.lexical < step.threshold))
        & ~(r.everything | r.words_only)
    )
    value = np.where(r.everything, 0.0, r.fused)
    # Below the line by the filter's score when it matched, else by meaning alone.
    margin = np.where(r.matched, step.threshold - r.fused, ALPHA * (step.enter - r.semantic))
    return Decided(inside, near, value, carried, margin)


def cells(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``np.nonzero`` of a two-dimensional mask (rows, then columns ascending), from the
    flat positions: three times faster on planning's topics x papers masks."""
    rows, columns = np.divmod(np.flatnonzero(mask), mask.shape[1])
    return rows, columns


def sparse(
    d: Decided,
    r: Rows,
    *,
    keys: list[tuple[object, int]],
    queries: list[str],
    voted: np.ndarray | None = None,  # (topics x papers) bool; None: nothing voted
    liked: np.ndarray | None = None,  # (topics x papers) index into liked_ids, -1 none
    liked_ids: tuple[int, ...] = (),
) -> list[Decision]:
    """Each row's papers in or near the line, ascending, and their explanations' facts."""
    at = cells(d.inside | d.near)  # by row, papers ascending
    return entries(
        d.at(at), r.at(at), rows=at[0], papers=at[1], keys=keys, queries=queries,
        voted=voted[at] if voted is not None else None,
        liked=liked[at] if liked is not None else None, liked_ids=liked_ids,
    )  # fmt: skip


def entries(
    d: Decided,
    r: Rows,
    *,
    rows: np.ndarray,
    papers: np.ndarray,
    keys: list[tuple[object, int]],
    queries: list[str],
    voted: np.ndarray | None = None,
    liked: np.ndarray | None = None,
    liked_ids: tuple[int, ...] = (),
) -> list[Decision]:
    """``sparse`` over entries already picked out: ``d``, ``r`` (one-dimensional) and the
    rest are aligned with (``rows``, ``papers``), by row, papers ascending; those neither
    in nor near the line are dropped. Planning gives only the papers that can be (what
    the filter matches, what is close in meaning), so the rules run on those alone."""
    keep = d.inside | d.near
    if not keep.all():
        at = (np.flatnonzero(keep),)
        d, r, rows, papers = d.at(at), r.at(at), rows[at], papers[at]
        voted = voted[at] if voted is not None else None
        liked = liked[at] if liked is not None else None
    bounds = np.searchsorted(rows, np.arange(len(keys) + 1))
    semantic = np.where(r.has_meaning, r.semantic, np.nan)
    flags = (
        r.matched * MATCHED
        | d.carried * CARRIED
        | (voted * VOTED if voted is not None else 0)
        | d.near * BELOW
    ).astype(np.uint8)
    carrier = liked if liked is not None else np.full(len(rows), -1, np.int32)
    out = []
    for t, key in enumerate(keys):
        a, b = int(bounds[t]), int(bounds[t + 1])
        out.append(
            Decision(
                key=key, query=queries[t],
                papers=papers[a:b], value=d.value[a:b],
                lexical=r.lexical[a:b], semantic=semantic[a:b],
                flags=flags[a:b], let_in=d.inside[a:b], margin=d.margin[a:b],
                liked=carrier[a:b], liked_ids=liked_ids,
            )
        )  # fmt: skip
    return out

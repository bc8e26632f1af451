"""What a topic's votes change in its score: the reader's "more like this" and "not for me".

Two effects, both label-free and the same for every topic:

* **Rocchio.** The topic's vector moves toward the papers the reader liked and away
  from those they disliked (``q + BETA * mean(liked) - GAMMA * mean(disliked)``, then
  unit length); its meaning z-score is then taken against the reference window as
  before, so the shift is measured in the topic's own spread. BETA and GAMMA are
  Rocchio's textbook weights (0.75 and 0.25): a few votes steer, they do not replace
  what the reader wrote.
* **Neighbours.** A paper unusually close to one the reader voted on follows the vote:
  its closeness to each voted paper is a z-score against the reference window (as a
  topic's is), and what exceeds ``NEIGHBOUR_Z`` (papers merely on the same subject sit
  below it; a near-duplicate sits far above) moves the fused score by ``ALPHA`` per
  deviation, up for a liked paper and down for a disliked one.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from newsletter.relevance.reference import Reference

BETA = 0.75
GAMMA = 0.25
NEIGHBOUR_Z = 3.0  # deviations above the window's mean before a vote carries over


def rocchio(
    topic: np.ndarray, *, liked: Sequence[np.ndarray], disliked: Sequence[np.ndarray]
) -> np.ndarray:
    """The topic's vector moved by its votes (unit length; unchanged without votes)."""
    moved = topic.astype(np.float64)
    if liked:
        moved = moved + BETA * np.mean(liked, axis=0)
    if disliked:
        moved = moved - GAMMA * np.mean(disliked, axis=0)
    norm = float(np.linalg.norm(moved))
    return (moved / norm).astype(np.float32) if norm > 0 else topic


def neighbours(
    vectors: np.ndarray,
    *,
    reference: Reference,
    liked: Sequence[np.ndarray],
    disliked: Sequence[np.ndarray],
    alpha: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Per paper (rows of ``vectors``): the shift its nearness to voted papers earns, and
    the liked paper it is nearest (an index into ``liked``; -1 when none was liked)."""
    shift = np.zeros(len(vectors))
    carrier = np.full(len(vectors), -1)
    for sign, voted in ((1.0, liked), (-1.0, disliked)):
        if not voted:
            continue
        matrix = np.asarray(voted, dtype=np.float32)
        centre, spread = reference.spread(matrix)
        z = (vectors @ matrix.T - centre) / spread  # papers x voted
        best = z.max(axis=1)
        excess = np.maximum(best - NEIGHBOUR_Z, 0.0)
        shift += sign * alpha * excess
        if sign > 0:
            carrier = z.argmax(axis=1)
    return shift, carrier


def split_votes(
    taught: Sequence[tuple[int, int]], vectors: Mapping[int, np.ndarray]
) -> tuple[list[int], list[np.ndarray], list[np.ndarray]]:
    """(liked ids, liked vectors, disliked vectors) of the votes whose paper has a vector."""
    liked_ids = [pid for pid, vote in taught if vote > 0 and pid in vectors]
    liked = [vectors[pid] for pid in liked_ids]
    disliked = [vectors[pid] for pid, vote in taught if vote < 0 and pid in vectors]
    return liked_ids, liked, disliked

"""Cosines between topics and papers, and each topic's spread over the reference
window, that do not depend on how many are computed at once.

Planning scores thousands of topics together (one matrix product is ten times faster
than one product per topic), ``filters test`` scores one. A float32 product's result
depends on how BLAS blocks it, so a topic scored in a batch and the same topic scored
alone could differ in the last bit, and a paper on the line could go one way for one
reader and the other way for another. So vectors are scaled by ``SCALE`` and rounded
to integers first: every product and every partial sum is then an integer below 2**24
(for unit vectors, |sum of products| <= SCALE**2 by Cauchy-Schwarz, plus the rounding),
which float32 holds exactly, in any order. The rounding moves a cosine by about 1e-4,
far below anything the decision can see.

A topic's mean cosine with the window and its variance (``spread``) are taken the same
way, in float64: the window's mean and covariance scaled (``window``) and rounded, so
every product and partial sum is an integer below 2**53, exact in any order: a batch
of topics costs one matrix product, not one per topic, and gives each topic what it
gets alone.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

SCALE = 2048.0  # 2**11: SCALE**2 = 4.2M, a quarter of float32's exact integer range


def quantise(vectors: np.ndarray) -> np.ndarray:
    """Unit vectors (rows) as integer-valued float32, ready for ``cosines``."""
    out = np.array(vectors, dtype=np.float32)  # a copy (float16 rows convert exactly)
    out *= SCALE
    return np.rint(out, out=out)


def cosines(papers: np.ndarray, topics: np.ndarray) -> np.ndarray:
    """(topics x papers) cosines of quantised rows: exact, whatever the batch."""
    return (topics @ papers.T).astype(np.float64) / (SCALE * SCALE)


MOST_WINDOW_SCALE = 2.0**40
_SHIFT = 2.0**12  # the first product is divided by this and rounded before the second


@dataclass(frozen=True, slots=True)
class Window:
    """The reference window's mean and covariance, times ``scale``, rounded (float64)."""

    mean: np.ndarray
    covariance: np.ndarray
    scale: float


def window(mean: np.ndarray, covariance: np.ndarray) -> Window:
    """The window ready for ``spread``: scaled as finely as the bounds allow (2**40 for a
    window of unit vectors), so a window that breaks them costs precision, not exactness.

    For a quantised unit row q (norm at most ``row``: SCALE, and half a unit of rounding
    per element), every partial sum of q @ mean and of q @ covariance is at most
    ``row`` x ``size`` x scale in size (Cauchy-Schwarz on the absolute values; ``size``
    is the larger of the mean's norm and the covariance's Frobenius norm, which bounds
    each of its columns' norms and its largest eigenvalue); the first product's rows,
    divided by ``_SHIFT``, have norm at most ``row`` x ``size`` x scale / ``_SHIFT``
    (the eigenvalue bound), and their products with q sum to at most ``row`` times
    that. Both are kept under 2**52, half of float64's exact integer range, which
    leaves the rounding (half a unit per element) its room.
    """
    mean, covariance = np.asarray(mean, np.float64), np.asarray(covariance, np.float64)
    row = SCALE + 0.5 * math.sqrt(len(mean))
    size = max(float(np.linalg.norm(mean)), float(np.linalg.norm(covariance)), 1e-30)
    if math.isnan(size) or not np.isfinite(mean).all() or not np.isfinite(covariance).all():
        size = 1.0  # not a window of vectors: what is not finite stays so in every result
    room = min(2.0**52 / (row * size), 2.0**52 * _SHIFT / (row * row * size))
    scale = min(MOST_WINDOW_SCALE, 2.0 ** math.floor(math.log2(room)))
    return Window(np.rint(mean * scale), np.rint(covariance * scale), scale)


def spread(topics: np.ndarray, window: Window) -> tuple[np.ndarray, np.ndarray]:
    """For quantised unit topic rows: the mean cosine with the window's papers and its
    standard deviation, exact whatever the batch (the bounds are in ``window``)."""
    q = np.asarray(topics, np.float64)
    centre = (q @ window.mean) / (SCALE * window.scale)
    first = np.rint((q @ window.covariance) / _SHIFT)
    var = (first * q).sum(1) / (SCALE * SCALE * window.scale / _SHIFT)
    return centre, np.sqrt(np.maximum(var, 1e-12))

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
way: the window's mean and covariance scaled (``window``) and rounded, so every
product and partial sum is an integer that its type holds exactly (below 2**53 in
float64 for the mean; below 2**24 in float32 for the covariance, whose product is
the costly one: 384 x 384 per topic, twice as fast in float32), exact in any order: a
batch of topics costs one matrix product, not one per topic, and gives each topic
what it gets alone.
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


def products(papers: np.ndarray, topics: np.ndarray) -> np.ndarray:
    """(topics x papers) products of quantised rows, float32 integers: each a cosine
    times SCALE**2, exact whatever the batch (``as_cosines`` turns them into cosines)."""
    return topics @ papers.T


def as_cosines(products: np.ndarray) -> np.ndarray:
    return products.astype(np.float64) / (SCALE * SCALE)


def cosines(papers: np.ndarray, topics: np.ndarray) -> np.ndarray:
    """(topics x papers) cosines of quantised rows: exact, whatever the batch."""
    return as_cosines(products(papers, topics))


def product_at_least(cosine: float) -> np.float32:
    """The product a cosine of at least ``cosine`` needs: ``products(...) >= this`` is
    ``cosines(...) >= cosine``, exactly (the products are integers, and scaling by
    SCALE**2, a power of two, rounds nothing), without making the cosines of a whole
    batch to compare them."""
    return np.float32(math.ceil(cosine * SCALE * SCALE))


MOST_WINDOW_SCALE = 2.0**40
EXACT32 = 2.0**24  # float32 holds every integer up to this exactly


@dataclass(frozen=True, slots=True)
class Window:
    """The reference window's mean (float64) and covariance (float32), each times its
    scale, rounded to integers."""

    mean: np.ndarray
    scale: float
    covariance: np.ndarray
    covariance_scale: float


def window(mean: np.ndarray, covariance: np.ndarray) -> Window:
    """The window ready for ``spread``, each part scaled as finely as its bound allows,
    so a window that breaks them costs precision, not exactness.

    For a quantised unit row q (norm at most ``row``: SCALE, and half a unit of rounding
    per element), every partial sum of q @ mean is at most ``row`` x |mean| x scale in
    size, and of q @ covariance at most ``row`` x (the largest column norm x scale +
    the rounding's) (Cauchy-Schwarz on the absolute values). The first is kept under
    2**52 (float64), the second under 2**24 (float32). The second product's terms, q
    times the first's, are then below 2**35 and their sums below 2**44, exact in float64.
    At the covariance's scale (about 2**19 for this model's windows) the rounding is
    not negligible against a small spread, so its effect depends on the topic: on the
    corpus's real window, a topic like its papers moves by 2e-5 of its spread (the
    median; 1.8e-4 at most), a random direction, whose spread is smaller, by 1.4e-4
    (8.4e-4 at most). Even that is a twentieth of the window's own sampling error (a
    spread estimated from 2,000 papers is uncertain by about 1.6%), and it is the same
    for a topic alone and in any batch, which is what must be exact.
    """
    mean, covariance = np.asarray(mean, np.float64), np.asarray(covariance, np.float64)
    rounding = 0.5 * math.sqrt(len(mean))  # what rounding adds to a row's or column's norm
    row = SCALE + rounding
    # Not finite: not a window of vectors; what is not finite stays so in every result.
    finite = bool(np.isfinite(mean).all() and np.isfinite(covariance).all())
    size = float(np.linalg.norm(mean)) if finite else 1.0
    column = float(np.linalg.norm(covariance, axis=0).max(initial=0.0)) if finite else 1.0
    scale = _finest(2.0**52 / (row * max(size, 1e-30)))
    covariance_scale = _finest(max(EXACT32 / row - rounding, 1.0) / max(column, 1e-30))
    scaled = np.rint(covariance * covariance_scale).astype(np.float32)
    return Window(np.rint(mean * scale), scale, scaled, covariance_scale)


def _finest(room: float) -> float:
    """The largest power of two within ``room`` (and ``MOST_WINDOW_SCALE``): scaling by
    it rounds nothing but the values' last places."""
    return min(MOST_WINDOW_SCALE, 2.0 ** math.floor(math.log2(room)))


def spread(topics: np.ndarray, window: Window) -> tuple[np.ndarray, np.ndarray]:
    """For quantised unit topic rows: the mean cosine with the window's papers and its
    standard deviation, exact whatever the batch (the bounds are in ``window``)."""
    q = np.asarray(topics, np.float32)
    centre = (q.astype(np.float64) @ window.mean) / (SCALE * window.scale)
    first = (q @ window.covariance).astype(np.float64)
    var = (first * q).sum(1) / (SCALE * SCALE * window.covariance_scale)
    return centre, np.sqrt(np.maximum(var, 1e-12))

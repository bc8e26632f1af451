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
way, in float64: the window's mean and covariance scaled by ``WINDOW_SCALE`` and
rounded, so every product and partial sum is an integer below 2**53 (the bounds are
in ``spread``), exact in any order: a batch of topics costs one matrix product, not
one per topic, and gives each topic what it gets alone.
"""

from __future__ import annotations

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


WINDOW_SCALE = 2.0**40
_SHIFT = 2.0**12  # the first product is rounded to this before the second


def window(mean: np.ndarray, covariance: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The reference window's mean and covariance as integer-valued float64, for ``spread``."""
    return (
        np.rint(np.asarray(mean, np.float64) * WINDOW_SCALE),
        np.rint(np.asarray(covariance, np.float64) * WINDOW_SCALE),
    )


def spread(
    topics: np.ndarray, mean: np.ndarray, covariance: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """For quantised unit topic rows and the ``window``: the mean cosine with the window's
    papers and its standard deviation, exact whatever the batch.

    Bounds (||q|| <= SCALE for a unit row; the window's vectors are unit, so ||mean|| <= 1
    and the covariance's largest eigenvalue, its trace, at most 1): every partial sum of
    q @ mean and of q @ covariance is at most SCALE * WINDOW_SCALE = 2**51 in size (by
    Cauchy-Schwarz on the absolute values); rounded after dividing by ``_SHIFT``, that
    product's rows have norm at most 2**39, and their products with q sum to at most
    2**50.
    """
    q = np.asarray(topics, np.float64)
    centre = (q @ mean) / (SCALE * WINDOW_SCALE)
    first = np.rint((q @ covariance) / _SHIFT)
    var = (first * q).sum(1) / (SCALE * SCALE * WINDOW_SCALE / _SHIFT)
    return centre, np.sqrt(np.maximum(var, 1e-12))

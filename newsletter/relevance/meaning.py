"""Cosines between topics and papers that do not depend on how many are computed at once.

Planning scores thousands of topics together (one matrix product is ten times faster
than one product per topic), ``filters test`` scores one. A float32 product's result
depends on how BLAS blocks it, so a topic scored in a batch and the same topic scored
alone could differ in the last bit, and a paper on the line could go one way for one
reader and the other way for another. So vectors are scaled by ``SCALE`` and rounded
to integers first: every product and every partial sum is then an integer below 2**24
(for unit vectors, |sum of products| <= SCALE**2 by Cauchy-Schwarz, plus the rounding),
which float32 holds exactly, in any order. The rounding moves a cosine by about 1e-4,
far below anything the decision can see.
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

"""Cosines and a topic's spread over the reference window are exact: a topic gets the
same numbers decided alone (``filters test``) as in a batch of any size (planning), so
a paper on the line goes the same way for every reader."""

from __future__ import annotations

import numpy as np
import pytest

from newsletter.embed.encoder import DIM
from newsletter.relevance.meaning import (
    as_cosines,
    cosines,
    product_at_least,
    products,
    quantise,
    spread,
    window,
)


def _unit(rng: np.random.Generator, rows: int) -> np.ndarray:
    v = rng.standard_normal((rows, DIM)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


@pytest.mark.parametrize("batch", [2, 7, 64, 300])
def test_a_row_alone_equals_the_row_in_a_batch(batch: int) -> None:
    rng = np.random.default_rng(batch)
    papers = quantise(_unit(rng, 500))
    papers_window = _unit(rng, 1000)
    # A window like real ones: vectors clustered round a shared direction.
    papers_window = papers_window + 2.0 * papers_window[0]
    papers_window /= np.linalg.norm(papers_window, axis=1, keepdims=True)
    scaled = window(papers_window.mean(0), np.cov(papers_window, rowvar=False))
    topics = quantise(_unit(rng, batch))

    together = cosines(papers, topics)
    centre, std = spread(topics, scaled)
    for k in range(batch):
        alone = topics[k : k + 1]
        assert np.array_equal(cosines(papers, alone)[0], together[k])
        c, s = spread(alone, scaled)
        assert c[0] == centre[k] and s[0] == std[k]

    # And they are the float computation's, to far below what a decision can see.
    raw = topics / 2048.0
    exact_centre = raw @ papers_window.mean(0).astype(np.float64)
    exact_var = ((raw @ np.cov(papers_window, rowvar=False)) * raw).sum(1)
    assert np.allclose(centre, exact_centre, rtol=0, atol=1e-9)
    # The spread's covariance is rounded for float32 (meaning.window), which moves a
    # spread by an amount that depends on the topic and the window (not a bound: on this
    # window 2e-4 of itself covers it; at 1e-3, a z-score of 3 moves by 3e-3 and a fused
    # score by a fifth of that, ALPHA).
    assert np.allclose(std, np.sqrt(exact_var), rtol=2e-4)


def test_a_window_past_the_bounds_costs_precision_not_exactness() -> None:
    """Vectors far from unit length (a window computed wrong, a future model) would
    push the sums past float64's exact integers at the usual scale: the scale shrinks,
    and a row alone still equals the row in a batch."""
    rng = np.random.default_rng(9)
    wide = _unit(rng, 400) * 400.0
    wide = wide + wide[0]  # a shared direction: a large eigenvalue
    covariance = np.cov(wide, rowvar=False)
    # At the usual scales the products would pass 2**53 (the mean's, float64) and
    # 2**24 (the covariance's, float32):
    assert 2048 * np.linalg.norm(wide.mean(0)) * 2.0**40 > 2.0**53
    assert 2048 * np.linalg.norm(covariance, axis=0).max() * 2.0**19 > 2.0**24
    scaled = window(wide.mean(0), covariance)
    topics = quantise(_unit(rng, 50))
    centre, std = spread(topics, scaled)
    for k in range(50):
        c, s = spread(topics[k : k + 1], scaled)
        assert c[0] == centre[k] and s[0] == std[k]
    raw = topics / 2048.0
    exact = np.sqrt(((raw @ covariance) * raw).sum(1))
    assert np.allclose(std, exact, rtol=2e-4)
    assert np.allclose(centre, raw @ wide.mean(0).astype(np.float64), rtol=1e-6)


def test_a_threshold_on_the_products_is_the_same_test_as_on_the_cosines() -> None:
    """Planning finds a batch's papers close enough to a topic on the integer products,
    not the cosines: the same papers, at any threshold, including cosines that fall
    exactly on it."""
    rng = np.random.default_rng(5)
    papers, topics = quantise(_unit(rng, 300)), quantise(_unit(rng, 40))
    raw, cos = products(papers, topics), cosines(papers, topics)
    assert np.array_equal(as_cosines(raw), cos)
    on_the_line = [float(c) for c in rng.choice(cos.ravel(), 20)]  # some cosine equals each
    just_above = [float(np.nextafter(c, 2.0)) for c in on_the_line]  # and none reaches these
    for threshold in [-1.0, 0.0, 0.05, 0.1, 0.3999, 0.4, 0.45, 1.0, *on_the_line, *just_above]:
        assert np.array_equal(raw >= product_at_least(threshold), cos >= threshold), threshold
        assert (cos == threshold).any() or threshold not in on_the_line


@pytest.mark.parametrize(
    ("papers", "vectors", "normalises"),
    [(250, 3, False), (250, 29, False), (250, 30, True), (3, 3, True), (20, 10, True),
     (20, 9, False), (1, 1, False)],
)  # fmt: skip
def test_a_window_with_a_handful_of_vectors_leaves_meaning_out(
    papers: int, vectors: int, normalises: bool
) -> None:
    """A few vectors out of hundreds of papers (the rest unreadable) made a covariance
    whose z-scores ran to -57 and +27: such a window does not normalise, and papers are
    decided on their words; a new install's few papers, each with its vector, do."""
    from newsletter.filters.bm25 import corpus_stats
    from newsletter.relevance.reference import Reference

    rng = np.random.default_rng(1)
    window = rng.standard_normal((max(vectors, 2), 384)).astype(np.float32)
    reference = Reference(
        stats=corpus_stats([]), mean=window.mean(0),
        covariance=np.cov(window, rowvar=False).astype(np.float32), papers=papers,
        vectors=vectors,
    )  # fmt: skip
    assert reference.normalises is normalises

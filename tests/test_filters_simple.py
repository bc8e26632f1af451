"""First filter language: keywords and "phrases", case-insensitive, on word boundaries."""

from __future__ import annotations

import pytest

from newsletter.errors import FilterSyntaxError
from newsletter.filters import Document, compile_topic

DOC = Document.of(
    title="Diffusion Models for Mixture-of-Experts GPT-4 Poincaré",
    abstract="We study large language models. Remodeling is out of scope.",
)


@pytest.mark.parametrize(
    ("query", "matches"),
    [
        ("diffusion", True),
        ("DIFFUSION", True),
        ("diffus", False),  # word boundaries: no substring hits
        ("model", False),  # (stemming comes with the full filter language)
        ("models", True),
        ("remodel", False),
        ('"large language models"', True),
        ('"language large"', False),  # a phrase keeps its order
        ('"large  LANGUAGE\tmodels"', True),
        ("mixture-of-experts", True),
        ("GPT-4", True),
        ("poincare", True),  # accents folded
        ("diffusion scope", True),  # several terms: all must occur
        ("diffusion video", False),
    ],
)
def test_matching(query: str, matches: bool) -> None:
    assert bool(compile_topic(query).match(DOC)) is matches


def test_hits_say_where_each_term_matched() -> None:
    hits = compile_topic('diffusion "language models"').match(DOC)
    assert [(h.term, h.in_title) for h in hits] == [("diffusion", True), ("language models", False)]


@pytest.mark.parametrize(
    ("query", "column", "says"),
    [
        ("", 1, "at least one word"),
        ("   ", 1, "at least one word"),
        ('diffusion "video', 11, "never closed"),
        ('a "" b', 3, "empty quotes"),
        ("a --- b", 3, "no letters or digits"),
        ("a\nb", 2, "one line"),
        ("x" * 501, 501, "at most 500"),
    ],
)
def test_syntax_errors_give_the_column(query: str, column: int, says: str) -> None:
    with pytest.raises(FilterSyntaxError) as info:
        compile_topic(query)
    assert info.value.column == column
    assert says in info.value.message


def test_caret_points_under_the_problem() -> None:
    with pytest.raises(FilterSyntaxError) as info:
        compile_topic('diffusion "video')
    assert info.value.caret() == 'diffusion "video\n          ^'

"""What a filter sees of a paper: its fields, analysed into words and stems, and its numbers.

The indexed matcher (``index``) and the reference matcher (``naive``) both read
papers through this module, so they cannot disagree about what a paper says.
"""

from __future__ import annotations

import itertools
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import date, datetime

from newsletter.filters.tokens import stem, tokens
from newsletter.text import fold

FIELDS = ("title", "abstract", "org")
DEFAULT_FIELDS = ("title", "abstract")  # a word without a field looks here


@dataclass(frozen=True, slots=True)
class PaperDoc:
    """What a filter can see of a paper."""

    id: int
    title: str
    abstract: str
    organization: str | None = None
    upvotes: int | None = None
    authors: int | None = None
    published_on: date | None = None
    first_seen_at: datetime | None = None
    author_names: tuple[str, ...] = ()  # as the paper lists them (a dump gives none)
    categories: tuple[str, ...] = ()  # arXiv categories, primary first: "cs.CL"
    has_code: bool = False  # a source named a code repository

    @property
    def day(self) -> date | None:
        """``date:`` compares the publication date, else the day the paper was first seen."""
        if self.published_on is not None:
            return self.published_on
        return self.first_seen_at.date() if self.first_seen_at else None


@dataclass(slots=True)
class Field:
    """One field of one paper: its words and their stems, in order."""

    stems: list[str]
    words: list[str]  # folded, unstemmed
    counts: Counter[str] = field(default_factory=Counter)  # stem -> occurrences
    word_counts: Counter[str] = field(default_factory=Counter)  # word -> occurrences
    bigrams: Counter[str] = field(default_factory=Counter)  # "stem stem" -> occurrences


def analyse(text: str) -> Field:
    words = tokens(text)
    stems = [stem(w) for w in words]
    return Field(
        stems=stems,
        words=words,
        counts=Counter(stems),
        word_counts=Counter(words),
        bigrams=Counter(f"{a} {b}" for a, b in itertools.pairwise(stems)),
    )


def field_text(doc: PaperDoc, name: str) -> str:
    if name == "title":
        return doc.title
    if name == "abstract":
        return doc.abstract
    return doc.organization or ""


def compare(op: str, left: int | date | None, right: int | date) -> bool:
    if left is None:
        return False  # unknown metadata never satisfies a comparison
    if op == ">=":
        return left >= right  # type: ignore[operator]
    if op == "<=":
        return left <= right  # type: ignore[operator]
    if op == ">":
        return left > right  # type: ignore[operator]
    if op == "<":
        return left < right  # type: ignore[operator]
    return left == right


def numeric_value(doc: PaperDoc, name: str) -> int | date | None:
    if name == "upvotes":
        return doc.upvotes if doc.upvotes is not None else 0  # no count shown: nobody voted
    if name == "authors":
        return doc.authors
    return doc.day


def phrase_at(stems: list[str], words: tuple[str, ...]) -> Iterator[int]:
    """Start positions where ``words`` (stemmed) occur in order."""
    want = [stem(w) for w in words]
    first, k = want[0], len(want)
    for i, s in enumerate(stems):
        if s == first and stems[i : i + k] == want:
            yield i


# --- metadata: author names, categories -----------------------------------------------------

_NAME_WORD_RE = re.compile(r"[^\W_]+")


def name_words(name: str) -> tuple[str, ...]:
    """The words of an author's name (or of an ``author:`` filter), folded: accents and
    case gone, split at spaces and punctuation. "José Müller-Lüdenscheidt" ->
    ("jose", "muller", "ludenscheidt"). Unstemmed: names are not English words."""
    return tuple(_NAME_WORD_RE.findall(fold(name)))


def name_has(name: tuple[str, ...], words: tuple[str, ...]) -> bool:
    """Does one name (its ``name_words``) hold ``words`` whole and in order? Other words
    may come between ("ada lovelace" is in "Ada King Lovelace"), not before or after
    one another ("lovelace ada" is not)."""
    rest = iter(name)
    return all(w in rest for w in words)  # `in` advances the iterator: a subsequence


def author_has(names: tuple[tuple[str, ...], ...], words: tuple[str, ...]) -> bool:
    """Does any one of a paper's names (each its ``name_words``) hold ``words`` in order?"""
    return any(name_has(name, words) for name in names)


def category_keys(category: str) -> tuple[str, ...]:
    """What ``category:`` can find a paper's category under: itself lower-cased, and
    ``archive.*`` when it has a subject ("cs.CL" -> "cs.cl", "cs.*")."""
    key = category.lower()
    archive, dot, _ = key.partition(".")
    return (key, f"{archive}.*") if dot else (key,)

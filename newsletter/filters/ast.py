"""The parsed form of a topic filter, and its canonical text.

Trees are frozen and hashable: equal filters compare equal, so the matcher can
evaluate a filter shared by many subscribers once. ``to_query`` prints a tree
so that parsing the text gives the same tree back.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date

TEXT_FIELDS = ("title", "abstract", "org")
NUMERIC_FIELDS = ("upvotes", "authors", "date")
# Fields that filter on a paper's metadata: never scored, never highlighted.
META_FIELDS = ("author", "category", "has")
HAS_VALUES = ("code",)
COMPARISONS = (">=", "<=", ">", "<", "=")


@dataclass(frozen=True, slots=True)
class Term:
    """One folded word. ``exact``: unstemmed (``=word``); ``prefix``: ``word*``."""

    word: str
    field: str | None = None
    exact: bool = False
    prefix: bool = False


@dataclass(frozen=True, slots=True)
class Phrase:
    """Words adjacent and in order (each stemmed): ``"language model"``, ``GPT-4``."""

    words: tuple[str, ...]
    field: str | None = None


@dataclass(frozen=True, slots=True)
class Compare:
    field: str  # one of NUMERIC_FIELDS
    op: str  # one of COMPARISONS
    value: int | date


@dataclass(frozen=True, slots=True)
class Author:
    """``author:"Ada Lovelace"``: folded words (``docs.name_words``), all within one
    author's name, whole and in this order (other words may come between)."""

    words: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Category:
    """``category:cs.CL``: an arXiv category, lower-cased (``cs.cl``); ``cs.*`` is any
    category of the archive."""

    name: str


@dataclass(frozen=True, slots=True)
class Has:
    """``has:code``: a paper that names a code repository. ``what`` is one of HAS_VALUES."""

    what: str


@dataclass(frozen=True, slots=True)
class All:
    """``*``: every paper (the trending digest)."""


@dataclass(frozen=True, slots=True)
class Not:
    child: Node


@dataclass(frozen=True, slots=True)
class And:
    children: tuple[Node, ...]


@dataclass(frozen=True, slots=True)
class Or:
    children: tuple[Node, ...]


Node = Term | Phrase | Compare | Author | Category | Has | All | Not | And | Or


def _field(field: str | None) -> str:
    return f"{field}:" if field else ""


def to_query(node: Node) -> str:
    """Canonical text of a tree: ``parse(to_query(t)) == t``."""
    match node:
        case Term(word, field, exact, prefix):
            return f"{_field(field)}{'=' if exact else ''}{word}{'*' if prefix else ''}"
        case Phrase(words, field):
            return f'{_field(field)}"{" ".join(words)}"'
        case Compare(field, op, value):
            return f"{field}{op}{value.isoformat() if isinstance(value, date) else value}"
        case Author(words):
            return f"author:{words[0]}" if len(words) == 1 else f'author:"{" ".join(words)}"'
        case Category(name):
            return f"category:{name}"
        case Has(what):
            return f"has:{what}"
        case All():
            return "*"
        case Not(child):
            inner = to_query(child)
            return f"NOT ({inner})" if isinstance(child, And | Or) else f"NOT {inner}"
        case And(children):
            return " AND ".join(
                f"({to_query(c)})" if isinstance(c, Or) else to_query(c) for c in children
            )
        case Or(children):
            # AND binds tighter, so no parentheses are needed; they are kept for the reader.
            return " OR ".join(
                f"({to_query(c)})" if isinstance(c, And) else to_query(c) for c in children
            )
    raise TypeError(f"not a filter node: {node!r}")


def positive_leaves(node: Node) -> list[Term | Phrase]:
    """Words and phrases whose presence makes the filter match (not those under NOT):
    what an explanation names and what ranking scores. Comparisons and metadata
    (``author:``, ``category:``, ``has:``) only filter: they are not words."""
    match node:
        case Term() | Phrase():
            return [node]
        case And(children) | Or(children):
            return [leaf for c in children for leaf in positive_leaves(c)]
    return []

"""A paper as a source tells it, before it meets the database, and how two tellings merge.

Every source (a page dump, the Daily Papers JSON, an arXiv feed) produces these
records. A paper is one paper across sources: it is known by its arXiv id when any
source gives one (``2405.12345``; ``v1`` and ``v2`` are the same paper), else by its
title's key (``keys.canonical_key``). Merging fills blanks and never blanks what is
known; the few fields that change over a paper's life follow their own rule (the
highest upvote count, the newest arXiv version's title and abstract).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from datetime import date

from newsletter.corpus.keys import canonical_key

# "2405.12345v2", "arXiv:2405.12345", "hep-th/9901001v1": the id, then the version.
_ARXIV_RE = re.compile(
    r"(?:arxiv:)?(?P<id>[0-9]{4}\.[0-9]{4,5}|[a-z]+(?:-[a-z]+)*(?:\.[A-Z]{2})?/[0-9]{7})"
    r"(?:v(?P<version>[0-9]{1,3}))?",
    re.IGNORECASE,
)

# Fields a later telling fills in when the first has them blank.
_FILLED = (
    "authors",
    "organization",
    "organization_handle",
    "published_on",
    "page_date",
    "code_url",
    "project_url",
    "summary",
)
_FILLED_TUPLES = ("author_names", "categories", "keywords")


def split_arxiv_id(text: str | None) -> tuple[str, int | None] | None:
    """``("2405.12345", 2)`` from ``"2405.12345v2"`` or ``"arXiv:2405.12345v2"``; None
    when ``text`` is not an arXiv id (old-style ids keep their archive: ``hep-th/9901001``)."""
    if not text:
        return None
    found = _ARXIV_RE.fullmatch(text.strip())
    if found is None:
        return None
    version = found["version"]
    return found["id"], int(version) if version else None


@dataclass(frozen=True, slots=True)
class PaperRecord:
    """One paper as one source tells it."""

    title: str
    abstract: str
    line: int
    """1-based line (or item number) of the paper in its file, for errors and audits."""
    authors: int | None = None
    """How many authors; a dump gives only this, a named list sets it to its length."""
    organization: str | None = None
    organization_handle: str | None = None
    published_on: date | None = None
    upvotes: int | None = None
    page_date: date | None = None
    arxiv_id: str | None = None
    """Without version: ``2405.12345``."""
    arxiv_version: int | None = None
    author_names: tuple[str, ...] = ()
    categories: tuple[str, ...] = ()
    """arXiv categories, the primary one first."""
    code_url: str | None = None
    project_url: str | None = None
    summary: str | None = None
    """A source's own short summary (Hugging Face's AI summary), shown marked as such."""
    keywords: tuple[str, ...] = ()
    source: str = "dump"
    """The kind of source: ``dump``, ``daily_papers`` or ``arxiv``."""

    @property
    def key(self) -> str:
        return canonical_key(self.title)


@dataclass(frozen=True, slots=True)
class Batch:
    """What one file or one answer of a source holds."""

    papers: list[PaperRecord] = field(default_factory=list)
    page_date: date | None = None
    skipped: tuple[str, ...] = ()
    """Items left out, each with where and why ("item 7: no title"): one bad item
    never stops the rest of an answer."""
    kind: str = "dump"


log = logging.getLogger(__name__)


def malformed(exc: BaseException) -> str:
    """Why an item or a file was unreadable, in one line: the parsers' own refusals
    (ValueError) say it already; anything else is named by its kind, and logged with its
    traceback, since it may be a gap in the parser rather than in the item (the file is
    recorded as read, and is not read again until it changes)."""
    text = " ".join(str(exc).split())[:200]
    if type(exc) is ValueError:
        return text
    log.warning("an item no parser check expected: %s", text, exc_info=exc)
    return f"malformed ({type(exc).__name__}: {text})"


def merge_record(old: PaperRecord, new: PaperRecord, *, stored: bool = False) -> PaperRecord:
    """One record out of two tellings of the same paper (``new`` is the later one).

    A ``stored`` paper keeps its abstract unless a newer arXiv version brings one (its
    embedding and every digest that showed it read that text); within one file the
    longer of two abstracts wins (a page may cut one short)."""
    changes: dict[str, object] = {
        f: getattr(new, f)
        for f in _FILLED
        if getattr(old, f) is None and getattr(new, f) is not None
    }
    changes |= {
        f: getattr(new, f) for f in _FILLED_TUPLES if not getattr(old, f) and getattr(new, f)
    }
    if new.upvotes is not None and (old.upvotes is None or new.upvotes > old.upvotes):
        changes["upvotes"] = new.upvotes
    if old.arxiv_id is None and new.arxiv_id is not None:
        changes["arxiv_id"], changes["arxiv_version"] = new.arxiv_id, new.arxiv_version
    if newer_version(old.arxiv_version, new.arxiv_version):
        changes |= {"arxiv_version": new.arxiv_version, "title": new.title}
        changes["abstract"] = new.abstract or old.abstract
    elif len(new.abstract) > len(old.abstract) and not (stored and old.abstract):
        changes["abstract"] = new.abstract
    if new.author_names and old.authors != len(new.author_names) and not old.author_names:
        changes["authors"] = len(new.author_names)
    if new.source not in old.source.split():
        changes["source"] = f"{old.source} {new.source}"
    return replace(old, **changes) if changes else old  # type: ignore[arg-type]


def newer_version(old: int | None, new: int | None) -> bool:
    return new is not None and old is not None and new > old


def identity(record: PaperRecord) -> str:
    """The key records of one batch are merged on: the arXiv id, else the title's key."""
    return f"arxiv:{record.arxiv_id}" if record.arxiv_id else record.key


def merge_records(records: Iterable[PaperRecord]) -> dict[str, PaperRecord]:
    """Collapse the records of one batch that are one paper, by arXiv id and then by
    title key (a dump's copy of a paper a feed names by id is the same paper)."""
    merged: dict[str, PaperRecord] = {}
    by_key: dict[str, str] = {}  # title key -> identity in ``merged``
    for rec in records:
        key = rec.key
        if not key:
            continue
        ident = f"arxiv:{rec.arxiv_id}" if rec.arxiv_id else None
        if ident not in merged:
            ident = by_key.get(key)
            # Two different ids under one title are two papers (a title reused).
            if ident not in merged or (rec.arxiv_id and merged[ident].arxiv_id):
                ident = None
        if ident is None:
            ident, new = identity(rec), rec
        else:
            new = merge_record(merged[ident], rec)
            if identity(new) != ident:  # a title-keyed paper just learned its id
                del merged[ident]
                ident = identity(new)
        merged[ident] = new
        by_key[key] = by_key[new.key] = ident
    return merged

"""arXiv's feeds: Atom query results (``export.arxiv.org/api/query``) and the RSS
category feeds (``rss.arxiv.org/rss/cs.CL``), read with feedparser.

What each gives:

* **Atom** (the API): ``<id>http://arxiv.org/abs/2411.01234v2</id>``, title, summary
  (the abstract), ``<author><name>``, published and updated, ``arxiv:primary_category``
  and ``<category term>``, ``arxiv:comment`` (which often names the code: "code:
  https://github.com/…"). An error answers as one entry whose id is under
  ``arxiv.org/api/errors``.
* **RSS** (the daily announcements since 2024): the description is
  ``arXiv:2411.01234v3 Announce Type: replace Abstract: …``, ``dc:creator`` is one
  comma-separated string of names (with LaTeX accents), ``<category>`` per category, the
  first being the primary one. The older RSS layout ("Title. (arXiv:2411.01234v1
  [cs.CL])", the abstract as HTML) is read too.

A feed that does not parse as XML (truncated, malformed) is refused whole, with the
line where it broke: nothing of a half feed is stored. An entry without an arXiv id,
a title or an abstract is skipped and named.
"""

from __future__ import annotations

import html
import re
import time
from datetime import date
from typing import Any

import feedparser

from newsletter.corpus.records import Batch, PaperRecord, malformed, split_arxiv_id
from newsletter.errors import UNREADABLE, CorpusError
from newsletter.paper_links import github_in_text
from newsletter.text import latex_to_text, one_line

KIND = "arxiv"
_ABS_RE = re.compile(r"arxiv\.org/abs/(?P<id>[^\s?#]+)", re.IGNORECASE)
_ANNOUNCE_RE = re.compile(
    r"^\s*arXiv:(?P<id>\S+)\s+Announce Type:\s*(?P<type>[\w-]+)\s*Abstract:\s*", re.IGNORECASE
)
_OLD_TITLE_RE = re.compile(r"^(?P<title>.*?)\.?\s*\(arXiv:(?P<id>[^\s\])]+)[^)]*\)$")
_TAG_RE = re.compile(r"<[^>]*>")
_NAMES_SPLIT_RE = re.compile(r"\s*,\s*(?:and\s+)?|\s+and\s+")


def recognises(text: str) -> bool:
    """Markup: an Atom feed or an RSS (2.0 or 1.0) document, or what a feed URL answers
    instead (an HTML error page), which ``parse`` then refuses by name."""
    return text.lstrip("\ufeff \t\r\n").startswith("<")


def parse(*, text: str, source: str, today: date) -> Batch:
    feed = feedparser.parse(text.encode("utf-8"), sanitize_html=False, resolve_relative_uris=False)
    if feed.get("bozo"):
        exc = feed.get("bozo_exception")
        if not isinstance(exc, feedparser.CharacterEncodingOverride):
            line = exc.getLineNumber() if hasattr(exc, "getLineNumber") else 1
            message = f"not a well-formed feed: {one_line(str(exc))[:200]} (truncated?)"
            raise CorpusError(path=source, line=line or 1, message=message)
    if not feed.get("version"):
        raise CorpusError(path=source, line=1, message="XML, but neither an Atom nor an RSS feed")
    for entry in feed.entries:
        if "arxiv.org/api/errors" in str(entry.get("id", "")):
            reason = one_line(str(entry.get("summary") or entry.get("title") or "an error"))
            raise CorpusError(path=source, line=1, message=f"arXiv answered an error: {reason}")
    papers: list[PaperRecord] = []
    skipped: list[str] = []
    for number, entry in enumerate(feed.entries, start=1):
        try:
            papers.append(_record(entry, number=number, today=today))
        except UNREADABLE as exc:
            skipped.append(f"entry {number}: {malformed(exc)}")
    return Batch(papers=papers, skipped=tuple(skipped), kind=KIND)


def _clean(value: object, *, limit: int, markup: bool = False) -> str:
    """One line of text; ``markup`` (what feedparser says is HTML) loses its tags."""
    if not isinstance(value, str):
        return ""
    if markup:
        value = html.unescape(_TAG_RE.sub(" ", value))
    return one_line(value)[:limit]


def _field(entry: Any, name: str, *, limit: int) -> str:
    detail = entry.get(f"{name}_detail") or {}
    return _clean(entry.get(name), limit=limit, markup="html" in str(detail.get("type", "")))


def _day(entry: Any, *names: str) -> date | None:
    for name in names:
        parsed = entry.get(f"{name}_parsed")
        if isinstance(parsed, time.struct_time):
            return date(parsed.tm_year, parsed.tm_mon, parsed.tm_mday)
    return None


def _names(entry: Any) -> tuple[str, ...]:
    raw = [a.get("name", "") for a in entry.get("authors", []) if isinstance(a, dict)]
    if len(raw) == 1 and ("," in raw[0] or " and " in raw[0]):
        raw = _NAMES_SPLIT_RE.split(raw[0])  # RSS: one dc:creator for all
    names = (one_line(latex_to_text(_clean(n, limit=200, markup=True))) for n in raw)
    return tuple(n for n in names if n)[:1000]


def _record(entry: Any, *, number: int, today: date) -> PaperRecord:
    title = _field(entry, "title", limit=1000)
    abstract = _field(entry, "summary", limit=20_000)
    ident: tuple[str, int | None] | None = None
    announced = _ANNOUNCE_RE.match(abstract)
    if announced is not None:  # RSS since 2024
        ident = split_arxiv_id(announced["id"])
        abstract = abstract[announced.end() :]
    old_style = _OLD_TITLE_RE.match(title)
    if old_style is not None:  # RSS before 2024
        title, ident = old_style["title"], ident or split_arxiv_id(old_style["id"])
    for candidate in (entry.get("id"), entry.get("link")):
        if ident is None and isinstance(candidate, str):
            found = _ABS_RE.search(candidate) or re.search(r"oai:arXiv\.org:(?P<id>\S+)", candidate)
            ident = split_arxiv_id(found["id"]) if found else None
    if ident is None:
        raise ValueError(f"no arXiv id ({title[:60]!r})")
    if not title:
        raise ValueError(f"no title ({ident[0]})")
    if not abstract:
        raise ValueError(f"no abstract ({ident[0]})")
    category = entry.get("arxiv_primary_category")  # a string when it has no term=""
    primary = category.get("term") if isinstance(category, dict) else None
    categories = [primary] if primary else []
    categories += [t.get("term") for t in entry.get("tags", []) if t.get("term") not in categories]
    names = _names(entry)
    comment = _clean(entry.get("arxiv_comment"), limit=2000)
    published = _day(entry, "published", "updated")
    return PaperRecord(
        title=title,
        abstract=abstract,
        line=number,
        authors=len(names) or None,
        author_names=names,
        published_on=published if published is None or published <= today else today,
        arxiv_id=ident[0],
        arxiv_version=ident[1],
        categories=tuple(c for c in categories if isinstance(c, str) and _CATEGORY_RE.fullmatch(c)),
        code_url=github_in_text(comment) or github_in_text(abstract),
        source=KIND,
    )


_CATEGORY_RE = re.compile(r"[A-Za-z-]+(?:\.[A-Za-z-]+)?")

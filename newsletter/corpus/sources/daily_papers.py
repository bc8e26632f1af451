"""Hugging Face's Daily Papers API: ``/api/daily_papers?date=YYYY-MM-DD``, as JSON.

The answer is a list of items; each holds a ``paper`` object::

    [{"paper": {"id": "2405.12345", "title": "...", "summary": "...",
                "authors": [{"name": "Ada Lovelace"}, ...],
                "publishedAt": "2024-05-28T17:59:59.000Z", "upvotes": 17,
                "ai_summary": "...", "ai_keywords": ["..."],
                "githubRepo": "https://github.com/o/r", "projectPage": "https://...",
                "organization": {"name": "ziplab", "fullname": "ZIP Lab"}},
      "publishedAt": "...", "title": "...", "summary": "...", "numComments": 3}]

Some clients find ``ai_summary`` and ``githubRepo`` on the outer item rather than in
``paper``, so both places are read (``paper`` first). An item that cannot be a paper
(no id and no title, no abstract) is skipped and named; the rest of the day goes in.
A file that is not such a list (malformed or truncated JSON, an error object) is
refused whole, with the line and column where JSON stopped making sense.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import date, datetime

from newsletter.corpus.records import Batch, PaperRecord, malformed, split_arxiv_id
from newsletter.errors import UNREADABLE, CorpusError
from newsletter.paper_links import code_url, safe_url
from newsletter.text import one_line

KIND = "daily_papers"
_JSON_STARTS = ("", *'{["0123456789-tfn]')
MAX_AUTHORS = 1000  # a larger list is not a paper's (and would bloat the row)


def recognises(text: str) -> bool:
    """A JSON list (or a JSON object: an error answer, refused by name)."""
    head = text.lstrip("\ufeff \t\r\n")[:64]
    if head.startswith("{"):
        return True
    # "[" then the start of a JSON value; a dump's title may be "[Re] Reproducing …".
    return head.startswith("[") and head[1:].lstrip()[:1] in _JSON_STARTS


def parse(*, text: str, source: str, today: date) -> Batch:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        message = f"not valid JSON: {exc.msg} at column {exc.colno} (truncated?)"
        raise CorpusError(path=source, line=exc.lineno, message=message) from None
    except (ValueError, RecursionError) as exc:  # an integer of 5,000 digits, [[[[ ...
        raise CorpusError(
            path=source, line=1, message=f"not readable JSON: {malformed(exc)}"
        ) from None
    if isinstance(data, dict):
        shown = ", ".join(sorted(str(k) for k in data)[:5])
        detail = f": {one_line(str(data['error']))[:200]}" if "error" in data else ""
        message = f"a JSON object (keys {shown}), not a Daily Papers list{detail}"
        raise CorpusError(path=source, line=1, message=message)
    if not isinstance(data, list):
        raise CorpusError(path=source, line=1, message="not a Daily Papers list")
    papers: list[PaperRecord] = []
    skipped: list[str] = []
    for number, item in enumerate(data, start=1):
        try:
            papers.append(_record(item, number=number, today=today))
        except UNREADABLE as exc:
            skipped.append(f"item {number}: {malformed(exc)}")
    return Batch(papers=papers, skipped=tuple(skipped), kind=KIND)


def _list(value: object) -> list[object]:
    return value if isinstance(value, list) else []


def _text(value: object, *, limit: int) -> str | None:
    if not isinstance(value, str):
        return None
    text = one_line(value)[:limit]
    return text or None


def _day(value: object) -> date | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).date()
    except ValueError:
        return None


def _count(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def _record(item: object, *, number: int, today: date) -> PaperRecord:
    if not isinstance(item, Mapping):
        raise ValueError("not an object")
    paper = item.get("paper", item)
    if not isinstance(paper, Mapping):
        raise ValueError("its 'paper' is not an object")

    def either(name: str) -> object:
        value = paper.get(name)
        return value if value not in (None, "", []) else item.get(name)

    title = _text(either("title"), limit=1000)
    if title is None:
        raise ValueError("no title")
    abstract = _text(either("summary"), limit=20_000)
    if abstract is None:
        raise ValueError(f"no abstract ({title[:60]!r})")
    ident = split_arxiv_id(paper.get("id") if isinstance(paper.get("id"), str) else None)
    names = tuple(
        name
        for author in _list(paper.get("authors"))[:MAX_AUTHORS]
        if isinstance(author, Mapping)
        and (name := _text(author.get("name"), limit=200)) is not None
    )
    org = either("organization")
    org_name = org_handle = None
    if isinstance(org, Mapping):
        org_handle = _text(org.get("name"), limit=200)
        org_name = _text(org.get("fullname"), limit=300) or org_handle
        org_handle = org_handle if org_name != org_handle else None
    elif isinstance(org, str):
        org_name = _text(org, limit=300)
    keywords = either("ai_keywords")
    published = _day(either("publishedAt"))
    return PaperRecord(
        title=title,
        abstract=abstract,
        line=number,
        authors=len(names) if names else None,
        author_names=names,
        organization=org_name,
        organization_handle=org_handle,
        published_on=published if published is None or published <= today else None,
        upvotes=_count(either("upvotes")),
        page_date=_day(item.get("submittedOnDailyAt")),
        arxiv_id=ident[0] if ident else None,
        arxiv_version=ident[1] if ident else None,
        code_url=code_url(_text(either("githubRepo"), limit=500)),
        project_url=safe_url(_text(either("projectPage"), limit=500)),
        summary=_text(either("ai_summary"), limit=2000),
        keywords=tuple(k for raw in _list(keywords)[:30] if (k := _text(raw, limit=100))),
        source=KIND,
    )

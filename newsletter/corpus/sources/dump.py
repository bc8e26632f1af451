"""Parse one Hugging Face "Daily Papers" page dump into paper records.

The dumps have no ids and no markup: a paper is a title line followed by an
abstract line, with page chrome around them. Three layouts occur and one
line-oriented state machine reads them all:

* title / abstract pairs separated by blank lines;
* the same with a metadata block after each abstract::

      • 4 authors          (or an organisation line: "ziplab ZIP Lab")
      ·
      May 28, 2024         ("Apr 12" has no year, "May 29 5" adds upvotes)

* no blank lines at all, the first title glued to the chrome
  ("SubscribeUnderstanding Self-Predictive …").

Blank lines carry no meaning here, so they are dropped first; what tells a
title from an abstract is position (title, then abstract, then an optional
metadata block).

Year-less dates. A page date such as "Mar 12" takes the latest year that does
not put it after the ingest day. A paper date without a year ("Apr 12") takes
the latest year that puts it neither after the page's date (when the page has
one) nor after the ingest day: a paper cannot be published after the page
that lists it was written.

This module is pure: text in, records out. Reading files is ``read_dump``.
A dump is what no other source recognises: it is tried last.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date
from pathlib import Path

from newsletter.corpus.records import Batch, PaperRecord
from newsletter.errors import CorpusError
from newsletter.paper_links import github_in_text

KIND = "dump"

# Exact lines of page chrome. Compared after stripping, case-sensitively:
# a paper titled "subscribe" in lower case would still be a paper.
CHROME_LINES = frozenset(
    {
        "new",
        "Get trending papers in your email inbox!",
        "Get trending papers in your email inbox once a day!",
        "Subscribe",
        "Daily Papers",
        "byAK and the research community",
        "by AK and the research community",
    }
)
# The page sometimes glues its "Subscribe" button text onto the first title.
GLUED_PREFIX = "Subscribe"

MAX_TITLE_CHARS = 500
"""A longer "title" means the file is not a dump (or a line was mangled)."""

_MONTHS = {
    m: i
    for i, m in enumerate(
        ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"],
        start=1,
    )
}
_DATE_RE = re.compile(
    r"^(?P<mon>Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) (?P<day>\d{1,2})"
    r"(?:, (?P<year>\d{4}))?(?: (?P<upvotes>\d{1,7}))?$"
)
_AUTHORS_RE = re.compile(r"^•\s*(?P<n>\d{1,5}) authors?$")
_META_DOT = "·"
# An abstract that ends like this is complete; anything else at the very end
# of a file means the dump was cut off while being written.
_COMPLETE_END_RE = re.compile(r"""(?:[.!?)\]}"'”’]|https?://\S+)$""")


@dataclass(frozen=True, slots=True)
class _DateLine:
    month: int
    day: int
    year: int | None
    upvotes: int | None


def _parse_date_line(text: str) -> _DateLine | None:
    m = _DATE_RE.match(text)
    if m is None:
        return None
    month, day = _MONTHS[m["mon"]], int(m["day"])
    if not 1 <= day <= 31:
        return None
    year = int(m["year"]) if m["year"] else None
    if year is not None and not _valid_day(year, month, day):
        return None
    upvotes = int(m["upvotes"]) if m["upvotes"] else None
    return _DateLine(month=month, day=day, year=year, upvotes=upvotes)


def _valid_day(year: int, month: int, day: int) -> bool:
    try:
        date(year, month, day)
    except ValueError:
        return False
    return True


def resolve_year(*, month: int, day: int, not_after: date) -> date | None:
    """The latest date with this month and day that is not after ``not_after``.

    Returns None for a day that exists in no year near it (Feb 30).
    """
    for year in range(not_after.year, not_after.year - 9, -1):
        if _valid_day(year, month, day) and date(year, month, day) <= not_after:
            return date(year, month, day)
    return None


def _content_lines(text: str) -> list[tuple[int, str]]:
    """Non-blank lines with their 1-based numbers; CRLF, CR and BOM tolerated."""
    if text.startswith("\ufeff"):
        text = text[1:]
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    return [(i, line.strip()) for i, line in enumerate(lines, start=1) if line.strip()]


def parse_dump(*, text: str, source: str, today: date) -> Batch:
    """Parse a page dump.

    ``source`` names the file in errors; ``today`` is the ingest day, the
    upper bound for year-less dates. Raises ``CorpusError`` (with the line)
    when the text holds no paper or stops in the middle of one.
    """
    lines = _content_lines(text)
    if not lines:
        raise CorpusError(path=source, line=1, message="the file is empty")

    papers: list[PaperRecord] = []
    page_date: date | None = None
    i, n = 0, len(lines)

    # Header: chrome and the page date, until the first title.
    while i < n:
        lineno, line = lines[i]
        if line in CHROME_LINES:
            i += 1
            continue
        parsed = _parse_date_line(line)
        if parsed is not None and not papers and page_date is None and parsed.upvotes is None:
            page_date = (
                date(parsed.year, parsed.month, parsed.day)
                if parsed.year
                else resolve_year(month=parsed.month, day=parsed.day, not_after=today)
            )
            i += 1
            continue
        glued = line.removeprefix(GLUED_PREFIX)
        # "SubscribeUnderstanding …" is glued; "Subscriber Churn …" is a title.
        if glued != line and glued[:1].isupper():
            lines[i] = (lineno, line[len(GLUED_PREFIX) :].strip())
        break

    date_bound = min(page_date, today) if page_date else today

    while i < n:
        title_no, title = lines[i]
        if title in CHROME_LINES:
            i += 1
            continue
        if len(title) > MAX_TITLE_CHARS:
            raise CorpusError(
                path=source,
                line=title_no,
                message=f"expected a paper title, found a {len(title):,}-character line",
            )
        if i + 1 >= n:
            raise CorpusError(
                path=source,
                line=title_no,
                message="the file ends after a title with no abstract (truncated?)",
            )
        abstract_no, abstract = lines[i + 1]
        i += 2

        meta: dict[str, object] = {}
        # Optional metadata block: [authors | organisation] · date
        if i < n and (m := _AUTHORS_RE.match(lines[i][1])):
            meta["authors"] = int(m["n"])
            i += 1
        elif i + 1 < n and lines[i + 1][1] == _META_DOT:
            org_line = lines[i][1]
            handle, _, name = org_line.partition(" ")
            meta["organization"] = name.strip() or handle
            meta["organization_handle"] = handle if name.strip() else None
            i += 1
        if i < n and lines[i][1] == _META_DOT:
            dot_no = lines[i][0]
            i += 1
            parsed = _parse_date_line(lines[i][1]) if i < n else None
            if parsed is None:
                raise CorpusError(
                    path=source,
                    line=lines[i][0] if i < n else dot_no,
                    message="expected a publication date after '·' (truncated?)",
                )
            i += 1
            meta["published_on"] = (
                date(parsed.year, parsed.month, parsed.day)
                if parsed.year
                else resolve_year(month=parsed.month, day=parsed.day, not_after=date_bound)
            )
            meta["upvotes"] = parsed.upvotes
        elif "authors" in meta:
            raise CorpusError(
                path=source,
                line=lines[i - 1][0],
                message="an author count must be followed by '·' and a date (truncated?)",
            )
        # Only the last word can end the abstract: searching the whole line is
        # quadratic on a long line full of "http://" (a 5 MB line hung here).
        elif i >= n and not _COMPLETE_END_RE.search(abstract.rsplit(maxsplit=1)[-1]):
            raise CorpusError(
                path=source,
                line=abstract_no,
                message="the file ends in the middle of an abstract (truncated?)",
            )

        papers.append(
            PaperRecord(
                title=title,
                abstract=abstract,
                line=title_no,
                page_date=page_date,
                code_url=github_in_text(abstract),
                **meta,  # type: ignore[arg-type]
            )
        )

    if not papers:
        raise CorpusError(
            path=source, line=lines[-1][0], message="no paper found, only page chrome"
        )
    return Batch(papers=papers, page_date=page_date, kind=KIND)


def _line_at(data: bytes, offset: int) -> int:
    """1-based line of a byte offset, counting line breaks as the parser does (LF, CRLF, CR)."""
    head = data[:offset].replace(b"\r\n", b"\n").replace(b"\r", b"\n")
    return head.count(b"\n") + 1


def decode_dump(*, data: bytes, source: str) -> str:
    """Bytes to text, refusing binary files and other encodings with a line number."""
    if not data.strip():
        raise CorpusError(path=source, line=1, message="the file is empty")
    nul = data.find(b"\x00")
    if nul >= 0:
        raise CorpusError(path=source, line=_line_at(data, nul), message="binary data (NUL byte)")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise CorpusError(
            path=source,
            line=_line_at(data, exc.start),
            message=f"not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start})",
        ) from None


def read_dump(*, path: Path, today: date) -> Batch:
    source = str(path)
    return parse_dump(
        text=decode_dump(data=path.read_bytes(), source=source), source=source, today=today
    )


def recognises(text: str) -> bool:
    """Anything may be a dump; the parser says whether it is one."""
    return True


def parse(*, text: str, source: str, today: date) -> Batch:
    return parse_dump(text=text, source=source, today=today)

"""Where papers come from: one module per kind of source, one contract for all.

Each module (``daily_papers``, ``arxiv``, ``dump``) has

* ``KIND``: its name in settings, in ``papers.sources`` and in reports;
* ``recognises(text) -> bool``: whether a file's content is of its kind (a file
  dropped into the corpus folder is recognised by what it holds, not its name);
* ``parse(*, text, source, today) -> Batch``: pure, text in and records out,
  ``CorpusError`` (with the line) for a file it cannot take whole.

``parse_bytes`` is the one entrance: it decodes, picks the kind and parses. Fetching
(``corpus.fetch``) and ingesting (``corpus.ingest``) both go through it, so a saved
answer replayed from the corpus folder is read exactly as it was when fetched.
"""

from __future__ import annotations

from datetime import date
from types import ModuleType

from newsletter.corpus.records import Batch, malformed
from newsletter.corpus.sources import arxiv, daily_papers, dump
from newsletter.errors import UNREADABLE, CorpusError

# Dumps last: a dump is what nothing else recognises.
FORMATS: tuple[ModuleType, ...] = (daily_papers, arxiv, dump)
KINDS = tuple(m.KIND for m in FORMATS)
SUFFIXES = (".txt", ".json", ".xml", ".atom", ".rss")
"""What ``ingest`` picks up from a corpus folder."""


def recognise(text: str) -> ModuleType:
    return next(m for m in FORMATS if m.recognises(text))


def parse_bytes(*, data: bytes, source: str, today: date, kind: str | None = None) -> Batch:
    """Read one file or one answer of any source. With ``kind``, the content must be
    of that kind (a fetcher that asked the API for JSON and got an HTML error page)."""
    text = dump.decode_dump(data=data, source=source)
    module = recognise(text)
    if kind is not None and kind != module.KIND:
        first = text.lstrip()[:40].split("\n")[0]
        message = f"expected {kind.replace('_', ' ')} content, found {first!r}"
        raise CorpusError(path=source, line=1, message=message)
    try:
        return module.parse(text=text, source=source, today=today)
    except UNREADABLE as exc:  # a parser's gap: this file is refused, the others go on
        raise CorpusError(path=source, line=1, message=malformed(exc)) from None


__all__ = ["FORMATS", "KINDS", "SUFFIXES", "Batch", "parse_bytes", "recognise"]

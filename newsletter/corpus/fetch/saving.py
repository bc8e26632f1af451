"""Keeping a good answer: parsed whole, saved atomically under ``data/fetched/``, ingested."""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

import sqlalchemy as sa

from newsletter.config import Settings
from newsletter.corpus.fetch.http import _Answer, _Failure
from newsletter.corpus.fetch.targets import ARXIV_API_MAX_RESULTS, Target
from newsletter.corpus.ingest import ingest_file
from newsletter.corpus.sources import parse_bytes
from newsletter.db import error_reason
from newsletter.errors import CorpusError

if TYPE_CHECKING:
    from newsletter.corpus.fetch import FetchResult

_TOTAL_RE = re.compile(rb"<opensearch:totalResults[^>]*>\s*(\d+)\s*<")


def fetched_dir(settings: Settings, kind: str) -> Path:
    return settings.data_dir / "fetched" / kind


def write_atomically(path: Path, data: bytes) -> None:
    """``data`` at ``path`` whole or not at all: a temporary file beside it, renamed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _keep(
    *,
    engine: sa.Engine,
    settings: Settings,
    target: Target,
    answer: _Answer,
    now: datetime,
    result: FetchResult,
) -> None:
    """Parse a 200 as the kind asked for; if whole, save it and ingest the saved file."""
    if not answer.body.strip():
        raise _Failure("the answer is empty", transient=False, http_status=200)
    try:
        batch = parse_bytes(data=answer.body, source=target.url, today=now.date(), kind=target.kind)
    except CorpusError as exc:
        raise _Failure(
            f"line {exc.line}: {exc.message}", transient=False, http_status=200
        ) from None
    path = fetched_dir(settings, target.kind) / target.file
    write_atomically(path, answer.body)
    try:
        stored = ingest_file(engine=engine, path=path, now=now, max_bytes=settings.fetch_max_bytes)
    except (OSError, sa.exc.DBAPIError) as exc:
        reason = error_reason(exc) if isinstance(exc, sa.exc.DBAPIError) else str(exc)
        raise _Failure(f"not stored: {reason}", transient=False, http_status=200) from None
    if stored.error is not None:
        raise _Failure(
            f"not stored: line {stored.error.line}: {stored.error.message}",
            transient=False,
            http_status=200,
        )
    result.path = path
    result.papers = stored.papers
    result.new_papers, result.updated_papers = stored.new_papers, stored.updated_papers
    result.items_skipped = stored.skipped if stored.status != "unchanged" else batch.skipped
    total = _TOTAL_RE.search(answer.body[:4096])
    if total is not None and int(total[1]) > len(batch.papers) + len(batch.skipped):
        result.note = f"the source has {int(total[1])}; the first {ARXIV_API_MAX_RESULTS} taken"

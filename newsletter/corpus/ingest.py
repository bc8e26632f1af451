"""Ingest: corpus files in, deduplicated papers stored, each file's hash recorded.

Each file is one transaction: a crash mid-file leaves nothing half-stored and
the next run reads that file again. An unchanged file (same SHA-256 as last
time) is skipped without parsing; a changed one adds only what is new and
fills blanks in what is known. A file that cannot be parsed is reported with
its path and line, recorded, and skipped: the other files still go in.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path

import sqlalchemy as sa
from sqlmodel import Session, select

from newsletter.corpus.keys import canonical_key
from newsletter.corpus.parser import PaperRecord, decode_dump, parse_dump
from newsletter.db import error_reason, session_scope
from newsletter.errors import CorpusError
from newsletter.events import EventKind
from newsletter.models import CorpusFile, Event, Paper

# Fields a later sighting may fill in when the stored paper has them blank.
_MERGED_FIELDS = ("authors", "organization", "organization_handle", "published_on", "page_date")


@dataclass(slots=True)
class FileResult:
    path: str
    status: str  # "new", "changed", "unchanged", "error"
    papers: int = 0
    new_papers: int = 0
    updated_papers: int = 0
    error: CorpusError | None = None


@dataclass(slots=True)
class IngestReport:
    files: list[FileResult] = field(default_factory=list)

    @property
    def new_papers(self) -> int:
        return sum(f.new_papers for f in self.files)

    @property
    def errors(self) -> list[CorpusError]:
        return [f.error for f in self.files if f.error is not None]


def corpus_files(*, paths: Iterable[Path]) -> list[Path]:
    """Expand directories to their ``*.txt`` files, in name order (dumps are numbered)."""
    found: list[Path] = []
    for path in paths:
        if path.is_dir():
            found.extend(sorted(p for p in path.glob("*.txt") if p.is_file()))
        elif path.exists():
            found.append(path)
        else:
            raise CorpusError(path=str(path), line=0, message="no such file or directory")
    return found


def merge_records(records: Iterable[PaperRecord]) -> dict[str, PaperRecord]:
    """Collapse records sharing a key; later sightings fill the blanks of earlier ones."""
    merged: dict[str, PaperRecord] = {}
    for rec in records:
        key = canonical_key(rec.title)
        if not key:
            continue
        old = merged.get(key)
        merged[key] = rec if old is None else _merge_record(old, rec)
    return merged


def _merge_record(old: PaperRecord, new: PaperRecord) -> PaperRecord:
    changes = {f: getattr(new, f) for f in _MERGED_FIELDS if getattr(old, f) is None}
    changes = {k: v for k, v in changes.items() if v is not None}
    if new.upvotes is not None and (old.upvotes is None or new.upvotes > old.upvotes):
        changes["upvotes"] = new.upvotes
    if len(new.abstract) > len(old.abstract):
        changes["abstract"] = new.abstract
    return replace(old, **changes) if changes else old


def _merge_into(paper: Paper, rec: PaperRecord) -> bool:
    """Fill blanks of a stored paper from a new sighting; never overwrite with blanks."""
    changed = False
    for name in _MERGED_FIELDS:
        value = getattr(rec, name)
        if value is not None and getattr(paper, name) is None:
            setattr(paper, name, value)
            changed = True
    if rec.upvotes is not None and (paper.upvotes is None or rec.upvotes > paper.upvotes):
        paper.upvotes = rec.upvotes  # upvotes only grow; the highest count seen is the newest
        changed = True
    if not paper.abstract and rec.abstract:
        paper.abstract = rec.abstract
        changed = True
    return changed


def _check_fits(records: dict[str, PaperRecord], *, source: str) -> None:
    """Refuse as a broken file what the database would refuse (PostgreSQL enforces lengths)."""
    columns = Paper.__table__.c  # type: ignore[attr-defined]
    for key, rec in records.items():
        for name, value in (
            ("key", key),
            ("title", rec.title),
            ("organization", rec.organization),
            ("organization_handle", rec.organization_handle),
        ):
            limit = columns[name].type.length
            if value is not None and limit is not None and len(value) > limit:
                message = f"the paper's {name} is longer than {limit} characters"
                raise CorpusError(path=source, line=rec.line, message=message)


def _store(
    session: Session, *, records: dict[str, PaperRecord], source: str, now: datetime
) -> tuple[int, int]:
    keys = list(records)
    existing: dict[str, Paper] = {}
    for start in range(0, len(keys), 500):  # stay under bound-parameter limits
        chunk = keys[start : start + 500]
        query = select(Paper).where(Paper.key.in_(chunk))  # type: ignore[attr-defined]
        existing.update({p.key: p for p in session.exec(query)})
    new_rows: list[dict[str, object]] = []
    updated = 0
    for key, rec in records.items():
        paper = existing.get(key)
        if paper is None:
            new_rows.append(
                {
                    "key": key,
                    "title": rec.title,
                    "abstract": rec.abstract,
                    "authors": rec.authors,
                    "organization": rec.organization,
                    "organization_handle": rec.organization_handle,
                    "published_on": rec.published_on,
                    "upvotes": rec.upvotes,
                    "page_date": rec.page_date,
                    "source_file": source,
                    "first_seen_at": now,
                    "updated_at": now,
                }
            )
        elif _merge_into(paper, rec):
            paper.updated_at = now
            updated += 1
    if new_rows:
        # One executemany instead of an ORM object per paper: 5x faster on a whole dump.
        session.execute(sa.insert(Paper), new_rows)
    return len(new_rows), updated


DEFAULT_MAX_BYTES = 64 * 2**20


def read_bounded(*, path: Path, max_bytes: int) -> bytes:
    """The file's bytes, refusing one larger than ``max_bytes`` without reading it all
    (``/dev/zero`` or a runaway dump would otherwise take the machine's memory)."""
    with path.open("rb") as fh:
        data = fh.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise CorpusError(
            path=str(path),
            line=0,
            message=f"larger than {max_bytes / 2**20:g} MiB (NEWSLETTER_CORPUS_MAX_MB); not read",
        )
    return data


def ingest_file(
    *, engine: sa.Engine, path: Path, now: datetime, max_bytes: int = DEFAULT_MAX_BYTES
) -> FileResult:
    source = str(path)
    try:
        data = read_bounded(path=path, max_bytes=max_bytes)
    except CorpusError as exc:
        return FileResult(path=source, status="error", error=exc)
    digest = hashlib.sha256(data).hexdigest()
    with session_scope(engine=engine) as session:
        row = session.exec(select(CorpusFile).where(CorpusFile.path == source)).first()
        unchanged = row is not None and row.sha256 == digest
        if unchanged and row.status == "ok":  # type: ignore[union-attr]
            return FileResult(path=source, status="unchanged", papers=row.papers)  # type: ignore[union-attr]
        # A file that failed before is parsed again even when unchanged, so every
        # run keeps reporting it until it is fixed (but records its event once).
        status = "new" if row is None else "changed"
        row = row or CorpusFile(path=source, sha256=digest, size=len(data), status="ok")
        row.sha256, row.size, row.ingested_at = digest, len(data), now
        try:
            text = decode_dump(data=data, source=source)
            parsed = parse_dump(text=text, source=source, today=now.date())
            records = merge_records(parsed.papers)
            _check_fits(records, source=source)
        except CorpusError as exc:
            row.status, row.error, row.papers, row.new_papers = "error", str(exc), 0, 0
            session.add(row)
            if not unchanged:
                detail = {"path": source, "line": exc.line, "error": exc.message}
                session.add(Event(at=now, kind=EventKind.FILE_FAILED, detail=json.dumps(detail)))
            return FileResult(path=source, status="error", error=exc)
        new, updated = _store(session, records=records, source=source, now=now)
        row.status, row.error, row.papers, row.new_papers = "ok", None, len(records), new
        session.add(row)
        detail = {"path": source, "papers": len(records), "new": new, "updated": updated}
        session.add(Event(at=now, kind=EventKind.FILE_INGESTED, detail=json.dumps(detail)))
    return FileResult(
        path=source, status=status, papers=len(records), new_papers=new, updated_papers=updated
    )


def ingest(
    *,
    engine: sa.Engine,
    paths: Iterable[Path],
    now: datetime,
    on_file: Callable[[FileResult], None] | None = None,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> IngestReport:
    """Ingest files and directories; one bad file never stops the others."""
    report = IngestReport()
    for path in corpus_files(paths=paths):
        try:
            result = ingest_file(engine=engine, path=path, now=now, max_bytes=max_bytes)
        except OSError as exc:
            error = CorpusError(path=str(path), line=0, message=exc.strerror or str(exc))
            result = FileResult(path=str(path), status="error", error=error)
        except sa.exc.DBAPIError as exc:
            # E.g. two ingesters racing on one new paper: this file's transaction
            # rolled back whole; the next run takes it again. The others go on.
            message = f"database error, will retry: {error_reason(exc)}"
            result = FileResult(
                path=str(path),
                status="error",
                error=CorpusError(path=str(path), line=0, message=message),
            )
        report.files.append(result)
        if on_file is not None:
            on_file(result)
    return report

"""``subscribers import``: CSV or JSON (an array, or JSON Lines) in, every bad row by line.

Two kinds of problem, two answers:

* the file does not parse as a whole (a JSON array broken anywhere, JSON nested
  beyond reason, a CSV field over the csv module's limit, bytes that are not
  UTF-8): nothing is stored, and the error names the line;
* a row that parses but does not validate (an address, a topic, a time): that row
  is reported with its line and the good rows are stored.

A JSON Lines file is one document per line, so a broken line is a row's problem.
Rows are checked first, then stored in bulk in one transaction, so an import is
all of its good rows or, if the database fails, none of them.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlmodel import select

from newsletter.db import session_scope
from newsletter.errors import SubscriberError
from newsletter.events import EventKind
from newsletter.models import Event, Subscriber, SubscriberStatus, TopicFilter
from newsletter.relevance import DEFAULT_DIAL
from newsletter.subscribers import (
    NewSubscriber,
    split_topic,
    validate_dial,
    validate_subscriber,
)
from newsletter.tokens import new_salt

_INSERT_CHUNK = 2000


@dataclass(frozen=True, slots=True)
class RowError:
    line: int
    message: str


@dataclass(slots=True)
class ImportReport:
    added: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # already subscribed, with --skip-existing
    errors: list[RowError] = field(default_factory=list)


class ImportFileError(SubscriberError):
    """The file as a whole cannot be read: nothing was stored."""


def _csv_rows(text: str) -> list[tuple[int, Any]]:
    # Strict: a quote never closed is an error, not a field that swallows every row
    # after it (the reader's default, which stored them as one reader's name).
    reader = csv.DictReader(io.StringIO(text, newline=""), strict=True)
    rows: list[tuple[int, Any]] = []
    after = 1  # the line the last whole record ended on
    try:
        names = reader.fieldnames
        if not names or "email" not in [f.strip() for f in names]:
            raise ImportFileError("the CSV header must name an 'email' column", field="line 1")
        for row in reader:
            # line_num is where the reader is now, the record's last line: a record
            # whose quoted fields hold line breaks started that many lines before.
            breaks = sum(v.count("\n") for v in row.values() if isinstance(v, str))
            line, after = reader.line_num - breaks, reader.line_num
            extra = row.pop(None, None)  # type: ignore[call-overload]
            if extra is not None:
                rows.append(
                    (line, RowError(line, f"{len(extra)} more field(s) than the header names"))
                )
            else:
                rows.append((line, {(k or "").strip(): v for k, v in row.items()}))
    except csv.Error as exc:
        raise ImportFileError(
            f"not readable as CSV from line {after + 1} on: {exc}", field=f"line {after + 1}"
        ) from None
    return rows


def _json_array_rows(text: str) -> list[tuple[int, Any]]:
    """Items of a JSON array with the line each starts on; the whole array must parse."""
    try:
        items = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ImportFileError(
            f"invalid JSON: {exc.msg} (column {exc.colno})", field=f"line {exc.lineno}"
        ) from None
    except RecursionError:
        raise ImportFileError("invalid JSON: nested too deeply", field="line 1") from None
    except ValueError as exc:  # a number of more than 4,300 digits
        raise ImportFileError(f"invalid JSON: {exc}", field="line 1") from None
    if not isinstance(items, list):
        raise ImportFileError("expected a JSON array of objects", field="line 1")
    # Parsed once as a whole; now again item by item, only to learn where each starts.
    decoder, rows, pos = json.JSONDecoder(), [], text.index("[") + 1
    for _ in items:
        while text[pos] in " \t\r\n,":
            pos += 1
        line = text.count("\n", 0, pos) + 1
        item, pos = decoder.raw_decode(text, pos)
        rows.append((line, item))
    return rows


_LINE_END_RE = re.compile(r"\r\n|\r|\n")


def _json_lines_rows(text: str) -> list[tuple[int, Any]]:
    rows: list[tuple[int, Any]] = []
    # Lines end at "\n", "\r\n" or "\r" (JSON allows none raw inside a string), not
    # where str.splitlines() also breaks: U+2028, U+2029 and NEL, which JSON allows raw.
    for line, raw in enumerate(_LINE_END_RE.split(text), start=1):
        if raw.strip():
            try:
                rows.append((line, json.loads(raw)))
            except json.JSONDecodeError as exc:
                rows.append((line, RowError(line, f"invalid JSON: {exc.msg} (column {exc.colno})")))
            except RecursionError:
                rows.append((line, RowError(line, "invalid JSON: nested too deeply")))
            except ValueError as exc:  # a number of more than 4,300 digits
                rows.append((line, RowError(line, f"invalid JSON: {exc}")))
    return rows


def _topics_of(value: Any) -> list[Any]:
    if value is None:
        return []
    if isinstance(value, list):
        return value  # each checked: a number or an object is refused, not stringified
    if isinstance(value, str):
        return value.split(";")  # CSV: topics separated by ";" (a filter never needs one)
    raise SubscriberError("must be a list of filters (or ';'-separated text)", field="topics")


def _text(row: dict[str, Any], name: str, default: str) -> str:
    value = row.get(name)
    if value is None or value == "":
        return default
    if not isinstance(value, str):
        raise SubscriberError("must be text", field=name)
    return value


def read_rows(path: Path) -> list[tuple[int, Any]]:
    """The file's rows with their lines; ImportFileError when it does not parse."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        line = exc.object[: exc.start].count(b"\n") + 1  # where the first bad byte is
        raise ImportFileError(
            f"{path} is not UTF-8 text: {exc.reason} at line {line}", field=f"line {line}"
        ) from None
    except OSError as exc:
        raise ImportFileError(f"cannot read {path}: {exc.strerror}", field="file") from None
    stripped = text.lstrip()
    if stripped.startswith("["):
        return _json_array_rows(text)
    if path.suffix.lower() in (".json", ".jsonl") or stripped.startswith("{"):
        return _json_lines_rows(text)
    return _csv_rows(text)


ANALYZE_AFTER = 10_000  # rows added by one import before the planner's statistics are renewed


def import_subscribers(
    *,
    engine: sa.Engine,
    path: Path,
    now: datetime,
    default_timezone: str,
    default_send_at: str,
    skip_existing: bool = False,
    on_row: Callable[[], None] | None = None,
) -> ImportReport:
    """Import CSV or JSON; every bad row is reported with its line, the good ones stored."""
    report = ImportReport()
    valid: list[tuple[int, NewSubscriber, int]] = []
    seen: set[str] = set()
    for line, row in read_rows(path):
        if on_row is not None:
            on_row()
        if isinstance(row, RowError):
            report.errors.append(row)
            continue
        if not isinstance(row, dict):
            report.errors.append(RowError(line, "expected an object with an 'email' field"))
            continue
        try:
            sub = validate_subscriber(
                email=_text(row, "email", ""),
                topics=_topics_of(row.get("topics", row.get("topic"))),
                name=_text(row, "name", "") or None,  # 0 or false is no name: a mistake
                timezone=_text(row, "timezone", default_timezone),
                send_at=_text(row, "send_at", default_send_at),
            )
        except SubscriberError as exc:
            report.errors.append(RowError(line, str(exc)))
            continue
        try:
            given = row.get("dial")  # absent or blank: the default; 0 is a mistake to name
            dial = validate_dial(DEFAULT_DIAL if given is None or given == "" else given)
        except SubscriberError as exc:
            report.errors.append(RowError(line, str(exc)))
            continue
        if sub.email in seen:
            report.errors.append(RowError(line, f"email: {sub.email} appears twice in this file"))
            continue
        seen.add(sub.email)
        valid.append((line, sub, dial))
    with session_scope(engine=engine) as session:
        existing = _existing(session, [s.email for _, s, _ in valid])
        fresh = []
        for line, sub, dial in valid:
            if sub.email not in existing:
                fresh.append((sub, dial))
            elif skip_existing:
                report.skipped.append(sub.email)
            else:
                report.errors.append(RowError(line, f"email: {sub.email} is already subscribed"))
        for start in range(0, len(fresh), _INSERT_CHUNK):
            _insert(session, fresh[start : start + _INSERT_CHUNK], now=now)
        report.added = [s.email for s, _ in fresh]
    if len(fresh) >= ANALYZE_AFTER and engine.dialect.name == "postgresql":
        # PostgreSQL plans queries from its statistics of a table, which autovacuum
        # refreshes only minutes after a bulk load: the first planning run after
        # importing a million subscribers read them with plans made for the table as it
        # was (278 s against 228 s for that run, measured with bench/plan.py).
        with engine.begin() as connection:
            connection.execute(sa.text("ANALYZE subscribers, topic_filters"))
    report.errors.sort(key=lambda e: e.line)
    return report


def _existing(session: Any, emails: list[str]) -> set[str]:
    found: set[str] = set()
    for start in range(0, len(emails), _INSERT_CHUNK):
        chunk = emails[start : start + _INSERT_CHUNK]
        found.update(
            session.exec(select(Subscriber.email).where(Subscriber.email.in_(chunk)))  # type: ignore[attr-defined]
        )
    return found


def _insert(session: Any, rows_in: list[tuple[NewSubscriber, int]], *, now: datetime) -> None:
    """One multi-row INSERT each for subscribers, their topics and their events."""
    if not rows_in:
        return
    subs = [s for s, _ in rows_in]
    dials = {s.email: dial for s, dial in rows_in}
    rows = [
        {
            "email": s.email,
            "name": s.name,
            "timezone": s.timezone,
            "send_at": s.send_at,
            "status": SubscriberStatus.ACTIVE,
            "soft_bounces": 0,
            "cadence": "daily",
            "dial": dials[s.email],
            "token_salt": new_salt(),
            "created_at": now,
            "updated_at": now,
        }
        for s in subs
    ]
    if session.get_bind().dialect.name == "postgresql":
        _copy(session, rows, subs, now=now)
        return
    table = Subscriber.__table__  # type: ignore[attr-defined]
    ids = dict(
        session.connection()
        .execute(sa.insert(table).returning(table.c.email, table.c.id), rows)
        .all()
    )
    topics = [
        {"subscriber_id": ids[s.email], "query": t.query, "about": t.about, "created_at": now}
        for s in subs
        for t in map(split_topic, s.topics)
    ]
    if topics:
        session.connection().execute(sa.insert(TopicFilter.__table__), topics)  # type: ignore[attr-defined]
    session.connection().execute(
        sa.insert(Event.__table__),  # type: ignore[attr-defined]
        [
            {"at": now, "kind": EventKind.ADDED, "subscriber_id": ids[s.email], "detail": "{}"}
            for s in subs
        ],
    )


def _copy(
    session: Any, rows: list[dict[str, Any]], subs: list[NewSubscriber], *, now: datetime
) -> None:
    """PostgreSQL: the ids drawn from the sequence in one query, then the three tables
    loaded with COPY. A multi-row INSERT of thousands of rows spends most of its time
    in the driver, turning the statement's placeholders into PostgreSQL's."""
    cursor = session.connection().connection.dbapi_connection.cursor()
    cursor.execute(
        "SELECT nextval(pg_get_serial_sequence('subscribers', 'id')) FROM generate_series(1, %s)",
        (len(rows),),
    )
    ids = [row[0] for row in cursor.fetchall()]
    columns = list(rows[0])
    with cursor.copy(f"COPY subscribers (id, {', '.join(columns)}) FROM STDIN") as copy:
        for sid, row in zip(ids, rows, strict=True):
            copy.write_row((sid, *row.values()))
    with cursor.copy(
        "COPY topic_filters (subscriber_id, query, about, created_at) FROM STDIN"
    ) as copy:
        for sid, sub in zip(ids, subs, strict=True):
            for topic in map(split_topic, sub.topics):
                copy.write_row((sid, topic.query, topic.about, now))
    with cursor.copy("COPY events (at, kind, subscriber_id, detail) FROM STDIN") as copy:
        for sid in ids:
            copy.write_row((now, str(EventKind.ADDED), sid, "{}"))

"""Subscribers: addresses validated and normalized, duplicates refused, bad import rows by line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlmodel import select

from newsletter import db
from newsletter.errors import DuplicateSubscriberError, SubscriberError
from newsletter.importer import ImportFileError, import_subscribers
from newsletter.models import Event, Subscriber, TopicFilter
from newsletter.subscribers import (
    add_subscriber,
    remove_subscriber,
    topics_by_subscriber,
    validate_subscriber,
)
from tests.helpers import subscribe


def _valid(**overrides: object):  # type: ignore[no-untyped-def]
    fields: dict[str, object] = {
        "email": "Ada@Example.ORG",
        "topics": ["diffusion"],
        "timezone": "Europe/Paris",
        "send_at": "8:05",
    } | overrides
    return validate_subscriber(**fields)  # type: ignore[arg-type]


def test_address_is_normalized_and_times_padded() -> None:
    sub = _valid()
    assert sub.email == "ada@example.org"
    assert sub.send_at == "08:05"


@pytest.mark.parametrize(
    ("overrides", "field", "says"),
    [
        ({"email": "not-an-address"}, "email", "not a valid address"),
        ({"email": "a@b@c.org"}, "email", "not a valid address"),
        ({"email": "ada@example.org\r\nBcc: x@y.org"}, "email", "not a valid address"),
        ({"topics": ['"unclosed']}, "topic", "never closed (column 1)"),
        ({"timezone": "Europe/Atlantis"}, "timezone", "unknown IANA time zone"),
        # in the zone database, but no place's zone: the server's own, leap seconds
        ({"timezone": "localtime"}, "timezone", "unknown IANA time zone"),
        ({"timezone": "posixrules"}, "timezone", "unknown IANA time zone"),
        ({"timezone": "right/UTC"}, "timezone", "unknown IANA time zone"),
        ({"send_at": "noon"}, "send_at", "expected a time HH:MM"),
        ({"name": "x" * 201}, "name", "at most 200"),
    ],
)
def test_bad_field_is_named(overrides: dict[str, object], field: str, says: str) -> None:
    with pytest.raises(SubscriberError) as info:
        _valid(**overrides)
    assert info.value.field == field
    assert says in str(info.value)


def test_no_topic_at_all_asks_for_everything() -> None:
    assert _valid(topics=[]).topics == ()
    assert _valid(topics=["  ", "*"]).topics == ("*",)


def test_name_with_line_breaks_is_folded_to_one_line() -> None:
    assert _valid(name="Ada\r\nBcc: evil@example.org").name == "Ada Bcc: evil@example.org"


def test_duplicate_is_refused_whatever_the_case(engine: sa.Engine, now) -> None:  # type: ignore[no-untyped-def]
    with db.session_scope(engine=engine) as session:
        add_subscriber(session=session, subscriber=_valid(), now=now)
    again = _valid(email="ADA@example.org")
    with (
        pytest.raises(DuplicateSubscriberError, match="already subscribed"),
        db.session_scope(engine=engine) as session,
    ):
        add_subscriber(session=session, subscriber=again, now=now)
    with db.session_scope(engine=engine) as session:
        assert len(session.exec(select(Subscriber)).all()) == 1


def test_remove_deletes_subscriber_and_topics(engine: sa.Engine, now) -> None:  # type: ignore[no-untyped-def]
    with db.session_scope(engine=engine) as session:
        add_subscriber(session=session, subscriber=_valid(topics=["a", "b"]), now=now)
    with db.session_scope(engine=engine) as session:
        remove_subscriber(session=session, email="ada@example.org", now=now)
    with db.session_scope(engine=engine) as session:
        assert session.exec(select(TopicFilter)).all() == []
        with pytest.raises(SubscriberError, match="no subscriber"):
            remove_subscriber(session=session, email="ada@example.org", now=now)


CSV = r'''email,name,topics,timezone,send_at
ada@example.org,Ada,"""large language models"";reasoning",Europe/London,08:00
bad-address,Bob,diffusion,UTC,08:00
carol@example.org,Carol,diffusion,Mars/Base,08:00
dan@example.org,Dan,,UTC,08:00
erin@example.org,,"""unclosed",UTC,08:00
ADA@example.org,Ada again,x,UTC,08:00
fay@example.org,,pruning,,
'''


def _import(engine: sa.Engine, path: Path, now, **kw):  # type: ignore[no-untyped-def]
    return import_subscribers(
        engine=engine, path=path, now=now, default_timezone="UTC", default_send_at="07:00", **kw
    )


def test_csv_import_reports_every_bad_row_with_its_line_and_keeps_the_good(
    engine: sa.Engine,
    tmp_path: Path,
    now,  # type: ignore[no-untyped-def]
) -> None:
    path = tmp_path / "subs.csv"
    path.write_text(CSV)
    report = _import(engine, path, now)
    assert report.added == ["ada@example.org", "dan@example.org", "fay@example.org"]
    assert [(e.line, e.message.split(":")[0]) for e in report.errors] == [
        (3, "email"),
        (4, "timezone"),
        (6, "topic"),
        (7, "email"),
    ]
    assert "appears twice" in report.errors[-1].message
    with db.session_scope(engine=engine) as session:
        topics = topics_by_subscriber(session=session)
        fay = session.exec(select(Subscriber).where(Subscriber.email == "fay@example.org")).one()
    assert sorted(map(sorted, topics.values())) == [
        ['"large language models"', "reasoning"],
        ["pruning"],
    ]
    assert (fay.timezone, fay.send_at) == ("UTC", "07:00")


@pytest.mark.parametrize(
    ("refused", "says", "rows", "errors"),
    [
        # A quote left open swallowed every row after it into one reader's name, and
        # the import said it stored two: the file is refused where the quote opens.
        # A row with more fields than the header names is that row's error, and a
        # record whose quoted field holds a line break is named by its first line.
        (b'email,name,topics\nq1@example.org,A,x\nq2@example.org,"B,x\nq3@example.org,C,x\n',
         "from line 3 on",
         ("extra.csv", 'email,name\nok@example.org,"Ann\nLee"\nextra@example.org,Bo,Paris\n'
                       '"two\nlines@example",x,y\n'),
         [(4, "1 more field(s) than the header names"),
          (5, "1 more field(s) than the header names")]),
        # Bytes that are not UTF-8 are named by their line; a name that is no text
        # (0, false) is a mistake, not "no name".
        (b"email,name\na@example.org,Ann\nb@example.org,Ren\xe9e\n", "at line 3",
         ("names.jsonl", '{"email": "z@example.org", "name": 0}\n'
                         '{"email": "f@example.org", "name": false}\n'
                         '{"email": "ok@example.org", "name": ""}\n'),
         [(1, "name: must be text"), (2, "name: must be text")]),
    ],
)  # fmt: skip
def test_a_file_read_as_a_whole_is_refused_at_its_line_and_a_bad_row_named_alone(
    engine: sa.Engine,
    tmp_path: Path,
    now,  # type: ignore[no-untyped-def]
    refused: bytes,
    says: str,
    rows: tuple[str, str],
    errors: list[tuple[int, str]],
) -> None:
    broken = tmp_path / "broken.csv"
    broken.write_bytes(refused)
    with pytest.raises(ImportFileError, match=says) as info:
        _import(engine, broken, now)
    assert info.value.field == "line 3"
    with db.session_scope(engine=engine) as session:
        assert session.exec(select(Subscriber)).all() == []  # nothing stored
    path = tmp_path / rows[0]
    path.write_text(rows[1])
    report = _import(engine, path, now)
    assert report.added == ["ok@example.org"]
    assert [(e.line, e.message) for e in report.errors] == errors


def test_json_array_import_reports_lines_of_bad_items(
    engine: sa.Engine, tmp_path: Path, now
) -> None:  # type: ignore[no-untyped-def]
    items = [
        {"email": "ada@example.org", "topics": ["diffusion"]},
        {"email": "nope", "topics": ["x"]},
        "not an object",
        {"email": "bo@example.org", "topics": ["a"], "send_at": "9:30", "timezone": "Asia/Tokyo"},
    ]
    path = tmp_path / "subs.json"
    path.write_text(json.dumps(items, indent=2))
    report = _import(engine, path, now)
    assert report.added == ["ada@example.org", "bo@example.org"]
    text = path.read_text().splitlines()
    lines = [e.line for e in report.errors]
    assert '"email": "nope"' in text[lines[0]]  # the line after the item's "{"
    assert text[lines[1] - 1].strip().startswith('"not an object"')


def test_jsonl_import_and_skip_existing(engine: sa.Engine, tmp_path: Path, now) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "subs.jsonl"
    path.write_text('{"email": "ada@example.org", "topics": ["x"]}\n{broken\n')
    first = _import(engine, path, now)
    assert first.added == ["ada@example.org"]
    assert [(e.line, e.message[:12]) for e in first.errors] == [(2, "invalid JSON")]
    again = _import(engine, path, now, skip_existing=True)
    assert again.added == [] and again.skipped == ["ada@example.org"]
    refused = _import(engine, path, now)
    assert "already subscribed" in refused.errors[0].message


def test_json_lines_are_lines_and_odd_values_are_a_rows_problem(  # type: ignore[no-untyped-def]
    engine: sa.Engine, tmp_path: Path, now
) -> None:
    """A line ends at "\\n" only: a raw U+2028 inside a string (JSON allows it) no
    longer cuts a row in two and shifts every later line (a name folds it to a space);
    a number JSON can write but Python will not read (5,000 digits) and a dial of 0 are
    that row's errors, named with its line, and the rows around them go in."""
    path = tmp_path / "subs.jsonl"
    rows = [
        '{"email": "ann@example.org", "name": "Ann\u2028Lee", "topics": ["x"]}',  # raw U+2028
        '{"email": "bob@example.org", "topics": ["x"]}',
        '{"email": "cy@example.org", "dial": ' + "9" * 5000 + "}",
        '{"email": "di@example.org", "dial": 0}',
        '{"email": "eve@example.org", "dial": 4}',
    ]
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    report = _import(engine, path, now)
    assert report.added == ["ann@example.org", "bob@example.org", "eve@example.org"]
    assert [(e.line, e.message[:18]) for e in report.errors] == [
        (3, "invalid JSON: Exce"),
        (4, "dial: must be a wh"),
    ]
    with db.session_scope(engine=engine) as session:
        ann = session.exec(select(Subscriber).where(Subscriber.email == "ann@example.org")).one()
        assert ann.name == "Ann Lee"  # the separator folds to a space, as a line break does
    array = tmp_path / "subs.json"
    array.write_text('[{"email": "fay@example.org", "dial": ' + "9" * 5000 + "}]")
    with pytest.raises(SubscriberError, match="invalid JSON: Exceeds the limit"):
        _import(engine, array, now)


def test_csv_without_email_column_is_refused(engine: sa.Engine, tmp_path: Path, now) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "subs.csv"
    path.write_text("address,topics\na@b.org,x\n")
    with pytest.raises(SubscriberError, match="'email' column"):
        _import(engine, path, now)


def test_an_import_in_bulk_stores_whole_rows_and_later_adds_still_work(
    engine: sa.Engine,
    tmp_path: Path,
    now,  # type: ignore[no-untyped-def]
) -> None:
    """The bulk path (COPY on PostgreSQL, multi-row INSERT on SQLite) stores what the
    one-by-one path would: topics with their sentences, salts, events; ids stay in step."""
    path = tmp_path / "subs.csv"
    rows = ["email,name,topics,dial"]
    rows += [f"u{i}@example.org,,diffusion | Image models;speech,{1 + i % 5}" for i in range(2500)]
    path.write_text("\n".join(rows) + "\n")
    report = _import(engine, path, now)
    assert len(report.added) == 2500 and not report.errors
    later = subscribe(engine, email="later@example.org", topics=["x"], now=now)
    with db.session_scope(engine=engine) as session:
        subs = list(session.exec(select(Subscriber)))
        topics = topics_by_subscriber(session=session)
        added = session.exec(
            select(sa.func.count()).select_from(Event).where(Event.kind == "subscriber.added")
        ).one()
    assert len(subs) == 2501 and len({s.token_salt for s in subs}) == 2501
    assert all(s.token_salt and s.name is None for s in subs if s.email != "later@example.org")
    u7 = next(s for s in subs if s.email == "u7@example.org")
    assert (u7.dial, u7.timezone, u7.send_at, u7.status) == (3, "UTC", "07:00", "active")
    assert topics[u7.id] == ["diffusion | Image models", "speech"]
    assert later == max(s.id for s in subs) and added == 2501


def test_a_sign_up_racing_another_process_for_a_new_address_is_queued(
    engine, now, monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    """Two processes taking sign-ups for the same new address at once: the second to
    make its subscriber row is refused by the unique address, tries again, and finds
    the row: the confirmation is queued and the round goes on."""
    from newsletter import signups
    from newsletter.models import Delivery, DeliveryKind, SignUp, Subscriber, SubscriberStatus
    from newsletter.subscribers import validate_subscriber

    if engine.dialect.name == "sqlite":
        pytest.skip("on SQLite the sign-up's first write takes the file's lock: no such race")
    with db.session_scope(engine=engine) as session:
        new = validate_subscriber(
            email="new@example.org", topics=["diffusion"], timezone="UTC", send_at="08:00"
        )
        signups.hold(session=session, subscriber=new, now=now)
    real, calls = signups.new_row, []

    def the_other_process_first(**kwargs):  # type: ignore[no-untyped-def]
        calls.append(1)
        if len(calls) == 1:
            with db.session_scope(engine=engine) as other:
                real(session=other, email=kwargs["email"], status=SubscriberStatus.PENDING, now=now)
        return real(**kwargs)

    monkeypatch.setattr(signups, "new_row", the_other_process_first)
    assert signups.queue_confirmations(engine=engine, now=now, message_id_domain="x.example") == 1
    with db.session_scope(engine=engine) as session:
        (sub,) = session.exec(select(Subscriber))
        (mail,) = session.exec(select(Delivery))
        assert (mail.subscriber_id, mail.kind) == (sub.id, DeliveryKind.CONFIRM)
        assert session.exec(select(SignUp)).one().delivery_id == mail.id


def test_a_bulk_import_renews_postgresqls_statistics(
    engine: sa.Engine, tmp_path: Path, now
) -> None:  # type: ignore[no-untyped-def]
    """After a bulk load PostgreSQL would plan the next planning run's queries from
    statistics of the tables as they were before it: the import renews them."""
    import newsletter.importer as importer

    if engine.dialect.name != "postgresql":
        pytest.skip("SQLite keeps no statistics unless asked (and plans well without)")
    rows = importer.ANALYZE_AFTER  # the default a user gets: a list this long
    path = tmp_path / "list.csv"
    path.write_text(
        "email,topics\n" + "".join(f"s{i}@example.org,diffusion\n" for i in range(rows))
    )

    def analysed() -> set[str]:  # pg_stats: written by ANALYZE itself, not reported later
        with engine.connect() as conn:
            return set(conn.execute(sa.text(
                "SELECT DISTINCT tablename FROM pg_stats"
                " WHERE tablename IN ('subscribers', 'topic_filters')"
            )).scalars())  # fmt: skip

    assert analysed() == set()
    report = import_subscribers(
        engine=engine, path=path, now=now, default_timezone="UTC", default_send_at="08:00"
    )
    assert len(report.added) == rows
    assert analysed() == {"subscribers", "topic_filters"}

"""The attacks of issue #10, each reproduced against the running service, each failing safe.

Real processes (the CLI, ``newsletter serve`` and ``newsletter run``), real HTTP, a
real SMTP server, and the embedded default that a user gets: no secret key set.
"""

from __future__ import annotations

import asyncio
import contextlib
import email
import email.policy
import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa
from sqlmodel import select

from newsletter import db, tokens
from newsletter.config import describe, load_settings
from newsletter.health import WorkerHealth
from newsletter.links import Links
from newsletter.models import Delivery, Event, SignUp, Subscriber, TopicFilter
from newsletter.plan import plan_digests
from newsletter.service import supervised
from newsletter.signing import Signer
from newsletter.text import has_unsafe
from newsletter.web import create_app
from tests.conftest import CORPUS, make_settings
from tests.helpers import add_paper, deliver, live_server, runtime_for, subscribe
from tests.smtp_server import SMTPServer, free_port


def _env(home: Path, **extra: str) -> dict[str, str]:
    """The environment of a fresh install: nothing set but the home (no secret key)."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("NEWSLETTER_") and k != "DATABASE_URL"
    }
    return env | {"NEWSLETTER_HOME": str(home), **extra}


def _cli(home: Path, *args: str, ok: bool = True, **extra: str) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [sys.executable, "-m", "newsletter", *args],
        cwd=home,
        env=_env(home, **extra),
        capture_output=True,
        text=True,
        timeout=180,
    )
    if ok:
        assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc


@contextlib.contextmanager
def _process(
    home: Path, *args: str, port: int, output: list[str] | None = None, **extra: str
) -> Iterator[str]:
    """A long-running CLI command serving on ``port``; its base URL while it runs (and
    what it wrote, both streams, appended to ``output`` once it stopped)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "newsletter", *args],
        cwd=home,
        env=_env(home, **extra),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                httpx.get(url + "/healthz", timeout=1)
                break
            assert proc.poll() is None, proc.communicate()[1]
            time.sleep(0.1)
        yield url
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            said = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            said = proc.communicate()
        if output is not None:
            output.extend(said)


def _emls(home: Path) -> dict[str, email.message.EmailMessage]:
    found = {}
    for path in (home / "outbox").rglob("*.eml"):
        msg = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
        found[str(msg["To"]).rpartition("<")[2].strip(">")] = msg
    return found


def _links(msg: email.message.EmailMessage) -> list[str]:
    text = msg.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    return re.findall(r"http://127\.0\.0\.1:\d+/[a-z]+/\S+", text)


# --- 1. the embedded default signs with the generated key, in every process --------------


def test_default_install_signs_links_that_serve_accepts_and_empty_key_macs_are_refused(
    tmp_path: Path,
) -> None:
    port = free_port()
    base = {"NEWSLETTER_BASE_URL": f"http://127.0.0.1:{port}", "NEWSLETTER_CORPUS_DIR": str(CORPUS)}
    _cli(tmp_path, "db", "upgrade", **base)
    _cli(tmp_path, "ingest", **base)
    _cli(tmp_path, "subscribers", "add", "one@example.org", "-t", "diffusion", **base)
    _cli(tmp_path, "send", "--now", **base)
    _cli(tmp_path, "subscribers", "add", "two@example.org", "-t", "diffusion", **base)
    _cli(tmp_path, "send", "--now", "--workers", "2", **base)
    key_file = tmp_path / "data" / "secret_key"
    assert key_file.stat().st_mode & 0o077 == 0 and len(key_file.read_bytes().strip()) >= 32
    # `run` writes a third digest with its own worker and serves it on its own web server.
    run_port = free_port()
    _cli(
        tmp_path,
        "subscribers",
        "add",
        "three@example.org",
        "-t",
        "diffusion",
        "--send-at",
        "00:00",
        **base,
    )
    with _process(
        tmp_path,
        "run",
        port=run_port,
        NEWSLETTER_WEB_PORT=str(run_port),
        NEWSLETTER_PLAN_MINUTES="0.01",
        **base,
    ) as run_url:
        deadline = time.monotonic() + 60
        while "three@example.org" not in _emls(tmp_path) and time.monotonic() < deadline:
            time.sleep(0.2)
        three = _emls(tmp_path)["three@example.org"]
        for link in _links(three):
            path = httpx.URL(link).path
            assert httpx.get(run_url + path).status_code == 200, link
    messages = _emls(tmp_path)
    assert set(messages) == {"one@example.org", "two@example.org", "three@example.org"}
    said: list[str] = []
    with _process(tmp_path, "serve", "--port", str(port), port=port, output=said, **base) as url:
        for msg in messages.values():
            links = _links(msg)
            assert {httpx.URL(link).path.split("/")[1] for link in links} == {"u", "p", "d", "v"}
            for link in links:
                assert httpx.get(url + httpx.URL(link).path).status_code == 200, link
        # What the empty key used to sign: a stranger's links, computed from ids alone.
        forgeries = [
            ("1-1", "unsubscribe", "u"),
            ("1", "preferences", "p"),
            ("1-1", "archive", "d"),
            ("1-1", "confirm", "confirm"),
            ("1-1-1-0", "vote", "v"),
        ]
        for ident, purpose, prefix in forgeries:
            for salt in ("", "-"):
                mac = tokens._mac(key=b"", purpose=purpose, ident=ident, salt=salt)
                forged = f"{url}/{prefix}/{ident}.{mac}"
                assert httpx.get(forged).status_code == 404
                assert httpx.post(forged, data={"List-Unsubscribe": "One-Click"}).status_code in (
                    404,
                    405,
                )
    # The server's output names no link it served: each path is a reader's token.
    served = [httpx.URL(link).path for msg in messages.values() for link in _links(msg)]
    assert served and not [p for p in served if p in "".join(said)], "".join(said)[-2000:]
    engine = db.make_engine(f"sqlite:///{tmp_path / 'data' / 'newsletter.db'}")
    with db.session_scope(engine=engine) as session:
        assert {s.status for s in session.exec(select(Subscriber))} == {"active"}


def test_no_part_of_the_code_signs_or_accepts_with_an_empty_key() -> None:
    with pytest.raises(tokens.WeakKeyError):
        Links(base_url="https://x.example", key=b"")
    with pytest.raises(tokens.WeakKeyError):
        tokens.make_token(key=b"short", purpose="unsubscribe", ids=(1,), salt="ab")
    claim = tokens.read_token(
        f"1.{tokens._mac(key=b'', purpose='unsubscribe', ident='1', salt='ab')}"
    )
    assert claim is not None
    assert not tokens.verify(key=b"", purpose="unsubscribe", claim=claim, salt="ab")


# --- 2. one bad row never stops delivery ------------------------------------------------


def _insert_raw_subscriber(engine: sa.Engine, *, email_: str, name: str, now: datetime) -> int:
    """A row as an older version, or a hand edit, could have stored it: no validation."""
    with db.session_scope(engine=engine) as session:
        row = Subscriber(email=email_, name=name, created_at=now, updated_at=now)
        session.add(row)
        session.flush()
        session.add(TopicFilter(subscriber_id=row.id, query="diffusion", created_at=now))  # type: ignore[arg-type]
        return row.id  # type: ignore[return-value]


def test_a_row_that_cannot_be_rendered_fails_alone_and_the_batch_goes_out(
    tmp_path: Path,
) -> None:
    url = f"sqlite:///{tmp_path / 'data' / 'newsletter.db'}"
    engine = db.make_engine(url)
    db.upgrade(engine=engine)
    now = datetime.now(UTC)
    add_paper(
        engine, title="Diffusion 1", abstract="About diffusion.", seen=now - timedelta(hours=1)
    )
    for i in range(5):
        subscribe(engine, email=f"ok{i}@example.org", topics=["diffusion"], now=now)
    _insert_raw_subscriber(engine, email_="eve@example.org", name="Eve\x01", now=now)
    _insert_raw_subscriber(engine, email_="renée@example.org", name="Renée", now=now)
    server = SMTPServer().start()
    try:
        proc = _cli(
            tmp_path,
            "send",
            "--now",
            ok=False,
            DATABASE_URL=url,
            NEWSLETTER_DELIVERY="smtp",
            NEWSLETTER_SMTP_HOST="127.0.0.1",
            NEWSLETTER_SMTP_PORT=str(server.port),
        )
    finally:
        server.stop()
    assert proc.returncode == 1  # failures are reported, as for any failed digest
    assert sorted(server.handler.copies()) == [f"ok{i}@example.org" for i in range(5)]
    with db.session_scope(engine=engine) as session:
        rows = {d.to_address: d for d in session.exec(select(Delivery))}
    assert {rows[f"ok{i}@example.org"].status for i in range(5)} == {"sent"}
    for bad in ("eve@example.org", "renée@example.org"):
        assert rows[bad].status == "failed" and rows[bad].last_error, bad
        assert bad in proc.stderr
    assert "control character" in (rows["eve@example.org"].last_error or "")
    assert "non-ASCII" in (rows["renée@example.org"].last_error or "")


def test_rows_planning_cannot_read_leave_out_only_themselves(tmp_path: Path) -> None:
    """Rows written around the checks (by hand, by an older version, by a bug), each of
    which stopped all planning: a filter that no longer parses (the reader with no other
    topic is named, not sent everything; the one with another keeps it), a paper's
    sentence spans that do not decode, a topic lesson and a vote event that do not. The
    service's embedding step before planning stopped on the filter too."""
    from newsletter import embed
    from newsletter.embed.encoder import DIM, MODEL_NAME
    from newsletter.embed.store import pack
    from newsletter.models import PaperVector, TopicLesson

    url = f"sqlite:///{tmp_path / 'data' / 'newsletter.db'}"
    engine = db.make_engine(url)
    db.upgrade(engine=engine)
    now = datetime.now(UTC)
    settings = make_settings(tmp_path, url)
    pid = add_paper(engine, title="Diffusion 1", abstract="About diffusion. Twice.",
                    seen=now - timedelta(hours=1))  # fmt: skip
    good = subscribe(engine, email="good@example.org", topics=["diffusion"], now=now)
    mixed = subscribe(engine, email="mixed@example.org", topics=["diffusion", "speech"], now=now)
    bad = subscribe(
        engine, email="bad@example.org", topics=["quantum | Quantum computing"], now=now
    )
    with db.session_scope(engine=engine) as session:
        for sid, query in ((mixed, "speech"), (bad, "quantum")):
            row = session.exec(
                select(TopicFilter).where(
                    TopicFilter.subscriber_id == sid, TopicFilter.query == query
                )
            ).one()
            row.query = "diffusion AND ("  # as an older parser took it, or a hand edit
            session.add(row)
        unit = [1.0] + [0.0] * (DIM - 1)
        session.add(PaperVector(paper_id=pid, model=MODEL_NAME, text_hash="x",
                                vector=pack(__import__("numpy").array([unit])),
                                sentences=b"", spans="garbage", updated_at=now))  # fmt: skip
        session.add(TopicLesson(subscriber_id=good, query="diffusion", version=1, votes="x",
                                updated_at=now))  # fmt: skip
        session.add(Event(at=now, kind="feedback.vote", subscriber_id=good, detail="not json"))
        meh = json.dumps({"topic": "diffusion", "vote": "meh", "paper": pid})
        session.add(Event(at=now, kind="feedback.vote", subscriber_id=good, detail=meh))

    embed.embed_topics(engine=engine)  # before: FilterSyntaxError, every tick
    report = plan_digests(engine=engine, settings=settings, now=now, due_only=False, keep=True)
    assert sorted(d.email for d in report.planned) == ["good@example.org", "mixed@example.org"]
    assert report.unreadable == ["bad@example.org"]
    (mixed_digest,) = [d for d in report.planned if d.email == "mixed@example.org"]
    assert [m.paper_id for m in mixed_digest.ranked.matches] == [pid]


def test_a_snapshot_naming_no_paper_id_is_its_digests_failure_alone() -> None:
    from newsletter import snapshot

    item = {"topics": ["diffusion"], "terms": []}
    for bad in ("Infinity", "1e23", "-1", "true", "9223372036854775808", "2147483648"):
        with pytest.raises(snapshot.SnapshotError, match="not a digest's item list"):
            snapshot.decode(json.dumps([item]).replace("{", '{"id": ' + bad + ", ", 1))
    assert snapshot.decode(json.dumps([item | {"id": 7}]))[0].paper_id == 7
    assert snapshot.decode(json.dumps([item | {"id": 2**31 - 1}]))[0].paper_id == 2**31 - 1


@pytest.mark.parametrize(
    ("entrance", "value"),
    [("name", "Eve\x01"), ("name", "Eve\u202eevil"), ("email", "renée@example.org")],
)
def test_control_characters_and_non_ascii_mailboxes_are_refused_at_every_entrance(
    tmp_path: Path, entrance: str, value: str
) -> None:
    settings = make_settings(
        tmp_path, f"sqlite:///{tmp_path / 't.db'}", NEWSLETTER_ADMIN_TOKEN="a" * 40
    )
    engine = db.make_engine(settings.database_url)
    db.upgrade(engine=engine)
    fields = {"email": "ok@example.org", "name": "Ok"} | {entrance: value}
    port = free_port()
    with (
        live_server(create_app(runtime=runtime_for(settings, engine)), port) as url,
        httpx.Client(base_url=url) as client,
    ):
        page = client.get("/subscribe").text
        csrf = re.search(r'name="csrf" value="([^"]+)"', page).group(1)  # type: ignore[union-attr]
        rest = {"topics": "", "timezone": "UTC", "send_at": "08:00", "csrf": csrf}
        form = client.post("/subscribe", data=fields | rest)
        assert form.status_code == 422 and f'id="{entrance}-error"' in form.text
        api = client.post(
            "/api/subscribers", json=fields, headers={"Authorization": "Bearer " + "a" * 40}
        )
        assert api.status_code == 422 and api.json()["field"] == entrance
    home = tmp_path / "cli"
    home.mkdir()
    _cli(home, "db", "upgrade")
    args = ["subscribers", "add", fields["email"], "-t", "x", "--name", fields["name"]]
    proc = _cli(home, *args, ok=False)
    assert proc.returncode == 1 and f"{entrance}:" in proc.stderr
    (home / "in.json").write_text(json.dumps([fields | {"topics": ["x"]}]))
    imported = _cli(home, "subscribers", "import", "in.json", ok=False)
    assert "in.json:1:" in imported.stderr and "imported 0 subscribers" in imported.stdout
    with db.session_scope(engine=engine) as session:
        assert session.exec(select(Subscriber)).all() == []


def test_a_worker_that_dies_is_logged_restarted_and_reported_by_healthz(
    caplog: pytest.LogCaptureFixture,
) -> None:
    health = WorkerHealth(poll_seconds=0.01, grace_seconds=0.05)
    runs: list[str] = []
    problems: list[str | None] = []

    async def worker() -> None:
        problems.append(health.problem())
        runs.append("run")
        if len(runs) < 3:
            raise sa.exc.OperationalError("SELECT 1", {}, Exception("database is locked"))
        health.beat()

    async def main() -> None:
        await supervised(worker, stop=asyncio.Event(), health=health)

    with caplog.at_level(logging.ERROR, logger="newsletter.service"):
        started = time.monotonic()
        asyncio.run(main())
    assert runs == ["run", "run", "run"] and time.monotonic() - started >= 3  # 1 s, then 2 s
    assert problems[1] is not None and "died" in problems[1]
    assert [r.message for r in caplog.records] == ["delivery worker died; restarting"] * 2
    assert health.problem() is None  # a good round clears it
    time.sleep(0.06)
    assert "stalled" in (health.problem() or "")


# --- 3. old links never act on whoever gets a reused id ---------------------------------


def test_links_of_a_removed_subscriber_do_nothing_to_the_next_one_with_the_same_id(
    tmp_path: Path, now: datetime
) -> None:
    settings = make_settings(
        tmp_path, f"sqlite:///{tmp_path / 't.db'}", NEWSLETTER_BASE_URL="http://127.0.0.1:1"
    )
    engine = db.make_engine(settings.database_url)
    db.upgrade(engine=engine)
    add_paper(engine, title="Diffusion", abstract="diffusion", seen=now - timedelta(hours=1))
    first = subscribe(engine, email="gone@example.org", topics=["diffusion"], now=now)
    plan_digests(engine=engine, settings=settings, now=now, due_only=False)
    from newsletter.backends.memory import MemoryBackend

    backend = MemoryBackend()
    deliver(engine, settings, backend, now)
    old = re.findall(rb"/[upd]/[0-9-]+\.[A-Za-z0-9_-]+", backend.sent[0].data)
    assert len(set(old)) == 3
    with db.session_scope(engine=engine) as session:
        session.delete(session.get(Subscriber, first))
    second = subscribe(engine, email="new@example.org", topics=["quantum"], now=now)
    assert second == first, "SQLite gave the id again"
    port = free_port()
    with live_server(create_app(runtime=runtime_for(settings, engine)), port) as url:
        for path in {p.decode() for p in old}:
            assert httpx.get(url + path).status_code == 404
            httpx.post(url + path, data={"List-Unsubscribe": "One-Click"})
    with db.session_scope(engine=engine) as session:
        row = session.get(Subscriber, second)
        assert row is not None and row.status == "active"


def test_revoking_links_turns_every_old_link_off(tmp_path: Path) -> None:
    port = free_port()
    base = {"NEWSLETTER_BASE_URL": f"http://127.0.0.1:{port}", "NEWSLETTER_CORPUS_DIR": str(CORPUS)}
    _cli(tmp_path, "db", "upgrade", **base)
    _cli(tmp_path, "ingest", **base)
    _cli(tmp_path, "subscribers", "add", "leak@example.org", "-t", "diffusion", **base)
    _cli(tmp_path, "send", "--now", **base)
    links = _links(_emls(tmp_path)["leak@example.org"])
    _cli(tmp_path, "subscribers", "revoke-links", "leak@example.org", **base)
    with _process(tmp_path, "serve", "--port", str(port), port=port, **base) as url:
        for link in links:
            assert httpx.get(url + httpx.URL(link).path).status_code == 404


# --- 4, 5, 10. sign-ups: same work for every address, nothing changed before a click ------


@pytest.fixture
def signup_site(tmp_path: Path) -> Iterator[tuple[str, sa.Engine, Path]]:
    port = free_port()
    settings = make_settings(
        tmp_path, f"sqlite:///{tmp_path / 't.db'}", NEWSLETTER_BASE_URL=f"http://127.0.0.1:{port}"
    )
    engine = db.make_engine(settings.database_url)
    db.upgrade(engine=engine)
    with live_server(create_app(runtime=runtime_for(settings, engine)), port) as url:
        yield url, engine, settings.outbox_dir


def _sign_up(url: str, engine: sa.Engine, **fields: str) -> httpx.Response:
    from tests.helpers import signups_settled

    with httpx.Client(base_url=url) as client:
        csrf = re.search(r'name="csrf" value="([^"]+)"', client.get("/subscribe").text).group(1)  # type: ignore[union-attr]
        data = {"name": "", "topics": "", "timezone": "UTC", "send_at": "08:00"} | fields
        reply = client.post("/subscribe", data=data | {"csrf": csrf})
    signups_settled(engine)
    return reply


def test_a_sign_up_does_the_same_database_work_whatever_the_address(
    signup_site: tuple[str, sa.Engine, Path], now: datetime
) -> None:
    url, engine, _ = signup_site
    subscribe(engine, email="active@example.org", topics=["x"], now=now)
    statements: list[str] = []

    def seen(_conn, _cursor, statement, _params, _context, _many):  # type: ignore[no-untyped-def]
        try:  # the request's own work runs on the event loop; queueing after it does not
            asyncio.get_running_loop()
        except RuntimeError:
            return
        statements.append(statement)

    sa.event.listen(engine, "before_cursor_execute", seen)
    try:
        work = {}
        for address in ("active@example.org", "brand-new@example.org"):
            statements.clear()
            reply = _sign_up(url, engine, email=address)
            work[address] = list(statements)
            assert reply.status_code == 200
    finally:
        sa.event.remove(engine, "before_cursor_execute", seen)
    assert work["active@example.org"] == work["brand-new@example.org"]
    assert len(work["active@example.org"]) == 1 and "INSERT INTO signups" in statements[0]


def test_a_strangers_sign_up_changes_nothing_about_an_unsubscribed_person(
    signup_site: tuple[str, sa.Engine, Path], now: datetime
) -> None:
    url, engine, outbox = signup_site
    sid = subscribe(
        engine, email="ann@example.org", topics=["diffusion", "pruning"], name="Ann", now=now
    )
    with db.session_scope(engine=engine) as session:
        session.get(Subscriber, sid).status = "unsubscribed"  # type: ignore[union-attr]
    name = "Visit https://evil.example/win now " + "x" * 150
    assert (
        _sign_up(url, engine, email="ann@example.org", name=name, topics="crypto scams").status_code
        == 200
    )
    with db.session_scope(engine=engine) as session:
        row = session.get(Subscriber, sid)
        assert (row.name, row.status) == ("Ann", "unsubscribed")  # type: ignore[union-attr]
        topics = [
            t.query
            for t in session.exec(select(TopicFilter).where(TopicFilter.subscriber_id == sid))
        ]
    assert topics == ["diffusion", "pruning"]
    # The confirmation goes to Ann, without the stranger's words.
    from newsletter.backends.file import FileBackend

    settings = make_settings(outbox.parent, str(engine.url))
    deliver(engine, settings, FileBackend(directory=outbox), datetime.now(UTC))
    (eml,) = list(outbox.rglob("*.eml"))
    text = eml.read_text()
    assert "evil.example" not in text and "xxxxx" not in text and "To: ann@example.org" in text
    # Unconfirmed, it expires: Ann's row, topics and history stay.
    from newsletter.signups import expire

    with db.session_scope(engine=engine) as session:
        later = datetime.now(UTC) + timedelta(hours=49)
        assert expire(session=session, now=later, hours=48) == 1
    with db.session_scope(engine=engine) as session:
        row = session.get(Subscriber, sid)
        assert row is not None and (row.name, row.status) == ("Ann", "unsubscribed")
        assert session.exec(select(Event).where(Event.subscriber_id == sid)).all()
        assert session.exec(select(SignUp)).all() == []


# --- 6, 7. imports and numbers: no traceback, nothing half-stored -------------------------


def test_a_json_file_broken_in_its_third_item_stores_nothing(tmp_path: Path) -> None:
    _cli(tmp_path, "db", "upgrade")
    good = [json.dumps({"email": f"a{i}@example.org", "topics": ["x"]}) for i in range(2)]
    (tmp_path / "subs.json").write_text("[" + ",\n".join(good) + ",\n{broken}\n]\n")
    proc = _cli(tmp_path, "subscribers", "import", "subs.json", ok=False)
    assert proc.returncode == 1 and "subs.json:3: invalid JSON" in proc.stderr
    assert "imported nothing" in proc.stdout
    assert "0 subscribers" in _cli(tmp_path, "subscribers", "list").stdout


@pytest.mark.parametrize(
    ("name", "content", "says"),
    [
        ("sup.json", json.dumps([{"email": "a@example.org", "send_at": "²:00"}]), ":1: send_at"),
        ("big.csv", "email,name\na@example.org," + "x" * 140_000 + "\n", "not readable as CSV"),
        ("deep.json", "[" * 100_000 + "]" * 100_000, "nested too deeply"),
        ("surrogate.json", '[{"email": "a@example.org", "name": "\\ud800"}]', ":1: name"),
        ("topic.json", '[{"email": "a@example.org", "topics": [1, {}]}]', ":1: topic"),
    ],
)
def test_hostile_import_files_get_one_line_per_problem_and_no_traceback(
    tmp_path: Path, name: str, content: str, says: str
) -> None:
    _cli(tmp_path, "db", "upgrade")
    (tmp_path / name).write_text(content, encoding="utf-8", errors="surrogatepass")
    proc = _cli(tmp_path, "subscribers", "import", name, ok=False)
    assert proc.returncode == 1 and says in proc.stderr, proc.stderr
    assert "imported" in proc.stdout


def test_unicode_digits_get_a_4xx_naming_the_field_with_the_page_headers(
    tmp_path: Path, now: datetime
) -> None:
    settings = make_settings(
        tmp_path, f"sqlite:///{tmp_path / 't.db'}", NEWSLETTER_ADMIN_TOKEN="a" * 40
    )
    engine = db.make_engine(settings.database_url)
    db.upgrade(engine=engine)
    sid = subscribe(engine, email="u@example.org", topics=["x"], now=now)
    auth = {"Authorization": "Bearer " + "a" * 40}
    port = free_port()
    with (
        live_server(create_app(runtime=runtime_for(settings, engine)), port) as url,
        httpx.Client(base_url=url) as client,
    ):
        csrf = re.search(r'name="csrf" value="([^"]+)"', client.get("/subscribe").text).group(1)  # type: ignore[union-attr]
        form = {"email": "v@example.org", "topics": "", "timezone": "UTC", "csrf": csrf}
        replies = [
            client.post("/subscribe", data=form | {"send_at": "²:00"}),
            client.post("/subscribe", data=form | {"send_at": "08:00", "csrf": "².x"}),
            client.get("/api/subscribers/%C2%B2", headers=auth),
            client.get("/api/subscribers?limit=%C2%B2", headers=auth),
            client.patch(
                f"/api/subscribers/{sid}", headers=auth, json={"cadence": "weekly", "weekday": "²"}
            ),
            client.post(
                "/api/subscribers",
                headers=auth | {"Content-Type": "application/json"},
                content="[" * 50_000 + "]" * 50_000,
            ),
        ]
    for reply in replies:
        assert 400 <= reply.status_code < 500, (reply.request.url, reply.status_code)
        assert reply.headers["referrer-policy"] == "no-referrer"
        assert reply.headers["x-content-type-options"] == "nosniff"
    assert replies[0].status_code == 422 and 'id="send_at-error"' in replies[0].text
    assert replies[4].json()["field"] == "weekday"
    home = tmp_path / "cli"
    home.mkdir()
    _cli(home, "db", "upgrade")
    proc = _cli(
        home, "subscribers", "add", "w@example.org", "-t", "x", "--send-at", "²:00", ok=False
    )
    assert proc.returncode == 1 and proc.stderr.strip() == (
        "error: send_at: expected a time HH:MM, got '²:00'"
    )


# --- 8, 9. forwarded addresses and Host headers from a client are not believed ------------


def test_spoofed_forwarded_for_does_not_escape_the_rate_limit_nor_host_the_redirect(
    tmp_path: Path,
) -> None:
    port = free_port()
    base = {"NEWSLETTER_BASE_URL": "https://papers.example"}
    _cli(tmp_path, "db", "upgrade", **base)
    with _process(tmp_path, "serve", "--port", str(port), port=port, **base) as url:
        codes = []
        with httpx.Client(base_url=url) as client:
            for i in range(8):
                page = client.get("/subscribe").text
                csrf = re.search(r'name="csrf" value="([^"]+)"', page).group(1)  # type: ignore[union-attr]
                reply = client.post(
                    "/subscribe",
                    headers={"X-Forwarded-For": f"203.0.113.{i}"},
                    data={
                        "email": f"s{i}@example.org",
                        "topics": "",
                        "timezone": "UTC",
                        "send_at": "08:00",
                        "csrf": csrf,
                    },
                )
                codes.append(reply.status_code)
            moved = client.get("/subscribe/", headers={"Host": "evil.example"})
    assert codes == [200] * 5 + [429] * 3
    assert moved.status_code == 308
    assert moved.headers["location"] == "https://papers.example/subscribe"


def test_sign_ups_from_one_ipv6_network_share_one_limit(tmp_path: Path) -> None:
    """Any VPS has a /64 of IPv6 addresses to rotate through: the limit is kept per /64,
    so the sixth sign-up from it is refused whatever address it came from, and another
    network is not held back (behind a trusted proxy that says who the client is)."""
    port = free_port()
    env = {
        "NEWSLETTER_BASE_URL": "https://papers.example",
        "NEWSLETTER_TRUSTED_PROXIES": "127.0.0.1",
    }
    _cli(tmp_path, "db", "upgrade", **env)
    with _process(tmp_path, "serve", "--port", str(port), port=port, **env) as url:
        codes = []
        with httpx.Client(base_url=url) as client:
            for i, host in enumerate([f"2001:db8::{k}" for k in range(1, 8)] + ["2001:db8:0:1::1"]):
                page = client.get("/subscribe").text
                csrf = re.search(r'name="csrf" value="([^"]+)"', page).group(1)  # type: ignore[union-attr]
                reply = client.post(
                    "/subscribe",
                    headers={"X-Forwarded-For": host},
                    data={"email": f"v{i}@example.org", "topics": "", "timezone": "UTC",
                          "send_at": "08:00", "csrf": csrf},
                )  # fmt: skip
                codes.append(reply.status_code)
    assert codes == [200] * 5 + [429] * 2 + [200]


def test_the_rate_limit_forgets_idle_clients_and_keeps_a_bounded_number() -> None:
    from newsletter.web.forms import RateLimit, client_key

    assert client_key("2001:db8::1") == client_key("2001:db8::ffff:1") == "2001:db8::/64"
    assert client_key("::ffff:192.0.2.7") == "192.0.2.7" and client_key("unknown") == "unknown"
    limit = RateLimit(limit=1, window=10)
    limit.KEYS = 100
    assert all(limit.allow(f"k{i}", now=0.0) for i in range(1000))
    assert len(limit._events) == 100  # the oldest forgotten, at no cost to the others
    assert not limit.allow("k999", now=1.0)  # the recent ones are still held
    assert limit.allow("k999", now=11.0) and limit.allow("new", now=30.0)
    assert len(limit._events) == 1  # idle ones go as new ones come


def test_trusted_proxies_are_believed() -> None:
    settings = load_settings(
        environ={"NEWSLETTER_TRUSTED_PROXIES": "10.0.0.1, 192.0.2.0/24"},
        dotenv_path=Path("/nonexistent"),
    )
    from newsletter.service import proxy_options

    assert proxy_options(settings) == {
        "proxy_headers": True,
        "forwarded_allow_ips": "10.0.0.1,192.0.2.0/24",
    }


# --- 11, 12. bounded digests, safe terminals, file names that fit ----------------------


def test_a_digest_stays_under_gmails_clip_whatever_the_subscriber_stored(
    tmp_path: Path, now: datetime
) -> None:
    settings = make_settings(tmp_path, f"sqlite:///{tmp_path / 't.db'}")
    engine = db.make_engine(settings.database_url)
    db.upgrade(engine=engine)
    words = " ".join(f"w{i}" for i in range(300))
    for i in range(25):
        add_paper(
            engine, title=f"Paper {i} " + words[:900], abstract=words, seen=now - timedelta(hours=1)
        )
    sid = subscribe(engine, email="many@example.org", topics=["w1"], now=now)
    with db.session_scope(engine=engine) as session:  # as an older version let them store
        for k in range(50):
            query = " OR ".join(f"w{j}" for j in range(k, k + 40))
            session.add(TopicFilter(subscriber_id=sid, query=query, created_at=now))
    plan_digests(engine=engine, settings=settings, now=now, due_only=False)
    from newsletter.backends.memory import MemoryBackend

    backend = MemoryBackend()
    deliver(engine, settings, backend, now)
    (message,) = backend.sent
    html = (message.html or "").encode()
    assert len(html) < 100_000
    assert html.find(b"/u/") > 0  # the unsubscribe link is in it, before the clip
    assert b"more paper" in html


def test_refused_topics_beyond_the_bounds(tmp_path: Path) -> None:
    from newsletter.errors import SubscriberError
    from newsletter.subscribers import validate_subscriber

    fields = {"email": "a@example.org", "timezone": "UTC", "send_at": "08:00"}
    with pytest.raises(SubscriberError, match="at most 20 topics"):
        validate_subscriber(**fields, topics=[f"t{i}" for i in range(21)])
    with pytest.raises(SubscriberError, match="at most 200 characters"):
        validate_subscriber(**fields, topics=["x" * 201])
    # Repeats of one filter are one topic, within reason; a list longer than that is
    # refused before any entry is parsed (a broken first entry is not what it says).
    assert validate_subscriber(**fields, topics=["t"] * 100).topics == ("t",)
    with pytest.raises(SubscriberError, match="at most 20 topics"):
        validate_subscriber(**fields, topics=["title:(", *(["t"] * 100)])


def test_terminal_escapes_and_long_addresses_are_harmless(tmp_path: Path, now: datetime) -> None:
    _cli(tmp_path, "db", "upgrade", NEWSLETTER_CORPUS_DIR=str(CORPUS))
    _cli(tmp_path, "ingest", NEWSLETTER_CORPUS_DIR=str(CORPUS))
    engine = db.make_engine(f"sqlite:///{tmp_path / 'data' / 'newsletter.db'}")
    _insert_raw_subscriber(
        engine, email_="esc@example.org", name="\x1b[2J\x1b]0;pwned\x07", now=now
    )
    listed = _cli(tmp_path, "subscribers", "list").stdout
    assert "\x1b" not in listed and "\\x1b[2J" in listed
    long = "a" * 64 + "@" + ".".join(["b" * 63, "c" * 63, "d" * 50]) + ".org"
    assert len(long) > 240
    _cli(tmp_path, "subscribers", "add", long, "-t", "diffusion")
    _cli(tmp_path, "send", "--now", ok=False)  # the raw row above fails alone (its name)
    written = [p.name for p in (tmp_path / "outbox").rglob("*.eml")]
    assert any(name.startswith("a" * 60) for name in written)
    assert all(len(name.encode()) < 255 for name in written)
    # A relay's reply (stored by an older release, or by hand), a C1 CSI and a bidi
    # override in a name: never acted on by the terminal, never read as rich markup.
    reply = "550 \x1b[2J\x1b]8;;http://evil/\x07click [link=http://evil.example/]x[/link]"
    with db.session_scope(engine=engine) as session:
        session.execute(sa.update(Delivery).values(last_error=reply))
        session.execute(sa.update(Subscriber).values(name="Al\x9b2J\u202eice"))
    shown = _cli(tmp_path, "deliveries").stdout
    assert "\x1b" not in shown and "\\x1b[2J" in shown and "[link=http://evi" in shown
    for args in (("deliveries", "--json"), ("subscribers", "list", "--json")):
        printed = _cli(tmp_path, *args).stdout
        assert not has_unsafe(printed.replace("\n", "")), args
        assert json.loads(printed)  # the same JSON, escaped
    assert {r["name"] for r in json.loads(printed)} == {"Al\x9b2J\u202eice"}


def test_log_lines_escape_what_they_quote() -> None:
    """A stored filter or a relay's reply quoted in a log line can neither forge a line of
    its own nor drive the terminal the log is read on, in either format."""
    from newsletter.logs import JsonFormatter, TextFormatter

    record = logging.makeLogRecord(
        {"msg": "cannot parse %r", "args": ("x\x1b[2J\n2026-01-01T00:00:00 error FORGED",),
         "levelname": "WARNING", "name": "newsletter.plan", "topic": "\x9b31m\u202eevil"}
    )  # fmt: skip
    text = TextFormatter().format(record)
    assert "\n" not in text and not has_unsafe(text) and "\\x1b[2J" in text
    line = JsonFormatter().format(record)
    assert "\n" not in line and not has_unsafe(line)
    assert json.loads(line)["topic"] == "\x9b31m\u202eevil"


# --- 13, 14. broken databases and hostile corpus files -------------------------------------


def test_a_corrupt_database_gives_one_line_errors_and_an_honest_healthz(tmp_path: Path) -> None:
    port = free_port()
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "newsletter.db").write_bytes(b"this is not a database" * 100)
    for args in (("stats",), ("subscribers", "list"), ("db", "upgrade"), ("ingest",)):
        proc = _cli(tmp_path, *args, ok=False)
        assert proc.returncode == 1 and proc.stderr.startswith("error: database:"), args
        assert len(proc.stderr.strip().splitlines()) == 1
    with _process(tmp_path, "serve", "--port", str(port), port=port) as url:
        health = httpx.get(url + "/healthz")
        metrics = httpx.get(url + "/metrics")
    # Unavailable, and no more: the reason (hosts, users, paths) is for the log only.
    assert health.status_code == 503 and health.json()["database"] == "unavailable"
    assert "not a database" not in health.text and str(tmp_path) not in health.text
    assert metrics.status_code == 503


def test_damaged_pages_make_healthz_and_metrics_say_503(tmp_path: Path, now: datetime) -> None:
    path = tmp_path / "t.db"
    settings = make_settings(tmp_path, f"sqlite:///{path}")
    engine = db.make_engine(settings.database_url)
    db.upgrade(engine=engine)
    for i in range(3000):
        if i % 500 == 0:
            subscribe(engine, email=f"d{i}@example.org", topics=["x"], now=now)
    with db.session_scope(engine=engine) as session:
        session.add_all(Event(at=now, kind="x", detail="{}" + "y" * 200) for _ in range(3000))
    with engine.connect() as conn:
        conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
    engine.dispose()
    data = bytearray(path.read_bytes())
    for page in range(2, len(data) // 4096):  # every page but the schema's
        data[page * 4096 : page * 4096 + 64] = b"\xff" * 64
    path.write_bytes(bytes(data))
    port = free_port()
    with live_server(
        create_app(runtime=runtime_for(settings, db.make_engine(str(engine.url)))), port
    ) as url:
        assert httpx.get(url + "/healthz").status_code == 503
        metrics = httpx.get(url + "/metrics")
    assert metrics.status_code == 503 and "Traceback" not in metrics.text


def test_an_endless_corpus_file_is_refused_without_reading_it_all(tmp_path: Path) -> None:
    _cli(tmp_path, "db", "upgrade")
    started = time.monotonic()
    proc = _cli(tmp_path, "ingest", "/dev/zero", ok=False, NEWSLETTER_CORPUS_MAX_MB="1")
    assert proc.returncode == 1 and "larger than 1 MiB" in proc.stderr
    assert time.monotonic() - started < 30


def test_temporary_files_from_a_failed_write_do_not_stay(tmp_path: Path) -> None:
    from newsletter.backends.base import OutgoingMessage
    from newsletter.backends.file import FileBackend
    from newsletter.errors import DeliveryError

    backend = FileBackend(directory=tmp_path / "outbox")
    message = OutgoingMessage(
        message_id="<m@x>",
        sender="a@x.example",
        recipients=("b@x.example",),
        data=b"x\r\n",
        edition=datetime(2026, 1, 1).date(),
    )
    target = backend.path_for(message)
    target.mkdir(parents=True)  # the .eml cannot replace a directory: the write fails
    stale = target.parent / ".old.eml.tmp"
    stale.write_bytes(b"half")
    os.utime(stale, (time.time() - 3600, time.time() - 3600))

    async def send() -> None:
        async with backend:
            with pytest.raises(DeliveryError):
                await backend.send(message)

    asyncio.run(send())
    assert [p.name for p in target.parent.iterdir()] == [target.name]  # no .tmp, old or new


# --- from a read of the code ------------------------------------------------------------


def test_secrets_stay_out_of_reprs_and_config_output(tmp_path: Path) -> None:
    env = {
        "NEWSLETTER_SECRET_KEY": "s" * 40,
        "NEWSLETTER_ADMIN_TOKEN": "t" * 40,
        "NEWSLETTER_SMTP_PASSWORD": "hunter2hunter2",
        "DATABASE_URL": "postgresql+psycopg://user:pa55word@db.example/news",
        "NEWSLETTER_POSTMARK_WEBHOOK_SECRET": "w" * 40,
        "NEWSLETTER_MAILGUN_SIGNING_KEY": "key-mailgun-secret",
    }
    secrets = ("s" * 40, "t" * 40, "hunter2hunter2", "pa55word", "w" * 40, "key-mailgun-secret")
    settings = load_settings(environ=env, dotenv_path=tmp_path / "none")
    shown = repr(settings) + json.dumps(describe(settings))
    for secret in secrets:
        assert secret not in shown
    proc = _cli(tmp_path, "config", **env)
    for secret in secrets:
        assert secret not in proc.stdout + proc.stderr
    assert "user:***@db.example" in proc.stdout
    # libpq also takes the password as a query parameter
    in_query = env | {"DATABASE_URL": "postgresql+psycopg://u@db.example/n?sslmode=require"
                      "&password=qu3ryPass&sslpassword=k3yPass"}  # fmt: skip
    shown = repr(load_settings(environ=in_query, dotenv_path=tmp_path / "none"))
    proc = _cli(tmp_path, "config", **in_query)
    for secret in ("qu3ryPass", "k3yPass"):
        assert secret not in shown + proc.stdout + proc.stderr
    assert "n?password=***&sslmode=require&sslpassword=***" in proc.stdout  # SQLAlchemy's order
    signer = Signer(domain=b"x.example", selector=b"s", key=b"-----BEGIN PRIVATE KEY-----xyz")
    assert "PRIVATE" not in repr(signer)
    from newsletter.bounces.process import BounceAddress
    from newsletter.bounces.webhooks import MailgunVerifier

    shown = repr(BounceAddress("bounces", "b.example", b"s" * 40)) + repr(
        MailgunVerifier(key="key-mailgun-secret")
    )
    assert "s" * 40 not in shown and "key-mailgun-secret" not in shown

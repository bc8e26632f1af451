"""Bounces and complaints that arrive after the relay said yes: VERP return paths in the
real SMTP envelope, then a corpus of real-shaped reports (tests/fixtures/bounces/)
through ``newsletter bounces process`` in a real process, with the subscribers' state
and the ledger's events asserted."""

from __future__ import annotations

import contextlib
import email.utils
import json
import os
import smtplib
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlmodel import select

from newsletter import db
from newsletter.backends.smtp import SMTPBackend
from newsletter.bounces import verp
from newsletter.bounces.classify import parse
from newsletter.metrics import prometheus_text
from newsletter.models import Delivery, Event, Subscriber
from newsletter.plan import plan_digests
from newsletter.report import daily_figures, report_text
from tests.conftest import make_settings
from tests.helpers import add_paper, deliver, subscribe
from tests.smtp_server import SMTPServer, free_port
from tests.test_cli import run

FIXTURES = Path(__file__).parent / "fixtures" / "bounces"
NOW = datetime(2026, 11, 23, 9, 0, tzinfo=UTC)
DOMAIN = "bounce.papers.example"
KEY = "k" * 40
# A suppression is counted with the unsubscribes too (source "bounce").
HARD = ["bounce.hard", "subscriber.suppressed", "subscriber.unsubscribed"]
# fixture -> (status afterwards, the events it leaves, soft bounces counted)
EXPECTED = {
    "postfix_hard": ("suppressed", HARD, 0),
    "exim_hard": ("suppressed", HARD, 0),
    "gmail_hard": ("suppressed", HARD, 0),
    "ses_dsn": ("suppressed", HARD, 0),
    "exchange_dsn": ("suppressed", HARD, 0),  # no VERP
    "mailbox_full": ("active", ["bounce.soft"], 1),
    "expired_4xx": ("active", ["bounce.soft"], 1),
    "delayed": ("active", [], 0),
    "out_of_office": ("active", [], 0),
    "arf_complaint": ("unsubscribed", ["bounce.complaint", "subscriber.unsubscribed"], 0),
    "forged_verp": ("active", [], 0),
    "never_sent": ("active", [], 0),
    "unrecognised": ("active", [], 0),
    "dmarc_rejected": ("active", ["bounce.rejected"], 0),  # our fault, not the address's
    # A refusal of us, not of the address, in a bounce no standard shapes (a blocklist or
    # a rate limit on our relay would have suppressed the whole list), or a DSN about our
    # own sender address (5.1.8: our bounce domain's DNS broken)
    "exim_rate_limited": ("active", ["bounce.rejected"], 0),
    "exim_blocklisted": ("active", ["bounce.rejected"], 0),
    "sender_domain_dsn": ("active", ["bounce.rejected"], 0),
    "arf_not_spam": ("active", [], 0),
    "broken_headers": ("suppressed", HARD, 0),  # headers no parser likes, still read
}


def _settings(tmp_path: Path, url: str, **env: str):  # type: ignore[no-untyped-def]
    return make_settings(
        tmp_path, url, NEWSLETTER_BOUNCE_DOMAIN=DOMAIN, NEWSLETTER_SECRET_KEY=KEY, **env
    )


def _sent(tmp_path: Path, url: str, emails: list[str]):  # type: ignore[no-untyped-def]
    """One digest delivered over SMTP to each address; the accepted messages by recipient."""
    engine = db.make_engine(url)
    db.upgrade(engine=engine)
    add_paper(
        engine, title="Diffusion at scale", abstract="Diffusion.", seen=NOW - timedelta(hours=1)
    )
    for address in emails:
        subscribe(engine, email=address, topics=["diffusion"], now=NOW)
    server = SMTPServer().start()
    try:
        settings = _settings(
            tmp_path,
            url,
            NEWSLETTER_DELIVERY="smtp",
            NEWSLETTER_SMTP_HOST="127.0.0.1",
            NEWSLETTER_SMTP_PORT=str(server.port),
        )
        plan_digests(engine=engine, settings=settings, now=NOW, due_only=False)
        deliver(engine, settings, SMTPBackend(settings=settings.smtp), NOW)
        accepted = {a.recipient: a for a in server.handler.accepted}
    finally:
        server.stop()
    assert sorted(accepted) == sorted(emails)
    return engine, accepted


def _state(engine: sa.Engine, address: str) -> tuple[str, list[str], int]:
    with db.session_scope(engine=engine) as session:
        row = session.exec(select(Subscriber).where(Subscriber.email == address)).one()
        kinds = [
            e.kind
            for e in session.exec(
                select(Event).where(Event.subscriber_id == row.id).order_by(Event.id)  # type: ignore[arg-type]
            )
            if e.kind.startswith(("bounce.", "subscriber.s", "subscriber.u"))
        ]
        return row.status, kinds, row.soft_bounces


def _operator_events(engine: sa.Engine) -> list[dict[str, str]]:
    with db.session_scope(engine=engine) as session:
        return [
            {"kind": e.kind, **json.loads(e.detail)}
            for e in session.exec(select(Event).where(Event.subscriber_id.is_(None)))  # type: ignore[union-attr]
            if e.kind in ("bounce.unmatched", "bounce.refused")
        ]


def test_the_return_path_is_signed_per_digest_and_off_by_default(
    tmp_path: Path, database_url: str
) -> None:
    engine, accepted = _sent(tmp_path, database_url, ["ada@example.org"])
    mail_from = accepted["ada@example.org"].mail_from
    named = verp.read(mail_from, localpart="bounces", domain=DOMAIN)
    assert named is not None and len(mail_from.split("@")[0]) <= 64
    with db.session_scope(engine=engine) as session:
        row = session.exec(select(Delivery)).one()
        salt = session.get(Subscriber, row.subscriber_id).token_salt  # type: ignore[union-attr]
    assert (named.subscriber_id, named.delivery_id) == (row.subscriber_id, row.id)
    assert verp.verify(named, key=KEY.encode(), salt=salt)
    assert not verp.verify(named, key=KEY.encode(), salt="another salt")
    assert not verp.verify(named, key=b"", salt=salt)
    tampered = verp.read(
        mail_from.replace(f"-{row.id}.", f"-{row.id + 1}."), localpart="bounces", domain=DOMAIN
    )
    assert tampered is not None and not verp.verify(tampered, key=KEY.encode(), salt=salt)

    # Without NEWSLETTER_BOUNCE_DOMAIN the envelope sender is the From address, as before.
    plain = tmp_path / "plain"
    plain.mkdir()
    server = SMTPServer().start()
    try:
        url = f"sqlite:///{plain / 'p.db'}"
        engine2 = db.make_engine(url)
        db.upgrade(engine=engine2)
        add_paper(engine2, title="Diffusion", abstract="Diffusion.", seen=NOW - timedelta(hours=1))
        subscribe(engine2, email="bo@example.org", topics=["diffusion"], now=NOW)
        settings = make_settings(plain, url, NEWSLETTER_SMTP_PORT=str(server.port))
        plan_digests(engine=engine2, settings=settings, now=NOW, due_only=False)
        deliver(engine2, settings, SMTPBackend(settings=settings.smtp), NOW)
        assert [a.mail_from for a in server.handler.accepted] == [settings.from_address]
    finally:
        server.stop()


def _fill(template: str, *, accepted, address: str, msgid: str) -> str:  # type: ignore[no-untyped-def]
    mail_from = accepted.mail_from
    local, _, _ = mail_from.partition("@")
    mac = local.rsplit(".", 1)[1]
    forged = mail_from.replace(mac, "a" * len(mac))
    return (
        template.replace("{VERP}", mail_from)
        .replace("{FORGED}", forged)
        .replace("{RCPT}", address)
        .replace("{MSGID}", msgid)
        .replace("{BOUNCE}", f"bounces@{DOMAIN}")
    )


def _corpus(tmp_path: Path, url: str):  # type: ignore[no-untyped-def]
    """A digest sent to one subscriber per fixture, and each fixture filled in for them."""
    addresses = {name: f"{name.replace('_', '.')}@example.org" for name in EXPECTED}
    engine, accepted = _sent(tmp_path, url, list(addresses.values()))
    texts = {}
    for name, address in addresses.items():
        a = accepted[address]
        texts[name] = _fill((FIXTURES / f"{name}.eml").read_text(), accepted=a, address=address,
                            msgid=a.message_id)  # fmt: skip
    return engine, addresses, texts


def test_each_report_in_the_corpus_has_its_consequence(tmp_path: Path, database_url: str) -> None:
    engine, addresses, texts = _corpus(tmp_path, database_url)
    mailbox = tmp_path / "Maildir"
    for sub in ("cur", "new", "tmp"):
        (mailbox / sub).mkdir(parents=True)
    for name, text in texts.items():
        folder = "new" if hash(name) % 2 else "cur"
        (mailbox / folder / f"1732350000.{name}.host:2,").write_text(text)

    env = {"DATABASE_URL": database_url, "NEWSLETTER_SECRET_KEY": KEY,
           "NEWSLETTER_BOUNCE_DOMAIN": DOMAIN}  # fmt: skip
    home = tmp_path / "home"
    home.mkdir()
    said = run(home, "bounces", "process", str(mailbox), env=env)
    for name, (status, events, soft) in EXPECTED.items():
        assert _state(engine, addresses[name]) == (status, events, soft), name
    summary = (
        "19 messages: 8 hard, 2 soft, 4 rejected, 1 complaint, 2 delayed, 1 auto reply,"
        " 1 unrecognised"
    )
    assert summary in said.stdout, said.stdout
    why = {e["why"][:20] for e in _operator_events(engine)}
    assert why == {"forged return path (", "no message <never-se", "unrecognised"}
    refused = [e for e in _operator_events(engine) if e["kind"] == "bounce.refused"]
    assert len(refused) == 1

    # Rates per edition, with the providers' thresholds, in stats, metrics and the report.
    shown = json.loads(run(home, "stats", "--json", env=env).stdout)
    assert shown["complaints"] == 1 and shown["hard_bounces"] == 6
    (edition,) = shown["editions"].values()
    assert (edition["sent"], edition["bounced"], edition["complained"]) == (19, 12, 1)
    assert len(edition["warnings"]) == 2
    text = run(home, "stats", env=env).stdout
    assert "WARNING: complaints 5.26% of digests (providers want under 0.3%)" in text
    metrics = prometheus_text(engine=engine)
    assert "newsletter_complaints_total 1" in metrics
    assert 'newsletter_edition_complaint_rate{edition="2026-11-23"} 0.05263' in metrics
    daily = report_text(daily_figures(engine=engine, now=datetime.now(UTC)))
    assert "WARNING: edition 2026-11-23: bounces 63.16% of digests (keep under 2%)." in daily

    # A replayed mailbox changes nothing.
    again = run(home, "bounces", "process", str(mailbox), env=env)
    assert "already processed" in again.stdout
    for name, (status, events, soft) in EXPECTED.items():
        assert _state(engine, addresses[name]) == (status, events, soft), name

    # A complaint is honoured before the next planning run: no digest for them.
    report = plan_digests(
        engine=engine, settings=_settings(tmp_path, database_url),
        now=NOW + timedelta(days=1), due_only=False, dry_run=True,
    )  # fmt: skip
    planned = {p.email for p in report.planned}
    assert addresses["arf_complaint"] not in planned
    assert addresses["postfix_hard"] not in planned


def _soft(engine: sa.Engine, tmp_path: Path, address: str, accepted, env, n: int) -> str:  # type: ignore[no-untyped-def]
    path = tmp_path / f"soft{n}.eml"
    text = _fill((FIXTURES / "mailbox_full.eml").read_text(), accepted=accepted, address=address,
                 msgid=accepted.message_id)  # fmt: skip
    path.write_text(text.replace("gmail-dsn-0002", f"gmail-dsn-soft-{n}"))
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    return run(home, "bounces", "process", str(path), env=env).stdout


@pytest.mark.parametrize("broken", [False, True, "reversed"])
def test_soft_bounces_suppress_after_the_limit_in_a_row_across_digests(
    tmp_path: Path, database_url: str, broken: bool
) -> None:
    env = {"DATABASE_URL": database_url, "NEWSLETTER_SECRET_KEY": KEY,
           "NEWSLETTER_BOUNCE_DOMAIN": DOMAIN, "NEWSLETTER_SOFT_BOUNCE_LIMIT": "3"}  # fmt: skip
    engine = db.make_engine(database_url)
    db.upgrade(engine=engine)
    subscribe(engine, email="ada@example.org", topics=["diffusion"], now=NOW)
    said, bounced = [], []
    for day in range(3):
        now = NOW + timedelta(days=day)
        add_paper(
            engine, title=f"Diffusion {day}", abstract="Diffusion.", seen=now - timedelta(hours=1)
        )
        server = SMTPServer().start()
        try:
            settings = _settings(tmp_path, database_url, NEWSLETTER_SMTP_PORT=str(server.port),
                                 NEWSLETTER_SOFT_BOUNCE_LIMIT="3")  # fmt: skip
            plan_digests(engine=engine, settings=settings, now=now, due_only=False)
            deliver(engine, settings, SMTPBackend(settings=settings.smtp), now)
            (accepted,) = server.handler.accepted
        finally:
            server.stop()
        if broken is True and day == 1:
            continue  # the second digest did not bounce
        bounced.append((day, accepted))
    if broken == "reversed":  # late reports arrive in any order
        bounced.reverse()
    for day, accepted in bounced:
        said.append(_soft(engine, tmp_path, "ada@example.org", accepted, env, day))
    status, events, soft = _state(engine, "ada@example.org")
    if broken is True:
        assert (status, soft) == ("active", 1) and "1 of 3 in a row" in said[-1]
    else:
        assert (status, soft) == ("suppressed", 3) and "3 digests in a row bounced" in said[-1]
        assert events[-2:] == ["subscriber.suppressed", "subscriber.unsubscribed"]


def test_a_bounce_quoting_characters_no_database_stores_is_still_recorded(
    tmp_path: Path, database_url: str
) -> None:
    """A bounce quotes whatever came its way: a NUL in the quoted Message-ID (PostgreSQL
    refuses it in text) failed the record, so the listener answered 451 for days and
    `bounces process` stopped at that file. Such an id names nothing of ours; the
    return path still ties the report to its digest."""
    engine, accepted = _sent(tmp_path, database_url, ["ada@example.org", "bo@example.org"])
    mailbox = tmp_path / "Maildir"
    for sub in ("cur", "new", "tmp"):
        (mailbox / sub).mkdir(parents=True)
    for name, address, msgid in (
        ("1.nul", "ada@example.org", "<nul\x00id@example.org>"),
        ("2.fine", "bo@example.org", accepted["bo@example.org"].message_id),
    ):
        text = _fill((FIXTURES / "postfix_hard.eml").read_text(), accepted=accepted[address],
                     address=address, msgid=msgid)  # fmt: skip
        own = text.replace("3C0123@relay", f"3C0123.{name}@relay")  # a report's own id
        (mailbox / "new" / f"1732350000.{name}:2,").write_text(own)
    env = {"DATABASE_URL": database_url, "NEWSLETTER_SECRET_KEY": KEY,
           "NEWSLETTER_BOUNCE_DOMAIN": DOMAIN}  # fmt: skip
    home = tmp_path / "home"
    home.mkdir()
    said = run(home, "bounces", "process", str(mailbox), env=env)
    assert "2 messages: 2 hard" in said.stdout, said.stdout
    assert _state(engine, "ada@example.org")[0] == "suppressed"
    assert _state(engine, "bo@example.org")[0] == "suppressed"


def test_the_lmtp_listener_takes_only_bounce_addresses_and_records_what_arrives(
    tmp_path: Path, database_url: str
) -> None:
    engine, accepted = _sent(tmp_path, database_url, ["ada@example.org", "bo@example.org"])
    with _listener(tmp_path, database_url) as client:
        ada, bo = accepted["ada@example.org"], accepted["bo@example.org"]
        hard = _fill((FIXTURES / "postfix_hard.eml").read_text(), accepted=ada,
                     address="ada@example.org", msgid=ada.message_id)  # fmt: skip
        # Not a relay: any other recipient is refused at RCPT.
        with pytest.raises(smtplib.SMTPRecipientsRefused):
            client.sendmail("", ["someone@example.org"], hard)
        assert client.sendmail("", [ada.mail_from], hard) == {}
        complaint = _fill((FIXTURES / "arf_complaint.eml").read_text(), accepted=bo,
                          address="bo@example.org", msgid=bo.message_id)  # fmt: skip
        assert client.sendmail("", [f"bounces@{DOMAIN}"], complaint) == {}
    assert _state(engine, "ada@example.org")[0] == "suppressed"
    assert _state(engine, "bo@example.org")[:2] == (
        "unsubscribed",
        ["bounce.complaint", "subscriber.unsubscribed"],
    )


def test_the_corpus_over_lmtp_has_the_same_consequences(tmp_path: Path, database_url: str) -> None:
    engine, addresses, texts = _corpus(tmp_path, database_url)
    with _listener(tmp_path, database_url) as client:
        for name, text in texts.items():
            to = email.utils.parseaddr(parse(text.encode())["To"])[1]
            assert client.sendmail("", [to], text) == {}, name
    for name, (status, events, soft) in EXPECTED.items():
        assert _state(engine, addresses[name]) == (status, events, soft), name


@contextlib.contextmanager
def _listener(tmp_path: Path, url: str) -> Iterator[smtplib.LMTP]:
    """``newsletter bounces serve`` in a real process, and an LMTP client connected to it."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("NEWSLETTER_")}
    env |= {"DATABASE_URL": url, "NEWSLETTER_SECRET_KEY": KEY,
            "NEWSLETTER_BOUNCE_DOMAIN": DOMAIN, "NEWSLETTER_HOME": str(tmp_path)}  # fmt: skip
    proc = subprocess.Popen(
        [sys.executable, "-m", "newsletter", "bounces", "serve", "--listen",
         f"lmtp://127.0.0.1:{port}"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                client = smtplib.LMTP("127.0.0.1", port, timeout=10)
                break
            except OSError:
                assert time.monotonic() < deadline and proc.poll() is None, "listener up"
                time.sleep(0.1)
        with client:
            client.ehlo("mx.papers.example")
            yield client
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=20)
    assert proc.returncode == 0, out


def test_newsletter_run_listens_for_bounces_when_told(tmp_path: Path, database_url: str) -> None:
    import asyncio
    import smtplib

    from newsletter.service import run as run_service
    from tests.helpers import runtime_for
    from tests.smtp_server import free_port

    engine, accepted = _sent(tmp_path, database_url, ["ada@example.org"])
    port = free_port()
    settings = _settings(
        tmp_path, database_url, NEWSLETTER_BOUNCE_LISTEN=f"lmtp://127.0.0.1:{port}"
    )
    ada = accepted["ada@example.org"]
    complaint = _fill((FIXTURES / "arf_complaint.eml").read_text(), accepted=ada,
                      address="ada@example.org", msgid=ada.message_id)  # fmt: skip

    def send() -> dict:  # type: ignore[type-arg]
        for _ in range(100):
            try:
                with smtplib.LMTP("127.0.0.1", port, timeout=10) as client:
                    return client.sendmail("", [f"bounces@{DOMAIN}"], complaint)
            except ConnectionRefusedError:
                time.sleep(0.05)
        raise AssertionError("the listener never came up")

    async def main() -> dict:  # type: ignore[type-arg]
        stop = asyncio.Event()
        service = asyncio.create_task(
            run_service(
                runtime=runtime_for(settings, engine),
                web=False,
                deliver=False,
                schedule=False,
                stop=stop,
            )
        )
        try:
            return await asyncio.to_thread(send)
        finally:
            stop.set()
            await service

    assert asyncio.run(main()) == {}
    assert _state(engine, "ada@example.org")[0] == "unsubscribed"


def test_whose_fault_a_failure_is_read_from_its_permanent_code_and_the_relays_word() -> None:
    """A transcript's "250 2.1.0 Sender OK" says nothing about the failure after it; a
    Mailgun "bounce" is the address's unless its code or words say a block of us."""
    from newsletter.bounces.classify import status_code
    from newsletter.bounces.webhooks import mailgun_report

    assert status_code("250 2.1.0 Sender OK\n550 5.1.1 User unknown") == "5.1.1"
    assert status_code("451 4.4.1 timeout\n554 5.7.1 blocked") == "5.7.1"

    def kind(reason: str | None, code: str, text: str) -> str:
        event = {"event": "failed", "severity": "permanent", "recipient": "a@example.org",
                 "reason": reason, "delivery-status": {"enhanced-code": code,
                                                       "description": text}}  # fmt: skip
        return mailgun_report(event)[0].kind.value  # type: ignore[index]

    assert kind("bounce", "5.5.0", "Requested action not taken: mailbox unavailable") == "hard"
    assert kind("bounce", "5.4.1", "Recipient address rejected: Access denied") == "hard"
    assert kind("bounce", "5.7.1", "rate limited") == "rejected"
    assert kind("bounce", "", "Service refused: client blocked using Spamhaus") == "rejected"
    assert kind("bounce", "5.2.2", "mailbox full") == "soft"
    assert kind("old", "", "gave up") == "rejected"
    assert kind("esp-block", "5.1.1", "no such user") == "hard"
    assert kind("bounce", "5.1.1", "rejected by local policy: user unknown") == "hard"

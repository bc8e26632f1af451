"""The web pages over real HTTP: uvicorn on a free port, requests with httpx.

The unsubscribe and archive links are taken from real .eml files the file
backend wrote, so what is tested is what a subscriber clicks.
"""

from __future__ import annotations

import email
import email.policy
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa
from sqlmodel import select

from newsletter import db
from newsletter.backends.file import FileBackend
from newsletter.backends.memory import MemoryBackend
from newsletter.config import Settings
from newsletter.models import Delivery, Event, Subscriber
from newsletter.plan import plan_digests
from newsletter.web import create_app
from tests.conftest import make_settings
from tests.helpers import (
    add_paper,
    deliver,
    live_server,
    runtime_for,
    signups_settled,
    subscribe,
)
from tests.smtp_server import free_port


@dataclass
class Site:
    url: str
    settings: Settings
    engine: sa.Engine
    client: httpx.Client


@pytest.fixture
def site(tmp_path: Path, database_url: str) -> Iterator[Site]:
    port = free_port()
    settings = make_settings(tmp_path, database_url, NEWSLETTER_BASE_URL=f"http://127.0.0.1:{port}")
    engine = db.make_engine(database_url)
    with (
        live_server(create_app(runtime=runtime_for(settings, engine)), port) as url,
        httpx.Client(base_url=url, follow_redirects=False, timeout=10) as client,
    ):
        yield Site(url, settings, engine, client)


def _digests(site: Site, now, emails: list[str]) -> dict[str, email.message.EmailMessage]:  # type: ignore[no-untyped-def]
    """Plan and write one digest per address; the parsed .eml files by recipient."""
    add_paper(
        site.engine,
        title="Diffusion for All",
        abstract="About diffusion.",
        seen=now - timedelta(hours=1),
    )
    for address in emails:
        subscribe(site.engine, email=address, topics=["diffusion"], now=now)
    plan_digests(engine=site.engine, settings=site.settings, now=now, due_only=False)
    outbox = site.settings.outbox_dir
    deliver(site.engine, site.settings, FileBackend(directory=outbox), now)
    messages = {}
    for path in outbox.rglob("*.eml"):
        msg = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
        messages[str(msg["To"])] = msg
    assert sorted(messages) == sorted(emails)
    return messages


def _unsubscribe_url(msg: email.message.EmailMessage) -> str:
    return str(msg["List-Unsubscribe"]).strip("<>")


def _path(url: str) -> str:
    return httpx.URL(url).path


def _status(site: Site, address: str) -> str:
    with db.session_scope(engine=site.engine) as session:
        return session.exec(select(Subscriber.status).where(Subscriber.email == address)).one()


def _unsubscribe_events(site: Site) -> list[tuple[int | None, int | None, str]]:
    with db.session_scope(engine=site.engine) as session:
        return [
            (e.subscriber_id, e.delivery_id, json.loads(e.detail)["source"])
            for e in session.exec(select(Event).where(Event.kind == "subscriber.unsubscribed"))
        ]


def test_rfc8058_one_click_post_from_a_real_digest(site: Site, now) -> None:  # type: ignore[no-untyped-def]
    msg = _digests(site, now, ["ada@example.org", "bob@example.org"])["ada@example.org"]
    assert msg["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    url = _unsubscribe_url(msg)
    assert url.startswith(site.url + "/u/")
    # Exactly what a mail client sends (RFC 8058 section 3.1): no cookies, form-encoded.
    reply = site.client.post(
        _path(url),
        content=b"List-Unsubscribe=One-Click",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert reply.status_code == 200 and "set-cookie" not in reply.headers
    assert _status(site, "ada@example.org") == "unsubscribed"
    assert _status(site, "bob@example.org") == "active"
    with db.session_scope(engine=site.engine) as session:
        ada = session.exec(select(Delivery).where(Delivery.to_address == "ada@example.org")).one()
    assert _unsubscribe_events(site) == [(ada.subscriber_id, ada.id, "one-click")]
    # A client retrying its POST (and a multipart one) changes and counts nothing more.
    again = site.client.post(_path(url), files={"List-Unsubscribe": (None, "One-Click")})
    assert again.status_code == 200
    assert len(_unsubscribe_events(site)) == 1


def test_get_changes_nothing_and_the_page_button_unsubscribes(site: Site, now) -> None:  # type: ignore[no-untyped-def]
    msg = _digests(site, now, ["cy@example.org"])["cy@example.org"]
    path = _path(_unsubscribe_url(msg))
    for _ in range(3):  # a scanner following the link, twice, then the subscriber
        page = site.client.get(path)
        assert page.status_code == 200
    # A POST that is neither the mail client's one-click nor the page's button (a link
    # checker's) asks too, and changes nothing.
    for body in ({}, {"List-Unsubscribe": "yes"}, {"source": "scanner"}):
        asked = site.client.post(path, data=body)
        assert asked.status_code == 200 and "Nothing changes until you press" in asked.text
    assert _status(site, "cy@example.org") == "active"
    assert re.search(rf'<form method="post" action="{re.escape(path)}">', page.text)
    assert "c•••@example.org" in page.text and "cy@example.org" not in page.text
    assert page.headers["referrer-policy"] == "no-referrer"
    done = site.client.post(path, data={"source": "page"})
    assert done.status_code == 200 and "You are unsubscribed" in done.text
    assert [src for _, _, src in _unsubscribe_events(site)] == ["page"]
    # The confirmation page offers coming back (its form's token, bound to the reader).
    back = _resubscribe(site, done.text)
    assert back.status_code == 200 and "Welcome back" in back.text
    assert _status(site, "cy@example.org") == "active"


def _resubscribe(site: Site, page: str, *, csrf: bool = True) -> httpx.Response:
    """Press the unsubscribed page's "Subscribe again"."""
    action = re.search(r'<form method="post" action="([^"]+)">', page).group(1)  # type: ignore[union-attr]
    token = re.search(r'name="csrf" value="([^"]+)"', page).group(1)  # type: ignore[union-attr]
    return site.client.post(action, data={"csrf": token} if csrf else {})


def test_the_unsubscribe_link_undoes_only_the_readers_own_recent_unsubscribe(
    site: Site, now
) -> None:  # type: ignore[no-untyped-def]
    """The link is in every digest and digests get forwarded: whoever holds it must not
    take back a bounce's suppression, a spam complaint, an operator's removal or an
    unsubscribe older than a week, nor resubscribe without the page's form."""
    from newsletter import subscribers
    from newsletter.ledger.outcomes import suppress

    people = ["sup@example.org", "spam@example.org", "old@example.org", "form@example.org"]
    paths = {a: _path(_unsubscribe_url(m)) for a, m in _digests(site, now, people).items()}
    with db.session_scope(engine=site.engine) as session:
        ids = {s.email: s.id for s in session.exec(select(Subscriber))}
        row = session.get(Subscriber, ids["sup@example.org"])
        delivery = session.exec(select(Delivery).where(Delivery.subscriber_id == row.id)).one()  # type: ignore[union-attr]
        suppress(session, subscriber=row, row=delivery, now=now, why="hard bounce")
        subscribers.unsubscribe(
            session=session, subscriber_id=ids["spam@example.org"], now=now, source="complaint"
        )
    pages = {a: site.client.post(paths[a], data={"source": "page"}).text for a in people}
    with db.session_scope(engine=site.engine) as session:  # old's unsubscribe, 8 days ago
        session.execute(
            sa.update(Event)
            .where(Event.subscriber_id == ids["old@example.org"])
            .values(at=datetime.now(UTC) - timedelta(days=8))
        )
    # The suppressed reader's wish counts too (clearing the bounce must not mail them)...
    assert _status(site, "sup@example.org") == "unsubscribed"
    bounced = _resubscribe(site, pages["sup@example.org"])  # ...and undoing it mails nobody
    assert "bounced" in bounced.text and _status(site, "sup@example.org") == "unsubscribed"
    for address in ("spam@example.org", "old@example.org"):
        refused = _resubscribe(site, pages[address])
        assert refused.status_code == 200 and "sign up on the subscribe page" in refused.text
        assert _status(site, address) == "unsubscribed"
    stale = _resubscribe(site, pages["form@example.org"], csrf=False)
    assert stale.status_code == 400 and _status(site, "form@example.org") == "unsubscribed"
    assert _resubscribe(site, pages["form@example.org"]).status_code == 200
    assert _status(site, "form@example.org") == "active"


def test_a_complaint_or_removal_after_the_readers_own_unsubscribe_cannot_be_undone(
    site: Site, now
) -> None:  # type: ignore[no-untyped-def]
    """Gmail's "report spam and unsubscribe" sends the one-click POST and then the
    complaint: the reader is out by their own hand first, and the complaint (or an
    operator's removal) that follows must still make it final for a forwarded link."""
    from newsletter import subscribers

    people = ["late@example.org", "gone@example.org"]
    paths = {a: _path(_unsubscribe_url(m)) for a, m in _digests(site, now, people).items()}
    for address in people:
        one_click = site.client.post(paths[address], data={"List-Unsubscribe": "One-Click"})
        assert one_click.status_code == 200
    with db.session_scope(engine=site.engine) as session:
        ids = {s.email: s.id for s in session.exec(select(Subscriber))}
        for address, source in (("late@example.org", "complaint"), ("gone@example.org", "admin")):
            subscribers.unsubscribe(
                session=session, subscriber_id=ids[address], now=now, source=source
            )
            subscribers.unsubscribe(  # a second report records nothing more
                session=session, subscriber_id=ids[address], now=now, source=source
            )
    # Counted once each (the unsubscribe), the later reports making it final
    assert sorted(src for _, _, src in _unsubscribe_events(site)) == ["one-click", "one-click"]
    with db.session_scope(engine=site.engine) as session:
        final = session.exec(select(Event).where(Event.kind == "subscriber.unsubscribe_final"))
        assert sorted(json.loads(e.detail)["source"] for e in final) == ["admin", "complaint"]
    for address in people:
        page = site.client.post(paths[address], data={"source": "page"})  # the forwarded link
        refused = _resubscribe(site, page.text)
        assert refused.status_code == 200 and "sign up on the subscribe page" in refused.text
        assert _status(site, address) == "unsubscribed"


def test_forged_truncated_and_other_subscribers_tokens_are_refused(site: Site, now) -> None:  # type: ignore[no-untyped-def]
    messages = _digests(site, now, ["dee@example.org", "eve@example.org"])
    path = _path(_unsubscribe_url(messages["dee@example.org"]))
    token = path.rsplit("/", 1)[1]
    ident, mac = token.split(".")
    sid, did = ident.split("-")
    other = _path(_unsubscribe_url(messages["eve@example.org"])).rsplit("/", 1)[1]
    bad = [
        f"{ident}.{mac[:-1]}{'A' if mac[-1] != 'A' else 'B'}",  # one character changed
        f"{ident}.{mac[:10]}",  # truncated
        f"{ident}.",
        ident,
        f"{int(sid) + 1}-{did}.{mac}",  # the same MAC on another subscriber
        f"{sid}-{int(did) + 1}.{mac}",  # or on another digest
        f"{ident}.{other.split('.')[1]}",  # eve's MAC on dee's ids
        "9" * 40 + "." + mac,
    ]
    unknown = site.client.get("/u/nothing-here")
    assert unknown.status_code == 404
    for forged in bad:
        for reply in (
            site.client.get(f"/u/{forged}"),
            site.client.post(f"/u/{forged}", data={"List-Unsubscribe": "One-Click"}),
            site.client.post(f"/u/{forged}/resubscribe"),
        ):
            assert reply.status_code == 404, forged
            assert reply.text == unknown.text  # reveals nothing about why
    assert _status(site, "dee@example.org") == _status(site, "eve@example.org") == "active"
    assert _unsubscribe_events(site) == []


def test_unsubscribed_while_pending_is_not_sent_and_never_planned_again(site: Site, now) -> None:  # type: ignore[no-untyped-def]
    msg = _digests(site, now, ["fay@example.org"])["fay@example.org"]
    add_paper(
        site.engine,
        title="Diffusion two",
        abstract="More diffusion.",
        seen=now + timedelta(hours=1),
    )
    tomorrow = now + timedelta(days=1)
    assert (
        len(
            plan_digests(
                engine=site.engine, settings=site.settings, now=tomorrow, due_only=False
            ).planned
        )
        == 1
    )
    reply = site.client.post(_path(_unsubscribe_url(msg)), data={"List-Unsubscribe": "One-Click"})
    assert reply.status_code == 200
    backend = MemoryBackend()
    report = deliver(site.engine, site.settings, backend, tomorrow)
    assert backend.sent == [] and [o.status for o in report.outcomes] == ["cancelled"]
    later = tomorrow + timedelta(days=1)
    add_paper(
        site.engine, title="Diffusion three", abstract="Diffusion.", seen=later - timedelta(hours=1)
    )
    assert (
        plan_digests(engine=site.engine, settings=site.settings, now=later, due_only=False).planned
        == []
    )


def test_archive_link_from_the_email_shows_the_digest(site: Site, now) -> None:  # type: ignore[no-untyped-def]
    msg = _digests(site, now, ["gus@example.org"])["gus@example.org"]
    html = msg.get_body(preferencelist=("html",)).get_content()  # type: ignore[union-attr]
    archive = re.search(
        r'href="(http://127\.0\.0\.1:\d+/d/[^"]+)"[^>]*>View in browser', html
    ).group(1)  # type: ignore[union-attr]
    page = site.client.get(_path(archive))
    assert page.status_code == 200 and "Diffusion for All" in page.text
    assert "script-src" not in page.headers["content-security-policy"]
    token = _path(archive).rsplit("/", 1)[1]
    ident, mac = token.split(".")
    sid, did = ident.split("-")
    assert site.client.get(f"/d/{sid}-{int(did) + 1}.{mac}").status_code == 404
    assert site.client.get(f"/d/{int(sid) + 1}-{did}.{mac}").status_code == 404


def test_healthz_metrics_and_unsubscribes_per_edition(site: Site, now, tmp_path) -> None:  # type: ignore[no-untyped-def]
    messages = _digests(site, now, ["hal@example.org", "ivy@example.org"])
    site.client.post(
        _path(_unsubscribe_url(messages["hal@example.org"])), data={"List-Unsubscribe": "One-Click"}
    )
    health = site.client.get("/healthz")
    assert health.status_code == 200 and health.json() == {"status": "ok"}
    metrics = site.client.get("/metrics")
    assert metrics.headers["content-type"].startswith("text/plain; version=0.0.4")
    lines = set(metrics.text.splitlines())
    assert 'newsletter_deliveries{status="sent"} 2' in lines
    assert "newsletter_unsubscribes_total 1" in lines
    assert 'newsletter_subscribers{status="unsubscribed"} 1' in lines
    from newsletter.ledger import unsubscribes_by_edition

    assert unsubscribes_by_edition(engine=site.engine) == {now.date().isoformat(): 1}
    # The operator's figures are for this machine (above: the test's client is on it),
    # not for a visitor from elsewhere (here through a trusted proxy's X-Forwarded-For):
    # they get what any unknown page gets. No admin token set: no bearer opens it.
    away = {"X-Forwarded-For": "203.0.113.9"}
    assert site.client.get("/metrics", headers=away).status_code == 404
    # A proxy on this machine the operator did not name makes every visitor local: the
    # header it adds gives it away.
    assert site.client.get("/metrics", headers={"Forwarded": "for=127.0.0.1"}).status_code == 404
    bearer = away | {"Authorization": "Bearer x"}
    assert site.client.get("/metrics", headers=bearer).status_code == 404


# --- double opt-in and the preference centre ---------------------------------------------


def _csrf(html: str) -> str:
    return re.search(r'name="csrf" value="([^"]+)"', html).group(1)  # type: ignore[union-attr]


def _sign_up(site: Site, **fields: str) -> httpx.Response:
    csrf = _csrf(site.client.get("/subscribe").text)
    data = {"email": "", "name": "", "topics": "", "timezone": "UTC", "send_at": "08:00"}
    reply = site.client.post("/subscribe", data=data | fields | {"csrf": csrf})
    signups_settled(site.engine)
    return reply


def _deliver_now(site: Site) -> None:
    """Sign-ups are stamped with the real clock: deliver what is due by it."""
    deliver(
        site.engine,
        site.settings,
        FileBackend(directory=site.settings.outbox_dir),
        datetime.now(UTC),
    )


def _outbox(site: Site) -> list[email.message.EmailMessage]:
    return [
        email.message_from_bytes(p.read_bytes(), policy=email.policy.default)
        for p in sorted(site.settings.outbox_dir.rglob("*.eml"))
    ]


def test_sign_up_confirm_and_edit_preferences(site: Site, now) -> None:  # type: ignore[no-untyped-def]
    add_paper(
        site.engine,
        title="Diffusion today",
        abstract="About diffusion.",
        seen=now - timedelta(days=2),
    )
    reply = _sign_up(site, email="Jo@Example.org", name="Jo", topics='diffusion\n"video model"')
    assert reply.status_code == 200 and "Check your inbox" in reply.text
    # The confirmation goes out through the delivery engine, like any digest.
    _deliver_now(site)
    assert _status(site, "jo@example.org") == "pending"
    (mail,) = _outbox(site)
    assert (
        mail["Subject"].startswith("Confirm your subscription") and "List-Unsubscribe" not in mail
    )
    link = re.search(
        r"http://127\.0\.0\.1:\d+/confirm/\S+", mail.get_body(("plain",)).get_content()
    ).group(0)  # type: ignore[union-attr]
    page = site.client.get(_path(link))  # a scanner opening the link confirms nothing
    assert page.status_code == 200 and _status(site, "jo@example.org") == "pending"
    done = site.client.post(_path(link))
    assert done.status_code == 200 and "You are subscribed" in done.text
    assert _status(site, "jo@example.org") == "active"
    prefs_url = re.search(r'href="([^"]+/p/[^"]+)"', done.text).group(1)  # type: ignore[union-attr]
    prefs = site.client.get(_path(prefs_url))
    assert prefs.status_code == 200
    assert "diffusion" in prefs.text and "<code>diffusion</code>: 1 paper" in prefs.text
    saved = site.client.post(
        _path(prefs_url),
        data={"csrf": _csrf(prefs.text), "topics": "diffusion\nquantum", "cadence": "weekly",
              "weekday": "2", "timezone": "Asia/Tokyo", "send_at": "07:30", "action": "save"},
    )  # fmt: skip
    assert saved.status_code == 200 and "Saved." in saved.text
    with db.session_scope(engine=site.engine) as session:
        row = session.exec(select(Subscriber).where(Subscriber.email == "jo@example.org")).one()
        assert (row.cadence, row.weekday, row.timezone, row.send_at) == (
            "weekly",
            2,
            "Asia/Tokyo",
            "07:30",
        )
    from newsletter.subscribers import topics_by_subscriber

    with db.session_scope(engine=site.engine) as session:
        assert topics_by_subscriber(session=session, ids=[row.id])[row.id] == [
            "diffusion",
            "quantum",
        ]


def test_sign_up_takes_a_sentence_about_a_topic_and_refuses_a_bad_one(site: Site) -> None:
    """``filter | sentence``: the sentence is what meaning compares papers with; it is
    checked like the filter (length, control characters), the error names the line."""
    too_long = _sign_up(site, email="kay@example.org", topics="diffusion\nLoRA | " + "x" * 301)
    assert too_long.status_code == 422
    assert "Line 2" in too_long.text and "300" in too_long.text
    control = _sign_up(site, email="kay@example.org", topics="LoRA | fine\x1btuning")
    assert control.status_code == 422 and "control character" in control.text
    from newsletter.models import SignUp

    with db.session_scope(engine=site.engine) as session:
        assert session.exec(select(SignUp)).all() == [], "nothing stored from a bad form"
    good = _sign_up(
        site, email="kay@example.org", topics="diffusion\nLoRA | Parameter-efficient fine-tuning"
    )
    assert good.status_code == 200 and "Check your inbox" in good.text
    with db.session_scope(engine=site.engine) as session:
        (signup,) = session.exec(select(SignUp)).all()
        assert json.loads(signup.topics) == ["diffusion", "LoRA | Parameter-efficient fine-tuning"]


def test_sign_up_reveals_nothing_about_existing_addresses(site: Site, now) -> None:  # type: ignore[no-untyped-def]
    subscribe(site.engine, email="old@example.org", topics=["diffusion"], now=now)
    known = _sign_up(site, email="old@example.org")
    new = _sign_up(site, email="new@example.org")
    assert known.status_code == new.status_code == 200
    assert known.text.replace("old@example.org", "X") == new.text.replace("new@example.org", "X")
    _deliver_now(site)
    assert [str(m["To"]) for m in _outbox(site)] == ["new@example.org"]  # nothing to the active one
    assert _status(site, "old@example.org") == "active"


def test_topic_errors_show_line_and_column_and_store_nothing(site: Site) -> None:
    reply = _sign_up(site, email="kim@example.org", topics='diffusion\n"unclosed phrase')
    assert reply.status_code == 422
    error = re.search(r'<p class="error" id="topics-error">([^<]+)</p>', reply.text).group(1)  # type: ignore[union-attr]
    assert error.startswith("Line 2, column 1:")
    assert (
        'aria-describedby="topics-hint topics-error"' in reply.text
        and 'aria-invalid="true"' in reply.text
    )
    assert (
        "&#34;unclosed phrase" in reply.text or "&quot;unclosed phrase" in reply.text
    )  # echoed back, escaped
    with db.session_scope(engine=site.engine) as session:
        assert session.exec(select(Subscriber)).all() == []


def test_forms_refuse_missing_forged_and_foreign_csrf_tokens(site: Site, now) -> None:  # type: ignore[no-untyped-def]
    data = {"email": "lee@example.org", "topics": "", "timezone": "UTC", "send_at": "08:00"}
    real = _csrf(site.client.get("/subscribe").text)
    forged = real[:-1] + ("1" if real[-1] == "0" else "0")  # one character changed
    for csrf in ("", "123.abc", forged):
        assert site.client.post("/subscribe", data=data | {"csrf": csrf}).status_code == 400
    with db.session_scope(engine=site.engine) as session:
        assert session.exec(select(Subscriber)).all() == []
    # A preferences form token is good for its own subscriber only.
    msgs = _digests(site, now, ["max@example.org", "mia@example.org"])
    urls = {
        a: re.search(r'href="(http://[^"]+/p/[^"]+)"', m.get_body(("html",)).get_content()).group(1)  # type: ignore[union-attr]
        for a, m in msgs.items()
    }
    mia_csrf = _csrf(site.client.get(_path(urls["mia@example.org"])).text)
    forged = site.client.post(
        _path(urls["max@example.org"]),
        data={"csrf": mia_csrf, "topics": "hijacked", "cadence": "paused", "timezone": "UTC",
              "send_at": "08:00", "action": "save"},
    )  # fmt: skip
    assert forged.status_code == 400 and "Nothing was changed" in forged.text
    with db.session_scope(engine=site.engine) as session:
        row = session.exec(select(Subscriber).where(Subscriber.email == "max@example.org")).one()
    assert row.cadence == "daily"


def test_sign_ups_are_rate_limited_per_client(site: Site) -> None:
    codes = [_sign_up(site, email=f"r{i}@example.org").status_code for i in range(7)]
    assert codes[:5] == [200] * 5 and codes[5:] == [429, 429]


def test_unconfirmed_sign_ups_expire(site: Site, now) -> None:  # type: ignore[no-untyped-def]
    assert _sign_up(site, email="zed@example.org").status_code == 200
    _deliver_now(site)
    (mail,) = _outbox(site)
    link = re.search(
        r"http://127\.0\.0\.1:\d+/confirm/\S+", mail.get_body(("plain",)).get_content()
    ).group(0)  # type: ignore[union-attr]
    from newsletter.signups import expire as expire_pending

    with db.session_scope(engine=site.engine) as session:
        later = datetime.now(UTC) + timedelta(hours=site.settings.confirm_hours + 1)
        assert expire_pending(session=session, now=later, hours=site.settings.confirm_hours) == 1
    assert site.client.post(_path(link)).status_code == 404
    with db.session_scope(engine=site.engine) as session:
        assert session.exec(select(Subscriber)).all() == []


def test_weekly_and_paused_cadence_are_planned_accordingly(site: Site, now) -> None:  # type: ignore[no-untyped-def]
    add_paper(
        site.engine,
        title="Diffusion day",
        abstract="About diffusion.",
        seen=now - timedelta(hours=1),
    )
    for address in ("wk@example.org", "wk2@example.org", "ps@example.org"):
        subscribe(site.engine, email=address, topics=["diffusion"], now=now)
    with db.session_scope(engine=site.engine) as session:
        for row in session.exec(select(Subscriber)):
            row.cadence, row.weekday = {
                "wk@example.org": ("weekly", now.weekday()),
                "wk2@example.org": ("weekly", (now.weekday() + 1) % 7),
                "ps@example.org": ("paused", None),
            }[row.email]
            session.add(row)
    report = plan_digests(engine=site.engine, settings=site.settings, now=now, due_only=False)
    assert [p.email for p in report.planned] == ["wk@example.org"]
    assert report.not_due == ["wk2@example.org"]


def test_the_preview_index_holds_at_most_the_newest_papers_the_setting_allows(
    tmp_path: Path,
    now,  # type: ignore[no-untyped-def]
) -> None:
    from newsletter.web.preview import RecentPapers

    url = f"sqlite:///{tmp_path / 'preview.db'}"
    engine = db.make_engine(url)
    db.upgrade(engine=engine)
    for hours in (30, 20, 10):
        add_paper(engine, title=f"Diffusion {hours}", abstract="About diffusion.",
                  seen=now - timedelta(hours=hours))  # fmt: skip
    assert make_settings(tmp_path, url).preview_max_papers == 5000
    assert RecentPapers(engine=engine).counts(topics=["diffusion"], now=now) == {"diffusion": 3}
    bounded = RecentPapers(engine=engine, max_papers=2)
    assert bounded.counts(topics=["diffusion"], now=now) == {"diffusion": 2}
    assert [d.title for d in bounded._current(now).index.papers] == ["Diffusion 20", "Diffusion 10"]


def test_the_preview_keeps_a_bounded_number_of_evaluations(
    tmp_path: Path,
    now,  # type: ignore[no-untyped-def]
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """What readers preview is whatever they type, and the index lives until the month's
    papers change: its cached evaluations are forgotten past a bound, not kept for each
    filter ever previewed."""
    from newsletter.web import preview

    url = f"sqlite:///{tmp_path / 'preview.db'}"
    engine = db.make_engine(url)
    db.upgrade(engine=engine)
    add_paper(engine, title="Diffusion", abstract="About diffusion.", seen=now - timedelta(hours=1))
    monkeypatch.setattr(preview, "MAX_CACHED", 50)
    recent = preview.RecentPapers(engine=engine)
    for k in range(40):
        topics = [f"diffusion -w{k}x{i}" for i in range(20)]
        assert recent.counts(topics=topics, now=now) == dict.fromkeys(topics, 1)
        assert recent.cached() <= 50 + 3 * 20, k  # a call's own, then trimmed
    assert recent.counts(topics=["diffusion"], now=now) == {"diffusion": 1}


def test_the_preference_centre_opens_with_a_stored_filter_that_no_longer_parses(
    site: Site,
    now,  # type: ignore[no-untyped-def]
) -> None:
    """Planning leaves such a topic out; the preference centre, the one place its reader
    can fix it, shows it (without a count) instead of a server error."""
    msg = _digests(site, now, ["old@example.org"])["old@example.org"]
    prefs = _path(
        re.search(r'href="(http://[^"]+/p/[^"]+)"', msg.get_body(("html",)).get_content()).group(1)
    )  # type: ignore[union-attr]
    from newsletter.models import TopicFilter

    with db.session_scope(engine=site.engine) as session:
        session.execute(sa.update(TopicFilter).values(query="diffusion AND ("))
    page = site.client.get(prefs)
    assert page.status_code == 200 and "diffusion AND (" in page.text


def test_a_reader_saving_preferences_in_a_loop_is_slowed(site: Site, now) -> None:  # type: ignore[no-untyped-def]
    """Each save or preview parses up to 20 filters and counts them over a month: past
    POSTS_PER_10_MINUTES a reader's posts are refused and change nothing."""
    from newsletter.web.preferences import POSTS_PER_10_MINUTES

    msg = _digests(site, now, ["loop@example.org"])["loop@example.org"]
    prefs = _path(
        re.search(r'href="(http://[^"]+/p/[^"]+)"', msg.get_body(("html",)).get_content()).group(1)
    )  # type: ignore[union-attr]
    form = {"csrf": _csrf(site.client.get(prefs).text), "topics": "diffusion", "cadence": "daily",
            "timezone": "UTC", "send_at": "08:00", "action": "preview"}  # fmt: skip
    for k in range(POSTS_PER_10_MINUTES):
        assert site.client.post(prefs, data=form).status_code == 200, k
    refused = site.client.post(prefs, data=form | {"topics": "quantum", "action": "save"})
    assert refused.status_code == 429 and "Too many changes" in refused.text
    from newsletter.subscribers import topics_by_subscriber

    with db.session_scope(engine=site.engine) as session:
        sid = session.exec(
            select(Subscriber.id).where(Subscriber.email == "loop@example.org")
        ).one()
        assert topics_by_subscriber(session=session, ids=[sid])[sid] == ["diffusion"]


def test_a_topic_field_of_thousands_of_lines_is_refused_before_any_is_parsed(site: Site) -> None:
    """A megabyte of filters took 12 s of the event loop (every request and /healthz
    waited) to be told "at most 20": now the count comes first, so a broken first line
    is not even reached."""
    lines = "title:(\n" + "\n".join(f"w{i}" for i in range(100_000))
    reply = _sign_up(site, email="many@example.org", topics=lines)
    assert reply.status_code == 422 and "At most 20 topics." in reply.text
    assert "Line 1" not in reply.text


def test_a_filter_given_twice_is_one_topic_in_sign_up_and_preferences(site: Site, now) -> None:  # type: ignore[no-untyped-def]
    """The same filter with and without a sentence is one topic (the first line stands):
    never two rows the database refuses, a 5xx, or a sign-up that cannot be confirmed."""
    from newsletter.subscribers import topics_by_subscriber

    twice = "diffusion\ndiffusion | Diffusion models for images"
    reply = _sign_up(site, email="two@example.org", topics=twice)
    assert reply.status_code == 200 and "Check your inbox" in reply.text
    _deliver_now(site)
    (mail,) = _outbox(site)
    link = re.search(
        r"http://127\.0\.0\.1:\d+/confirm/\S+", mail.get_body(("plain",)).get_content()
    )
    done = site.client.post(_path(link.group(0)))  # type: ignore[union-attr]
    assert done.status_code == 200 and _status(site, "two@example.org") == "active"
    prefs_url = _path(re.search(r'href="([^"]+/p/[^"]+)"', done.text).group(1))  # type: ignore[union-attr]
    saved = site.client.post(
        prefs_url,
        data={"csrf": _csrf(site.client.get(prefs_url).text), "cadence": "daily",
              "topics": "quantum | Quantum computing\nquantum", "timezone": "UTC",
              "send_at": "08:00", "action": "save"},
    )  # fmt: skip
    assert saved.status_code == 200 and "Saved." in saved.text
    with db.session_scope(engine=site.engine) as session:
        sid = session.exec(select(Subscriber.id).where(Subscriber.email == "two@example.org")).one()
        assert topics_by_subscriber(session=session, ids=[sid])[sid] == [
            "quantum | Quantum computing"
        ]


def test_a_stale_preferences_form_with_a_broken_topic_says_stale(site: Site, now) -> None:  # type: ignore[no-untyped-def]
    """A tab left open past the form's lifetime, then Preview with a half-typed filter:
    the stale-form message, not a server error, and nothing changed."""
    msg = _digests(site, now, ["tab@example.org"])["tab@example.org"]
    prefs_url = re.search(r'href="(http://[^"]+/p/[^"]+)"', msg.get_body(("html",)).get_content())
    for action in ("preview", "save"):
        reply = site.client.post(
            _path(prefs_url.group(1)),  # type: ignore[union-attr]
            data={"csrf": "1.expired", "topics": "title:(", "cadence": "daily",
                  "timezone": "UTC", "send_at": "08:00", "action": action},
        )  # fmt: skip
        assert reply.status_code == 400 and "open too long" in reply.text
    assert _status(site, "tab@example.org") == "active"

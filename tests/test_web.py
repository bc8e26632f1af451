"""The web pages over real HTTP: uvicorn on a free port, requests with httpx.

The unsubscribe and archive links are taken from real .eml files the file
backend wrote, so what is tested is what a subscriber clicks.
"""

from __future__ import annotations

import email
import email.policy
import json
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa
import uvicorn
from sqlmodel import select

from newsletter import db
from newsletter.backends.file import FileBackend
from newsletter.backends.memory import MemoryBackend
from newsletter.config import Settings
from newsletter.models import Delivery, Event, Subscriber
from newsletter.plan import plan_digests
from newsletter.web import create_app
from tests.conftest import make_settings
from tests.helpers import add_paper, deliver, subscribe
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
    url = f"http://127.0.0.1:{port}"
    settings = make_settings(tmp_path, database_url, NEWSLETTER_BASE_URL=url)
    engine = db.make_engine(database_url)
    config = uvicorn.Config(
        create_app(settings=settings, engine=engine),
        host="127.0.0.1",
        port=port,
        log_level="warning",
        lifespan="off",
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    assert server.started, "uvicorn did not start"
    with httpx.Client(base_url=url, follow_redirects=False, timeout=10) as client:
        yield Site(url, settings, engine, client)
    server.should_exit = True
    thread.join(timeout=10)


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
    assert _status(site, "cy@example.org") == "active"
    assert re.search(rf'<form method="post" action="{re.escape(path)}">', page.text)
    assert "c•••@example.org" in page.text and "cy@example.org" not in page.text
    assert page.headers["referrer-policy"] == "no-referrer"
    done = site.client.post(path, data={"source": "page"})
    assert done.status_code == 200 and "You are unsubscribed" in done.text
    assert [src for _, _, src in _unsubscribe_events(site)] == ["page"]
    # The confirmation page offers coming back.
    action = re.search(r'<form method="post" action="([^"]+)">', done.text).group(1)  # type: ignore[union-attr]
    back = site.client.post(action)
    assert back.status_code == 200 and "Welcome back" in back.text
    assert _status(site, "cy@example.org") == "active"


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
    assert site.client.get(f"/d/{int(ident) + 1}.{mac}").status_code == 404


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
    from newsletter.deliver import unsubscribes_by_edition

    assert unsubscribes_by_edition(engine=site.engine) == {now.date().isoformat(): 1}

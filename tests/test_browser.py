"""The subscriber's whole journey in a real browser: Debian's chromium, driven by Playwright.

Sign up, find the confirmation email on disk, confirm, edit preferences,
unsubscribe; on a phone (375 px) and a desktop (1280 px) viewport, with an axe-core
accessibility audit of every page and full-page screenshots kept under
test-artifacts/screenshots/. Chromium comes from the project's set-up
(scripts/ensure-chromium), never from Playwright's own download.
"""

from __future__ import annotations

import email
import email.policy
import re
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from axe_playwright_python.sync_playwright import Axe
from playwright.sync_api import Browser, Page, expect, sync_playwright
from sqlmodel import select

from newsletter import db
from newsletter.backends.file import FileBackend
from newsletter.feedback import taught
from newsletter.models import Subscriber
from newsletter.plan import plan_digests
from newsletter.web import create_app
from tests.conftest import IN_CI, make_settings
from tests.helpers import (
    add_paper,
    deliver,
    live_server,
    runtime_for,
    signups_settled,
    subscribe,
)
from tests.smtp_server import free_port

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts" / "screenshots"


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not CHROMIUM.exists():
        if IN_CI:
            pytest.fail(f"{CHROMIUM} is missing: scripts/ensure-chromium installs it in CI")
        pytest.skip(f"no {CHROMIUM}: run scripts/ensure-chromium (Debian's chromium package)")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=["--no-sandbox"]
        )
        yield launched
        launched.close()


def _audit(page: Page, axe: Axe) -> None:
    results = axe.run(page)
    assert results.violations_count == 0, results.generate_report()


def _shot(page: Page, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def _site(tmp_path: Path, *, seen: timedelta):  # type: ignore[no-untyped-def]
    """A database with one paper about diffusion, first seen ``seen`` ago, and settings
    whose links lead to a free port."""
    url = f"sqlite:///{tmp_path / 'web.db'}"
    engine = db.make_engine(url)
    db.upgrade(engine=engine)
    port = free_port()
    settings = make_settings(tmp_path, url, NEWSLETTER_BASE_URL=f"http://127.0.0.1:{port}")
    paper = add_paper(
        engine, title="Diffusion models", abstract="About diffusion.", seen=datetime.now(UTC) - seen
    )
    return engine, settings, port, paper


@pytest.mark.parametrize("width", [375, 1280])
def test_sign_up_confirm_preferences_unsubscribe(
    browser: Browser, tmp_path: Path, width: int
) -> None:
    engine, settings, port, _paper = _site(tmp_path, seen=timedelta(days=1))
    axe = Axe()
    address = f"reader{width}@example.org"
    with live_server(create_app(runtime=runtime_for(settings, engine)), port) as base:
        page = browser.new_page(viewport={"width": width, "height": 800})

        page.goto(f"{base}/subscribe")
        _audit(page, axe)
        page.get_by_label("Email address").fill(address)
        page.get_by_label("Name (optional)").fill("Reader")
        page.get_by_label("Topics").fill('diffusion\n"language model"')
        page.get_by_label("Time zone").fill("Europe/Paris")
        _shot(page, f"{width}-1-subscribe")
        page.get_by_role("button", name="Subscribe").click()
        expect(page.get_by_role("heading", name="Check your inbox")).to_be_visible()
        signups_settled(engine)  # the confirmation is queued after the answer

        # In a thread of its own: Playwright's sync API holds this thread's event loop.
        with ThreadPoolExecutor(1) as pool:
            backend = FileBackend(directory=settings.outbox_dir)
            pool.submit(deliver, engine, settings, backend, datetime.now(UTC)).result()
        (eml,) = settings.outbox_dir.rglob("*.eml")
        mail = email.message_from_bytes(eml.read_bytes(), policy=email.policy.default)
        text = mail.get_body(("plain",)).get_content()  # type: ignore[union-attr]
        confirm = re.search(r"http://127\.0\.0\.1:\d+/confirm/\S+", text).group(0)  # type: ignore[union-attr]

        page.goto(confirm)
        _audit(page, axe)
        _shot(page, f"{width}-2-confirm")
        page.get_by_role("button", name="Confirm subscription").click()
        expect(page.get_by_role("heading", name="You are subscribed")).to_be_visible()
        page.get_by_role("link", name="Manage your topics and schedule").click()

        expect(page.get_by_role("heading", name="Your digest")).to_be_visible()
        expect(page.get_by_text("diffusion: 1 paper")).to_be_visible()
        _audit(page, axe)
        page.get_by_label("Topics").fill("diffusion\nvideo")
        page.get_by_label("Once a week").check()
        page.get_by_label("Day, for weekly digests").select_option("Friday")
        page.get_by_role("button", name="Save").click()
        expect(page.get_by_role("status")).to_contain_text("Saved.")
        _shot(page, f"{width}-3-preferences")

        page.get_by_role("link", name="Unsubscribe from all digests").click()
        _audit(page, axe)
        page.get_by_role("button", name="Unsubscribe").click()
        expect(page.get_by_role("heading", name="You are unsubscribed")).to_be_visible()
        _shot(page, f"{width}-4-unsubscribed")
        page.close()

    with db.session_scope(engine=engine) as session:
        row = session.exec(select(Subscriber).where(Subscriber.email == address)).one()
    assert (row.status, row.cadence, row.weekday, row.timezone) == (
        "unsubscribed",
        "weekly",
        4,
        "Europe/Paris",
    )


@pytest.mark.parametrize("width", [375, 1280])
def test_a_vote_from_the_email_then_undo(browser: Browser, tmp_path: Path, width: int) -> None:
    engine, settings, port, paper = _site(tmp_path, seen=timedelta(hours=1))
    now = datetime.now(UTC)
    subscribe(engine, email="reader@example.org", topics=["diffusion"], now=now)
    plan_digests(engine=engine, settings=settings, now=now, due_only=False)
    with ThreadPoolExecutor(1) as pool:  # Playwright's sync API holds this thread's loop
        backend = FileBackend(directory=settings.outbox_dir)
        pool.submit(deliver, engine, settings, backend, now).result()
    (eml,) = settings.outbox_dir.rglob("*.eml")
    mail = email.message_from_bytes(eml.read_bytes(), policy=email.policy.default)
    text = mail.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    not_for_me = re.search(r"Not for me: (http://127\.0\.0\.1:\d+/v/\S+)", text).group(1)  # type: ignore[union-attr]
    preferences = re.search(r"Manage preferences:\r?\n  (\S+)", text).group(1)  # type: ignore[union-attr]
    axe = Axe()
    with live_server(create_app(runtime=runtime_for(settings, engine)), port):
        page = browser.new_page(viewport={"width": width, "height": 800})
        page.goto(not_for_me)
        expect(page.get_by_role("heading", name="Not for you?")).to_be_visible()
        _audit(page, axe)
        _shot(page, f"{width}-5-vote")
        page.get_by_role("button", name="Yes, not for me").click()
        expect(page.get_by_role("status")).to_contain_text("fewer papers like “Diffusion models”")
        _audit(page, axe)
        _shot(page, f"{width}-6-voted")
        with db.session_scope(engine=engine) as session:
            assert list(taught(session=session).values()) == [((paper, -1),)]
        page.get_by_role("button", name="More like this").click()  # switched
        expect(page.get_by_role("heading", name="Thanks: more like this")).to_be_visible()
        page.get_by_role("button", name="Undo my vote").click()
        expect(page.get_by_role("heading", name="Vote taken back")).to_be_visible()
        _audit(page, axe)

        # The preference centre lists what was taught, with undo.
        page.goto(not_for_me)
        page.get_by_role("button", name="Yes, not for me").click()
        page.goto(preferences)
        expect(page.get_by_role("heading", name="What you taught your topics")).to_be_visible()
        expect(page.get_by_text("Not for me: Diffusion models")).to_be_visible()
        _audit(page, axe)
        _shot(page, f"{width}-7-taught")
        page.get_by_role("button", name="Undo your vote on Diffusion models").click()
        expect(page.get_by_role("status")).to_contain_text("Vote undone.")
        page.close()
    with db.session_scope(engine=engine) as session:
        assert taught(session=session) == {}

"""Routes: one-click unsubscribe (RFC 8058), the archive copy of a digest, health, metrics.

Token links are the only authority: an unknown or forged token gets the same
plain 404 as a page that does not exist, revealing nothing. GET never changes
anything (mail scanners and link previewers follow links); changes are POSTs.
Responses carry ``Referrer-Policy: no-referrer`` so a token in the URL never
leaks to another site, and a strict Content-Security-Policy.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import jinja2
import sqlalchemy as sa
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from newsletter import render, subscribers, tokens
from newsletter.config import Settings
from newsletter.db import session_scope
from newsletter.deliver import load_digests
from newsletter.links import Links
from newsletter.metrics import prometheus_text
from newsletter.models import Delivery, Subscriber, SubscriberStatus

TEMPLATES_DIR = Path(__file__).resolve().parent.parent.parent / "templates" / "web"
_PAGE_HEADERS = {
    "Referrer-Policy": "no-referrer",
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'unsafe-inline'; img-src 'self' data:; "
        "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-store",
}
# The archive is the email's own HTML: inline styles, images from anywhere, no scripts.
_ARCHIVE_CSP = (
    "default-src 'none'; style-src 'unsafe-inline'; img-src * data:; frame-ancestors 'none'"
)


def _utcnow() -> datetime:
    return datetime.now(UTC)


def create_app(*, settings: Settings, engine: sa.Engine) -> Starlette:
    key = settings.secret_key.encode()
    links = Links(base_url=settings.base_url, key=key)
    pages = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES_DIR),
        autoescape=True,  # every page is HTML: everything a subscriber typed is escaped
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    brand = settings.from_name or "Paper Digest"

    def page(name: str, status: int = 200, **context: object) -> HTMLResponse:
        body = pages.get_template(name).render(brand=brand, **context)
        return HTMLResponse(body, status_code=status, headers=_PAGE_HEADERS)

    def not_found() -> HTMLResponse:
        return page("not_found.html.j2", status=404)

    def unsubscribe_target(token: str) -> tuple[int, int | None] | None:
        return tokens.verify_unsubscribe(key=key, token=token)

    def unsubscribe_page(request: Request) -> Response:
        target = unsubscribe_target(request.path_params["token"])
        if target is None:
            return not_found()
        with session_scope(engine=engine) as session:
            row = session.get(Subscriber, target[0])
            if row is None:
                return not_found()
            done = row.status == SubscriberStatus.UNSUBSCRIBED
            email = _masked(row.email)
        return page("unsubscribe.html.j2", email=email, done=done, action=request.url.path)

    async def unsubscribe_post(request: Request) -> Response:
        token = request.path_params["token"]
        target = unsubscribe_target(token)
        if target is None:
            return not_found()
        form = await request.form()
        # RFC 8058: the mail client POSTs "List-Unsubscribe=One-Click", without cookies,
        # and must get a 2xx without redirects. Our own button posts source=page.
        one_click = form.get("List-Unsubscribe") == "One-Click"
        subscriber_id, delivery_id = target
        with session_scope(engine=engine) as session:
            if delivery_id is not None and session.get(Delivery, delivery_id) is None:
                delivery_id = None  # the digest was deleted since: still honour the request
            row = subscribers.unsubscribe(
                session=session,
                subscriber_id=subscriber_id,
                now=_utcnow(),
                source="one-click" if one_click else "page",
                delivery_id=delivery_id,
            )
            if row is None:
                return not_found()
            email = _masked(row.email)
        if one_click:
            return PlainTextResponse("Unsubscribed.\n", headers={"Referrer-Policy": "no-referrer"})
        return page(
            "unsubscribed.html.j2", email=email, resubscribe=f"{request.url.path}/resubscribe"
        )

    def resubscribe_post(request: Request) -> Response:
        target = unsubscribe_target(request.path_params["token"])
        if target is None:
            return not_found()
        with session_scope(engine=engine) as session:
            row = subscribers.resubscribe(session=session, subscriber_id=target[0], now=_utcnow())
            if row is None:
                return not_found()
            active, email = row.status == SubscriberStatus.ACTIVE, _masked(row.email)
        return page("resubscribed.html.j2", email=email, active=active)

    def archive(request: Request) -> Response:
        delivery_id = tokens.verify_token(
            key=key, purpose=tokens.ARCHIVE, token=request.path_params["token"]
        )
        if delivery_id is None:
            return not_found()
        with session_scope(engine=engine) as session:
            loaded = load_digests(session=session, ids=[delivery_id], links=links)
        if not loaded or loaded[0].digest is None:
            return not_found()
        sender = render.Sender(address=settings.from_address, name=settings.from_name or None)
        html = render.render_digest(digest=loaded[0].digest, sender=sender).html
        headers = _PAGE_HEADERS | {
            "Content-Security-Policy": _ARCHIVE_CSP,
            "X-Robots-Tag": "noindex",
        }
        return HTMLResponse(html, headers=headers)

    def healthz(_request: Request) -> Response:
        try:
            with engine.connect() as connection:
                connection.execute(sa.text("SELECT 1"))
        except sa.exc.SQLAlchemyError as exc:
            return JSONResponse(
                {"status": "error", "database": type(exc).__name__}, status_code=503
            )
        return JSONResponse({"status": "ok"})

    def metrics(_request: Request) -> Response:
        return PlainTextResponse(
            prometheus_text(engine=engine), media_type="text/plain; version=0.0.4"
        )

    async def http_error(_request: Request, exc: Exception) -> Response:
        status = exc.status_code if isinstance(exc, HTTPException) else 500
        if status == 404:
            return not_found()
        return page("error.html.j2", status=status, status_code=status)

    return Starlette(
        routes=[
            Route("/u/{token}", unsubscribe_page, methods=["GET"]),
            Route("/u/{token}", unsubscribe_post, methods=["POST"]),
            Route("/u/{token}/resubscribe", resubscribe_post, methods=["POST"]),
            Route("/d/{token}", archive, methods=["GET"]),
            Route("/healthz", healthz, methods=["GET"]),
            Route("/metrics", metrics, methods=["GET"]),
        ],
        exception_handlers={HTTPException: http_error},
    )


def _masked(email: str) -> str:
    """a•••@example.org: enough to recognise one's address, not to harvest it from a
    forwarded link."""
    local, _, domain = email.partition("@")
    return f"{local[:1]}•••@{domain}"

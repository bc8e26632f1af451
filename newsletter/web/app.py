"""Routes: one-click unsubscribe (RFC 8058), the archive copy of a digest, health, metrics.

Token links are the only authority: an unknown or forged token gets the same
plain 404 as a page that does not exist, revealing nothing. GET never changes
anything (mail scanners and link previewers follow links); changes are POSTs.
Responses carry ``Referrer-Policy: no-referrer`` so a token in the URL never
leaks to another site, and a strict Content-Security-Policy.
"""

from __future__ import annotations

import secrets
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
from newsletter.subscribers import NewSubscriber, topics_by_subscriber
from newsletter.web import forms
from newsletter.web.api import api_routes
from newsletter.web.preview import RecentPapers

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

    # --- double opt-in -------------------------------------------------------------

    signups = forms.RateLimit(limit=5, window=600)  # per client address, per process
    recent = RecentPapers(engine=engine)

    def subscribe_form(form: forms.Form, status: int = 200) -> HTMLResponse:
        return page(
            "subscribe.html.j2",
            status=status,
            form=form,
            csrf=forms.csrf_token(key=key, scope="subscribe"),
        )

    def subscribe_page(_request: Request) -> Response:
        defaults = {"timezone": settings.default_timezone, "send_at": settings.default_send_at}
        return subscribe_form(forms.Form(values={"email": "", "name": "", "topics": ""} | defaults))

    async def subscribe_post(request: Request) -> Response:
        data = await request.form()
        form = forms.Form(values={k: str(data.get(k, "")) for k in _SIGNUP_FIELDS})
        if not forms.csrf_ok(key=key, scope="subscribe", token=str(data.get("csrf", ""))):
            form.errors["form"] = _STALE_FORM
            return subscribe_form(form, status=400)
        client = request.client.host if request.client else "unknown"
        if not signups.allow(client):
            return page("rate_limited.html.j2", status=429)
        email = forms.check_email(form)
        name = forms.check_name(form)
        topics = forms.check_topics(form)
        tz, at = forms.check_schedule(form)
        if not form.ok:
            return subscribe_form(form, status=422)
        new = NewSubscriber(email=email, topics=tuple(topics), name=name, timezone=tz, send_at=at)
        now = _utcnow()
        with session_scope(engine=engine) as session:
            subscribers.expire_pending(session=session, now=now, hours=settings.confirm_hours)
            subscribers.sign_up(
                session=session,
                subscriber=new,
                now=now,
                message_id=f"<confirm.{secrets.token_hex(12)}@{settings.message_id_domain}>",
            )
        # The same answer whether the address was new, pending, unsubscribed or active:
        # the page never tells who is subscribed.
        return page("check_inbox.html.j2", email=email, hours=f"{settings.confirm_hours:g}")

    def confirm_target(token: str) -> tuple[int, int] | None:
        ident = tokens.verify_ident(key=key, purpose=tokens.CONFIRM, token=token)
        if ident is None or "-" not in ident:
            return None
        sid, _, did = ident.partition("-")
        return int(sid), int(did)

    def confirm_page(request: Request) -> Response:
        target = confirm_target(request.path_params["token"])
        if target is None:
            return not_found()
        with session_scope(engine=engine) as session:
            row = session.get(Subscriber, target[0])
            mail = session.get(Delivery, target[1])
            if row is None or mail is None or mail.subscriber_id != row.id:
                return not_found()
            done, email = row.status != SubscriberStatus.PENDING, _masked(row.email)
        return page("confirm.html.j2", email=email, done=done, action=request.url.path)

    def confirm_post(request: Request) -> Response:
        target = confirm_target(request.path_params["token"])
        if target is None:
            return not_found()
        with session_scope(engine=engine) as session:
            row = subscribers.confirm(
                session=session, subscriber_id=target[0], delivery_id=target[1], now=_utcnow()
            )
            if row is None:
                return not_found()
            active, email = row.status == SubscriberStatus.ACTIVE, _masked(row.email)
        return page(
            "confirmed.html.j2",
            email=email,
            active=active,
            preferences=links.preferences(subscriber_id=target[0]),
        )

    # --- preference centre ---------------------------------------------------------

    def preferences_form(
        sid: int, form: forms.Form, *, email: str, saved: bool = False, status: int = 200
    ) -> HTMLResponse:
        topics = forms.topic_lines(form.values.get("topics", ""))
        # Only topics that parsed: a form with a topic error shows the error, not counts.
        counts = {} if "topics" in form.errors else recent.counts(topics=topics, now=_utcnow())
        return page(
            "preferences.html.j2",
            status=status,
            form=form,
            email=email,
            saved=saved,
            counts=counts,
            weekdays=forms.WEEKDAYS,
            csrf=forms.csrf_token(key=key, scope=f"p:{sid}"),
            unsubscribe=links.unsubscribe(subscriber_id=sid),
        )

    def preferences_target(token: str) -> int | None:
        return tokens.verify_token(key=key, purpose=tokens.PREFERENCES, token=token)

    def preferences_page(request: Request) -> Response:
        sid = preferences_target(request.path_params["token"])
        if sid is None:
            return not_found()
        with session_scope(engine=engine) as session:
            row = session.get(Subscriber, sid)
            if row is None or row.status == SubscriberStatus.PENDING:
                return not_found()
            values = {
                "topics": "\n".join(topics_by_subscriber(session=session, ids=[sid]).get(sid, [])),
                "cadence": row.cadence,
                "weekday": "" if row.weekday is None else str(row.weekday),
                "timezone": row.timezone,
                "send_at": row.send_at,
            }
            email = _masked(row.email)
        return preferences_form(sid, forms.Form(values=values), email=email)

    async def preferences_post(request: Request) -> Response:
        sid = preferences_target(request.path_params["token"])
        if sid is None:
            return not_found()
        data = await request.form()
        form = forms.Form(values={k: str(data.get(k, "")) for k in _PREFERENCE_FIELDS})
        with session_scope(engine=engine) as session:
            row = session.get(Subscriber, sid)
            if row is None or row.status == SubscriberStatus.PENDING:
                return not_found()
            email = _masked(row.email)
            if not forms.csrf_ok(key=key, scope=f"p:{sid}", token=str(data.get("csrf", ""))):
                form.errors["form"] = _STALE_FORM + " Nothing was changed."
                return preferences_form(sid, form, email=email, status=400)
            topics = forms.check_topics(form)
            cadence, weekday = forms.check_cadence(form)
            tz, at = forms.check_schedule(form)
            if data.get("action") == "preview" or not form.ok:
                return preferences_form(sid, form, email=email, status=200 if form.ok else 422)
            now = _utcnow()
            subscribers.replace_topics(session=session, subscriber_id=sid, topics=topics, now=now)
            row.cadence, row.weekday, row.timezone, row.send_at = cadence, weekday, tz, at
            row.updated_at = now
            session.add(row)
        return preferences_form(sid, form, email=email, saved=True)

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
            *api_routes(settings=settings, engine=engine),
            Route("/u/{token}", unsubscribe_page, methods=["GET"]),
            Route("/u/{token}", unsubscribe_post, methods=["POST"]),
            Route("/u/{token}/resubscribe", resubscribe_post, methods=["POST"]),
            Route("/d/{token}", archive, methods=["GET"]),
            Route("/subscribe", subscribe_page, methods=["GET"]),
            Route("/subscribe", subscribe_post, methods=["POST"]),
            Route("/confirm/{token}", confirm_page, methods=["GET"]),
            Route("/confirm/{token}", confirm_post, methods=["POST"]),
            Route("/p/{token}", preferences_page, methods=["GET"]),
            Route("/p/{token}", preferences_post, methods=["POST"]),
            Route("/healthz", healthz, methods=["GET"]),
            Route("/metrics", metrics, methods=["GET"]),
        ],
        exception_handlers={HTTPException: http_error},
    )


_STALE_FORM = "This form was open too long, or did not come from this site: please send it again."
_SIGNUP_FIELDS = ("email", "name", "topics", "timezone", "send_at")
_PREFERENCE_FIELDS = ("topics", "cadence", "weekday", "timezone", "send_at")


def _masked(email: str) -> str:
    """a•••@example.org: enough to recognise one's address, not to harvest it from a
    forwarded link."""
    local, _, domain = email.partition("@")
    return f"{local[:1]}•••@{domain}"

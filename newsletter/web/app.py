"""The web app: the subscriber's pages, the admin API, health and metrics, assembled.

Responses carry ``Referrer-Policy: no-referrer`` (a token in the URL never leaks to
another site), ``X-Content-Type-Options`` and a strict Content-Security-Policy:
pages, JSON and error answers alike. Redirects are built from
``NEWSLETTER_BASE_URL``, never from the request's Host header.
"""

from __future__ import annotations

import logging

import sqlalchemy as sa
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from newsletter.config import on_this_machine
from newsletter.db import error_reason
from newsletter.health import WorkerHealth
from newsletter.ledger import stats
from newsletter.metrics import prometheus_text
from newsletter.runtime import Runtime
from newsletter.web import preferences, signup, unsubscribe, votes, webhooks
from newsletter.web.api import api_routes, bearer_ok
from newsletter.web.site import PAGE_HEADERS, Site

log = logging.getLogger(__name__)
_DEFAULT_HEADERS = [(k.lower().encode(), v.encode()) for k, v in PAGE_HEADERS.items()]


class SecurityHeaders:
    """Adds the page headers to every response that does not set its own."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                present = {name for name, _ in message.get("headers", [])}
                message["headers"] = list(message.get("headers", [])) + [
                    (k, v) for k, v in _DEFAULT_HEADERS if k not in present
                ]
            await send(message)

        await self.app(scope, receive, with_headers)


def create_app(*, runtime: Runtime, health: WorkerHealth | None = None) -> Starlette:
    site = Site.create(runtime=runtime, health=health)
    engine, base_url = runtime.engine, runtime.settings.base_url

    def healthz(_request: Request) -> Response:
        try:
            stats(engine=engine)  # reads every table the pages and the worker need
        except sa.exc.SQLAlchemyError as exc:
            # The reason names hosts, users and paths: the log has it, the public does not.
            log.warning("healthz: database unavailable: %s", error_reason(exc))
            return JSONResponse({"status": "error", "database": "unavailable"}, status_code=503)
        problem = health.problem() if health is not None else None
        if problem is not None:
            return JSONResponse({"status": "error", "worker": problem}, status_code=503)
        return JSONResponse({"status": "ok"})

    admin = runtime.settings.admin_token.encode()

    def metrics(request: Request) -> Response:
        # Subscriber counts, rates and queues are the operator's: for this machine's
        # Prometheus, or another's with the admin token as its bearer; to anyone else,
        # nothing is here (behind a proxy, NEWSLETTER_TRUSTED_PROXIES tells clients apart).
        if not (_on_this_machine(request) or bearer_ok(request, token=admin)):
            return site.not_found()
        return PlainTextResponse(
            prometheus_text(engine=engine), media_type="text/plain; version=0.0.4"
        )

    async def http_error(request: Request, exc: Exception) -> Response:
        status = exc.status_code if isinstance(exc, HTTPException) else 500
        if request.url.path.startswith("/api/"):
            # The API speaks JSON, its refusals too; off, it is not there at all.
            if not admin:
                status = 404
            words = {404: "not found", 405: "method not allowed"}.get(status, "error")
            allow = getattr(exc, "headers", None) or {} if status == 405 else {}
            return JSONResponse({"error": words}, status_code=status, headers=PAGE_HEADERS | allow)
        if status == 404 and request.url.path.endswith("/") and request.url.path != "/":
            # "/subscribe/" -> "/subscribe", on our own base URL whatever Host said.
            target = base_url + request.url.path.rstrip("/")
            if request.url.query:
                target += "?" + request.url.query
            return RedirectResponse(target, status_code=308, headers=PAGE_HEADERS)
        if status == 404:
            return site.not_found()
        return site.page("error.html.j2", status=status, status_code=status)

    async def server_error(_request: Request, exc: Exception) -> Response:
        if isinstance(exc, sa.exc.SQLAlchemyError):
            log.error("database error", extra={"error": error_reason(exc)})
            return site.page("error.html.j2", status=503, status_code=503)
        log.error("unhandled error", exc_info=exc)
        return site.page("error.html.j2", status=500, status_code=500)

    app = Starlette(
        routes=[
            *api_routes(runtime=runtime),
            *unsubscribe.routes(site),
            *signup.routes(site),
            *preferences.routes(site),
            *votes.routes(site),
            *webhooks.routes(site),
            Route("/healthz", healthz, methods=["GET"]),
            Route("/metrics", metrics, methods=["GET"]),
        ],
        exception_handlers={HTTPException: http_error, Exception: server_error},
    )
    # Starlette's own trailing-slash redirect copies the Host header into Location.
    app.router.redirect_slashes = False
    app.add_middleware(SecurityHeaders)
    return app


def _on_this_machine(request: Request) -> bool:
    """The client is this machine, and no proxy on it speaks for another (a same-host
    proxy the operator did not name in NEWSLETTER_TRUSTED_PROXIES makes every visitor
    look local; the headers it adds give it away)."""
    if "x-forwarded-for" in request.headers or "forwarded" in request.headers:
        return False
    return request.client is not None and on_this_machine(request.client.host)

"""One-click unsubscribe (RFC 8058), its page and undo, and the archive copy of a digest.

GET never changes anything (mail scanners and link previewers follow links);
the changes are POSTs.
"""

from __future__ import annotations

from sqlmodel import Session
from starlette.requests import Request
from starlette.responses import HTMLResponse, PlainTextResponse, Response
from starlette.routing import Route

from newsletter import render, subscribers, tokens
from newsletter.db import session_scope
from newsletter.ledger.jobs import DigestJob, job_for
from newsletter.models import Delivery, Subscriber, SubscriberStatus, utcnow
from newsletter.web import forms
from newsletter.web.signup import STALE_FORM
from newsletter.web.site import PAGE_HEADERS, Site, masked

# The archive is the email's own HTML: inline styles, images from anywhere, no scripts.
_ARCHIVE_CSP = (
    "default-src 'none'; style-src 'unsafe-inline'; img-src * data:; frame-ancestors 'none'"
)
_UNSUBSCRIBE_IDS = (1, 2)  # the subscriber, and the digest the link came in (if any)


def routes(site: Site) -> list[Route]:
    engine = site.runtime.engine

    def unsubscriber(
        session: Session, request: Request
    ) -> tuple[Subscriber, tuple[int, ...]] | None:
        return site.subscriber_for(
            session, request, purpose=tokens.UNSUBSCRIBE, arity=_UNSUBSCRIBE_IDS
        )

    def unsubscribe_page(request: Request) -> Response:
        with session_scope(engine=engine) as session:
            found = unsubscriber(session, request)
            if found is None:
                return site.not_found()
            row = found[0]
            done, email = row.status == SubscriberStatus.UNSUBSCRIBED, masked(row.email)
        return site.page("unsubscribe.html.j2", email=email, done=done, action=request.url.path)

    async def unsubscribe_post(request: Request) -> Response:
        form = await request.form()
        # RFC 8058: the mail client POSTs "List-Unsubscribe=One-Click", without cookies,
        # and must get a 2xx without redirects. Our own button posts source=page.
        one_click = form.get("List-Unsubscribe") == "One-Click"
        if not one_click and form.get("source") != "page":
            # Neither the mail client's one-click nor our button (a link checker, a
            # prefetch by POST): the page that asks, and nothing changed.
            return unsubscribe_page(request)
        with session_scope(engine=engine) as session:
            found = unsubscriber(session, request)
            if found is None:
                return site.not_found()
            row, ids = found
            delivery_id = ids[1] if len(ids) > 1 else None
            if delivery_id is not None and session.get(Delivery, delivery_id) is None:
                delivery_id = None  # the digest was deleted since: still honour the request
            subscribers.unsubscribe(
                session=session,
                subscriber_id=row.id,  # type: ignore[arg-type]
                now=utcnow(),
                source="one-click" if one_click else "page",
                delivery_id=delivery_id,
            )
            email = masked(row.email)
        if one_click:
            return PlainTextResponse("Unsubscribed.\n", headers=PAGE_HEADERS)
        return unsubscribed_page(request, row, email)

    def unsubscribed_page(
        request: Request, row: Subscriber, email: str, *, status: int = 200, problem: str = ""
    ) -> Response:
        return site.page(
            "unsubscribed.html.j2", status=status, email=email, problem=problem,
            resubscribe=f"{request.url.path.removesuffix('/resubscribe')}/resubscribe",
            csrf=forms.csrf_token(key=site.key, scope=f"u:{row.id}"),
        )  # fmt: skip

    async def resubscribe_post(request: Request) -> Response:
        form = await request.form()
        with session_scope(engine=engine) as session:
            found = unsubscriber(session, request)
            if found is None:
                return site.not_found()
            sid = found[0].id
            if not forms.csrf_ok(key=site.key, scope=f"u:{sid}", token=str(form.get("csrf", ""))):
                return unsubscribed_page(
                    request, found[0], masked(found[0].email), status=400, problem=STALE_FORM
                )
            found = subscribers.resubscribe(session=session, subscriber_id=sid, now=utcnow())  # type: ignore[arg-type]
            assert found is not None
            row, state = found
            email = masked(row.email)
        return site.page("resubscribed.html.j2", email=email, state=state)

    def archive(request: Request) -> Response:
        with session_scope(engine=engine) as session:
            found = site.subscriber_for(session, request, purpose=tokens.ARCHIVE, arity=(2,))
            if found is None:
                return site.not_found()
            job = job_for(session=session, delivery_id=found[1][1], links=site.runtime.links)
        if not isinstance(job, DigestJob) or job.subscriber_id != found[0].id:
            return site.not_found()
        # No size budget: Gmail's clip is an inbox's, and this page is where the papers
        # an email had no room for are seen.
        html = render.render_digest(
            digest=job.digest, sender=site.runtime.sender, budget=False
        ).html
        headers = PAGE_HEADERS | {
            "Content-Security-Policy": _ARCHIVE_CSP,
            "X-Robots-Tag": "noindex",
        }
        return HTMLResponse(html, headers=headers)

    return [
        Route("/u/{token}", unsubscribe_page, methods=["GET"]),
        Route("/u/{token}", unsubscribe_post, methods=["POST"]),
        Route("/u/{token}/resubscribe", resubscribe_post, methods=["POST"]),
        Route("/d/{token}", archive, methods=["GET"]),
    ]

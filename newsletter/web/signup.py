"""Double opt-in sign-up: the form, and the confirmation link (a button: GET changes nothing).

The answer to a sign-up is the same, in body and in time, whatever the address:
new, pending, unsubscribed or active. The request only holds the sign-up (one
insert, on every path); the confirmation is queued after the response has gone
(and by any delivery loop, should this process die first). See ``signups``.
"""

from __future__ import annotations

from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from newsletter import signups, tokens
from newsletter.db import session_scope
from newsletter.models import SubscriberStatus, utcnow
from newsletter.subscribers import NewSubscriber
from newsletter.web import forms
from newsletter.web.site import Site, masked, recipient

STALE_FORM = "This form was open too long, or did not come from this site: please send it again."
_FIELDS = ("email", "name", "topics", "timezone", "send_at")


def routes(site: Site) -> list[Route]:
    settings, engine = site.runtime.settings, site.runtime.engine
    limit = forms.RateLimit(limit=5, window=600)  # per client address, per process

    def form_page(form: forms.Form, status: int = 200) -> Response:
        csrf = forms.csrf_token(key=site.key, scope="subscribe")
        return site.page("subscribe.html.j2", status=status, form=form, csrf=csrf)

    def subscribe_page(_request: Request) -> Response:
        defaults = {"timezone": settings.default_timezone, "send_at": settings.default_send_at}
        return form_page(forms.Form(values={"email": "", "name": "", "topics": ""} | defaults))

    def queue() -> None:
        signups.queue_confirmations(
            engine=engine, now=utcnow(), message_id_domain=settings.message_id_domain
        )

    async def subscribe_post(request: Request) -> Response:
        data = await request.form()
        form = forms.Form(values={k: str(data.get(k, "")) for k in _FIELDS})
        if not forms.csrf_ok(key=site.key, scope="subscribe", token=str(data.get("csrf", ""))):
            form.errors["form"] = STALE_FORM
            return form_page(form, status=400)
        client = request.client.host if request.client else "unknown"
        if not limit.allow(forms.client_key(client)):
            return site.page("rate_limited.html.j2", status=429, what="sign-ups")
        email = forms.check_email(form)
        name = forms.check_name(form)
        topics = forms.check_topics(form)
        tz, at = forms.check_schedule(form)
        if not form.ok:
            return form_page(form, status=422)
        new = NewSubscriber(email=email, topics=tuple(topics), name=name, timezone=tz, send_at=at)
        with session_scope(engine=engine) as session:
            signups.hold(session=session, subscriber=new, now=utcnow())
        response = site.page(
            "check_inbox.html.j2", email=email, hours=f"{settings.confirm_hours:g}"
        )
        response.background = BackgroundTask(queue)
        return response

    def confirm_page(request: Request) -> Response:
        with session_scope(engine=engine) as session:
            found = site.subscriber_for(session, request, purpose=tokens.CONFIRM, arity=(2,))
            if found is None:
                return site.not_found()
            row = found[0]
            done, email = row.status == SubscriberStatus.ACTIVE, masked(row.email)
        return site.page("confirm.html.j2", email=email, done=done, action=request.url.path)

    def confirm_post(request: Request) -> Response:
        with session_scope(engine=engine) as session:
            found = site.subscriber_for(session, request, purpose=tokens.CONFIRM, arity=(2,))
            if found is None:
                return site.not_found()
            row = signups.confirm(
                session=session, subscriber_id=found[1][0], delivery_id=found[1][1], now=utcnow()
            )
            if row is None:
                return site.not_found()
            active, email = row.status == SubscriberStatus.ACTIVE, masked(row.email)
            preferences = site.runtime.links.preferences(who=recipient(row))
        return site.page("confirmed.html.j2", email=email, active=active, preferences=preferences)

    return [
        Route("/subscribe", subscribe_page, methods=["GET"]),
        Route("/subscribe", subscribe_post, methods=["POST"]),
        Route("/confirm/{token}", confirm_page, methods=["GET"]),
        Route("/confirm/{token}", confirm_post, methods=["POST"]),
    ]

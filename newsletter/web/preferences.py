"""The preference centre: topics (with how many recent papers each would have matched),
daily / weekly / paused, time zone and send time. The link in every digest opens it."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from newsletter import subscribers, tokens
from newsletter.db import session_scope
from newsletter.models import Subscriber, SubscriberStatus, utcnow
from newsletter.web import forms
from newsletter.web.preview import RecentPapers
from newsletter.web.signup import STALE_FORM
from newsletter.web.site import Site, masked, recipient

_FIELDS = ("topics", "dial", "cadence", "weekday", "timezone", "send_at")


def routes(site: Site) -> list[Route]:
    engine = site.runtime.engine
    recent = RecentPapers(engine=engine)

    def form_page(
        row: Subscriber, form: forms.Form, *, saved: bool = False, status: int = 200
    ) -> Response:
        topics = forms.topic_lines(form.values.get("topics", ""))
        # Only topics that parsed: a form with a topic error shows the error, not counts.
        counts = {} if "topics" in form.errors else recent.counts(topics=topics, now=utcnow())
        return site.page(
            "preferences.html.j2",
            status=status,
            form=form,
            email=masked(row.email),
            saved=saved,
            counts=counts,
            weekdays=forms.WEEKDAYS,
            dial_steps=forms.DIAL_STEPS,
            csrf=forms.csrf_token(key=site.key, scope=f"p:{row.id}"),
            unsubscribe=site.runtime.links.unsubscribe(who=recipient(row)),
        )

    def preferences_page(request: Request) -> Response:
        with session_scope(engine=engine) as session:
            found = site.subscriber_for(session, request, purpose=tokens.PREFERENCES, arity=(1,))
            if found is None or found[0].status == SubscriberStatus.PENDING:
                return site.not_found()
            row = found[0]
            topics = subscribers.topics_by_subscriber(session=session, ids=[row.id])  # type: ignore[list-item]
            values = {
                "topics": "\n".join(topics.get(row.id, [])),  # type: ignore[arg-type]
                "dial": str(row.dial),
                "cadence": row.cadence,
                "weekday": "" if row.weekday is None else str(row.weekday),
                "timezone": row.timezone,
                "send_at": row.send_at,
            }
            return form_page(row, forms.Form(values=values))

    async def preferences_post(request: Request) -> Response:
        data = await request.form()
        form = forms.Form(values={k: str(data.get(k, "")) for k in _FIELDS})
        with session_scope(engine=engine) as session:
            found = site.subscriber_for(session, request, purpose=tokens.PREFERENCES, arity=(1,))
            if found is None or found[0].status == SubscriberStatus.PENDING:
                return site.not_found()
            row = found[0]
            if not forms.csrf_ok(
                key=site.key, scope=f"p:{row.id}", token=str(data.get("csrf", ""))
            ):
                form.errors["form"] = STALE_FORM + " Nothing was changed."
                return form_page(row, form, status=400)
            topics = forms.check_topics(form)
            dial = forms.check_dial(form)
            cadence, weekday = forms.check_cadence(form)
            tz, at = forms.check_schedule(form)
            if data.get("action") == "preview" or not form.ok:
                return form_page(row, form, status=200 if form.ok else 422)
            now = utcnow()
            subscribers.replace_topics(
                session=session, subscriber_id=row.id, topics=topics, now=now
            )  # type: ignore[arg-type]
            row.cadence, row.weekday, row.timezone, row.send_at = cadence, weekday, tz, at
            row.dial = dial
            row.updated_at = now
            session.add(row)
            return form_page(row, form, saved=True)

    return [
        Route("/p/{token}", preferences_page, methods=["GET"]),
        Route("/p/{token}", preferences_post, methods=["POST"]),
    ]

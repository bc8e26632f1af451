"""The preference centre: topics (with how many recent papers each would have matched),
daily / weekly / paused, time zone and send time, and what the reader taught each topic
with their votes (each one undone, or a topic's all reset). The link in every digest
opens it."""

from __future__ import annotations

from sqlmodel import Session, select
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from newsletter import feedback, subscribers, tokens
from newsletter.db import session_scope
from newsletter.models import Paper, Subscriber, SubscriberStatus, utcnow
from newsletter.values import ascii_int
from newsletter.web import forms
from newsletter.web.preview import RecentPapers
from newsletter.web.signup import STALE_FORM
from newsletter.web.site import Site, masked, recipient

_FIELDS = ("topics", "dial", "cadence", "weekday", "timezone", "send_at", "ask")
# Saves and previews per reader in ten minutes, per web process: a reader's edits, not a
# script's loop (each parses up to 20 filters and counts them over a month's papers).
POSTS_PER_10_MINUTES = 30


def routes(site: Site) -> list[Route]:
    engine = site.runtime.engine
    recent = RecentPapers(engine=engine, max_papers=site.runtime.settings.preview_max_papers)
    limit = forms.RateLimit(limit=POSTS_PER_10_MINUTES, window=600)

    def taught_by_topic(session: Session, row: Subscriber) -> list[dict[str, object]]:
        """Each topic the reader voted in, in their order: its papers, titled."""
        state = feedback.taught(session=session, subscriber_ids=[row.id])  # type: ignore[list-item]
        ids = {pid for votes in state.values() for pid, _ in votes}
        titles = dict(session.exec(select(Paper.id, Paper.title).where(Paper.id.in_(ids))).all())  # type: ignore[union-attr]
        return [
            {
                "query": query,
                "papers": [
                    {"id": pid, "vote": vote, "title": titles.get(pid, "?")}
                    for pid, vote in state[(row.id, query)]  # type: ignore[index]
                ],
            }
            for query in feedback.topics_of(session, row.id)  # type: ignore[arg-type]
            if (row.id, query) in state
        ]

    def form_page(
        row: Subscriber,
        form: forms.Form,
        *,
        saved: bool = False,
        status: int = 200,
        taught: list[dict[str, object]] | None = None,
        notice: str | None = None,
    ) -> Response:
        topics = forms.topic_lines(form.values.get("topics", ""))
        # Only topics that were checked and parsed: a form with a topic error shows the
        # error, and a refused form (stale, forged) was never checked: no counts.
        unchecked = "topics" in form.errors or "form" in form.errors
        counts = {} if unchecked else recent.counts(topics=topics, now=utcnow())
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
            taught=taught or [],
            notice=notice,
            votes_action=site.runtime.links.preferences(who=recipient(row)) + "/votes",
        )

    def current(
        session: Session, row: Subscriber, *, status: int = 200, notice: str | None = None
    ) -> Response:
        """The page as the stored settings fill it."""
        topics = subscribers.topics_by_subscriber(session=session, ids=[row.id])  # type: ignore[list-item]
        values = {
            "topics": "\n".join(topics.get(row.id, [])),  # type: ignore[arg-type]
            "dial": str(row.dial),
            "cadence": row.cadence,
            "weekday": "" if row.weekday is None else str(row.weekday),
            "timezone": row.timezone,
            "send_at": row.send_at,
            "ask": "on" if row.ask_feedback else "",
        }
        return form_page(
            row,
            forms.Form(values=values),
            status=status,
            taught=taught_by_topic(session, row),
            notice=notice,
        )

    def preferences_page(request: Request) -> Response:
        with session_scope(engine=engine) as session:
            found = site.subscriber_for(session, request, purpose=tokens.PREFERENCES, arity=(1,))
            if found is None or found[0].status == SubscriberStatus.PENDING:
                return site.not_found()
            return current(session, found[0])

    async def votes_post(request: Request) -> Response:
        """Undo one vote (``paper``) or reset a topic (``action=reset``)."""
        data = await request.form()
        with session_scope(engine=engine) as session:
            found = site.subscriber_for(session, request, purpose=tokens.PREFERENCES, arity=(1,))
            if found is None or found[0].status == SubscriberStatus.PENDING:
                return site.not_found()
            row = found[0]
            if not forms.csrf_ok(
                key=site.key, scope=f"p:{row.id}", token=str(data.get("csrf", ""))
            ):
                return current(
                    session, row, status=400, notice=STALE_FORM + " Nothing was changed."
                )
            query = str(data.get("topic", ""))
            votes = dict(
                feedback.taught(session=session, subscriber_ids=[row.id]).get((row.id, query), ())  # type: ignore[list-item, arg-type]
            )
            paper = ascii_int(str(data.get("paper", "")))
            chosen = list(votes) if data.get("action") == "reset" else [paper]
            if not votes or not all(pid in votes for pid in chosen):
                return current(session, row, status=400, notice="There was no such vote.")
            for pid in chosen:
                feedback.record_vote(
                    session=session,
                    subscriber=row,
                    query=query,
                    paper_id=pid,  # type: ignore[arg-type]
                    vote=feedback.Vote.NONE,
                    source="preferences",
                    now=utcnow(),
                )
            said = "Vote undone." if len(chosen) == 1 else f"{len(chosen)} votes undone."
            return current(session, row, notice=said)

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
            if not limit.allow(f"p:{row.id}"):
                return site.page("rate_limited.html.j2", status=429, what="preferences")
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
            row.ask_feedback = form.values.get("ask") == "on"
            row.updated_at = now
            session.add(row)
            return form_page(row, form, saved=True)

    return [
        Route("/p/{token}", preferences_page, methods=["GET"]),
        Route("/p/{token}", preferences_post, methods=["POST"]),
        Route("/p/{token}/votes", votes_post, methods=["POST"]),
    ]

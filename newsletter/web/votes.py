"""The reader's votes from the email: "More like this" and "Not for me" under each paper.

Mail scanners and link previewers open every link in a message, so GET (and HEAD)
only shows a page with the paper and one button; the vote is recorded by that
button's POST, which carries a CSRF token bound to the subscriber. The link is
``/v/<token>/<paper>``: the token signs subscriber and digest (``links.votes``), the
paper must be one the digest holds, and its first topic, the one that carried it
(``relevance.score._carrier_first``), is the one voted on. Links sent before carry one
token per paper (subscriber, digest, paper, topic: ``/v/<token>``) and still work. The
direction in the path (``/up``, ``/down``) only picks the button, as the reader may
choose either. A vote on an old digest still counts; voting again, switching and
undoing work from the same page.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from sqlmodel import Session
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from newsletter import feedback, snapshot, tokens
from newsletter.db import session_scope
from newsletter.errors import SubscriberError, TooManyVotesError
from newsletter.feedback import Vote
from newsletter.models import Delivery, Paper, Subscriber, SubscriberStatus, utcnow
from newsletter.render.content import clean, shorten
from newsletter.text import latex_to_text
from newsletter.web import forms
from newsletter.web.signup import STALE_FORM
from newsletter.web.site import Site

_VOTE_IDS = (4,)  # subscriber, digest, paper, the index of the topic that carried it
_VOTES_IDS = (2,)  # subscriber, digest (the paper is in the path)
_PAPER_RE = re.compile(r"[0-9]{1,18}")
VOTES_PER_HOUR = 120  # per subscriber, in the ledger: a reader's taps, not a script's loop


@dataclass(frozen=True, slots=True)
class _Ballot:
    """What a valid vote link names, checked against the ledger."""

    subscriber: Subscriber
    delivery_id: int
    paper_id: int
    title: str
    topic: str
    current: int  # the topic's vote on this paper now: 1, -1 or 0


def routes(site: Site) -> list[Route]:
    engine = site.runtime.engine

    def ballot(session: Session, request: Request) -> _Ballot | None:
        in_path = request.path_params.get("paper")
        if in_path is None:  # a per-paper link (sent until 2026-11)
            found = site.subscriber_for(session, request, purpose=tokens.VOTE, arity=_VOTE_IDS)
        elif _PAPER_RE.fullmatch(in_path) is None:
            return None  # as a token's ids: int() of thousands of digits raises
        else:
            in_path = int(in_path)
            found = site.subscriber_for(session, request, purpose=tokens.VOTES, arity=_VOTES_IDS)
            found = None if found is None else (found[0], (*found[1], in_path, 0))
        if found is None or found[0].status == SubscriberStatus.PENDING:
            return None
        row, (sid, delivery_id, paper_id, index) = found
        delivery = session.get(Delivery, delivery_id)
        if delivery is None or delivery.subscriber_id != sid:
            return None
        try:
            items = snapshot.decode(snapshot.text_of(session.connection(), delivery) or "[]")
        except snapshot.SnapshotError:
            return None
        # The snapshot first: a paper id from the path reaches the database only when
        # the digest holds it (an id too large for an integer column never does).
        item = next((i for i in items if i.paper_id == paper_id), None)
        if item is None or index >= len(item.topics) or (in_path is not None and not item.votable):
            return None
        paper = session.get(Paper, paper_id)
        if paper is None:
            return None
        topic = item.topics[index]
        taught = feedback.taught(session=session, subscriber_ids=[sid]).get((sid, topic), ())
        title = shorten(clean(latex_to_text(paper.title)), 200)
        return _Ballot(row, delivery_id, paper_id, title, topic, dict(taught).get(paper_id, 0))

    def page(b: _Ballot, request: Request, *, way: str, status: int = 200, **more: object):  # type: ignore[no-untyped-def]
        sid = b.subscriber.id
        return site.page(
            "vote.html.j2",
            status=status,
            title=b.title,
            topic=shorten(clean(b.topic), 120),
            way=way,
            current={1: "up", -1: "down"}.get(b.current, "none"),
            action=request.url.path,
            csrf=forms.csrf_token(key=site.key, scope=f"v:{sid}"),
            **({"recorded": None, "problem": None} | more),
        )

    def vote_page(request: Request) -> Response:
        way = request.path_params.get("way", "up")
        with session_scope(engine=engine) as session:
            b = ballot(session, request)
            if b is None or way not in ("up", "down"):
                return site.not_found()
            return page(b, request, way=way)

    async def vote_post(request: Request) -> Response:
        way = request.path_params.get("way", "up")
        data = await request.form()
        with session_scope(engine=engine) as session:
            b = ballot(session, request)
            if b is None or way not in ("up", "down"):
                return site.not_found()
            sid = b.subscriber.id
            if not forms.csrf_ok(key=site.key, scope=f"v:{sid}", token=str(data.get("csrf", ""))):
                return page(b, request, way=way, status=400, problem=STALE_FORM)
            try:
                vote = Vote(str(data.get("vote", "")))
            except ValueError:
                return page(b, request, way=way, status=400, problem="Choose a vote.")
            try:
                feedback.record_vote(
                    session=session,
                    subscriber=b.subscriber,
                    query=b.topic,
                    paper_id=b.paper_id,
                    vote=vote,
                    source="web",
                    now=utcnow(),
                    delivery_id=b.delivery_id,
                    per_hour=VOTES_PER_HOUR,
                )
            except TooManyVotesError:
                return page(
                    b, request, way=way, status=429, problem="Too many votes; try again later."
                )
            except SubscriberError:  # the reader has since removed that topic
                return page(
                    b,
                    request,
                    way=way,
                    status=409,
                    problem="This topic is no longer one of yours, so nothing was recorded.",
                )
            done = _Ballot(b.subscriber, b.delivery_id, b.paper_id, b.title, b.topic, vote.sign)
            return page(done, request, way=way, recorded=vote.value)

    return [
        Route("/v/{token}/{paper}/{way}", vote_page, methods=["GET"]),
        Route("/v/{token}/{paper}/{way}", vote_post, methods=["POST"]),
        Route("/v/{token}", vote_page, methods=["GET"]),
        Route("/v/{token}/{way}", vote_page, methods=["GET"]),
        Route("/v/{token}", vote_post, methods=["POST"]),
        Route("/v/{token}/{way}", vote_post, methods=["POST"]),
    ]

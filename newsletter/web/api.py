"""The admin JSON API under /api/: subscribers CRUD and stats, behind a bearer token.

Off unless ``NEWSLETTER_ADMIN_TOKEN`` is set (every /api/ path is then a 404).
The token is compared in constant time; a missing or wrong one gets 401 with
``WWW-Authenticate: Bearer``. ``/api/openapi.json`` describes every operation;
the test suite runs schemathesis against it. Errors are JSON:
``{"error": "...", "field": "..."}``.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from typing import Any

from sqlmodel import select
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from newsletter import subscribers
from newsletter.db import session_scope
from newsletter.errors import DuplicateSubscriberError, SubscriberError
from newsletter.ledger import stats, unsubscribes_by_edition
from newsletter.models import Subscriber, SubscriberStatus, utcnow
from newsletter.relevance import DEFAULT_DIAL
from newsletter.runtime import Runtime
from newsletter.values import ascii_int
from newsletter.web.openapi import ADMIN_STATUSES, OPENAPI, PAGE_MAX

Handler = Callable[[Request], Awaitable[Response]]


def _error(status: int, message: str, field: str | None = None) -> JSONResponse:
    body: dict[str, Any] = {"error": message}
    if field:
        body["field"] = field
    return JSONResponse(body, status_code=status)


def _subscriber_json(row: Subscriber, topics: list[str]) -> dict[str, Any]:
    return {
        "id": row.id,
        "email": row.email,
        "name": row.name,
        "status": row.status,
        "topics": topics,
        "timezone": row.timezone,
        "send_at": row.send_at,
        "cadence": row.cadence,
        "weekday": row.weekday,
        "dial": row.dial,
        "ask_feedback": row.ask_feedback,
        "created_at": row.created_at.isoformat(),
    }


async def _json_object(request: Request) -> dict[str, Any] | JSONResponse:
    try:
        body = await request.json()
    except ValueError:
        return _error(400, "the body is not JSON")
    except RecursionError:
        return _error(400, "the body is nested too deeply")
    if not isinstance(body, dict):
        return _error(400, "the body must be a JSON object")
    return body


def _only(body: dict[str, Any], schema: str) -> None:
    """A field the endpoint does not take is refused, naming it, not dropped: a caller
    who sent ``"status": "unsubscribed"`` with a new subscriber, or a new ``email``,
    must not be told 201 or 200 for what was not done. What each takes is its schema
    in the OpenAPI document, so the two cannot disagree."""
    takes = OPENAPI["components"]["schemas"][schema]["properties"]
    for name in body:
        if name not in takes:
            why = "cannot be changed (remove the subscriber and add the new address)"
            raise SubscriberError(
                why if name == "email" else f"is not a field this takes ({', '.join(takes)})",
                field=name[:64],
            )


def _str_field(body: dict[str, Any], name: str, default: str | None = None) -> str | None:
    value = body.get(name, default)
    if value is not None and not isinstance(value, str):
        raise SubscriberError("must be a string", field=name)
    return value


def _topics_field(body: dict[str, Any]) -> list[object]:
    """Filters as text ("FILTER" or "FILTER | sentence") or {"filter": ..., "about": ...}."""
    topics = body.get("topics", [])
    if not isinstance(topics, list) or not all(isinstance(t, str | dict) for t in topics):
        raise SubscriberError("must be a list of filters", field="topics")
    return topics


def _page_param(request: Request, name: str, default: int) -> int | None:
    raw = request.query_params.get(name)
    return default if raw is None else ascii_int(raw)


def bearer_ok(request: Request, *, token: bytes) -> bool:
    """The request carries ``Authorization: Bearer <token>`` (compared in constant time);
    never with no token."""
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    return bool(token) and scheme.lower() == "bearer" and hmac.compare_digest(given.encode(), token)


def api_routes(*, runtime: Runtime) -> list[Route]:
    settings, engine = runtime.settings, runtime.engine
    token = settings.admin_token.encode()

    def guarded(handler: Handler) -> Handler:
        async def endpoint(request: Request) -> Response:
            if not token:
                return _error(404, "not found")
            if not bearer_ok(request, token=token):
                response = _error(401, "a valid bearer token is required")
                response.headers["WWW-Authenticate"] = 'Bearer realm="newsletter"'
                return response
            try:
                return await handler(request)
            except SubscriberError as exc:
                return _error(
                    409 if isinstance(exc, DuplicateSubscriberError) else 422,
                    str(exc),
                    exc.field,
                )

        return endpoint

    async def openapi(_request: Request) -> Response:
        return JSONResponse(OPENAPI)

    async def get_stats(_request: Request) -> Response:
        return JSONResponse(
            stats(engine=engine)
            | {"unsubscribes_by_edition": unsubscribes_by_edition(engine=engine)}
        )

    async def list_subscribers(request: Request) -> Response:
        status = request.query_params.get("status")
        if status is not None and status not in tuple(SubscriberStatus):
            return _error(422, f"status must be one of {', '.join(SubscriberStatus)}", "status")
        limit = _page_param(request, "limit", 100)
        offset = _page_param(request, "offset", 0)
        if limit is None or not 1 <= limit <= PAGE_MAX:
            return _error(422, f"limit must be a whole number from 1 to {PAGE_MAX}", "limit")
        if offset is None or not 0 <= offset <= 2**31:
            return _error(422, f"offset must be a whole number from 0 to {2**31}", "offset")
        with session_scope(engine=engine) as session:
            query = select(Subscriber).order_by(Subscriber.id).offset(offset).limit(limit)
            if status is not None:
                query = query.where(Subscriber.status == status)
            rows = list(session.exec(query))
            topics = subscribers.topics_by_subscriber(session=session, ids=[r.id for r in rows])  # type: ignore[misc]
            return JSONResponse([_subscriber_json(r, topics.get(r.id, [])) for r in rows])  # type: ignore[arg-type]

    async def create_subscriber(request: Request) -> Response:
        body = await _json_object(request)
        if isinstance(body, JSONResponse):
            return body
        _only(body, "NewSubscriber")
        new = subscribers.validate_subscriber(
            email=_str_field(body, "email", "") or "",
            topics=_topics_field(body),
            name=_str_field(body, "name"),
            timezone=_str_field(body, "timezone", settings.default_timezone) or "",
            send_at=_str_field(body, "send_at", settings.default_send_at) or "",
        )
        dial = subscribers.validate_dial(body.get("dial", DEFAULT_DIAL))
        with session_scope(engine=engine) as session:
            row = subscribers.add_subscriber(session=session, subscriber=new, now=utcnow())
            row.dial = dial
            session.add(row)
            return JSONResponse(_subscriber_json(row, list(new.topics)), status_code=201)

    def _id(request: Request) -> int | None:
        value = ascii_int(request.path_params["id"])
        return value if value is not None and 0 < value < 2**63 else None

    async def get_subscriber(request: Request) -> Response:
        sid = _id(request)
        with session_scope(engine=engine) as session:
            row = session.get(Subscriber, sid) if sid is not None else None
            if row is None:
                return _error(404, "no such subscriber")
            topics = subscribers.topics_by_subscriber(session=session, ids=[sid]).get(sid, [])  # type: ignore[list-item,arg-type]
            return JSONResponse(_subscriber_json(row, topics))

    async def update_subscriber(request: Request) -> Response:
        sid = _id(request)
        body = await _json_object(request)
        if isinstance(body, JSONResponse):
            return body
        _only(body, "SubscriberChange")
        now = utcnow()
        with session_scope(engine=engine) as session:
            row = session.get(Subscriber, sid) if sid is not None else None
            if row is None:
                return _error(404, "no such subscriber")
            current = subscribers.topics_by_subscriber(session=session, ids=[sid]).get(sid, [])  # type: ignore[list-item,arg-type]
            checked = subscribers.validate_subscriber(
                email=row.email,
                topics=_topics_field(body) if "topics" in body else current,
                name=_str_field(body, "name", row.name),
                timezone=_str_field(body, "timezone", row.timezone) or "",
                send_at=_str_field(body, "send_at", row.send_at) or "",
            )
            cadence, weekday = subscribers.validate_cadence(
                cadence=body.get("cadence", row.cadence), weekday=body.get("weekday", row.weekday)
            )
            if body.get("weekday") is not None and weekday is None:  # would be dropped
                raise SubscriberError("only a weekly cadence has a weekday", field="weekday")
            row.dial = subscribers.validate_dial(body.get("dial", row.dial))
            ask = body.get("ask_feedback", row.ask_feedback)
            if not isinstance(ask, bool):
                raise SubscriberError("must be true or false", field="ask_feedback")
            row.ask_feedback = ask
            status = _str_field(body, "status", row.status)
            if status != row.status and status not in ADMIN_STATUSES:
                raise SubscriberError("can be set to active or unsubscribed", field="status")
            if status == SubscriberStatus.UNSUBSCRIBED and row.status != status:
                subscribers.unsubscribe(
                    session=session, subscriber_id=row.id, now=now, source="admin"
                )  # type: ignore[arg-type]
            elif status == SubscriberStatus.ACTIVE and row.status != status:
                subscribers.reactivate(session=session, row=row, now=now, by="admin")
            if "topics" in body:
                subscribers.replace_topics(
                    session=session, subscriber_id=row.id, topics=checked.topics, now=now
                )  # type: ignore[arg-type]
            row.name, row.timezone, row.send_at = checked.name, checked.timezone, checked.send_at
            row.cadence, row.weekday = cadence, weekday
            row.updated_at = now
            session.add(row)
            session.flush()
            return JSONResponse(_subscriber_json(row, list(checked.topics)))

    async def delete_subscriber(request: Request) -> Response:
        sid = _id(request)
        with session_scope(engine=engine) as session:
            row = session.get(Subscriber, sid) if sid is not None else None
            if row is None:
                return _error(404, "no such subscriber")
            subscribers.remove_subscriber(session=session, email=row.email, now=utcnow())
        return Response(status_code=204)

    return [
        Route("/api/openapi.json", guarded(openapi), methods=["GET"]),
        Route("/api/stats", guarded(get_stats), methods=["GET"]),
        Route("/api/subscribers", guarded(list_subscribers), methods=["GET"]),
        Route("/api/subscribers", guarded(create_subscriber), methods=["POST"]),
        Route("/api/subscribers/{id}", guarded(get_subscriber), methods=["GET"]),
        Route("/api/subscribers/{id}", guarded(update_subscriber), methods=["PATCH"]),
        Route("/api/subscribers/{id}", guarded(delete_subscriber), methods=["DELETE"]),
    ]

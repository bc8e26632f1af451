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
from newsletter.models import Cadence, Subscriber, SubscriberStatus, utcnow
from newsletter.runtime import Runtime
from newsletter.subscribers import MAX_NAME_CHARS, MAX_TOPIC_CHARS, MAX_TOPICS
from newsletter.values import ascii_int

_PAGE_MAX = 500
_ADMIN_STATUSES = (SubscriberStatus.ACTIVE, SubscriberStatus.UNSUBSCRIBED)

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


def _str_field(body: dict[str, Any], name: str, default: str | None = None) -> str | None:
    value = body.get(name, default)
    if value is not None and not isinstance(value, str):
        raise SubscriberError("must be a string", field=name)
    return value


def _topics_field(body: dict[str, Any]) -> list[str]:
    topics = body.get("topics", [])
    if not isinstance(topics, list) or not all(isinstance(t, str) for t in topics):
        raise SubscriberError("must be a list of strings", field="topics")
    return topics


def _page_param(request: Request, name: str, default: int) -> int | None:
    raw = request.query_params.get(name)
    return default if raw is None else ascii_int(raw)


def api_routes(*, runtime: Runtime) -> list[Route]:
    settings, engine = runtime.settings, runtime.engine
    token = settings.admin_token.encode()

    def guarded(handler: Handler) -> Handler:
        async def endpoint(request: Request) -> Response:
            if not token:
                return _error(404, "not found")
            scheme, _, given = request.headers.get("authorization", "").partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(given.encode(), token):
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
        if limit is None or offset is None:
            return _error(422, "limit and offset must be whole numbers", "limit")
        if not (1 <= limit <= _PAGE_MAX and 0 <= offset <= 2**31):
            return _error(422, f"limit must be 1-{_PAGE_MAX}, offset 0 or more", "limit")
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
        new = subscribers.validate_subscriber(
            email=_str_field(body, "email", "") or "",
            topics=_topics_field(body),
            name=_str_field(body, "name"),
            timezone=_str_field(body, "timezone", settings.default_timezone) or "",
            send_at=_str_field(body, "send_at", settings.default_send_at) or "",
        )
        with session_scope(engine=engine) as session:
            row = subscribers.add_subscriber(session=session, subscriber=new, now=utcnow())
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
            status = _str_field(body, "status", row.status)
            if status != row.status and status not in _ADMIN_STATUSES:
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


# --- the OpenAPI description ---------------------------------------------------------------

_ERROR = {"$ref": "#/components/schemas/Error"}
_SUBSCRIBER = {"$ref": "#/components/schemas/Subscriber"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


_ERRORS = {
    "401": _json(_ERROR, "Missing or wrong bearer token"),
    "422": _json(_ERROR, "A field is invalid; `field` names it"),
}
_ID = [{"name": "id", "in": "path", "required": True, "schema": {"type": "integer", "minimum": 1}}]
_TOPICS = {
    "type": "array",
    "items": {"type": "string", "maxLength": MAX_TOPIC_CHARS},
    "maxItems": MAX_TOPICS,
}

OPENAPI: dict[str, Any] = {
    "openapi": "3.0.3",
    "info": {"title": "newsletter admin API", "version": "1"},
    "security": [{"bearer": []}],
    "paths": {
        "/api/stats": {
            "get": {
                "summary": "Digests by state, bounces, subscribers, unsubscribes per edition",
                "responses": {"200": _json({"type": "object"}, "Counts"), "401": _ERRORS["401"]},
            }
        },
        "/api/subscribers": {
            "get": {
                "summary": "List subscribers",
                "parameters": [
                    {
                        "name": "status",
                        "in": "query",
                        "schema": {"type": "string", "enum": list(SubscriberStatus)},
                    },
                    {
                        "name": "limit",
                        "in": "query",
                        "schema": {"type": "integer", "minimum": 1, "maximum": _PAGE_MAX},
                    },
                    {
                        "name": "offset",
                        "in": "query",
                        "schema": {"type": "integer", "minimum": 0, "maximum": 2**31},
                    },
                ],
                "responses": {
                    "200": _json({"type": "array", "items": _SUBSCRIBER}, "Subscribers, by id")
                }
                | _ERRORS,
            },
            "post": {
                "summary": "Add an active subscriber (no confirmation mail: the operator vouches)",
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {
                            "schema": {"$ref": "#/components/schemas/NewSubscriber"}
                        }
                    },
                },
                "responses": {
                    "201": _json(_SUBSCRIBER, "Created"),
                    "400": _json(_ERROR, "Not a JSON object"),
                    "409": _json(_ERROR, "The address is already subscribed"),
                }
                | _ERRORS,
            },
        },
        "/api/subscribers/{id}": {
            "parameters": _ID,
            "get": {
                "summary": "One subscriber",
                "responses": {
                    "200": _json(_SUBSCRIBER, "The subscriber"),
                    "404": _json(_ERROR, "No such subscriber"),
                    "401": _ERRORS["401"],
                },
            },
            "patch": {
                "summary": "Change topics, schedule, cadence, or unsubscribe / reactivate",
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {
                            "schema": {"$ref": "#/components/schemas/SubscriberChange"}
                        }
                    },
                },
                "responses": {
                    "200": _json(_SUBSCRIBER, "Changed"),
                    "400": _json(_ERROR, "Not a JSON object"),
                    "404": _json(_ERROR, "No such subscriber"),
                }
                | _ERRORS,
            },
            "delete": {
                "summary": "Forget a subscriber: filters and ledger go too",
                "responses": {
                    "204": {"description": "Deleted"},
                    "404": _json(_ERROR, "No such subscriber"),
                    "401": _ERRORS["401"],
                },
            },
        },
    },
    "components": {
        "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        "schemas": {
            "Error": {
                "type": "object",
                "required": ["error"],
                "properties": {"error": {"type": "string"}, "field": {"type": "string"}},
            },
            "Subscriber": {
                "type": "object",
                "required": [
                    "id",
                    "email",
                    "status",
                    "topics",
                    "timezone",
                    "send_at",
                    "cadence",
                    "created_at",
                ],
                "properties": {
                    "id": {"type": "integer"},
                    "email": {"type": "string"},
                    "name": {"type": "string", "nullable": True},
                    "status": {"type": "string", "enum": list(SubscriberStatus)},
                    "topics": {"type": "array", "items": {"type": "string"}},
                    "timezone": {"type": "string"},
                    "send_at": {"type": "string"},
                    "cadence": {"type": "string", "enum": list(Cadence)},
                    "weekday": {"type": "integer", "nullable": True},
                    "created_at": {"type": "string", "format": "date-time"},
                },
            },
            "NewSubscriber": {
                "type": "object",
                "required": ["email"],
                "properties": {
                    "email": {"type": "string", "format": "email", "maxLength": 320},
                    "name": {"type": "string", "maxLength": MAX_NAME_CHARS, "nullable": True},
                    "topics": _TOPICS,
                    "timezone": {"type": "string", "maxLength": 64},
                    "send_at": {"type": "string", "maxLength": 5},
                },
            },
            "SubscriberChange": {
                "type": "object",
                "properties": {
                    "name": {"type": "string", "maxLength": MAX_NAME_CHARS, "nullable": True},
                    "topics": _TOPICS,
                    "timezone": {"type": "string", "maxLength": 64},
                    "send_at": {"type": "string", "maxLength": 5},
                    "cadence": {"type": "string", "enum": list(Cadence)},
                    "weekday": {"type": "integer", "minimum": 0, "maximum": 6, "nullable": True},
                    "status": {"type": "string", "enum": list(_ADMIN_STATUSES)},
                },
            },
        },
    },
}

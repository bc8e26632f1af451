"""The admin API's OpenAPI 3 description (served at /api/openapi.json; schemathesis
tests the API against it)."""

from __future__ import annotations

from typing import Any

from newsletter.models import Cadence, SubscriberStatus
from newsletter.relevance import DIAL
from newsletter.subscribers import (
    ABOUT_SEPARATOR,
    MAX_ABOUT_CHARS,
    MAX_NAME_CHARS,
    MAX_TOPIC_CHARS,
    MAX_TOPIC_ENTRIES,
    MAX_TOPICS,
)

PAGE_MAX = 500
ADMIN_STATUSES = (SubscriberStatus.ACTIVE, SubscriberStatus.UNSUBSCRIBED)

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
_TOPIC_OBJECT = {
    "type": "object",
    "required": ["filter"],
    "properties": {
        "filter": {"type": "string", "maxLength": MAX_TOPIC_CHARS},
        "about": {"type": "string", "maxLength": MAX_ABOUT_CHARS, "nullable": True},
    },
}
_TOPICS = {
    "type": "array",
    # A line is "FILTER" or "FILTER | a sentence about it": as long as both together
    "items": {
        "oneOf": [
            {
                "type": "string",
                "maxLength": MAX_TOPIC_CHARS + len(ABOUT_SEPARATOR) + 2 + MAX_ABOUT_CHARS,
            },
            _TOPIC_OBJECT,
        ]
    },
    # A filter given twice is one topic: more entries are read, MAX_TOPICS distinct kept
    "maxItems": MAX_TOPIC_ENTRIES,
    "description": f"at most {MAX_TOPICS} distinct filters",
}
_DIAL = {"type": "integer", "minimum": min(DIAL), "maximum": max(DIAL)}

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
                        "schema": {"type": "integer", "minimum": 1, "maximum": PAGE_MAX},
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
                    "dial": _DIAL,
                    "ask_feedback": {"type": "boolean"},
                    "created_at": {"type": "string", "format": "date-time"},
                },
            },
            "NewSubscriber": {
                "type": "object",
                "required": ["email"],
                "additionalProperties": False,  # refused with 422, naming the field
                "properties": {
                    "email": {"type": "string", "format": "email", "maxLength": 320},
                    "name": {"type": "string", "maxLength": MAX_NAME_CHARS, "nullable": True},
                    "topics": _TOPICS,
                    "timezone": {"type": "string", "maxLength": 64},
                    "send_at": {"type": "string", "maxLength": 5},
                    "dial": _DIAL,
                },
            },
            "SubscriberChange": {
                "type": "object",
                "additionalProperties": False,  # refused with 422, naming the field
                "properties": {
                    "name": {"type": "string", "maxLength": MAX_NAME_CHARS, "nullable": True},
                    "topics": _TOPICS,
                    "timezone": {"type": "string", "maxLength": 64},
                    "send_at": {"type": "string", "maxLength": 5},
                    "cadence": {"type": "string", "enum": list(Cadence)},
                    "weekday": {"type": "integer", "minimum": 0, "maximum": 6, "nullable": True},
                    "dial": _DIAL,
                    "ask_feedback": {"type": "boolean"},
                    "status": {"type": "string", "enum": list(ADMIN_STATUSES)},
                },
            },
        },
    },
}

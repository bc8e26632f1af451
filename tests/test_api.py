"""The admin API: bearer auth, subscribers CRUD, stats, and a schemathesis run of its
OpenAPI description against the real app."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.specs.openapi.checks import positive_data_acceptance
from sqlmodel import select

from newsletter import db
from newsletter.models import Event
from newsletter.web import create_app
from tests.conftest import make_settings
from tests.helpers import live_server, runtime_for, subscribe
from tests.smtp_server import free_port

TOKEN = "t" * 40
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def app(tmp_path: Path):  # type: ignore[no-untyped-def]
    url = f"sqlite:///{tmp_path / 'api.db'}"
    engine = db.make_engine(url)
    db.upgrade(engine=engine)
    settings = make_settings(tmp_path, url, NEWSLETTER_ADMIN_TOKEN=TOKEN)
    return create_app(runtime=runtime_for(settings, engine)), engine


@contextlib.contextmanager
def _client(web) -> Iterator[httpx.Client]:  # type: ignore[no-untyped-def]
    with live_server(web, free_port()) as url, httpx.Client(base_url=url, timeout=10) as client:
        yield client


def test_every_operation_needs_the_token(app) -> None:  # type: ignore[no-untyped-def]
    with _client(app[0]) as client:
        _needs_token(client)


def _needs_token(client: httpx.Client) -> None:
    operations = [
        ("GET", "/api/stats"),
        ("GET", "/api/subscribers"),
        ("POST", "/api/subscribers"),
        ("GET", "/api/subscribers/1"),
        ("PATCH", "/api/subscribers/1"),
        ("DELETE", "/api/subscribers/1"),
        ("GET", "/api/openapi.json"),
    ]
    for method, path in operations:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {TOKEN}"}):
            reply = client.request(method, path, headers=headers)
            assert reply.status_code == 401, (method, path, headers)
            assert reply.headers["www-authenticate"].startswith("Bearer")


def test_api_is_off_without_a_token(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'off.db'}"
    engine = db.make_engine(url)
    db.upgrade(engine=engine)
    with _client(create_app(runtime=runtime_for(make_settings(tmp_path, url), engine))) as client:
        assert client.get("/api/stats", headers=AUTH).status_code == 404


def test_subscriber_crud_round_trip(app) -> None:  # type: ignore[no-untyped-def]
    web, engine = app
    with _client(web) as client:
        _crud(client, engine)


def _crud(client: httpx.Client, engine) -> None:  # type: ignore[no-untyped-def]
    made = client.post(
        "/api/subscribers", headers=AUTH, json={"email": "Ann@Example.org", "topics": ["diffusion"]}
    )
    assert made.status_code == 201
    sid = made.json()["id"]
    assert made.json()["email"] == "ann@example.org" and made.json()["status"] == "active"
    assert (
        client.post("/api/subscribers", headers=AUTH, json={"email": "ann@example.org"}).status_code
        == 409
    )
    bad = client.post(
        "/api/subscribers", headers=AUTH, json={"email": "x@example.org", "topics": ['"open']}
    )
    assert (
        bad.status_code == 422
        and bad.json()["field"] == "topic"
        and "column" in bad.json()["error"]
    )
    about = {"filter": "LoRA", "about": "Parameter-efficient fine-tuning"}
    bad_about = client.post(
        "/api/subscribers",
        headers=AUTH,
        json={"email": "y@example.org", "topics": [about | {"about": "fine\x00tuning"}]},
    )
    assert bad_about.status_code == 422 and bad_about.json()["field"] == "about"
    with_about = client.post(
        "/api/subscribers", headers=AUTH, json={"email": "y@example.org", "topics": [about]}
    )
    assert with_about.status_code == 201
    assert with_about.json()["topics"] == ["LoRA | Parameter-efficient fine-tuning"]
    assert client.delete(f"/api/subscribers/{with_about.json()['id']}", headers=AUTH)
    change = {"cadence": "weekly", "weekday": 4, "topics": ["video"]}
    changed = client.patch(f"/api/subscribers/{sid}", headers=AUTH, json=change)
    assert changed.status_code == 200
    assert (changed.json()["cadence"], changed.json()["weekday"], changed.json()["topics"]) == (
        "weekly",
        4,
        ["video"],
    )
    gone = client.patch(f"/api/subscribers/{sid}", headers=AUTH, json={"status": "unsubscribed"})
    assert gone.json()["status"] == "unsubscribed"
    with db.session_scope(engine=engine) as session:
        (event,) = session.exec(select(Event).where(Event.kind == "subscriber.unsubscribed")).all()
    assert json.loads(event.detail) == {"source": "admin"}
    assert client.get("/api/stats", headers=AUTH).json()["unsubscribes"] == 1
    assert [
        s["id"] for s in client.get("/api/subscribers?status=unsubscribed", headers=AUTH).json()
    ] == [sid]
    assert client.delete(f"/api/subscribers/{sid}", headers=AUTH).status_code == 204
    assert client.get(f"/api/subscribers/{sid}", headers=AUTH).status_code == 404


def test_the_api_keeps_its_openapi_promises(app) -> None:  # type: ignore[no-untyped-def]
    """Schemathesis, against the app over HTTP: requests generated from the OpenAPI
    description get no 5xx, and every response matches its documented schema."""
    web, engine = app
    for i in range(1, 4):  # so that reads and changes meet real rows, not only 404s
        subscribe(engine, email=f"s{i}@example.org", topics=["diffusion"], now=datetime.now(UTC))
    port = free_port()
    with live_server(web, port) as url:
        schema = schemathesis.openapi.from_url(f"{url}/api/openapi.json", headers=AUTH)
        operations = [result.ok() for result in schema.get_all_operations()]
        assert len(operations) == 6
        for operation in operations:

            @given(case=operation.as_strategy())
            @settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
            def check(case) -> None:  # type: ignore[no-untyped-def]
                # Every check but "schema-valid data is accepted": email and filter syntax
                # and IANA zones are beyond JSON Schema, so such requests get the
                # documented 422 naming the field.
                case.call_and_validate(
                    base_url=url, headers=AUTH, excluded_checks=[positive_data_acceptance]
                )

            check()


@pytest.mark.parametrize(
    ("method", "body", "field", "says"),
    [
        ("post", {"email": "c@example.org", "status": "unsubscribed"}, "status", "not a field"),
        ("post", {"email": "c@example.org", "cadence": "weekly"}, "cadence", "not a field"),
        ("patch", {"email": "zzz@example.org"}, "email", "cannot be changed"),
        ("patch", {"weekday": 3}, "weekday", "only a weekly cadence has a weekday"),
        ("patch", {"nmae": "typo"}, "nmae", "not a field"),
    ],
)
def test_a_field_the_api_does_not_take_is_refused_not_dropped(
    app, method: str, body: dict[str, object], field: str, says: str
) -> None:  # type: ignore[no-untyped-def]
    """Told 201 or 200, a caller believes what it sent was done: a field an endpoint
    does not take (or a weekday a daily reader cannot have) is a 422 naming it, and
    nothing changes."""
    with _client(app[0]) as client:
        made = client.post("/api/subscribers", json={"email": "d@example.org"}, headers=AUTH)
        assert made.status_code == 201
        url = "/api/subscribers" + ("" if method == "post" else f"/{made.json()['id']}")
        reply = client.request(method.upper(), url, json=body, headers=AUTH)
        assert reply.status_code == 422 and reply.json()["field"] == field
        assert says in reply.json()["error"]
        listed = client.get("/api/subscribers", headers=AUTH).json()
    assert [(s["email"], s["cadence"], s["weekday"]) for s in listed] == [
        ("d@example.org", "daily", None)
    ]


def test_a_bad_page_names_the_parameter_that_is_wrong(app) -> None:  # type: ignore[no-untyped-def]
    with _client(app[0]) as client:
        for query, field in (("limit=0", "limit"), ("offset=-1", "offset"), ("offset=x", "offset"),
                             ("limit=501", "limit")):  # fmt: skip
            reply = client.get(f"/api/subscribers?{query}", headers=AUTH)
            assert reply.status_code == 422 and reply.json()["field"] == field, query


def test_metrics_from_elsewhere_take_the_admin_token(app) -> None:  # type: ignore[no-untyped-def]
    """A Prometheus on another machine scrapes with the admin token as its bearer; a
    visitor from there without it finds nothing."""
    away = {"X-Forwarded-For": "203.0.113.9"}
    with _client(app[0]) as client:
        assert client.get("/metrics", headers=away).status_code == 404
        wrong = away | {"Authorization": "Bearer " + "x" * 40}
        assert client.get("/metrics", headers=wrong).status_code == 404
        scraped = client.get("/metrics", headers=away | AUTH)
    assert scraped.status_code == 200 and "newsletter_deliveries" in scraped.text


def test_the_api_refuses_in_json_and_is_absent_when_off(app, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """A method an endpoint does not take is a JSON 405, not an HTML page; with no
    admin token every /api/ path is a 404, whatever the method."""
    with _client(app[0]) as client:
        wrong = client.put("/api/subscribers/1", headers=AUTH)
        assert wrong.status_code == 405 and wrong.json() == {"error": "method not allowed"}
    url = f"sqlite:///{tmp_path / 'off.db'}"
    engine = db.make_engine(url)
    db.upgrade(engine=engine)
    off = create_app(runtime=runtime_for(make_settings(tmp_path / "off", url), engine))
    with _client(off) as client:
        for method, path in (("PUT", "/api/subscribers/1"), ("POST", "/api/stats")):
            reply = client.request(method, path)
            assert reply.status_code == 404 and reply.json() == {"error": "not found"}

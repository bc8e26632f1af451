"""Small builders shared by tests: papers and subscribers straight into the database."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Iterator
from datetime import datetime

import sqlalchemy as sa

from newsletter import db, snapshot
from newsletter.backends.base import EmailBackend, OutgoingMessage
from newsletter.config import Settings
from newsletter.corpus.keys import canonical_key
from newsletter.deliver import DeliverReport, deliver_due
from newsletter.links import Links
from newsletter.models import Delivery, Paper
from newsletter.runtime import Runtime, build_runtime
from newsletter.subscribers import add_subscriber, validate_subscriber


def add_paper(
    engine: sa.Engine,
    *,
    title: str,
    abstract: str,
    seen: datetime,
    upvotes: int | None = None,
    **fields: object,
) -> int:
    """A paper stored directly; ``fields`` are other ``Paper`` columns (arxiv_id, key, …)."""
    key = str(fields.pop("key", canonical_key(title)))
    with db.session_scope(engine=engine) as session:
        paper = Paper(
            key=key,
            title=title,
            abstract=abstract,
            upvotes=upvotes,
            source_file="test",
            first_seen_at=seen,
            updated_at=seen,
            **fields,  # type: ignore[arg-type]
        )
        session.add(paper)
        session.flush()
        return paper.id  # type: ignore[return-value]


def subscribe(
    engine: sa.Engine,
    *,
    email: str,
    topics: list[str],
    now: datetime,
    tz: str = "UTC",
    send_at: str = "08:00",
    name: str | None = None,
) -> int:
    sub = validate_subscriber(email=email, topics=topics, name=name, timezone=tz, send_at=send_at)
    with db.session_scope(engine=engine) as session:
        return add_subscriber(session=session, subscriber=sub, now=now).id  # type: ignore[return-value]


def bulk_subscribe(
    engine: sa.Engine, *, prefix: str, count: int, query: str, now: datetime
) -> None:
    """Many subscribers with one filter each, in one transaction (one by one takes minutes)."""
    from newsletter.models import Subscriber, TopicFilter

    with db.session_scope(engine=engine) as session:
        subs = [
            Subscriber(email=f"{prefix}{i}@example.org", created_at=now, updated_at=now)
            for i in range(count)
        ]
        session.add_all(subs)
        session.flush()
        session.add_all(
            TopicFilter(subscriber_id=s.id, query=query, created_at=now)  # type: ignore[arg-type]
            for s in subs
        )


def runtime_for(settings: Settings, engine: sa.Engine | None = None) -> Runtime:
    return build_runtime(settings=settings, engine=engine)


def links_for(settings: Settings) -> Links:
    return runtime_for(settings).links


def deliver(
    engine: sa.Engine, settings: Settings, backend: EmailBackend, now: datetime
) -> DeliverReport:
    return asyncio.run(
        deliver_due(runtime=runtime_for(settings, engine), backend=backend, now=lambda: now)
    )


class ScriptedBackend(EmailBackend):
    """Keeps what it accepts; raises the scripted errors first, one per send, in order.

    A stand-in only for the transport: the ledger, rendering and retry logic
    under test are all real.
    """

    def __init__(self, errors: list[Exception] | None = None) -> None:
        self.errors = list(errors or [])
        self.sent: list[OutgoingMessage] = []

    async def send(self, message: OutgoingMessage) -> None:
        if self.errors:
            raise self.errors.pop(0)
        self.sent.append(message)


@contextlib.contextmanager
def live_server(app: object, port: int) -> Iterator[str]:
    """Serve an ASGI app with uvicorn on 127.0.0.1:port in a thread: real HTTP for tests."""
    import uvicorn

    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off")  # type: ignore[arg-type]
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    if not server.started:
        raise RuntimeError("uvicorn did not start")
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def signups_settled(engine: sa.Engine, timeout: float = 10.0) -> None:
    """Wait until the web app has queued the confirmations of the sign-ups it held (it
    does so right after answering, so a test's next step could otherwise race it)."""
    from sqlmodel import select

    from newsletter.models import SignUp

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with db.session_scope(engine=engine) as session:
            waiting = session.exec(
                select(SignUp.id).where(SignUp.processed_at.is_(None))  # type: ignore[union-attr]
            ).first()
        if waiting is None:
            return
        time.sleep(0.01)
    raise AssertionError("sign-ups were not queued in time")


def items_of(engine: sa.Engine, delivery: Delivery) -> str:
    """The snapshot text a delivery row refers to ("" for none)."""
    with engine.connect() as connection:
        return snapshot.text_of(connection, delivery) or ""

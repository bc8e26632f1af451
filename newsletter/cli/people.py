"""Commands on subscribers: add, import, list, remove, revoke-links."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table
from rich.text import Text
from sqlmodel import select

from newsletter import db
from newsletter.models import Subscriber, utcnow
from newsletter.text import terminal_safe

if TYPE_CHECKING:
    pass
from newsletter.cli.common import (
    _context,
    _print_json,
    _progress,
    err,
    out,
    subs_app,
)

# --- subscribers -------------------------------------------------------------------


@subs_app.command("add")
def subscribers_add(
    email: Annotated[str, typer.Argument(help="The subscriber's address.")],
    topic: Annotated[
        list[str],
        typer.Option("--topic", "-t", help='A topic filter: keywords or "a phrase". Repeatable.'),
    ],
    about: Annotated[
        list[str] | None,
        typer.Option(
            "--about",
            help="A sentence about the topic given in the same position (its meaning). Repeatable.",
        ),
    ] = None,
    dial: Annotated[
        int, typer.Option(min=1, max=5, help="1 fewest, surest papers ... 5 more, broader.")
    ] = 3,
    name: Annotated[str | None, typer.Option(help="Display name for the To header.")] = None,
    tz: Annotated[
        str | None, typer.Option("--tz", help="IANA time zone, e.g. Europe/Paris.")
    ] = None,
    send_at: Annotated[str | None, typer.Option("--send-at", help="Local send time HH:MM.")] = None,
) -> None:
    """Subscribe an address with one or more topic filters."""
    from newsletter.subscribers import add_subscriber, validate_subscriber

    abouts = list(about or [])
    if len(abouts) > len(topic):
        raise typer.BadParameter("one --about per --topic at most", param_hint="--about")
    topics = [
        {"filter": t, "about": a} if a else t
        for t, a in zip(topic, abouts + [""] * (len(topic) - len(abouts)), strict=True)
    ]
    ctx = _context()
    sub = validate_subscriber(
        email=email,
        topics=topics,
        name=name,
        timezone=tz or ctx.settings.default_timezone,
        send_at=send_at or ctx.settings.default_send_at,
    )
    with db.session_scope(engine=ctx.engine) as session:
        row = add_subscriber(session=session, subscriber=sub, now=utcnow())
        row.dial = dial
    out.print(f"subscribed {sub.email} ({len(sub.topics)} topics, {sub.send_at} {sub.timezone})")


@subs_app.command("import")
def subscribers_import(
    file: Annotated[
        Path,
        typer.Argument(
            help="CSV (email,name,topics,timezone,send_at; topics split by ';') or JSON."
        ),
    ],
    skip_existing: Annotated[
        bool, typer.Option(help="Skip addresses already subscribed instead of reporting them.")
    ] = False,
) -> None:
    """Import subscribers; every bad row is reported with its line, the good ones are kept."""
    from newsletter.importer import ImportFileError, import_subscribers

    ctx = _context()
    try:
        with _progress() as progress:
            task = progress.add_task("checking", total=None)
            report = import_subscribers(
                engine=ctx.engine,
                path=file,
                now=utcnow(),
                default_timezone=ctx.settings.default_timezone,
                default_send_at=ctx.settings.default_send_at,
                skip_existing=skip_existing,
                on_row=lambda: progress.advance(task),
            )
    except ImportFileError as exc:
        where = (
            f":{exc.field.removeprefix('line ')}" if (exc.field or "").startswith("line ") else ""
        )
        err.print(terminal_safe(f"{file}{where}: {str(exc).split(': ', 1)[-1]}"), markup=False)
        out.print("imported nothing: the file was not read as a whole")
        raise typer.Exit(1) from None
    for row in report.errors:
        err.print(terminal_safe(f"{file}:{row.line}: {row.message}"), markup=False)
    skipped = f", {len(report.skipped)} already subscribed" if report.skipped else ""
    out.print(
        f"imported {len(report.added)} subscribers{skipped}, {len(report.errors)} rows refused"
    )
    if report.errors:
        raise typer.Exit(1)


@subs_app.command("list")
def subscribers_list(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")] = False,
) -> None:
    """List subscribers with their topics and schedule."""
    from newsletter.subscribers import topics_by_subscriber

    ctx = _context()
    with db.session_scope(engine=ctx.engine) as session:
        subs = list(session.exec(select(Subscriber).order_by(Subscriber.id)))
        topics = topics_by_subscriber(session=session)
    rows = [
        {
            "email": s.email,
            "name": s.name,
            "status": s.status,
            "timezone": s.timezone,
            "send_at": s.send_at,
            "topics": topics.get(s.id, []),  # type: ignore[arg-type]
        }
        for s in subs
    ]
    if as_json:
        _print_json(rows)
        return
    table = Table("email", "name", "status", "sends at", "topics", box=None)
    for r in rows:
        table.add_row(
            *(
                Text(terminal_safe(text))  # Text: data is never read as rich markup
                for text in (
                    r["email"],
                    r["name"] or "",
                    r["status"],
                    f"{r['send_at']} {r['timezone']}",
                    " | ".join(r["topics"]),
                )
            )
        )
    out.print(table)
    out.print(f"{len(rows)} subscribers")


@subs_app.command("remove")
def subscribers_remove(
    email: Annotated[str, typer.Argument(help="The address to forget.")],
) -> None:
    """Delete a subscriber, their filters and their digest history."""
    from newsletter.subscribers import remove_subscriber

    ctx = _context()
    with db.session_scope(engine=ctx.engine) as session:
        remove_subscriber(session=session, email=email, now=utcnow())
    out.print(f"removed {email}")


@subs_app.command("revoke-links")
def subscribers_revoke_links(
    email: Annotated[str, typer.Argument(help="Whose links to revoke.")],
) -> None:
    """Make every link this subscriber was ever sent stop working (a leaked mailbox)."""
    from newsletter.subscribers import revoke_links

    ctx = _context()
    with db.session_scope(engine=ctx.engine) as session:
        row = revoke_links(session=session, email=email, now=utcnow())
    out.print(f"revoked every link of {row.email}; the next digest carries new ones", markup=False)

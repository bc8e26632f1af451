"""Commands that run the service and show its settings: serve, run, scheduler, config."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Annotated

import sqlalchemy as sa
import typer

from newsletter import db, eventloop
from newsletter.config import describe, load_settings
from newsletter.settings_doc import env_example
from newsletter.text import terminal_safe

if TYPE_CHECKING:
    pass
from newsletter.cli.common import (
    SchemaOutOfDate,
    _context,
    _print_json,
    app,
    err,
    out,
)


@app.command()
def serve(
    host: Annotated[
        str | None, typer.Option(help="Address to listen on (default NEWSLETTER_WEB_HOST).")
    ] = None,
    port: Annotated[
        int | None,
        typer.Option(min=1, max=65535, help="Port (default NEWSLETTER_WEB_PORT)."),
    ] = None,
) -> None:
    """Serve the web pages: one-click unsubscribe, digest archive, /healthz, /metrics."""
    import uvicorn

    from newsletter import logs
    from newsletter.service import proxy_options
    from newsletter.web import create_app

    ctx = _context(check_schema=False)
    try:
        if not db.is_up_to_date(engine=ctx.engine):
            raise SchemaOutOfDate(
                "the database schema is not up to date: run `newsletter db upgrade`"
            )
    except sa.exc.SQLAlchemyError as exc:
        # Serve anyway: /healthz answers 503 with the reason, which a supervisor sees,
        # and pages answer 503 until the database is repaired or restored.
        err.print(
            f"warning: database: {terminal_safe(db.error_reason(exc))}; serving, /healthz says 503",
            markup=False,
        )
    # Our handlers and format, as `run` has them: uvicorn's own would log every request's
    # path, and a path here is a token (a reader's unsubscribe, preferences, votes).
    logs.configure(fmt=ctx.settings.log_format, level=ctx.settings.log_level)
    uvicorn.run(
        create_app(runtime=ctx),
        host=host or ctx.settings.web_host,
        port=port or ctx.settings.web_port,
        log_config=None,
        server_header=False,
        **proxy_options(ctx.settings),  # type: ignore[arg-type]
    )


@app.command()
def run(
    web: Annotated[bool, typer.Option(help="Serve the web pages too.")] = True,
) -> None:
    """The service: ingest and plan on schedule, deliver, serve the web pages; until SIGTERM."""
    _service(web=web, deliver=True, schedule=True)


@app.command()
def scheduler() -> None:
    """Only the scheduled jobs (ingest, plan, expire sign-ups, daily report), until SIGTERM."""
    _service(web=False, deliver=False, schedule=True)


def _service(*, web: bool, deliver: bool, schedule: bool) -> None:
    from newsletter import logs, service

    # A service (a container) brings its schema up to date itself: migrations are
    # idempotent, and concurrent starts on PostgreSQL take turns (see db._migrate).
    ctx = _context(check_schema=False)
    db.upgrade(engine=ctx.engine)
    logs.configure(fmt=ctx.settings.log_format, level=ctx.settings.log_level)
    eventloop.run(service.run(runtime=ctx, web=web, deliver=deliver, schedule=schedule))


@app.command("config")
def show_config(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    example: Annotated[
        bool, typer.Option("--example", help="Print a documented .env file.")
    ] = False,
) -> None:
    """Show the settings in effect (secrets masked), or a documented .env example."""
    if example:
        sys.stdout.write(env_example())
        return
    shown = describe(load_settings())
    if as_json:
        _print_json(shown)
        return
    for k, v in shown.items():
        out.print(f"{k} = {v}", markup=False)

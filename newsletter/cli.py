"""The operator's commands: ``newsletter --help`` lists them.

Errors print as one line on stderr with a non-zero exit code; list commands
take ``--json`` for scripts; long steps show a progress bar on a terminal and
stay quiet in a pipe.
"""

from __future__ import annotations

import contextlib
import json
import sys
from collections import Counter
from datetime import UTC, date, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import sqlalchemy as sa
import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
from rich.table import Table
from rich.text import Text
from sqlmodel import select
from typer.exceptions import TyperException

from newsletter import db, eventloop, render
from newsletter.config import describe, env_example, load_settings
from newsletter.errors import FilterSyntaxError, NewsletterError, SubscriberError
from newsletter.models import Delivery, Paper, Subscriber, utcnow
from newsletter.runtime import Runtime, build_runtime
from newsletter.text import terminal_safe

if TYPE_CHECKING:
    from newsletter.plan import PlanReport

app = typer.Typer(
    help="Emails researchers the new papers they care about.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
db_app = typer.Typer(
    help="Database schema: apply migrations, show the revision.", no_args_is_help=True
)
papers_app = typer.Typer(help="Papers stored from the corpus.", no_args_is_help=True)
subs_app = typer.Typer(help="Subscribers and their topic filters.", no_args_is_help=True)
deliveries_app = typer.Typer(help="The sent-ledger: list digests, requeue failures.")
filters_app = typer.Typer(
    help="Topic filters: try one against the stored papers.", no_args_is_help=True
)
app.add_typer(db_app, name="db")
app.add_typer(papers_app, name="papers")
app.add_typer(subs_app, name="subscribers")
app.add_typer(filters_app, name="filters")
app.add_typer(deliveries_app, name="deliveries")

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)


class SchemaOutOfDate(NewsletterError):
    pass


def _context(*, check_schema: bool = True) -> Runtime:
    """The runtime every command works with (settings, engine, key, links)."""
    runtime = build_runtime(settings=load_settings())
    if check_schema and not db.is_up_to_date(engine=runtime.engine):
        raise SchemaOutOfDate("the database schema is not up to date: run `newsletter db upgrade`")
    return runtime


def _progress() -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        console=err,
        transient=True,
        disable=not err.is_terminal,
    )


def _print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str, ensure_ascii=False) + "\n")


def _parse_day(value: str | None, *, option: str) -> date | None:
    if value is None:
        return None
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise typer.BadParameter(
            f"expected a date YYYY-MM-DD, got {value!r}", param_hint=option
        ) from None


# --- db -----------------------------------------------------------------------


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Apply schema migrations up to the newest (safe to run again)."""
    ctx = _context(check_schema=False)
    db.upgrade(engine=ctx.engine)
    revision = db.current_revision(engine=ctx.engine)
    out.print(f"database at revision {revision}: {ctx.engine.url.render_as_string()}")


@db_app.command("status")
def db_status() -> None:
    """Show the database's schema revision and whether it is current."""
    ctx = _context(check_schema=False)
    current, head = db.current_revision(engine=ctx.engine), db.head_revision()
    verdict = "up to date" if current == head else "run `newsletter db upgrade`"
    out.print(f"current {current or '(empty)'}, newest {head}: {verdict}")


# --- ingest and papers ----------------------------------------------------------


@app.command()
def ingest(
    paths: Annotated[
        list[Path] | None,
        typer.Argument(help="Files or directories (default: the corpus directory)."),
    ] = None,
) -> None:
    """Read new or changed corpus dumps and store their papers once each."""
    from newsletter.corpus.ingest import corpus_files
    from newsletter.corpus.ingest import ingest as run_ingest

    ctx = _context()
    targets = corpus_files(paths=paths or [ctx.settings.corpus_dir])
    with _progress() as progress:
        task = progress.add_task("ingesting", total=len(targets))
        report = run_ingest(
            engine=ctx.engine,
            paths=targets,
            now=utcnow(),
            max_bytes=ctx.settings.corpus_max_bytes,
            on_file=lambda _r: progress.advance(task),
        )
    for result in report.files:
        if result.error is not None:
            err.print("skipped " + terminal_safe(str(result.error)), markup=False)
    states = Counter(f.status for f in report.files)
    summary = ", ".join(f"{n} {s}" for s, n in sorted(states.items())) or "no files"
    out.print(f"{len(report.files)} files ({summary}); {report.new_papers} new papers")
    if report.errors:
        raise typer.Exit(1)


@papers_app.command("list")
def papers_list(
    since: Annotated[
        str | None,
        typer.Option(help="Only papers first seen on or after this date (YYYY-MM-DD, UTC)."),
    ] = None,
    limit: Annotated[int, typer.Option(help="Show at most this many (0: all).")] = 0,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")] = False,
) -> None:
    """List stored papers, newest first."""
    ctx = _context()
    day = _parse_day(since, option="--since")
    query = select(Paper).order_by(Paper.first_seen_at.desc(), Paper.id)  # type: ignore[attr-defined]
    if day is not None:
        query = query.where(
            Paper.first_seen_at >= datetime(day.year, day.month, day.day, tzinfo=UTC)
        )
    if limit:
        query = query.limit(limit)
    with db.session_scope(engine=ctx.engine) as session:
        papers = list(session.exec(query))
    if as_json:
        _print_json([p.model_dump(exclude={"key"}) for p in papers])
        return
    table = Table("id", "first seen", "published", "▲", "title", box=None)
    for p in papers:
        table.add_row(
            str(p.id),
            f"{p.first_seen_at:%Y-%m-%d}",
            str(p.published_on or ""),
            str(p.upvotes or ""),
            p.title,
        )
    out.print(table)
    out.print(f"{len(papers)} papers")


# --- subscribers -------------------------------------------------------------------


@subs_app.command("add")
def subscribers_add(
    email: Annotated[str, typer.Argument(help="The subscriber's address.")],
    topic: Annotated[
        list[str],
        typer.Option("--topic", "-t", help='A topic filter: keywords or "a phrase". Repeatable.'),
    ],
    name: Annotated[str | None, typer.Option(help="Display name for the To header.")] = None,
    tz: Annotated[
        str | None, typer.Option("--tz", help="IANA time zone, e.g. Europe/Paris.")
    ] = None,
    send_at: Annotated[str | None, typer.Option("--send-at", help="Local send time HH:MM.")] = None,
) -> None:
    """Subscribe an address with one or more topic filters."""
    from newsletter.subscribers import add_subscriber, validate_subscriber

    ctx = _context()
    sub = validate_subscriber(
        email=email,
        topics=topic,
        name=name,
        timezone=tz or ctx.settings.default_timezone,
        send_at=send_at or ctx.settings.default_send_at,
    )
    with db.session_scope(engine=ctx.engine) as session:
        add_subscriber(session=session, subscriber=sub, now=utcnow())
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


# --- filters ----------------------------------------------------------------------


@filters_app.command("test")
def filters_test(
    query: Annotated[
        str, typer.Argument(help="A filter, e.g. 'diffusion AND NOT video' or 'org:\"ZIP Lab\"'.")
    ],
    limit: Annotated[int, typer.Option(help="Show this many of the best matches.")] = 10,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")] = False,
) -> None:
    """Show how many stored papers a filter matches and the best ones, matched words highlighted."""
    from rich.text import Text

    from newsletter.filters import DayIndex, Ranker, compile_filter, to_query
    from newsletter.plan import paper_doc

    flt = compile_filter(query)  # a syntax error goes to main(), which draws the caret
    ctx = _context()
    with db.session_scope(engine=ctx.engine) as session:
        docs = [
            paper_doc(p)
            for p in session.exec(select(Paper).order_by(Paper.first_seen_at, Paper.id))
        ]
    ranker = Ranker(DayIndex(docs))
    ranked = ranker.rank([flt], limit=limit)
    if as_json:
        _print_json(
            {
                "query": query,
                "canonical": to_query(flt.tree),
                "matched": ranked.total,
                "papers": [
                    {
                        "id": m.paper_id,
                        "title": docs[m.index].title,
                        "score": round(m.score, 4),
                        "words": m.words,
                    }
                    for m in ranked.matches
                ],
            }
        )
        return
    out.print(f"{ranked.total} of {len(docs)} papers match {to_query(flt.tree)}", markup=False)
    for rank, m in enumerate(ranked.matches, start=1):
        title = Text(f"{rank:3}. {docs[m.index].title}")
        title.highlight_words(m.words, style="bold underline", case_sensitive=False)
        out.print(title, Text(f"  [{m.score:.2f}] {', '.join(m.words)}", style="dim"))


# --- send and preview ---------------------------------------------------------------


def _subscriber_id(ctx: Runtime, email: str) -> int:
    from newsletter.subscribers import normalize_email

    address = normalize_email(email)
    with db.session_scope(engine=ctx.engine) as session:
        sid = session.exec(select(Subscriber.id).where(Subscriber.email == address)).first()
    if sid is None:
        raise SubscriberError(f"no subscriber {address}", field="email")
    return sid


@app.command()
def send(
    now_: Annotated[
        bool,
        typer.Option(
            "--now",
            help="Plan every active subscriber now, not only those whose send time has passed.",
        ),
    ] = False,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Show what would be sent; record and send nothing.")
    ] = False,
    subscriber: Annotated[str | None, typer.Option(help="Only this subscriber's digest.")] = None,
    workers: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="Delivery processes beside planning (default NEWSLETTER_SEND_WORKERS).",
        ),
    ] = None,
) -> None:
    """Plan today's digests and deliver everything due."""
    from newsletter.backends.file import FileBackend
    from newsletter.deliver import deliver_due
    from newsletter.plan import plan_digests

    ctx = _context()
    # Built before planning, so a delivery misconfiguration stops us before anything is recorded.
    backend = ctx.backend()
    email = None
    sid = None
    if subscriber is not None:
        sid = _subscriber_id(ctx, subscriber)
        from newsletter.subscribers import normalize_email

        email = normalize_email(subscriber)
    workers = workers or ctx.settings.send_workers
    with contextlib.ExitStack() as stack:
        pool = None
        if workers > 1 and not dry_run and sid is None:
            from newsletter.parallel import DeliveryProcesses

            # Started first: they deliver what planning commits, batch by batch.
            pool = stack.enter_context(DeliveryProcesses(runtime=ctx, workers=workers))
        report = plan_digests(
            engine=ctx.engine,
            settings=ctx.settings,
            now=utcnow(),
            only_email=email,
            due_only=not now_,
            dry_run=dry_run,
        )
        _print_plan(report, dry_run=dry_run)
        if dry_run:
            return
        with _progress() as progress:
            task = progress.add_task("delivering", total=None)
            if pool is not None:
                result = pool.finish(on_outcome=lambda _o: progress.advance(task))
            else:
                result = eventloop.run(
                    deliver_due(
                        runtime=ctx,
                        backend=backend,
                        now=utcnow,
                        subscriber_id=sid,
                        on_outcome=lambda _o: progress.advance(task),
                    )
                )
    counts = Counter(o.status for o in result.outcomes)
    out.print(
        "delivered: " + (", ".join(f"{n} {s}" for s, n in sorted(counts.items())) or "nothing due")
    )
    for o in result.outcomes:
        if o.error and o.status != "sent":
            err.print(terminal_safe(f"{o.email}: {o.status}: {o.error}"), markup=False)
    if isinstance(backend, FileBackend) and counts.get("sent"):
        editions = sorted({p.edition for p in report.planned}) or [date.today()]
        for edition in editions:
            out.print(f"digests written to {(backend.directory / edition.isoformat()).resolve()}")
    if counts.get("failed"):
        raise typer.Exit(1)


def _print_plan(report: PlanReport, *, dry_run: bool) -> None:
    for p in report.planned:
        verb = "would send" if dry_run else "planned"
        out.print(
            f"{verb} {p.email}: {len(p.ranked.matches)} papers"
            + (f" (+{p.ranked.more} more)" if p.ranked.more else "")
        )
    notes = [
        f"{len(report.no_match)} with nothing new matching",
        f"{len(report.already_planned)} already planned for their edition",
    ]
    if report.not_due:
        notes.append(f"{len(report.not_due)} not due yet")
    out.print(
        f"{len(report.planned)} digests {'to send' if dry_run else 'planned'}; " + ", ".join(notes)
    )


@app.command()
def preview(
    email: Annotated[str, typer.Argument(help="The subscriber whose next digest to render.")],
    out_file: Annotated[
        Path | None,
        typer.Option("--out", help="Write the message here (.eml), or its HTML (.html)."),
    ] = None,
) -> None:
    """Render a subscriber's next digest without recording or sending anything."""
    from newsletter.plan import preview_digest

    ctx = _context()
    digest = preview_digest(
        engine=ctx.engine, settings=ctx.settings, email=email, now=utcnow(), links=ctx.links
    )
    if digest is None:
        out.print("nothing new matches this subscriber's topics: no digest would be sent")
        return
    message = render.outgoing(digest=digest, sender=ctx.sender)
    if out_file is None:
        text = render.render_digest(digest=digest, sender=ctx.sender).text
        out.print(terminal_safe(text.replace("\n", "\0")).replace("\\x00", "\n"), markup=False)
        return
    out_file.write_bytes(
        message.html.encode() if out_file.suffix == ".html" and message.html else message.data
    )
    out.print(f"wrote {out_file} ({len(digest.papers)} papers)")


@deliveries_app.callback(invoke_without_command=True)
def deliveries_list(
    typer_ctx: typer.Context,
    status: Annotated[
        str | None,
        typer.Option(help="Only this state: pending, sending, sent, failed, cancelled."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")] = False,
) -> None:
    """List digests in the ledger with their state, attempts and last error."""
    if typer_ctx.invoked_subcommand is not None:
        return
    ctx = _context()
    query = select(Delivery).order_by(Delivery.id.desc())  # type: ignore[union-attr]
    if status:
        query = query.where(Delivery.status == status)
    with db.session_scope(engine=ctx.engine) as session:
        rows = list(session.exec(query))
    if as_json:
        _print_json([r.model_dump() for r in rows])
        return
    table = Table("id", "edition", "to", "status", "papers", "attempts", "last error", box=None)
    for r in rows:
        table.add_row(
            str(r.id),
            str(r.edition),
            r.to_address,
            r.status,
            str(r.paper_count),
            str(r.attempts),
            r.last_error or "",
        )
    out.print(table)


@deliveries_app.command("retry")
def deliveries_retry(
    failed: Annotated[bool, typer.Option("--failed", help="Requeue every failed digest.")] = False,
    subscriber: Annotated[str | None, typer.Option(help="Only this subscriber's.")] = None,
) -> None:
    """Requeue failed digests once their cause is fixed (reactivates suppressed subscribers)."""
    from newsletter.ledger import retry_failed

    if not failed:
        raise typer.BadParameter("say which: --failed", param_hint="--failed")
    ctx = _context()
    sid = _subscriber_id(ctx, subscriber) if subscriber else None
    count = retry_failed(engine=ctx.engine, now=utcnow(), subscriber_id=sid)
    out.print(f"requeued {count} failed digests; `newsletter send` or a worker delivers them")


@app.command()
def stats(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")] = False,
) -> None:
    """Counts: digests by state, retries, bounces, suppressed subscribers."""
    from newsletter.ledger import stats as ledger_stats
    from newsletter.ledger import unsubscribes_by_edition

    engine = _context().engine
    counts = ledger_stats(engine=engine)
    per_edition = unsubscribes_by_edition(engine=engine)
    if as_json:
        _print_json(counts | {"unsubscribes_by_edition": per_edition})
        return
    table = Table("", "count", box=None)
    for name, n in counts.items():
        table.add_row(name.replace("_", " "), str(n))
    for edition, n in per_edition.items():
        table.add_row(f"  unsubscribes from {edition}", str(n))
    out.print(table)


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
    uvicorn.run(
        create_app(runtime=ctx),
        host=host or ctx.settings.web_host,
        port=port or ctx.settings.web_port,
        log_level="info",
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


@app.command()
def worker(
    poll: Annotated[float, typer.Option(help="Seconds between looks for due digests.")] = 5.0,
) -> None:
    """Deliver due digests continuously, retries included, until SIGTERM or Ctrl-C."""

    from newsletter.deliver import run_worker

    ctx = _context()

    async def main() -> int:
        stop = eventloop.stop_on_signals()
        return await run_worker(
            runtime=ctx,
            backend=ctx.backend(),
            now=utcnow,
            stop=stop,
            poll_seconds=poll,
            on_outcome=lambda o: err.print(
                terminal_safe(f"{o.email}: {o.status}" + (f" ({o.error})" if o.error else "")),
                markup=False,
            ),
        )

    attempts = eventloop.run(main())
    out.print(f"worker stopped after {attempts} delivery attempts")


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


def main() -> None:
    """Run the CLI; every failure ends as one line on stderr and a non-zero exit."""
    try:
        code = app(standalone_mode=False)
    except TyperException as exc:  # usage errors: bad option values, unknown commands
        ctx = getattr(exc, "ctx", None)
        hint = f" (try `{ctx.command_path} --help`)" if ctx is not None else ""
        if exc.format_message():  # empty when the help was shown for a bare group
            err.print(f"error: {exc.format_message()}{hint}", markup=False)
        sys.exit(exc.exit_code)
    except typer.Abort:
        err.print("aborted", markup=False)
        sys.exit(130)
    except NewsletterError as exc:
        err.print(terminal_safe(f"error: {exc}"), markup=False)
        syntax = exc if isinstance(exc, FilterSyntaxError) else exc.__cause__
        if isinstance(syntax, FilterSyntaxError):  # point at the mistake
            lines = (terminal_safe(line) for line in syntax.caret().split("\n"))
            err.print("  " + "\n  ".join(lines), markup=False)
        sys.exit(1)
    except sa.exc.SQLAlchemyError as exc:  # unreachable, locked, corrupt: one line
        err.print(f"error: database: {terminal_safe(db.error_reason(exc))}", markup=False)
        sys.exit(1)
    sys.exit(code if isinstance(code, int) else 0)

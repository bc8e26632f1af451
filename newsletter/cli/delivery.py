"""Commands that send, and read the ledger: send, preview, deliveries, stats, worker."""

from __future__ import annotations

import contextlib
from collections import Counter
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table
from rich.text import Text
from sqlmodel import select

from newsletter import db, render
from newsletter.models import Delivery, utcnow
from newsletter.text import terminal_safe

if TYPE_CHECKING:
    from newsletter.plan import PlanReport
from newsletter.cli.common import (
    _context,
    _print_json,
    _progress,
    _subscriber_id,
    app,
    deliveries_app,
    err,
    out,
)
from newsletter.cli.corpus import embed_stored


@app.command()
def send(
    now_: Annotated[
        bool,
        typer.Option(
            "--now",
            help="Plan every active subscriber now, whatever their send time "
            "(weekly ones still only on their weekday).",
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
    from newsletter.plan import plan_digests
    from newsletter.service import deliver_now

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
    if not dry_run:  # what ingest could not embed (the model was missing), and new topics
        embed_stored(ctx.engine)
    with contextlib.ExitStack() as stack:
        pool = None
        if workers > 1 and not dry_run and sid is None:
            from newsletter.parallel import DeliveryProcesses

            # Started first: they deliver what planning commits, batch by batch.
            pool = stack.enter_context(DeliveryProcesses(runtime=ctx, workers=workers))
        verb = "would send" if dry_run else "planned"
        report = plan_digests(
            engine=ctx.engine,
            settings=ctx.settings,
            now=utcnow(),
            only_email=email,
            due_only=not now_,
            dry_run=dry_run,
            keep=False,  # a million digests are printed as they come, not kept
            workers=ctx.settings.plan_workers,
            on_planned=lambda p: out.print(
                f"{verb} {p.email}: {len(p.ranked.matches)} papers"
                + (f" (+{p.ranked.more} more)" if p.ranked.more else ""),
                markup=False,
            ),
        )
        _print_plan(report, dry_run=dry_run)
        if dry_run:
            return
        with _progress() as progress:
            task = progress.add_task("delivering", total=None)
            if pool is not None:
                result = pool.finish(on_outcome=lambda _o: progress.advance(task))
            else:
                result = deliver_now(
                    runtime=ctx,
                    backend=backend,
                    subscriber_id=sid,
                    on_outcome=lambda _o: progress.advance(task),
                )
    counts = Counter(o.status for o in result.outcomes)
    out.print(
        "delivered: " + (", ".join(f"{n} {s}" for s, n in sorted(counts.items())) or "nothing due")
    )
    for o in result.outcomes:
        if o.error and o.status != "sent":
            err.print(terminal_safe(f"{o.email}: {o.status}: {o.error}"), markup=False)
    if isinstance(backend, FileBackend) and counts.get("sent"):
        editions = sorted(report.editions) or [date.today()]
        for edition in editions:
            out.print(f"digests written to {(backend.directory / edition.isoformat()).resolve()}")
    if counts.get("failed"):
        raise typer.Exit(1)


def _print_plan(report: PlanReport, *, dry_run: bool) -> None:
    counts = report.counts
    notes = [
        f"{counts['no_match']} with nothing new matching",
        f"{counts['already_planned']} already planned for their edition",
    ]
    if counts["not_due"]:
        notes.append(f"{counts['not_due']} not due yet")
    if counts["unreadable"]:
        notes.append(f"{counts['unreadable']} skipped: stored time zone or send time unreadable")
    out.print(
        f"{counts['planned']} digests {'to send' if dry_run else 'planned'}; " + ", ".join(notes)
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
    rendered = render.render_digest(digest=digest, sender=ctx.sender)  # once
    if out_file is None:
        lines = (terminal_safe(line) for line in rendered.text.split("\n"))
        out.print("\n".join(lines), markup=False)
        return
    if out_file.suffix == ".html":
        out_file.write_bytes(rendered.html.encode())
    else:
        out_file.write_bytes(render.to_mime_bytes(rendered=rendered))
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
        table.add_row(  # Text: a relay's reply is never read as rich markup
            str(r.id),
            str(r.edition),
            *(Text(terminal_safe(v)) for v in (r.to_address, r.status)),
            str(r.paper_count),
            str(r.attempts),
            Text(terminal_safe(r.last_error or "")),
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
    """Counts: digests by state, retries, bounces, complaints, suppressed subscribers;
    per edition, unsubscribes and the bounce and complaint rates (with warnings)."""
    from newsletter.ledger import stats as ledger_stats
    from newsletter.ledger import unsubscribes_by_edition
    from newsletter.ledger.reputation import rates_by_edition

    engine = _context().engine
    counts = ledger_stats(engine=engine)
    per_edition = unsubscribes_by_edition(engine=engine)
    rates = rates_by_edition(engine=engine)
    if as_json:
        _print_json(
            counts
            | {"unsubscribes_by_edition": per_edition}
            | {"editions": {r.edition: r.as_dict() for r in rates}}
        )
        return
    table = Table("", "count", box=None)
    for name, n in counts.items():
        table.add_row(name.replace("_", " "), str(n))
    for edition, n in per_edition.items():
        table.add_row(f"  unsubscribes from {edition}", str(n))
    out.print(table)
    for r in rates:
        out.print(
            f"{r.edition}: {r.sent} sent, bounces {r.bounce_rate:.2%}, "
            f"complaints {r.complaint_rate:.2%}",
            markup=False,
        )
        for warning in r.warnings:
            out.print(f"  WARNING: {warning}", markup=False)


@app.command()
def worker(
    poll: Annotated[float, typer.Option(help="Seconds between looks for due digests.")] = 5.0,
) -> None:
    """Deliver due digests continuously, retries included, until SIGTERM or Ctrl-C."""

    from newsletter.service import work

    attempts = work(
        runtime=_context(),
        poll_seconds=poll,
        on_outcome=lambda o: err.print(
            terminal_safe(f"{o.email}: {o.status}" + (f" ({o.error})" if o.error else "")),
            markup=False,
        ),
    )
    out.print(f"worker stopped after {attempts} delivery attempts")

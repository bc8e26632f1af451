"""Commands on the sources of papers: ``sources list`` and ``sources fetch``."""

from __future__ import annotations

import logging
import sys
from datetime import datetime
from typing import Annotated

import sqlalchemy as sa
import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text
from sqlmodel import func, select

from newsletter import db
from newsletter.cli.common import _context, _parse_day, _print_json, _progress, app, err, out
from newsletter.models import CorpusFile, Paper, SourceState, utcnow
from newsletter.runtime import Runtime
from newsletter.text import terminal_safe

sources_app = typer.Typer(
    help="Where papers come from: the corpus folder and live sources (Daily Papers, arXiv).",
    no_args_is_help=True,
)
app.add_typer(sources_app, name="sources")


def _when(value: datetime | None) -> str:
    return f"{value:%Y-%m-%d %H:%M} UTC" if value is not None else "-"


def _dumps_row(ctx: Runtime) -> dict[str, object]:
    """The corpus folder, as ``ingest`` last read it."""
    folder = str(ctx.settings.corpus_dir)
    under = CorpusFile.path.startswith(folder.rstrip("/") + "/")  # type: ignore[attr-defined]
    with db.session_scope(engine=ctx.engine) as session:
        files, errors, last = session.exec(
            select(
                func.count(),
                func.coalesce(func.sum(sa.case((CorpusFile.status == "error", 1), else_=0)), 0),
                func.max(CorpusFile.ingested_at),
            ).where(under)
        ).one()
        told = Paper.sources.contains("dump")  # type: ignore[union-attr]
        papers = session.exec(select(func.count()).select_from(Paper).where(told)).one()
    status = f"{files} files read" + (f", {errors} failed" if errors else "")
    return {
        "source": "dumps",
        "url": folder,
        "fetched_at": last,
        "status": status if files else "nothing read yet (`newsletter ingest`)",
        "failures": errors,
        "next_after": None,
        "papers": papers,
    }


def _rows(ctx: Runtime, *, every: bool) -> list[dict[str, object]]:
    from newsletter.corpus.fetch import plan_targets

    settings = ctx.settings
    rows = [_dumps_row(ctx)] if "dumps" in settings.sources else []
    targets = plan_targets(settings=settings, today=utcnow().date())
    with db.session_scope(engine=ctx.engine) as session:
        states = {s.name: s for s in session.exec(select(SourceState))}
    names = [t.name for t in targets]
    if every:  # also earlier days (--since) of the configured sources
        live = settings.live_sources
        names += sorted(n for n in states if n not in names and n.split(":")[0] in live)
    urls = {t.name: t.url for t in targets}
    for name in names:
        state = states.get(name)
        rows.append(
            {
                "source": name,
                "url": urls.get(name) or (state.url if state else ""),
                "fetched_at": state.fetched_at if state else None,
                "status": (state.last_status or "-") if state else "never fetched",
                "failures": state.failures if state else 0,
                "next_after": state.next_after if state else None,
                "papers": state.papers if state else 0,
            }
        )
    return rows


@sources_app.command("list")
def sources_list(
    every: Annotated[
        bool, typer.Option("--all", help="Also the days fetched earlier with --since.")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")] = False,
) -> None:
    """Each configured source and URL: last fetch, status, failures in a row, next
    allowed fetch, papers in its last good answer."""
    ctx = _context()
    rows = _rows(ctx, every=every)
    if as_json:
        _print_json(rows)
        return
    table = Table(box=None)
    table.add_column("source", no_wrap=True)
    table.add_column("url", overflow="fold")
    for name in ("last fetch", "status", "failures", "next fetch", "papers"):
        table.add_column(name)
    now = utcnow()
    for row in rows:
        after = row["next_after"]
        assert after is None or isinstance(after, datetime)
        if row["source"] == "dumps":
            upcoming = "-"  # read by `newsletter ingest` (and `run`, every few minutes)
        elif after is None or after <= now:
            upcoming = "now"
        else:
            upcoming = _when(after)
        table.add_row(
            Text(terminal_safe(str(row["source"]))),
            Text(terminal_safe(str(row["url"]))),
            _when(row["fetched_at"]),  # type: ignore[arg-type]
            Text(terminal_safe(str(row["status"]))),
            str(row["failures"]),
            upcoming,
            str(row["papers"]),
        )
    # On a terminal, its width; in a pipe, rows unbroken (for grep and logs).
    wide = (
        out
        if out.is_terminal
        else Console(file=sys.stdout, width=1000, highlight=False, markup=False)
    )
    wide.print(table)
    if not ctx.settings.live_sources:
        out.print(
            "offline: no live source configured "
            "(NEWSLETTER_SOURCES=dumps,daily_papers,arxiv adds them)",
            markup=False,
        )


@sources_app.command("fetch")
def sources_fetch(
    since: Annotated[
        str | None,
        typer.Option(help="Also every day since this date (YYYY-MM-DD, UTC), not only today."),
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Fetch even a source in its back-off.")
    ] = False,
) -> None:
    """Fetch the live sources now and store their new papers; exit 1 if any failed."""
    from newsletter.cli.corpus import embed_stored, index_stored
    from newsletter.corpus.fetch import FetchResult, Target, fetch_sources, plan_targets

    day = _parse_day(since, option="--since")
    ctx = _context()
    if not ctx.settings.live_sources:
        out.print(
            "no live source configured (NEWSLETTER_SOURCES="
            f"{','.join(ctx.settings.sources)}): nothing fetched; "
            "`newsletter ingest` reads the corpus folder",
            markup=False,
        )
        return
    now = utcnow()
    total = len(plan_targets(settings=ctx.settings, today=now.date(), since=day))
    # Each URL's outcome is printed below; the module's log lines would repeat them.
    quiet = logging.NullHandler()
    logging.getLogger("newsletter.fetch").addHandler(quiet)

    def shown(result: FetchResult) -> str:
        head = f"{result.target.name} {result.target.url}"
        return terminal_safe(f"{head}: {result.describe()}")

    try:
        with _progress() as progress:
            task = progress.add_task("fetching", total=total)

            def started(target: Target) -> None:
                progress.update(task, description=f"fetching {terminal_safe(target.name)}")

            def finished(result: FetchResult) -> None:
                progress.advance(task)
                if result.outcome == "failed":
                    err.print("error: " + shown(result), markup=False)
                else:
                    out.print(shown(result), markup=False)
                for problem in result.items_skipped:
                    err.print(
                        terminal_safe(f"warning: {result.target.name}: {problem}"), markup=False
                    )

            report = fetch_sources(
                engine=ctx.engine,
                settings=ctx.settings,
                now=now,
                since=day,
                force=force,
                on_start=started,
                on_result=finished,
            )
    finally:
        logging.getLogger("newsletter.fetch").removeHandler(quiet)
    counts: dict[str, int] = {}
    for result in report.results:
        counts[result.outcome] = counts.get(result.outcome, 0) + 1
    summary = ", ".join(f"{n} {k.replace('_', ' ')}" for k, n in counts.items()) or "none"
    out.print(f"{len(report.results)} URLs ({summary}); {report.new_papers} new papers")
    if report.new_papers:
        embed_stored(ctx.engine)
        index_stored(ctx.engine)
    if report.failed:
        raise typer.Exit(1)

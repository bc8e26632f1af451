"""Commands on the stored papers: the schema, ingest, papers list, filters test."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table
from rich.text import Text
from sqlmodel import select

from newsletter import db
from newsletter.models import Paper, utcnow
from newsletter.text import terminal_safe

if TYPE_CHECKING:
    pass
from newsletter.cli.common import (
    _context,
    _parse_day,
    _print_json,
    _progress,
    app,
    db_app,
    err,
    filters_app,
    out,
    papers_app,
)

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

"""Commands on the stored papers: the schema, ingest, papers list, filters test."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import sqlalchemy as sa
import typer
from rich.table import Table
from rich.text import Text
from sqlmodel import select

from newsletter import db
from newsletter.models import Paper, stored_list, utcnow
from newsletter.paper_links import PaperLinks
from newsletter.render.links import links_for
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
        for problem in result.skipped:  # one bad item of an answer; the rest went in
            err.print(terminal_safe(f"warning: {result.path}: {problem}"), markup=False)
    states = Counter(f.status for f in report.files)
    summary = ", ".join(f"{n} {s}" for s, n in sorted(states.items())) or "no files"
    updated = sum(f.updated_papers for f in report.files)
    out.print(
        f"{len(report.files)} files ({summary}); {report.new_papers} new papers, {updated} updated"
    )
    embed_stored(ctx.engine)
    index_stored(ctx.engine)
    if report.errors:
        raise typer.Exit(1)


def embed_stored(engine: sa.Engine, *, rebuild: bool = False, always: bool = False) -> None:
    """Embed the papers and topics that have no current vector, with a progress bar;
    say what was done when something was. ``always`` (``papers embed``): also when
    nothing was, and every stored text is hashed to find one edited behind the store's
    back; otherwise (ingest, fetch, send) only papers new or changed since their vector
    are read, so a cron job's cost does not grow with the store."""
    from newsletter import embed

    with _progress() as progress:
        task = progress.add_task("embedding", total=None)

        def advance(done: int, total: int) -> None:
            progress.update(task, completed=done, total=total)

        try:
            report = embed.embed_papers(
                engine=engine, rebuild=rebuild, every_text=always, on_progress=advance
            )
            report.topics = embed.embed_topics(engine=engine, check=always, rebuild=rebuild)
        except embed.ModelMissingError as exc:
            err.print(f"warning: meaning is off: {exc}", markup=False)
            return
    papers = report.embedded + report.seeded
    if papers or report.topics or always:
        seeded = f", {report.seeded} of them from the bundled vectors" if report.seeded else ""
        unchanged = f"; {report.reused} papers unchanged" if always else ""
        out.print(
            f"embedded {papers} papers and {report.topics} topics "
            f"({embed.MODEL_NAME}{seeded}{unchanged})",
            markup=False,
        )


def index_stored(engine: sa.Engine) -> None:
    """Index the papers that have no current postings, with a progress bar."""
    from newsletter.corpus.postings import index_pending

    with _progress() as progress:
        task = progress.add_task("indexing", total=None)
        index_pending(
            engine=engine, on_progress=lambda d, t: progress.update(task, completed=d, total=t)
        )


@papers_app.command("reindex")
def papers_reindex() -> None:
    """Index every stored paper again, into fresh segments (after an upgrade that changes
    how text is analysed, or to fold many small segments into few)."""
    from newsletter.corpus.postings import reindex

    with _progress() as progress:
        task = progress.add_task("indexing", total=None)
        done = reindex(
            engine=_context().engine,
            on_progress=lambda d, t: progress.update(task, completed=d, total=t),
        )
    out.print(f"indexed {done} papers", markup=False)


@papers_app.command("embed")
def papers_embed(
    rebuild: Annotated[
        bool, typer.Option("--rebuild", help="Embed every paper again, not only what changed.")
    ] = False,
) -> None:
    """Compute the embeddings of papers (and topics) that have none, or a stale one."""
    embed_stored(_context().engine, rebuild=rebuild, always=True)


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
        _print_json([paper_json(p) for p in papers])
        return
    table = Table("id", "first seen", "published", "▲", "arXiv", "title", box=None)
    for p in papers:
        table.add_row(
            str(p.id),
            f"{p.first_seen_at:%Y-%m-%d}",
            str(p.published_on or ""),
            str(p.upvotes or ""),
            p.arxiv_id or "",
            Text(terminal_safe(p.title)),
        )
    out.print(table)
    out.print(f"{len(papers)} papers")


_INTERNAL = ("index_segment", "title_stems", "abstract_stems")  # the postings' bookkeeping


def links_of(paper: Paper) -> PaperLinks:
    return links_for(paper.title, paper.arxiv_id, paper.code_url, paper.project_url)


def paper_json(paper: Paper) -> dict[str, object]:
    """A stored paper for scripts: its fields, lists as lists, and its links."""
    data = paper.model_dump(
        exclude={"key", "author_names", "keywords", "categories", "sources", *_INTERNAL}
    )
    lists = {
        "author_names": list(stored_list(paper.author_names)),
        "keywords": list(stored_list(paper.keywords)),
        "categories": (paper.categories or "").split(),
        "sources": (paper.sources or "").split(),
    }
    links = links_of(paper)
    return data | lists | {"links": {k: getattr(links, k) for k in links.__slots__}}

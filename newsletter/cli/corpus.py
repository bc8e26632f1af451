"""Commands on the stored papers: the schema, ingest, papers list, filters test."""

from __future__ import annotations

import json
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import numpy as np
import sqlalchemy as sa
import typer
from rich.table import Table
from rich.text import Text
from sqlmodel import select

from newsletter import db
from newsletter.errors import SubscriberError
from newsletter.models import Paper, utcnow
from newsletter.paper_links import PaperLinks
from newsletter.relevance import ALPHA, DEFAULT_DIAL, DIAL, Picked, Scorer, Topic, TopicScores
from newsletter.render.links import links_for
from newsletter.text import terminal_safe

if TYPE_CHECKING:
    from newsletter.runtime import Runtime
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
        for problem in result.skipped:  # one bad item of an answer; the rest went in
            err.print(terminal_safe(f"warning: {result.path}: {problem}"), markup=False)
    states = Counter(f.status for f in report.files)
    summary = ", ".join(f"{n} {s}" for s, n in sorted(states.items())) or "no files"
    updated = sum(f.updated_papers for f in report.files)
    out.print(
        f"{len(report.files)} files ({summary}); {report.new_papers} new papers, {updated} updated"
    )
    embed_stored(ctx.engine)
    if report.errors:
        raise typer.Exit(1)


def embed_stored(engine: sa.Engine, *, rebuild: bool = False) -> None:
    """Embed the papers and topics that have no current vector, with a progress bar."""
    from newsletter import embed

    with _progress() as progress:
        task = progress.add_task("embedding", total=None)

        def advance(done: int, total: int) -> None:
            progress.update(task, completed=done, total=total)

        try:
            report = embed.embed_papers(engine=engine, rebuild=rebuild, on_progress=advance)
            report.topics = embed.embed_topics(engine=engine)
        except embed.ModelMissingError as exc:
            err.print(f"warning: meaning is off: {exc}", markup=False)
            return
    if report.embedded or report.topics:
        out.print(
            f"embedded {report.embedded} papers and {report.topics} topics "
            f"({embed.MODEL_NAME}; {report.reused} papers unchanged)",
            markup=False,
        )


@papers_app.command("embed")
def papers_embed(
    rebuild: Annotated[
        bool, typer.Option("--rebuild", help="Embed every paper again, not only what changed.")
    ] = False,
) -> None:
    """Compute the embeddings of papers (and topics) that have none, or a stale one."""
    embed_stored(_context().engine, rebuild=rebuild)


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


def links_of(paper: Paper) -> PaperLinks:
    return links_for(paper.title, paper.arxiv_id, paper.code_url, paper.project_url)


def paper_json(paper: Paper) -> dict[str, object]:
    """A stored paper for scripts: its fields, lists as lists, and its links."""
    data = paper.model_dump(exclude={"key", "author_names", "keywords", "categories", "sources"})
    lists = {
        "author_names": json.loads(paper.author_names) if paper.author_names else [],
        "keywords": json.loads(paper.keywords) if paper.keywords else [],
        "categories": (paper.categories or "").split(),
        "sources": (paper.sources or "").split(),
    }
    links = links_of(paper)
    return data | lists | {"links": {k: getattr(links, k) for k in links.__slots__}}


# --- filters ----------------------------------------------------------------------


@filters_app.command("test")
def filters_test(
    query: Annotated[
        str | None,
        typer.Argument(help="A filter, e.g. 'diffusion AND NOT video' or 'org:\"ZIP Lab\"'."),
    ] = None,
    about: Annotated[
        str | None, typer.Option("--about", help="A sentence about the topic (its meaning).")
    ] = None,
    dial: Annotated[
        int | None,
        typer.Option(min=1, max=5, help="1 fewest, surest papers ... 5 more (default 3)."),
    ] = None,
    subscriber: Annotated[
        str | None,
        typer.Option(
            "--subscriber", help="Test a subscriber's topic as they taught it (their dial too)."
        ),
    ] = None,
    topic_number: Annotated[
        int, typer.Option("--topic", min=1, help="With --subscriber: which topic (1 = first).")
    ] = 1,
    limit: Annotated[int, typer.Option(help="Show this many of the included papers.")] = 20,
    show_all: Annotated[
        bool, typer.Option("--all", help="Also list the matches below the line, with scores.")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")] = False,
) -> None:
    """What a digest with this topic would include from the stored papers, best first,
    with the parts of each score; --all shows where the line falls."""
    from newsletter import embed
    from newsletter.embed.store import ensure_topic_vectors
    from newsletter.filters import compile_filter, to_query
    from newsletter.relevance.day import day_scorer, text_of
    from newsletter.subscribers import validate_topic

    ctx = _context()
    if subscriber is not None:
        topic, dial = _taught_topic(ctx, subscriber, topic_number, dial)
        query, about = topic.query, topic.about
    elif query is None:
        raise SubscriberError("give a filter, or --subscriber EMAIL", field="query")
    else:
        topic = Topic(query, about)
    dial = dial or DEFAULT_DIAL
    compile_filter(query)  # a syntax error goes to main(), which draws the caret
    if about is not None:
        validate_topic({"filter": query, "about": about})
    try:
        ensure_topic_vectors(engine=ctx.engine, texts=[text_of(topic)])
    except embed.ModelMissingError as exc:
        err.print(f"warning: meaning is off: {exc}", markup=False)
    with db.session_scope(engine=ctx.engine) as session:
        papers = list(session.exec(select(Paper).order_by(Paper.first_seen_at, Paper.id)))
        scorer = day_scorer(session, papers=papers, now=utcnow(), topics=[topic])
    titles = {p.id: p.title for p in papers}
    pages = {p.id: links_of(p) for p in papers}
    scores = scorer.topic(topic)
    picked = scorer.pick([topic], within=None, limit=10**9, dial=dial)
    shown = picked.matches[:limit]
    below = _below_the_line(scorer, scores, picked, dial) if show_all else []
    step = DIAL[dial]
    liked = {m.paper_id: m.liked for m in picked.matches if m.liked}

    def row(i: int, pid: int, meaning: bool = False) -> dict[str, object]:
        return {
            "id": pid,
            "title": titles[pid],
            "score": round(float(scores.fused[i]), 3),
            "lexical": round(float(scores.lexical[i]), 3),
            "semantic": round(float(scores.semantic[i]), 3) if scores.has_meaning[i] else None,
            "matched": bool(scores.matched[i]),
            "words": list(scorer.words_of(topic.query, i)),
            "carried_by_meaning": meaning,
            "liked": liked.get(pid),
            "links": {k: getattr(pages[pid], k) for k in pages[pid].__slots__},
        }

    if as_json:
        _print_json(
            {
                "query": query,
                "canonical": to_query(compile_filter(query).tree),
                "about": about,
                "dial": dial,
                "subscriber": subscriber,
                "taught": {
                    "liked": sum(1 for _, v in topic.taught if v > 0),
                    "disliked": sum(1 for _, v in topic.taught if v < 0),
                },
                "threshold": step.threshold,
                "matched": int(scores.matched.sum()),
                "included": picked.total,
                "papers": [row(m.index, m.paper_id, m.meaning) for m in shown],
                **({"below": [row(i, pid) for i, pid in below]} if show_all else {}),
            }
        )
        return
    canonical = to_query(compile_filter(query).tree)
    out.print(
        f"{int(scores.matched.sum())} of {len(papers)} papers match {canonical}", markup=False
    )
    if topic.taught:
        up = sum(1 for _, v in topic.taught if v > 0)
        out.print(f"taught: {up} liked, {len(topic.taught) - up} disliked", markup=False)
    out.print(f"{picked.total} make the digest at dial {dial} ({step.label})", markup=False)
    for rank, m in enumerate(shown, start=1):
        title = Text(terminal_safe(f"{rank:3}. {titles[m.paper_id]}"))
        title.highlight_words(m.words, style="bold underline", case_sensitive=False)
        why = _parts(scores, m.index, m.meaning)
        why += f" (carried by your vote: like {m.liked!r})" if m.liked else ""
        out.print(title, Text("  " + terminal_safe(why), style="dim"))
        out.print(Text("     " + pages[m.paper_id].page, style="dim"), soft_wrap=True)
    if show_all:
        out.print(f"below the line (score under {step.threshold}):", markup=False)
        for i, pid in below:
            out.print(
                Text(terminal_safe(f"     {titles[pid]}")),
                Text("  " + _parts(scores, i), style="dim"),
            )


def _taught_topic(ctx: Runtime, email: str, number: int, dial: int | None) -> tuple[Topic, int]:
    """A subscriber's topic with their votes, and the dial to test it at."""
    from newsletter.feedback import taught_topics
    from newsletter.subscribers import find

    with db.session_scope(engine=ctx.engine) as session:
        row = find(session=session, email=email)
        topics = taught_topics(session=session, ids=[row.id]).get(row.id, [])  # type: ignore[list-item, arg-type]
        if number > len(topics):
            raise SubscriberError(
                f"{row.email} has {len(topics)} topics; --topic {number} is not one", field="topic"
            )
        return topics[number - 1], dial or row.dial


def _below_the_line(
    scorer: Scorer, scores: TopicScores, picked: Picked, dial: int
) -> list[tuple[int, int]]:
    """Matches left out, and papers close in meaning, best first: where the line falls."""
    inside = {m.index for m in picked.matches}
    near = scores.matched | scores.near(DIAL[dial])
    left = [int(i) for i in np.flatnonzero(near) if int(i) not in inside]
    left.sort(key=lambda i: -float(scores.fused[i]))
    return [(i, int(scorer.ranker.ids[i])) for i in left]


def _parts(scores: TopicScores, i: int, meaning: bool = False) -> str:
    semantic = f"{scores.semantic[i]:+.2f}" if scores.has_meaning[i] else "n/a"
    why = " (carried by meaning)" if meaning else ""
    return (
        f"[{scores.fused[i]:.2f} = words {scores.lexical[i]:.2f} + {ALPHA} x meaning {semantic}]"
        + why
    )

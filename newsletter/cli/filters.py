"""``filters test``: what a digest with a topic would include from the stored papers."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import numpy as np
import typer
from rich.text import Text
from sqlmodel import select

from newsletter import db
from newsletter.cli.common import _context, _print_json, err, filters_app, out
from newsletter.cli.corpus import index_stored, links_of
from newsletter.errors import SubscriberError
from newsletter.models import Paper, utcnow
from newsletter.relevance import ALPHA, DEFAULT_DIAL, DIAL, Scorer, Topic, TopicScores
from newsletter.text import terminal_safe

if TYPE_CHECKING:
    from newsletter.runtime import Runtime


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
    from newsletter.relevance.day import corpus_scorer, text_of
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
    index_stored(ctx.engine)  # what ingest stored and nobody indexed yet
    with db.session_scope(engine=ctx.engine) as session:
        # Every stored paper, read from the stored postings: nothing is analysed here.
        scorer = corpus_scorer(session, engine=ctx.engine, now=utcnow(), topics=[topic])
        scores = scorer.topic(topic)
        # Only what is listed is explained: a year of papers may let in thousands.
        picked = scorer.pick([topic], within=None, limit=limit, dial=dial)
        shown = picked.matches
        below = _below_the_line(scorer, scores, topic, dial) if show_all else []
        listed = [m.paper_id for m in shown] + [pid for _, pid in below]
        papers = {
            p.id: p
            for start in range(0, len(listed), 500)
            for p in session.exec(select(Paper).where(Paper.id.in_(listed[start : start + 500])))  # type: ignore[union-attr]
        }
    titles = {pid: p.title for pid, p in papers.items()}
    pages = {pid: links_of(p) for pid, p in papers.items()}
    total = len(scorer.ranker.ids)
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
    out.print(f"{int(scores.matched.sum())} of {total} papers match {canonical}", markup=False)
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
    scorer: Scorer, scores: TopicScores, topic: Topic, dial: int
) -> list[tuple[int, int]]:
    """Matches left out, and papers close in meaning, best first: where the line falls."""
    inside = set(scorer.decide([topic], within=None, dial=dial)[0].tolist())
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

"""``newsletter feedback``: record a reader's vote on a paper, for operators and tests."""

from __future__ import annotations

from typing import Annotated

import typer
from sqlmodel import Session, func, select

from newsletter import db
from newsletter.cli.common import _context, app, out
from newsletter.corpus.keys import canonical_key
from newsletter.corpus.records import split_arxiv_id
from newsletter.errors import SubscriberError
from newsletter.feedback import Vote, record_vote, taught_topics
from newsletter.filters import compile_filter
from newsletter.filters.naive import matches
from newsletter.models import Paper, utcnow
from newsletter.relevance.day import paper_doc
from newsletter.subscribers import find


@app.command("feedback")
def feedback(
    email: Annotated[str, typer.Argument(help="Whose vote.")],
    paper: Annotated[
        str, typer.Option("--paper", help="The paper: its id, its arXiv id, or its title.")
    ],
    vote: Annotated[
        Vote, typer.Option("--vote", help="up: more like this; down: not for me; none: undo.")
    ],
    topic: Annotated[
        int | None,
        typer.Option(
            "--topic",
            min=1,
            help="Which of their topics (1 = the first); default: the first whose filter "
            "matches the paper.",
        ),
    ] = None,
) -> None:
    """Record "more like this" (up), "not for me" (down) or take a vote back (none)."""
    ctx = _context()
    with db.session_scope(engine=ctx.engine) as session:
        subscriber = find(session=session, email=email)
        found = find_paper(session=session, text=paper)
        topics = taught_topics(session=session, ids=[subscriber.id]).get(subscriber.id, [])  # type: ignore[list-item]
        if not topics:
            raise SubscriberError(f"{subscriber.email} has no topics", field="topic")
        if topic is None:
            doc = paper_doc(found)
            chosen = next(
                (t for t in topics if matches(compile_filter(t.query).tree, doc)), topics[0]
            )
        elif topic > len(topics):
            raise SubscriberError(
                f"{subscriber.email} has {len(topics)} topics; --topic {topic} is not one",
                field="topic",
            )
        else:
            chosen = topics[topic - 1]
        votes = record_vote(
            session=session,
            subscriber=subscriber,
            query=chosen.query,
            paper_id=found.id,  # type: ignore[arg-type]
            vote=vote,
            source="cli",
            now=utcnow(),
        )
    liked = sum(1 for _, v in votes if v > 0)
    out.print(
        f"{vote.value}: {found.title!r} in topic {chosen.query!r} "
        f"(it now has {liked} liked, {len(votes) - liked} disliked)",
        markup=False,
    )


def find_paper(*, session: Session, text: str) -> Paper:
    """A paper by its id, its arXiv id (any version) or its title; one, or a clear error."""
    text = text.strip()
    if text.isascii() and text.isdigit():
        row = session.get(Paper, int(text))
        if row is not None:
            return row
    arxiv = split_arxiv_id(text)
    if arxiv is not None:
        by_arxiv = session.exec(select(Paper).where(Paper.arxiv_id == arxiv[0])).first()
        if by_arxiv is not None:
            return by_arxiv
    key = canonical_key(text)
    rows = list(session.exec(select(Paper).where(Paper.key == key)).all()) if key else []
    if not rows:
        rows = list(
            session.exec(
                select(Paper).where(func.lower(Paper.title) == text.lower()).limit(2)
            ).all()
        )
    if len(rows) == 1:
        return rows[0]
    raise SubscriberError(
        f"no paper {text!r}" if not rows else f"{text!r} names more than one paper",
        field="paper",
    )


lessons_app = typer.Typer(help="What readers' votes taught their topics.", no_args_is_help=True)
app.add_typer(lessons_app, name="lessons")


@lessons_app.command("rebuild")
def lessons_rebuild() -> None:
    """Replay every vote event and store each topic's lesson again (the events are the
    truth; the stored lessons only save replaying them)."""
    from newsletter.feedback import rebuild

    ctx = _context()
    with db.session_scope(engine=ctx.engine) as session:
        written, differed = rebuild(session=session, now=utcnow())
    out.print(
        f"rebuilt {written} lessons from the vote events; {differed} differed from what was stored",
        markup=False,
    )

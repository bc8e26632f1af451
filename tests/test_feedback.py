"""Votes ("more like this", "not for me"): kept as events, replayed into what each topic is
taught, and felt by the next digest. The sample corpus (with its bundled vectors) is the
reference window, first seen days before the day being planned."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlmodel import func, select

from newsletter import db
from newsletter.corpus.ingest import ingest
from newsletter.embed.store import embed_papers, embed_topics
from newsletter.errors import SubscriberError, TooManyVotesError
from newsletter.events import EventKind
from newsletter.feedback import Vote, rebuild, record_vote, taught, taught_topics
from newsletter.models import Event, Paper, TopicLesson
from newsletter.plan import plan_digests
from newsletter.subscribers import find, replace_topics
from tests.conftest import CORPUS, make_settings
from tests.helpers import add_paper, subscribe
from tests.test_cli import run

# The hour now, not a fixed date: `newsletter preview` below runs at the real time, and
# papers first seen more than NEWSLETTER_FIRST_DIGEST_DAYS before it are not new to it
# (a fixed date made this test fail a week after it was written).
NOW = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
DIFFUSION = "diffusion | Diffusion models for image synthesis"


def _store(tmp_path: Path):  # type: ignore[no-untyped-def]
    url = f"sqlite:///{tmp_path / 'news.db'}"
    engine = db.make_engine(url)
    db.upgrade(engine=engine)
    ingest(engine=engine, paths=[CORPUS], now=NOW - timedelta(days=3))  # the reference window
    return engine, make_settings(tmp_path, url, NEWSLETTER_FIRST_DIGEST_DAYS="1"), url


def _paper(engine: sa.Engine, words: str) -> Paper:
    with db.session_scope(engine=engine) as session:
        row = session.exec(
            select(Paper).where(Paper.title.contains(words)).order_by(Paper.id)  # type: ignore[attr-defined]
        ).first()
        assert row is not None, words
        session.expunge(row)
        return row


def _twin(engine: sa.Engine, paper: Paper) -> int:
    """Today's near-duplicate of ``paper``: the same abstract under a slightly other title."""
    return add_paper(
        engine,
        title=paper.title + " (extended version)",
        abstract=paper.abstract,
        seen=NOW - timedelta(hours=1),
    )


def _vote(  # type: ignore[no-untyped-def]
    engine: sa.Engine,
    email: str,
    paper_id: int,
    vote: Vote,
    query: str = "diffusion",
    *,
    now: datetime = NOW,
    per_hour: int | None = None,
):
    with db.session_scope(engine=engine) as session:
        return record_vote(
            session=session,
            subscriber=find(session=session, email=email),
            query=query,
            paper_id=paper_id,
            vote=vote,
            source="test",
            now=now,
            per_hour=per_hour,
        )


def _taught(engine: sa.Engine) -> dict:  # type: ignore[type-arg]
    with db.session_scope(engine=engine) as session:
        return taught(session=session)


def _votes_written(engine: sa.Engine) -> int:
    with db.session_scope(engine=engine) as session:
        return session.exec(
            select(func.count()).select_from(Event).where(Event.kind == EventKind.VOTED)
        ).one()


def test_a_vote_switches_undoes_and_a_second_tap_writes_nothing(tmp_path: Path) -> None:
    engine, _settings, _url = _store(tmp_path)
    a = subscribe(engine, email="a@example.org", topics=[DIFFUSION, "speech"], now=NOW)
    b = subscribe(engine, email="b@example.org", topics=[DIFFUSION], now=NOW)
    p, q = _paper(engine, "Diffusion").id, _paper(engine, "Speech").id

    assert _vote(engine, "a@example.org", p, Vote.UP) == ((p, 1),)
    assert _vote(engine, "a@example.org", p, Vote.UP) == ((p, 1),)  # a second tap
    assert _votes_written(engine) == 1
    assert _vote(engine, "a@example.org", q, Vote.DOWN) == tuple(sorted(((p, 1), (q, -1))))
    assert _vote(engine, "a@example.org", p, Vote.DOWN) == tuple(sorted(((p, -1), (q, -1))))
    assert _vote(engine, "a@example.org", q, Vote.NONE) == ((p, -1),)  # undone
    assert _vote(engine, "a@example.org", p, Vote.UP, query="speech") == ((p, 1),)

    # The state is the replay of the events, per subscriber and topic; b taught nothing.
    assert _taught(engine) == {(a, "diffusion"): ((p, -1),), (a, "speech"): ((p, 1),)}
    with db.session_scope(engine=engine) as session:
        topics = taught_topics(session=session, ids=[a, b])
    assert [t.taught for t in topics[a]] == [((p, -1),), ((p, 1),)]
    assert [t.taught for t in topics[b]] == [()]

    # The stored lessons are the events' replay; a damaged one is put right by a rebuild.
    with db.session_scope(engine=engine) as session:
        lessons = {(r.subscriber_id, r.query): json.loads(r.votes)
                   for r in session.exec(select(TopicLesson))}  # fmt: skip
        assert lessons == {(a, "diffusion"): [[p, -1]], (a, "speech"): [[p, 1]]}
        row = session.exec(select(TopicLesson).where(TopicLesson.query == "speech")).one()
        row.votes = json.dumps([[q, 1]])  # as if a bug or a hand edit had changed it
        session.add(row)
    assert _taught(engine)[(a, "speech")] == ((q, 1),)
    home = engine.url.database.rsplit("/", 1)[0]  # type: ignore[union-attr]
    said = run(Path(home), "lessons", "rebuild", env={"DATABASE_URL": str(engine.url)}).stdout
    assert "rebuilt 2 lessons from the vote events; 1 differed" in said
    assert _taught(engine) == {(a, "diffusion"): ((p, -1),), (a, "speech"): ((p, 1),)}

    # A topic the reader removed keeps its events but teaches nothing any more.
    with db.session_scope(engine=engine) as session:
        replace_topics(session=session, subscriber_id=a, topics=["speech"], now=NOW)
    assert _taught(engine) == {(a, "speech"): ((p, 1),)}
    assert _votes_written(engine) == 5


def test_the_hours_vote_limit_is_counted_in_the_ledger_per_reader(tmp_path: Path) -> None:
    """Counted from the vote events, not in a process's memory: what one web process or
    a restarted one sees alike. A second tap, which writes nothing, counts nothing; the
    refused vote changes nothing; an hour later the reader votes again; another reader's
    votes are theirs."""
    engine, _settings, _url = _store(tmp_path)
    a = subscribe(engine, email="a@example.org", topics=[DIFFUSION], now=NOW)
    subscribe(engine, email="b@example.org", topics=[DIFFUSION], now=NOW)
    p, q = _paper(engine, "Diffusion").id, _paper(engine, "Speech").id
    start = NOW - timedelta(minutes=59)
    _vote(engine, "a@example.org", p, Vote.UP, now=start, per_hour=3)
    _vote(engine, "a@example.org", p, Vote.UP, now=start, per_hour=3)  # a second tap
    _vote(engine, "a@example.org", q, Vote.DOWN, now=NOW, per_hour=3)
    _vote(engine, "a@example.org", q, Vote.NONE, now=NOW, per_hour=3)
    with pytest.raises(TooManyVotesError, match=r"a@example\.org voted 3 times within the hour"):
        _vote(engine, "a@example.org", q, Vote.UP, now=NOW, per_hour=3)
    assert _taught(engine) == {(a, "diffusion"): ((p, 1),)}, "the refused vote changed nothing"
    assert _vote(engine, "a@example.org", p, Vote.UP, now=NOW, per_hour=3) == ((p, 1),)  # a no-op
    assert _votes_written(engine) == 3
    _vote(engine, "b@example.org", q, Vote.UP, now=NOW, per_hour=3)  # another reader's
    later = start + timedelta(hours=1, seconds=1)  # the first vote is over an hour old
    assert _vote(engine, "a@example.org", q, Vote.UP, now=later, per_hour=3) == ((p, 1), (q, 1))
    # The operator's command records without the readers' limit.
    _vote(engine, "a@example.org", q, Vote.DOWN, now=NOW + timedelta(minutes=1))
    assert _votes_written(engine) == 6


def test_two_votes_at_once_both_count(tmp_path: Path) -> None:
    """A second web process, or the operator's command beside the web app: one vote's
    transaction is open when the other starts. The second waits for the first and
    starts from its lesson, on SQLite too, whose reads take no lock (pysqlite begins
    a transaction only at the first write): both votes are in the lesson, and the
    lesson is what its events replay to."""
    import threading
    import time

    engine, _settings, _url = _store(tmp_path)
    a = subscribe(engine, email="a@example.org", topics=[DIFFUSION], now=NOW)
    p, q = _paper(engine, "Diffusion").id, _paper(engine, "Speech").id
    with db.session_scope(engine=engine) as first:  # open, written, not committed yet
        reader = find(session=first, email="a@example.org")
        record_vote(session=first, subscriber=reader, query="diffusion", paper_id=p,
                    vote=Vote.UP, source="test", now=NOW)  # fmt: skip
        second = threading.Thread(target=_vote, args=(engine, "a@example.org", q, Vote.UP))
        second.start()
        time.sleep(0.5)  # the second is under way: reading, or waiting for the first
    second.join()
    assert _taught(engine) == {(a, "diffusion"): ((p, 1), (q, 1))}
    with db.session_scope(engine=engine) as session:
        assert rebuild(session=session, now=NOW)[1] == 0  # no lesson differed from its events


@pytest.mark.parametrize("damage", ["x", "[[Infinity, 1]]", '[["a", 1]]'])
def test_an_unreadable_lesson_is_replayed_from_its_votes(tmp_path: Path, damage: str) -> None:
    """A stored lesson that does not decode (a hand edit, a bug) is not a crash of
    planning, and not a loss: its topic's votes are read again from the first event,
    whatever the reader's other lessons hold."""
    engine, _settings, _url = _store(tmp_path)
    a = subscribe(engine, email="a@example.org", topics=[DIFFUSION, "speech"], now=NOW)
    p, q = _paper(engine, "Diffusion").id, _paper(engine, "Speech").id
    _vote(engine, "a@example.org", p, Vote.UP)
    _vote(engine, "a@example.org", q, Vote.DOWN, query="speech")  # a newer lesson
    with db.session_scope(engine=engine) as session:
        row = session.exec(select(TopicLesson).where(TopicLesson.query == "diffusion")).one()
        row.votes = damage
        session.add(row)
    assert _taught(engine) == {(a, "diffusion"): ((p, 1),), (a, "speech"): ((q, -1),)}


def test_a_vote_names_a_topic_and_a_paper_that_exist(tmp_path: Path) -> None:
    engine, _settings, _url = _store(tmp_path)
    subscribe(engine, email="a@example.org", topics=[DIFFUSION], now=NOW)
    paper = _paper(engine, "Diffusion").id
    with pytest.raises(SubscriberError, match=r"topic: a@example\.org has no topic 'speech'"):
        _vote(engine, "a@example.org", paper, Vote.UP, query="speech")
    with pytest.raises(SubscriberError, match="paper: no paper with id 999999"):
        _vote(engine, "a@example.org", 999_999, Vote.UP)
    assert _votes_written(engine) == 0


def _picks(engine: sa.Engine, settings, email: str):  # type: ignore[no-untyped-def]
    report = plan_digests(engine=engine, settings=settings, now=NOW, due_only=False, dry_run=True)
    (planned,) = [p for p in report.planned if p.email == email]
    return planned.ranked.matches


def _digest(engine: sa.Engine, settings, email: str) -> list[int]:  # type: ignore[no-untyped-def]
    return [m.paper_id for m in _picks(engine, settings, email)]


def test_a_disliked_papers_twin_drops_below_the_line_and_a_liked_papers_twin_rises(
    tmp_path: Path,
) -> None:
    engine, settings, url = _store(tmp_path)
    disliked = _paper(engine, "Diffusion")
    liked = _paper(engine, "Speech")  # far from the topic: its filter does not match it
    twin_of_disliked, twin_of_liked = _twin(engine, disliked), _twin(engine, liked)
    subscribe(engine, email="r@example.org", topics=[DIFFUSION], now=NOW)
    subscribe(engine, email="other@example.org", topics=[DIFFUSION], now=NOW)
    embed_papers(engine=engine)  # today's two papers go through the model
    embed_topics(engine=engine)

    before = _digest(engine, settings, "r@example.org")
    assert twin_of_disliked in before and twin_of_liked not in before

    # Votes through the operator's command, as a reader's taps would be recorded.
    env = {"DATABASE_URL": url, "NEWSLETTER_SECRET_KEY": "k" * 40}
    home = tmp_path / "home"
    home.mkdir()
    vote = ("feedback", "r@example.org", "--paper")
    said = run(home, *vote, str(disliked.id), "--vote", "down", env=env)
    assert "down:" in said.stdout and "0 liked, 1 disliked" in said.stdout
    run(home, *vote, liked.title, "--vote", "up", env=env)

    after = _digest(engine, settings, "r@example.org")
    assert twin_of_disliked not in after, "the near-duplicate of a disliked paper stays out"
    assert twin_of_liked in after, "the near-duplicate of a liked paper comes in"
    (why,) = [m for m in _picks(engine, settings, "r@example.org") if m.paper_id == twin_of_liked]
    assert why.liked == liked.title and not why.meaning, "it says which vote carried it"
    preview = run(home, "preview", "r@example.org", env=env).stdout
    said = " ".join(preview.split())
    assert f"like “{liked.title[:40]}" in said and "”, which you marked" in said
    assert _digest(engine, settings, "other@example.org") == before, "nobody else is changed"
    shown = json.loads(
        run(home, "filters", "test", "--subscriber", "r@example.org", "--json", env=env).stdout
    )
    assert shown["taught"] == {"liked": 1, "disliked": 1} and shown["query"] == "diffusion"
    (twin,) = [p for p in shown["papers"] if p["id"] == twin_of_liked]
    assert twin["liked"] == liked.title
    assert twin_of_disliked not in [p["id"] for p in shown["papers"]]

    # Undoing both votes gives the digest back as it was.
    run(home, *vote, str(disliked.id), "--vote", "none", env=env)
    run(home, *vote, str(liked.id), "--vote", "none", "--topic", "1", env=env)
    assert _digest(engine, settings, "r@example.org") == before


def test_filters_test_shows_the_chosen_topic_of_a_subscriber_with_its_votes(
    tmp_path: Path,
) -> None:
    """``filters test --subscriber EMAIL --topic N``: the N-th topic, as taught."""
    engine, _settings, url = _store(tmp_path)
    subscribe(engine, email="t@example.org", topics=["speech", DIFFUSION], now=NOW)
    embed_papers(engine=engine)
    embed_topics(engine=engine)
    disliked = _paper(engine, "Diffusion")
    _vote(engine, "t@example.org", disliked.id, Vote.DOWN)  # type: ignore[arg-type]
    env = {"DATABASE_URL": url, "NEWSLETTER_SECRET_KEY": "k" * 40}
    home = tmp_path / "home"
    home.mkdir()
    test = ("filters", "test", "--subscriber", "t@example.org", "--json", "--limit", "1000")
    first = json.loads(run(home, *test, env=env).stdout)
    assert first["query"] == "speech" and first["taught"] == {"liked": 0, "disliked": 0}
    second = json.loads(run(home, *test, "--topic", "2", env=env).stdout)
    assert second["query"] == "diffusion" and second["taught"] == {"liked": 0, "disliked": 1}
    assert disliked.id not in [p["id"] for p in second["papers"]]
    about = DIFFUSION.split(" | ")[1]
    untaught = run(home, "filters", "test", "diffusion", "--about", about, "--limit", "1000",
                   "--json", env=env)  # fmt: skip
    assert disliked.id in [p["id"] for p in json.loads(untaught.stdout)["papers"]]
    missing = run(home, *test, "--topic", "3", env=env, ok=False)
    assert missing.returncode == 1 and "Traceback" not in missing.stderr
    assert "t@example.org has 2 topics; --topic 3 is not one" in missing.stderr


def test_the_next_day_a_paraphrase_of_a_liked_paper_comes_in_and_of_a_disliked_one_stays_out(
    tmp_path: Path,
) -> None:
    """Tomorrow's papers are not copies of what the reader marked: two papers retelling
    a liked and a disliked one in other words follow the votes, in tomorrow's digest."""
    engine, settings, _url = _store(tmp_path)
    subscribe(engine, email="r@example.org", topics=[DIFFUSION], now=NOW)
    liked = _paper(engine, "PortaSpeech")  # text-to-speech: the filter does not match it
    disliked = _paper(engine, "Exact Diffusion Inversion")
    tomorrow = NOW + timedelta(days=1)
    seen = tomorrow - timedelta(hours=1)
    add_paper(engine, title="Diffusion Models for Fast Image Synthesis",
              abstract="We speed up diffusion models for images.", seen=seen)  # fmt: skip
    like_liked = add_paper(
        engine,
        title="Small, Fast and Natural: A Compact Generative Model for Parallel Speech Synthesis",
        abstract="Parallel (non-autoregressive) text-to-speech systems turn text into audio "
        "quickly. Studying variational autoencoders and normalizing flows for this task, we see "
        "that the first captures prosody and other long-range features with few parameters but "
        "sounds blurry, while the second renders fine detail but needs many parameters. We "
        "combine both in a lightweight model that produces natural speech at a fraction of the "
        "size.",
        seen=seen,
    )
    like_disliked = add_paper(
        engine,
        title="Inverting DDIM Exactly for Image Editing at No Extra Cost",
        abstract="Editing images with diffusion models needs DDIM inversion, and fixes such as "
        "EDICT or null-text inversion are slow. We approximate the integration in both "
        "directions: each DDIM step is applied forward and backward over neighbouring time "
        "slots, so the next latent is a linear combination of the two previous ones and the "
        "predicted noise, and the sampler can be run backwards exactly. Round-trip editing "
        "improves, and text-to-image samples look better than with plain DDIM.",
        seen=seen,
    )
    embed_papers(engine=engine)  # tomorrow's papers go through the model
    embed_topics(engine=engine)

    def tomorrows() -> dict[int, object]:
        report = plan_digests(
            engine=engine, settings=settings, now=tomorrow, due_only=False, dry_run=True
        )
        (planned,) = [p for p in report.planned if p.email == "r@example.org"]
        return {m.paper_id: m for m in planned.ranked.matches}

    before = tomorrows()
    assert like_disliked in before and like_liked not in before
    _vote(engine, "r@example.org", liked.id, Vote.UP)  # type: ignore[arg-type]
    _vote(engine, "r@example.org", disliked.id, Vote.DOWN)  # type: ignore[arg-type]
    after = tomorrows()
    assert like_liked in after and after[like_liked].liked == liked.title  # type: ignore[attr-defined]
    assert like_disliked not in after


def test_the_feedback_command_refuses_what_it_cannot_find(tmp_path: Path) -> None:
    engine, _settings, url = _store(tmp_path)
    subscribe(engine, email="r@example.org", topics=[DIFFUSION], now=NOW)
    env = {"DATABASE_URL": url, "NEWSLETTER_SECRET_KEY": "k" * 40}
    home = tmp_path / "home"
    home.mkdir()
    for args, says in (
        (["--paper", "No Such Paper At All", "--vote", "up"], "paper: no paper 'No Such Paper"),
        (["--paper", "1", "--vote", "up", "--topic", "2"], "has 1 topics; --topic 2 is not one"),
        (["--paper", "1", "--vote", "maybe"], "'maybe' is not one of"),
    ):
        proc = run(home, "feedback", "r@example.org", *args, env=env, ok=False)
        assert proc.returncode != 0 and says in proc.stderr, proc.stderr
        assert "Traceback" not in proc.stderr
    assert _votes_written(engine) == 0


def test_a_removed_readers_votes_are_nobody_elses(tmp_path: Path) -> None:
    """Removed ("forget me"), a reader's votes go and the rest of their history names no
    one: SQLite gives the next subscriber the same id, and votes are replayed by id; the
    counters (unsubscribes, bounces) never go down."""
    from newsletter import subscribers
    from newsletter.feedback import votes_since
    from newsletter.ledger import stats

    engine, _settings, _url = _store(tmp_path)
    gone = subscribe(engine, email="gone@example.org", topics=[DIFFUSION], now=NOW)
    _vote(engine, "gone@example.org", _paper(engine, "Diffusion").id, Vote.DOWN)
    with db.session_scope(engine=engine) as session:
        subscribers.unsubscribe(session=session, subscriber_id=gone, now=NOW, source="page")
    before = stats(engine=engine)["unsubscribes"]
    with db.session_scope(engine=engine) as session:
        subscribers.remove_subscriber(session=session, email="gone@example.org", now=NOW)
    with db.session_scope(engine=engine) as session:
        assert session.exec(select(Event).where(Event.subscriber_id == gone)).all() == []
        kinds = [e.kind for e in session.exec(select(Event))]
    assert kinds.count("subscriber.removed") == 1 and "feedback.vote" not in kinds
    assert stats(engine=engine)["unsubscribes"] == before == 1
    new = subscribe(engine, email="new@example.org", topics=[DIFFUSION], now=NOW)
    assert new == gone, "SQLite gave the id again"
    assert _taught(engine) == {}
    with db.session_scope(engine=engine) as session:
        assert votes_since(session, new, NOW - timedelta(hours=1)) == 0

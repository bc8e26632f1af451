"""What a digest includes: the calibrated score, its explanations, its dial, and the
places a topic's sentence enters. The sample corpus (with its bundled vectors) is the
reference window, first seen days before the day being planned."""

from __future__ import annotations

import email
import email.policy
import json
import re
from datetime import UTC, datetime, timedelta
from html import unescape as html_unescape
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa
from sqlmodel import select

from newsletter import db
from newsletter.backends.memory import MemoryBackend
from newsletter.corpus.ingest import ingest
from newsletter.embed.store import embed_papers, embed_topics, ensure_topic_vectors
from newsletter.errors import SubscriberError
from newsletter.models import Event, Paper, Subscriber
from newsletter.plan import plan_digests
from newsletter.relevance import ALPHA, DIAL, Topic
from newsletter.relevance.day import day_scorer, text_of
from newsletter.render.content import paper_texts
from newsletter.subscribers import validate_subscriber
from tests.conftest import CORPUS, make_settings
from tests.helpers import add_paper, deliver, subscribe

NOW = datetime(2026, 11, 23, 9, 0, tzinfo=UTC)
PEFT = Topic("LoRA", "Low-rank adaptation for parameter-efficient fine-tuning of language models")
DIFFUSION = Topic("diffusion", "Diffusion models for image synthesis")
# An abstract of ordinary length that mentions LoRA once, in passing.
VISION_BENCHMARK = (
    "We present a benchmark for image classification, detection and segmentation across "
    "forty datasets collected from medical imaging, remote sensing and driving scenes. "
    "Twelve backbones are trained from scratch and compared under identical budgets; "
    "among many baselines we also try LoRA once. Convolutional networks remain strong on "
    "small datasets while vision transformers lead when data is plentiful, and we release "
    "code, splits and leaderboards to support reproducible comparison."
)


def _store(tmp_path: Path, name: str) -> tuple[sa.Engine, object]:
    url = f"sqlite:///{tmp_path / name}"
    engine = db.make_engine(url)
    db.upgrade(engine=engine)
    ingest(engine=engine, paths=[CORPUS], now=NOW - timedelta(days=3))  # the reference window
    return engine, make_settings(tmp_path, url)


def _embed(engine: sa.Engine) -> None:
    embed_papers(engine=engine)
    embed_topics(engine=engine)


def _today(engine: sa.Engine, title: str, abstract: str, *, upvotes: int | None = None) -> int:
    return add_paper(
        engine, title=title, abstract=abstract, seen=NOW - timedelta(hours=1), upvotes=upvotes
    )


def _fillers(engine: sa.Engine, count: int) -> None:
    """Papers on other subjects, so the day is big or small: eight texts, each embedded
    once however many papers share it (the day's size is what matters here)."""
    fields = (
        "protein folding",
        "traffic forecasting",
        "weather models",
        "robot grasping",
        "music transcription",
        "chip placement",
        "legal documents",
        "crop yields",
    )
    with db.session_scope(engine=engine) as session:
        session.add_all(
            Paper(
                key=f"filler {i}",
                title=f"A study of {fields[i % 8]}",
                abstract=f"We look at {fields[i % 8]} once more.",
                source_file="t",
                first_seen_at=NOW - timedelta(hours=2),
                updated_at=NOW,
            )
            for i in range(count)
        )


def _digest_of(engine: sa.Engine, settings, address: str):  # type: ignore[no-untyped-def]
    report = plan_digests(engine=engine, settings=settings, now=NOW, due_only=False)
    return next(p.ranked for p in report.planned if p.email == address)


def test_the_same_paper_gets_the_same_decision_on_a_small_and_a_big_day(tmp_path: Path) -> None:
    decisions = []
    for day_size in (20, 1000):
        engine, settings = _store(tmp_path, f"day{day_size}.db")
        strong = _today(
            engine,
            "Low-Rank Adapters for Efficient Tuning of Language Models",
            "We fine-tune language models with trainable low-rank matrices.",
        )
        weak = _today(engine, "A Benchmark of Vision Models", VISION_BENCHMARK)
        _fillers(engine, day_size - 2)
        subscribe(engine, email="p@example.org", topics=[f"{PEFT.query} | {PEFT.about}"], now=NOW)
        _embed(engine)
        picked = _digest_of(engine, settings, "p@example.org")
        shown = {m.paper_id: round(m.score, 9) for m in picked.matches}
        near = {m.paper_id: round(m.score, 9) for m in picked.near}
        decisions.append(((strong in shown, shown.get(strong)), (weak in shown, near.get(weak))))
        db.make_engine(str(engine.url)).dispose()
    assert decisions[0] == decisions[1]
    assert decisions[0][0][0] is True and decisions[0][1][0] is False


def test_a_paper_with_only_synonyms_enters_on_meaning_and_says_why(tmp_path: Path) -> None:
    engine, settings = _store(tmp_path, "synonym.db")
    title = "Low-Rank Adapters for Efficient Tuning of Large Language Models"
    abstract = (
        "Fine-tuning every weight of a large model is costly. We freeze the pretrained "
        "weights and learn small low-rank update matrices. It matches full fine-tuning."
    )
    paper = _today(engine, title, abstract)
    subscribe(engine, email="s@example.org", topics=[f"{PEFT.query} | {PEFT.about}"], now=NOW)
    _embed(engine)
    picked = _digest_of(engine, settings, "s@example.org")
    (pick,) = [m for m in picked.matches if m.paper_id == paper]
    assert pick.meaning and pick.close_to == PEFT.about and pick.words == ()
    backend = MemoryBackend()
    deliver(engine, settings, backend, NOW)
    msg = email.message_from_bytes(backend.sent[0].data, policy=email.policy.default)
    html = msg.get_body(("html",)).get_content()  # type: ignore[union-attr]
    text = msg.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    assert "close to “Low-rank adaptation for parameter-efficient" in html
    # In bold: the abstract's sentence nearest the topic (its tokens' vectors from the
    # paper's one pass through the model, pooled), and none of the others.
    from newsletter.embed.encoder import shared_encoder
    from newsletter.embed.store import abstract_sentences, paper_text

    whole, offset = paper_text(title, abstract)
    spans = [(a + offset, b + offset) for a, b in abstract_sentences(whole[offset:])]
    encoder = shared_encoder()
    sentences = encoder.encode([whole], spans=[spans]).sentences[0]
    nearest = spans[int(np.argmax(sentences @ encoder.encode([PEFT.about]).vectors[0]))]
    bold = set(re.findall(r"<strong>(.*?)</strong>", html))
    assert whole[slice(*nearest)] in bold
    assert not bold & {whole[a:b] for a, b in spans if (a, b) != nearest}
    assert "close to “Low-rank adaptation" in text


def test_a_passing_mention_stays_out_and_a_main_subject_is_in(tmp_path: Path) -> None:
    engine, settings = _store(tmp_path, "mention.db")
    mention = _today(
        engine,
        "A Benchmark for Video Question Answering",
        "We evaluate twelve systems; one of them uses diffusion for data. Results "
        "show that reasoning over long videos remains hard.",
    )
    subject = _today(
        engine,
        "Diffusion Models Beat GANs on Image Synthesis",
        "We show diffusion models reach better image sample quality than GANs.",
    )
    subscribe(
        engine, email="d@example.org", topics=[f"{DIFFUSION.query} | {DIFFUSION.about}"], now=NOW
    )
    _embed(engine)
    picked = _digest_of(engine, settings, "d@example.org")
    shown = [m.paper_id for m in picked.matches]
    assert subject in shown and mention not in shown
    (pick,) = [m for m in picked.matches if m.paper_id == subject]
    assert "Diffusion" in pick.words and not pick.meaning


def test_the_dial_moves_the_line_one_way(tmp_path: Path) -> None:
    engine, _ = _store(tmp_path, "dial.db")
    topics = [
        DIFFUSION,
        PEFT,
        Topic("reasoning AND LLM", "Reasoning in large language models"),
        Topic("speech OR audio"),
        Topic('"reinforcement learning"'),
    ]
    ensure_topic_vectors(engine=engine, texts=[text_of(t) for t in topics])
    embed_papers(engine=engine)
    with db.session_scope(engine=engine) as session:
        papers = list(session.exec(select(Paper).order_by(Paper.first_seen_at, Paper.id)))
        scorer = day_scorer(session, papers=papers, now=NOW, topics=topics)
    for topic in topics:
        sizes, previous = [], set()
        for step in sorted(DIAL):
            chosen = {
                m.paper_id
                for m in scorer.pick([topic], within=None, limit=10**6, dial=step).matches
            }
            assert previous <= chosen, (topic, step)
            previous = chosen
            sizes.append(len(chosen))
        assert sizes[0] < sizes[-1], topic


def test_a_readers_stored_dial_moves_their_planned_digest(tmp_path: Path) -> None:
    """The dial as planning reads it from the subscriber: the same topic, three readers
    at "fewest, surest", the default and "more, broader", three nested digests."""
    from newsletter.models import Subscriber

    url = f"sqlite:///{tmp_path / 'dials.db'}"
    engine = db.make_engine(url)
    db.upgrade(engine=engine)
    ingest(engine=engine, paths=[CORPUS], now=NOW - timedelta(hours=1))  # today's papers
    topic = f"{DIFFUSION.query} | {DIFFUSION.about}"
    readers = {"sure@example.org": 1, "as@example.org": None, "broad@example.org": 5}
    for address, dial in readers.items():
        sid = subscribe(engine, email=address, topics=[topic], now=NOW)
        if dial is not None:  # None: the default a new reader gets
            with db.session_scope(engine=engine) as session:
                session.get(Subscriber, sid).dial = dial  # type: ignore[union-attr]
    _embed(engine)
    report = plan_digests(
        engine=engine, settings=make_settings(tmp_path, url), now=NOW, due_only=False
    )
    picked = {p.email: p.ranked for p in report.planned}
    sure, default, broad = (picked[a] for a in readers)
    assert sure.total < default.total < broad.total, (sure.total, default.total, broad.total)
    # The broader digest holds the surer one's best papers: the line moved, not the order.
    assert {m.paper_id for m in sure.matches[:5]} <= {m.paper_id for m in broad.matches}


def test_without_vectors_the_decision_falls_back_to_the_words(tmp_path: Path) -> None:
    """A paper whose vector is missing (the model was not installed) is judged on its
    words alone: still in when its title is the topic, no crash."""
    engine, settings = _store(tmp_path, "novectors.db")
    paper = _today(engine, "Diffusion for Everyone", "A diffusion model, explained.")
    subscribe(engine, email="n@example.org", topics=["diffusion"], now=NOW)
    picked = _digest_of(engine, settings, "n@example.org")  # nothing embedded at all
    assert paper in [m.paper_id for m in picked.matches]
    assert all(m.semantic is None for m in picked.matches)


def test_a_corrupt_vector_is_judged_on_words_then_computed_again(tmp_path: Path) -> None:
    """A vector that does not decode (a truncated blob) never stops planning: that paper
    is judged on its words, the others keep their meaning, and the next embedding pass
    computes it again."""
    from newsletter.models import PaperVector

    engine, settings = _store(tmp_path, "corrupt.db")
    broken = _today(engine, "Zorblax Diffusion for Everyone", "A zorblax diffusion model.")
    whole = _today(engine, "Zorblax Diffusion at Scale", "Scaling zorblax diffusion models.")
    subscribe(engine, email="c@example.org", topics=["zorblax | Diffusion models"], now=NOW)
    _embed(engine)
    with db.session_scope(engine=engine) as session:
        session.get(PaperVector, broken).vector = b"\x00\x3c" * 7  # type: ignore[union-attr]
    picked = _digest_of(engine, settings, "c@example.org")
    by_id = {m.paper_id: m for m in picked.matches}
    assert by_id[broken].semantic is None, "no meaning from a vector that does not decode"
    assert by_id[whole].semantic is not None
    assert embed_papers(engine=engine).embedded == 1
    with db.session_scope(engine=engine) as session:
        assert len(session.get(PaperVector, broken).vector) == 2 * 384  # type: ignore[union-attr, arg-type]


# --- the sentence about a topic, everywhere it enters -------------------------------------

LONG = "x" * 301


@pytest.mark.parametrize(
    ("topic", "field", "says"),
    [
        (f"diffusion | {LONG}", "about", "at most 300"),
        ("diffusion | \x07bell", "about", "control"),
        ("diffu\x1bsion | bell", "topic", "control"),
        ("diffusion\x1f | a bell", "topic", "control"),  # "\x1f" is a space to str.strip()
        ({"filter": "diffusion", "about": "a\x00bell"}, "about", "control"),
        ("diffusion | ab", "about", "too short"),
        ({"filter": "diffusion", "about": 3}, "topic", "filter"),
    ],
)
def test_a_bad_sentence_is_refused_naming_the_field(topic: object, field: str, says: str) -> None:
    with pytest.raises(SubscriberError) as info:
        validate_subscriber(email="a@example.org", topics=[topic], timezone="UTC", send_at="08:00")
    assert info.value.field == field and says in str(info.value)


def test_sentences_enter_by_cli_import_and_filters_test(tmp_path: Path) -> None:
    from tests.test_hardening import _cli

    _cli(tmp_path, "db", "upgrade")
    _cli(
        tmp_path,
        "subscribers",
        "add",
        "a@example.org",
        "-t",
        "LoRA",
        "--about",
        PEFT.about,
        "-t",
        "diffusion",
        "--dial",
        "4",
    )
    bad = _cli(
        tmp_path, "subscribers", "add", "b@example.org", "-t", "x", "--about", LONG, ok=False
    )
    assert bad.returncode == 1 and "about:" in bad.stderr and "300" in bad.stderr
    (tmp_path / "s.json").write_text(
        json.dumps(
            [
                {
                    "email": "c@example.org",
                    "topics": [{"filter": "speech", "about": "Speech recognition"}],
                },
                {"email": "d@example.org", "topics": ["audio | " + LONG]},
            ]
        )
    )
    imported = _cli(tmp_path, "subscribers", "import", "s.json", ok=False)
    assert "s.json:1: about:" in imported.stderr and "imported 1 subscribers" in imported.stdout
    listed = json.loads(_cli(tmp_path, "subscribers", "list", "--json").stdout)
    assert {s["email"]: s["topics"] for s in listed} == {
        "a@example.org": [f"LoRA | {PEFT.about}", "diffusion"],
        "c@example.org": ["speech | Speech recognition"],
    }
    refused = _cli(tmp_path, "filters", "test", "LoRA", "--about", LONG, ok=False)
    assert refused.returncode == 1 and "300" in refused.stderr


def test_filters_test_lists_the_digest_with_score_parts_and_the_line(tmp_path: Path) -> None:
    from tests.test_hardening import _cli

    _cli(tmp_path, "db", "upgrade", NEWSLETTER_CORPUS_DIR=str(CORPUS))
    _cli(tmp_path, "ingest", NEWSLETTER_CORPUS_DIR=str(CORPUS))
    shown = json.loads(
        _cli(
            tmp_path, "filters", "test", "LoRA OR adapter", "--about", PEFT.about, "--all", "--json"
        ).stdout
    )
    assert shown["about"] == PEFT.about and shown["dial"] == 3
    assert 0 < shown["included"] < shown["matched"]
    for paper in shown["papers"]:
        assert paper["score"] >= shown["threshold"] or paper["carried_by_meaning"]
        assert {"lexical", "semantic", "words"} <= set(paper)
    assert shown["below"] and all(p["score"] < shown["threshold"] for p in shown["below"])
    scores = [p["score"] for p in shown["below"]]
    assert scores == sorted(scores, reverse=True)
    text = _cli(tmp_path, "filters", "test", "LoRA OR adapter", "--all").stdout
    assert "make the digest at dial 3 (Balanced)" in text and "below the line" in text


def test_the_preference_centre_and_api_take_the_sentence_and_dial(tmp_path: Path) -> None:
    import httpx

    from newsletter.web import create_app
    from tests.helpers import live_server, runtime_for
    from tests.smtp_server import free_port

    port = free_port()
    settings = make_settings(
        tmp_path,
        f"sqlite:///{tmp_path / 'w.db'}",
        NEWSLETTER_ADMIN_TOKEN="a" * 40,
        NEWSLETTER_BASE_URL=f"http://127.0.0.1:{port}",
    )
    engine = db.make_engine(settings.database_url)
    db.upgrade(engine=engine)
    sid = subscribe(engine, email="w@example.org", topics=["diffusion"], now=NOW)
    auth = {"Authorization": "Bearer " + "a" * 40}
    links = runtime_for(settings, engine).links
    from newsletter.links import Recipient
    from newsletter.models import Subscriber

    with db.session_scope(engine=engine) as session:
        row = session.get(Subscriber, sid)
        prefs = links.preferences(who=Recipient(sid, row.token_salt))  # type: ignore[union-attr]
    with (
        live_server(create_app(runtime=runtime_for(settings, engine)), port) as url,
        httpx.Client(base_url=url) as client,
    ):
        page = client.get(httpx.URL(prefs).path)
        assert page.status_code == 200 and 'name="dial"' in page.text
        csrf = re.search(r'name="csrf" value="([^"]+)"', page.text).group(1)  # type: ignore[union-attr]
        form = {
            "csrf": csrf,
            "cadence": "daily",
            "timezone": "UTC",
            "send_at": "08:00",
            "action": "save",
        }
        bad = client.post(
            httpx.URL(prefs).path, data=form | {"topics": f"LoRA | {LONG}", "dial": "3"}
        )
        assert bad.status_code == 422 and "300" in bad.text
        good = client.post(
            httpx.URL(prefs).path,
            data=form | {"topics": f"LoRA | {PEFT.about}\ndiffusion", "dial": "5"},
        )
        assert good.status_code == 200 and "Saved." in good.text
        api = client.get(f"/api/subscribers/{sid}", headers=auth).json()
        assert api["dial"] == 5 and api["topics"] == [f"LoRA | {PEFT.about}", "diffusion"]
        assert api["ask_feedback"] is False, "an unticked box turns asking off"
        asked = client.post(
            httpx.URL(prefs).path, data=form | {"topics": "diffusion", "dial": "3", "ask": "on"}
        )
        assert 'name="ask" value="on" checked' in asked.text
        api = client.get(f"/api/subscribers/{sid}", headers=auth).json()
        assert api["ask_feedback"] is True
        off = client.patch(f"/api/subscribers/{sid}", headers=auth, json={"ask_feedback": False})
        assert off.status_code == 200 and off.json()["ask_feedback"] is False
        bad_ask = client.patch(f"/api/subscribers/{sid}", headers=auth, json={"ask_feedback": "no"})
        assert bad_ask.status_code == 422 and bad_ask.json()["field"] == "ask_feedback"
        patched = client.patch(
            f"/api/subscribers/{sid}",
            headers=auth,
            json={"topics": [{"filter": "speech", "about": LONG}]},
        )
        assert patched.status_code == 422 and patched.json()["field"] == "about"
        dial = client.patch(f"/api/subscribers/{sid}", headers=auth, json={"dial": 9})
        assert dial.status_code == 422 and dial.json()["field"] == "dial"


def test_near_the_line_is_counted_in_the_email_and_listed_in_the_archive(tmp_path: Path) -> None:
    import httpx

    from newsletter.web import create_app
    from tests.helpers import live_server, runtime_for
    from tests.smtp_server import free_port

    port = free_port()
    url_db = f"sqlite:///{tmp_path / 'near.db'}"
    engine = db.make_engine(url_db)
    db.upgrade(engine=engine)
    settings = make_settings(tmp_path, url_db, NEWSLETTER_BASE_URL=f"http://127.0.0.1:{port}")
    ingest(engine=engine, paths=[CORPUS], now=NOW - timedelta(days=3))
    _today(engine, "Diffusion Models for Images", "Diffusion models generate images.")
    subscribe(engine, email="l@example.org", topics=["diffusion"], now=NOW)
    _embed(engine)
    picked = _digest_of(engine, settings, "l@example.org")
    assert picked.near  # the corpus has papers that mention diffusion in passing
    backend = MemoryBackend()
    deliver(engine, settings, backend, NOW)
    msg = email.message_from_bytes(backend.sent[0].data, policy=email.policy.default)
    html = msg.get_body(("html",)).get_content()  # type: ignore[union-attr]
    # The two closest to the line are in the email, asking; the rest are counted.
    assert len(picked.unsure) == 2
    assert {m.paper_id for m in picked.unsure} <= {m.paper_id for m in picked.near}
    # ... and they are the least certain: the smallest distance to the line.
    with db.session_scope(engine=engine) as session:
        papers = list(session.exec(select(Paper).order_by(Paper.first_seen_at, Paper.id)))
        scorer = day_scorer(session, papers=papers, now=NOW, topics=[Topic("diffusion")])
    s, step = scorer.topic(Topic("diffusion")), DIAL[3]
    margin = {
        int(scorer.ranker.ids[i]): step.threshold - s.fused[i]
        if s.matched[i]
        else ALPHA * (step.enter - s.semantic[i])
        for i in range(len(papers))
    }
    by_margin = sorted((m.paper_id for m in picked.near), key=margin.__getitem__)
    assert [m.paper_id for m in picked.unsure] == by_margin[:2]
    assert html.count("Not sure this is for you — tell us with a vote") == len(picked.unsure) == 2
    rest = len(picked.near) - len(picked.unsure)
    assert f"and {rest} more that might interest you, just below the line" in html
    archive = re.search(r'href="(http://[^"]+/d/[^"]+)"', html).group(1)  # type: ignore[union-attr]
    # Every paper shown, and each asked about, carries both votes; opening them records
    # nothing (a mail scanner opens every link of a message).
    votes = [u for u in re.findall(r'href="([^"]+)"', html) if "/v/" in u]
    assert len(votes) == 2 * (len(picked.matches) + len(picked.unsure))
    with live_server(create_app(runtime=runtime_for(settings, engine)), port) as url:
        page = httpx.get(url + httpx.URL(archive).path)
        for link in votes:
            path = httpx.URL(html_unescape(link)).path
            assert httpx.get(url + path).status_code == httpx.head(url + path).status_code == 200
    with db.session_scope(engine=engine) as session:
        assert session.exec(select(Event).where(Event.kind == "feedback.vote")).all() == []
    assert page.status_code == 200 and "Just below the line" in page.text
    visible = html_unescape(re.sub(r"<[^>]+>", "", page.text))
    unsure = {m.paper_id for m in picked.unsure}
    with db.session_scope(engine=engine) as session:
        listed = [
            session.get(Paper, m.paper_id).title for m in picked.near if m.paper_id not in unsure
        ]  # type: ignore[union-attr]
    assert listed and all(paper_texts(t, "")[0] in visible for t in listed)

    # A reader who turned asking off gets no such papers.
    quiet = subscribe(engine, email="q@example.org", topics=["diffusion"], now=NOW)
    with db.session_scope(engine=engine) as session:
        row = session.get(Subscriber, quiet)
        row.ask_feedback = False  # type: ignore[union-attr]
        session.add(row)
    report = plan_digests(engine=engine, settings=settings, now=NOW, due_only=False,
                          dry_run=True, only_email="q@example.org")  # fmt: skip
    (theirs,) = report.planned
    assert theirs.ranked.near and not theirs.ranked.unsure
    assert '"unsure"' not in theirs.items

"""The batch renderer against its oracle: the reference renderer, byte for byte.

The reference renders every message through Jinja2 and MJML; the batch renderer fills
compiled, pre-encoded pieces. On the sample corpus (every paper, with the sample
subscribers' filters and the highlights planning gives them) and on random text, both
must give the same subject, headers, text and HTML, and MIME bytes that decode to them.
"""

from __future__ import annotations

import email
import email.policy
from dataclasses import replace
from datetime import UTC, date, datetime
from pathlib import Path

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlmodel import select

from newsletter import db
from newsletter.corpus.ingest import ingest
from newsletter.filters import DayIndex, Ranker, compile_filter
from newsletter.ledger.jobs import digest_papers, paper_text
from newsletter.models import Paper
from newsletter.relevance.day import paper_doc
from newsletter.render import (
    BatchRenderer,
    Digest,
    DigestPaper,
    RenderError,
    Sender,
    render_digest,
    to_mime_bytes,
)
from newsletter.render.compiled import TEMPLATES_DIR
from newsletter.render.content import clean
from newsletter.snapshot import Item
from tests.conftest import CORPUS

SENDER = Sender(address="papers@example.org", name="Paper Digest")
FILTERS = [
    '"large language models" reasoning',
    '"chain of thought"',
    "diffusion AND NOT video",
    '"image generation"',
    '"reinforcement learning" -"large language"',
    "quantiz* OR pruning",
    'org:"ZIP Lab"',
    "*",
    "upvotes>=5",
    "3D",
    "LoRA OR adapter",
    "title:agent*",
]


def digest(
    papers: tuple[DigestPaper, ...],
    *,
    more: int = 0,
    name: str | None = "Ada",
    votes: tuple[str, tuple[str, ...]] = ("", ()),
) -> Digest:
    return Digest(
        vote_start=votes[0],
        vote_ends=votes[1],
        to_address="ada@example.org",
        to_name=name,
        edition=date(2026, 11, 23),
        papers=papers,
        more_count=more,
        message_id="<20261123.1.abc@papers.example>",
        date=datetime(2026, 11, 23, 8, tzinfo=UTC),
        unsubscribe_url="https://papers.example/u/1-1.x",
        preferences_url="https://papers.example/p/1.x",
        archive_url="https://papers.example/d/1-1.x",
    )


def assert_same(batch: BatchRenderer, d: Digest) -> None:
    fast = batch.render(digest=d, sender=SENDER)
    plain = render_digest(digest=d, sender=SENDER)
    assert fast.subject == plain.subject
    assert fast.headers == plain.headers
    assert fast.text == plain.text
    assert fast.html == plain.html
    msg = email.message_from_bytes(to_mime_bytes(rendered=fast), policy=email.policy.default)
    text, html = (part.get_content().replace("\r\n", "\n") for part in msg.iter_parts())
    assert (text, html) == (plain.text, plain.html)


@pytest.fixture(scope="module")
def sample_digests(tmp_path_factory: pytest.TempPathFactory) -> list[Digest]:
    """One digest per sample filter, as planning ranks and highlights them, and one of
    every paper of the corpus (20 at a time)."""
    url = f"sqlite:///{tmp_path_factory.mktemp('corpus') / 'c.db'}"
    engine = db.make_engine(url)
    db.upgrade(engine=engine)
    ingest(engine=engine, paths=[CORPUS], now=datetime(2026, 11, 23, tzinfo=UTC))
    with db.session_scope(engine=engine) as session:
        papers = list(session.exec(select(Paper).order_by(Paper.id)))
    ranker = Ranker(DayIndex([paper_doc(p) for p in papers]))
    texts = {p.id: paper_text(p) for p in papers}
    shown = {p.id: p for p in papers}
    digests = []
    for i, query in enumerate(FILTERS):
        ranked = ranker.rank([compile_filter(query), compile_filter(FILTERS[i - 1])], limit=20)
        items = tuple(
            Item(
                m.paper_id,
                m.filters,
                m.words,
                shown[m.paper_id].upvotes,
                shown[m.paper_id].authors,
                shown[m.paper_id].organization,
                shown[m.paper_id].published_on,
            )
            for m in ranked.matches
        )
        votes = (
            f"https://papers.example/v/1-{i}.x",
            tuple(f"/{m.paper_id}" for m in ranked.matches),
        )
        digests.append(
            digest(digest_papers(items=items, texts=texts), more=ranked.more, votes=votes)
        )
    for start in range(0, len(papers), 20):
        chunk = papers[start : start + 20]
        items = tuple(
            Item(p.id, ("every paper",), (), p.upvotes, p.authors, p.organization, p.published_on)
            for p in chunk
        )
        digests.append(digest(digest_papers(items=items, texts=texts), name=None))
    db.make_engine(url).dispose()
    assert len(digests) > 40
    return digests


def test_batch_equals_reference_on_the_sample_corpus(sample_digests: list[Digest]) -> None:
    batch = BatchRenderer()
    for d in sample_digests:
        assert_same(batch, d)
    for d in sample_digests:  # again, from the caches
        assert_same(batch, d)


def test_batch_equals_reference_for_an_empty_digest() -> None:
    assert_same(BatchRenderer(), digest(()))


texts = st.text(st.characters(blacklist_categories=("Cs",)), max_size=300)
# Names reach the To header, which refuses control characters by design.
names = st.text(st.characters(blacklist_categories=("Cc", "Cs", "Zl", "Zp")), max_size=60)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    papers=st.lists(
        st.tuples(
            texts,
            texts,
            st.lists(texts, max_size=3),
            st.lists(texts, max_size=3),
            st.none() | st.integers(0, 10**6),
            st.none() | texts,
            st.none() | texts,
            st.none() | st.integers(0, 300),
            st.tuples(
                st.none() | st.from_regex(r"[0-9]{4}\.[0-9]{5}", fullmatch=True),
                st.none() | texts | st.just("https://github.com/o/r?a=1&b=<2>"),
                st.none() | texts | st.just("https://example.org/p?q=1&x=2"),
                st.lists(names, max_size=4),
                st.none() | texts,
                st.none() | st.integers(0, 50),
            ),
        ),
        max_size=8,
    ),
    more=st.integers(0, 3),
    near=st.integers(0, 3),
    name=st.none() | names,
    votes=st.tuples(
        st.sampled_from(
            [
                "",  # URLs that share nothing: each whole in its end
                "https://papers.example/v/1-2.x&<y>",  # escaped and encoded
                "https://papers.example/v/1-2.AbC_x-9",  # as ours are
                "http://papers.example:8080/news/v/" + "123456789012345678-" * 5 + "1.x",
            ]
        ),
        st.lists(
            st.sampled_from(["", "/3", "/<4>&", "https://a.example/v/9", "." * 80]), max_size=9
        ),
    ),
)
def test_batch_equals_reference_on_random_text(papers, more, near, name, votes) -> None:  # type: ignore[no-untyped-def]
    shown = tuple(
        DigestPaper(
            title=t,
            abstract=a,
            matched_topics=tuple(topics),
            matched_terms=tuple(terms),
            upvotes=upvotes,
            organization=org,
            close_to=close_to,
            # the nearest sentence is a piece of the abstract as displayed
            nearest=clean(a)[start or 0 : (start or 0) + 60] if start is not None else None,
            arxiv_id=arxiv_id,
            code_url=code,
            project_url=project,
            author_names=tuple(authors),
            summary=summary,
            authors=count,
            liked=close_to[::-1] if close_to else None,
            unsure=bool(upvotes and upvotes % 2),
        )
        for t, a, topics, terms, upvotes, org, close_to, start, more_fields in papers
        for arxiv_id, code, project, authors, summary, count in (more_fields,)
    )
    d = digest(shown, more=more, name=name, votes=(votes[0], tuple(votes[1])))
    assert_same(BatchRenderer(), replace(d, near_count=near))


@pytest.mark.parametrize(
    "expression",
    ["{{ brand|upper }}", "{{ brand|length }}", "{{ brand|truncate(3) }}", "{{ brand[0] }}"],
)
def test_compiling_refuses_what_it_cannot_fill(tmp_path: Path, expression: str) -> None:
    """An expression on a value would ship its placeholder, or a value computed from it,
    in every email: compiling fails loudly instead."""
    for name in ("_base.mjml.j2", "paper.html.j2", "digest.txt.j2"):
        (tmp_path / name).write_text((TEMPLATES_DIR / name).read_text())
    shell = (TEMPLATES_DIR / "digest.mjml.j2").read_text()
    (tmp_path / "digest.mjml.j2").write_text(shell.replace("{{ brand }}", expression, 1))
    with pytest.raises(RenderError, match=r"digest\.mjml\.j2"):
        BatchRenderer(templates_dir=tmp_path).render(digest=digest(()), sender=SENDER)


def test_the_renderer_owns_its_caches() -> None:
    """Two renderers share nothing: a fresh one starts empty, and bounded caches are its own."""
    one, two = BatchRenderer(), BatchRenderer()
    paper = DigestPaper(title="A", abstract="B", matched_topics=("x",))
    one.render(digest=digest((paper,)), sender=SENDER)
    assert one._papers and not two._papers
    assert isinstance(sa, object)  # the module imports the database layer for the fixture

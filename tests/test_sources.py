"""Sources and paper identity: every kind of source behind one contract, one paper
stored once whichever source told it, and links on every paper wherever it is shown.

The contract test writes the same papers in each source's format (a page dump, a
Daily Papers JSON answer, an arXiv Atom feed and an RSS feed) and holds every reader
to the same records, the same idempotence and the same kind of errors.
"""

from __future__ import annotations

import email
import email.policy
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from xml.sax.saxutils import escape as xml_escape

import httpx
import pytest
import sqlalchemy as sa
from sqlmodel import select

from newsletter import db
from newsletter.backends.file import FileBackend
from newsletter.corpus.ingest import ingest
from newsletter.corpus.records import PaperRecord, merge_records, split_arxiv_id
from newsletter.corpus.sources import parse_bytes
from newsletter.embed.encoder import MODEL_NAME
from newsletter.embed.store import embed_papers, paper_text, text_hash
from newsletter.errors import CorpusError
from newsletter.models import Event, Paper, PaperVector
from newsletter.paper_links import code_url, paper_links, safe_url
from newsletter.plan import plan_digests
from newsletter.render import Digest, DigestPaper, Sender
from newsletter.render.batch import BatchRenderer
from newsletter.render.budget import HTML_BUDGET
from newsletter.render.mime import to_mime_bytes
from newsletter.render.reference import render_digest
from newsletter.web import create_app
from tests.conftest import make_settings
from tests.helpers import add_paper, deliver, live_server, runtime_for, subscribe
from tests.smtp_server import free_port

ROOT = Path(__file__).resolve().parents[1]
CORPUS = ROOT / "corpus"
FIXTURES = ROOT / "tests" / "fixtures" / "sources"
TODAY = date(2026, 11, 29)
NOW = datetime(2026, 11, 29, 8, tzinfo=UTC)


# --- one contract over every source --------------------------------------------------


@dataclass(frozen=True)
class Sample:
    arxiv_id: str
    title: str
    abstract: str
    authors: tuple[str, ...]


SAMPLES = (
    Sample(
        "2611.30001",
        "Tokenizers & Their Discontents: <Byte> Pairs Revisited",
        "We revisit byte-pair encoding. It merges pairs; we show when that fails & why.",
        ("Ada Lovelace", "Zoë Ångström", "Li Wei", "Björn O'Neil"),
    ),
    Sample(
        "2611.30002",
        "Retrieval Heads in Long Context Models",
        "A few attention heads retrieve facts. Pruning the rest keeps accuracy.",
        ("Grace Hopper",),
    ),
)


def as_dump(samples: tuple[Sample, ...]) -> str:
    blocks = [
        f"{s.title}\n\n{s.abstract}\n\n• {len(s.authors)} authors\n·\nNov 27\n" for s in samples
    ]
    return "Daily Papers\n\nbyAK and the research community\n\nNov 28\n\n" + "\n".join(blocks)


def as_daily_papers(samples: tuple[Sample, ...]) -> str:
    items = [
        {
            "paper": {
                "id": s.arxiv_id,
                "title": s.title,
                "summary": s.abstract,
                "authors": [{"name": a} for a in s.authors],
                "publishedAt": "2026-11-27T10:00:00.000Z",
                "upvotes": 3,
            },
            "title": s.title,
        }
        for s in samples
    ]
    return json.dumps(items, indent=1)


def as_atom(samples: tuple[Sample, ...]) -> str:
    entries = "".join(
        f"""<entry><id>http://arxiv.org/abs/{s.arxiv_id}v1</id>
<published>2026-11-27T10:00:00Z</published><updated>2026-11-27T10:00:00Z</updated>
<title>{xml_escape(s.title)}</title><summary>{xml_escape(s.abstract)}</summary>
{"".join(f"<author><name>{xml_escape(a)}</name></author>" for a in s.authors)}
<arxiv:primary_category term="cs.CL"/><category term="cs.CL"/></entry>
"""
        for s in samples
    )
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        '<feed xmlns="http://www.w3.org/2005/Atom" xmlns:arxiv="http://arxiv.org/schemas/atom">'
        "<title>ArXiv Query</title><id>x</id><updated>2026-11-27T00:00:00Z</updated>\n"
        f"{entries}</feed>\n"
    )


def as_rss(samples: tuple[Sample, ...]) -> str:
    items = "".join(
        f"""<item><title>{xml_escape(s.title)}</title>
<link>https://arxiv.org/abs/{s.arxiv_id}</link>
<description>arXiv:{s.arxiv_id}v1 Announce Type: new
Abstract: {xml_escape(s.abstract)}</description>
<guid isPermaLink="false">oai:arXiv.org:{s.arxiv_id}v1</guid><category>cs.CL</category>
<pubDate>Fri, 27 Nov 2026 00:00:00 -0500</pubDate>
<dc:creator>{xml_escape(", ".join(s.authors))}</dc:creator></item>
"""
        for s in samples
    )
    return (
        "<?xml version='1.0' encoding='UTF-8'?>\n"
        '<rss xmlns:dc="http://purl.org/dc/elements/1.1/" version="2.0"><channel>'
        f"<title>cs.CL updates on arXiv.org</title><link>http://rss.arxiv.org/rss/cs.CL</link>\n{items}</channel></rss>\n"
    )


WRITERS: dict[str, tuple[str, Callable[[tuple[Sample, ...]], str], str]] = {
    "dump": ("dump", as_dump, ".txt"),
    "daily_papers": ("daily_papers", as_daily_papers, ".json"),
    "atom": ("arxiv", as_atom, ".atom"),
    "rss": ("arxiv", as_rss, ".rss"),
}


@pytest.mark.parametrize("form", list(WRITERS))
def test_every_source_reads_the_same_papers_out_of_equivalent_inputs(form: str) -> None:
    kind, write, _ = WRITERS[form]
    batch = parse_bytes(data=write(SAMPLES).encode(), source=f"s.{form}", today=TODAY)
    assert batch.kind == kind and batch.skipped == ()
    assert [(r.title, r.abstract) for r in batch.papers] == [(s.title, s.abstract) for s in SAMPLES]
    assert [r.authors for r in batch.papers] == [len(s.authors) for s in SAMPLES]
    if kind != "dump":  # the live sources name the authors and the paper
        assert [r.author_names for r in batch.papers] == [s.authors for s in SAMPLES]
        assert [(r.arxiv_id, r.source) for r in batch.papers] == [
            (s.arxiv_id, kind) for s in SAMPLES
        ]
    if kind == "arxiv":
        assert all(r.categories[0] == "cs.CL" for r in batch.papers)
    # Reading again gives the same records: parsing is pure.
    assert parse_bytes(data=write(SAMPLES).encode(), source=f"s.{form}", today=TODAY) == batch


@pytest.mark.parametrize("form", list(WRITERS))
def test_every_source_ingests_once_and_a_reread_changes_nothing(
    form: str, tmp_path: Path, engine: sa.Engine
) -> None:
    _, write, suffix = WRITERS[form]
    path = tmp_path / f"answer{suffix}"
    path.write_text(write(SAMPLES))
    first = ingest(engine=engine, paths=[tmp_path], now=NOW).files
    assert [(f.status, f.new_papers) for f in first] == [("new", 2)]
    again = ingest(engine=engine, paths=[tmp_path], now=NOW + timedelta(hours=1)).files
    assert [(f.status, f.new_papers) for f in again] == [("unchanged", 0)]
    # The same file under another name: read whole, nothing new, nothing changed.
    (tmp_path / f"copy{suffix}").write_text(write(SAMPLES))
    copy = ingest(engine=engine, paths=[tmp_path / f"copy{suffix}"], now=NOW).files
    assert [(f.status, f.new_papers, f.updated_papers) for f in copy] == [("new", 0, 0)]
    with db.session_scope(engine=engine) as session:
        assert len(list(session.exec(select(Paper)))) == 2


@pytest.mark.parametrize("form", list(WRITERS))
def test_every_source_refuses_a_truncated_file_with_its_line(form: str) -> None:
    _, write, _ = WRITERS[form]
    text = write(SAMPLES)
    cut = text[: len(text) * 2 // 3]
    with pytest.raises(CorpusError) as caught:
        parse_bytes(data=cut.encode(), source=f"cut.{form}", today=TODAY)
    assert caught.value.path == f"cut.{form}"
    assert 1 <= caught.value.line <= cut.count("\n") + 1
    assert "truncated" in caught.value.message


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"error": "Invalid date"}', "not a Daily Papers list: Invalid date"),
        ("[1, 2", "not valid JSON"),
        ('<?xml version="1.0"?><html><body>Oops</body></html>', "neither an Atom nor an RSS"),
        (
            '<feed xmlns="http://www.w3.org/2005/Atom"><entry>'
            "<id>http://arxiv.org/api/errors#incorrect_id_format_for_1234</id>"
            "<title>Error</title><summary>incorrect id format for 1234</summary></entry></feed>",
            "arXiv answered an error: incorrect id format for 1234",
        ),
    ],
)
def test_answers_that_are_not_papers_are_refused_whole(text: str, message: str) -> None:
    with pytest.raises(CorpusError, match=re.escape(message)):
        parse_bytes(data=text.encode(), source="answer", today=TODAY)


def test_a_kind_that_was_asked_for_must_be_what_came() -> None:
    page = b"<!DOCTYPE html><html><body>Service Unavailable</body></html>"
    with pytest.raises(CorpusError, match="expected daily papers content"):
        parse_bytes(data=page, source="https://hf.example/api", today=TODAY, kind="daily_papers")


def test_one_bad_item_is_named_and_the_rest_go_in() -> None:
    batch = parse_bytes(
        data=(FIXTURES / "daily_papers_2026-11-27.json").read_bytes(), source="dp", today=TODAY
    )
    assert batch.skipped == ("item 6: no title", "item 7: not an object")
    assert len(batch.papers) == 5
    assert parse_bytes(data=b"[]\n", source="empty", today=TODAY).papers == []


def test_a_malformed_item_of_any_shape_is_named_and_the_rest_go_in() -> None:
    """Fields of shapes the parsers' checks were not written around (a mapping where a
    list was, a list where text was, a category with no term) raised out of the whole
    run: now tolerated, or the item is skipped with what and where."""
    items = json.loads(as_daily_papers(SAMPLES))
    items[0]["paper"]["authors"] = {"name": "B"}  # tolerated: no author names
    items[1]["paper"]["summary"] = ["an", "abstract", "in", "a", "list"]
    daily = parse_bytes(data=json.dumps(items).encode(), source="dp", today=TODAY)
    assert [r.arxiv_id for r in daily.papers] == [SAMPLES[0].arxiv_id]
    assert daily.papers[0].author_names == ()
    assert daily.skipped == (f"item 2: no abstract ({SAMPLES[1].title!r})",)

    atom = as_atom(SAMPLES).replace(
        '<arxiv:primary_category term="cs.CL"/>',
        "<arxiv:primary_category>cs.LG</arxiv:primary_category>",
        1,
    )
    feed = parse_bytes(data=atom.encode(), source="feed", today=TODAY)
    assert [r.arxiv_id for r in feed.papers] == [s.arxiv_id for s in SAMPLES]
    assert feed.papers[0].categories == ("cs.CL",)  # the <category> tag still says


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[" + "9" * 5000 + "]", "not readable JSON: Exceeds the limit (4300 digits)"),
        ("[" * 200_000, "not readable JSON: malformed (RecursionError"),
    ],
)
def test_json_python_cannot_hold_refuses_that_file_and_the_others_go_in(
    tmp_path: Path, engine: sa.Engine, text: str, message: str
) -> None:
    (tmp_path / "a.json").write_text(text)
    (tmp_path / "b.json").write_text(as_daily_papers(SAMPLES))
    files = ingest(engine=engine, paths=[tmp_path], now=NOW).files
    assert [(Path(f.path).name, f.status) for f in files] == [
        ("a.json", "error"),
        ("b.json", "new"),
    ]
    assert message in str(files[0].error) and files[1].new_papers == 2


def test_a_paper_too_long_for_the_database_is_skipped_and_its_file_goes_in(
    tmp_path: Path, engine: sa.Engine
) -> None:
    """A 651-character title is within what a source may send (1,000) but its key is
    over the column's 512: that paper is left out and named, not its whole day."""
    long = Sample("2611.30009", "Scaling " * 81 + "Laws", "An abstract.", ("A. Author",))
    (tmp_path / "day.json").write_text(as_daily_papers((*SAMPLES, long)))
    (result,) = ingest(engine=engine, paths=[tmp_path], now=NOW).files
    assert result.status == "new" and result.new_papers == 2
    assert result.skipped == ("item 3: the paper's key is longer than 512 characters",)
    with db.session_scope(engine=engine) as session:
        assert sorted(session.exec(select(Paper.arxiv_id))) == [s.arxiv_id for s in SAMPLES]


def test_a_second_paper_under_a_long_title_gets_a_key_that_fits(
    tmp_path: Path, engine: sa.Engine
) -> None:
    """Two ids, one title: the second's key is the title's with its id, cut to fit."""
    title = "Long " * 101 + "Title"  # a key of 510 characters: fits alone, not with an id
    twins = (
        Sample("2611.30011", title, "One.", ("A",)),
        Sample("2611.30012", title, "Two.", ("B",)),
    )
    (tmp_path / "a.json").write_text(as_daily_papers(twins[:1]))
    (tmp_path / "b.json").write_text(as_daily_papers(twins[1:]))
    files = ingest(engine=engine, paths=[tmp_path], now=NOW).files
    assert [f.new_papers for f in files] == [1, 1]
    with db.session_scope(engine=engine) as session:
        keys = sorted(session.exec(select(Paper.key)), key=len)
    assert [len(k) for k in keys] == [510, 512] and keys[1].endswith(" 2611.30012")


def test_files_are_recognised_by_content_not_by_name(tmp_path: Path, engine: sa.Engine) -> None:
    (tmp_path / "a.txt").write_text(as_daily_papers(SAMPLES[:1]))  # JSON saved as .txt
    (tmp_path / "b.xml").write_text(as_rss(SAMPLES[1:]))
    (tmp_path / "notes.md").write_text("not a corpus file")
    files = ingest(engine=engine, paths=[tmp_path], now=NOW).files
    assert [(Path(f.path).name, f.kind, f.new_papers) for f in files] == [
        ("a.txt", "daily_papers", 1),
        ("b.xml", "arxiv", 1),
    ]


# --- what the fixtures hold --------------------------------------------------------------


def test_the_daily_papers_answer_gives_ids_names_links_and_summaries() -> None:
    batch = parse_bytes(
        data=(FIXTURES / "daily_papers_2026-11-27.json").read_bytes(), source="dp", today=TODAY
    )
    by_id = {r.arxiv_id: r for r in batch.papers}
    tokenformer = by_id["2410.23168"]
    assert tokenformer.author_names[:2] == ("Haiyang Wang", "Yue Fan")
    assert tokenformer.authors == 8
    assert tokenformer.organization == "Max Planck Institute for Informatics"
    assert tokenformer.organization_handle == "mpi-inf"
    assert tokenformer.code_url == "https://github.com/Haiyang-W/TokenFormer"
    assert tokenformer.keywords[0] == "Transformer"
    assert tokenformer.summary is not None and tokenformer.summary.startswith("TokenFormer")
    # ai_summary and githubRepo on the outer item; a bare "owner/repo"
    assert by_id["2408.03314"].summary is not None
    assert by_id["2305.17333"].code_url == "https://github.com/princeton-nlp/MeZO"
    assert by_id["2305.17333"].project_url == "https://princeton-nlp.github.io/mezo/"
    # a version in the id, a title broken over lines
    heads = by_id["2611.20417"]
    assert (heads.arxiv_version, heads.title) == (
        1,
        "Sparse Retrieval Heads for Long-Context Language Models",
    )
    # what cannot be a link is dropped, not shown
    hostile = by_id["2611.20999"]
    assert hostile.code_url is None and hostile.project_url is None


def test_arxiv_feeds_give_ids_versions_categories_and_code_from_comments() -> None:
    atom = parse_bytes(
        data=(FIXTURES / "arxiv_query_cs.CL.atom").read_bytes(), source="atom", today=TODAY
    )
    mezo = atom.papers[0]
    assert (mezo.arxiv_id, mezo.arxiv_version, mezo.categories) == (
        "2305.17333",
        3,
        ("cs.LG", "cs.CL"),
    )
    assert mezo.code_url == "https://github.com/princeton-nlp/MeZO"  # from arxiv:comment
    assert mezo.published_on == date(2023, 5, 27)
    rss = parse_bytes(data=(FIXTURES / "arxiv_cs.CL.rss").read_bytes(), source="rss", today=TODAY)
    first = rss.papers[0]
    assert first.author_names == ("María José García", "Tom Smith")  # LaTeX accents resolved
    assert first.abstract.startswith("Tokenizers trained")  # the announcement prefix is gone
    assert rss.papers[1].author_names == ("Ngozi Adichie", "Hiroshi Tanaka", "Sofia Rossi")
    assert rss.papers[3].categories == ("eess.AS", "cs.CL")
    assert (rss.papers[2].arxiv_id, rss.papers[2].arxiv_version) == ("2611.20417", 3)


def test_the_old_rss_layout_is_read_too() -> None:
    old = (
        '<?xml version="1.0"?><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#"'
        ' xmlns="http://purl.org/rss/1.0/" xmlns:dc="http://purl.org/dc/elements/1.1/">'
        '<channel rdf:about="http://arxiv.org/rss/cs.CL"><title>cs.CL updates</title></channel>'
        '<item rdf:about="http://arxiv.org/abs/2401.01234">'
        "<title>Old Layout Paper. (arXiv:2401.01234v2 [cs.CL] UPDATED)</title>"
        "<link>http://arxiv.org/abs/2401.01234</link>"
        "<description>&lt;p&gt;An abstract in HTML &amp;amp; entities.&lt;/p&gt;</description>"
        '<dc:creator>&lt;a href="http://arxiv.org/find/cs/1/au:+A_B/0/1/0/all/0/1"&gt;Ann B'
        '&lt;/a&gt;, &lt;a href="x"&gt;Cy D&lt;/a&gt;</dc:creator></item></rdf:RDF>'
    )
    (paper,) = parse_bytes(data=old.encode(), source="old.rss", today=TODAY).papers
    assert (paper.title, paper.arxiv_id, paper.arxiv_version) == (
        "Old Layout Paper",
        "2401.01234",
        2,
    )
    assert paper.abstract == "An abstract in HTML & entities."
    assert paper.author_names == ("Ann B", "Cy D")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2405.12345", ("2405.12345", None)),
        ("2405.12345v2", ("2405.12345", 2)),
        ("arXiv:2405.12345v10", ("2405.12345", 10)),
        ("hep-th/9901001v1", ("hep-th/9901001", 1)),
        ("math.GT/0309136", ("math.GT/0309136", None)),
        ("2405.123", None),
        ("../etc/passwd", None),
        ("2405.12345 ", ("2405.12345", None)),
    ],
)
def test_arxiv_ids_and_versions(text: str, expected: tuple[str, int | None] | None) -> None:
    assert split_arxiv_id(text) == expected


# --- one paper, stored once ----------------------------------------------------------------


def _papers(engine: sa.Engine) -> list[Paper]:
    with db.session_scope(engine=engine) as session:
        return list(session.exec(select(Paper).order_by(Paper.id)))


def test_a_dump_paper_seen_later_with_an_id_gets_the_id_not_a_second_row(
    engine: sa.Engine, tmp_path: Path
) -> None:
    ingest(engine=engine, paths=[CORPUS], now=NOW - timedelta(days=6))
    assert len(_papers(engine)) == 575
    report = ingest(engine=engine, paths=[FIXTURES / "daily_papers_2026-11-27.json"], now=NOW)
    (result,) = report.files
    # Three of its five papers are in the sample dumps: they learn their ids.
    assert (result.new_papers, result.updated_papers) == (2, 3)
    papers = _papers(engine)
    assert len(papers) == 577
    tokenformer = next(p for p in papers if p.arxiv_id == "2410.23168")
    assert tokenformer.source_file.startswith(str(CORPUS))  # the dump's row, kept
    assert tokenformer.sources == "dump daily_papers"
    assert json.loads(tokenformer.author_names or "[]")[0] == "Haiyang Wang"
    assert tokenformer.authors == 8 and tokenformer.upvotes == 24
    # The dumps seen again (copied elsewhere) after the API never blank what it gave.
    for path in sorted(CORPUS.glob("*.txt")):
        (tmp_path / path.name).write_bytes(path.read_bytes())
    later = ingest(engine=engine, paths=[tmp_path], now=NOW + timedelta(days=1))
    assert later.new_papers == 0
    again = next(p for p in _papers(engine) if p.arxiv_id == "2410.23168")
    assert (again.author_names, again.code_url, again.summary) == (
        tokenformer.author_names,
        tokenformer.code_url,
        tokenformer.summary,
    )


def test_a_new_version_updates_the_paper_and_is_noted(engine: sa.Engine, tmp_path: Path) -> None:
    v1 = Sample("2611.40001", "A First Title", "The first abstract.", ("Ann",))
    v2 = Sample("2611.40001", "A Better Title", "The second abstract, longer.", ("Ann", "Bo"))
    (tmp_path / "1.atom").write_text(as_atom((v1,)))
    ingest(engine=engine, paths=[tmp_path / "1.atom"], now=NOW)
    assert embed_papers(engine=engine, every_text=False).embedded == 1
    (tmp_path / "2.atom").write_text(as_atom((v2,)).replace("v1</id>", "v2</id>"))
    (result,) = ingest(engine=engine, paths=[tmp_path / "2.atom"], now=NOW).files
    assert (result.new_papers, result.updated_papers) == (0, 1)
    (paper,) = _papers(engine)
    assert (paper.title, paper.abstract, paper.arxiv_version) == (v2.title, v2.abstract, 2)
    # Its vector was of the old text: dropped, so the next run that reads only papers
    # without one embeds the new text, though this ingest's clock is older than it.
    again = embed_papers(engine=engine, every_text=False)
    assert again.embedded == 1
    with db.session_scope(engine=engine) as session:
        stored = session.get(PaperVector, paper.id)
        want = text_hash(MODEL_NAME, paper_text(v2.title, v2.abstract)[0])
        assert stored is not None and stored.text_hash == want
    assert paper.key == "a better title"
    with db.session_scope(engine=engine) as session:
        (event,) = session.exec(select(Event).where(Event.kind == "ingest.paper_revised"))
    assert json.loads(event.detail) == {
        "paper_id": paper.id,
        "arxiv_id": "2611.40001",
        "from": 1,
        "to": 2,
        "title_changed": True,
    }
    # An older version seen afterwards changes nothing.
    (tmp_path / "0.atom").write_text(as_atom((v1,)))
    (late,) = ingest(engine=engine, paths=[tmp_path / "0.atom"], now=NOW).files
    assert late.updated_papers == 0
    assert _papers(engine)[0].title == v2.title


def test_every_fixture_source_together_stores_each_paper_once(engine: sa.Engine) -> None:
    ingest(engine=engine, paths=[CORPUS], now=NOW - timedelta(days=6))
    report = ingest(engine=engine, paths=[FIXTURES], now=NOW)
    per_file = {Path(f.path).name: (f.kind, f.papers, f.new_papers) for f in report.files}
    assert per_file == {
        "arxiv_cs.CL.rss": ("arxiv", 4, 4),
        "arxiv_query_cs.CL.atom": ("arxiv", 4, 0),  # two dump papers, two of the RSS's
        "daily_papers_2026-11-27.json": ("daily_papers", 5, 1),
        "daily_papers_empty.json": ("daily_papers", 0, 0),
    }
    papers = _papers(engine)
    assert len(papers) == 575 + 5
    ids = [p.arxiv_id for p in papers if p.arxiv_id]
    assert len(ids) == len(set(ids)) == 9  # four dump papers learned theirs
    heads = next(p for p in papers if p.arxiv_id == "2611.20417")
    assert heads.arxiv_version == 3 and heads.sources == "arxiv daily_papers"
    assert heads.code_url == "https://github.com/example-lab/sparse-heads"  # from the API


def test_two_papers_with_one_title_and_two_ids_stay_two() -> None:
    a = PaperRecord(title="Attention", abstract="a", line=1, arxiv_id="2611.00001")
    b = PaperRecord(title="Attention", abstract="b", line=2, arxiv_id="2611.00002")
    c = PaperRecord(title="Attention", abstract="c", line=3)  # a dump's: the first
    merged = merge_records([a, b, c])
    assert sorted(merged) == ["arxiv:2611.00001", "arxiv:2611.00002"]


def test_the_migration_keeps_the_sample_papers(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'old.db'}"
    engine = db.make_engine(url)
    db.upgrade(engine=engine, revision="0007")
    with engine.begin() as conn:  # papers as 0007 stored them
        for i in range(575):
            conn.execute(
                sa.text(
                    "INSERT INTO papers (key, title, abstract, source_file, first_seen_at,"
                    " updated_at) VALUES (:k, :t, 'x', 'dump.txt', '2026-11-01 00:00:00',"
                    " '2026-11-01 00:00:00')"
                ),
                {"k": f"paper {i}", "t": f"Paper {i}"},
            )
    db.upgrade(engine=engine)
    papers = _papers(engine)
    assert len(papers) == 575
    assert {p.sources for p in papers} == {"dump"} and {p.arxiv_id for p in papers} == {None}


# --- links --------------------------------------------------------------------------------


def test_links_for_papers_with_and_without_an_id() -> None:
    known = paper_links(title="X", arxiv_id="2405.12345", code="o/r", project="https://p.org/")
    assert (known.page, known.pdf, known.code, known.project) == (
        "https://arxiv.org/abs/2405.12345",
        "https://arxiv.org/pdf/2405.12345",
        "https://github.com/o/r",
        "https://p.org/",
    )
    unknown = paper_links(title='Attention & "Tricks"?', arxiv_id=None)
    assert unknown.page == (
        "https://arxiv.org/search/?query=Attention+%26+%22Tricks%22%3F&searchtype=title"
    )
    assert unknown.pdf is None
    for bad in ("javascript:alert(1)", "https://x.org/a b", 'https://x.org/"', "http://x\n.org",
                "https://x.org/a\\b", "gitlab.com/owner"):  # fmt: skip
        assert safe_url(bad) is None and code_url(bad) is None
    # How sources name code: a bare owner/repo is GitHub's (an owner has no dot, so a
    # host without a scheme is not one); a URL into a repository links to it.
    for named, link in (("o/r.js", "https://github.com/o/r.js"),
                        ("github.com/o/r/tree/main", "https://github.com/o/r"),
                        ("HTTPS://GitHub.com/o/r.git", "https://github.com/o/r"),
                        ("HTTPS://example.org/p", "https://example.org/p")):  # fmt: skip
        assert code_url(named) == link, named


def _digest(papers: tuple[DigestPaper, ...]) -> Digest:
    return Digest(
        to_address="ann@example.org",
        to_name="Ann",
        edition=TODAY,
        papers=papers,
        more_count=0,
        message_id="<1@example.org>",
        date=NOW,
        unsubscribe_url="https://n.example/u/t",
        preferences_url="https://n.example/p/t",
        archive_url="https://n.example/d/t",
    )


HOSTILE = DigestPaper(
    title='<script>alert(1)</script> & "Quoted"',
    abstract="An abstract with <tags> & ampersands.",
    arxiv_id="2611.20999",
    code_url="https://github.com/o/r?a=1&b=2",
    project_url="javascript:alert(1)",
    author_names=("Ada <b>Lovelace</b>", "Bo", "Cy", "Di"),
    authors=15,
    summary="A <i>summary</i> & more",
    matched_topics=("tags",),
    matched_terms=("tags",),
)
PLAIN = DigestPaper(title="Attention & Tricks?", abstract="No id here.", matched_topics=("x",))


def _parts(rendered) -> tuple[str, str]:  # type: ignore[no-untyped-def]
    msg = email.message_from_bytes(to_mime_bytes(rendered=rendered), policy=email.policy.default)
    html = msg.get_body(("html",)).get_content()  # type: ignore[union-attr]
    text = msg.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    return html, text.replace("\r\n", "\n")


def test_links_are_in_both_parts_escaped(tmp_path: Path) -> None:
    rendered = render_digest(digest=_digest((HOSTILE, PLAIN)), sender=Sender("p@example.org"))
    html, text = _parts(rendered)
    # HTML: the title links to the paper; every link is escaped; no markup from data.
    assert '<a href="https://arxiv.org/abs/2611.20999" style="color:#1a1a1a' in html
    assert 'href="https://github.com/o/r?a=1&amp;b=2"' in html
    assert 'href="https://arxiv.org/pdf/2611.20999"' in html
    assert "javascript:" not in html and "<script>" not in html and "<b>" not in html
    assert "Ada &lt;b&gt;Lovelace&lt;/b&gt;, Bo, Cy and 12 more" in html
    assert "AI summary (Hugging Face): A &lt;i&gt;summary&lt;/i&gt; &amp; more" in html
    assert (
        'href="https://arxiv.org/search/?query=Attention+%26+Tricks%3F&amp;searchtype=title"'
        in html
    )
    # Text: each URL whole on its own line.
    assert "    arXiv: https://arxiv.org/abs/2611.20999\n" in text
    assert "    PDF: https://arxiv.org/pdf/2611.20999\n" in text
    assert "    Code: https://github.com/o/r?a=1&b=2\n" in text
    assert "Project page" not in text
    assert (
        "    Find on arXiv: https://arxiv.org/search/?query=Attention+%26+Tricks%3F&searchtype=title\n"
        in text
    )
    # The batch renderer says exactly the same.
    fast = BatchRenderer().render(digest=_digest((HOSTILE, PLAIN)), sender=Sender("p@example.org"))
    assert (fast.text, fast.html) == (rendered.text, rendered.html)


def test_the_largest_digest_with_every_link_stays_under_the_budget() -> None:
    long_abstract = "Words of a long abstract, " * 80
    paper = DigestPaper(
        title="A Rather Long Title About Many Things " * 6,
        abstract=long_abstract,
        arxiv_id="2611.12345",
        code_url="https://github.com/" + "o" * 39 + "/" + "r" * 90,
        project_url="https://example.org/" + "p" * 200,
        author_names=("A Long Author Name " * 3,) * 3,
        authors=400,
        summary="A summary of the paper. " * 30,
        organization="An Organisation With A Long Name",
        upvotes=999,
        published_on=TODAY,
        matched_topics=tuple(f"topic number {i} with words" for i in range(20)),
        matched_terms=("words",),
    )
    papers = tuple(
        DigestPaper(
            **{**{f: getattr(paper, f) for f in paper.__slots__}, "title": f"{i} {paper.title}"}
        )  # type: ignore[arg-type]
        for i in range(50)
    )
    rendered = BatchRenderer().render(digest=_digest(papers), sender=Sender("p@example.org"))
    size = len(rendered.html.encode())
    assert size <= HTML_BUDGET
    html, _ = _parts(rendered)
    assert "https://n.example/u/t" in html  # the unsubscribe link is above the clip
    print(f"largest digest: {size:,} bytes of HTML")


def test_the_archive_page_and_the_sent_email_link_every_paper(
    tmp_path: Path, database_url: str
) -> None:
    port = free_port()
    settings = make_settings(tmp_path, database_url, NEWSLETTER_BASE_URL=f"http://127.0.0.1:{port}")
    engine = db.make_engine(database_url)
    seen = NOW - timedelta(hours=2)
    add_paper(
        engine,
        title="Diffusion & <Friends>",
        abstract="About diffusion.",
        seen=seen,
        arxiv_id="2611.50001",
        code_url="https://github.com/o/diffusion",
        author_names=json.dumps(["Ann", "Bo", "Cy", "Di", "Ed"]),
        authors=5,
    )
    add_paper(engine, title="Diffusion Without An Id", abstract="More diffusion.", seen=seen)
    subscribe(engine, email="ann@example.org", topics=["diffusion"], now=NOW)
    plan_digests(engine=engine, settings=settings, now=NOW, due_only=False)
    deliver(engine, settings, FileBackend(directory=settings.outbox_dir), NOW)
    (path,) = settings.outbox_dir.rglob("*.eml")
    msg = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
    html = msg.get_body(("html",)).get_content()  # type: ignore[union-attr]
    text = msg.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    assert 'href="https://arxiv.org/abs/2611.50001"' in html
    assert 'href="https://github.com/o/diffusion"' in html
    assert "Ann, Bo, Cy and 2 more" in html
    assert "Diffusion &amp; &lt;Friends&gt;" in html
    assert "https://arxiv.org/search/?query=Diffusion+Without+An+Id&amp;searchtype=title" in html
    assert "    Code: https://github.com/o/diffusion" in text
    archive = re.search(r'href="(http://127\.0\.0\.1:\d+/d/[^"]+)"[^>]*>View in browser', html)
    assert archive is not None
    with (
        live_server(create_app(runtime=runtime_for(settings, engine)), port),
        httpx.Client(timeout=10) as client,
    ):
        page = client.get(archive[1])
    assert page.status_code == 200
    assert 'href="https://arxiv.org/abs/2611.50001"' in page.text
    assert 'href="https://arxiv.org/pdf/2611.50001"' in page.text
    assert "Diffusion &amp; &lt;Friends&gt;" in page.text and "<Friends>" not in page.text

"""Tests for newsletter.corpus.sources.dump: page dumps in, paper records out (pure, fast)."""

from __future__ import annotations

import random
import re
import string
import time
from datetime import date
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from newsletter.corpus.sources.dump import (
    CHROME_LINES,
    PaperRecord,
    decode_dump,
    parse_dump,
    read_dump,
)
from newsletter.errors import CorpusError
from tests.conftest import CORPUS

TODAY = date(2026, 11, 23)

DUMP_000 = CORPUS / "000_05270f6385c78613.txt"
DUMP_001 = CORPUS / "001_65a2df4d0a4476fd.txt"
DUMP_002 = CORPUS / "002_389e569612dc7532.txt"
DUMP_003 = CORPUS / "003_6fc681181da1d337.txt"
DUMP_004 = CORPUS / "004_7e02fe72d21e8bd5.txt"
ALL_DUMPS = [DUMP_000, DUMP_001, DUMP_002, DUMP_003, DUMP_004]


def parse(text: str, *, today: date = TODAY) -> list[PaperRecord]:
    return parse_dump(text=text, source="dump.txt", today=today).papers


def parse_error(path: Path) -> CorpusError:
    """The CorpusError reading ``path`` raises; checks it names the file and line first."""
    with pytest.raises(CorpusError) as info:
        read_dump(path=path, today=TODAY)
    err = info.value
    assert str(err).startswith(f"{path}:{err.line}:")
    assert err.path == str(path)
    return err


def line_of(text: str, needle: str, *, last: bool = False) -> int:
    """1-based number of the first (or last) line that equals ``needle`` once stripped."""
    numbers = [i for i, line in enumerate(text.splitlines(), 1) if line.strip() == needle]
    return numbers[-1] if last else numbers[0]


# --- the three layouts --------------------------------------------------------------------

BLANK_SEPARATED = """\
new

Get trending papers in your email inbox!

Subscribe

byAK and the research community

Mar 12

Are We Falling in a Middle-Intelligence Trap? An Analysis and Mitigation of the Reversal Curse

Recent studies have highlighted a phenomenon in large language models (LLMs) known as \
"the reversal curse". We propose BICO.

Poincaré ResNet

This paper introduces an end-to-end residual network that operates entirely on the \
Poincar\\'e ball model of hyperbolic space. Code: https://github.com/maxvanspengler/poincare-resnet
"""

WITH_METADATA = """\
new

Get trending papers in your email inbox!

Subscribe

Daily Papers

byAK and the research community

Dec 31

Calibrating Reasoning in Language Models with Internal Consistency

Large language models (LLMs) have demonstrated impressive capabilities in various reasoning tasks.

  • 4 authors
·
May 28, 2024

Beyond Degradation Conditions: All-in-One Image Restoration via HOG Transformers

All-in-one image restoration aims to address diverse degradations within a unified framework.

  • 1 author
·
Apr 12

ZPressor: Bottleneck-Aware Compression for Scalable Feed-Forward 3DGS

Feed-forward 3D Gaussian Splatting (3DGS) models have recently emerged as a promising solution.

ziplab ZIP Lab
·
May 29 5

One-2-3-45: Any Single Image to 3D Mesh in 45 Seconds without Per-Shape Optimization

Single image 3D reconstruction is an important but challenging task.

  • 7 authors
·
Jun 29, 2023 7

Bottom-up Policy Optimization: Your Language Model Policy Secretly Contains Internal Policies

Existing reinforcement learning (RL) approaches treat large language models as a single policy.
"""

NO_BLANK_LINES = """\
Get trending papers in your email inbox once a day!
Get trending papers in your email inbox!
SubscribeUnderstanding Self-Predictive Learning for Reinforcement Learning
We study the learning dynamics of self-predictive learning for reinforcement learning.
Self Expanding Convolutional Neural Networks
In this paper, we present a novel method for dynamically expanding CNNs during training!
"""


def test_blank_separated_pairs_give_title_abstract_line_and_page_date() -> None:
    papers = parse(BLANK_SEPARATED)

    assert [(p.title, p.line) for p in papers] == [
        (
            "Are We Falling in a Middle-Intelligence Trap? An Analysis and Mitigation"
            " of the Reversal Curse",
            11,
        ),
        ("Poincaré ResNet", 15),
    ]
    assert papers[0].abstract.startswith("Recent studies have highlighted")
    assert papers[0].abstract.endswith("We propose BICO.")
    assert "Poincar\\'e ball" in papers[1].abstract
    assert papers[1].abstract.endswith("poincare-resnet")
    for p in papers:
        assert p.page_date == date(2026, 3, 12)
        assert (p.authors, p.organization, p.organization_handle) == (None, None, None)
        assert (p.published_on, p.upvotes) == (None, None)


def test_metadata_blocks_give_authors_organization_dates_and_upvotes() -> None:
    papers = parse(WITH_METADATA)

    got = [
        (
            p.line,
            p.title.split(":")[0],
            p.authors,
            p.organization,
            p.organization_handle,
            p.published_on,
            p.upvotes,
        )
        for p in papers
    ]
    assert got == [
        (13, "Calibrating Reasoning in Language Models with Internal Consistency",
         4, None, None, date(2024, 5, 28), None),
        (21, "Beyond Degradation Conditions", 1, None, None, date(2025, 4, 12), None),
        (29, "ZPressor", None, "ZIP Lab", "ziplab", date(2025, 5, 29), 5),
        (37, "One-2-3-45", 7, None, None, date(2023, 6, 29), 7),
        (45, "Bottom-up Policy Optimization", None, None, None, None, None),
    ]  # fmt: skip
    assert papers[2].abstract == (
        "Feed-forward 3D Gaussian Splatting (3DGS) models have recently emerged"
        " as a promising solution."
    )
    assert papers[4].abstract.startswith("Existing reinforcement learning")
    assert {p.page_date for p in papers} == {date(2025, 12, 31)}


def test_title_glued_to_subscribe_is_unglued_without_blank_lines() -> None:
    papers = parse(NO_BLANK_LINES)

    assert [(p.title, p.line) for p in papers] == [
        ("Understanding Self-Predictive Learning for Reinforcement Learning", 3),
        ("Self Expanding Convolutional Neural Networks", 5),
    ]
    assert papers[0].abstract == (
        "We study the learning dynamics of self-predictive learning for reinforcement learning."
    )
    assert papers[1].abstract.endswith("during training!")
    assert all(p.page_date is None for p in papers)


# --- the bundled dumps --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "count", "page_date"),
    [
        (DUMP_000, 44, date(2026, 3, 12)),
        (DUMP_001, 202, None),
        (DUMP_002, 39, date(2025, 12, 31)),
        (DUMP_003, 228, None),
        (DUMP_004, 76, date(2026, 3, 11)),
    ],
    ids=lambda v: v.name[:3] if isinstance(v, Path) else None,
)
def test_bundled_dump_yields_every_paper_and_no_chrome(
    path: Path, count: int, page_date: date | None
) -> None:
    dump = read_dump(path=path, today=TODAY)

    assert len(dump.papers) == count
    assert dump.page_date == page_date
    lines = path.read_text(encoding="utf-8").splitlines()
    for p in dump.papers:
        assert p.title not in CHROME_LINES
        assert not p.title.startswith("Subscribe")
        assert p.abstract and p.abstract not in CHROME_LINES
        assert p.page_date == page_date
        # the line number points at the title in the file (003 glues it to "Subscribe")
        assert lines[p.line - 1].strip().removeprefix("Subscribe") == p.title
    assert len({p.line for p in dump.papers}) == count


def test_bundled_dump_with_metadata_reads_every_block() -> None:
    papers = read_dump(path=DUMP_002, today=TODAY).papers
    by_title = {p.title: p for p in papers}

    zpressor = next(p for p in papers if p.title.startswith("ZPressor"))
    assert (zpressor.organization, zpressor.organization_handle) == ("ZIP Lab", "ziplab")
    assert (zpressor.published_on, zpressor.upvotes) == (date(2025, 5, 29), 5)
    graph = by_title["Forward Learning of Graph Neural Networks"]
    assert (graph.authors, graph.published_on) == (8, date(2024, 3, 16))
    # every paper but one ("Bottom-up Policy Optimization…") carries a date
    assert sum(p.published_on is None for p in papers) == 1
    # a paper cannot be published after the page listing it
    assert all(p.published_on <= date(2025, 12, 31) for p in papers if p.published_on)


# --- year-less dates ----------------------------------------------------------------------


def page(date_line: str, *papers: tuple[str, str]) -> str:
    """A blank-separated page with a page date and (title, paper-date line) entries."""
    parts = ["new", "Subscribe", date_line]
    for title, when in papers:
        parts += [title, f"Abstract of {title}.", "  • 2 authors", "·", when]
    return "\n\n".join(parts) + "\n"


def test_year_less_dates_take_the_latest_year_not_after_the_page_nor_the_ingest_day() -> None:
    """The year rule for dates printed without a year.

    A page date ("Dec 31") takes the latest year that does not put it after the ingest
    day. A paper date ("Apr 12") takes the latest year that puts it neither after the
    page's date (a paper cannot be published after the page listing it) nor after the
    ingest day. Dates with a year are taken as printed.
    """
    dec31 = parse_dump(
        text=page("Dec 31", ("A", "Apr 12"), ("B", "Dec 31"), ("C", "Jan 5, 2020")),
        source="p",
        today=TODAY,
    )
    assert dec31.page_date == date(2025, 12, 31)  # Dec 31, 2026 is after Nov 23, 2026
    assert [p.published_on for p in dec31.papers] == [
        date(2025, 4, 12),  # on or before the page date
        date(2025, 12, 31),  # the page's own day is allowed
        date(2020, 1, 5),  # an explicit year is kept
    ]

    mar12 = parse_dump(
        text=page("Mar 12", ("A", "Dec 3"), ("B", "Mar 12"), ("C", "Mar 13")),
        source="p",
        today=TODAY,
    )
    assert mar12.page_date == date(2026, 3, 12)
    assert [p.published_on for p in mar12.papers] == [
        date(2025, 12, 3),  # Dec 3, 2026 would be after the page
        date(2026, 3, 12),
        date(2025, 3, 13),  # one day after the page's day: the year before
    ]


def test_paper_date_without_page_date_is_bounded_by_the_ingest_day() -> None:
    text = "\n\n".join(["Title", "Abstract.", "·", "Nov 24", "Other", "Abstract.", "·", "Nov 23"])
    papers = parse(text)
    assert [p.published_on for p in papers] == [date(2025, 11, 24), date(2026, 11, 23)]


def test_feb_29_resolves_to_a_leap_year() -> None:
    dump = parse_dump(text=page("Feb 29", ("A", "Feb 29")), source="p", today=date(2026, 11, 23))
    assert dump.page_date == date(2024, 2, 29)
    assert dump.papers[0].published_on == date(2024, 2, 29)

    on_march_page = parse_dump(text=page("Mar 12", ("A", "Feb 29")), source="p", today=TODAY)
    assert on_march_page.papers[0].published_on == date(2024, 2, 29)

    in_leap_year = parse_dump(
        text=page("Mar 1", ("A", "Feb 29")), source="p", today=date(2028, 3, 5)
    )
    assert in_leap_year.papers[0].published_on == date(2028, 2, 29)


# --- mutated real dumps -------------------------------------------------------------------


@pytest.mark.parametrize("path", ALL_DUMPS, ids=lambda p: p.name[:3])
def test_crlf_and_bom_give_the_same_records(path: Path, tmp_path: Path) -> None:
    original = read_dump(path=path, today=TODAY)
    text = path.read_text(encoding="utf-8")

    crlf = tmp_path / "crlf.txt"
    crlf.write_bytes(text.replace("\n", "\r\n").encode("utf-8"))
    bom = tmp_path / "bom.txt"
    bom.write_bytes(b"\xef\xbb\xbf" + text.encode("utf-8"))
    both = tmp_path / "both.txt"
    both.write_bytes(b"\xef\xbb\xbf" + text.replace("\n", "\r\n").encode("utf-8"))

    for variant in (crlf, bom, both):
        assert read_dump(path=variant, today=TODAY) == original


def test_lone_short_line_appended_is_reported_at_that_line(tmp_path: Path) -> None:
    text = DUMP_000.read_text(encoding="utf-8")
    path = tmp_path / "000.txt"
    path.write_text(text + "\n\nThanks\n", encoding="utf-8")

    err = parse_error(path)
    assert err.line == line_of(path.read_text(encoding="utf-8"), "Thanks")
    assert err.line == len(text.splitlines()) + 2
    assert "no abstract" in err.message


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_binary_bytes_appended_are_reported_as_binary_with_a_line(
    tmp_path: Path, seed: int
) -> None:
    data = DUMP_004.read_bytes()
    first_appended_line = data.count(b"\n") + 2
    path = tmp_path / "004.txt"
    path.write_bytes(data + b"\n" + random.Random(seed).randbytes(4096))

    err = parse_error(path)
    assert "binary" in err.message or "not UTF-8" in err.message
    assert first_appended_line <= err.line <= path.read_bytes().count(b"\n") + 1


def seeded_cut_in_last_abstract(text: str, seed: int) -> tuple[str, int]:
    """Cut ``text`` at a seeded random point inside its last abstract, after a letter.

    Returns the cut text and the 1-based line of that abstract. (A cut right after a
    '.' or inside a URL looks complete and cannot be told from a whole abstract.)
    """
    papers = parse(text)
    lines = text.splitlines(keepends=True)
    abstract_no = next(
        i for i in range(papers[-1].line + 1, len(lines) + 1) if lines[i - 1].strip()
    )
    start = sum(len(line) for line in lines[: abstract_no - 1])
    abstract = lines[abstract_no - 1].rstrip("\n")
    candidates = [k for k in range(10, len(abstract) - 1) if abstract[k - 1].isalpha()]
    cut = random.Random(seed).choice(candidates)
    return text[: start + cut], abstract_no


@pytest.mark.parametrize("path", ALL_DUMPS, ids=lambda p: p.name[:3])
@pytest.mark.parametrize("seed", [7, 2026])
def test_truncation_inside_the_last_abstract_is_reported_at_that_abstract(
    path: Path, seed: int, tmp_path: Path
) -> None:
    cut_text, abstract_no = seeded_cut_in_last_abstract(path.read_text(encoding="utf-8"), seed)
    cut = tmp_path / path.name
    cut.write_text(cut_text, encoding="utf-8")

    err = parse_error(cut)
    assert err.line == abstract_no
    assert "truncated" in err.message


@pytest.mark.parametrize("path", ALL_DUMPS, ids=lambda p: p.name[:3])
def test_truncation_after_a_title_is_reported_at_that_title(path: Path, tmp_path: Path) -> None:
    last = read_dump(path=path, today=TODAY).papers[-1]
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    cut = tmp_path / path.name
    cut.write_text("".join(lines[: last.line]), encoding="utf-8")

    err = parse_error(cut)
    assert err.line == last.line
    assert "no abstract" in err.message


def test_truncation_after_the_dot_of_a_metadata_block_is_reported(tmp_path: Path) -> None:
    text = DUMP_002.read_text(encoding="utf-8")
    dot_no = line_of(text, "·", last=True)
    cut = tmp_path / "002.txt"
    cut.write_text("".join(text.splitlines(keepends=True)[:dot_no]), encoding="utf-8")

    err = parse_error(cut)
    assert err.line == dot_no
    assert "date after '·'" in err.message


def test_truncation_after_an_author_count_is_reported(tmp_path: Path) -> None:
    text = DUMP_002.read_text(encoding="utf-8")
    authors_no = line_of(text, "• 1 authors", last=True)
    cut = tmp_path / "002.txt"
    cut.write_text("".join(text.splitlines(keepends=True)[:authors_no]), encoding="utf-8")

    err = parse_error(cut)
    assert err.line == authors_no
    assert "author count" in err.message


def test_a_garbled_date_after_the_dot_is_reported_at_the_date(tmp_path: Path) -> None:
    text = DUMP_002.read_text(encoding="utf-8")
    path = tmp_path / "002.txt"
    path.write_text(text.replace("\nMay 28, 2024\n", "\nMay 28, 20\n", 1), encoding="utf-8")

    err = parse_error(path)
    assert err.line == line_of(text, "May 28, 2024")


@pytest.mark.parametrize("content", [b"", b"   \n\n\t\r\n  ", "\ufeff\n \u00a0\n".encode()])
def test_empty_or_whitespace_only_file_is_reported_at_line_1(
    tmp_path: Path, content: bytes
) -> None:
    path = tmp_path / "empty.txt"
    path.write_bytes(content)

    err = parse_error(path)
    assert err.line == 1
    assert "empty" in err.message


def test_only_page_chrome_is_reported_as_no_paper(tmp_path: Path) -> None:
    path = tmp_path / "chrome.txt"
    path.write_text("new\n\nSubscribe\n\nDaily Papers\n\nMar 12\n", encoding="utf-8")

    err = parse_error(path)
    assert "no paper" in err.message


@pytest.mark.timeout(20)
@pytest.mark.parametrize(
    "line",
    [
        "x" * 5_000_000,
        "Understanding " * 360_000,
        "Subscribe" + "y" * 5_000_000,
    ],
    ids=["letters", "words", "glued"],
)
def test_a_5_mb_single_line_is_refused_quickly(tmp_path: Path, line: str) -> None:
    path = tmp_path / "huge.txt"
    path.write_text(line, encoding="utf-8")

    started = time.perf_counter()
    err = parse_error(path)
    assert time.perf_counter() - started < 5
    assert err.line == 1
    assert "character line" in err.message


@pytest.mark.timeout(20)
def test_a_5_mb_unfinished_last_abstract_full_of_urls_is_refused_quickly(tmp_path: Path) -> None:
    path = tmp_path / "huge.txt"
    path.write_text("A title\n\n" + "http://x" * 650_000 + " and then", encoding="utf-8")

    started = time.perf_counter()
    err = parse_error(path)
    assert time.perf_counter() - started < 5
    assert err.line == 3
    assert "middle of an abstract" in err.message


@pytest.mark.parametrize("path", [DUMP_000, DUMP_003], ids=lambda p: p.name[:3])
def test_latin_1_text_is_refused_at_the_line_of_the_first_bad_byte(
    path: Path, tmp_path: Path
) -> None:
    text = path.read_text(encoding="utf-8")
    first_non_ascii = next(i for i, line in enumerate(text.splitlines(), 1) if not line.isascii())
    latin = tmp_path / path.name
    latin.write_bytes(text.encode("latin-1"))

    with pytest.raises(CorpusError) as info:
        decode_dump(data=latin.read_bytes(), source=str(latin))
    assert info.value.line == first_non_ascii
    assert "not UTF-8" in info.value.message
    assert str(info.value).startswith(f"{latin}:{first_non_ascii}: ")
    assert parse_error(latin).line == first_non_ascii


# --- properties ---------------------------------------------------------------------------


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=st.text())
def test_any_text_gives_records_or_a_corpus_error(text: str) -> None:
    try:
        dump = parse_dump(text=text, source="fuzz.txt", today=TODAY)
    except CorpusError as err:
        assert str(err).startswith(f"fuzz.txt:{err.line}: ")
        assert err.line >= 1
    else:
        assert dump.papers
        assert all(p.title and p.abstract and p.line >= 1 for p in dump.papers)


DUMP_SHAPED_LINES = [
    *("", "Title", "Abstract.", "no end", "·", "• 3 authors", "ziplab ZIP Lab"),
    *("Mar 3", "May 29 5", "Feb 29", "Subscribe", "SubscribeX", "new"),
]


@settings(max_examples=200, deadline=None)
@given(text=st.lists(st.sampled_from(DUMP_SHAPED_LINES), max_size=12).map("\n".join))
def test_dump_shaped_text_gives_records_or_a_corpus_error(text: str) -> None:
    try:
        parse_dump(text=text, source="fuzz.txt", today=TODAY)
    except CorpusError as err:
        assert str(err).startswith(f"fuzz.txt:{err.line}: ")


WORD = st.text(alphabet=string.ascii_letters + string.digits + "-:,()'?$^", min_size=1, max_size=12)
_DATE_LIKE = re.compile(r"^(Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) \d")


def _is_plain_title(title: str) -> bool:
    # Exact chrome lines, a "Subscribe…" prefix and a date-like first line are page
    # chrome by design; real titles never look like that.
    return (
        title not in CHROME_LINES
        and not title.startswith("Subscribe")
        and not _DATE_LIKE.match(title)
    )


TITLE = (
    st.lists(WORD, min_size=1, max_size=20)
    .map(" ".join)
    .filter(lambda t: len(t) <= 200 and _is_plain_title(t))
)
ABSTRACT = st.lists(WORD, min_size=1, max_size=60).map(lambda ws: " ".join(ws) + ".")


@settings(max_examples=150, deadline=None)
@given(pairs=st.lists(st.tuples(TITLE, ABSTRACT), min_size=1, max_size=15))
def test_rendered_blank_separated_pairs_parse_back_to_the_same_papers(
    pairs: list[tuple[str, str]],
) -> None:
    header = ["new", "Get trending papers in your email inbox!", "Subscribe", "Daily Papers"]
    text = "\n\n".join(header + [line for pair in pairs for line in pair]) + "\n"

    papers = parse(text)

    assert [(p.title, p.abstract) for p in papers] == pairs
    assert [p.line for p in papers] == [9 + 4 * k for k in range(len(pairs))]


def test_a_first_title_that_merely_starts_with_subscribe_is_kept_whole() -> None:
    text = "new\n\nSubscribe\n\nSubscriber Churn Prediction\n\nWe predict churn.\n"
    (record,) = parse_dump(text=text, source="s.txt", today=TODAY).papers
    assert record.title == "Subscriber Churn Prediction"


def test_bad_bytes_in_a_file_with_old_mac_line_endings_are_located() -> None:
    data = b"Title one\r\rAbstract one.\r\rTitle \xe9two\r\rAbstract two."
    with pytest.raises(CorpusError) as info:
        decode_dump(data=data, source="mac.txt")
    assert info.value.line == 5

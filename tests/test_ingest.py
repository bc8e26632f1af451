"""Tests for newsletter.corpus.ingest and the dedupe key, on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import random
import shutil
from datetime import date, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlmodel import Session, func, select

from newsletter.corpus.ingest import IngestReport, ingest
from newsletter.corpus.keys import canonical_key
from newsletter.corpus.sources.dump import read_dump
from newsletter.models import CorpusFile, Event, Paper
from tests.conftest import CORPUS

DUMPS = sorted(CORPUS.glob("*.txt"))
GRAPH = "Forward Learning of Graph Neural Networks"  # in 000 (bare), 002 (metadata) and 004


# --- helpers ------------------------------------------------------------------------------


def count(engine: sa.Engine, model: type) -> int:
    with Session(engine) as session:
        return session.exec(select(func.count()).select_from(model)).one()


def papers(engine: sa.Engine) -> dict[str, Paper]:
    with Session(engine) as session:
        return {p.key: p for p in session.exec(select(Paper))}


def paper_rows(engine: sa.Engine) -> dict[str, dict[str, object]]:
    """Every stored paper, all columns, for before/after comparisons."""
    return {key: p.model_dump() for key, p in papers(engine).items()}


def file_rows(engine: sa.Engine) -> dict[str, CorpusFile]:
    with Session(engine) as session:
        return {f.path: f for f in session.exec(select(CorpusFile))}


def events(engine: sa.Engine, kind: str) -> list[dict[str, object]]:
    with Session(engine) as session:
        rows = session.exec(select(Event).where(Event.kind == kind).order_by(Event.id))
        return [json.loads(e.detail) for e in rows]


def statuses(report: IngestReport) -> dict[str, str]:
    return {Path(f.path).name: f.status for f in report.files}


def copy_corpus(tmp_path: Path) -> Path:
    target = tmp_path / "corpus"
    target.mkdir()
    for dump in DUMPS:
        shutil.copy(dump, target / dump.name)
    return target


def expected_keys(paths: list[Path], *, today: date) -> set[str]:
    """The distinct dedupe keys over every record of every file, computed independently."""
    return {
        canonical_key(record.title)
        for path in paths
        for record in read_dump(path=path, today=today).papers
    }


def write(path: Path, *entries: str, page_date: str | None = None) -> Path:
    """A well-formed blank-separated dump; each entry is 'title\\n\\nabstract[\\n\\nmeta…]'."""
    header = ["new", "Get trending papers in your email inbox!", "Subscribe"]
    if page_date:
        header.append(page_date)
    path.write_text("\n\n".join([*header, *entries]) + "\n", encoding="utf-8")
    return path


# --- the bundled corpus -------------------------------------------------------------------


def test_whole_corpus_stores_each_unique_paper_once(engine: sa.Engine, now: datetime) -> None:
    expected = expected_keys(DUMPS, today=now.date())
    assert len(expected) == 575

    report = ingest(engine=engine, paths=[CORPUS], now=now)

    assert report.errors == []
    assert statuses(report) == {d.name: "new" for d in DUMPS}
    assert report.new_papers == len(expected)
    assert count(engine, Paper) == len(expected) == 575
    assert set(papers(engine)) == expected
    files = file_rows(engine)
    assert {Path(p).name: f.status for p, f in files.items()} == {d.name: "ok" for d in DUMPS}
    assert sum(f.new_papers for f in files.values()) == 575


def test_paper_in_several_dumps_keeps_its_first_sighting(engine: sa.Engine, now: datetime) -> None:
    seen_at = {dump: now + timedelta(days=i) for i, dump in enumerate(DUMPS)}
    for dump in DUMPS:
        ingest(engine=engine, paths=[dump], now=seen_at[dump])

    first_file: dict[str, Path] = {}
    for dump in DUMPS:
        for record in read_dump(path=dump, today=now.date()).papers:
            first_file.setdefault(canonical_key(record.title), dump)
    stored = papers(engine)
    assert len(stored) == 575
    for key, paper in stored.items():
        assert paper.first_seen_at == seen_at[first_file[key]], paper.title
        assert paper.source_file == str(first_file[key])

    graph = stored[canonical_key(GRAPH)]  # 000 (bare) on day 0, then 002 (metadata) on day 2
    assert graph.first_seen_at == now
    assert (graph.authors, graph.published_on) == (8, date(2024, 3, 16))
    assert graph.updated_at == now + timedelta(days=2)


def test_reingesting_unchanged_files_does_nothing(
    engine: sa.Engine, now: datetime, tmp_path: Path
) -> None:
    corpus = copy_corpus(tmp_path)
    ingest(engine=engine, paths=[corpus], now=now)
    before_papers, before_files = paper_rows(engine), file_rows(engine)
    before_events = count(engine, Event)

    report = ingest(engine=engine, paths=[corpus], now=now + timedelta(days=1))

    assert statuses(report) == {d.name: "unchanged" for d in DUMPS}
    assert report.new_papers == 0
    assert report.errors == []
    assert paper_rows(engine) == before_papers
    assert {p: f.model_dump() for p, f in file_rows(engine).items()} == {
        p: f.model_dump() for p, f in before_files.items()
    }
    assert count(engine, Event) == before_events


def test_changed_file_adds_only_the_new_paper(
    engine: sa.Engine, now: datetime, tmp_path: Path
) -> None:
    corpus = copy_corpus(tmp_path)
    ingest(engine=engine, paths=[corpus], now=now)
    before = paper_rows(engine)
    dump = corpus / DUMPS[0].name
    with dump.open("a", encoding="utf-8") as f:
        f.write("\n\nDucks Are All You Need\n\nWe show that ducks suffice for everything.\n")
    later = now + timedelta(days=1)

    report = ingest(engine=engine, paths=[corpus], now=later)

    assert statuses(report) == {
        d.name: ("changed" if d.name == dump.name else "unchanged") for d in DUMPS
    }
    assert report.new_papers == 1
    assert report.files[0].updated_papers == 0
    after = paper_rows(engine)
    assert set(after) - set(before) == {"ducks are all you need"}
    new = after["ducks are all you need"]
    assert new["first_seen_at"] == later
    assert new["source_file"] == str(dump)
    assert new["abstract"] == "We show that ducks suffice for everything."
    assert {k: v for k, v in after.items() if k in before} == before
    row = file_rows(engine)[str(dump)]
    assert (row.status, row.papers, row.new_papers) == ("ok", 45, 1)


# --- merging what different dumps know about one paper -----------------------------------

WITH_METADATA = (
    f"{GRAPH}\n\nWe propose forward learning for GNNs.\n\n  • 8 authors\n·\nMar 16, 2024 3",
    "ZPressor: Bottleneck-Aware Compression\n\nFeed-forward 3DGS, compressed.\n\n"
    "ziplab ZIP Lab\n·\nMay 29 5",
)
WITHOUT_METADATA = (
    f"{GRAPH}\n\nWe propose forward learning for GNNs.",
    "ZPressor: Bottleneck-Aware Compression\n\nFeed-forward 3DGS, compressed.",
)


def metadata_of(paper: Paper) -> tuple[object, ...]:
    return (
        paper.authors,
        paper.organization,
        paper.organization_handle,
        paper.published_on,
        paper.upvotes,
        paper.page_date,
    )


@pytest.mark.parametrize("metadata_first", [True, False], ids=["metadata-first", "bare-first"])
def test_metadata_is_kept_whichever_dump_comes_first(
    engine: sa.Engine, now: datetime, tmp_path: Path, metadata_first: bool
) -> None:
    meta = write(tmp_path / "meta.txt", *WITH_METADATA, page_date="Dec 31")
    bare = write(tmp_path / "bare.txt", *WITHOUT_METADATA)
    first, second = (meta, bare) if metadata_first else (bare, meta)

    ingest(engine=engine, paths=[first], now=now)
    ingest(engine=engine, paths=[second], now=now + timedelta(days=1))

    stored = papers(engine)
    assert len(stored) == 2
    graph, zpressor = stored[canonical_key(GRAPH)], stored["zpressor bottleneck aware compression"]
    assert metadata_of(graph) == (8, None, None, date(2024, 3, 16), 3, date(2025, 12, 31))
    assert metadata_of(zpressor) == (
        None, "ZIP Lab", "ziplab", date(2025, 5, 29), 5, date(2025, 12, 31)
    )  # fmt: skip
    for paper in (graph, zpressor):
        assert paper.first_seen_at == now
        assert paper.source_file == str(first)
        # a bare sighting after the metadata changes nothing; metadata after a bare one fills
        assert paper.updated_at == (now if metadata_first else now + timedelta(days=1))


def test_more_upvotes_raise_the_count_and_blanks_never_overwrite(
    engine: sa.Engine, now: datetime, tmp_path: Path
) -> None:
    ingest(engine=engine, paths=[write(tmp_path / "a.txt", *WITH_METADATA)], now=now)
    more = f"{GRAPH}\n\nWe propose forward learning for GNNs.\n\n·\nMar 16, 2024 11"
    fewer = f"{GRAPH}\n\nWe propose forward learning for GNNs.\n\n·\nMar 16, 2024 2"

    ingest(engine=engine, paths=[write(tmp_path / "b.txt", more)], now=now + timedelta(days=1))
    graph = papers(engine)[canonical_key(GRAPH)]
    assert graph.upvotes == 11
    assert graph.authors == 8  # the later sighting has no author count: kept
    assert graph.updated_at == now + timedelta(days=1)

    ingest(engine=engine, paths=[write(tmp_path / "c.txt", fewer)], now=now + timedelta(days=2))
    ingest(
        engine=engine,
        paths=[write(tmp_path / "d.txt", *WITHOUT_METADATA)],
        now=now + timedelta(days=3),
    )
    graph = papers(engine)[canonical_key(GRAPH)]
    assert metadata_of(graph) == (8, None, None, date(2024, 3, 16), 11, None)
    assert graph.abstract == "We propose forward learning for GNNs."
    assert graph.updated_at == now + timedelta(days=1)


# --- the dedupe key -----------------------------------------------------------------------

POINCARE = ["Poincaré ResNet", "Poincar\\'e ResNet", "POINCARE  resnet"]


def test_spellings_of_one_title_share_a_dedupe_key() -> None:
    assert {canonical_key(t) for t in POINCARE} == {"poincare resnet"}
    assert canonical_key("Poincar\\'{e} ResNet") == "poincare resnet"
    assert canonical_key("Poincare\u0301 ResNet") == "poincare resnet"  # combining accent
    assert canonical_key("$BT^2$: Backward-compatible Training") == canonical_key(
        "BT^2: Backward-compatible Training"
    )
    assert canonical_key("Poincaré ResNets") != canonical_key("Poincaré ResNet")


def test_spellings_of_one_title_are_stored_as_one_paper(
    engine: sa.Engine, now: datetime, tmp_path: Path
) -> None:
    abstract = "This paper introduces an end-to-end residual network in hyperbolic space."
    together = write(tmp_path / "together.txt", *(f"{t}\n\n{abstract}" for t in POINCARE))
    for i, title in enumerate(POINCARE):
        write(tmp_path / f"apart{i}.txt", f"{title}\n\n{abstract}")

    report = ingest(engine=engine, paths=[tmp_path], now=now)

    assert report.errors == []
    assert report.new_papers == 1
    stored = papers(engine)
    assert list(stored) == ["poincare resnet"]
    assert stored["poincare resnet"].title == "Poincaré ResNet"  # apart0.txt: first in name order
    assert file_rows(engine)[str(together)].papers == 1


# --- broken files -------------------------------------------------------------------------


def test_broken_files_are_reported_recorded_and_do_not_stop_the_good_ones(
    engine: sa.Engine, now: datetime, tmp_path: Path
) -> None:
    corpus = copy_corpus(tmp_path)
    empty = corpus / "005_empty.txt"
    empty.write_bytes(b"")
    binary = corpus / "006_binary.txt"
    binary.write_bytes(DUMPS[4].read_bytes() + b"\n\x00" + random.Random(6).randbytes(512))
    binary_line = DUMPS[4].read_bytes().count(b"\n") + 2
    truncated = write(
        corpus / "007_truncated.txt",
        "Only In The Truncated File\n\nA whole abstract.",
        "A Title Whose Abstract Never Came",
    )
    truncated_line = 11

    report = ingest(engine=engine, paths=[corpus], now=now)

    assert statuses(report) == {
        **{d.name: "new" for d in DUMPS},
        empty.name: "error",
        binary.name: "error",
        truncated.name: "error",
    }
    located = {(e.path, e.line) for e in report.errors}
    assert located == {
        (str(empty), 1),
        (str(binary), binary_line),
        (str(truncated), truncated_line),
    }
    assert "binary" in report.files[6].error.message  # type: ignore[union-attr]
    assert count(engine, Paper) == 575  # every good paper, nothing from the broken files
    assert "only in the truncated file" not in papers(engine)

    files = file_rows(engine)
    for path, line in located:
        assert files[path].status == "error"
        assert files[path].error.startswith(f"{path}:{line}: ")  # type: ignore[union-attr]
        assert files[path].papers == 0
    failed = events(engine, "ingest.file_failed")
    assert {(e["path"], e["line"]) for e in failed} == located
    assert all(e["error"] for e in failed)

    # Fixed (the content changes): the next run ingests them.
    write(empty, "Now Not Empty\n\nA proper abstract.")
    write(truncated, "Only In The Truncated File\n\nA whole abstract.", "Second\n\nIts abstract.")
    report = ingest(engine=engine, paths=[corpus], now=now + timedelta(days=1))

    assert statuses(report)[empty.name] == statuses(report)[truncated.name] == "changed"
    assert report.new_papers == 3
    stored = papers(engine)
    assert {"now not empty", "only in the truncated file", "second"} <= set(stored)
    assert count(engine, Paper) == 578
    files = file_rows(engine)
    for path in (empty, truncated):
        assert (files[str(path)].status, files[str(path)].error) == ("ok", None)
    assert files[str(binary)].status == "error"


def test_nothing_stored_is_lost_when_a_bad_file_comes_in(
    engine: sa.Engine, now: datetime, tmp_path: Path
) -> None:
    corpus = copy_corpus(tmp_path)
    ingest(engine=engine, paths=[corpus], now=now)
    before_papers = paper_rows(engine)
    before_files = count(engine, CorpusFile)
    assert len(before_papers) == 575

    # A new broken file, and a known good file overwritten by a truncated copy of itself.
    (corpus / "005_garbage.txt").write_bytes(b"\xff\xfe garbage \x00\x01")
    known = corpus / DUMPS[0].name
    original = known.read_bytes()
    known.write_bytes(original[: len(original) // 2].rstrip(b". \n"))
    report = ingest(engine=engine, paths=[corpus], now=now + timedelta(days=1))

    assert statuses(report)["005_garbage.txt"] == statuses(report)[known.name] == "error"
    assert paper_rows(engine) == before_papers
    assert count(engine, CorpusFile) == before_files + 1
    assert file_rows(engine)[str(known)].status == "error"

    # Restoring the good content brings the file back to "ok" and still loses nothing.
    known.write_bytes(original)
    report = ingest(engine=engine, paths=[corpus], now=now + timedelta(days=2))
    assert statuses(report)[known.name] == "changed"
    assert report.new_papers == 0
    assert paper_rows(engine) == before_papers
    assert file_rows(engine)[str(known)].status == "ok"


@pytest.mark.parametrize(
    ("entry", "what"),
    [
        ("A Paper\n\nIts abstract.\n\n" + "h" * 201 + " Some Lab\n·\nMay 3", "organization_handle"),
        ("A Paper\n\nIts abstract.\n\nlab " + "O" * 301 + "\n·\nMay 3", "organization"),
        ("ß" * 300 + "\n\nIts abstract.", "key"),  # "ß" folds to "ss": 600 characters
    ],
    ids=["handle", "organization", "key"],
)
def test_a_paper_the_database_cannot_hold_is_skipped_and_named_not_a_crash(
    engine: sa.Engine, now: datetime, tmp_path: Path, entry: str, what: str
) -> None:
    """PostgreSQL enforces the columns' lengths: a paper over one is left out, named with
    its line; the rest of its file and the other files go in (until 2026-12-01 the
    whole file was refused for it)."""
    bad = write(tmp_path / "a_bad.txt", "Fine Paper\n\nFine abstract.", entry)
    good = write(tmp_path / "b_good.txt", "Good Paper\n\nGood abstract.")

    report = ingest(engine=engine, paths=[tmp_path], now=now)

    assert statuses(report) == {bad.name: "new", good.name: "new"}
    assert report.errors == []
    (skipped,) = report.files[0].skipped
    assert skipped.startswith("line 11: the paper's ") and what in skipped
    assert set(papers(engine)) == {"fine paper", "good paper"}
    assert file_rows(engine)[str(bad)].status == "ok"
    (ingested,) = [e for e in events(engine, "ingest.file") if e["path"] == str(bad)]
    assert ingested["skipped"] == [skipped]


def test_an_unchanged_broken_file_is_reported_on_every_run_but_recorded_once(
    engine: sa.Engine, now: datetime, tmp_path: Path
) -> None:
    corpus = tmp_path / "dumps"
    corpus.mkdir()
    broken = write(corpus / "000_broken.txt", "A Title\n\nAn abstract.", "A Title Cut Off")
    for day in range(3):
        report = ingest(engine=engine, paths=[corpus], now=now + timedelta(days=day))
        assert [(e.path, e.line) for e in report.errors] == [(str(broken), 11)]  # after the chrome
    assert len(events(engine, "ingest.file_failed")) == 1
    assert count(engine, Paper) == 0

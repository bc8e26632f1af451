"""The operator's CLI run as a real process: one-line errors, --json, the whole flow."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import CORPUS

CORPUS_FILES = sorted(CORPUS.glob("*.txt"))


def run(
    home: Path, *args: str, env: dict[str, str] | None = None, ok: bool = True
) -> subprocess.CompletedProcess[str]:
    full_env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("NEWSLETTER_") and k != "DATABASE_URL"
    }
    full_env |= {"NEWSLETTER_HOME": str(home), "NEWSLETTER_CORPUS_DIR": str(CORPUS), **(env or {})}
    proc = subprocess.run(
        [sys.executable, "-m", "newsletter", *args],
        cwd=home,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    if ok:
        assert proc.returncode == 0, proc.stderr
    return proc


def assert_one_line_error(proc: subprocess.CompletedProcess[str], *fragments: str) -> None:
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    for fragment in fragments:
        assert fragment in lines[0]


def test_help_lists_every_command_with_its_purpose(tmp_path: Path) -> None:
    out = run(tmp_path, "--help").stdout
    for command in (
        "ingest",
        "send",
        "preview",
        "papers",
        "subscribers",
        "db",
        "deliveries",
        "config",
    ):
        assert command in out
    sub = run(tmp_path, "subscribers", "--help").stdout
    for command in ("add", "import", "list", "remove"):
        assert command in sub


def test_commands_refuse_an_unmigrated_database_in_one_line(tmp_path: Path) -> None:
    proc = run(tmp_path, "papers", "list", ok=False)
    assert_one_line_error(proc, "run `newsletter db upgrade`")


def test_bad_setting_is_named_in_one_line(tmp_path: Path) -> None:
    proc = run(tmp_path, "db", "upgrade", env={"NEWSLETTER_DELIVERY": "pigeon"}, ok=False)
    assert_one_line_error(proc, "error: NEWSLETTER_DELIVERY:", "pigeon")


def test_whole_flow_from_corpus_to_outbox(tmp_path: Path) -> None:
    run(tmp_path, "db", "upgrade")
    first = run(tmp_path, "ingest")
    assert "575 new papers" in first.stdout
    assert "\x1b[" not in first.stdout + first.stderr  # no progress bar or colour in a pipe
    assert "0 new papers" in run(tmp_path, "ingest").stdout

    papers = json.loads(run(tmp_path, "papers", "list", "--json", "--since", "2000-01-01").stdout)
    assert len(papers) == 575 and {"title", "abstract", "first_seen_at"} <= papers[0].keys()
    assert (
        json.loads(run(tmp_path, "papers", "list", "--json", "--since", "2999-01-01").stdout) == []
    )
    assert_one_line_error(
        run(tmp_path, "papers", "list", "--since", "May 1", ok=False), "YYYY-MM-DD"
    )

    bad = run(tmp_path, "subscribers", "add", "ada@example.org", "--topic", 'rl OR "open', ok=False)
    assert bad.returncode == 1 and "Traceback" not in bad.stderr
    assert bad.stderr.splitlines() == [
        "error: topic: 'rl OR \"open': this quote is never closed (column 7)",
        '  rl OR "open',
        "        ^",
    ]
    run(
        tmp_path,
        "subscribers",
        "add",
        "Ada@Example.org",
        "--topic",
        '"reinforcement learning"',
        "--name",
        "Ada",
    )
    dup = run(tmp_path, "subscribers", "add", "ada@example.org", "--topic", "x", ok=False)
    assert_one_line_error(dup, "already subscribed")
    run(
        tmp_path,
        "subscribers",
        "add",
        "bo@example.org",
        "--topic",
        "crystallography",
        "--tz",
        "Asia/Tokyo",
    )
    listed = json.loads(run(tmp_path, "subscribers", "list", "--json").stdout)
    assert [(s["email"], s["topics"]) for s in listed] == [
        ("ada@example.org", ['"reinforcement learning"']),
        ("bo@example.org", ["crystallography"]),
    ]

    dry = run(tmp_path, "send", "--now", "--dry-run")
    assert "would send ada@example.org" in dry.stdout
    assert not (tmp_path / "outbox").exists()

    preview = tmp_path / "preview.eml"
    run(tmp_path, "preview", "ada@example.org", "--out", str(preview))
    assert b"List-Unsubscribe-Post" in preview.read_bytes()

    only_bo = run(tmp_path, "send", "--now", "--subscriber", "BO@example.org")
    assert "0 digests planned; 1 with nothing new matching" in only_bo.stdout
    assert not (tmp_path / "outbox").exists()

    sent = run(tmp_path, "send", "--now")
    assert "delivered: 1 sent" in sent.stdout
    assert "1 with nothing new matching" in sent.stdout
    emls = list((tmp_path / "outbox").rglob("*.eml"))
    assert len(emls) == 1 and emls[0].name.startswith("ada@example.org--")
    assert str(emls[0].parent) in sent.stdout

    again = run(tmp_path, "send", "--now")
    assert "0 digests planned" in again.stdout and "nothing due" in again.stdout
    assert len(list((tmp_path / "outbox").rglob("*.eml"))) == 1

    deliveries = json.loads(run(tmp_path, "deliveries", "--json").stdout)
    assert [(d["to_address"], d["status"]) for d in deliveries] == [("ada@example.org", "sent")]

    run(tmp_path, "subscribers", "remove", "ada@example.org")
    assert_one_line_error(
        run(tmp_path, "subscribers", "remove", "ada@example.org", ok=False), "no subscriber"
    )


def test_ingest_reports_a_bad_file_and_keeps_the_good_ones(tmp_path: Path) -> None:
    corpus = tmp_path / "dumps"
    corpus.mkdir()
    (corpus / "000_good.txt").write_bytes(CORPUS_FILES[0].read_bytes())
    (corpus / "001_broken.txt").write_bytes(b"Title only\n\n")
    run(tmp_path, "db", "upgrade")
    proc = run(tmp_path, "ingest", str(corpus), ok=False)
    assert proc.returncode == 1
    assert f"{corpus / '001_broken.txt'}:1:" in proc.stderr
    assert "44 new papers" in proc.stdout


@pytest.mark.parametrize("fmt", ["csv", "json"])
def test_import_reports_bad_rows_by_line(tmp_path: Path, fmt: str) -> None:
    run(tmp_path, "db", "upgrade")
    path = tmp_path / f"subs.{fmt}"
    if fmt == "csv":
        path.write_text("email,topics\nok@example.org,diffusion\nbroken,diffusion\n")
    else:
        items = [
            '{"email": "ok@example.org", "topics": ["diffusion"]}',
            '{"email": "broken", "topics": ["x"]}',
        ]
        path.write_text("[\n" + ",\n".join(items) + "\n]\n")
    proc = run(tmp_path, "subscribers", "import", str(path), ok=False)
    assert proc.returncode == 1
    assert f"{path}:3: email:" in proc.stderr
    assert "imported 1 subscribers" in proc.stdout


def test_papers_embed_recomputes_what_is_stale_or_corrupt(tmp_path: Path) -> None:
    """``newsletter papers embed``: vectors are reused; a corrupt one and one whose
    paper changed are computed again (the changed one by the model, not the bundled
    vectors), the one changed by hand only by ``papers embed``, which hashes every text;
    ``--rebuild`` does every paper."""
    import sqlite3

    corpus = tmp_path / "dumps"
    corpus.mkdir()
    (corpus / "000_day.txt").write_bytes(CORPUS_FILES[0].read_bytes())
    run(tmp_path, "db", "upgrade")
    run(tmp_path, "ingest", str(corpus))
    unchanged = run(tmp_path, "papers", "embed").stdout
    assert "embedded 0 papers and 0 topics (all-MiniLM-L6-v2; 44 papers unchanged)" in unchanged
    with sqlite3.connect(tmp_path / "data" / "newsletter.db") as conn:
        first, second = (r[0] for r in conn.execute("SELECT id FROM papers ORDER BY id LIMIT 2"))
        conn.execute("UPDATE paper_vectors SET vector = x'0001' WHERE paper_id = ?", (first,))
        conn.execute("UPDATE papers SET abstract = 'Rewritten. Entirely.' WHERE id = ?", (second,))
    # Ingest (as fetch and send) reads only papers with no sound vector or changed since
    # theirs: it mends the corrupt one and cannot see the abstract edited by hand.
    ingested = run(tmp_path, "ingest", str(corpus)).stdout
    assert "embedded 1 papers" in ingested and "1 of them from the bundled vectors" in ingested
    assert "papers unchanged" not in ingested
    again = run(tmp_path, "papers", "embed").stdout  # every text hashed: the edit is found
    assert "embedded 1 papers" in again and "bundled" not in again
    assert "43 papers unchanged" in again
    with sqlite3.connect(tmp_path / "data" / "newsletter.db") as conn:
        (size,) = conn.execute(
            "SELECT length(vector) FROM paper_vectors WHERE paper_id = ?", (first,)
        ).fetchone()
    assert size == 2 * 384  # float16 x the model's dimensions, no longer two bytes
    rebuilt = run(tmp_path, "papers", "embed", "--rebuild").stdout
    assert "embedded 44 papers" in rebuilt and "0 papers unchanged" in rebuilt


def test_ingest_shows_a_progress_bar_on_a_terminal(tmp_path: Path) -> None:
    import pty

    run(tmp_path, "db", "upgrade")
    controller, terminal = pty.openpty()
    env = {k: v for k, v in os.environ.items() if not k.startswith("NEWSLETTER_")}
    env |= {"NEWSLETTER_HOME": str(tmp_path), "NEWSLETTER_CORPUS_DIR": str(CORPUS), "TERM": "xterm"}
    proc = subprocess.run(
        [sys.executable, "-m", "newsletter", "ingest"],
        cwd=tmp_path,
        env=env,
        stdin=terminal,
        stdout=terminal,
        stderr=terminal,
        timeout=120,
    )
    os.close(terminal)
    chunks = []
    while True:
        try:
            chunk = os.read(controller, 65536)
        except OSError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(controller)
    screen = b"".join(chunks).decode(errors="replace")
    assert proc.returncode == 0
    assert "ingesting" in screen and "\x1b[" in screen  # the bar, drawn with terminal codes
    assert "575 new papers" in screen


def test_filters_test_counts_ranks_and_explains(tmp_path: Path) -> None:
    run(tmp_path, "db", "upgrade")
    run(tmp_path, "ingest")
    shown = run(tmp_path, "filters", "test", 'org:"ZIP Lab" OR (GPT-4 poker)', "--json")
    result = json.loads(shown.stdout)
    assert result["canonical"] == 'org:"zip lab" OR ("gpt 4" AND poker)'
    assert result["matched"] == 2
    titles = [p["title"] for p in result["papers"]]
    assert any(t.startswith("ZPressor") for t in titles) and any("Poker" in t for t in titles)
    poker = next(p for p in result["papers"] if "Poker" in p["title"])
    assert poker["words"][:2] == ["GPT-4", "Poker"]

    text = run(tmp_path, "filters", "test", "poincare", "--limit", "1").stdout
    assert text.splitlines()[0] == "2 of 575 papers match poincare"
    assert "Poincaré" in text

    bad = run(tmp_path, "filters", "test", "diffusion AND (video OR", ok=False)
    assert bad.stderr.splitlines() == [
        "error: column 22: OR needs something on both sides",
        "  diffusion AND (video OR",
        "                       ^",
    ]

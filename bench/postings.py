"""`filters test` over a big store: the stored postings against an in-memory index.

Stores N synthetic papers (sentences of the bundled corpus recombined, first seen over
N / 1,000 days, each with a random unit vector, as `papers embed` would store one),
indexes them as ingest does (`index_pending`, timed: the cost moved to ingest), then
runs `newsletter filters test QUERY` in a fresh process and reports its time and
memory high-water mark. In the same run, unless --no-baseline, the same question
answered the way `filters test` did before the stored postings: an in-memory
`DayIndex` over every stored paper (57 s and 17 GB at 200,000 papers when measured
for issue 15; mind the memory before asking for it at that size).

    .venv/bin/python bench/postings.py --papers 200000 --no-baseline
    .venv/bin/python bench/postings.py --papers 20000
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np

from newsletter import db
from newsletter.models import Paper

sys.path.insert(0, str(Path(__file__).resolve().parent))
NOW = datetime(2026, 11, 23, 12, tzinfo=UTC)


def setup(url: str, papers: int) -> float:
    """Store the papers and their vectors; the seconds indexing them took."""
    from match import corpus_docs, synthetic_day
    from plan import store_papers

    from newsletter.corpus.postings import index_pending

    engine = db.make_engine(url)
    db.upgrade(engine=engine)
    rng, vrng = random.Random(3), np.random.default_rng(3)
    docs = synthetic_day(corpus_docs(), size=papers, rng=rng)
    for start in range(0, len(docs), 20_000):
        batch = docs[start : start + 20_000]
        seen = [
            NOW - timedelta(days=(papers - i) / 1000, hours=1)
            for i in range(start, start + len(batch))
        ]
        with engine.begin() as conn:
            store_papers(conn, batch, seen, vrng)
    start_index = time.perf_counter()
    index_pending(engine=engine)
    took = time.perf_counter() - start_index
    engine.dispose()
    return took


def child(mode: str, url: str, home: str, query: str) -> None:
    """One answer in this (fresh) process, which imports only what the command does;
    its memory high-water mark as the last line of stderr."""
    from memory import peak_mb

    os.environ.update(
        {"NEWSLETTER_HOME": home, "DATABASE_URL": url, "NEWSLETTER_SECRET_KEY": "b" * 40}
    )
    if mode == "stored":
        from newsletter.cli import main

        sys.argv = ["newsletter", "filters", "test", query, "--limit", "5"]
        try:
            main()
        except SystemExit as exc:
            assert not exc.code, exc.code
    else:
        from sqlmodel import select

        from newsletter.models import utcnow
        from newsletter.relevance import Topic
        from newsletter.relevance.day import day_scorer

        engine = db.make_engine(url)
        with db.session_scope(engine=engine) as session:
            papers = list(session.exec(select(Paper).order_by(Paper.first_seen_at, Paper.id)))
            scorer = day_scorer(session, papers=papers, now=utcnow(), topics=[Topic(query)])
        picked = scorer.pick([Topic(query)], within=None, limit=10**9, dial=3)
        print(f"{picked.total} make the digest (in memory)")
    print(json.dumps({"peak_mb": peak_mb()}), file=sys.stderr)


def run(mode: str, url: str, home: str, query: str) -> dict[str, float]:
    """The answer's wall time as a user waits for it (interpreter start included)."""
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, __file__, "--child", mode, "--url", url, "--home", home, query],
        capture_output=True,
        text=True,
    )
    if proc.returncode:
        raise SystemExit(f"{mode} failed:\n{proc.stderr[-3000:]}")
    took = time.perf_counter() - start
    print(f"  {mode}: " + proc.stdout.strip().splitlines()[1 if mode == "stored" else 0])
    return json.loads(proc.stderr.strip().splitlines()[-1]) | {"seconds": took}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("query", nargs="?", default="diffusion")
    parser.add_argument("--papers", type=int, default=20_000)
    parser.add_argument("--url", default="", help="a database URL (default: SQLite, temp dir)")
    parser.add_argument("--no-baseline", action="store_true", help="skip the in-memory index")
    parser.add_argument("--child", choices=["stored", "memory"], help=argparse.SUPPRESS)
    parser.add_argument("--home", default="", help=argparse.SUPPRESS)
    parser.add_argument("--setup-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.setup_only:
        print(setup(args.url, args.papers))
        return
    if args.child:
        child(args.child, args.url, args.home, args.query)
        return
    with tempfile.TemporaryDirectory() as tmp:
        url = args.url or f"sqlite:///{tmp}/postings.db"
        # Set up in a child too, so this process stays small: a process started by a big
        # one would report the big one's high-water mark (Linux keeps it across exec).
        setup_proc = subprocess.run(
            [sys.executable, __file__, "--setup-only", "--url", url, "--papers", str(args.papers)],
            capture_output=True,
            text=True,
        )
        if setup_proc.returncode:
            raise SystemExit(setup_proc.stderr[-3000:])
        indexing = float(setup_proc.stdout.strip().splitlines()[-1])
        print(f"{args.papers:,} papers; indexing them at ingest took {indexing:.1f} s "
              f"({indexing / args.papers * 1e6:.0f} µs a paper)")  # fmt: skip
        stored = run("stored", url, tmp, args.query)
        print(f"filters test {args.query!r}, stored postings: {stored['seconds']:.2f} s, "
              f"peak RSS {stored['peak_mb']:.0f} MB")  # fmt: skip
        if not args.no_baseline:
            memory = run("memory", url, tmp, args.query)
            print(f"  the in-memory index of every paper: {memory['seconds']:.2f} s, "
                  f"peak RSS {memory['peak_mb']:.0f} MB -> stored is "
                  f"{memory['seconds'] / stored['seconds']:.1f}x faster, "
                  f"{memory['peak_mb'] / stored['peak_mb']:.1f}x smaller")  # fmt: skip


if __name__ == "__main__":
    main()

"""Benchmark: plan N subscribers x 3 topics against a 1,000-paper day, time and memory.

Run: .venv/bin/python bench/plan.py --subscribers N [--url DATABASE_URL] [--keep DIR]
(bench/scale.py --plan runs it at 100k, 300k and 1M, on SQLite and PostgreSQL).

The database holds 2,000 papers first seen five days ago (the reference window) and a
1,000-paper day (the bundled corpus recombined, as bench/match.py makes it), each with a
vector (random unit vectors: their values do not change the cost), and N subscribers
imported from a CSV. Each subscriber has 3 topics drawn from a pool of 20,000 filters
(bench/match.py's mix of words, phrases, AND / OR / NOT, fields, prefixes, numbers; one
in four with a sentence) by a Zipf law, as topics are shared in a real list: the
popular ones by many readers, the long tail by one each. Every topic text has a vector.

Setup runs in this process; planning in a fresh child process, so its memory
high-water mark (resource.getrusage) is planning's alone. Planning is the real
``plan_digests`` (records every delivery row), as ``newsletter send`` runs it.
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import resource
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import sqlalchemy as sa

sys.path.insert(0, str(Path(__file__).parent))
from match import corpus_docs, make_filters, synthetic_day
from memory import peak_mb

from newsletter import db
from newsletter.config import load_settings
from newsletter.embed.encoder import DIM, MODEL_NAME
from newsletter.embed.store import pack, text_hash, topic_text
from newsletter.filters import PaperDoc
from newsletter.importer import import_subscribers
from newsletter.models import Paper, PaperVector, TopicFilter, TopicVector

NOW = datetime(2026, 11, 23, 12, tzinfo=UTC)
POOL = 20_000


def _unit(rng: np.random.Generator, rows: int) -> np.ndarray:
    v = rng.standard_normal((rows, DIM)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def setup(url: str, subscribers: int, home: Path) -> None:
    engine = db.make_engine(url)
    db.upgrade(engine=engine)
    rng, vrng = random.Random(7), np.random.default_rng(7)
    docs = synthetic_day(corpus_docs(), size=3000, rng=rng)
    seen = [
        NOW - (timedelta(days=5) if i < 2000 else timedelta(hours=1)) + timedelta(seconds=i)
        for i in range(len(docs))
    ]
    with engine.begin() as conn:
        store_papers(conn, docs, seen, vrng)
    pool = make_filters(docs[2000:], count=POOL, rng=rng)
    pool = [
        q + (f" | Papers about {q.strip(chr(34))}" if k % 4 == 0 else "")
        for k, q in enumerate(pool)
    ]
    weights = 1 / np.arange(1, POOL + 1) ** 1.1
    weights /= weights.sum()
    nrng = np.random.default_rng(11)
    path = home / "subscribers.csv"
    with path.open("w", newline="") as f:
        out = csv.writer(f)
        out.writerow(["email", "topics", "timezone", "send_at"])
        for i in range(subscribers):
            picks = nrng.choice(POOL, size=3, replace=False, p=weights)
            out.writerow([f"r{i}@example.org", ";".join(pool[k] for k in picks), "UTC", "08:00"])
    report = import_subscribers(
        engine=engine, path=path, now=NOW, default_timezone="UTC", default_send_at="08:00"
    )
    assert not report.errors, report.errors[:3]
    with engine.begin() as conn:
        texts = {
            topic_text(query=q, about=a)
            for q, a in conn.execute(sa.select(TopicFilter.query, TopicFilter.about).distinct())
        }
        vectors = _unit(vrng, len(texts))
        conn.execute(
            sa.insert(TopicVector.__table__),  # type: ignore[attr-defined]
            [
                {
                    "text_hash": text_hash(MODEL_NAME, t),
                    "model": MODEL_NAME,
                    "vector": pack(vectors[k : k + 1]),
                    "updated_at": NOW,
                }
                for k, t in enumerate(sorted(texts))
            ],
        )
    engine.dispose()


def store_papers(
    conn: sa.Connection, docs: list[PaperDoc], seen: list[datetime], vrng: np.random.Generator
) -> None:
    """Store papers with a random unit vector each, as `papers embed` would store one."""
    first = conn.execute(sa.select(sa.func.coalesce(sa.func.max(Paper.id), 0))).scalar()
    rows = [
        {
            "key": f"bench paper {first + k}",
            "title": d.title,
            "abstract": d.abstract,
            "authors": d.authors,
            "upvotes": d.upvotes,
            "source_file": "bench",
            "first_seen_at": at,
            "updated_at": at,
        }
        for k, (d, at) in enumerate(zip(docs, seen, strict=True))
    ]
    conn.execute(sa.insert(Paper.__table__), rows)  # type: ignore[attr-defined]
    vectors = _unit(vrng, len(rows))
    conn.execute(
        sa.insert(PaperVector.__table__),  # type: ignore[attr-defined]
        [
            {
                "paper_id": first + k + 1,
                "model": MODEL_NAME,
                "text_hash": "bench",
                "vector": pack(vectors[k : k + 1]),
                "sentences": b"",
                "spans": "[]",
                "updated_at": NOW,
            }
            for k in range(len(rows))
        ],
    )


def plan(url: str, home: Path, dry_run: bool, workers: int = 1) -> dict[str, float]:
    from newsletter.plan import plan_digests

    settings = load_settings(
        environ={
            "NEWSLETTER_HOME": str(home),
            "DATABASE_URL": url,
            "NEWSLETTER_FIRST_DIGEST_DAYS": "1",
            "NEWSLETTER_SECRET_KEY": "b" * 40,
        },
        dotenv_path=home / "none",
    )
    engine = db.make_engine(url)
    start = time.perf_counter()
    report = plan_digests(
        engine=engine,
        settings=settings,
        now=NOW,
        due_only=False,
        dry_run=dry_run,
        keep=False,
        workers=workers,
    )
    took = time.perf_counter() - start
    return {
        "seconds": took,
        "planned": report.counts["planned"],
        "empty": report.counts["no_match"],
        "peak_mb": peak_mb(),
        # the largest planning process forked from this one (they share the scored
        # papers, counted in each); forked, not exec'd, so ru_maxrss is theirs
        "child_peak_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subscribers", type=int, default=100_000)
    parser.add_argument("--url", default="", help="a database URL (default: SQLite in a temp dir)")
    parser.add_argument("--dry-run", action="store_true", help="plan without recording")
    parser.add_argument("--workers", type=int, default=1, help="planning processes")
    parser.add_argument("--plan-only", metavar="DIR", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.plan_only:
        print(json.dumps(plan(args.url, Path(args.plan_only), args.dry_run, args.workers)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        url = args.url or f"sqlite:///{tmp}/plan.db"
        start = time.perf_counter()
        setup(url, args.subscribers, Path(tmp))
        built = time.perf_counter() - start
        child = subprocess.run(
            [sys.executable, __file__, "--url", url, "--plan-only", tmp]
            + ["--workers", str(args.workers)]
            + (["--dry-run"] if args.dry_run else []),
            capture_output=True,
            text=True,
        )
        if child.returncode:
            sys.exit(child.stderr)
        result = json.loads(child.stdout.strip().splitlines()[-1])
        result["setup_seconds"] = built
        print(json.dumps(result))


if __name__ == "__main__":
    main()

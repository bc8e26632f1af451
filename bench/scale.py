"""Benchmark: how subscriber imports and planning scale.

Run: .venv/bin/python bench/scale.py [--rows N] [--sample N] [--pg URL]
     .venv/bin/python bench/scale.py --plan 100000,300000,1000000 [--workers N] [--pg URL]
     .venv/bin/python bench/scale.py --filters 20000,200000 [--pg URL]  # stored postings

With --plan, bench/plan.py plans each number of subscribers x 3 topics against a
1,000-paper day (on SQLite, and on PostgreSQL with --pg) and each line prints the
seconds, the cost per subscriber next to the smallest size's (cost linear in
subscribers: a ratio near 1), and the planning processes' memory high-water marks.

For each database (SQLite in a temporary folder; PostgreSQL when --pg names one, or
NEWSLETTER_TEST_PG is set, in a scratch database it creates and drops):

  import   `import_subscribers` on a CSV of N synthetic rows (3 topics each, some with
           a sentence): parse, validate, compile, store in bulk
  one-by-one   the same validation, then `add_subscriber` per row in its own
           transaction, as a loop over the admin API would: timed on a sample, scaled

Each line prints rows per second, the ratio to the one-by-one baseline from the same
run, and the process's memory high-water mark (resource.getrusage).
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
from datetime import UTC, datetime
from pathlib import Path

import sqlalchemy as sa
from memory import peak_mb

from newsletter import db
from newsletter.importer import import_subscribers
from newsletter.subscribers import add_subscriber, validate_subscriber

WORDS = (
    "diffusion", "transformer", "reasoning", "speech", "LoRA", '"language model"', "agents",
    "retrieval", "vision", "graph", "robot", "3D", "video", "audio", "quantization",
)  # fmt: skip


def write_csv(path: Path, rows: int, rng: random.Random) -> None:
    with path.open("w") as f:
        f.write("email,name,topics,timezone,send_at\n")
        for i in range(rows):
            topics = rng.sample(WORDS, 3)
            if i % 4 == 0:
                topics[0] += " | Papers about " + topics[0].strip('"')
            f.write(f"user{i}@example.org,User {i},{';'.join(topics)},Europe/Paris,08:00\n")


def bench(name: str, url: str, path: Path, rows: int, sample: int) -> None:
    engine = db.make_engine(url)
    db.upgrade(engine=engine)
    now = datetime.now(UTC)
    start = time.perf_counter()
    report = import_subscribers(
        engine=engine, path=path, now=now, default_timezone="UTC", default_send_at="08:00"
    )
    took = time.perf_counter() - start
    assert len(report.added) == rows and not report.errors, report.errors[:3]

    start = time.perf_counter()
    for i in range(sample):
        sub = validate_subscriber(
            email=f"single{i}@example.org",
            topics=["diffusion", "speech", "agents"],
            name=f"Single {i}",
            timezone="Europe/Paris",
            send_at="08:00",
        )
        with db.session_scope(engine=engine) as session:
            add_subscriber(session=session, subscriber=sub, now=now)
    single = sample / (time.perf_counter() - start)
    engine.dispose()
    rate = rows / took
    print(
        f"{name:10s} import {rows:,} rows in {took:6.2f} s: {rate:8,.0f} rows/s   "
        f"one-by-one {single:6,.0f} rows/s   ratio {rate / single:5.1f}x   "
        f"peak RSS {peak_mb():,.0f} MB"
    )


def scratch_database(url: str, name: str) -> str:
    """A fresh, empty database on the server of ``url``."""
    admin = sa.create_engine(url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f"DROP DATABASE IF EXISTS {name}"))
        conn.execute(sa.text(f"CREATE DATABASE {name}"))
    admin.dispose()
    return sa.make_url(url).set(database=name).render_as_string(False)


def filter_sizes(name: str, url: str, sizes: list[int]) -> None:
    """`filters test` over N stored papers (bench/postings.py), the in-memory index as
    the baseline where it fits (up to 50,000 papers)."""
    for n in sizes:
        command = [sys.executable, str(Path(__file__).parent / "postings.py"), "--papers", str(n)]
        command += ["--url", scratch_database(url, "newsletter_postings")] if url else []
        command += ["--no-baseline"] if n > 50_000 else []
        print(f"{name}: " + subprocess.run(command, check=True, capture_output=True, text=True)
              .stdout.strip().replace("\n", f"\n{name}: "))  # fmt: skip


def plan_sizes(name: str, url: str, sizes: list[int], workers: int) -> None:
    base = None
    for n in sizes:
        if url:  # a scratch database per size
            scratch = scratch_database(url, "newsletter_plan")
        command = [sys.executable, str(Path(__file__).parent / "plan.py"), "--subscribers", str(n)]
        command += ["--workers", str(workers)] + (["--url", scratch] if url else [])
        done = subprocess.run(command, check=True, capture_output=True, text=True)
        result = json.loads(done.stdout.strip().splitlines()[-1])
        per = result["seconds"] / n * 1e6
        base = base or per
        print(
            f"{name:10s} plan {n:>9,} subscribers in {result['seconds']:7.1f} s: "
            f"{per:5.0f} us each ({per / base:4.2f}x the {sizes[0]:,} run's)   peak RSS "
            f"{result['peak_mb']:,.0f} MB"
            + (f", each planning process {result['child_peak_mb']:,.0f} MB" if workers > 1 else "")
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--sample", type=int, default=1_000, help="rows added one by one")
    parser.add_argument("--pg", default=os.environ.get("NEWSLETTER_TEST_PG", ""))
    parser.add_argument("--plan", default="", help="subscriber counts to plan, comma-separated")
    parser.add_argument("--workers", type=int, default=1, help="planning processes (--plan)")
    parser.add_argument("--filters", default="", help="stored paper counts, comma-separated")
    args = parser.parse_args()
    if args.filters:
        sizes = [int(n) for n in args.filters.split(",")]
        for name, url in [("sqlite", "")] + ([("postgresql", args.pg)] if args.pg else []):
            filter_sizes(name, url, sizes)
        return
    if args.plan:
        sizes = [int(n) for n in args.plan.split(",")]
        for name, url in [("sqlite", "")] + ([("postgresql", args.pg)] if args.pg else []):
            plan_sizes(name, url, sizes, args.workers)
        return
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "subscribers.csv"
        write_csv(path, args.rows, random.Random(1))
        bench("sqlite", f"sqlite:///{tmp}/scale.db", path, args.rows, args.sample)
        if args.pg:
            admin = sa.create_engine(args.pg, isolation_level="AUTOCOMMIT")
            with admin.connect() as conn:
                conn.execute(sa.text("DROP DATABASE IF EXISTS newsletter_scale"))
                conn.execute(sa.text("CREATE DATABASE newsletter_scale"))
            scratch = sa.make_url(args.pg).set(database="newsletter_scale")
            try:
                bench("postgresql", scratch.render_as_string(False), path, args.rows, args.sample)
            finally:
                with admin.connect() as conn:
                    conn.execute(sa.text("DROP DATABASE IF EXISTS newsletter_scale"))
                admin.dispose()


if __name__ == "__main__":
    main()

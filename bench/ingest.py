"""Benchmark: ingest the bundled corpus into a fresh SQLite database.

Run: .venv/bin/python bench/ingest.py [--repeat N]

Prints the best-of-N time of a full ingest (parse, dedupe, store, record file
hashes) next to two baselines measured in the same run, since this machine is
noisy: reading the bytes and splitting lines (the I/O floor), and parsing
alone (the pure core). Also times a re-ingest of the unchanged corpus, which
should cost about the file hashing.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from newsletter import db
from newsletter.corpus.ingest import ingest
from newsletter.corpus.sources.dump import read_dump

CORPUS = Path(__file__).resolve().parent.parent / "corpus"


def best(fn, repeat: int) -> float:  # type: ignore[no-untyped-def]
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    files = sorted(CORPUS.glob("*.txt"))
    now = datetime.now(UTC)
    size = sum(f.stat().st_size for f in files)

    def read_split() -> None:
        for f in files:
            f.read_bytes().decode().splitlines()

    def parse_only() -> None:
        for f in files:
            read_dump(path=f, today=now.date())

    papers = 0

    def full_ingest() -> None:
        nonlocal papers
        with tempfile.TemporaryDirectory() as tmp:
            engine = db.make_engine(f"sqlite:///{tmp}/bench.db")
            db.upgrade(engine=engine)
            start = time.perf_counter()
            report = ingest(engine=engine, paths=[CORPUS], now=now)
            timings.append(time.perf_counter() - start)
            papers = report.new_papers
            again = time.perf_counter()
            ingest(engine=engine, paths=[CORPUS], now=now)
            reingest.append(time.perf_counter() - again)
            engine.dispose()

    timings: list[float] = []
    reingest: list[float] = []
    t_read = best(read_split, args.repeat)
    t_parse = best(parse_only, args.repeat)
    for _ in range(args.repeat):
        full_ingest()
    t_ingest, t_again = min(timings), min(reingest)

    print(f"corpus: {len(files)} files, {size / 1e6:.2f} MB, {papers} unique papers")
    rows = [
        ("read + split lines (baseline)", t_read),
        ("parse only", t_parse),
        ("full ingest into SQLite", t_ingest),
        ("re-ingest, nothing changed", t_again),
    ]
    for label, seconds in rows:
        print(f"{label:32} {seconds * 1e3:8.1f} ms {seconds / t_read:7.1f}x baseline")


if __name__ == "__main__":
    main()

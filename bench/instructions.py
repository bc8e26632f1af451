"""Benchmark: the score stage counted in instructions, which do not move with the machine.

Run: .venv/bin/python bench/instructions.py [--subscribers N] [--sample N] [--seed S]

This machine's speed moves by up to half within an hour, so a change of a few percent to
the score stage cannot be told from noise in seconds (bench/match.py) without many
interleaved runs. Valgrind's callgrind counts the instructions a process executes: the
same count for the same code and input, whatever else the machine does. Each figure is
one child process under callgrind, counting only while the stage runs (the day, the
filters and the scorer are built first, uncounted), on bench/match.py's synthetic
1,000-paper day and worst case (every topic drawn apart):

  score   the first N subscribers (default 10,000) decided and ordered as planning does
          (bench/match.py's score stage), per subscriber
  plain   the plain reference (the same decisions over the day's arrays, one topic at a
          time) on a sample of them, per subscriber: the baseline, in the same run

Instructions are not seconds: BLAS's are wide and cheap, an interpreter's narrow, and
memory stalls count nothing, so compare a change's counts with the code before it, not
with bench/match.py's seconds. The two children run side by side (one per core) and
take a few minutes each. Needs valgrind (`apt-get install valgrind` on Debian).
"""

from __future__ import annotations

import argparse
import gc
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from match import corpus_docs, make_filters, planned, score_setup, synthetic_day

from newsletter.bounded import rare_collections
from newsletter.filters import DayIndex, compile_filter

STAGES = ("score", "plain")


def stage(name: str, subscribers: int, sample: int, seed: int) -> None:
    """In the child: build everything, then count ``name`` alone."""
    rng = random.Random(seed)
    day = synthetic_day(corpus_docs(), size=1000, rng=rng)
    filters = make_filters(day, count=subscribers * 3, rng=rng)
    for q in set(filters):
        compile_filter(q)  # done when filters are stored
    readers = [filters[i : i + 3] for i in range(0, len(filters), 3)]
    scorer, topics = score_setup(DayIndex(day), day, readers)
    fresh = scorer()
    probe = random.Random(9).sample(range(len(topics)), min(sample, len(topics)))
    gc.collect()
    with rare_collections():
        counting(True)
        if name == "score":
            planned(fresh, topics, lambda s, rs: [m for _, m in s.order_many(rs)])
        else:
            for k in probe:
                fresh.decide(topics[k], within=None)
        counting(False)


def counting(on: bool) -> None:
    subprocess.run(
        ["callgrind_control", "--instr=on" if on else "--instr=off", str(os.getpid())],
        check=True,
        capture_output=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subscribers", type=int, default=10_000)
    parser.add_argument("--sample", type=int, default=100, help="subscribers for the reference")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--stage", choices=STAGES, help=argparse.SUPPRESS)  # in a child
    args = parser.parse_args()
    if args.stage:
        stage(args.stage, args.subscribers, args.sample, args.seed)
        return
    if not (shutil.which("valgrind") and shutil.which("callgrind_control")):
        raise SystemExit("bench/instructions.py: needs valgrind (apt-get install valgrind)")
    counts = {}
    with tempfile.TemporaryDirectory() as tmp:
        children = {}
        for name in STAGES:
            log = Path(tmp) / f"{name}.log"
            command = [
                "valgrind", "--tool=callgrind", "--instr-atstart=no",
                f"--callgrind-out-file={tmp}/{name}.out", f"--log-file={log}",
                sys.executable, __file__, "--stage", name,
                f"--subscribers={args.subscribers}", f"--sample={args.sample}",
                f"--seed={args.seed}",
            ]  # fmt: skip
            children[name] = (subprocess.Popen(command), log)
        for name, (child, log) in children.items():
            if child.wait() != 0:
                failed = log.read_text()
                raise SystemExit(f"bench/instructions.py: the {name} stage failed:\n{failed}")
            found = re.search(r"Collected : (\d+)", log.read_text())
            if found is None:
                raise SystemExit(f"bench/instructions.py: no count in {log.read_text()}")
            counts[name] = int(found.group(1))
    sample = min(args.sample, args.subscribers)
    score = counts["score"] / args.subscribers
    plain = counts["plain"] / sample
    print(f"synthetic day: 1000 papers, {args.subscribers:,} subscribers x 3 filters (worst case)")
    print(
        f"  score  {counts['score'] / 1e9:8.2f} G instructions   {score / 1e6:6.2f} M a subscriber"
    )
    print(
        f"  plain  {counts['plain'] / 1e9:8.2f} G instructions   {plain / 1e6:6.2f} M a subscriber"
        f"   ({sample:,} subscribers; {plain / score:.1f}x score)"
    )


if __name__ == "__main__":
    main()

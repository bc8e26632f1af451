"""Benchmark: how well what a digest includes matches what a reader judged relevant.

Run: .venv/bin/python bench/relevance.py [--topics PATH ...] [--per-topic] [--feedback] [--cross]
                                      [--oracle]

Hand-judged topics (default ../shared/relevance/dev_topics.json; --topics may be given
more than once): each has a filter, perhaps a sentence about it ("about"), and the
titles of the sample-corpus papers that belong (main subject or a substantial
contribution). What a file holds that cannot be used is named (file, topic, field).
The bundled corpus is ingested and embedded in a temporary database, then for every
topic the papers each method includes are compared with the judgement:

  filter     every paper the boolean filter matches (what digests held before)
  lexical    the calibrated score without meaning (no topic vectors), dial step 3
  dial N     the calibrated score with meaning, at each dial step (3 is the default)

Micro precision and recall count every (topic, paper) decision together; macro
averages the per-topic figures. Except with --cross, nothing here is fitted: the
constants are those in newsletter/relevance/score.py, the same for every topic.

With --cross, each topic is left out in turn: the default step's constants (ALPHA, its
threshold, its meaning's entry) are chosen on the other topics from a grid (best micro
F1), then the topic left out is judged with them: what topics held apart from the
choice can expect (the grid holds the shipped constants; their figures must come out
as "dial 3" above, or the benchmark stops).

With --oracle, each topic is given a line chosen with the labels (at the default step's
scores), the lines chosen together for the best micro figures: not label-free, so no
digest can do it, but the most that placing the lines, per topic or globally, could
reach; what is missing above it is the scores' order, not where the lines fall.

With --feedback, a simulated reader then teaches each topic: day by day (one page dump
is one day) the digest shows the day's top DIGEST papers the topic includes and the
two it asks about ("not sure this is for you": the closest below the line, as a real
digest picks them); the reader marks each "more like this" when it is relevant, "not
for me" when it is not. After 5, 10, 20 and 30 votes the taught topic
is scored again, at the default step, on all papers and on the papers not voted on
(there beside the cold score on the same papers).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from sqlmodel import select

from newsletter import db
from newsletter.corpus.ingest import ingest
from newsletter.corpus.keys import canonical_key
from newsletter.embed.store import embed_papers, ensure_topic_vectors
from newsletter.errors import FilterSyntaxError
from newsletter.filters import compile_filter
from newsletter.models import Paper
from newsletter.relevance import DEFAULT_DIAL, DIAL, Step, Topic
from newsletter.relevance.day import day_scorer, text_of
from newsletter.relevance.decisions import ALPHA, decide

ROOT = Path(__file__).resolve().parent.parent
CORPUS = ROOT / "corpus"
DEV = ROOT.parent / "shared" / "relevance" / "dev_topics.json"


def prf(chosen: set[int], relevant: set[int]) -> tuple[int, int, int]:
    return len(chosen & relevant), len(chosen - relevant), len(relevant - chosen)


def line(label: str, counts: list[tuple[str, int, int, int]]) -> str:
    tp = sum(c[1] for c in counts)
    fp = sum(c[2] for c in counts)
    fn = sum(c[3] for c in counts)
    p = tp / (tp + fp) if tp + fp else 1.0
    r = tp / (tp + fn) if tp + fn else 1.0
    mp = sum(c[1] / (c[1] + c[2]) if c[1] + c[2] else 1.0 for c in counts) / len(counts)
    mr = sum(c[1] / (c[1] + c[3]) if c[1] + c[3] else 1.0 for c in counts) / len(counts)
    f1 = 2 * p * r / (p + r) if p + r else 0.0
    return f"{label:12s} micro P {p:.2f} R {r:.2f} F1 {f1:.2f}   macro P {mp:.2f} R {mr:.2f}"


DIGEST = 10
CHECKPOINTS = (5, 10, 20, 30)


def simulate(scorer, topic: Topic, relevant: set[int], days: list[list[int]]):  # type: ignore[no-untyped-def]
    """The votes a reader gives, in order: (paper id, +1 or -1), up to the last checkpoint."""
    position = {int(pid): i for i, pid in enumerate(scorer.ranker.ids)}
    votes: dict[int, int] = {}
    rounds = [*days, [pid for day in days for pid in day]]  # then anything left unvoted
    for day in rounds:
        if len(votes) >= CHECKPOINTS[-1]:
            break
        bits = sum(1 << position[pid] for pid in day if pid not in votes)
        taught = Topic(topic.query, topic.about, tuple(sorted(votes.items())))
        picked = scorer.pick([taught], within=bits, limit=DIGEST, dial=DEFAULT_DIAL)
        for m in (*picked.matches, *picked.unsure):  # what the digest shows and asks about
            if len(votes) < CHECKPOINTS[-1]:
                votes[m.paper_id] = 1 if m.paper_id in relevant else -1
    return list(votes.items())


def feedback_rows(scorer, asked: dict[str, Topic], judged, days):  # type: ignore[no-untyped-def]
    """Per checkpoint: (topic, tp, fp, fn) on all papers, taught and cold on unvoted."""
    rows: dict[str, list[tuple[str, int, int, int]]] = {}
    for name, relevant in judged.items():
        topic = asked[name]
        votes = simulate(scorer, topic, relevant, days)
        cold = {m.paper_id for m in scorer.pick([topic], within=None, limit=10**6).matches}
        for n in CHECKPOINTS:
            given = dict(votes[:n])
            taught = Topic(topic.query, topic.about, tuple(sorted(given.items())))
            chosen = {m.paper_id for m in scorer.pick([taught], within=None, limit=10**6).matches}
            left = relevant - set(given)
            rows.setdefault(f"{n} votes", []).append((name, *prf(chosen, relevant)))
            rows.setdefault(f"{n} unvoted", []).append((name, *prf(chosen - set(given), left)))
            rows.setdefault(f"{n} cold", []).append((name, *prf(cold - set(given), left)))
    return rows


class JudgedError(Exception):
    """A judged-topics file the benchmark cannot use, naming the file, topic and field."""


def load_judged(paths: list[Path]) -> dict[str, tuple[Topic, list[str], Path]]:
    """Each judged topic: (its Topic, the titles that belong, its file). A topic needs a
    filter that parses and a list of titles; its sentence ("about") is optional, as it
    is for a reader (the filter's words stand in)."""
    out: dict[str, tuple[Topic, list[str], Path]] = {}
    for path in paths:
        try:
            topics = json.loads(path.read_text(encoding="utf-8"))["topics"]
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise JudgedError(f"{path}: not a judged-topics file ({e!r})") from None
        if not isinstance(topics, dict):
            raise JudgedError(f'{path}: "topics" must map names to topics')
        for name, t in topics.items():
            where = f"{path}: topic {name}"
            if name in out:
                raise JudgedError(f"{where}: also in {out[name][2]}")
            query, about, relevant = (t.get(k) if isinstance(t, dict) else None for k in (
                "filter", "about", "relevant"))  # fmt: skip
            if not isinstance(query, str):
                raise JudgedError(f'{where}: "filter" must be a string')
            try:
                compile_filter(query)
            except FilterSyntaxError as e:
                raise JudgedError(f'{where}: "filter": {e}') from None
            if about is not None and not isinstance(about, str):
                raise JudgedError(f'{where}: "about" must be a string or absent')
            if not isinstance(relevant, list) or not all(isinstance(x, str) for x in relevant):
                raise JudgedError(f'{where}: "relevant" must be a list of titles')
            if not relevant:  # recall would mean nothing
                raise JudgedError(f'{where}: "relevant" names no paper')
            out[name] = (Topic(query, about or None), relevant, path)
        if not topics:
            raise JudgedError(f"{path}: holds no topic")
    return out


def judged_ids(
    judged: dict[str, tuple[Topic, list[str], Path]], by_key: dict[str, int]
) -> dict[str, set[int]]:
    """The ids of each topic's relevant papers; a title not in the corpus stops the
    benchmark (it cannot be judged, and counting it missed would lower recall)."""
    out = {}
    for name, (_, titles, path) in sorted(judged.items()):
        missing = [x for x in titles if canonical_key(x) not in by_key]
        if missing:
            raise JudgedError(
                f"{path}: topic {name}: {len(missing)} judged title(s) not in the sample "
                f"corpus: {', '.join(repr(x) for x in missing[:3])}"
            )
        out[name] = {by_key[canonical_key(x)] for x in titles}
    return out


# --cross: the grid the default step's constants are chosen from, on all topics but one
ALPHAS = (0.1, 0.15, 0.2, 0.25, 0.3)
THRESHOLDS = tuple(round(0.3 + 0.05 * k, 2) for k in range(13))  # 0.30 .. 0.90
ENTERS = tuple(2.0 + 0.25 * k for k in range(9))  # 2.0 .. 4.0


def oracle_rows(scorer, asked: dict[str, Topic], judged) -> list[str]:  # type: ignore[no-untyped-def]
    """A line per topic, at the default step's scores (its meaning's entry as shipped),
    chosen with the labels: not label-free, so not something a digest can do, but the
    most that placing the lines could reach on these scores. The lines are chosen
    together, since a micro figure pools the topics: one recall traded for another can
    pay. Two rows: the lines with the best micro F1, and those with the best micro
    precision at micro recall 0.80 or more (none: the most recall there is)."""
    ids = scorer.ranker.ids
    enter = DIAL[DEFAULT_DIAL].enter
    options: dict[str, list[tuple[int, int, int]]] = {}
    for name, relevant in judged.items():
        rows = scorer.topic(asked[name]).rows()
        tried = set()
        for threshold in [*np.unique(rows.fused[rows.matched]), np.inf]:
            d = decide(rows, Step("", float(threshold), enter))
            tried.add(prf({int(ids[i]) for i in np.flatnonzero(d.inside[0])}, relevant))
        options[name] = sorted(tried)
    # For each pooled count of papers rightly in, the fewest wrongly in, and the lines
    # (one option per topic) that get them: exact over every combination of lines.
    fewest: dict[int, tuple[int, list[tuple[str, int, int, int]]]] = {0: (0, [])}
    for name, tried in options.items():
        step: dict[int, tuple[int, list[tuple[str, int, int, int]]]] = {}
        for tp, (fp, chosen) in fewest.items():
            for c in tried:
                at = tp + c[0]
                if at not in step or fp + c[1] < step[at][0]:
                    step[at] = (fp + c[1], [*chosen, (name, *c)])
        fewest = step
    wanted = sum(len(r) for r in judged.values())

    def f1(tp: int) -> float:
        return 2 * tp / (2 * tp + fewest[tp][0] + wanted - tp)

    best_f1 = fewest[max(fewest, key=f1)][1]
    enough = [tp for tp in fewest if tp >= 0.8 * wanted] or [max(fewest)]
    best_p = fewest[max(enough, key=lambda tp: tp / (tp + fewest[tp][0] or 1))][1]
    return [
        line("oracle F1", best_f1) + "  (the lines fitted to the labels: not label-free)",
        line("oracle R.80", best_p) + "  (the same, best precision at recall >= 0.80)",
    ]


def cross_rows(scorer, asked: dict[str, Topic], judged, default) -> list[str]:  # type: ignore[no-untyped-def]
    """Leave one topic out: the default step's constants (ALPHA, its threshold and its
    meaning's entry) chosen on the other topics (best micro F1 over the grid), then
    judged on the one left out. What held-apart topics can expect of constants chosen
    on labelled ones, beside what the same choice scores on the topics it was made on."""
    ids = scorer.ranker.ids
    grid = [(a, t, e) for a in ALPHAS for t in THRESHOLDS for e in ENTERS]
    counts: dict[tuple[float, float, float], dict[str, tuple[int, int, int]]] = {}
    for name, relevant in judged.items():
        rows = scorer.topic(asked[name]).rows()
        for alpha, threshold, enter in grid:
            fused = rows.lexical + alpha * rows.semantic + rows.shift
            d = decide(replace(rows, fused=fused), Step("", threshold, enter))
            chosen = {int(ids[i]) for i in np.flatnonzero(d.inside[0])}
            counts.setdefault((alpha, threshold, enter), {})[name] = prf(chosen, relevant)

    step = DIAL[DEFAULT_DIAL]  # the grid holds the default step: the same papers, or no figure
    shipped = (ALPHA, step.threshold, step.enter)
    if shipped not in counts:
        raise SystemExit(f"bench/relevance.py: the grid lacks the shipped constants {shipped}")
    if [(n, *counts[shipped][n]) for n in judged] != default:
        raise SystemExit("bench/relevance.py: the grid's shipped constants differ from dial 3")

    def f1(names: list[str], at: tuple[float, float, float]) -> float:
        tp, fp, fn = (sum(counts[at][n][k] for n in names) for k in range(3))
        return 2 * tp / (2 * tp + fp + fn) if tp else 0.0

    out, held = [], []
    names = list(judged)
    for name in names:
        rest = [n for n in names if n != name]
        best = max(grid, key=lambda at: f1(rest, at))
        held.append((name, *counts[best][name]))
        out.append(f"    {name} left out: ALPHA {best[0]}, threshold {best[1]}, enter {best[2]}")
    every = max(grid, key=lambda at: f1(names, at))
    return [
        line("cross", held) + "  (each topic judged with constants chosen on the others)",
        line("best in grid", [(n, *counts[every][n]) for n in names])
        + f"  (ALPHA {every[0]}, threshold {every[1]}, enter {every[2]}: fitted to all)",
        *out,
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--topics", type=Path, action="append", help="judged topics (JSON)")
    parser.add_argument("--per-topic", action="store_true", help="print each topic's figures")
    parser.add_argument("--feedback", action="store_true", help="simulate a reader's votes")
    parser.add_argument(
        "--cross", action="store_true", help="the default step's constants, leave one topic out"
    )
    parser.add_argument(
        "--oracle", action="store_true", help="the lines fitted to the labels (an upper bound)"
    )
    args = parser.parse_args()
    files = args.topics or [DEV]
    try:
        topics = load_judged(files)
    except JudgedError as e:
        raise SystemExit(f"bench/relevance.py: {e}") from None
    if args.cross and len(topics) < 2:
        raise SystemExit("bench/relevance.py: --cross needs two topics or more")
    with tempfile.TemporaryDirectory() as tmp:
        engine = db.make_engine(f"sqlite:///{tmp}/bench.db")
        db.upgrade(engine=engine)
        now = datetime.now(UTC)
        ingest(engine=engine, paths=[CORPUS], now=now)
        started = time.perf_counter()
        report = embed_papers(engine=engine)
        print(f"embedded {report.embedded} papers in {time.perf_counter() - started:.1f} s")
        asked = {name: topic for name, (topic, _, _) in topics.items()}
        plain = {name: Topic(topic.query) for name, topic in asked.items()}
        ensure_topic_vectors(
            engine=engine, texts=[text_of(t) for t in [*asked.values(), *plain.values()]]
        )
        with db.session_scope(engine=engine) as session:
            papers = list(session.exec(select(Paper).order_by(Paper.first_seen_at, Paper.id)))
            by_key = {canonical_key(p.title): p.id for p in papers}
            scorer = day_scorer(
                session, papers=papers, now=now, topics=[*asked.values(), *plain.values()]
            )
            blind = day_scorer(session, papers=papers, now=now, topics=[])  # no topic vectors
            days: dict[str, list[int]] = {}
            for p in papers:
                days.setdefault(p.source_file, []).append(p.id)  # type: ignore[arg-type]
        rows: dict[str, list[tuple[str, int, int, int]]] = {}
        try:
            judged = judged_ids(topics, by_key)
        except JudgedError as e:
            raise SystemExit(f"bench/relevance.py: {e}") from None
        for name, relevant in judged.items():
            scores = scorer.topic(asked[name])
            matched = {int(scorer.ranker.ids[i]) for i in scores.matched.nonzero()[0]}
            rows.setdefault("filter", []).append((name, *prf(matched, relevant)))
            lexical = blind.pick([asked[name]], within=None, limit=10**6, dial=DEFAULT_DIAL)
            rows.setdefault("lexical", []).append(
                (name, *prf({m.paper_id for m in lexical.matches}, relevant))
            )
            for step in DIAL:
                picked = scorer.pick([asked[name]], within=None, limit=10**6, dial=step)
                rows.setdefault(f"dial {step}", []).append(
                    (name, *prf({m.paper_id for m in picked.matches}, relevant))
                )
            no_about = scorer.pick([plain[name]], within=None, limit=10**6, dial=DEFAULT_DIAL)
            rows.setdefault("no sentence", []).append(
                (name, *prf({m.paper_id for m in no_about.matches}, relevant))
            )
        if args.feedback:
            vectors, present = scorer.vectors, scorer.present
            scorer.voted = {
                int(pid): vectors[i]  # type: ignore[index]
                for i, pid in enumerate(scorer.ranker.ids)
                if present[i]  # type: ignore[index]
            }
            rows |= feedback_rows(scorer, asked, judged, [days[k] for k in sorted(days)])
        print(f"{len(topics)} topics from {', '.join(str(f) for f in files)}; {len(papers)} papers")
        for label, counts in rows.items():
            note = "  (default)" if label == f"dial {DEFAULT_DIAL}" else ""
            print(line(label, counts) + note)
            if args.per_topic:
                for name, tp, fp, fn in counts:
                    p = tp / (tp + fp) if tp + fp else 1.0
                    r = tp / (tp + fn)
                    print(f"    {name}  P {p:.2f} R {r:.2f}  ({tp} of {tp + fn}, {fp} wrong)")
        if args.oracle:
            print("\n".join(oracle_rows(scorer, asked, judged)))
        if args.cross:
            print("\n".join(cross_rows(scorer, asked, judged, rows[f"dial {DEFAULT_DIAL}"])))


if __name__ == "__main__":
    main()

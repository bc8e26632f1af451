"""bench/relevance.py as whoever accepts the work runs it: on judged topics held apart,
from a file of their own. What it cannot use, it names (file, topic, field); a topic
without a sentence is measured as a reader without one is served."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench" / "relevance.py"
TITLES = [  # from the bundled corpus
    "Self-Consistency Improves Chain of Thought Reasoning in Language Models",
    "BadChain: Backdoor Chain-of-Thought Prompting for Large Language Models",
]


def run(tmp_path: Path, topics: object, *flags: str) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "held.json"
    path.write_text(json.dumps({"topics": topics}))
    return subprocess.run(
        [sys.executable, str(BENCH), "--topics", str(path), *flags],
        capture_output=True, text=True, cwd=ROOT, timeout=300, check=False,
    )  # fmt: skip


def test_a_held_apart_topic_without_a_sentence_is_measured(tmp_path: Path) -> None:
    done = run(tmp_path, {"H1": {"filter": '"chain of thought"', "relevant": TITLES}})
    assert done.returncode == 0, done.stderr
    assert "1 topics from" in done.stdout
    lines = {line[:12].strip(): line[12:] for line in done.stdout.splitlines()}
    assert float(lines["dial 3"].split(" R ")[1].split()[0]) == 1.0  # both title the phrase
    assert lines["no sentence"] == lines["dial 3"].removesuffix("  (default)")


def test_what_the_benchmark_cannot_use_is_named(tmp_path: Path) -> None:
    bad_filter = run(tmp_path, {"H2": {"filter": "speech AND (audio", "relevant": TITLES}})
    assert bad_filter.returncode != 0
    assert 'held.json: topic H2: "filter": column 12' in bad_filter.stderr
    missing = run(tmp_path, {"H3": {"filter": "speech", "relevant": [*TITLES, "No Such Paper"]}})
    assert missing.returncode != 0
    assert "topic H3: 1 judged title(s) not in the sample corpus: 'No Such Paper'" in (
        missing.stderr
    )
    wrong = run(tmp_path, {"H4": {"filter": "speech", "relevant": "Speech papers"}})
    assert wrong.returncode != 0
    assert 'topic H4: "relevant" must be a list of titles' in wrong.stderr
    empty = run(tmp_path, {"H5": {"filter": "speech", "relevant": []}})
    assert empty.returncode != 0
    assert 'topic H5: "relevant" names no paper' in empty.stderr
    alone = run(tmp_path, {"H6": {"filter": "speech", "relevant": TITLES}}, "--cross")
    assert alone.returncode != 0
    assert "--cross needs two topics or more" in alone.stderr
    refused = bad_filter.stderr + missing.stderr + wrong.stderr + empty.stderr + alone.stderr
    assert "Traceback" not in refused


def test_the_oracle_line_is_at_least_the_shipped_one(tmp_path: Path) -> None:
    """--oracle fits the topics' lines to their labels, together: an upper bound on
    placing lines, so never below the default step (its lines are one of the choices),
    and the recall-0.80 row does reach 0.80 where the filters can."""
    topics = {
        "H7": {"filter": '"chain of thought"', "relevant": TITLES},
        "H8": {"filter": "reasoning", "relevant": TITLES},  # broad: most matches are wrong
    }
    done = run(tmp_path, topics, "--oracle", "--per-topic")
    assert done.returncode == 0, done.stderr
    lines = {line[:12].strip(): line[12:] for line in done.stdout.splitlines()}

    def figure(label: str, name: str) -> float:
        return float(lines[label].split(f" {name} ")[1].split()[0])

    assert figure("oracle F1", "F1") >= figure("dial 3", "F1")
    assert figure("oracle F1", "F1") > figure("dial 5", "F1")  # the broad topic's line moves
    assert figure("oracle R.80", "R") >= 0.80

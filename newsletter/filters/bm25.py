"""BM25F's parameters and corpus statistics: what ranking weighs words with."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from newsletter.filters.docs import PaperDoc, analyse

if TYPE_CHECKING:
    from newsletter.filters.index import DayIndex

TITLE_BOOST = 3.0  # a word in the title says more about a paper than one in its abstract
K1, B = 1.2, 0.75  # BM25's term saturation and length normalisation, the usual values


@dataclass(frozen=True, slots=True)
class CorpusStats:
    """Document frequencies for BM25's idf: rarer words weigh more."""

    n: int
    df: dict[str, int]
    avg_len: float

    @classmethod
    def of(cls, index: DayIndex) -> CorpusStats:
        return _stats((f["title"].stems, f["abstract"].stems) for f in index.fields)

    def idf(self, stem_key: str) -> float:
        df = self.df.get(stem_key, 0)
        return math.log(1 + (self.n - df + 0.5) / (df + 0.5))


def corpus_stats(docs: Iterable[PaperDoc]) -> CorpusStats:
    """The statistics of a set of papers without indexing them (the reference window)."""
    return _stats((analyse(d.title).stems, analyse(d.abstract).stems) for d in docs)


def _stats(papers: Iterable[tuple[list[str], list[str]]]) -> CorpusStats:
    """From each paper's (title stems, abstract stems)."""
    df: Counter[str] = Counter()
    total, n = 0.0, 0
    for title, abstract in papers:
        df.update(set(title) | set(abstract))
        total += TITLE_BOOST * len(title) + len(abstract)
        n += 1
    return CorpusStats(n=n, df=dict(df), avg_len=(total / n) if n else 1.0)

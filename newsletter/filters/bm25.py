"""BM25F's parameters and corpus statistics: what ranking weighs words with."""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING

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
        df: Counter[str] = Counter()
        total = 0.0
        for fields in index.fields:
            df.update(set(fields["title"].stems) | set(fields["abstract"].stems))
            total += TITLE_BOOST * len(fields["title"].stems) + len(fields["abstract"].stems)
        return cls(n=index.n, df=dict(df), avg_len=(total / index.n) if index.n else 1.0)

    def idf(self, stem_key: str) -> float:
        df = self.df.get(stem_key, 0)
        return math.log(1 + (self.n - df + 0.5) / (df + 0.5))

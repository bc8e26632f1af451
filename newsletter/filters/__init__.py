"""Topic filters: the language, the indexed matcher, ranking and explanations.

``compile_filter`` parses a stored filter once (``FilterSyntaxError`` with a
column when it does not parse); ``DayIndex`` indexes a batch of papers;
``Ranker`` matches and ranks a subscriber's filters against it.
"""

from newsletter.filters.ast import to_query
from newsletter.filters.bm25 import CorpusStats
from newsletter.filters.docs import PaperDoc
from newsletter.filters.index import DayIndex
from newsletter.filters.parser import parse_filter
from newsletter.filters.rank import CompiledFilter, PaperMatch, Ranked, Ranker, compile_filter

__all__ = [
    "CompiledFilter",
    "CorpusStats",
    "DayIndex",
    "PaperDoc",
    "PaperMatch",
    "Ranked",
    "Ranker",
    "compile_filter",
    "parse_filter",
    "to_query",
]

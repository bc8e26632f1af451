"""Topic filters: the query a subscriber stores, compiled once, matched against papers.

The rest of the package uses only ``compile_topic``, ``Document`` and
``CompiledTopic.match``; the filter language behind them can grow without
the planner noticing.
"""

from newsletter.filters.simple import CompiledTopic, Document, compile_topic

__all__ = ["CompiledTopic", "Document", "compile_topic"]

"""Embeddings: the sentence encoder (``encoder``) and the vectors stored per paper and per
topic (``store``). ``catch_up`` is what the service's ingest and planning jobs run:
whatever has no current vector gets one."""

from __future__ import annotations

import logging
from collections.abc import Callable

import sqlalchemy as sa

from newsletter.embed.encoder import MODEL_NAME, ModelMissingError
from newsletter.embed.store import EmbedReport, embed_papers, embed_topics

log = logging.getLogger(__name__)


def catch_up(
    *, engine: sa.Engine, on_progress: Callable[[int, int], None] | None = None
) -> EmbedReport | None:
    """Embed the papers and topics that have no current vector; None (and a warning)
    when the model is not installed: digests are then decided on the filters' words.
    Run at every planning tick: only papers new or changed since their vector are read
    (``embed_papers``' ``every_text``)."""
    try:
        report = embed_papers(engine=engine, every_text=False, on_progress=on_progress)
        report.topics = embed_topics(engine=engine)
    except ModelMissingError as exc:
        log.warning("meaning is off: %s", exc)
        return None
    return report


__all__ = [
    "MODEL_NAME",
    "EmbedReport",
    "ModelMissingError",
    "catch_up",
    "embed_papers",
    "embed_topics",
]

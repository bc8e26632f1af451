"""The size budget: a digest's HTML stays under Gmail's clipping point, whatever it holds."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

from newsletter.render.content import Digest
from newsletter.render.mime import RenderedDigest

HTML_BUDGET = 95_000  # bytes of HTML: Gmail clips at 102 kB and hides what follows


def within_budget(digest: Digest, render: Callable[[Digest], RenderedDigest]) -> RenderedDigest:
    """``render(digest)``, with papers moved to the "N more" count (the last first, so
    the best stay) until the HTML fits ``HTML_BUDGET``: the footer's unsubscribe link
    stays above the clip."""
    rendered = render(digest)
    keep = len(digest.papers)
    while keep > 1 and rendered.html_part.size > HTML_BUDGET:
        keep = max(1, keep * HTML_BUDGET // rendered.html_part.size - 1)
        # Into the count go the papers the topics let in, not those it asks about.
        dropped = sum(1 for p in digest.papers[keep:] if not p.unsure)
        fewer = replace(digest, papers=digest.papers[:keep], more_count=digest.more_count + dropped)
        rendered = render(fewer)
    return rendered

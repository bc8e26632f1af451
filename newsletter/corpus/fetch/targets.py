"""What one run asks: a live source's URLs (``Target``) for the configured sources and days."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date, timedelta
from urllib.parse import urlencode, urlsplit

from newsletter.config import Settings
from newsletter.errors import NewsletterError

MAX_SINCE_DAYS = 31
"""How far back ``since`` may reach (one request per day, category and source)."""
ARXIV_API_MAX_RESULTS = 1000
"""Papers asked of the arXiv API per category and day (a busy day has a few hundred)."""

_SUFFIX = {"daily_papers": ".json", "rss": ".rss", "api": ".atom"}
_UNSAFE_NAME_RE = re.compile(r"[^A-Za-z0-9._-]")


@dataclass(frozen=True, slots=True)
class Target:
    """One URL of a live source, and where its answer is kept."""

    name: str
    """Its ``source_state`` row: ``daily_papers:2026-11-27``, ``arxiv:cs.CL``..."""
    kind: str
    """What the answer must be: ``daily_papers`` or ``arxiv`` (``sources.KINDS``)."""
    url: str
    file: str
    """The saved answer's name under ``data/fetched/<kind>/``."""

    @property
    def host(self) -> str:
        return urlsplit(self.url).netloc.lower()


def _safe(name: str) -> str:
    return _UNSAFE_NAME_RE.sub("_", name)


def _with_query(url: str, query: str) -> str:
    return f"{url}{'&' if urlsplit(url).query else '?'}{query}"


def days_since(*, since: date | None, today: date) -> list[date]:
    """``since`` to ``today``, both included (just today without ``since``)."""
    if since is None:
        return [today]
    if since > today:
        raise NewsletterError(f"--since {since} is after today ({today}, UTC)")
    if (today - since).days >= MAX_SINCE_DAYS:
        raise NewsletterError(
            f"--since {since} reaches back more than {MAX_SINCE_DAYS} days; fetch in parts"
        )
    return [since + timedelta(days=n) for n in range((today - since).days + 1)]


def plan_targets(*, settings: Settings, today: date, since: date | None = None) -> list[Target]:
    """The URLs one run asks, in order: Daily Papers days, then arXiv by category."""
    days = days_since(since=since, today=today)
    targets: list[Target] = []
    if "daily_papers" in settings.live_sources:
        for day in days:
            url = _with_query(settings.daily_papers_url, f"date={day.isoformat()}")
            targets.append(Target(f"daily_papers:{day}", "daily_papers", url, f"{day}.json"))
    if "arxiv" in settings.live_sources:
        for category in settings.arxiv_categories:
            if since is None:
                base = settings.arxiv_rss_url
                url = f"{base}{category}" if base.endswith("/") else f"{base}/{category}"
                name = f"rss_{_safe(category)}_{today}{_SUFFIX['rss']}"
                targets.append(Target(f"arxiv:{category}", "arxiv", url, name))
                continue
            for day in days:
                stamp = f"{day:%Y%m%d}"
                query = urlencode(
                    {
                        "search_query": f"cat:{category} AND "
                        f"submittedDate:[{stamp}0000 TO {stamp}2359]",
                        "sortBy": "submittedDate",
                        "sortOrder": "descending",
                        "start": 0,
                        "max_results": ARXIV_API_MAX_RESULTS,
                    }
                )
                url = _with_query(settings.arxiv_api_url, query)
                name = f"query_{_safe(category)}_{day}{_SUFFIX['api']}"
                targets.append(Target(f"arxiv:{category}:{day}", "arxiv", url, name))
    return targets

"""Where a reader opens a paper: its page, its PDF, its code and its project page.

A paper with an arXiv id links to ``https://arxiv.org/abs/ID`` and its PDF; one
without (the page dumps carry none) links to arXiv's title search, which finds it.
Code and project pages are whatever a source named, kept only when they are plain
http(s) URLs (they reach HTML attributes and the plain-text part).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import quote_plus

ARXIV = "https://arxiv.org"
# Printable ASCII but spaces, double quotes, angle brackets and backslashes (a browser reads a
# backslash as "/", and MJML rewrites one in an attribute: the two renderers disagreed).
_URL_RE = re.compile(r"https?://[A-Za-z0-9.-]+(?::[0-9]{1,5})?(?:/[!#-;=?-\[\]-~]*)?")
_ARXIV_ID_RE = re.compile(r"(?:[0-9]{4}\.[0-9]{4,5}|[a-z-]+(?:\.[A-Z]{2})?/[0-9]{7})")
# An owner has no dot (GitHub allows none): "gitlab.com/owner" is no GitHub repository.
_REPO = r"[A-Za-z0-9_-]+/[A-Za-z0-9_.-]*[A-Za-z0-9_-]"
# A repository as a source names one: owner/repo, or its URL (with or without a scheme)
_GITHUB_RE = re.compile(rf"(?:(?:https?://)?(?:www\.)?github\.com/)?({_REPO})/?", re.I)
# ... or, without a scheme, a place in it ("github.com/o/r/tree/main"): its root
_GITHUB_PLACE_RE = re.compile(rf"(?:www\.)?github\.com/({_REPO})[/?#].*", re.I)
_GITHUB_IN_TEXT_RE = re.compile(rf"https?://(?:www\.)?github\.com/({_REPO})")


@dataclass(frozen=True, slots=True)
class PaperLinks:
    page: str
    pdf: str | None = None
    code: str | None = None
    project: str | None = None


def safe_url(value: str | None) -> str | None:
    """``value`` when it is one plain http(s) URL (no spaces, quotes or angle brackets)."""
    if not value:
        return None
    value = value.strip()
    scheme, sep, rest = value.partition("://")
    if sep and scheme.lower() in ("http", "https"):
        value = f"{scheme.lower()}://{rest}"  # "HTTPS://" is the same URL
    return value if len(value) <= 500 and _URL_RE.fullmatch(value) else None


def code_url(value: str | None) -> str | None:
    """A code link: a GitHub repository named as ``owner/repo`` or as a URL, or any
    plain URL a source gave."""
    if not value:
        return None
    value = value.strip()
    found = _GITHUB_RE.fullmatch(value)
    if found is None and safe_url(value) is None:
        found = _GITHUB_PLACE_RE.fullmatch(value)
    if found is not None:
        return f"https://github.com/{found.group(1).removesuffix('.git')}"
    return safe_url(value)


def github_in_text(text: str) -> str | None:
    """The first GitHub repository an abstract or a comment names ("Code is available
    at https://github.com/o/r.")."""
    found = _GITHUB_IN_TEXT_RE.search(text)
    return code_url(found[1]) if found else None


def is_arxiv_id(value: str | None) -> bool:
    return bool(value) and _ARXIV_ID_RE.fullmatch(value) is not None  # type: ignore[arg-type]


def paper_links(
    *,
    title: str,
    arxiv_id: str | None = None,
    code: str | None = None,
    project: str | None = None,
) -> PaperLinks:
    if arxiv_id and is_arxiv_id(arxiv_id):
        page, pdf = f"{ARXIV}/abs/{arxiv_id}", f"{ARXIV}/pdf/{arxiv_id}"
    else:
        page, pdf = f"{ARXIV}/search/?query={quote_plus(title[:300])}&searchtype=title", None
    return PaperLinks(page=page, pdf=pdf, code=code_url(code), project=safe_url(project))

"""A paper's links as both parts show them: a line of anchors in the HTML, one URL per
line in the text part. Which links a paper has is decided in ``newsletter.paper_links``.
Under each paper, the reader's two votes: "More like this" and "Not for me" (a page
that asks for one tap; opening the link records nothing)."""

from __future__ import annotations

import functools

from markupsafe import Markup, escape

from newsletter.paper_links import PaperLinks, paper_links
from newsletter.render.content import DigestPaper, clean
from newsletter.text import latex_to_text

LINK_STYLE = "color:#0b3d91;text-decoration:underline;"


@functools.lru_cache(maxsize=20_000)
def links_for(
    title: str, arxiv_id: str | None, code: str | None, project: str | None
) -> PaperLinks:
    return paper_links(
        title=clean(latex_to_text(title)), arxiv_id=arxiv_id, code=code, project=project
    )


def links_of(paper: DigestPaper) -> PaperLinks:
    """Where the reader opens the paper: its arXiv page (a title search when no source gave
    an id), its PDF, its code and its project page."""
    return links_for(paper.title, paper.arxiv_id, paper.code_url, paper.project_url)


def link_list(links: PaperLinks) -> list[tuple[str, str]]:
    """(label, URL) of each link, in the order both parts show them."""
    found = [("arXiv" if links.pdf else "Find on arXiv", links.page)]
    found += [(label, url) for label, url in (
        ("PDF", links.pdf), ("Code", links.code), ("Project page", links.project)
    ) if url]  # fmt: skip
    return found


def links_html(links: PaperLinks) -> Markup:
    """The paper's links as one line of anchors; every URL and label escaped."""
    return Markup(" · ").join(
        Markup('<a href="{}" style="{}">{}</a>').format(url, LINK_STYLE, label)
        for label, url in link_list(links)
    )


def links_text(links: PaperLinks) -> str:
    """The links in the text part: one per line, each URL whole on its line (text
    clients make a URL clickable only when nothing is glued to it)."""
    return "".join(f"    {label}: {url}\n" for label, url in link_list(links))


VOTES = (("up", "More like this"), ("down", "Not for me"))


def votes_html(url: str) -> Markup:
    """The vote links under a paper (``url`` is its vote page; "" for none)."""
    if not url:
        return Markup("")
    # One escape and plain string joins: this runs for every paper of every digest (the
    # labels and the style hold nothing to escape).
    href = escape(url)
    anchors = (f'<a href="{href}/{way}" style="{LINK_STYLE}">{label}</a>' for way, label in VOTES)
    return Markup(" · ".join(anchors))


def votes_text(url: str) -> str:
    """The vote links in the text part, one URL per line like the paper's links."""
    return "".join(f"    {label}: {url}/{way}\n" for way, label in VOTES) if url else ""

"""The plain renderer: every message through Jinja2 and MJML, nothing cached, no tricks.

It is what a digest *is*; the batch renderer (``batch.py``) must produce the same
subject, headers, text and HTML, byte for byte (tests/test_render_batch.py holds it
to that on the sample corpus and on random text). It also renders the messages that
are not worth compiling: confirmations, previews, the archive page.
"""

from __future__ import annotations

from pathlib import Path

from markupsafe import Markup, escape

from newsletter.render import content, mime
from newsletter.render.budget import within_budget
from newsletter.render.compiled import TEMPLATES_DIR, mjml_to_html, render_template
from newsletter.render.content import Confirmation, Digest, DigestPaper, Sender
from newsletter.render.headers import check_url, digest_headers, transactional_headers
from newsletter.render.links import links_html, links_of, links_text, votes_html, votes_text
from newsletter.render.mime import RenderedDigest


def paper_context(paper: DigestPaper, vote_url: str = "") -> dict[str, object]:
    """What ``paper.html.j2`` is given for one paper (``vote_url``: its vote page)."""
    title, excerpt = content.paper_texts(paper.title, paper.abstract, paper.nearest)
    links = links_of(paper)
    return {
        "title_html": content.highlight(title, paper.matched_terms),
        "page_url": links.page,
        "meta": content.meta_line(paper),
        "excerpt_html": content.excerpt_html(excerpt, paper.matched_terms, paper.nearest),
        "summary": content.summary_line(paper.summary),
        "links_html": links_html(links),
        "topics": content.topics_line(
            paper.matched_topics, paper.close_to, paper.liked, paper.unsure
        ),
        "votes_html": votes_html(vote_url),
    }


def papers_html(papers: tuple[DigestPaper, ...], root: Path, votes: tuple[str, ...] = ()) -> Markup:
    blocks = [
        render_template(root, "paper.html.j2", paper_context(p, votes[i] if i < len(votes) else ""))
        for i, p in enumerate(papers)
    ]
    return Markup("".join(blocks))  # safe: Jinja escaped every value in them


def papers_text(papers: tuple[DigestPaper, ...], votes: tuple[str, ...] = ()) -> str:
    """The papers in the text part: numbered, wrapped at 78 columns."""
    if not papers:
        return content.NO_PAPERS + "\n\n"
    return "".join(
        content.numbered(
            i,
            content.paper_text_head(
                p.title,
                p.abstract,
                content.meta_line(p),
                p.nearest,
                summary=content.summary_line(p.summary),
                links=links_text(links_of(p)),
            ),
        )
        + content.paper_text_tail(
            p.matched_topics,
            p.close_to,
            votes_text(votes[i - 1] if i <= len(votes) else ""),
            p.liked,
            p.unsure,
        )
        for i, p in enumerate(papers, 1)
    )


def digest_values(digest: Digest, sender: Sender, subject: str) -> dict[str, str]:
    """The digest's own values, as both templates show them (before escaping)."""
    shared = ranking_values(digest, sender, subject)
    return shared | reader_values(digest, shared)


def ranking_values(digest: Digest, sender: Sender, subject: str) -> dict[str, str]:
    """The values every reader of one ranking is shown alike: they come from the papers,
    the counts, the edition and the sender (the batch renderer keeps them per ranking)."""
    return {
        "subject": subject,
        "preview": content.preview(digest, subject),
        "brand": content.brand(sender),
        "edition": content.format_date(digest.edition),
        "headline": content.headline(digest),
        "more": content.more_line(digest) if digest.more_count > 0 else "",
        "near": content.near_line(digest),
        "topics": content.footer_note(content.footer_topics(digest.papers)),
    }


def reader_values(digest: Digest, shared: dict[str, str]) -> dict[str, str]:
    """The values that are the reader's own (``shared``: their ranking's)."""
    return {
        "to_name": content.clean(digest.to_name or ""),
        "to_address": content.clean(digest.to_address),
        "footer": content.footer_text(
            to_address=digest.to_address, brand_name=shared["brand"], note=shared["topics"]
        ),
        "archive_url": digest.archive_url,
        "preferences_url": digest.preferences_url,
        "unsubscribe_url": digest.unsubscribe_url,
    }


def render_digest(
    *, digest: Digest, sender: Sender, templates_dir: Path | None = None, budget: bool = True
) -> RenderedDigest:
    """Render the subject, HTML and text parts and the ordered, checked headers, within
    the size budget (an email's: a page in the browser, ``budget`` off, shows all)."""
    root = (templates_dir or TEMPLATES_DIR).resolve()
    if not budget:
        return _render(digest, sender, root)
    return within_budget(digest, lambda d: _render(d, sender, root))


def _render(digest: Digest, sender: Sender, root: Path) -> RenderedDigest:
    subject = content.subject(digest)
    headers = digest_headers(digest=digest, sender=sender, subject=subject)
    for name in ("preferences_url", "archive_url"):  # hrefs only, but must be http(s)
        check_url(name, getattr(digest, name))
    values = digest_values(digest, sender, subject)
    html_context = values | {
        "papers_html": papers_html(digest.papers, root, digest.votes)
        if digest.papers
        else escape(content.NO_PAPERS),
        "near_html": papers_html(digest.near_papers, root),
    }
    html = mjml_to_html(render_template(root, "digest.mjml.j2", html_context))
    text_context = values | {"papers_text": papers_text(digest.papers, digest.votes)}
    text = render_template(root, "digest.txt.j2", text_context)
    return RenderedDigest(subject, headers, mime.encode(text), mime.encode(html))


def render_confirmation(
    *, confirmation: Confirmation, sender: Sender, templates_dir: Path | None = None
) -> RenderedDigest:
    """Subject, HTML (MJML), text and headers of a double opt-in confirmation."""
    brand = content.brand(sender)
    subject = f"Confirm your subscription to {brand}"
    url = check_url("confirm_url", confirmation.confirm_url)
    headers = transactional_headers(confirmation=confirmation, sender=sender, subject=subject)
    root = (templates_dir or TEMPLATES_DIR).resolve()
    context = {
        "subject": subject,
        "preview": "One click to start receiving your digests",
        "brand": brand,
        "to_address": content.clean(confirmation.to_address),
        "confirm_url": url,
        "hours": f"{confirmation.expires_hours:g}",
    }
    html = mjml_to_html(render_template(root, "confirm.mjml.j2", context))
    text = render_template(root, "confirm.txt.j2", context).strip() + "\n"
    return RenderedDigest(subject, headers, mime.encode(text), mime.encode(html))

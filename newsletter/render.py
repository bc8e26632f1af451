"""Render one subscriber's digest: Jinja2 → MJML → HTML, a plain-text part, checked headers.

Pure stage: no database, no network. ``render_digest`` turns a ``Digest`` into a
``RenderedDigest`` (subject, html, text, ordered headers); ``to_mime_bytes`` turns that
into the RFC 5322 bytes a backend sends or writes to disk.

Two rules drive most of the code here:

* Everything user-supplied that reaches HTML is escaped. Templates autoescape, and the
  only pre-built markup (highlighted titles and excerpts) is assembled from escaped
  pieces as ``markupsafe.Markup``.
* Nothing user-supplied reaches a header unchecked. Addresses, names, URLs and the
  Message-ID raise ``HeaderInjectionError``; paper titles are data, so the subject is
  cleaned (whitespace collapsed, control characters dropped) instead.
"""

from __future__ import annotations

import functools
import hashlib
import re
import textwrap
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime
from email.headerregistry import Address, HeaderRegistry, UnstructuredHeader
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import format_datetime
from pathlib import Path
from typing import NamedTuple

import jinja2
from markupsafe import Markup, escape
from mjml import mjml2html

from newsletter.errors import NewsletterError
from newsletter.text import latex_to_text

__all__ = [
    "MARK_OPEN",
    "Digest",
    "DigestPaper",
    "HeaderInjectionError",
    "RenderError",
    "RenderedDigest",
    "Sender",
    "highlight",
    "latex_to_text",
    "render_digest",
    "to_mime_bytes",
]

TEMPLATES_DIR = Path(__file__).resolve().parent.parent / "templates"
SUBJECT_MAX = 110  # long enough for a real title, short enough for phone inbox lists
EXCERPT_CHARS = 400
TEXT_WIDTH = 78
ELLIPSIS = "…"
# <mark> says "this matched" to screen readers too; the inline colour keeps it visible
# in bold titles and in clients that drop <style> blocks.
MARK_OPEN = '<mark style="background-color:#fff0a8;color:inherit;">'


class RenderError(NewsletterError):
    """A template could not be loaded or rendered, or MJML rejected the generated markup."""


class HeaderInjectionError(NewsletterError, ValueError):
    """A header value is unsafe: control characters/line breaks, or it does not parse as
    exactly the one address / URL / message id the header needs."""


# --- inputs and output ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DigestPaper:
    title: str
    abstract: str
    authors: int | None = None  # author count
    organization: str | None = None  # e.g. "ZIP Lab"
    published_on: date | None = None
    upvotes: int | None = None
    matched_topics: tuple[str, ...] = ()  # the subscriber's filters that matched (user text)
    matched_terms: tuple[str, ...] = ()  # words/phrases that matched (lowercase), highlighted


@dataclass(frozen=True, slots=True)
class Digest:
    to_address: str  # already validated, normalized email
    to_name: str | None
    edition: date
    papers: tuple[DigestPaper, ...]  # best first, already capped
    more_count: int  # matched papers beyond the cap (0 = none)
    message_id: str  # full "<...@domain>" form, chosen upstream
    date: datetime  # tz-aware; goes in the Date header
    unsubscribe_url: str  # https://…/u/TOKEN
    preferences_url: str  # https://…/p/TOKEN
    archive_url: str  # https://…/d/ID ("view in browser")


@dataclass(frozen=True, slots=True)
class Sender:
    address: str  # e.g. "papers@example.org"
    name: str | None = "Paper Digest"


@dataclass(frozen=True, slots=True)
class RenderedDigest:
    subject: str
    html: str
    text: str
    headers: tuple[tuple[str, str], ...]  # ordered (name, value) pairs, all validated


# --- text helpers -----------------------------------------------------------------------

# Characters that must never reach a header: C0/C1 controls, DEL, the Unicode line and
# paragraph separators (str.splitlines() breaks on them) and lone surrogates.
_HEADER_UNSAFE_RE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")
# MJML's XML parser additionally rejects the U+FFFE/U+FFFF non-characters in text.
_DISPLAY_UNSAFE_RE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff\ufffe\uffff]")


def _clean(s: str) -> str:
    """Single-line display text: unsafe characters become spaces, whitespace collapses."""
    return " ".join(_DISPLAY_UNSAFE_RE.sub(" ", s).split())


def _shorten(text: str, limit: int) -> str:
    """Cut ``text`` to at most ``limit`` characters on a word boundary, ending in "…"."""
    if len(text) <= limit:
        return text
    cut = text[: limit - 1]
    space = cut.rfind(" ")
    if space >= limit // 2:  # a word boundary not too far back; else cut mid-word
        cut = cut[:space]
    return cut.rstrip(" ,;:.-–—") + ELLIPSIS


@functools.lru_cache(maxsize=4096)
def _terms_pattern(terms: tuple[str, ...]) -> re.Pattern[str] | None:
    """One regex per distinct set of terms (papers in a digest often share them)."""
    words = sorted({t.strip() for t in terms if t.strip()}, key=lambda w: (-len(w), w))
    if not words:
        return None
    # Longest first so "diffusion model" wins over "model"; a phrase matches across any
    # whitespace; lookarounds instead of \b so terms such as "c++" still work.
    alternatives = "|".join(r"\s+".join(map(re.escape, w.split())) for w in words)
    return re.compile(rf"(?<!\w)(?:{alternatives})(?!\w)", re.IGNORECASE)


def highlight(text: str, terms: Iterable[str]) -> Markup:
    """Escape ``text`` and wrap each whole-word, case-insensitive match of ``terms`` in <mark>.

    Matching runs on the raw text and every piece is escaped on its own, so highlighting
    can never split an entity or let user text through unescaped.
    """
    pattern = _terms_pattern(tuple(terms))
    if pattern is None:
        return escape(text)
    pieces: list[str] = []
    last = 0
    for m in pattern.finditer(text):
        pieces += [escape(text[last : m.start()]), MARK_OPEN, escape(m[0]), "</mark>"]
        last = m.end()
    pieces.append(escape(text[last:]))
    return Markup("".join(pieces))  # safe: every piece of user text went through escape()


_MONTHS = ("January", "February", "March", "April", "May", "June", "July",
           "August", "September", "October", "November", "December")  # fmt: skip


def _format_date(d: date) -> str:
    # Spelled out by hand: strftime("%B") follows the process locale.
    return f"{d.day} {_MONTHS[d.month - 1]} {d.year}"


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _fill(text: str, indent: str = "", first: str | None = None) -> str:
    """Jinja filter for the text part: wrap at 78 columns, never breaking URLs or words."""
    return textwrap.fill(
        text,
        width=TEXT_WIDTH,
        initial_indent=indent if first is None else first,
        subsequent_indent=indent,
        break_long_words=False,
        break_on_hyphens=False,
    )


# --- templates --------------------------------------------------------------------------


class _Templates(NamedTuple):
    html: jinja2.Template
    text: jinja2.Template


@functools.cache
def _templates(templates_dir: Path) -> _Templates:
    """One Environment and compiled templates per directory: rendering runs per subscriber."""
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(templates_dir),
        # On for every template, .txt included: the text template opts out explicitly, so a
        # forgotten opt-out shows up as "&amp;" in a text part, never as live HTML.
        autoescape=jinja2.select_autoescape(default=True, default_for_string=True),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        auto_reload=False,  # templates ship with the code; skip a stat() per render
    )
    env.filters["fill"] = _fill
    try:
        return _Templates(env.get_template("digest.mjml.j2"), env.get_template("digest.txt.j2"))
    except jinja2.TemplateError as exc:
        raise RenderError(f"cannot load digest templates from {templates_dir}: {exc}") from exc


@dataclass(frozen=True, slots=True)
class _PaperView:
    """What the templates see of one paper: display text plus pre-highlighted markup."""

    title: str
    title_html: Markup
    meta: tuple[str, ...]
    excerpt: str
    excerpt_html: Markup
    topics: tuple[str, ...]


def _paper_view(paper: DigestPaper) -> _PaperView:
    title = _clean(latex_to_text(paper.title)) or "(untitled)"
    excerpt = _shorten(_clean(latex_to_text(paper.abstract)), EXCERPT_CHARS)
    meta = []
    if paper.organization and _clean(paper.organization):
        meta.append(_clean(paper.organization))
    if paper.authors is not None:
        meta.append(_plural(paper.authors, "author"))
    if paper.published_on is not None:
        meta.append(_format_date(paper.published_on))
    if paper.upvotes is not None:
        meta.append("▲ " + _plural(paper.upvotes, "upvote"))
    return _PaperView(
        title=title,
        title_html=highlight(title, paper.matched_terms),
        meta=tuple(meta),
        excerpt=excerpt,
        excerpt_html=highlight(excerpt, paper.matched_terms),
        topics=tuple(t for t in map(_clean, paper.matched_topics) if t),
    )


def _subject(digest: Digest) -> str:
    if not digest.papers:
        return "No new papers matched your topics"
    # The count covers the papers beyond the cap too; the body says "and N more".
    total = len(digest.papers) + digest.more_count
    prefix = f"{_plural(total, 'new paper')}: "
    title = _clean(latex_to_text(digest.papers[0].title)) or "(untitled)"
    return prefix + _shorten(title, SUBJECT_MAX - len(prefix))


# --- headers ----------------------------------------------------------------------------

_MESSAGE_ID_RE = re.compile(r"<[!-;=?-~]+@[!-;=?-~]+>")  # printable ASCII minus "<", ">"
_URL_RE = re.compile(r"https?://[!-;=?-~]+", re.IGNORECASE)  # no spaces, quotes are fine


def _check(header: str, value: str) -> str:
    if _HEADER_UNSAFE_RE.search(value):
        raise HeaderInjectionError(f"{header}: value contains a line break or control character")
    return value


def _check_url(field: str, url: str) -> str:
    _check(field, url)
    if not _URL_RE.fullmatch(url):
        raise HeaderInjectionError(f"{field}: not a plain ASCII http(s) URL: {url!r}")
    return url


def _address(header: str, name: str | None, addr_spec: str) -> str:
    _check(header, addr_spec)
    _check(header, name or "")
    local, at, domain = addr_spec.rpartition("@")
    if at and not domain.isascii():
        # The stdlib would emit an RFC 2047 encoded-word inside the domain, which is
        # invalid; IDNA (punycode) is what a non-SMTPUTF8 relay can carry.
        try:
            addr_spec = f"{local}@{domain.encode('idna').decode('ascii')}"
        except UnicodeError as exc:
            raise HeaderInjectionError(f"{header}: cannot IDNA-encode {domain!r}") from exc
    try:
        # Address() parses addr_spec strictly: exactly one address, nothing left over,
        # and it quotes / encodes the display name as the header needs.
        return str(Address(display_name=_clean(name or ""), addr_spec=addr_spec))
    except ValueError as exc:  # email.errors defects are ValueErrors too
        raise HeaderInjectionError(f"{header}: invalid address {addr_spec!r}: {exc}") from exc


def _headers(digest: Digest, sender: Sender, subject: str) -> tuple[tuple[str, str], ...]:
    sent_at = digest.date
    if sent_at.tzinfo is None or sent_at.utcoffset() is None:
        # Times are stored in UTC and SQLite hands them back naive; "-0000" would claim
        # the zone is unknown, so say UTC rather than fail the delivery.
        sent_at = sent_at.replace(tzinfo=UTC)
    if not _MESSAGE_ID_RE.fullmatch(_check("Message-ID", digest.message_id)):
        raise HeaderInjectionError(
            f"Message-ID: not of the form <id@domain>: {digest.message_id!r}"
        )
    headers = (
        ("From", _address("From", sender.name, sender.address)),
        ("To", _address("To", digest.to_name, digest.to_address)),
        ("Subject", subject),
        ("Date", format_datetime(sent_at)),
        ("Message-ID", digest.message_id),
        ("List-Unsubscribe", f"<{_check_url('List-Unsubscribe', digest.unsubscribe_url)}>"),
        ("List-Unsubscribe-Post", "List-Unsubscribe=One-Click"),  # RFC 8058 one-click
    )
    for name, value in headers:  # the final values too, subject included
        _check(name, value)
    return headers


# --- the public entry points ------------------------------------------------------------

_HTML_LANG_RE = re.compile(r'(<html\b[^>]*?\blang=")[^"]*"')


def _mjml_to_html(mjml: str) -> str:
    try:
        # Returns a plain str and raises a bare ValueError on malformed input. fonts={}
        # drops the Google Fonts <link> it adds by default (we use system fonts only).
        html = mjml2html(mjml, disable_comments=True, fonts={})
    except ValueError as exc:
        raise RenderError(f"MJML rejected the digest markup: {exc}") from exc
    if "<mj-" in html:  # unknown MJML tags are copied through silently, not reported
        raise RenderError("MJML output still contains <mj-…> tags (misspelled component?)")
    if '<html lang="en"' not in html[:200]:
        # mjml-python 1.4 honours <mjml lang="en">; older ones wrote lang="und".
        html = _HTML_LANG_RE.sub(r'\1en"', html, count=1)
    return html


def render_digest(
    *, digest: Digest, sender: Sender, templates_dir: Path | None = None
) -> RenderedDigest:
    """Render the subject, HTML and text parts and the ordered, checked headers."""
    subject = _subject(digest)
    headers = _headers(digest, sender, subject)  # validate before doing the expensive work
    for field in ("preferences_url", "archive_url"):  # hrefs only, but must be http(s)
        _check_url(field, getattr(digest, field))

    papers = [_paper_view(p) for p in digest.papers]
    topics = sorted({t for p in papers for t in p.topics}, key=str.casefold)
    context = {
        "subject": subject,
        "headline": (
            f"{_plural(len(papers) + digest.more_count, 'new paper')} in your topics"
            if papers
            else "No new papers this time"
        ),
        "preview": papers[0].title if papers else subject,
        "brand": _clean(sender.name or "") or "Paper Digest",
        "edition": _format_date(digest.edition),
        "to_name": _clean(digest.to_name or ""),
        "to_address": _clean(digest.to_address),
        "papers": papers,
        "more_count": digest.more_count,
        "topics": topics,
        "unsubscribe_url": digest.unsubscribe_url,
        "preferences_url": digest.preferences_url,
        "archive_url": digest.archive_url,
    }
    templates = _templates((templates_dir or TEMPLATES_DIR).resolve())
    try:
        mjml = templates.html.render(context)
        text = templates.text.render(context)
    except jinja2.TemplateError as exc:
        raise RenderError(f"digest template failed: {exc}") from exc
    return RenderedDigest(subject=subject, html=_mjml_to_html(mjml), text=text, headers=headers)


class _VerbatimHeader(UnstructuredHeader):
    """Emit a checked ASCII header unfolded. The stdlib otherwise RFC 2047-encodes an
    unbreakable value longer than 78 columns (a long List-Unsubscribe <URL>), which mail
    clients then cannot use; RFC 5322 allows up to 998."""

    def fold(self, *, policy):
        line = f"{self.name}: {self}"
        if line.isascii() and len(line) <= 998:
            return line + policy.linesep
        return super().fold(policy=policy)


_registry = HeaderRegistry()  # our own: the default registry is shared process-wide
_registry.map_to_type("list-unsubscribe", _VerbatimHeader)
_registry.map_to_type("list-unsubscribe-post", _VerbatimHeader)
_POLICY = SMTP.clone(header_factory=_registry)  # CRLF line endings


def to_mime_bytes(*, rendered: RenderedDigest) -> bytes:
    """Build the RFC 5322 message: multipart/alternative, text/plain then text/html.

    Both parts are UTF-8 quoted-printable, so no line exceeds 998 octets whatever MJML
    emits. The same ``rendered`` always gives the same bytes. Kept in one function so a
    faster builder can replace it.
    """
    msg = EmailMessage(policy=_POLICY)
    for name, value in rendered.headers:
        msg[name] = value
    msg.set_content(rendered.text, subtype="plain", charset="utf-8", cte="quoted-printable")
    msg.add_alternative(rendered.html, subtype="html", charset="utf-8", cte="quoted-printable")
    for part in msg.iter_parts():
        del part["MIME-Version"]  # add_alternative copies it into the part; top level only
    # The stdlib picks a random boundary; derive it from the content instead so a resend
    # after a crash is byte-identical. "==" never occurs in quoted-printable output, so the
    # boundary cannot collide with a body line.
    content = repr(rendered.headers).encode() + rendered.text.encode() + rendered.html.encode()
    msg.set_boundary(f"=={hashlib.sha256(content).hexdigest()[:32]}==")
    return msg.as_bytes()

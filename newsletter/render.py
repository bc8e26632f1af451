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

import binascii
import functools
import hashlib
import re
import textwrap
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime
from email.headerregistry import Address
from email.policy import SMTP
from email.utils import format_datetime
from pathlib import Path

import jinja2
from markupsafe import Markup, escape
from mjml import mjml2html

from newsletter.backends.base import OutgoingMessage
from newsletter.errors import NewsletterError
from newsletter.signing import Signer
from newsletter.text import latex_to_text, one_line

__all__ = [
    "MARK_OPEN",
    "Confirmation",
    "Digest",
    "DigestPaper",
    "HeaderInjectionError",
    "RenderError",
    "RenderedDigest",
    "Sender",
    "highlight",
    "latex_to_text",
    "render_confirmation",
    "render_digest",
    "to_mime_bytes",
]

TEMPLATES_DIR = Path(__file__).resolve().parent.parent / "templates"


@functools.lru_cache(maxsize=64)
def _resolved(templates_dir: Path) -> Path:
    return templates_dir.resolve()  # per digest otherwise: a realpath() of system calls


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
    # The parts already quoted-printable encoded, when render_digest could assemble them
    # from cached pieces (see _qp); to_mime_bytes encodes html and text itself otherwise.
    html_qp: bytes | None = field(default=None, repr=False, compare=False)
    text_qp: bytes | None = field(default=None, repr=False, compare=False)


# --- text helpers -----------------------------------------------------------------------

# Characters that must never reach a header: C0/C1 controls, DEL, the Unicode line and
# paragraph separators (str.splitlines() breaks on them) and lone surrogates.
_HEADER_UNSAFE_RE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")


@functools.lru_cache(maxsize=100_000)
def _clean(s: str) -> str:
    """Single-line display text: control and bidi characters become spaces, whitespace
    collapses. Cached: the same titles, filters and names come back digest after digest."""
    return one_line(s)


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


@functools.lru_cache(maxsize=100_000)
def _fill(text: str, indent: str = "") -> str:
    """Wrap text-part paragraphs at 78 columns, never breaking URLs or words (cached: the
    same excerpts recur across subscribers)."""
    return textwrap.fill(
        text,
        width=TEXT_WIDTH,
        initial_indent=indent,
        subsequent_indent=indent,
        break_long_words=False,
        break_on_hyphens=False,
    )


def _wrap(text: str) -> str:
    """What ``_fill`` gives for text whose whitespace ``_clean`` collapsed, without
    textwrap's machinery: for the one paragraph per digest that is never the same twice."""
    lines: list[str] = []
    line = ""
    for word in text.split(" "):
        if line and len(line) + 1 + len(word) > TEXT_WIDTH:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}" if line else word
    lines.append(line)
    return "\n".join(lines)


# --- compiled templates -----------------------------------------------------------------
#
# Rendering runs once per subscriber, so the templates are not rendered per digest. Each
# is rendered once with sentinel values (Jinja, then MJML for the HTML shell) and split
# at the sentinels into static text and named slots; a digest is then the static pieces
# joined with its escaped values: string joins instead of a template engine and an MJML
# compiler per message. Conditionals in the templates pick between variants, each
# compiled on first use.

_SLOT = "NLSLOT{}TOLSN"  # letters only: survives Jinja escaping and MJML untouched
_SLOT_RE = re.compile(r"NLSLOT([a-z_]+)TOLSN")


@dataclass(frozen=True, slots=True)
class _Compiled:
    pieces: tuple[str, ...]  # static, slot name, static, slot name, ..., static

    def fill(self, values: dict[str, str]) -> str:
        out = list(self.pieces)
        for i in range(1, len(out), 2):
            out[i] = values[out[i]]
        return "".join(out)


def _slots(*names: str) -> dict[str, Markup]:
    return {name: Markup(_SLOT.format(name)) for name in names}


def _compile(text: str) -> _Compiled:
    return _Compiled(tuple(_SLOT_RE.split(text)))


@dataclass(frozen=True, slots=True)
class _Encoded:
    """A compiled template that fills its text and its quoted-printable form together.

    The static pieces are encoded once; per message only the values are. Each
    piece's encoding ends at column 0 (a soft line break "=" CRLF where the piece does
    not end a line), so the encodings concatenate: decoded, the extra soft breaks are
    nothing. The shell around a digest's papers is kilobytes of static markup on a
    few long lines, with short values in between.
    """

    pieces: tuple[str, ...]
    encoded: tuple[bytes, ...]  # the static pieces' encodings (values: b"")

    @classmethod
    def of(cls, compiled: _Compiled) -> _Encoded:
        pieces = compiled.pieces
        return cls(pieces, tuple(b"" if i % 2 else _qp_piece(p) for i, p in enumerate(pieces)))

    def fill(self, values: dict[str, str]) -> tuple[str, bytes]:
        texts = list(self.pieces)
        qps = list(self.encoded)
        for i in range(1, len(texts), 2):
            value = texts[i] = values[texts[i]]
            qps[i] = _qp_piece(value)
        return "".join(texts), b"".join(qps)


def _halves(compiled: _Compiled, slot: str, *, newline: bool) -> tuple[_Encoded, _Encoded]:
    """The template before and after ``slot``, the first ending in a line break when
    ``newline`` (what follows starts on a line of its own)."""
    at = compiled.pieces.index(slot)
    before = list(compiled.pieces[:at])
    if newline or not before[-1].endswith("\n"):
        before[-1] += "\n"
    return _Encoded.of(_Compiled(tuple(before))), _Encoded.of(_Compiled(compiled.pieces[at + 1 :]))


@functools.cache
def _environment(templates_dir: Path) -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(templates_dir),
        # On for every template, .txt included: the text template opts out explicitly, so a
        # forgotten opt-out shows up as "&amp;" in a text part, never as live HTML.
        autoescape=jinja2.select_autoescape(default=True, default_for_string=True),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        auto_reload=False,
    )


def _render_template(templates_dir: Path, name: str, context: dict[str, object]) -> str:
    try:
        return _environment(templates_dir).get_template(name).render(context)
    except jinja2.TemplateNotFound as exc:
        raise RenderError(f"cannot load template {exc.name} from {templates_dir}") from exc
    except jinja2.TemplateError as exc:
        raise RenderError(f"cannot render {name} from {templates_dir}: {exc}") from exc


_SHELL_SLOTS = (
    "subject", "preview", "brand", "edition", "headline", "to_name", "papers_html",
    "more", "to_address", "topics", "archive_url", "preferences_url", "unsubscribe_url",
)  # fmt: skip
_PAPER_SLOTS = ("title_html", "meta", "excerpt_html", "topics")
_TEXT_SLOTS = (
    "brand", "edition", "headline", "to_name", "papers_text", "more", "footer",
    "archive_url", "preferences_url", "unsubscribe_url",
)  # fmt: skip


@functools.cache
def _shell(templates_dir: Path, *, named: bool, more: bool) -> _Compiled:
    """The whole HTML email around the papers, through Jinja and MJML once."""
    context: dict[str, object] = _slots(*_SHELL_SLOTS)
    if not named:
        context["to_name"] = ""
    if not more:
        context["more"] = ""
    return _compile(_mjml_to_html(_render_template(templates_dir, "digest.mjml.j2", context)))


@functools.cache
def _shell_halves(templates_dir: Path, *, named: bool, more: bool) -> tuple[_Encoded, _Encoded]:
    # The papers' blocks start on a line of their own (see _Block).
    return _halves(_shell(templates_dir, named=named, more=more), "papers_html", newline=True)


@functools.cache
def _text_halves(templates_dir: Path, *, named: bool, more: bool) -> tuple[_Encoded, _Encoded]:
    return _halves(_text(templates_dir, named=named, more=more), "papers_text", newline=False)


@functools.cache
def _paper_html(templates_dir: Path, *, meta: bool, topics: bool) -> _Compiled:
    context: dict[str, object] = _slots(*_PAPER_SLOTS)
    context["meta"] = context["meta"] if meta else ""
    context["topics"] = context["topics"] if topics else ""
    return _compile(_render_template(templates_dir, "paper.html.j2", context))


@functools.cache
def _text(templates_dir: Path, *, named: bool, more: bool) -> _Compiled:
    context: dict[str, object] = _slots(*_TEXT_SLOTS)
    if not named:
        context["to_name"] = ""
    if not more:
        context["more"] = ""
    return _compile(_render_template(templates_dir, "digest.txt.j2", context))


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


# --- per paper, cached: subscribers share papers, and often the words that matched -------


@functools.lru_cache(maxsize=20_000)
def _paper_text_parts(title: str, abstract: str) -> tuple[str, str]:
    return _clean(latex_to_text(title)) or "(untitled)", _shorten(
        _clean(latex_to_text(abstract)), EXCERPT_CHARS
    )


def _meta(paper: DigestPaper) -> str:
    meta = []
    if paper.organization and _clean(paper.organization):
        meta.append(_clean(paper.organization))
    if paper.authors is not None:
        meta.append(_plural(paper.authors, "author"))
    if paper.published_on is not None:
        meta.append(_format_date(paper.published_on))
    if paper.upvotes is not None:
        meta.append("▲ " + _plural(paper.upvotes, "upvote"))
    return " · ".join(meta)


TOPICS_SHOWN = 3  # filters named per paper; the rest are counted
TOPIC_CHARS = 60  # a long filter is cut in display (the footer links to all of them)


def _topic_list(topics: list[str] | tuple[str, ...], shown: int) -> str:
    """At most ``shown`` filters, each cut to ``TOPIC_CHARS``, then how many more: a
    subscriber's twenty long filters must not make every paper a paragraph."""
    names = [_shorten(t, TOPIC_CHARS) for t in topics[:shown]]
    if len(topics) > shown:
        names.append(f"{len(topics) - shown} more")
    return ", ".join(names)


def _topics_line(topics: tuple[str, ...]) -> str:
    if topics == ("*",):
        return "Among the day's most upvoted papers"
    return "Matched: " + _topic_list(topics, TOPICS_SHOWN) if topics else ""


# A paper's block is two cached pieces, both starting and ending on line boundaries so
# their quoted-printable forms concatenate (quoted-printable works line by line): the
# paper itself with its highlights, shared by every subscriber whose words matched the
# same way, and the "Matched: …" line, shared by every paper that matched the same
# filters. Per digest, only the short head and tail around the blocks are encoded.


@dataclass(frozen=True, slots=True, eq=False)  # cached instances: identity is equality
class _Block:
    text: str
    qp: bytes


def _block(text: str) -> _Block:
    return _Block(text, _qp(text))


_TOPICS_MARK = "\x00"  # cannot occur in filled text: _clean drops control characters


def _topics_line_start(text: str) -> int:
    """Where the line holding the topics slot starts in a block filled with the mark."""
    return text.rindex("\n", 0, text.index(_TOPICS_MARK)) + 1


@functools.cache
def _paper_html_tail_template(root: str, meta: bool, topics: bool) -> tuple[str, str]:
    """The static text of the block from the topics line on: (before, after) the topics
    for the variant with the line, ("", all of it) for the one without."""
    dummy = {"title_html": "t", "meta": "m", "excerpt_html": "e", "topics": _TOPICS_MARK}
    with_line = _paper_html(Path(root), meta=meta, topics=True).fill(dummy)
    cut = _topics_line_start(with_line)
    if topics:
        before, _, after = with_line[cut:].partition(_TOPICS_MARK)
        return before, after
    without = _paper_html(Path(root), meta=meta, topics=False).fill(dummy)
    if without[:cut] != with_line[:cut]:  # the split below relies on this
        raise RenderError("paper.html.j2: the topics line must come after everything else")
    return "", without[cut:]


@functools.lru_cache(maxsize=50_000)
def _paper_html_head(
    root: str, title: str, abstract: str, meta: str, terms: tuple[str, ...]
) -> _Block:
    title_text, excerpt = _paper_text_parts(title, abstract)
    filled = _paper_html(Path(root), meta=bool(meta), topics=True).fill(
        {
            "title_html": highlight(title_text, terms),
            "meta": escape(meta),
            "excerpt_html": highlight(excerpt, terms),
            "topics": _TOPICS_MARK,
        }
    )
    return _block(filled[: _topics_line_start(filled)])


@functools.lru_cache(maxsize=20_000)
def _paper_html_tail(root: str, matched_topics: tuple[str, ...], meta: bool) -> _Block:
    topics = _topics_line(tuple(t for t in map(_clean, matched_topics) if t))
    before, after = _paper_html_tail_template(root, meta, bool(topics))
    # str(): Markup on the right of "+" would escape the template text on its left.
    text = before + str(escape(topics)) + after
    return _block(text if text.endswith("\n") else text + "\n")


@functools.lru_cache(maxsize=50_000)
def _paper_text_head(title: str, abstract: str, meta: str) -> _Block:
    """Title, meta and excerpt, numbered "    " (see _numbered), up to the topics."""
    title_text, excerpt = _paper_text_parts(title, abstract)
    lines = [_fill(title_text, indent="    ")]
    if meta:
        lines.append(_fill(meta, indent="    "))
    lines += ["", _fill(excerpt, indent="    ")]
    return _block("\n".join(lines) + "\n")


@functools.lru_cache(maxsize=20_000)
def _paper_text_tail(matched_topics: tuple[str, ...]) -> _Block:
    topics = _topics_line(tuple(t for t in map(_clean, matched_topics) if t))
    return _block(("\n" + _fill(topics, indent="    ") + "\n" if topics else "") + "\n")


@functools.lru_cache(maxsize=50_000)
def _numbered(index: int, head: _Block) -> _Block:
    """The head with its number in the indent: "1.  " is as wide as "    ", so the lines
    wrap the same, and digits, dots and inner spaces are literal in quoted-printable."""
    number = f"{index}.".ljust(4)
    if len(number) != 4:  # a thousand papers in one digest: no shortcut
        return _block(number + head.text[4:])
    return _Block(number + head.text[4:], number.encode("ascii") + head.qp[4:])


@functools.lru_cache(maxsize=50_000)
def _paper_pieces(root: str, paper: DigestPaper) -> tuple[_Block, _Block, _Block, _Block]:
    """HTML head and tail, text head (unnumbered) and tail of one paper's block."""
    meta = _meta(paper)
    return (
        _paper_html_head(root, paper.title, paper.abstract, meta, paper.matched_terms),
        _paper_html_tail(root, paper.matched_topics, bool(meta)),
        _paper_text_head(paper.title, paper.abstract, meta),
        _paper_text_tail(paper.matched_topics),
    )


_NO_PAPERS = "No new papers matched your topics this time."
# Per tuple of papers, by identity: the loader hands every digest of one ranking the same
# tuple, so its blocks and topics are worked out once per batch. Holding the tuple keeps
# its id from being reused while the entry lives.
_by_papers: dict[
    int, tuple[tuple[DigestPaper, ...], tuple[list[_Block], list[_Block], list[str]]]
] = {}


def _papers_part(
    root: str, papers: tuple[DigestPaper, ...]
) -> tuple[list[_Block], list[_Block], list[str]]:
    """The blocks of the papers (HTML, text) and the filters that matched, sorted."""
    entry = _by_papers.get(id(papers))
    if entry is not None and entry[1] is papers and entry[0] == root:
        return entry[2]
    if papers:
        html, text = _paper_blocks(root, papers)
    else:
        html, text = [_block(str(escape(_NO_PAPERS)) + "\n")], [_block(_NO_PAPERS + "\n\n")]
    topics = sorted(
        {t for p in papers for t in map(_clean, p.matched_topics) if t and t != "*"},
        key=str.casefold,
    )
    if len(_by_papers) >= 4096:
        _by_papers.clear()
    _by_papers[id(papers)] = (root, papers, (html, text, topics))
    return html, text, topics


def _paper_blocks(root: str, papers: tuple[DigestPaper, ...]) -> tuple[list[_Block], list[_Block]]:
    html: list[_Block] = []
    text: list[_Block] = []
    for i, paper in enumerate(papers, 1):
        html_head, html_tail, text_head, text_tail = _paper_pieces(root, paper)
        html += (html_head, html_tail)
        text += (_numbered(i, text_head), text_tail)
    return html, text


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


# A plain dot-atom address and a display name of letters, digits and spaces need no
# quoting or encoding: the common case skips the (slow) email.headerregistry parser.
_PLAIN_ADDR_RE = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*"
                            r"@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+")  # fmt: skip
_PLAIN_NAME_RE = re.compile(r"[A-Za-z0-9 ]*")


@functools.lru_cache(maxsize=100_000)
def _address(header: str, name: str | None, addr_spec: str) -> str:
    _check(header, addr_spec)
    _check(header, name or "")
    display = _clean(name or "")
    if _PLAIN_ADDR_RE.fullmatch(addr_spec) and _PLAIN_NAME_RE.fullmatch(display):
        return f"{display} <{addr_spec}>" if display else addr_spec
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


@functools.lru_cache(maxsize=1024)
def _date_header(at: datetime) -> str:
    return format_datetime(at)  # a planning batch shares one time


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
        ("Date", _date_header(sent_at)),
        ("Message-ID", digest.message_id),
        ("List-Unsubscribe", f"<{_check_url('List-Unsubscribe', digest.unsubscribe_url)}>"),
        ("List-Unsubscribe-Post", "List-Unsubscribe=One-Click"),  # RFC 8058 one-click
    )
    for name, value in headers:  # the final values too, subject included
        _check(name, value)
    return headers


# --- the public entry points ------------------------------------------------------------


HTML_BUDGET = 95_000  # bytes of HTML: Gmail clips at 102 kB and hides what follows


def render_digest(
    *, digest: Digest, sender: Sender, templates_dir: Path | None = None
) -> RenderedDigest:
    """Render the subject, HTML and text parts and the ordered, checked headers.

    The HTML stays within ``HTML_BUDGET`` whatever the papers hold: papers beyond
    it move to the "N more" count (best first, so the worst go), which keeps the
    footer's unsubscribe link above Gmail's clipping point.
    """
    rendered = _render_digest(digest=digest, sender=sender, templates_dir=templates_dir)
    keep = len(digest.papers)
    while keep > 1 and len(rendered.html.encode()) > HTML_BUDGET:
        keep = max(1, keep * HTML_BUDGET // len(rendered.html.encode()) - 1)
        fewer = replace(
            digest,
            papers=digest.papers[:keep],
            more_count=digest.more_count + len(digest.papers) - keep,
        )
        rendered = _render_digest(digest=fewer, sender=sender, templates_dir=templates_dir)
    return rendered


def _render_digest(*, digest: Digest, sender: Sender, templates_dir: Path | None) -> RenderedDigest:
    subject = _subject(digest)
    headers = _headers(digest, sender, subject)  # validate before doing any other work
    for name in ("preferences_url", "archive_url"):  # hrefs only, but must be http(s)
        _check_url(name, getattr(digest, name))
    root = _resolved(templates_dir or TEMPLATES_DIR)

    html_blocks, text_blocks, topics = _papers_part(str(root), digest.papers)
    brand = _clean(sender.name or "") or "Paper Digest"
    to_name = _clean(digest.to_name or "")
    total = len(digest.papers) + digest.more_count
    headline = (
        f"{_plural(total, 'new paper')} in your topics"
        if digest.papers
        else "No new papers this time"
    )
    more = f"{digest.more_count} more {'paper' if digest.more_count == 1 else 'papers'}"
    footer_topics = (
        f" ({_topic_list(topics, 2 * TOPICS_SHOWN)} matched this time)" if topics else ""
    )
    preview = _paper_text_parts(digest.papers[0].title, "")[0] if digest.papers else subject
    common = {
        "brand": brand,
        "edition": _format_date(digest.edition),
        "headline": headline,
        "to_name": to_name,
        "more": more,
        "archive_url": digest.archive_url,
        "preferences_url": digest.preferences_url,
        "unsubscribe_url": digest.unsubscribe_url,
    }
    named, has_more = bool(to_name), digest.more_count > 0
    html_values = {k: str(escape(v)) for k, v in common.items()} | {
        "subject": str(escape(subject)),
        "preview": str(escape(preview)),
        "to_address": str(escape(_clean(digest.to_address))),
        "topics": str(escape(footer_topics)),
    }
    footer = _wrap(
        f"You receive this because {_clean(digest.to_address)} subscribed to {brand} topics"
        f"{footer_topics}."
    )
    text_values = common | {"footer": footer}
    html_before, html_after = _shell_halves(root, named=named, more=has_more)
    text_before, text_after = _text_halves(root, named=named, more=has_more)
    head, head_qp = html_before.fill(html_values)
    tail, tail_qp = html_after.fill(html_values)
    html = head + "".join([b.text for b in html_blocks]) + tail
    html_qp = b"".join([head_qp, *[b.qp for b in html_blocks], tail_qp])
    head, head_qp = text_before.fill(text_values)
    tail, tail_qp = text_after.fill(text_values)
    text = head + "".join([b.text for b in text_blocks]) + tail
    text_qp = b"".join([head_qp, *[b.qp for b in text_blocks], tail_qp])
    return RenderedDigest(
        subject=subject, html=html, text=text, headers=headers, html_qp=html_qp, text_qp=text_qp
    )


@dataclass(frozen=True, slots=True)
class Confirmation:
    """The double opt-in message: one link that activates a web sign-up."""

    to_address: str
    confirm_url: str
    message_id: str
    date: datetime
    expires_hours: float


def render_confirmation(
    *, confirmation: Confirmation, sender: Sender, templates_dir: Path | None = None
) -> RenderedDigest:
    """Subject, HTML (MJML), text and headers of a confirmation; rendered per message
    (one per sign-up, so nothing is worth caching)."""
    brand = _clean(sender.name or "") or "Paper Digest"
    subject = f"Confirm your subscription to {brand}"
    url = _check_url("confirm_url", confirmation.confirm_url)
    digest_like = Digest(
        to_address=confirmation.to_address,
        # No display name: a stranger typed it, and this goes to whoever owns the address.
        to_name=None,
        edition=confirmation.date.date(),
        papers=(),
        more_count=0,
        message_id=confirmation.message_id,
        date=confirmation.date,
        unsubscribe_url=url,
        preferences_url=url,
        archive_url=url,
    )
    # A confirmation is transactional: no List-Unsubscribe (there is nothing to leave yet).
    headers = tuple(
        h for h in _headers(digest_like, sender, subject) if not h[0].startswith("List-")
    )
    root = _resolved(templates_dir or TEMPLATES_DIR)
    context = {
        "subject": subject,
        "preview": "One click to start receiving your digests",
        "brand": brand,
        "to_address": _clean(confirmation.to_address),
        "confirm_url": url,
        "hours": f"{confirmation.expires_hours:g}",
    }
    html = _mjml_to_html(_render_template(root, "confirm.mjml.j2", context))
    text = _render_template(root, "confirm.txt.j2", context).strip() + "\n"
    return RenderedDigest(subject=subject, html=html, text=text, headers=headers)


def _header_line(name: str, value: str) -> bytes:
    """One header, CRLF-terminated: as it is when short ASCII (the usual case), else
    folded and RFC 2047-encoded by the standard library's SMTP policy."""
    line = f"{name}: {value}"
    if line.isascii() and len(line) <= 78:
        return line.encode("ascii") + b"\r\n"
    if name.lower().startswith("list-unsubscribe") and line.isascii() and len(line) <= 998:
        # Encoding a long <URL> would make it unusable to mail clients; RFC 5322 allows 998.
        return line.encode("ascii") + b"\r\n"
    return _folded(name, value)


@functools.lru_cache(maxsize=10_000)
def _folded(name: str, value: str) -> bytes:
    # Cached: long subjects repeat across subscribers who share a top paper.
    return SMTP.header_factory(name, value).fold(policy=SMTP).encode("utf-8")


def _qp(text: str) -> bytes:
    """Quoted-printable in C (binascii): lines of at most 76 characters, CRLF endings."""
    return binascii.b2a_qp(text.encode("utf-8"), istext=True).replace(b"\n", b"\r\n")


@functools.lru_cache(maxsize=20_000)
def _qp_piece(text: str) -> bytes:
    """``_qp``, ending at column 0 whatever the text ends with: a soft line break after
    text that does not end its line, so the next piece's encoding can follow."""
    if not text:
        return b""
    encoded = _qp(text)
    if text.endswith("\n"):
        return encoded
    head, _, last = encoded.rpartition(b"\r\n")
    if len(last) < 76:  # room for the "=" (lines stay within 76 characters)
        return encoded + b"=\r\n"
    return (head + b"\r\n" if head else b"") + _soft_wrap(last)


def _soft_wrap(line: bytes) -> bytes:
    """An encoded line cut with soft breaks into lines of at most 75 characters plus
    "=", never inside an "=XX" escape."""
    out, current, i = [], b"", 0
    while i < len(line):
        token = line[i : i + 3] if line[i : i + 1] == b"=" else line[i : i + 1]
        if len(current) + len(token) > 75:
            out.append(current + b"=\r\n")
            current = b""
        current += token
        i += len(token)
    out.append(current + b"=\r\n")
    return b"".join(out)


def to_mime_bytes(*, rendered: RenderedDigest) -> bytes:
    """Build the RFC 5322 message: multipart/alternative, text/plain then text/html.

    Both parts are UTF-8 quoted-printable, so no line exceeds 998 octets whatever MJML
    emits. Built directly rather than through email.message (about 1.3 ms a message
    there, a few hundred microseconds here); tests parse the result back with the
    standard library. The boundary comes from the content, so a resend after a crash
    is byte-identical; "==" never occurs in quoted-printable output, so it cannot collide.
    """
    headers = b"".join(_header_line(name, value) for name, value in rendered.headers)
    text = rendered.text_qp if rendered.text_qp is not None else _qp(rendered.text)
    html = rendered.html_qp if rendered.html_qp is not None else _qp(rendered.html)
    # The headers hold the Message-ID, unique per digest and kept across resends.
    boundary = f"=={hashlib.sha256(headers).hexdigest()[:32]}==".encode("ascii")
    return b"".join(
        (
            headers,
            b'MIME-Version: 1.0\r\nContent-Type: multipart/alternative; boundary="',
            boundary,
            b'"\r\n\r\n--',
            boundary,
            b'\r\nContent-Type: text/plain; charset="utf-8"\r\n'
            b"Content-Transfer-Encoding: quoted-printable\r\n\r\n",
            text,
            b"\r\n--",
            boundary,
            b'\r\nContent-Type: text/html; charset="utf-8"\r\n'
            b"Content-Transfer-Encoding: quoted-printable\r\n\r\n",
            html,
            b"\r\n--",
            boundary,
            b"--\r\n",
        )
    )


def outgoing(*, digest: Digest, sender: Sender, signer: Signer | None = None) -> OutgoingMessage:
    """A digest as the backend takes it: MIME bytes (DKIM-signed when configured)."""
    rendered = render_digest(digest=digest, sender=sender)
    return _message(rendered, digest.message_id, digest.to_address, digest.edition, sender, signer)


def outgoing_confirmation(
    *, confirmation: Confirmation, sender: Sender, signer: Signer | None = None
) -> OutgoingMessage:
    rendered = render_confirmation(confirmation=confirmation, sender=sender)
    c = confirmation
    return _message(rendered, c.message_id, c.to_address, c.date.date(), sender, signer)


def _message(
    rendered: RenderedDigest,
    message_id: str,
    to_address: str,
    edition: date,
    sender: Sender,
    signer: Signer | None,
) -> OutgoingMessage:
    data = to_mime_bytes(rendered=rendered)
    return OutgoingMessage(
        message_id=message_id,
        sender=sender.address,
        recipients=(to_address,),
        data=data if signer is None else signer.sign(data),
        edition=edition,
        html=rendered.html,
        crlf_only=True,  # to_mime_bytes writes CRLF only
    )

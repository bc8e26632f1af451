"""What a digest says: its inputs, and every string a reader sees, worked out from them.

Wording changes happen here, and only here: the subject, the headline, each paper's
title, meta line, excerpt and "Matched:" line, the "and N more" line, the footer.
Both renderers (the plain reference and the batch renderer) take their strings from
these functions, so they cannot say different things.

Everything user-supplied that reaches HTML is escaped: the only pre-built markup
(highlighted titles and excerpts) is assembled from escaped pieces as ``Markup``.
"""

from __future__ import annotations

import functools
import re
import textwrap
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, datetime

from markupsafe import Markup, escape

from newsletter.text import latex_to_text, no_encoded_words, one_line, visible

SUBJECT_MAX = 110  # long enough for a real title, short enough for phone inbox lists
EXCERPT_CHARS = 400
TEXT_WIDTH = 78
ELLIPSIS = "…"
TOPICS_SHOWN = 3  # filters named per paper; the rest are counted
TOPIC_CHARS = 60  # a long filter is cut in display
AUTHORS_SHOWN = 3  # "Ada Lovelace, Alan Turing, Grace Hopper and 12 more"
AUTHOR_CHARS = 60
SUMMARY_CHARS = 300
SUMMARY_LABEL = "AI summary (Hugging Face)"
NO_PAPERS = "No new papers matched your topics this time."
UNSURE_LINE = "Not sure this is for you — tell us with a vote"
# <mark> says "this matched" to screen readers too; the inline colour keeps it visible
# in bold titles and in clients that drop <style> blocks.
MARK_OPEN = '<mark style="background-color:#fff0a8;color:inherit;">'


# --- inputs -----------------------------------------------------------------------------


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
    close_to: str | None = None  # the topic sentence whose meaning carried it in
    liked: str | None = None  # the title of a paper the reader liked, which carried it in
    unsure: bool = False  # just below the line: shown to ask the reader (after the rest)
    nearest: str | None = None  # the abstract's sentence nearest that topic
    arxiv_id: str | None = None  # "2405.12345": the title links to its page, plus its PDF
    code_url: str | None = None  # a repository a source named
    project_url: str | None = None
    author_names: tuple[str, ...] = ()  # the first few, in the paper's order
    summary: str | None = None  # a source's own summary (Hugging Face's, AI-written)


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
    archive_url: str  # https://…/d/TOKEN ("view in browser")
    near_count: int = 0  # papers just below the line, listed in the archive
    near_papers: tuple[DigestPaper, ...] = ()  # those papers: the archive page only
    # Per paper of ``papers``, its vote page for this reader is ``vote_start`` then its
    # end ("" for a paper without one; no ends: no votes at all, as in a preview). The
    # start is the reader's (``links.votes``), the ends the ranking's, shared by every
    # reader of it: the batch renderer encodes the start once a message.
    vote_start: str = ""
    vote_ends: tuple[str, ...] = ()

    def vote_url(self, index: int) -> str:
        end = self.vote_ends[index] if index < len(self.vote_ends) else ""
        return self.vote_start + end if end else ""

    @property
    def votes(self) -> tuple[str, ...]:
        """Every paper's vote page ("" for none)."""
        return tuple(self.vote_url(i) for i in range(len(self.papers)))


@dataclass(frozen=True, slots=True)
class Confirmation:
    """The double opt-in message: one link that activates a web sign-up. No name: the
    stranger who filled in the form chose it, and this goes to the address's owner."""

    to_address: str
    confirm_url: str
    message_id: str
    date: datetime
    expires_hours: float


@dataclass(frozen=True, slots=True)
class Sender:
    address: str  # e.g. "papers@example.org"
    name: str | None = "Paper Digest"


# --- text helpers -----------------------------------------------------------------------


@functools.lru_cache(maxsize=100_000)
def clean(s: str) -> str:
    """Single-line display text: control and bidi characters become spaces, whitespace
    collapses. Cached: the same titles, filters and names come back digest after digest."""
    return one_line(s)


def shorten(text: str, limit: int) -> str:
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


def format_date(d: date) -> str:
    # Spelled out by hand: strftime("%B") follows the process locale.
    return f"{d.day} {_MONTHS[d.month - 1]} {d.year}"


def plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


@functools.lru_cache(maxsize=100_000)
def fill(text: str, indent: str = "") -> str:
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


def wrap(text: str) -> str:
    """What ``fill`` gives for text whose whitespace ``clean`` collapsed, without
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


# --- what a paper shows -----------------------------------------------------------------


@functools.lru_cache(maxsize=20_000)
def paper_texts(title: str, abstract: str, nearest: str | None = None) -> tuple[str, str]:
    """The title and the excerpt as shown: LaTeX resolved, one line, the excerpt cut.

    With ``nearest`` (the sentence closest to the topic that carried the paper in on
    meaning), the excerpt starts there when it would not show in the opening."""
    text = clean(latex_to_text(abstract))
    if nearest and nearest in text:
        at = text.index(nearest)
        if at + len(nearest) > EXCERPT_CHARS - 1:
            text = ELLIPSIS + " " + text[at:]
    return clean(latex_to_text(title)) or "(untitled)", shorten(text, EXCERPT_CHARS)


def excerpt_html(excerpt: str, terms: tuple[str, ...], nearest: str | None) -> Markup:
    """The excerpt, matched words in <mark>, the sentence nearest the topic in <strong>."""
    if nearest and nearest in excerpt:
        before, _, after = excerpt.partition(nearest)
        return Markup("").join(
            (
                highlight(before, terms),
                Markup("<strong>"),
                highlight(nearest, terms),
                Markup("</strong>"),
                highlight(after, terms),
            )
        )
    return highlight(excerpt, terms)


def authors_text(names: tuple[str, ...], count: int | None) -> str:
    """ "Ada Lovelace, Alan Turing, Grace Hopper and 12 more" when names are known, else
    "15 authors" (a page dump gives only the count), else ""."""
    shown = [shorten(n, AUTHOR_CHARS) for n in map(clean, names[:AUTHORS_SHOWN]) if n]
    total = max(count or 0, len(names))
    if not shown:
        return plural(count, "author") if count is not None else ""
    rest = total - len(shown)
    if rest > 0:
        return f"{', '.join(shown)} and {rest} more"
    return shown[0] if len(shown) == 1 else f"{', '.join(shown[:-1])} and {shown[-1]}"


def meta_line(paper: DigestPaper) -> str:
    meta = []
    authors = authors_text(paper.author_names, paper.authors)
    if authors:
        meta.append(authors)
    if paper.organization and clean(paper.organization):
        meta.append(clean(paper.organization))
    if paper.published_on is not None:
        meta.append(format_date(paper.published_on))
    if paper.upvotes is not None:
        meta.append("▲ " + plural(paper.upvotes, "upvote"))
    return " · ".join(meta)


def summary_line(summary: str | None) -> str:
    """A source's summary, marked as what it is; "" when there is none."""
    text = clean(latex_to_text(summary or ""))
    return f"{SUMMARY_LABEL}: {shorten(text, SUMMARY_CHARS)}" if text else ""


def topic_list(topics: list[str] | tuple[str, ...], shown: int) -> str:
    """At most ``shown`` filters, each cut to ``TOPIC_CHARS``, then how many more: a
    subscriber's twenty long filters must not make every paper a paragraph."""
    names = [shorten(t, TOPIC_CHARS) for t in topics[:shown]]
    if len(topics) > shown:
        names.append(f"{len(topics) - shown} more")
    return ", ".join(names)


def topics_line(
    matched_topics: tuple[str, ...],
    close_to: str | None = None,
    liked: str | None = None,
    unsure: bool = False,
) -> str:
    """Why the paper is here: "Matched: …" and, when meaning carried it, what it is
    close to, and when a vote did, the paper the reader liked ("" when nothing is named).
    A paper shown to ask about it says so first."""
    topics = tuple(t for t in map(clean, matched_topics) if t)
    if topics == ("*",):
        return "Among the day's most upvoted papers"
    line = "Matched: " + topic_list(topics, TOPICS_SHOWN) if topics else ""
    if close_to and clean(close_to):
        close = f"close to “{shorten(clean(close_to), TOPIC_CHARS)}”"
        line = f"{line} · {close}" if line else close[0].upper() + close[1:]
    if liked and clean(liked):
        like = f"like “{shorten(clean(liked), TOPIC_CHARS)}”, which you marked"
        line = f"{line} · {like}" if line else like[0].upper() + like[1:]
    if unsure:
        line = f"{UNSURE_LINE} · {line}" if line else UNSURE_LINE
    return line


def paper_text_head(
    title: str,
    abstract: str,
    meta: str,
    nearest: str | None = None,
    *,
    summary: str = "",
    links: str = "",
) -> str:
    """A paper in the text part up to its topics line, indented four spaces (the number
    goes into the indent of the first line); ``links`` is ``links.links_text``."""
    title_text, excerpt = paper_texts(title, abstract, nearest)
    lines = [fill(title_text, indent="    ")]
    if meta:
        lines.append(fill(meta, indent="    "))
    lines += ["", fill(excerpt, indent="    ")]
    if summary:
        lines += ["", fill(summary, indent="    ")]
    text = "\n".join(lines) + "\n"
    return text + ("\n" + links if links else "")


def paper_text_tail(
    matched_topics: tuple[str, ...],
    close_to: str | None = None,
    votes: str = "",
    liked: str | None = None,
    unsure: bool = False,
) -> str:
    """The paper's topics line, then its vote links (``links.votes_text``), then a blank."""
    topics = topics_line(matched_topics, close_to, liked, unsure)
    return ("\n" + fill(topics, indent="    ") + "\n" if topics else "") + votes + "\n"


def numbered(index: int, head: str) -> str:
    """The head with its number in the indent: "1.  " is as wide as "    ", so the lines
    wrap the same."""
    return f"{index}.".ljust(4) + head[4:]


# --- what the digest shows --------------------------------------------------------------


def brand(sender: Sender) -> str:
    return clean(sender.name or "") or "Paper Digest"


def subject(digest: Digest) -> str:
    # The count covers the papers beyond the cap too; the body says "and N more".
    total = matched_count(digest)
    if not total or not digest.papers:  # only papers it asks about: never "0 new papers"
        return "No new papers matched your topics"
    prefix = f"{plural(total, 'new paper')}: "
    title = " ".join(visible(clean(latex_to_text(digest.papers[0].title))).split())
    title = no_encoded_words(title)  # a feed's title is data, never an encoded word
    return prefix + shorten(title or "(untitled)", SUBJECT_MAX - len(prefix))


def matched_count(digest: Digest) -> int:
    """The papers the topics let in (those beyond the cap too), not those asked about."""
    return sum(1 for p in digest.papers if not p.unsure) + digest.more_count


def headline(digest: Digest) -> str:
    total = matched_count(digest)
    if not total or not digest.papers:
        return "No new papers this time"
    return f"{plural(total, 'new paper')} in your topics"


def preview(digest: Digest, subject_line: str) -> str:
    """The inbox preview text: the best paper's title."""
    return paper_texts(digest.papers[0].title, "")[0] if digest.papers else subject_line


def more_line(digest: Digest) -> str:
    n = digest.more_count
    return f"{n} more {'paper' if n == 1 else 'papers'}"


def near_line(digest: Digest) -> str:
    """Papers just below the line: "and 4 more that might interest you"."""
    n = digest.near_count
    return f"{n} more that might interest you" if n else ""


def footer_topics(papers: tuple[DigestPaper, ...]) -> list[str]:
    """The distinct filters that matched this time, sorted as a reader would."""
    return sorted(
        {t for p in papers for t in map(clean, p.matched_topics) if t and t != "*"},
        key=str.casefold,
    )


def footer_note(topics: list[str]) -> str:
    return f" ({topic_list(topics, 2 * TOPICS_SHOWN)} matched this time)" if topics else ""


def footer_text(*, to_address: str, brand_name: str, note: str) -> str:
    return wrap(
        f"You receive this because {clean(to_address)} subscribed to {brand_name} topics{note}."
    )

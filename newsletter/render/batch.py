"""The batch renderer: the same digests as the reference renderer, at delivery speed.

Rendering runs once per subscriber, so templates are not rendered per digest:
each is compiled once (``compiled.compile_template``: through Jinja, and MJML for
HTML, with placeholders) and a digest is its values joined between the static
pieces, already quoted-printable encoded (``mime.FillIn``). A paper's block is two
cached pieces: the paper itself with its highlights (shared by every subscriber
whose words matched the same way) and its "Matched: …" tail (shared by every paper
that matched the same filters). The start of a reader's vote links, one for all the
digest's papers, is encoded once a message and spliced between the papers' pieces
(``mime.Spliced``): the papers' part is one join per message.

Every cache is state of one ``BatchRenderer``, which the delivery loop creates and
keeps for its life; all are keyed by value and bounded. The output's text equals
``reference.render_digest``'s, byte for byte (tests/test_render_batch.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

from markupsafe import escape

from newsletter.bounded import Bounded
from newsletter.paper_links import PaperLinks
from newsletter.render import content, mime
from newsletter.render.budget import within_budget
from newsletter.render.compiled import (
    TEMPLATES_DIR,
    Compiled,
    RenderError,
    compile_template,
    mjml_aria_label,
    mjml_fragment,
    mjml_to_html,
    render_template,
)
from newsletter.render.content import Digest, DigestPaper, Sender
from newsletter.render.headers import check_url, digest_headers
from newsletter.render.links import links_html, links_of, links_text, votes_html, votes_text
from newsletter.render.mime import EncodedPart, FillIn, RenderedDigest
from newsletter.render.reference import ranking_values, reader_values

_SHELL_SLOTS = (
    "subject", "preview", "brand", "edition", "headline", "to_name", "papers_html",
    "more", "near", "to_address", "topics", "archive_url", "preferences_url", "unsubscribe_url",
)  # fmt: skip
_PAPER_SLOTS = (
    "title_html", "page_url", "meta", "excerpt_html", "summary", "links_html", "topics",
    "votes_html",
)  # fmt: skip
_TEXT_SLOTS = (
    "brand", "edition", "headline", "to_name", "papers_text", "more", "near", "footer",
    "archive_url", "preferences_url", "unsubscribe_url",
)  # fmt: skip
_OPTIONAL = ("to_name", "more", "near")  # values a template tests with {% if %}
_MAX = 50_000  # entries per cache; a cache that fills is emptied and refilled


class _Own(NamedTuple):
    """What a paper shows whoever it is sent to: the key of its cached blocks."""

    title: str
    abstract: str
    meta: str
    nearest: str | None
    summary: str
    links: PaperLinks


class _Ranking(NamedTuple):
    """What every reader of one ranking is shown alike (``reference.ranking_values``)."""

    papers: tuple[DigestPaper, ...]
    key: tuple[object, ...]  # more_count, near_count, edition, sender
    subject: str
    values: dict[str, str]
    html: dict[str, str]  # escaped, with the subject as MJML's aria-label wants it


def _common_start(a: str, b: str) -> str:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return a[:n]


class BatchRenderer:
    """Renders digest after digest; create one per delivery loop and keep it."""

    def __init__(self, *, templates_dir: Path | None = None) -> None:
        self.root = (templates_dir or TEMPLATES_DIR).resolve()
        self._halves: dict[tuple[str, tuple[bool, ...]], tuple[FillIn, FillIn]] = {}
        self._paper_templates: dict[_Shape, tuple[Compiled, Compiled, Compiled]] = {}
        self._heads = Bounded(_MAX)  # (the paper's own texts, terms) -> the paper, highlighted
        self._tails = Bounded(_MAX)  # (matched topics, variant) -> its "Matched: …" line and end
        self._text_heads = Bounded(_MAX)  # the paper's own texts -> text, unnumbered
        self._numbered = Bounded(_MAX)  # (index, the paper's own texts) -> text, numbered
        self._text_tails = Bounded(_MAX)
        self._papers = Bounded(_MAX)  # a digest's papers -> (HTML blocks, text blocks)
        self._same_papers = Bounded(1024)  # id(papers) -> (papers, vote ends, parts)
        self._rankings = Bounded(1024)  # id(papers) -> _Ranking
        self._aria = Bounded(_MAX)  # subject -> what MJML makes of it in the aria-label

    def render(self, *, digest: Digest, sender: Sender) -> RenderedDigest:
        if digest.near_papers:  # the archive page's: rendered plainly, never mailed
            raise ValueError("the batch renderer renders emails: near_papers must be empty")
        return within_budget(digest, lambda d: self._render(d, sender))

    def _render(self, digest: Digest, sender: Sender) -> RenderedDigest:
        ranking = self._ranking(digest, sender)
        subject = ranking.subject
        headers = digest_headers(digest=digest, sender=sender, subject=subject)
        for name in ("preferences_url", "archive_url"):  # hrefs only, but must be http(s)
            check_url(name, getattr(digest, name))
        own = reader_values(digest, ranking.values)
        values = ranking.values | own
        start, ends = digest.vote_start, digest.vote_ends
        if len(ends) != len(digest.papers):  # a paper without an end has no votes
            n = len(digest.papers)
            ends = ends[:n] + ("",) * (n - len(ends))
        html_papers, text_papers = self._papers_part(digest.papers, ends)
        variant = tuple(bool(values[k]) for k in _OPTIONAL)
        html_values = ranking.html | {k: str(escape(v)) for k, v in own.items()}
        before, after = self._halves_of("digest.mjml.j2", variant)
        papers = html_papers.fill(str(escape(start)))
        html = mime.join([before.fill(html_values), papers, after.fill(html_values)])
        before, after = self._halves_of("digest.txt.j2", variant)
        text = mime.join([before.fill(values), text_papers.fill(start), after.fill(values)])
        return RenderedDigest(subject, headers, text, html)

    def _ranking(self, digest: Digest, sender: Sender) -> _Ranking:
        """The values every reader of the digest's ranking is shown alike, and their HTML;
        found by the identity of the papers' tuple (readers of one ranking share it)."""
        found = self._rankings.get(id(digest.papers))
        key = (digest.more_count, digest.near_count, digest.edition, sender)
        if found is None or found.papers is not digest.papers or found.key != key:
            subject = content.subject(digest)
            values = ranking_values(digest, sender, subject)
            html = {k: str(escape(v)) for k, v in values.items()}
            html["subject_aria"] = self._aria_label(html["subject"])
            found = _Ranking(digest.papers, key, subject, values, html)
            self._rankings.put(id(digest.papers), found)  # holds papers: id stays
        return found  # type: ignore[no-any-return]

    def _aria_label(self, title: str) -> str:
        found = self._aria.get(title)
        if found is None:
            found = self._aria.put(title, mjml_aria_label(title))
        return found  # type: ignore[no-any-return]

    # --- the templates, compiled on first use ------------------------------------------

    def _halves_of(self, name: str, variant: tuple[bool, ...]) -> tuple[FillIn, FillIn]:
        """A digest template before and after its papers' slot, for one variant (which
        of the optional values are there)."""
        key = (name, variant)
        if key not in self._halves:
            html = name.endswith(".mjml.j2")
            slots, papers = (_SHELL_SLOTS, "papers_html") if html else (_TEXT_SLOTS, "papers_text")
            blank = tuple(s for s, on in zip(_OPTIONAL, variant, strict=True) if not on)
            blank += ("near_html",) if html else ()

            def render(context: dict[str, object]) -> str:
                text = render_template(self.root, name, context)
                return mjml_to_html(text) if html else text

            pieces = compile_template(name=name, slots=slots, render=render, blank=blank).pieces
            if html:  # MJML copies the title into an aria-label, escaped its own way
                pieces = tuple(
                    "subject_aria"
                    if slot == "subject" and pieces[i - 1].endswith('aria-label="')
                    else slot
                    for i, slot in enumerate(pieces)
                )
            if pieces.count(papers) != 1:
                raise RenderError(f"{name}: {{{{ {papers} }}}} must occur exactly once")
            at = pieces.index(papers)
            self._halves[key] = (FillIn(pieces[:at]), FillIn(pieces[at + 1 :]))
        return self._halves[key]

    def _paper_template(self, shape: _Shape) -> tuple[Compiled, Compiled, Compiled]:
        """``paper.html.j2`` as it stands in a digest (through MJML), for papers with or
        without a meta line, a summary and votes (``shape``), cut where its topics line
        starts: the head, the tail with a topics line (slots: topics, votes_html), and
        the tail without one (slot: votes_html)."""
        if shape not in self._paper_templates:
            meta, summary, votes = shape

            def variant(topics: bool) -> Compiled:
                optional = (
                    ("meta", meta), ("summary", summary), ("topics", topics), ("votes_html", votes)
                )  # fmt: skip
                blank = tuple(s for s, on in optional if not on)
                return compile_template(
                    name="paper.html.j2",
                    slots=_PAPER_SLOTS,
                    render=lambda ctx: mjml_fragment(
                        render_template(self.root, "paper.html.j2", ctx)
                    ),
                    blank=blank,
                )

            with_line, without = variant(True).pieces, variant(False).pieces
            at = with_line.index("topics")
            if with_line[: at - 1] != without[: at - 1]:  # the cut below relies on this
                raise RenderError("paper.html.j2: the topics line must come after everything else")
            shared = _common_start(with_line[at - 1], without[at - 1])
            head = Compiled((*with_line[: at - 1], shared))
            tail_with = Compiled((with_line[at - 1][len(shared) :], *with_line[at:]))
            tail_without = Compiled((without[at - 1][len(shared) :], *without[at:]))
            self._paper_templates[shape] = (head, tail_with, tail_without)
        return self._paper_templates[shape]

    # --- the papers, cached -------------------------------------------------------------

    def _papers_part(
        self, papers: tuple[DigestPaper, ...], ends: tuple[str, ...]
    ) -> tuple[mime.Spliced, mime.Spliced]:
        """The papers' part, HTML and text, with the start of the reader's vote links to
        go in (``Digest.vote_start``); per tuple of papers (and the ends of their vote links),
        by value, and first by identity: digests of one ranking share one tuple, and
        hashing a tuple of papers hashes every field of every one."""
        mine = self._same_papers.get(id(papers))
        if mine is not None and mine[0] is papers and mine[1] == ends:
            return mine[2]  # type: ignore[no-any-return]
        key = (papers, ends)
        found = self._papers.get(key)
        if found is None:
            found = self._papers.put(key, self._papers_blocks(papers, ends))
        self._same_papers.put(id(papers), (papers, ends, found))  # holds papers: id stays
        return found  # type: ignore[no-any-return]

    def _papers_blocks(
        self, papers: tuple[DigestPaper, ...], ends: tuple[str, ...]
    ) -> tuple[mime.Spliced, mime.Spliced]:
        """``_papers_part`` when neither cache has them."""
        if not papers:
            return (
                mime.Spliced((str(escape(content.NO_PAPERS)),)),
                mime.Spliced((content.NO_PAPERS + "\n\n",)),
            )
        html: list[_Block] = []
        text: list[_Block] = []
        for i, (paper, end) in enumerate(zip(papers, ends, strict=True), 1):
            own = _Own(
                paper.title,
                paper.abstract,
                content.meta_line(paper),
                paper.nearest,
                content.summary_line(paper.summary),
                links_of(paper),
            )
            shape = (bool(own.meta), bool(own.summary), bool(end))
            tail = self._html_tail(paper, shape)
            html += (self._html_head(paper, own, shape), _then(tail, str(escape(end))))
            text.append(self._text_head(i, own))
            text += (_then(block, end) for block in self._text_tail(paper, bool(end)))
        return mime.Spliced.joined(html), mime.Spliced.joined(text)

    def _html_head(self, paper: DigestPaper, own: _Own, shape: _Shape) -> EncodedPart:
        key = (own, paper.matched_terms, shape)  # the cut before the topics line varies
        found = self._heads.get(key)
        if found is None:
            head = self._paper_template(shape)[0]
            title, excerpt = content.paper_texts(paper.title, paper.abstract, paper.nearest)
            filled = head.fill(
                {
                    "title_html": content.highlight(title, paper.matched_terms),
                    "page_url": escape(own.links.page),
                    "meta": escape(own.meta),
                    "excerpt_html": content.excerpt_html(
                        excerpt, paper.matched_terms, paper.nearest
                    ),
                    "summary": escape(own.summary),
                    "links_html": links_html(own.links),
                }
            )
            found = self._heads.put(key, mime.encode(filled))
        return found  # type: ignore[no-any-return]

    def _html_tail(self, paper: DigestPaper, shape: _Shape) -> _Block:
        key = (paper.matched_topics, paper.close_to, paper.liked, paper.unsure, shape)
        found = self._tails.get(key)
        if found is None:
            _, with_line, without = self._paper_template(shape)
            line = content.topics_line(
                paper.matched_topics, paper.close_to, paper.liked, paper.unsure
            )
            tail = _partly(with_line, {"topics": str(escape(line))}) if line else without
            found = self._tails.put(key, _block(tail))
        return found  # type: ignore[no-any-return]

    def _text_head(self, index: int, own: _Own) -> EncodedPart:
        key = (index, own)
        found = self._numbered.get(key)
        if found is None:
            head = self._text_heads.get(own)
            if head is None:
                text = content.paper_text_head(
                    own.title,
                    own.abstract,
                    own.meta,
                    own.nearest,
                    summary=own.summary,
                    links=links_text(own.links),
                )
                head = self._text_heads.put(own, mime.encode(text))
            number = content.numbered(index, "    ")  # "1.  ": as wide as the indent
            found = self._numbered.put(key, mime.with_prefix(head, number, replacing=4))
        return found  # type: ignore[no-any-return]

    def _text_tail(self, paper: DigestPaper, votes: bool) -> tuple[_Block, ...]:
        """The topics line, and the votes' slot (then the blank line) when there are any."""
        key = (paper.matched_topics, paper.close_to, paper.liked, paper.unsure, votes)
        found = self._text_tails.get(key)
        if found is None:
            topics = content.paper_text_tail(
                paper.matched_topics, paper.close_to, liked=paper.liked, unsure=paper.unsure
            )
            # The votes go between the topics line and the closing blank line.
            found = (mime.encode(topics[:-1]), _TEXT_VOTES) if votes else (mime.encode(topics),)
            self._text_tails.put(key, found)
        return found  # type: ignore[no-any-return]


_Shape = tuple[bool, bool, bool]  # a paper's meta line, summary and votes: there or not


def _partly(compiled: Compiled, values: dict[str, str]) -> Compiled:
    """``compiled`` with some slots filled: their values merge into the static text."""
    out = [compiled.pieces[0]]
    for slot, static in zip(compiled.pieces[1::2], compiled.pieces[2::2], strict=True):
        if slot in values:
            out[-1] += values[slot] + static
        else:
            out += (slot, static)
    return Compiled(tuple(out))


def _block(compiled: Compiled) -> _Block:
    """Encoded once when nothing is left to fill, else spliced around the votes' URL."""
    if not compiled.slots:
        return mime.encode(compiled.pieces[0])
    return _votes(compiled.pieces)


_URL = "\x00url\x00"  # stands for a vote URL while the static text around it is cut


def _votes(pieces: tuple[str, ...]) -> mime.Spliced:
    """A template of one slot, a paper's vote links, as static text around the URL."""
    before, slot, after = pieces
    static = (str(votes_html(_URL)) if slot == "votes_html" else votes_text(_URL)).split(_URL)
    if len(static) < 2:  # the links no longer show their URL as given: splice nothing
        raise RenderError(f"{slot}: the vote links must hold the URL as it is given")
    return mime.Spliced((before + static[0], *static[1:-1], static[-1] + after))


_Block = EncodedPart | mime.Spliced
_TEXT_VOTES = _votes(("", "votes_text", "\n"))


def _then(block: _Block, end: str) -> _Block:
    return block.then(end) if isinstance(block, mime.Spliced) else block

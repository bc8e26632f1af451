"""Tests for newsletter.render: real Jinja + MJML rendering and real MIME building."""

from __future__ import annotations

import binascii
import email
import email.policy
import re
from dataclasses import replace
from datetime import date, datetime, timedelta, timezone
from email.utils import format_datetime
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from newsletter.errors import NewsletterError
from newsletter.render import (
    MARK_OPEN,
    BatchRenderer,
    Digest,
    DigestPaper,
    HeaderInjectionError,
    RenderError,
    Sender,
    highlight,
    latex_to_text,
    mime,
    render_digest,
    to_mime_bytes,
)
from newsletter.render.content import fill, subject, wrap

SENDER = Sender(address="papers@example.org")
UNSUBSCRIBE = "https://news.example.org/u/" + "T" * 43
TOKENFORMER = "TokenFormer: Rethinking Transformer Scaling with Tokenized Model Parameters"

M = MARK_OPEN  # how a highlighted word opens


def make_paper(**kw) -> DigestPaper:
    fields = {
        "title": TOKENFORMER,
        "abstract": "We remodel the transformer. Our Model scales with tokenized parameters.",
        "authors": 4,
        "organization": "ZIP Lab",
        "published_on": date(2024, 5, 28),
        "upvotes": 5,
        "matched_topics": ('org:"ZIP Lab"', "transformer"),
        "matched_terms": ("model",),
    }
    return DigestPaper(**(fields | kw))


def make_digest(papers=None, **kw) -> Digest:
    fields = {
        "to_address": "ana@example.org",
        "to_name": "Ana Example",
        "edition": date(2024, 5, 29),
        "papers": (make_paper(),) if papers is None else tuple(papers),
        "more_count": 0,
        "message_id": "<d-1.2024-05-29@news.example.org>",
        "date": datetime(2024, 5, 29, 7, 30, tzinfo=timezone(timedelta(hours=2))),
        "unsubscribe_url": UNSUBSCRIBE,
        "preferences_url": "https://news.example.org/p/PREF",
        "archive_url": "https://news.example.org/d/42?x=1&y=2",
    }
    return Digest(**(fields | kw))


def render(digest: Digest | None = None, sender: Sender = SENDER):
    return render_digest(digest=digest or make_digest(), sender=sender)


def parse(raw: bytes) -> email.message.EmailMessage:
    return email.message_from_bytes(raw, policy=email.policy.default)


def parts(msg) -> tuple[str, str]:
    plain, html = list(msg.iter_parts())
    return plain.get_content(), html.get_content()


# --- MIME structure and headers ---------------------------------------------------------


def test_mime_structure_and_exact_headers():
    digest = make_digest(papers=[make_paper()] * 3)
    raw = to_mime_bytes(rendered=render(digest))
    msg = parse(raw)

    assert msg.get_content_type() == "multipart/alternative"
    plain, html = list(msg.iter_parts())
    assert plain.get_content_type() == "text/plain"
    assert html.get_content_type() == "text/html"
    for part in (plain, html):
        assert part.get_content_charset() == "utf-8"
        assert part["Content-Transfer-Encoding"] == "quoted-printable"

    assert msg["From"] == "Paper Digest <papers@example.org>"
    assert msg["To"] == "Ana Example <ana@example.org>"
    assert msg["Subject"] == f"3 new papers: {TOKENFORMER}"
    assert msg["Date"] == format_datetime(digest.date) == "Wed, 29 May 2024 07:30:00 +0200"
    assert msg["Message-ID"] == "<d-1.2024-05-29@news.example.org>"
    assert msg["List-Unsubscribe"] == f"<{UNSUBSCRIBE}>"
    assert msg["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert msg["MIME-Version"] == "1.0"
    assert msg["Feedback-ID"] == f"{digest.edition.isoformat()}:digest:newsletter:example.org"
    assert msg["Precedence"] == "bulk"  # out-of-office replies stay quiet
    assert "Auto-Submitted" not in msg

    header_block = raw.split(b"\r\n\r\n", 1)[0].decode("ascii")
    names = re.findall(r"^([A-Za-z-]+):", header_block, re.MULTILINE)
    assert names[:7] == [
        "From",
        "To",
        "Subject",
        "Date",
        "Message-ID",
        "List-Unsubscribe",
        "List-Unsubscribe-Post",
    ]


def test_lines_are_crlf_and_at_most_998_octets():
    raw = to_mime_bytes(rendered=render(make_digest(papers=[make_paper()] * 20)))
    assert raw.endswith(b"\r\n")
    assert b"\n" not in raw.replace(b"\r\n", b"")
    assert b"\r" not in raw.replace(b"\r\n", b"")
    assert max(len(line) for line in raw.split(b"\r\n")) <= 998


def test_mime_bytes_are_deterministic():
    # a resend after a crash must be byte-identical (the delivery ledger relies on it)
    first, second = render(), render()
    assert to_mime_bytes(rendered=first) == to_mime_bytes(rendered=second)
    other = render(make_digest(to_name="Bo"))
    assert (
        parse(to_mime_bytes(rendered=other)).get_boundary()
        != parse(to_mime_bytes(rendered=first)).get_boundary()
    )


def test_long_unsubscribe_url_is_not_rfc2047_encoded():
    # The stdlib would turn an unbreakable header over 78 columns into =?utf-8?q?…?= words.
    url = "https://newsletter.physics.university.example.edu/u/" + "x" * 86
    raw = to_mime_bytes(rendered=render(make_digest(unsubscribe_url=url)))
    assert f"\r\nList-Unsubscribe: <{url}>\r\n".encode() in raw
    assert parse(raw)["List-Unsubscribe"] == f"<{url}>"


def test_html_is_english_and_has_title_preview_and_no_web_fonts():
    html = render().html
    assert '<html lang="en"' in html
    assert f"<title>1 new paper: {TOKENFORMER}</title>" in html
    assert "googleapis" not in html
    assert "<mj-" not in html


# --- escaping ---------------------------------------------------------------------------

XSS_TITLE = "<script>alert(1)</script> & Friends"
XSS_ABSTRACT = "We <b>boldly</b> compare A & B; x < y > z."


def test_user_text_is_escaped_in_html_and_intact_in_text():
    paper = make_paper(
        title=XSS_TITLE,
        abstract=XSS_ABSTRACT,
        organization="<img src=x onerror=alert(2)>",
        matched_topics=('"><svg onload=alert(3)>',),
        matched_terms=("script", "b"),
    )
    digest = make_digest(papers=[paper], to_name="<i>Ana</i>")
    sender = Sender(address="papers@example.org", name="Digest <b>")
    plain, html = parts(parse(to_mime_bytes(rendered=render(digest, sender))))

    lowered = html.lower()
    for raw_markup in ("<script", "<b>", "<img", "<svg", "<i>"):
        assert raw_markup not in lowered
    script, b = f"{M}script</mark>", f"{M}b</mark>"
    assert f"&lt;{script}&gt;alert(1)&lt;/{script}&gt; &amp; Friends" in html
    assert f"&lt;{b}&gt;boldly&lt;/{b}&gt; compare A &amp; {M}B</mark>" in html
    assert "&lt;img src=x onerror=alert(2)&gt;" in html

    assert XSS_TITLE in plain
    assert XSS_ABSTRACT in plain.replace("\n    ", " ")
    assert "<img src=x onerror=alert(2)>" in plain
    assert "&amp;" not in plain and "&lt;" not in plain
    assert "Hi <i>Ana</i>," in plain


def test_urls_are_attribute_escaped():
    html = render().html
    assert 'href="https://news.example.org/d/42?x=1&amp;y=2"' in html


# --- subject ----------------------------------------------------------------------------


def test_subject_singular_and_plural():
    assert render(make_digest(papers=[make_paper()])).subject == f"1 new paper: {TOKENFORMER}"
    assert render(make_digest(papers=[make_paper()] * 2)).subject.startswith("2 new papers: ")
    # the count includes the papers beyond the cap, which the body lists as "and N more"
    assert render(make_digest(papers=[make_paper()] * 2, more_count=3)).subject.startswith(
        "5 new papers: TokenFormer"
    )


def test_subject_truncates_on_a_word_boundary():
    words = ["Scaling"] + [f"word{i}" for i in range(40)]
    title = " ".join(words)
    subject = render(make_digest(papers=[make_paper(title=title)] * 3)).subject
    assert len(subject) <= 110
    assert subject.endswith("…")
    kept = subject.removeprefix("3 new papers: ").removesuffix("…").split(" ")
    assert kept == words[: len(kept)]


def test_subject_cleans_titles_instead_of_raising():
    paper = make_paper(title="Evil\r\nBcc: victim@example.org\tand  Poincar\\'e\x00 balls")
    rendered = render(make_digest(papers=[paper]))
    assert rendered.subject == "1 new paper: Evil Bcc: victim@example.org and Poincaré balls"
    msg = parse(to_mime_bytes(rendered=rendered))
    assert msg["Bcc"] is None
    assert msg["Subject"] == rendered.subject


# --- header injection -------------------------------------------------------------------

EVIL = "\r\nBcc: evil@example.org"
INJECTIONS = [
    ("to_name", "Ana\r\nBcc: evil@example.org", "To"),
    ("to_name", "Ana\nX", "To"),
    ("to_address", "ana@example.org\r\nBcc: evil@example.org", "To"),
    ("to_address", "ana@example.org, evil@example.org", "To"),
    ("unsubscribe_url", "https://news.example.org/u/T" + EVIL, "List-Unsubscribe"),
    ("unsubscribe_url", "https://news.example.org/u/T> <https://evil.example", "List-Unsubscribe"),
    ("unsubscribe_url", "javascript:alert(1)", "List-Unsubscribe"),
    ("preferences_url", "https://news.example.org/p/T\n", "preferences_url"),
    ("archive_url", "https://news.example.org/d/1\r", "archive_url"),
    ("message_id", "<a@b>\r\nBcc: evil@example.org", "Message-ID"),
    ("message_id", "no-angle-brackets@example.org", "Message-ID"),
]


@pytest.mark.parametrize(("field", "value", "header"), INJECTIONS)
def test_unsafe_digest_values_raise(field, value, header):
    with pytest.raises(HeaderInjectionError, match=header):
        render(replace(make_digest(), **{field: value}))


@pytest.mark.parametrize(
    "sender",
    [Sender(address="papers@example.org\r\nBcc: x@y.org"), Sender(address="p@x.org", name="A\nB")],
)
def test_unsafe_sender_raises(sender):
    with pytest.raises(HeaderInjectionError, match="From"):
        render(sender=sender)


def test_naive_date_is_taken_as_utc():
    # the project stores UTC; SQLite returns it without tzinfo
    msg = parse(to_mime_bytes(rendered=render(make_digest(date=datetime(2024, 5, 29, 7, 30)))))
    assert msg["Date"] == "Wed, 29 May 2024 07:30:00 +0000"


def test_errors_are_newsletter_errors():
    assert issubclass(HeaderInjectionError, ValueError)
    assert issubclass(HeaderInjectionError, NewsletterError)
    assert issubclass(RenderError, NewsletterError)


# --- non-ASCII round trip ---------------------------------------------------------------


def test_non_ascii_name_and_subject_round_trip():
    title = "Über Diffusion — 日本語 und Gödel"
    digest = make_digest(papers=[make_paper(title=title)], to_name="Jörg Müller, Jr.")
    sender = Sender(address="papers@example.org", name="Papier-Übersicht")
    raw = to_mime_bytes(rendered=render(digest, sender))
    raw.split(b"\r\n\r\n", 1)[0].decode("ascii")  # headers stay 7-bit (RFC 2047 encoded)

    msg = parse(raw)
    assert msg["Subject"] == f"1 new paper: {title}"
    (to,) = msg["To"].addresses
    assert (to.display_name, to.addr_spec) == ("Jörg Müller, Jr.", "ana@example.org")
    assert msg["From"].addresses[0].display_name == "Papier-Übersicht"
    plain, html = parts(msg)
    assert title in plain and title in html


# Encoded words (RFC 2047) in a feed's title or a reader's name: a mail client decodes
# them, and so did the standard library's folding before the fix of CVE-2024-6923 (this
# project's Python 3.11.7 among them), writing a decoded CRLF as a header of its own.
_INJECTING = [
    # a Bcc and a header of the attacker's, once decoded and folded (over 78 characters)
    "=?utf-8?q?=0D=0ABcc:_evil@example.com=0D=0AX-Evil:_1?= padding words here to make it long",
    # the whole body replaced: headers ended, an HTML "Unsubscribe" link of theirs
    "=?utf-8?b?DQpDb250ZW50LVR5cGU6dGV4dC9odG1sDQoNCjxhIGhyZWY9Ly9lLnZpbD5VbnN1YnNjcmliZTwvYT4=?="
    " x",
    # short and ASCII, written as is: the reader's client shows a right-to-left override
    "=?utf-8?q?=E2=80=AE?=gpj.exe",
]


@pytest.mark.parametrize("title", _INJECTING)
def test_a_title_of_encoded_words_stays_one_subject_in_both_renderers(title: str) -> None:
    digest = make_digest(papers=[make_paper(title=title)])
    expected = parse(to_mime_bytes(rendered=render())).keys()
    for rendered in (render(digest), BatchRenderer().render(digest=digest, sender=SENDER)):
        msg = parse(to_mime_bytes(rendered=rendered))
        assert msg.keys() == expected, msg.keys()
        assert msg.get_content_type() == "multipart/alternative"
        subject = str(msg["Subject"])
        assert "\r" not in subject and "\n" not in subject and "\u202e" not in subject
        assert subject.startswith("1 new paper: = ?utf-8?"), subject


def test_a_readers_name_of_encoded_words_is_shown_as_written():
    """A name chosen on the sign-up form: shown as its characters, not decoded into an
    address it is not, nor into a line break that failed every digest to that reader."""
    spoof = "=?utf-8?q?support=40bank=2Ecom?="
    msg = parse(to_mime_bytes(rendered=render(make_digest(to_name=spoof))))
    (to,) = msg["To"].addresses
    assert (to.display_name, to.addr_spec) == (
        "= ?utf-8?q?support=40bank=2Ecom?=",
        "ana@example.org",
    )
    breaking = "=?utf-8?q?Ann=0D=0ABcc:_evil@example.com?= with a name long enough to be folded"
    msg = parse(to_mime_bytes(rendered=render(make_digest(to_name=breaking))))
    assert "Bcc" not in msg and msg["To"].addresses[0].addr_spec == "ana@example.org"


def test_idn_domain_becomes_punycode():
    raw = to_mime_bytes(rendered=render(make_digest(to_address="ana@exämple.org")))
    assert parse(raw)["To"].addresses[0].addr_spec == "ana@xn--exmple-cua.org"


def test_address_without_name():
    msg = parse(to_mime_bytes(rendered=render(make_digest(to_name=None))))
    assert msg["To"] == "ana@example.org"


# --- highlighting -----------------------------------------------------------------------


def test_highlight_whole_words_case_insensitively():
    out = highlight("Model remodel model-based MODELS MODEL.", ["model"])
    assert out == (f"{M}Model</mark> remodel {M}model</mark>-based MODELS {M}MODEL</mark>.")


def test_highlight_escapes_every_segment():
    assert highlight("<model> & co", ["model", "co"]) == (
        f"&lt;{M}model</mark>&gt; &amp; {M}co</mark>"
    )
    assert highlight("a <b> c", []) == "a &lt;b&gt; c"
    # a term that is itself markup-ish is matched on the raw text, then escaped
    assert highlight("x <b> y", ["<b>"]) == f"x {M}&lt;b&gt;</mark> y"


def test_highlight_phrases_and_symbols():
    assert highlight("A Diffusion\n model and diffusion", ["diffusion model", "diffusion"]) == (
        f"A {M}Diffusion\n model</mark> and {M}diffusion</mark>"
    )
    assert highlight("Use C++ not C", ["c++"]) == f"Use {M}C++</mark> not C"


def test_rendered_html_highlights_title_and_excerpt():
    html = render().html
    assert f"Tokenized {M}Model</mark> Parameters" in html
    assert f"Our {M}Model</mark> scales" in html
    assert "re<mark" not in html and "remodel" in html


# --- content ----------------------------------------------------------------------------


def test_metadata_topics_and_footer_links():
    rendered = render()
    for body in (rendered.html, rendered.text):
        for piece in ("ZIP Lab", "4 authors", "28 May 2024", "▲ 5 upvotes", "29 May 2024"):
            assert piece in body
    assert re.search(
        r"<p [^>]*>Matched: org:&#34;ZIP Lab&#34;, transformer</p>\s*</div>", rendered.html
    )
    assert "&lt;" not in rendered.html  # no markup of ours escaped into text
    assert 'Matched: org:"ZIP Lab", transformer' in rendered.text
    for label, url in [
        ("View in browser", "https://news.example.org/d/42?x=1&amp;y=2"),
        ("Manage preferences", "https://news.example.org/p/PREF"),
        ("Unsubscribe", UNSUBSCRIBE),
    ]:
        assert re.search(rf'<a href="{re.escape(url)}"[^>]*>{label}</a>', rendered.html)
    assert UNSUBSCRIBE in rendered.text
    assert "You receive this because ana@example.org subscribed" in rendered.html


def test_missing_metadata_is_left_out_and_singulars():
    bare = make_paper(authors=1, organization=None, published_on=None, upvotes=1, matched_topics=())
    rendered = render(make_digest(papers=[bare]))
    assert "1 author" in rendered.text and "1 authors" not in rendered.text
    assert "▲ 1 upvote" in rendered.text and "upvotes" not in rendered.text
    assert "ZIP Lab" not in rendered.text and "Matched:" not in rendered.text
    bare = make_paper(authors=None, organization=None, published_on=None, upvotes=None)
    assert "·" not in render(make_digest(papers=[bare])).text.split("\n", 3)[3].split("--")[0]


@pytest.mark.parametrize(
    ("more", "line"),
    [(0, None), (1, "and 1 more paper matched your topics"), (7, "and 7 more papers matched")],
)
def test_more_count_line(more, line):
    rendered = render(make_digest(more_count=more))
    for body in (rendered.html, rendered.text):
        if line is None:
            assert "more paper" not in body
        else:
            assert line in body


def test_abstract_excerpt_is_cut_on_a_word_boundary():
    abstract = " ".join(f"word{i:03d}" for i in range(200))
    rendered = render(make_digest(papers=[make_paper(abstract=abstract, matched_terms=())]))
    match = re.search(r"word000[^…<]*…", rendered.html)
    assert match, "excerpt with ellipsis not found"
    excerpt = match.group(0)
    assert 300 <= len(excerpt) <= 400
    assert re.fullmatch(r"(word\d{3} )*word\d{3}…", excerpt)


def test_text_part_is_wrapped_and_numbered():
    papers = [make_paper(abstract="lorem ipsum dolor " * 40, title=f"Paper {i}") for i in range(3)]
    text = render(make_digest(papers=papers)).text
    for line in text.splitlines():
        assert len(line) <= 78 or line.strip().startswith("https://")
    assert "\n1.  Paper 0\n" in text and "\n3.  Paper 2\n" in text
    assert text.rstrip().endswith(UNSUBSCRIBE)


def test_empty_digest_renders():
    rendered = render(make_digest(papers=[]))
    assert rendered.subject == "No new papers matched your topics"
    assert "No new papers matched your topics this time." in rendered.text


def test_latex_in_display_text():
    paper = make_paper(title="Poincar\\'e ResNet", abstract='Nystr\\"om, na\\"{\\i}ve, 5\\% gain')
    rendered = render(make_digest(papers=[paper]))
    assert rendered.subject == "1 new paper: Poincaré ResNet"
    for body in (rendered.html, rendered.text):
        assert "Nyström, naïve, 5% gain" in body


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("Poincar\\'e ball", "Poincaré ball"),
        ("Poincar\\'{e}", "Poincaré"),
        ("{\\'e}cole", "école"),
        ('Nystr\\"om', "Nyström"),
        ('na\\"{\\i}ve', "naïve"),
        ('na\\"\\i ve', "naïve"),
        ("Fr\\'echet", "Fréchet"),
        ("\\`a la", "à la"),
        ("\\^ote", "ôte"),
        ("Espa\\~na", "España"),
        ("Espa\\~{n}a", "España"),
        ("\\v{S}ediv\\'y", "Šedivý"),
        ("Gar\\c{c}on", "Garçon"),
        ("Erd\\H{o}s", "Erdős"),
        ("{\\i}", "ı"),
        ("Stra{\\ss}e", "Straße"),
        ("50\\% of R\\&D in a\\_b", "50% of R&D in a_b"),
        ("these models\\' decisions", "these models' decisions"),
        ("the model\\'s output", "the model's output"),
        *[(s, s) for s in ("{\\it vs.} \\emph{x}", "$\\alpha$ \\proj \\url{a}", "no escapes")],
    ],
)
def test_latex_to_text(source, expected):
    assert latex_to_text(source) == expected


# --- errors -----------------------------------------------------------------------------


def test_missing_templates_raise_render_error(tmp_path: Path):
    with pytest.raises(RenderError, match="cannot load"):
        render_digest(digest=make_digest(), sender=SENDER, templates_dir=tmp_path)


@pytest.mark.parametrize(
    "mjml",
    [
        "<mjml><mj-body><mj-section>",  # unclosed: mjml-python raises ValueError
        "<mjml><mj-body><mj-sektion>x</mj-sektion></mj-body></mjml>",  # silently passed through
    ],
)
def test_bad_mjml_raises_render_error(tmp_path: Path, mjml: str):
    (tmp_path / "digest.mjml.j2").write_text(mjml)
    (tmp_path / "digest.txt.j2").write_text("text")
    with pytest.raises(RenderError):
        render_digest(digest=make_digest(), sender=SENDER, templates_dir=tmp_path)


# --- property ---------------------------------------------------------------------------

MARKER = "<x-injected onload=alert(1)>"
names = st.text(st.characters(blacklist_categories=("Cc", "Cs", "Zl", "Zp")), max_size=40)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    title_head=st.text(),
    title_tail=st.text(),
    abstract=st.text(),
    organization=st.none() | st.text(),
    topics=st.lists(st.text(), max_size=3),
    terms=st.lists(st.text(max_size=12), max_size=4),
    to_name=st.none() | names,
)
def test_rendering_arbitrary_text_never_raises_or_leaks(
    title_head, title_tail, abstract, organization, topics, terms, to_name
):
    title = title_head + MARKER + title_tail
    paper = make_paper(
        title=title,
        abstract=abstract + MARKER,
        organization=organization,
        matched_topics=tuple(topics),
        matched_terms=tuple(terms),
    )
    rendered = render(make_digest(papers=[paper, make_paper(title=title_tail)], to_name=to_name))
    assert "<x-injected" not in rendered.html
    assert title not in rendered.html
    raw = to_mime_bytes(rendered=rendered)
    assert max(len(line) for line in raw.split(b"\r\n")) <= 998
    # What OutgoingMessage.wire_ready vouches for: no lone CR or LF anywhere.
    assert raw.count(b"\n") == raw.count(b"\r\n") == raw.count(b"\r")
    # And no line that starts with a dot, so it goes on the wire as it is (wire_bytes).
    assert b"\r\n." not in raw and not raw.startswith(b".")


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    titles=st.lists(st.text(min_size=0, max_size=120), min_size=1, max_size=12),
    topics=st.lists(st.text(max_size=30), max_size=3),
    meta=st.booleans(),
)
def test_parts_assembled_from_cached_blocks_decode_to_the_whole(titles, topics, meta):
    """The per-paper cache hands out pre-encoded pieces (numbers swapped in); what a mail
    client decodes must be exactly the text and HTML, in every combination of parts."""
    extra = (
        {}
        if meta
        else {"organization": None, "authors": None, "upvotes": None, "published_on": None}
    )
    papers = [
        make_paper(title=t, matched_topics=tuple(topics[: i % 4]), **extra)
        for i, t in enumerate(titles)
    ]
    rendered = BatchRenderer().render(digest=make_digest(papers=papers), sender=SENDER)
    assert (rendered.text, rendered.html) == (
        render(make_digest(papers=papers)).text,
        render(make_digest(papers=papers)).html,
    )
    raw = to_mime_bytes(rendered=rendered)
    body = raw.partition(b"\r\n\r\n")[2]
    _lines_ok(body)  # RFC 2045 6.7 (5)
    plain, html = parts(parse(raw))
    assert plain.replace("\r\n", "\n") == rendered.text
    assert html.replace("\r\n", "\n") == rendered.html
    for i in range(1, len(titles) + 1):
        assert f"\n{i}.".ljust(5) in rendered.text


words = st.text(st.characters(blacklist_categories=("Cc", "Cs", "Zs", "Zl", "Zp")), min_size=1)


@given(st.lists(words, max_size=30))
def test_footer_wrap_matches_textwrap(ws):
    text = " ".join(ws)
    assert wrap(text) == fill(text)


# No CR nor lone surrogates: templates are UTF-8 with LF line ends, and values are cleaned
# of both (_clean). Dots, line ends, "=" and blanks often: where the encoding has cases.
_TEXT = st.text(
    st.one_of(
        st.sampled_from(".\n= \t"),
        st.characters(blacklist_categories=("Cs",), blacklist_characters="\r"),
    ),
    max_size=200,
)


def _lines_ok(qp: bytes) -> None:
    """At most 76 characters, and none starting with "." (sent as it is, not dot-stuffed)."""
    lines = qp.split(b"\r\n")
    assert max((len(line) for line in lines), default=0) <= 76
    assert not any(line.startswith(b".") for line in lines), qp


@settings(max_examples=300, deadline=None)
@given(st.lists(_TEXT, max_size=8))
@example(["a" * 75 + " \nb", "." * 74 + "\t\n."])  # binascii writes these lines 78 long
def test_encoded_pieces_concatenate_to_the_encoding_of_the_whole(pieces):
    """Pieces encoded apart (static template text once, values per message) must decode,
    joined, to the joined text, in lines of at most 76 characters."""
    joined = mime.join(mime.encode(p) for p in pieces).qp
    _lines_ok(joined)
    decoded = binascii.a2b_qp(joined.replace(b"\r\n", b"\n")).decode("utf-8")
    assert decoded == "".join(pieces)


@settings(max_examples=300, deadline=None)
@given(st.lists(_TEXT, min_size=1, max_size=4), _TEXT, _TEXT, _TEXT, _TEXT)
def test_a_spliced_value_decodes_to_the_text_with_it(pieces, value, end, before, after):
    """A reader's start of their vote links goes into text encoded once, as lines of its
    own, with each paper's end after it; static parts around join without re-encoding:
    the message decodes to the text with the value in place, in lines of at most 76
    characters, and the size is the text's in UTF-8."""
    spliced = mime.Spliced.joined(
        [mime.encode(before), mime.Spliced(tuple(pieces)).then(end), mime.encode(after)]
    )
    part = spliced.fill(value)
    _lines_ok(part.qp)
    decoded = binascii.a2b_qp(part.qp.replace(b"\r\n", b"\n")).decode("utf-8")
    assert decoded == part.text == before + (value + end).join(pieces) + after
    assert part.size == len(part.text.encode("utf-8"))


def test_the_size_budget_counts_only_papers_the_topics_let_in() -> None:
    """Papers trimmed to fit Gmail's clip go into "and N more"; a paper the digest only
    asks about ("not sure this is for you") is not one of them, so trimming never
    raises the count in the subject; and a digest of such papers alone has no count."""
    long = "Paper " + "x" * 3000
    papers = [make_paper(title=f"{long} {i}") for i in range(19)]
    papers.append(make_paper(title=f"{long} unsure", unsure=True))
    whole = subject(make_digest(papers))
    trimmed = render(make_digest(papers))
    assert whole.startswith("19 new papers") and trimmed.subject.startswith("19 new papers")
    assert "more paper matched your topics" in trimmed.html or "more papers matched" in trimmed.html
    alone = make_digest([make_paper(title="Maybe this", unsure=True)])
    assert render(alone).subject == "No new papers matched your topics"
    assert "0 new papers" not in render(alone).html


def test_the_count_past_the_cap_promises_no_list() -> None:
    """Past the digest's cap the ledger keeps a count, not the papers: the line says how
    many, and links nowhere that cannot list them."""
    html = render(make_digest(more_count=5)).html
    line = next(s for s in html.split("</div>") if "5 more papers matched your topics" in s)
    assert "href" not in line and "see them all" not in html


def test_a_page_in_the_browser_has_no_email_budget() -> None:
    """The archive page ("View in browser") renders without the email's size budget:
    the papers an email moved to "and N more" to stay under Gmail's clip are there."""
    papers = [make_paper(title=f"Paper {i:02d} " + "x" * 3000) for i in range(20)]
    email_html = render(make_digest(papers)).html
    page = render_digest(digest=make_digest(papers), sender=SENDER, budget=False).html
    assert "more paper" in email_html and "more paper" not in page
    assert all(f"Paper {i:02d}" in page for i in range(20))

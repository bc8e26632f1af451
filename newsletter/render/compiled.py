"""Templates: Jinja2 (then MJML for HTML), plainly, and compiled into fill-in pieces.

``render_template`` and ``mjml_to_html`` are the plain path the reference renderer
takes for every message. ``compile_template`` is the batch renderer's: a template is
rendered once with placeholders for its values (through MJML too, for HTML) and cut
at them into static pieces and named slots; a message is then its values joined
between the static pieces. That is only right while the static text does not depend
on the values, so compiling checks it: the template is rendered twice, with two
different sets of placeholders and once with short values, and any difference in the
static pieces, a filling that is not what the template makes of the same values, or a
placeholder that did not come through intact (``{{ brand|upper }}``, ``{{ brand|length }}``,
``{{ brand|truncate(3) }}``) raises ``RenderError`` naming the template. Conditionals on a
value (``{% if to_name %}``) are compiled once per variant.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import jinja2
from markupsafe import Markup
from mjml import mjml2html

from newsletter.errors import NewsletterError

TEMPLATES_DIR = Path(__file__).resolve().parent.parent.parent / "templates"


class RenderError(NewsletterError):
    """A template could not be loaded, rendered or compiled, or MJML rejected the markup."""


@functools.cache
def environment(root: Path) -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(root),
        # On for every template, .txt included: the text template opts out explicitly, so a
        # forgotten opt-out shows up as "&amp;" in a text part, never as live HTML.
        autoescape=jinja2.select_autoescape(default=True, default_for_string=True),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        auto_reload=False,
    )


def render_template(root: Path, name: str, context: Mapping[str, object]) -> str:
    try:
        return environment(root).get_template(name).render(context)
    except jinja2.TemplateNotFound as exc:
        raise RenderError(f"cannot load template {exc.name} from {root}") from exc
    except jinja2.TemplateError as exc:
        raise RenderError(f"cannot render {name} from {root}: {exc}") from exc


_HTML_LANG_RE = re.compile(r'(<html\b[^>]*?\blang=")[^"]*"')


def mjml_to_html(mjml: str) -> str:
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


_ARIA_RE = re.compile(r'aria-label="([^"]*)"')


def mjml_aria_label(title: str) -> str:
    """What MJML writes into the body's ``aria-label`` for an ``<mj-title>`` of ``title``:
    not the title as given, but escaped its own way (a backslash doubled, an invisible
    character as ``\\u{200b}``). The batch renderer asks MJML itself, once per title."""
    doc = (
        f"<mjml><mj-head><mj-title>{title}</mj-title></mj-head>"
        "<mj-body><mj-section><mj-column><mj-text>x</mj-text></mj-column></mj-section>"
        "</mj-body></mjml>"
    )
    found = _ARIA_RE.search(mjml_to_html(doc))
    if found is None:
        raise RenderError("MJML no longer writes the title into an aria-label")
    return found[1]


def mjml_fragment(html: str) -> str:
    """What MJML makes of ``html`` inside an ``<mj-text>`` (it drops the newlines between
    tags, for one): a paper's block as it stands in a rendered digest."""
    start, end = "NLFRAGSTARTLFN", "NLFRAGENDLFN"
    doc = (
        "<mjml><mj-body><mj-section><mj-column><mj-text>"
        f"{start}{html}{end}</mj-text></mj-column></mj-section></mj-body></mjml>"
    )
    out = mjml_to_html(doc)
    return out[out.index(start) + len(start) : out.index(end)]


# Letters only: they survive Jinja escaping and MJML untouched.
_MARKS = (("NLSLOT", "TOLSN"), ("QXSLOTQX", "XQTOLSXQ"))


@dataclass(frozen=True, slots=True)
class Compiled:
    """Static pieces and slot names, alternating: static, slot, static, ..., static."""

    pieces: tuple[str, ...]

    def fill(self, values: Mapping[str, str]) -> str:
        out = list(self.pieces)
        for i in range(1, len(out), 2):
            out[i] = values[out[i]]
        return "".join(out)

    @property
    def slots(self) -> tuple[str, ...]:
        return self.pieces[1::2]


def compile_template(
    *,
    name: str,
    slots: tuple[str, ...],
    render: Callable[[dict[str, object]], str],
    blank: tuple[str, ...] = (),
) -> Compiled:
    """Compile what ``render`` makes of a context of placeholders (``blank`` slots get
    ""); RenderError when the static text depends on the placeholders' values."""
    compiled: list[tuple[str, ...]] = []
    for open_, close in _MARKS:
        context: dict[str, object] = {s: Markup(f"{open_}{s}{close}") for s in slots}
        context |= dict.fromkeys(blank, "")
        text = render(context)
        pieces = tuple(re.split(f"{open_}([a-z_]+){close}", text))
        statics = "".join(pieces[0::2])
        if open_.lower() in statics.lower() or close.lower() in statics.lower():
            raise RenderError(
                f"{name}: a filter or expression changed a placeholder; only {{{{ value }}}} "
                "and {% if value %} can be compiled"
            )
        compiled.append(pieces)
    result = Compiled(compiled[0])
    # And filled with short values, it must be what the template makes of them.
    short = {s: Markup("x") for s in slots} | dict.fromkeys(blank, "")
    if compiled[0] != compiled[1] or result.fill(short) != render(dict(short)):
        raise RenderError(
            f"{name}: its text depends on a value's length or content (a filter such as "
            "|length or |truncate on a value?); only {{ value }} and {% if value %} can be compiled"
        )
    return result

"""Rendering: a digest → subject, checked headers, HTML (Jinja2 → MJML) and text → MIME.

Pure stage: no database, no network. Read it in the order a digest goes through it:

* ``content``: the inputs (``Digest``, ``DigestPaper``, ``Confirmation``, ``Sender``) and
  every string a reader sees: where wording changes happen;
* ``headers``: the header rules (nothing user-supplied reaches a header unchecked);
* ``compiled``: Jinja and MJML, plainly, and compiled into fill-in pieces;
* ``reference``: the plain renderer, one message at a time: what a digest *is*;
* ``batch``: the batch renderer the delivery loop keeps, which must equal the reference
  byte for byte, with every speed cache as its own state;
* ``mime``: quoted-printable parts and the RFC 5322 bytes; ``budget``: the size cap;
* ``message``: the bytes a backend sends.
"""

from newsletter.render import mime
from newsletter.render.batch import BatchRenderer
from newsletter.render.budget import HTML_BUDGET
from newsletter.render.compiled import TEMPLATES_DIR, RenderError
from newsletter.render.content import (
    MARK_OPEN,
    Confirmation,
    Digest,
    DigestPaper,
    Sender,
    highlight,
)
from newsletter.render.headers import HeaderInjectionError
from newsletter.render.message import outgoing, outgoing_confirmation
from newsletter.render.mime import RenderedDigest, to_mime_bytes
from newsletter.render.reference import render_confirmation, render_digest
from newsletter.text import latex_to_text

__all__ = [
    "HTML_BUDGET",
    "MARK_OPEN",
    "TEMPLATES_DIR",
    "BatchRenderer",
    "Confirmation",
    "Digest",
    "DigestPaper",
    "HeaderInjectionError",
    "RenderError",
    "RenderedDigest",
    "Sender",
    "highlight",
    "latex_to_text",
    "mime",
    "outgoing",
    "outgoing_confirmation",
    "render_confirmation",
    "render_digest",
    "to_mime_bytes",
]

"""A rendered message as a backend takes it: MIME bytes, DKIM-signed when configured."""

from __future__ import annotations

from datetime import date

from newsletter.backends.base import OutgoingMessage
from newsletter.render.batch import BatchRenderer
from newsletter.render.content import Confirmation, Digest, Sender
from newsletter.render.mime import RenderedDigest, to_mime_bytes
from newsletter.render.reference import render_confirmation, render_digest
from newsletter.signing import Signer


def outgoing(
    *,
    digest: Digest,
    sender: Sender,
    signer: Signer | None = None,
    renderer: BatchRenderer | None = None,
    return_path: str | None = None,
) -> OutgoingMessage:
    """A digest's message; through ``renderer`` when given (the delivery loop's), else
    the reference renderer (a preview, a test). ``return_path``: the envelope sender,
    when bounces go elsewhere than the From address (VERP)."""
    if renderer is not None:
        rendered = renderer.render(digest=digest, sender=sender)
    else:
        rendered = render_digest(digest=digest, sender=sender)
    return _message(
        rendered, digest.message_id, digest.to_address, digest.edition, sender, signer, return_path
    )


def outgoing_confirmation(
    *,
    confirmation: Confirmation,
    sender: Sender,
    signer: Signer | None = None,
    return_path: str | None = None,
) -> OutgoingMessage:
    rendered = render_confirmation(confirmation=confirmation, sender=sender)
    c = confirmation
    return _message(
        rendered, c.message_id, c.to_address, c.date.date(), sender, signer, return_path
    )


def _message(
    rendered: RenderedDigest,
    message_id: str,
    to_address: str,
    edition: date,
    sender: Sender,
    signer: Signer | None,
    return_path: str | None,
) -> OutgoingMessage:
    data = to_mime_bytes(rendered=rendered)
    return OutgoingMessage(
        message_id=message_id,
        sender=return_path or sender.address,
        recipients=(to_address,),
        data=data if signer is None else signer.sign(data),
        edition=edition,
        html_part=rendered.html_part,
        wire_ready=True,  # to_mime_bytes writes CRLF only, and no line starts with "."
    )

"""The backend contract: open, send one message at a time, close.

``send`` returns normally when the message was accepted, and otherwise
raises ``TransientDeliveryError`` (try again later) or
``PermanentDeliveryError`` (do not). Nothing is swallowed: the delivery
stage needs every failure to decide between retry and bounce.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from datetime import date
from types import TracebackType
from typing import Protocol, Self


class Text(Protocol):
    """A part whose text is put together when read (``render.mime.EncodedPart``)."""

    @property
    def text(self) -> str: ...


@dataclass(frozen=True, slots=True)
class OutgoingMessage:
    message_id: str
    sender: str
    recipients: tuple[str, ...]
    data: bytes
    """The whole RFC 5322 message, CRLF line endings."""
    edition: date
    html_part: Text | None = None
    """The HTML part, for backends that keep a browser copy (test mode); its text is
    joined only for them."""
    wire_ready: bool = False
    """``data`` has CRLF line endings, no lone CR or LF, and no line that starts with
    "." (``render.to_mime_bytes`` guarantees all three: tests/test_render.py checks it on
    hostile text), so the SMTP backend sends it as it is instead of scanning 70 kB."""

    @property
    def html(self) -> str | None:
        return None if self.html_part is None else self.html_part.text


class EmailBackend(abc.ABC):
    async def open(self) -> None:  # noqa: B027 (optional hook)
        """Acquire connections or directories; called once before sending."""

    async def close(self) -> None:  # noqa: B027 (optional hook)
        """Release what ``open`` acquired."""

    @abc.abstractmethod
    async def send(self, message: OutgoingMessage) -> None:
        """Hand one message over, or raise a DeliveryError subclass."""

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

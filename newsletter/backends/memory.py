"""Keeps messages in a list; tests read ``sent`` back."""

from __future__ import annotations

from newsletter.backends.base import EmailBackend, OutgoingMessage


class MemoryBackend(EmailBackend):
    def __init__(self) -> None:
        self.sent: list[OutgoingMessage] = []

    async def send(self, message: OutgoingMessage) -> None:
        self.sent.append(message)

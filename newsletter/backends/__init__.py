"""Where messages go: one small class per transport, one contract for all.

``base`` holds the contract; ``smtp`` sends through a relay, ``file``
writes test-mode .eml files, ``memory`` keeps messages for tests.
``get_backend`` picks one by the configured name.
"""

from __future__ import annotations

from newsletter.backends.base import EmailBackend, OutgoingMessage
from newsletter.config import Settings


def get_backend(*, settings: Settings) -> EmailBackend:
    if settings.delivery == "file":
        from newsletter.backends.file import FileBackend

        return FileBackend(directory=settings.outbox_dir)
    if settings.delivery == "memory":
        from newsletter.backends.memory import MemoryBackend

        return MemoryBackend()
    from newsletter.backends.smtp import SMTPBackend

    return SMTPBackend(settings=settings.smtp)


__all__ = ["EmailBackend", "OutgoingMessage", "get_backend"]

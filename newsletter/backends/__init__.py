"""Where messages go: one small class per transport, one contract for all.

``base`` holds the contract; ``file`` writes test-mode .eml files, ``memory``
keeps messages for tests. ``get_backend`` picks one by the configured name.
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
    from newsletter.errors import ConfigError

    raise ConfigError(
        setting="NEWSLETTER_DELIVERY", message=f"{settings.delivery!r} is not available yet"
    )


__all__ = ["EmailBackend", "OutgoingMessage", "get_backend"]

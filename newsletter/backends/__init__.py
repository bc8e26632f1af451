"""Where messages go: one small class per transport, one contract for all.

``base`` holds the contract; ``smtp`` sends through a relay, ``file``
writes test-mode .eml files, ``memory`` keeps messages for tests.
``get_backend`` picks one by the configured name.
"""

from __future__ import annotations

import sqlalchemy as sa

from newsletter.backends.base import EmailBackend, OutgoingMessage
from newsletter.config import Settings


def get_backend(*, settings: Settings, engine: sa.Engine | None = None) -> EmailBackend:
    """The configured backend. With ``engine`` on PostgreSQL, the SMTP rate limit is
    shared by every worker on that database rather than applied per process."""
    if settings.delivery == "file":
        from newsletter.backends.file import FileBackend

        return FileBackend(directory=settings.outbox_dir)
    if settings.delivery == "memory":
        from newsletter.backends.memory import MemoryBackend

        return MemoryBackend()
    from newsletter.backends.smtp import SMTPBackend
    from newsletter.ratelimit import SharedTokenBucket

    shared = engine is not None and engine.dialect.name == "postgresql" and settings.smtp.rate > 0
    bucket = SharedTokenBucket(engine=engine, rate=settings.smtp.rate) if shared else None  # type: ignore[arg-type]
    return SMTPBackend(settings=settings.smtp, bucket=bucket)


__all__ = ["EmailBackend", "OutgoingMessage", "get_backend"]

"""Test mode: one .eml per message under ``<outbox>/<edition>/``, and its HTML beside it.

Files are written to a temporary name and renamed, so a reader (or a crash)
never sees half a message. The name comes from the recipient and the
Message-ID, so a resend after a crash overwrites the same file instead of
adding a second copy.
"""

from __future__ import annotations

import asyncio
import os
import re
from pathlib import Path

from newsletter.backends.base import EmailBackend, OutgoingMessage
from newsletter.errors import PermanentDeliveryError, TransientDeliveryError

_UNSAFE_RE = re.compile(r"[^A-Za-z0-9._@+-]+")


def message_filename(message: OutgoingMessage) -> str:
    who = _UNSAFE_RE.sub("_", message.recipients[0] if message.recipients else "unknown")
    mid = _UNSAFE_RE.sub("_", message.message_id.strip("<>").partition("@")[0])
    return f"{who}--{mid}"


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


class FileBackend(EmailBackend):
    def __init__(self, *, directory: Path) -> None:
        self.directory = directory

    def path_for(self, message: OutgoingMessage) -> Path:
        return self.directory / message.edition.isoformat() / f"{message_filename(message)}.eml"

    def _write(self, message: OutgoingMessage) -> None:
        path = self.path_for(message)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            if message.html is not None:
                _write_atomic(path.with_suffix(".html"), message.html.encode())
            _write_atomic(path, message.data)
        except OSError as exc:
            # A full disk or a permission fixed later is worth retrying; a name
            # the file system refuses is not.
            if exc.errno in (36,):  # ENAMETOOLONG
                raise PermanentDeliveryError(f"{path}: {exc.strerror}") from exc
            raise TransientDeliveryError(f"{path}: {exc.strerror}") from exc

    async def send(self, message: OutgoingMessage) -> None:
        await asyncio.to_thread(self._write, message)

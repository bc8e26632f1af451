"""Test mode: one .eml per message under ``<outbox>/<edition>/``, and its HTML beside it.

Files are written to a temporary name and renamed, so a reader (or a crash)
never sees half a message; a temporary file a full disk or a crash left behind is
removed on the next start. The name comes from the recipient and the Message-ID,
so a resend after a crash overwrites the same file instead of adding a second
copy, and it always fits the file system: a long address is cut and a hash of it
keeps names apart.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import re
import time
from pathlib import Path

from newsletter.backends.base import EmailBackend, OutgoingMessage
from newsletter.errors import PermanentDeliveryError, TransientDeliveryError

_UNSAFE_RE = re.compile(r"[^A-Za-z0-9._@+-]+")


_STALE_SECONDS = 600
_PART_MAX = 80  # characters of each name part: with ".html" far below NAME_MAX (255 bytes)


def _part(text: str) -> str:
    safe = _UNSAFE_RE.sub("_", text)
    if len(safe) <= _PART_MAX:
        return safe
    return f"{safe[: _PART_MAX - 13]}~{hashlib.sha256(text.encode()).hexdigest()[:12]}"


def message_filename(message: OutgoingMessage) -> str:
    who = _part(message.recipients[0] if message.recipients else "unknown")
    mid = _part(message.message_id.strip("<>").partition("@")[0])
    return f"{who}--{mid}"


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)  # a full disk leaves no half-written file behind
        raise


class FileBackend(EmailBackend):
    def __init__(self, *, directory: Path) -> None:
        self.directory = directory

    async def open(self) -> None:
        await asyncio.to_thread(self._sweep)

    def _sweep(self) -> None:
        """Remove temporary files an earlier run left (killed mid-write); only old ones,
        since another delivery process may be writing its own right now."""
        if not self.directory.is_dir():
            return
        cutoff = time.time() - _STALE_SECONDS
        for stale in self.directory.glob("*/.*.tmp"):
            with contextlib.suppress(OSError):
                if stale.stat().st_mtime < cutoff:
                    stale.unlink()

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

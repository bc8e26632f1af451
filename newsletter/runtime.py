"""What every process of the service is built from, assembled in one place.

The CLI, ``newsletter run``, the web app and the forked delivery processes all
take a ``Runtime``: the settings, the engine, the signing key (the environment's,
else the one generated once into ``data/secret_key``), the links signed with it,
the sender and the DKIM signer. Nothing else assembles these, so every process
signs and checks links with the same key, and none can sign with an empty one.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from dataclasses import dataclass, field

import sqlalchemy as sa

from newsletter import db, render, tokens
from newsletter.backends import EmailBackend, get_backend
from newsletter.config import Settings
from newsletter.errors import ConfigError
from newsletter.links import Links
from newsletter.signing import Signer, signer_for


@dataclass(frozen=True, slots=True)
class Runtime:
    settings: Settings
    engine: sa.Engine
    key: bytes = field(repr=False)
    links: Links
    sender: render.Sender
    signer: Signer | None

    def backend(self) -> EmailBackend:
        """A new backend of the configured kind (each delivery process opens its own)."""
        return get_backend(settings=self.settings, engine=self.engine)

    def in_child(self) -> Runtime:
        """The runtime inside a forked process: the parent's pooled database connections
        stay the parent's (SQLAlchemy's rule for fork); the child opens its own."""
        self.engine.dispose(close=False)
        return self


def build_runtime(*, settings: Settings, engine: sa.Engine | None = None) -> Runtime:
    """The runtime for ``settings``; reads (or generates) the key and the DKIM key once."""
    key = secret_key(settings=settings)
    return Runtime(
        settings=settings,
        engine=engine if engine is not None else db.make_engine(settings.database_url),
        key=key,
        links=Links(
            base_url=settings.base_url,
            key=key,
            bounce_localpart=settings.bounce_localpart,
            bounce_domain=settings.bounce_domain,
        ),
        sender=render.Sender(address=settings.from_address, name=settings.from_name or None),
        signer=signer_for(settings.dkim),
    )


def secret_key(*, settings: Settings) -> bytes:
    """The signing key: from the environment, else generated once into data/secret_key.

    The generated file is the zero-configuration fallback for a single machine
    (mode 0600); production sets NEWSLETTER_SECRET_KEY. Processes starting together
    agree on one key: the file is written under a temporary name and linked into
    place, so nobody reads it half-written. Never empty: a key that short would
    make every link forgeable, so it stops the program instead.
    """
    if settings.secret_key:
        return settings.secret_key.encode()
    path = settings.data_dir / "secret_key"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".secret_key.{os.getpid()}.{secrets.token_hex(4)}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "w") as fh:
                fh.write(secrets.token_urlsafe(48))
                fh.flush()
                os.fsync(fh.fileno())
            with contextlib.suppress(FileExistsError):  # another process was first: theirs
                os.link(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
    key = path.read_text(encoding="ascii", errors="replace").strip().encode()
    if len(key) < tokens.MIN_KEY_BYTES:
        raise ConfigError(
            setting="NEWSLETTER_SECRET_KEY",
            message=f"unset, and {path} holds no usable key (delete it to generate a new one)",
        )
    return key

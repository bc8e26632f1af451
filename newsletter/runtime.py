"""What every process of the service is built from, assembled in one place.

The CLI, ``newsletter run``, the web app and the forked delivery processes all
take a ``Runtime``: the settings, the engine, the signing key (the environment's,
else the one generated once into ``data/secret_key``), the links signed with it,
the sender and the DKIM signer. Nothing else assembles these, so every process
signs and checks links with the same key, and none can sign with an empty one.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import sqlalchemy as sa

from newsletter import db, render
from newsletter.backends import EmailBackend, get_backend
from newsletter.config import Settings, secret_key
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
        links=Links(base_url=settings.base_url, key=key),
        sender=render.Sender(address=settings.from_address, name=settings.from_name or None),
        signer=signer_for(settings.dkim),
    )

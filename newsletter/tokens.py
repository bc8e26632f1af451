"""Unforgeable links: ids signed with the secret key, per purpose.

A token is ``<ident>.<HMAC-SHA256(key, purpose:ident) truncated to 160 bits>``,
base64url. The purpose is signed in, so an unsubscribe token opens no
preference page, and a token never works for another id. ``ident`` is a
subscriber or delivery id, or for unsubscribe links ``<subscriber>-<delivery>``:
the digest a link came from is signed in too, so unsubscribes are counted per
edition and cannot be attributed to another digest. Nothing is stored:
rotating the key revokes every link at once.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import re

UNSUBSCRIBE = "unsubscribe"
PREFERENCES = "preferences"
ARCHIVE = "archive"
CONFIRM = "confirm"
_MAC_BYTES = 20
_IDENT_RE = re.compile(r"[0-9]{1,18}(?:-[0-9]{1,18})?")


@functools.lru_cache(maxsize=16)
def _keyed(key: bytes) -> hmac.HMAC:
    # HMAC's keyed inner and outer states, set up once: three links per digest otherwise
    # re-derive them from the key every time.
    return hmac.new(key, digestmod=hashlib.sha256)


def _mac(*, key: bytes, purpose: str, ident: str) -> str:
    mac = _keyed(key).copy()
    mac.update(f"{purpose}:{ident}".encode())
    return base64.urlsafe_b64encode(mac.digest()[:_MAC_BYTES]).rstrip(b"=").decode()


def make_token(*, key: bytes, purpose: str, ident: int | str) -> str:
    ident = str(ident)
    if not _IDENT_RE.fullmatch(ident):
        raise ValueError(f"not a token ident: {ident!r}")
    return f"{ident}.{_mac(key=key, purpose=purpose, ident=ident)}"


def verify_ident(*, key: bytes, purpose: str, token: str) -> str | None:
    """The ident a valid token names, else None. The MAC is compared in constant time."""
    ident, dot, mac = token.partition(".")
    if not dot or not _IDENT_RE.fullmatch(ident):
        return None
    expected = _mac(key=key, purpose=purpose, ident=ident)
    return ident if hmac.compare_digest(expected.encode(), mac.encode("utf-8", "replace")) else None


def verify_token(*, key: bytes, purpose: str, token: str) -> int | None:
    """The id a valid single-id token names, else None."""
    ident = verify_ident(key=key, purpose=purpose, token=token)
    return int(ident) if ident is not None and ident.isdigit() else None


def unsubscribe_token(*, key: bytes, subscriber_id: int, delivery_id: int | None) -> str:
    ident = str(subscriber_id) if delivery_id is None else f"{subscriber_id}-{delivery_id}"
    return make_token(key=key, purpose=UNSUBSCRIBE, ident=ident)


def verify_unsubscribe(*, key: bytes, token: str) -> tuple[int, int | None] | None:
    """(subscriber id, the digest the link came from or None) of a valid unsubscribe token."""
    ident = verify_ident(key=key, purpose=UNSUBSCRIBE, token=token)
    if ident is None:
        return None
    subscriber, _, delivery = ident.partition("-")
    return int(subscriber), int(delivery) if delivery else None

"""Unforgeable links: a subscriber id signed with the secret key, per purpose.

A token is ``<id>.<HMAC-SHA256(key, purpose:id) truncated to 160 bits>``. The
purpose is signed in, so an unsubscribe token opens no preference page and a
token never works for another id. Nothing is stored: rotating the key
revokes every link at once.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac

UNSUBSCRIBE = "unsubscribe"
PREFERENCES = "preferences"
ARCHIVE = "archive"
_MAC_BYTES = 20


@functools.lru_cache(maxsize=16)
def _keyed(key: bytes) -> hmac.HMAC:
    # HMAC's keyed inner and outer states, set up once: three links per digest otherwise
    # re-derive them from the key every time.
    return hmac.new(key, digestmod=hashlib.sha256)


def _mac(*, key: bytes, purpose: str, ident: int) -> str:
    mac = _keyed(key).copy()
    mac.update(f"{purpose}:{ident}".encode())
    return base64.urlsafe_b64encode(mac.digest()[:_MAC_BYTES]).rstrip(b"=").decode()


def make_token(*, key: bytes, purpose: str, ident: int) -> str:
    return f"{ident}.{_mac(key=key, purpose=purpose, ident=ident)}"


def verify_token(*, key: bytes, purpose: str, token: str) -> int | None:
    """The id a valid token names, else None. The MAC is compared in constant time."""
    ident_text, dot, mac = token.partition(".")
    if not dot or not ident_text.isdigit() or len(ident_text) > 18:
        return None
    ident = int(ident_text)
    expected = _mac(key=key, purpose=purpose, ident=ident)
    return ident if hmac.compare_digest(expected.encode(), mac.encode()) else None

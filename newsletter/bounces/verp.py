"""VERP return paths: ``bounces+<subscriber>-<digest>.<mac>@bounce-domain``.

The MAC is the link tokens' HMAC (purpose ``bounce``, the subscriber's salt signed in),
written in lowercase base32: some mail systems fold the case of local parts, and a
forged or altered address must not match anything. It fits the 64 characters RFC 5321
allows a local part.
"""

from __future__ import annotations

import base64
import hmac
import re
from dataclasses import dataclass

from newsletter import tokens

PURPOSE = "bounce"
_RE = re.compile(r"([0-9]{1,18})-([0-9]{1,18})\.([a-z2-7]{32})")


@dataclass(frozen=True, slots=True)
class Verp:
    """What a VERP address names, before its MAC is checked against the salt."""

    subscriber_id: int
    delivery_id: int
    mac: str


def _mac(key: bytes, subscriber_id: int, delivery_id: int, salt: str) -> str:
    if len(key) < tokens.MIN_KEY_BYTES:
        raise tokens.WeakKeyError("refusing to sign a return path with an empty or short key")
    ident = f"{subscriber_id}-{delivery_id}"
    digest = tokens.mac_digest(key=key, purpose=PURPOSE, ident=ident, salt=salt)
    return base64.b32encode(digest).decode().lower()


def return_path(
    *, key: bytes, localpart: str, domain: str, subscriber_id: int, delivery_id: int, salt: str
) -> str:
    mac = _mac(key, subscriber_id, delivery_id, salt)
    return f"{localpart}+{subscriber_id}-{delivery_id}.{mac}@{domain}"


def read(address: str, *, localpart: str, domain: str) -> Verp | None:
    """The ids a return path names, when ``address`` is one of ours; None otherwise."""
    local, at, host = address.strip().strip("<>").rpartition("@")
    if not at or host.lower() != domain.lower():
        return None
    base, plus, tag = local.partition("+")
    if not plus or base.lower() != localpart.lower():
        return None
    found = _RE.fullmatch(tag.lower())
    if found is None:
        return None
    return Verp(int(found[1]), int(found[2]), found[3])


def verify(verp: Verp, *, key: bytes, salt: str) -> bool:
    """The MAC, checked in constant time; an empty or short key checks nothing."""
    if len(key) < tokens.MIN_KEY_BYTES or not salt:
        return False
    expected = _mac(key, verp.subscriber_id, verp.delivery_id, salt)
    return hmac.compare_digest(expected, verp.mac)

"""Unforgeable links: ids signed with the secret key and the subscriber's salt, per purpose.

A token is ``<ids>.<HMAC-SHA256(key, purpose:ids:salt) truncated to 160 bits>``,
base64url, where ``ids`` is the subscriber's id, then what else the link names
(the digest it came in, for instance), joined by ``-``. Three things are signed in
besides the ids:

* the purpose, so an unsubscribe token opens no preference page;
* the subscriber's salt (``subscribers.token_salt``, random per subscriber), so a
  link never acts on whoever later gets a reused id, and an operator can revoke
  every link of one person by drawing a new salt;
* the key, which must be a real one: an empty or short key would let anyone sign
  links, so making a token with one raises and checking one against it fails.

Nothing else is stored: rotating the key revokes every link at once.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass

UNSUBSCRIBE = "unsubscribe"
PREFERENCES = "preferences"
ARCHIVE = "archive"
CONFIRM = "confirm"
VOTE = "vote"  # one paper's vote page: subscriber, digest, paper, topic (links sent until 2026-11)
VOTES = "votes"  # a digest's vote pages: subscriber, digest; the paper is in the path
MIN_KEY_BYTES = 32
_MAC_BYTES = 20
_MAX_IDS = 6
_ID = "[0-9]{1,18}"
_TOKEN_RE = re.compile(rf"({_ID}(?:-{_ID}){{0,{_MAX_IDS - 1}}})\.([A-Za-z0-9_-]{{27}})")


class WeakKeyError(ValueError):
    """A token was to be signed with an empty or short key."""


def new_salt() -> str:
    """A subscriber's token salt: drawn when the subscriber is created or their links revoked."""
    return secrets.token_hex(8)


@functools.lru_cache(maxsize=16)
def _keyed(key: bytes) -> hmac.HMAC:
    # HMAC's keyed inner and outer states, set up once: three links per digest otherwise
    # re-derive them from the key every time.
    return hmac.new(key, digestmod=hashlib.sha256)


def mac_digest(*, key: bytes, purpose: str, ident: str, salt: str) -> bytes:
    """The MAC every signed thing carries (links here, return paths in ``bounces.verp``),
    before each writes it its own way."""
    mac = _keyed(key).copy()
    mac.update(f"{purpose}:{ident}:{salt}".encode())
    return mac.digest()[:_MAC_BYTES]


def _mac(*, key: bytes, purpose: str, ident: str, salt: str) -> str:
    digest = mac_digest(key=key, purpose=purpose, ident=ident, salt=salt)
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def make_token(*, key: bytes, purpose: str, ids: tuple[int, ...], salt: str) -> str:
    """The token for ``ids`` (the subscriber's id first)."""
    if len(key) < MIN_KEY_BYTES:
        raise WeakKeyError("refusing to sign a link with an empty or short key")
    if not salt:
        raise ValueError("a token needs the subscriber's salt")
    numbers = [int(i) for i in ids]  # a list, not a generator: twenty of these a digest
    if not 1 <= len(numbers) <= _MAX_IDS or min(numbers) < 0 or max(numbers) >= 10**18:
        raise ValueError(f"not token ids: {ids!r}")
    ident = "-".join(map(str, numbers))
    return f"{ident}.{_mac(key=key, purpose=purpose, ident=ident, salt=salt)}"


@dataclass(frozen=True, slots=True)
class Claim:
    """What a well-formed token says, before it is checked against the subscriber's salt."""

    ids: tuple[int, ...]
    ident: str
    mac: str

    @property
    def subscriber_id(self) -> int:
        return self.ids[0]


def read_token(token: str) -> Claim | None:
    """The ids a token claims, or None when it is not shaped like one of ours."""
    match = _TOKEN_RE.fullmatch(token)
    if match is None:
        return None
    ident = match[1]
    return Claim(tuple(int(i) for i in ident.split("-")), ident, match[2])


def verify(*, key: bytes, purpose: str, claim: Claim, salt: str) -> bool:
    """Whether the claim was signed for ``purpose`` with ``key`` and ``salt``; the MAC is
    compared in constant time. A short key or an empty salt never verifies."""
    expected = _mac(key=key, purpose=purpose, ident=claim.ident, salt=salt or "-")
    same = hmac.compare_digest(expected.encode(), claim.mac.encode())
    return same and len(key) >= MIN_KEY_BYTES and bool(salt)

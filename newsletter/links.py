"""The public URLs a digest carries, built from the base URL and signed tokens.

Every link names its subscriber and carries their salt in its MAC (see ``tokens``);
``Recipient`` is the pair, so no link can be built for an id alone.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from newsletter import tokens
from newsletter.bounces import verp


@dataclass(frozen=True, slots=True)
class Recipient:
    """Whom a link acts for: the subscriber's id and token salt."""

    subscriber_id: int
    salt: str = field(repr=False)


@dataclass(frozen=True, slots=True)
class Links:
    base_url: str
    key: bytes = field(repr=False)
    bounce_localpart: str = "bounces"
    bounce_domain: str = ""  # "": no VERP return paths

    def __post_init__(self) -> None:
        if len(self.key) < tokens.MIN_KEY_BYTES:
            raise tokens.WeakKeyError("links need the secret key (32 bytes or more)")

    def _url(self, prefix: str, purpose: str, who: Recipient, *more: int) -> str:
        token = tokens.make_token(
            key=self.key, purpose=purpose, ids=(who.subscriber_id, *more), salt=who.salt
        )
        return f"{self.base_url}/{prefix}/{token}"

    def unsubscribe(self, *, who: Recipient, delivery_id: int | None = None) -> str:
        """The one-click link; it names the digest it came in, when there is one."""
        more = () if delivery_id is None else (delivery_id,)
        return self._url("u", tokens.UNSUBSCRIBE, who, *more)

    def preferences(self, *, who: Recipient) -> str:
        return self._url("p", tokens.PREFERENCES, who)

    def archive(self, *, who: Recipient, delivery_id: int) -> str:
        return self._url("d", tokens.ARCHIVE, who, delivery_id)

    def return_path(self, *, who: Recipient, delivery_id: int) -> str | None:
        """The message's envelope sender when VERP is on (``bounces.verp``), else None."""
        if not self.bounce_domain:
            return None
        return verp.return_path(
            key=self.key,
            localpart=self.bounce_localpart,
            domain=self.bounce_domain,
            subscriber_id=who.subscriber_id,
            delivery_id=delivery_id,
            salt=who.salt,
        )

    def confirm(self, *, who: Recipient, delivery_id: int) -> str:
        """The double opt-in link: it names the confirmation mail it came in."""
        return self._url("confirm", tokens.CONFIRM, who, delivery_id)

    def votes(self, *, who: Recipient, delivery_id: int) -> str:
        """Where the vote pages of one digest's papers start: a paper's is this, then
        ``/<paper id>`` (``/up`` and ``/down`` appended: the direction is the reader's
        choice on the page, so it needs no signature). One token for the digest, not one
        per paper: the page accepts only papers the digest holds, which is all a
        per-paper signature proved, and twenty signatures a message were a tenth of
        loading it."""
        return self._url("v", tokens.VOTES, who, delivery_id)

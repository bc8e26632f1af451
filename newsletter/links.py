"""The public URLs a digest carries, built from the base URL and signed tokens."""

from __future__ import annotations

from dataclasses import dataclass

from newsletter import tokens


@dataclass(frozen=True, slots=True)
class Links:
    base_url: str
    key: bytes

    def _url(self, prefix: str, purpose: str, ident: int) -> str:
        token = tokens.make_token(key=self.key, purpose=purpose, ident=ident)
        return f"{self.base_url}/{prefix}/{token}"

    def unsubscribe(self, *, subscriber_id: int, delivery_id: int | None = None) -> str:
        """The one-click link; it names the digest it came in, when there is one."""
        token = tokens.unsubscribe_token(
            key=self.key, subscriber_id=subscriber_id, delivery_id=delivery_id
        )
        return f"{self.base_url}/u/{token}"

    def preferences(self, *, subscriber_id: int) -> str:
        return self._url("p", tokens.PREFERENCES, subscriber_id)

    def archive(self, *, delivery_id: int) -> str:
        return self._url("d", tokens.ARCHIVE, delivery_id)

    def confirm(self, *, subscriber_id: int, delivery_id: int) -> str:
        """The double opt-in link: it names the confirmation mail it came in."""
        token = tokens.make_token(
            key=self.key, purpose=tokens.CONFIRM, ident=f"{subscriber_id}-{delivery_id}"
        )
        return f"{self.base_url}/confirm/{token}"

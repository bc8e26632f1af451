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

    def unsubscribe(self, *, subscriber_id: int) -> str:
        return self._url("u", tokens.UNSUBSCRIBE, subscriber_id)

    def preferences(self, *, subscriber_id: int) -> str:
        return self._url("p", tokens.PREFERENCES, subscriber_id)

    def archive(self, *, delivery_id: int) -> str:
        return self._url("d", tokens.ARCHIVE, delivery_id)

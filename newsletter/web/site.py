"""What every route module shares: the runtime, page rendering, and the token check.

Token links are the only authority: an unknown, forged or stale token gets the same
plain 404 as a page that does not exist, revealing nothing. A token is checked
against the key and the subscriber's salt (see ``newsletter.tokens``), so a link
never acts on someone who later got the same id.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import jinja2
from sqlmodel import Session
from starlette.requests import Request
from starlette.responses import HTMLResponse

from newsletter import tokens
from newsletter.health import WorkerHealth
from newsletter.links import Recipient
from newsletter.models import Subscriber
from newsletter.runtime import Runtime

TEMPLATES_DIR = Path(__file__).resolve().parent.parent.parent / "templates" / "web"
PAGE_HEADERS = {
    "Referrer-Policy": "no-referrer",
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'unsafe-inline'; img-src 'self' data:; "
        "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-store",
}


@dataclass(frozen=True, slots=True)
class Site:
    runtime: Runtime
    pages: jinja2.Environment
    brand: str
    health: WorkerHealth | None = None

    @classmethod
    def create(cls, *, runtime: Runtime, health: WorkerHealth | None = None) -> Site:
        pages = jinja2.Environment(
            loader=jinja2.FileSystemLoader(TEMPLATES_DIR),
            autoescape=True,  # every page is HTML: everything a subscriber typed is escaped
            undefined=jinja2.StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
        )
        return cls(runtime, pages, runtime.settings.from_name or "Paper Digest", health)

    @property
    def key(self) -> bytes:
        return self.runtime.key

    def page(self, name: str, status: int = 200, **context: object) -> HTMLResponse:
        body = self.pages.get_template(name).render(brand=self.brand, **context)
        return HTMLResponse(body, status_code=status, headers=PAGE_HEADERS)

    def not_found(self) -> HTMLResponse:
        return self.page("not_found.html.j2", status=404)

    def subscriber_for(
        self, session: Session, request: Request, *, purpose: str, arity: tuple[int, ...]
    ) -> tuple[Subscriber, tuple[int, ...]] | None:
        """The subscriber the request's valid token of ``purpose`` names, and its ids;
        None for any other token.

        ``arity``: how many ids a token of this purpose carries (the subscriber first).
        """
        claim = tokens.read_token(request.path_params["token"])
        if claim is None or len(claim.ids) not in arity:
            return None
        row = session.get(Subscriber, claim.subscriber_id)
        # Checked even when there is no such subscriber, so the time taken does not
        # tell which ids exist.
        salt = row.token_salt if row is not None else "-"
        good = tokens.verify(key=self.key, purpose=purpose, claim=claim, salt=salt)
        return (row, claim.ids) if good and row is not None else None


def recipient(row: Subscriber) -> Recipient:
    return Recipient(row.id, row.token_salt)  # type: ignore[arg-type]


def masked(email: str) -> str:
    """a•••@example.org: enough to recognise one's address, not to harvest it from a
    forwarded link."""
    local, _, domain = email.partition("@")
    return f"{local[:1]}•••@{domain}"

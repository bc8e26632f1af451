"""The subscriber's side on the web: unsubscribe, the digest archive, health and metrics.

A small Starlette app (``create_app``), served by ``newsletter serve``. Pages are
server-rendered Jinja2 with no JavaScript; every link a subscriber follows carries
an HMAC token (``newsletter.tokens``), so there are no accounts and no cookies.
"""

from newsletter.web.app import create_app

__all__ = ["create_app"]

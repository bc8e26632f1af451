"""One parser per kind of setting: the raw text in, the checked value out, or a
``ConfigError`` that names the setting. ``newsletter.config`` assembles them."""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Callable
from urllib.parse import urlsplit

from newsletter.errors import ConfigError
from newsletter.values import NUMBER_RE, ascii_int

DNS_LABELS_RE = re.compile(
    r"[A-Za-z0-9_](?:[A-Za-z0-9_-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9_](?:[A-Za-z0-9_-]*[A-Za-z0-9])?)*"
)
SOURCE_NAMES = ("dumps", "daily_papers", "arxiv")
_ARXIV_CATEGORY_RE = re.compile(r"[a-z]+(?:-[a-z]+)*(?:\.[A-Za-z]+(?:-[A-Za-z]+)*)?")


# The largest a number setting may be: far past any sensible one, and small enough that
# no clock arithmetic with it overflows (a lease of 1e300 s, a first digest 10**12 days
# back, as a traceback in the middle of a send).
MOST = 10**9


def int_setting(name: str, raw: str, *, minimum: int, maximum: int = MOST) -> int:
    value = ascii_int(raw)
    if value is None:
        raise ConfigError(setting=name, message=f"expected a whole number, got {raw!r}")
    if value < minimum:
        raise ConfigError(setting=name, message=f"must be at least {minimum}, got {value}")
    if value > maximum:
        raise ConfigError(setting=name, message=f"must be at most {maximum}, got {raw[:40]}")
    return value


def workers_setting(name: str, raw: str) -> int:
    """A number of processes, or ``auto``: one per core this process may run on."""
    if raw.strip().lower() == "auto":
        return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1)
    return int_setting(name, raw, minimum=1)


def number_setting(name: str, get: Callable[[str], str], *, minimum: float) -> float:
    raw = get(name)
    if not NUMBER_RE.fullmatch(raw):
        raise ConfigError(setting=name, message=f"expected a number, got {raw!r}")
    value = float(raw)
    if not value >= minimum:  # also refuses NaN
        raise ConfigError(setting=name, message=f"must be at least {minimum:g}, got {raw}")
    if not value <= MOST:  # also refuses 1e999, which float() reads as infinity
        raise ConfigError(setting=name, message=f"must be at most {MOST:g}, got {raw[:40]}")
    return value


def choice_setting(name: str, get: Callable[[str], str], options: tuple[str, ...]) -> str:
    value = get(name).strip().lower()
    if value not in options:
        raise ConfigError(
            setting=name, message=f"expected one of {', '.join(options)}, got {value!r}"
        )
    return value


def comma_list(value: str) -> list[str]:
    return [item for item in (v.strip() for v in value.split(",")) if item]


def _distinct_items(
    name: str, value: str, *, valid: Callable[[str], bool], refused: str, empty: str
) -> tuple[str, ...]:
    """A comma list of at least one item, each ``valid``, repeats dropped, order kept;
    ``refused`` names a bad item as ``{item}``."""
    found: list[str] = []
    for item in comma_list(value):
        if not valid(item):
            raise ConfigError(setting=name, message=refused.format(item=repr(item)))
        if item not in found:
            found.append(item)
    if not found:
        raise ConfigError(setting=name, message=empty)
    return tuple(found)


def sources_setting(value: str) -> tuple[str, ...]:
    names = ", ".join(SOURCE_NAMES)
    return _distinct_items(
        "NEWSLETTER_SOURCES",
        value.lower(),
        valid=SOURCE_NAMES.__contains__,
        refused=f"expected some of {names}, got {{item}}",
        empty=f"name at least one of {names} (dumps: offline)",
    )


def arxiv_categories_setting(value: str) -> tuple[str, ...]:
    return _distinct_items(
        "NEWSLETTER_ARXIV_CATEGORIES",
        value,
        valid=lambda item: len(item) <= 40 and bool(_ARXIV_CATEGORY_RE.fullmatch(item)),
        refused="not an arXiv category (like cs.CL or hep-th): {item}",
        empty="name at least one category (cs.CL)",
    )


def http_url_setting(name: str, get: Callable[[str], str]) -> str:
    """An http(s) URL with a host, nothing a request line or a header could choke on."""
    url = get(name)
    parts = urlsplit(url)
    if (
        parts.scheme not in ("http", "https")
        or not parts.hostname
        or parts.fragment
        or any(c.isspace() or ord(c) < 32 or c in '<>"' for c in url)
    ):
        raise ConfigError(setting=name, message=f"expected an http(s) URL, got {url!r}")
    try:
        parts.port  # noqa: B018  (raises on a port that is not a number)
    except ValueError:
        raise ConfigError(setting=name, message=f"not a valid port in {url!r}") from None
    return url


def proxies_setting(value: str) -> tuple[str, ...]:
    """Addresses or networks (CIDR) of trusted reverse proxies."""
    found = []
    for item in (v.strip() for v in value.split(",")):
        if not item:
            continue
        try:
            ipaddress.ip_network(item, strict=False)
        except ValueError:
            raise ConfigError(
                setting="NEWSLETTER_TRUSTED_PROXIES", message=f"not an address or network: {item!r}"
            ) from None
        found.append(item)
    return tuple(found)


def port_setting(name: str, get: Callable[[str], str]) -> int:
    port = int_setting(name, get(name), minimum=1)
    if port > 65535:
        raise ConfigError(setting=name, message=f"not a port: {port}")
    return port


def listen_address(value: str) -> tuple[str, str, int]:
    """``lmtp://127.0.0.1:8024`` or ``smtp://…`` -> (protocol, host, port)."""
    parts = urlsplit(value)
    try:
        port = parts.port
    except ValueError:
        port = None
    if parts.scheme not in ("lmtp", "smtp") or not parts.hostname or port is None:
        raise ConfigError(
            setting="NEWSLETTER_BOUNCE_LISTEN",
            message=f"expected lmtp://HOST:PORT or smtp://HOST:PORT, got {value!r}",
        )
    return parts.scheme, parts.hostname, port


def bounce_localpart_setting(value: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,15}", value):
        raise ConfigError(
            setting="NEWSLETTER_BOUNCE_LOCALPART",
            message=f"letters, digits, '.', '_' or '-' (at most 16): got {value!r}",
        )
    return value


def bounce_domain_setting(value: str) -> str:
    value = value.strip().lower()
    if value and (not DNS_LABELS_RE.fullmatch(value) or "." not in value):
        raise ConfigError(setting="NEWSLETTER_BOUNCE_DOMAIN", message=f"not a domain: {value!r}")
    return value


def bounce_listen_setting(value: str) -> str:
    value = value.strip()
    if value:
        listen_address(value)
    return value

"""Values people type: whole numbers, times of day, time zones. One rule each.

Numbers are ASCII digits only: ``int()`` and ``str.isdigit()`` also take other
scripts' digits and superscripts ("²" is a digit to ``isdigit`` but not to
``int``), which turned a typed ``²:00`` into a server error.
"""

from __future__ import annotations

import functools
import re
import zoneinfo
from datetime import time

from newsletter.errors import ConfigError

_ASCII_INT_RE = re.compile(r"[+-]?[0-9]{1,18}")
NUMBER_RE = re.compile(r"[+-]?(?:[0-9]{1,18}(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]{1,3})?")


def ascii_int(text: str) -> int | None:
    """The whole number ``text`` spells in ASCII digits, else None.

    ``int()`` and ``str.isdigit()`` also take other scripts' digits and
    superscripts ("²" is a digit to ``isdigit`` but not to ``int``): every number a
    user types goes through here instead.
    """
    text = text.strip()
    return int(text) if _ASCII_INT_RE.fullmatch(text) else None


_SEND_AT_RE = re.compile(r"([0-9]{1,2}):([0-9]{2})")


def validate_send_at(value: str, *, setting: str) -> str:
    """``HH:MM`` (24-hour, ASCII digits), normalized to two digits each."""
    match = _SEND_AT_RE.fullmatch(value.strip())
    if match is None or int(match[1]) >= 24 or int(match[2]) >= 60:
        raise ConfigError(setting=setting, message=f"expected a time HH:MM, got {value!r}")
    return f"{int(match[1]):02d}:{match[2]}"


def clock_time(value: str) -> time:
    """A stored ``HH:MM`` (``validate_send_at``'s) as a time of day."""
    hh, mm = (int(x) for x in value.split(":"))
    return time(hh, mm)


_TZ_NAME_RE = re.compile(r"[A-Za-z0-9_+\-]+(?:/[A-Za-z0-9_+\-]+)*")


# Files in the zone database that load but are no zone of a place: the server's own
# zone ("localtime" follows /etc/localtime), the POSIX fallback rules, the "Factory"
# placeholder; and the leap-second ("right/") and "posix/" trees are not listed at all.
_NOT_PLACES = frozenset(("localtime", "posixrules", "Factory"))


@functools.cache
def _zone_names() -> frozenset[str]:
    return frozenset(zoneinfo.available_timezones()) - _NOT_PLACES


def validate_timezone(value: str, *, setting: str) -> str:
    if len(value) > 64 or not _TZ_NAME_RE.fullmatch(value) or value not in _zone_names():
        raise ConfigError(setting=setting, message=f"unknown IANA time zone {value!r}")
    try:
        zoneinfo.ZoneInfo(value)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise ConfigError(setting=setting, message=f"unknown IANA time zone {value!r}") from None
    return value

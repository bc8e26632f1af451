"""What the web forms need beyond the routes: CSRF tokens, a per-IP limit, and field
validation with errors a person can act on (the filter's line and column).

CSRF: the pages use no cookies, so a form carries a token signed with the secret
key, bound to what it may change (the sign-up form, or one subscriber's
preferences) and to when it was issued; a forged or stale one is refused. A site
that cannot read our page cannot produce one.
"""

from __future__ import annotations

import collections
import hashlib
import hmac
import ipaddress
import threading
import time
from dataclasses import dataclass, field

from newsletter.errors import ConfigError, SubscriberError
from newsletter.models import Cadence
from newsletter.relevance import DEFAULT_DIAL, DIAL
from newsletter.subscribers import (
    MAX_TOPICS,
    check_topic_count,
    distinct_topics,
    normalize_email,
    split_topic,
    validate_cadence,
    validate_dial,
    validate_name,
    validate_topic,
)
from newsletter.values import ascii_int, validate_send_at, validate_timezone

CSRF_MAX_AGE = 2 * 3600  # seconds a form stays valid
DIAL_STEPS = [(str(step), DIAL[step].label) for step in sorted(DIAL)]
WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")


def csrf_token(*, key: bytes, scope: str, now: float | None = None) -> str:
    issued = int(time.time() if now is None else now)
    return f"{issued}.{_csrf_mac(key, scope, issued)}"


def csrf_ok(*, key: bytes, scope: str, token: str, now: float | None = None) -> bool:
    issued_text, dot, mac = token.partition(".")
    issued = ascii_int(issued_text) if dot else None
    if issued is None or not mac.isascii():
        return False
    age = (time.time() if now is None else now) - issued
    expected = _csrf_mac(key, scope, issued)
    return 0 <= age <= CSRF_MAX_AGE and hmac.compare_digest(expected.encode(), mac.encode())


def _csrf_mac(key: bytes, scope: str, issued: int) -> str:
    return hmac.new(key, f"csrf:{scope}:{issued}".encode(), hashlib.sha256).hexdigest()[:40]


class RateLimit:
    """At most ``limit`` events per ``window`` seconds per key (a client address): a
    sliding window, per process. Thread-safe: sync routes run in a thread pool."""

    KEYS = 100_000  # clients remembered at most: the oldest are forgotten first

    def __init__(self, *, limit: int, window: float) -> None:
        self.limit, self.window = limit, window
        # Least recently seen first, so forgetting idle clients costs what it forgets,
        # not a pass over every client on every request.
        self._events: collections.OrderedDict[str, collections.deque[float]] = (
            collections.OrderedDict()
        )
        self._lock = threading.Lock()

    def allow(self, key: str, *, now: float | None = None) -> bool:
        now = time.monotonic() if now is None else now
        with self._lock:
            events = self._events.pop(key, None) or collections.deque()
            self._events[key] = events  # now the most recently seen
            while self._events:
                oldest_key, oldest = next(iter(self._events.items()))
                idle = not oldest or oldest[-1] <= now - self.window
                if oldest_key == key or not (idle or len(self._events) > self.KEYS):
                    break
                del self._events[oldest_key]
            while events and events[0] <= now - self.window:
                events.popleft()
            if len(events) >= self.limit:
                return False
            events.append(now)
            return True


def client_key(host: str) -> str:
    """What a client's rate limit is kept under: its IPv4 address, or its IPv6 /64 (one
    customer's network: any VPS can use billions of addresses within it)."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.ip_network(f"{address}/64", strict=False))
    return str(address)


@dataclass
class Form:
    """Submitted values (echoed back into the form) and errors by field name."""

    values: dict[str, str]
    errors: dict[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.errors


def topic_lines(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip()]


def check_topics(form: Form, name: str = "topics") -> list[str]:
    """The topics, one per line, each checked; the first bad one is reported with its
    line and column, as the filter language's errors are everywhere else."""
    topics: list[str] = []
    lines = form.values.get(name, "").splitlines()
    try:
        check_topic_count(sum(1 for line in lines if line.strip()))
    except SubscriberError:
        form.errors[name] = f"At most {MAX_TOPICS} topics."
        return topics
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            topic = validate_topic(line)
        except SubscriberError as exc:
            syntax = exc.__cause__
            column = f", column {syntax.column}" if hasattr(syntax, "column") else ""
            message = getattr(syntax, "message", str(exc).split(": ", 1)[-1])
            shown = split_topic(line).query if hasattr(syntax, "column") else line.strip()
            form.errors[name] = f"Line {number}{column}: {message} ({shown})"
            return topics
        topics.append(topic)
    topics = distinct_topics(topics)
    if len(topics) > MAX_TOPICS:
        form.errors[name] = f"At most {MAX_TOPICS} topics."
    return topics


def check_schedule(form: Form) -> tuple[str, str]:
    """Time zone and local send time."""
    tz, at = form.values.get("timezone", "").strip(), form.values.get("send_at", "").strip()
    try:
        tz = validate_timezone(tz, setting="timezone")
    except ConfigError:
        form.errors["timezone"] = "Not a time zone we know: use a name such as Europe/Paris."
    try:
        at = validate_send_at(at, setting="send_at")
    except ConfigError:
        form.errors["send_at"] = "Use a 24-hour time such as 08:00."
    return tz, at


def check_email(form: Form) -> str:
    try:
        return normalize_email(form.values.get("email", ""))
    except SubscriberError as exc:
        if "non-ASCII" in str(exc):
            form.errors["email"] = (
                "Addresses with accented letters before the @ cannot be delivered yet: "
                "please use another address."
            )
        else:
            form.errors["email"] = "Enter an email address such as ada@example.org."
        return ""


def check_name(form: Form) -> str | None:
    try:
        return validate_name(form.values.get("name", ""))
    except SubscriberError as exc:
        form.errors["name"] = str(exc).split(": ", 1)[-1].capitalize() + "."
        return None


def check_dial(form: Form) -> int:
    try:
        return validate_dial(form.values.get("dial", "") or str(DEFAULT_DIAL))
    except SubscriberError:
        form.errors["dial"] = "Choose how many papers you want."
        return DEFAULT_DIAL


def check_cadence(form: Form) -> tuple[str, int | None]:
    cadence = form.values.get("cadence", Cadence.DAILY)
    try:
        return validate_cadence(cadence=cadence, weekday=form.values.get("weekday", ""))
    except SubscriberError as exc:
        if exc.field == "weekday":
            form.errors["weekday"] = "Choose the day of the week."
            return Cadence.WEEKLY, None
        form.errors["cadence"] = "Choose daily, weekly or paused."
        return Cadence.DAILY, None

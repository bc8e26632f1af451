"""Asking over HTTP: one GET read within limits (``_read``), retries and pauses (``_Asker``)."""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

import httpx

from newsletter import __version__
from newsletter.config import Settings
from newsletter.corpus.fetch.targets import Target
from newsletter.text import one_line

log = logging.getLogger("newsletter.fetch")

MAX_TRIES = 4
"""Requests per URL in one run: the first and three retries."""
RETRY_BASE_SECONDS = 1.0
"""The first retry's wait (before jitter); it doubles with each retry."""
IN_RUN_WAIT_CAP = 10.0
"""The longest wait inside a run; a longer Retry-After ends the run's tries."""


def user_agent(settings: Settings) -> str:
    return f"newsletter/{__version__} (+{settings.base_url})"


class _Failure(Exception):
    """One URL's failure inside a run; ``transient`` ones may succeed if tried again."""

    def __init__(
        self,
        message: str,
        *,
        transient: bool,
        http_status: int | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message, self.transient = message, transient
        self.http_status, self.retry_after = http_status, retry_after
        self.tries = 1


class _Stopped(Exception):
    """The service is stopping: leave the URL for the next run."""


@dataclass(frozen=True, slots=True)
class _Answer:
    status: int
    headers: httpx.Headers
    body: bytes
    tries: int


# Longer than any back-off: a server's "come back in a million years" is read as this,
# so the wait stays a number any datetime can be moved by.
LONGEST_RETRY_AFTER = 366 * 86_400.0


def retry_after_seconds(value: str | None, *, now: datetime) -> float | None:
    """``Retry-After`` as seconds from ``now``: a number of seconds or an HTTP-date
    (RFC 9110 10.2.3), at most ``LONGEST_RETRY_AFTER``; None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():
        digits = value.lstrip("0") or "0"  # not int() of them all: past 4,300 it raises
        return LONGEST_RETRY_AFTER if len(digits) > 9 else min(float(digits), LONGEST_RETRY_AFTER)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return min(max(0.0, (when - now).total_seconds()), LONGEST_RETRY_AFTER)


def _mib(n: int) -> str:
    return f"{n / 2**20:g} MiB"


def _read(
    client: httpx.Client, *, url: str, headers: dict[str, str], max_bytes: int, timeout: float
) -> tuple[int, httpx.Headers, bytes]:
    """One GET. A 200's body is read whole, but never past ``max_bytes`` nor past
    ``timeout`` seconds in all; other answers' bodies are not read."""
    deadline = time.monotonic() + timeout
    with client.stream("GET", url, headers=headers) as response:
        if response.status_code != 200:
            return response.status_code, response.headers, b""
        declared = response.headers.get("content-length", "")
        if declared.isascii() and declared.isdigit() and int(declared) > max_bytes:
            raise _Failure(
                f"the answer is {_mib(int(declared))}, over NEWSLETTER_FETCH_MAX_MB "
                f"({_mib(max_bytes)}); not read",
                transient=False,
                http_status=200,
            )
        body = bytearray()
        for chunk in response.iter_bytes():
            body += chunk
            if len(body) > max_bytes:
                raise _Failure(
                    f"the answer grew past NEWSLETTER_FETCH_MAX_MB ({_mib(max_bytes)}); "
                    "stopped reading, nothing stored",
                    transient=False,
                    http_status=200,
                )
            if time.monotonic() > deadline:
                raise httpx.ReadTimeout("the whole answer took too long")
        return 200, response.headers, bytes(body)


class _Asker:
    """Requests with the run's manners: one client, a pause between requests to a
    host, retries of what may pass, and an early stop when the service stops."""

    def __init__(
        self,
        *,
        settings: Settings,
        now: datetime,
        sleep: Callable[[float], object],
        polite_delay: float,
        stop: Callable[[], bool],
    ) -> None:
        self.settings, self.now, self.sleep, self.stop = settings, now, sleep, stop
        self.polite_delay = polite_delay
        self.last_request: dict[str, float] = {}
        self.client = httpx.Client(
            timeout=httpx.Timeout(settings.fetch_timeout),
            follow_redirects=True,
            max_redirects=5,
            headers={"User-Agent": user_agent(settings)},
        )

    def close(self) -> None:
        self.client.close()

    def _pause(self, host: str) -> None:
        last = self.last_request.get(host)
        if last is not None and self.polite_delay > 0:
            wait = last + self.polite_delay - time.monotonic()
            if wait > 0:
                self.sleep(wait)
        if self.stop():
            raise _Stopped

    def once(self, target: Target, headers: dict[str, str]) -> tuple[int, httpx.Headers, bytes]:
        self._pause(target.host)
        timeout = self.settings.fetch_timeout
        try:
            return _read(
                self.client,
                url=target.url,
                headers=headers,
                max_bytes=self.settings.fetch_max_bytes,
                timeout=timeout,
            )
        except httpx.TimeoutException:
            message = f"timed out (NEWSLETTER_FETCH_TIMEOUT={timeout:g} s)"
            raise _Failure(message, transient=True) from None
        except httpx.TooManyRedirects:
            raise _Failure("too many redirects", transient=False) from None
        except httpx.UnsupportedProtocol as exc:
            raise _Failure(f"redirected to an unusable URL: {exc}", transient=False) from None
        except httpx.TransportError as exc:  # refused, reset, cut short
            reason = one_line(str(exc))[:200] or type(exc).__name__
            raise _Failure(f"connection failed: {reason}", transient=True) from None
        except httpx.HTTPError as exc:  # e.g. a body whose gzip is broken
            reason = one_line(str(exc))[:200] or type(exc).__name__
            raise _Failure(f"unreadable answer: {reason}", transient=False) from None
        finally:
            self.last_request[target.host] = time.monotonic()

    def get(self, target: Target, headers: dict[str, str]) -> _Answer:
        """The answer (200 or 304), trying again what may pass; ``_Failure`` otherwise."""
        for tries in range(1, MAX_TRIES + 1):
            try:
                status, got, body = self.once(target, headers)
            except _Failure as exc:
                exc.tries = tries
                if not exc.transient:
                    raise
                failure = exc
            else:
                if status in (200, 304):
                    return _Answer(status=status, headers=got, body=body, tries=tries)
                phrase = httpx.codes.get_reason_phrase(status)
                message = f"HTTP {status} {phrase}".rstrip()
                if status != 429 and status < 500:
                    failure = _Failure(message, transient=False, http_status=status)
                    failure.tries = tries
                    raise failure
                failure = _Failure(
                    message,
                    transient=True,
                    http_status=status,
                    retry_after=retry_after_seconds(got.get("retry-after"), now=self.now),
                )
            failure.tries = tries
            if tries == MAX_TRIES:
                raise failure
            wait = failure.retry_after
            if wait is None:
                wait = RETRY_BASE_SECONDS * 2 ** (tries - 1) * random.uniform(0.5, 1.0)
            if wait > IN_RUN_WAIT_CAP:
                failure.message += f" (Retry-After {wait:g} s: later, not in this run)"
                raise failure
            log.info(
                "source retry",
                extra={"source": target.name, "url": target.url, "error": failure.message,
                       "in_seconds": round(wait, 3)},
            )  # fmt: skip
            self.sleep(wait)
            if self.stop():
                raise _Stopped
        raise AssertionError("unreachable")

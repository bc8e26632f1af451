"""SMTP delivery over a pool of persistent aiosmtplib connections.

aiosmtplib has neither a pool nor pipelining, so throughput comes from
``pool_size`` connections used in parallel. A connection is opened on first
use, reused for up to ``max_per_connection`` messages (relays cap a session),
and dropped after any error, so the next message gets a fresh one. A token
bucket holds the whole pool to ``rate`` messages per second.

Outcomes are classified per recipient (``errors.classify_reply``): 4xx, 552,
timeouts and dropped connections are transient; 5xx to RCPT is the
recipient's fault (a hard bounce); 5xx to DATA refuses this message only.
Failures to connect, greet, authenticate or to MAIL FROM are the relay's or
our configuration's, never a subscriber's: they are transient, so a broken
relay delays digests instead of suppressing every subscriber.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

import aiosmtplib

from newsletter.backends.base import EmailBackend, OutgoingMessage
from newsletter.config import SmtpSettings
from newsletter.errors import DeliveryError, TransientDeliveryError, classify_reply
from newsletter.ratelimit import SharedTokenBucket, TokenBucket

log = logging.getLogger(__name__)


@dataclass(slots=True)
class _Connection:
    client: aiosmtplib.SMTP
    sent: int = 0


class SMTPBackend(EmailBackend):
    def __init__(
        self,
        *,
        settings: SmtpSettings,
        local_hostname: str | None = None,
        bucket: TokenBucket | SharedTokenBucket | None = None,
    ) -> None:
        self.settings = settings
        self.local_hostname = local_hostname
        self.bucket = bucket or TokenBucket(settings.rate)
        self._slots: asyncio.Queue[_Connection | None] | None = None

    async def open(self) -> None:
        self._slots = asyncio.Queue()
        for _ in range(self.settings.pool_size):
            self._slots.put_nowait(None)  # connected lazily, on first use

    async def close(self) -> None:
        if self._slots is None:
            return
        while not self._slots.empty():
            conn = self._slots.get_nowait()
            if conn is not None:
                await _quit(conn)
        self._slots = None

    async def _connect(self) -> _Connection:
        s = self.settings
        client = aiosmtplib.SMTP(
            hostname=s.host,
            port=s.port,
            timeout=s.timeout,
            use_tls=s.tls == "implicit",
            # False, not None: None would upgrade whenever offered, and "none" means none.
            start_tls=(s.tls == "starttls"),
            username=s.username or None,
            password=s.password or None,
            local_hostname=self.local_hostname,
        )
        try:
            await client.connect()  # greets, upgrades to TLS and logs in as configured
        except (TimeoutError, aiosmtplib.SMTPException, OSError) as exc:
            code = getattr(exc, "code", None)
            raise TransientDeliveryError(
                f"relay {s.host}:{s.port}: {_describe(exc)}", code=code
            ) from exc
        return _Connection(client)

    async def send(self, message: OutgoingMessage) -> None:
        if self._slots is None:
            raise RuntimeError("SMTPBackend.send before open()")
        await self.bucket.acquire()
        conn = await self._slots.get()
        try:
            if conn is None:
                conn = await self._connect()
            await self._send_on(conn, message)
            conn.sent += 1
            if conn.sent >= self.settings.max_per_connection:
                await _quit(conn)
                conn = None
        except BaseException:
            # After any failure the session's state is unknown: start the next one afresh.
            if conn is not None:
                conn.client.close()
            conn = None
            raise
        finally:
            self._slots.put_nowait(conn)

    async def _send_on(self, conn: _Connection, message: OutgoingMessage) -> None:
        try:
            refused, _reply = await conn.client.sendmail(
                message.sender, list(message.recipients), message.data
            )
        except aiosmtplib.SMTPRecipientsRefused as exc:  # every recipient refused at RCPT
            first = exc.recipients[0]
            raise _recipient_error(first.code, first.message, first.recipient) from exc
        except aiosmtplib.SMTPSenderRefused as exc:
            # MAIL FROM refused: our sender address or the relay's policy, not the recipient.
            raise TransientDeliveryError(
                f"MAIL FROM refused: {exc.message}", code=exc.code
            ) from exc
        except aiosmtplib.SMTPResponseException as exc:  # DATA refused: this message only
            raise classify_reply(exc.code, exc.message) from exc
        except (TimeoutError, aiosmtplib.SMTPException, OSError) as exc:
            raise TransientDeliveryError(_describe(exc)) from exc
        if refused:  # some recipients accepted, some refused: a digest has one, so report it
            address, reply = next(iter(refused.items()))
            raise _recipient_error(reply.code, reply.message, address)


def _recipient_error(code: int, text: str, address: str) -> DeliveryError:
    return classify_reply(code, f"{address}: {text}", recipient_fault=True)


def _describe(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text if isinstance(exc, aiosmtplib.SMTPException) else f"{type(exc).__name__}: {text}"


async def _quit(conn: _Connection) -> None:
    try:
        await conn.client.quit()
    except (TimeoutError, aiosmtplib.SMTPException, OSError):
        conn.client.close()

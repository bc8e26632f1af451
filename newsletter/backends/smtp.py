"""SMTP delivery over a pool of persistent aiosmtplib connections.

aiosmtplib has neither a pool nor pipelining, so throughput comes from
``pool_size`` connections used in parallel. A connection is opened on first
use, reused for up to ``max_per_connection`` messages (relays cap a session),
reset (RSET) after a refusal by reply, and dropped after any other error, so
the next message gets a fresh one. A token
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
import re
from dataclasses import dataclass

import aiosmtplib

from newsletter.backends.base import EmailBackend, OutgoingMessage
from newsletter.config import SmtpSettings
from newsletter.errors import (
    DeliveryError,
    PermanentDeliveryError,
    TransientDeliveryError,
    classify_reply,
)
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
            if client.is_ehlo_or_helo_needed:  # no TLS or login asked for one: say hello
                try:
                    await client.ehlo()
                except aiosmtplib.SMTPHeloError:
                    await client.helo()  # a plain SMTP server without ESMTP
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
        except DeliveryError as exc:
            # A refusal by reply leaves a working session: reset the envelope and keep it
            # (bounces should not cost reconnects). After anything else, or a 421 ("closing
            # channel"), the session's state is unknown: the next message gets a fresh one.
            if conn is not None and not await _reset(conn, exc):
                conn.client.close()
                conn = None
            raise
        except BaseException:
            if conn is not None:
                conn.client.close()
            conn = None
            raise
        finally:
            self._slots.put_nowait(conn)

    async def _send_on(self, conn: _Connection, message: OutgoingMessage) -> None:
        """One mail transaction: MAIL, RCPT, DATA, then the message as it goes on the wire.

        aiosmtplib's ``sendmail`` scans every message with regular expressions
        three times (line endings twice, for SIZE and for DATA, and leading dots):
        about 0.5 ms for a 40 kB digest, more than rendering it. Our messages
        already have CRLF line endings (``wire_bytes`` checks, in C), so the
        envelope commands go through aiosmtplib's ``execute_command`` and the
        body is dot-stuffed with one ``bytes.replace``.
        """
        client, timeout = conn.client, self.settings.timeout
        smtputf8 = not (message.sender.isascii() and all(r.isascii() for r in message.recipients))
        if smtputf8 and not client.supports_extension("smtputf8"):
            raise PermanentDeliveryError(
                "the relay does not offer SMTPUTF8, which a non-ASCII address needs"
            )
        options = [b"SMTPUTF8"] if smtputf8 else []
        if client.supports_extension("size"):  # RFC 1870: the size before dot-stuffing
            options.append(b"SIZE=%d" % len(message.data))
        try:
            reply = await client.execute_command(
                b"MAIL", b"FROM:<" + message.sender.encode() + b">", *options, timeout=timeout
            )
            if reply.code != 250:
                # Our sender address or the relay's policy, never the recipient's fault.
                raise TransientDeliveryError(f"MAIL FROM refused: {reply.message}", code=reply.code)
            (recipient,) = message.recipients  # a digest has exactly one
            reply = await client.execute_command(
                b"RCPT", b"TO:<" + recipient.encode() + b">", timeout=timeout
            )
            if reply.code not in (250, 251):
                raise _recipient_error(reply.code, reply.message, recipient)
            reply = await client.execute_command(b"DATA", timeout=timeout)
            if reply.code != 354:
                raise classify_reply(reply.code, reply.message)
            protocol = client.protocol
            if protocol is None:
                raise TransientDeliveryError("the relay closed the connection before the message")
            protocol.write(wire_bytes(message.data, ready=message.wire_ready))
            reply = await protocol.read_response(timeout=timeout)
            if reply.code != 250:  # the message refused: this message only
                raise classify_reply(reply.code, reply.message)
        except (TimeoutError, aiosmtplib.SMTPException, OSError) as exc:
            raise TransientDeliveryError(_describe(exc)) from exc
        except ValueError as exc:  # aiosmtplib refuses control characters in a command
            raise PermanentDeliveryError(f"unsafe envelope address: {exc}") from exc


_LONE_EOL_RE = re.compile(rb"\r\n|\r|\n")


def wire_bytes(data: bytes, *, ready: bool = False) -> bytes:
    """The DATA payload: CRLF line endings, leading dots doubled, ending in CRLF.CRLF.

    ``ready`` vouches that ``data`` has CRLF line endings only and no line starting
    with "." (``OutgoingMessage.wire_ready``: our own messages), so it goes as it is.
    Other data is checked in C, and rewritten only where it needs it.
    """
    if ready:
        return data + b".\r\n" if data.endswith(b"\r\n") else data + b"\r\n.\r\n"
    crlf = data.count(b"\r\n")
    if data.count(b"\n") != crlf or data.count(b"\r") != crlf:
        data = _LONE_EOL_RE.sub(b"\r\n", data)
    if not data.endswith(b"\r\n"):
        data += b"\r\n"
    if data.startswith(b".") or b"\r\n." in data:
        data = data.replace(b"\r\n.", b"\r\n..")
        if data.startswith(b"."):
            data = b"." + data
    return data + b".\r\n"


def _recipient_error(code: int, text: str, address: str) -> DeliveryError:
    return classify_reply(code, f"{address}: {text}", recipient_fault=True)


def _describe(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text if isinstance(exc, aiosmtplib.SMTPException) else f"{type(exc).__name__}: {text}"


async def _reset(conn: _Connection, error: DeliveryError) -> bool:
    """RSET after a refusal by reply; True when the session is still good to use."""
    if error.code is None or error.code == 421 or not conn.client.is_connected:
        return False
    try:
        return (await conn.client.rset()).code == 250
    except (TimeoutError, aiosmtplib.SMTPException, OSError):
        return False


async def _quit(conn: _Connection) -> None:
    try:
        await conn.client.quit()
    except (TimeoutError, aiosmtplib.SMTPException, OSError):
        conn.client.close()

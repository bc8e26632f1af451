"""SMTP delivery over a pool of persistent aiosmtplib connections.

aiosmtplib has no pool, so throughput comes from ``pool_size`` connections used
in parallel; nor pipelining, so where the relay offers it (RFC 2920) a session's
commands go through ``pipelined.Wire`` once aiosmtplib has opened it: the
envelope and DATA in one write. A connection is opened on first
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
from aiosmtplib import SMTPResponse

from newsletter.backends.base import EmailBackend, OutgoingMessage
from newsletter.backends.pipelined import ReplyError, Wire
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
    client: aiosmtplib.SMTP  # opened the session; knows what the relay offers
    wire: Wire | None = None  # the session's commands from then on, where it pipelines
    sent: int = 0

    @property
    def alive(self) -> bool:
        """Not closed by the relay while it waited in the pool (an idle timeout)."""
        return self.wire.is_open if self.wire is not None else self.client.is_connected


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
            if client.supports_extension("pipelining"):
                return _Connection(client, Wire.take(client))
        except (TimeoutError, aiosmtplib.SMTPException, OSError) as exc:
            code = getattr(exc, "code", None)
            raise TransientDeliveryError(
                f"relay {s.host}:{s.port}: {_describe(exc)}", code=code
            ) from exc
        return _Connection(client)

    async def send(self, message: OutgoingMessage) -> None:
        if self._slots is None:
            raise RuntimeError("SMTPBackend.send before open()")
        envelope = _envelope(message)  # refused before a session is spent on it
        await self.bucket.acquire()
        conn = await self._slots.get()
        try:
            if conn is not None and not conn.alive:
                conn.client.close()
                conn = None
            if conn is None:
                conn = await self._connect()
            await self._send_on(conn, message, envelope)
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

    async def _send_on(
        self, conn: _Connection, message: OutgoingMessage, envelope: tuple[bytes, bytes]
    ) -> None:
        """One mail transaction: MAIL, RCPT, DATA, then the message as it goes on the wire.

        aiosmtplib's ``sendmail`` scans every message with regular expressions
        three times (line endings twice, for SIZE and for DATA, and leading dots):
        about 0.5 ms for a 40 kB digest, more than rendering it. Our messages
        already have CRLF line endings (``wire_bytes`` checks, in C), so the
        envelope commands go through aiosmtplib's ``execute_command`` and the
        body is dot-stuffed with one ``bytes.replace``. Where the relay pipelines,
        the same transaction goes in two round trips (``_pipelined``).
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
        if conn.wire is not None:
            return await _pipelined(conn.wire, message, envelope, options, timeout)
        (recipient,) = message.recipients  # a digest has exactly one
        sender, to = envelope
        try:
            mail = await client.execute_command(b"MAIL", sender, *options, timeout=timeout)
            if error := _refusal(mail, recipient=recipient):
                raise error
            rcpt = await client.execute_command(b"RCPT", to, timeout=timeout)
            if error := _refusal(mail, rcpt, recipient=recipient):
                raise error
            data = await client.execute_command(b"DATA", timeout=timeout)
            if error := _refusal(mail, rcpt, data, recipient=recipient):
                raise error
            protocol = client.protocol
            if protocol is None:
                raise TransientDeliveryError("the relay closed the connection before the message")
            protocol.write(wire_bytes(message.data, ready=message.wire_ready))
            reply = await protocol.read_response(timeout=timeout)
            if reply.code != 250:
                raise _message_refused(reply)
        except (TimeoutError, aiosmtplib.SMTPException, OSError) as exc:
            raise TransientDeliveryError(_describe(exc)) from exc


async def _pipelined(
    wire: Wire,
    message: OutgoingMessage,
    envelope: tuple[bytes, bytes],
    options: list[bytes],
    timeout: float,
) -> None:
    """One mail transaction in two round trips: MAIL, RCPT and DATA together, their
    three replies, then the message and its reply. Each reply is judged as the
    unpipelined transaction judges it, in the order of the commands."""
    (recipient,) = message.recipients  # a digest has exactly one
    sender, to = envelope
    commands = b" ".join((b"MAIL", sender, *options)) + b"\r\nRCPT " + to + b"\r\nDATA\r\n"
    try:
        wire.send(commands, replies=3)
        try:
            mail, rcpt, data = await wire.replies(3, timeout=timeout)
        except ReplyError as exc:  # closed midway: a reply that came first says why
            error = _refusal(*exc.received, recipient=recipient)
            raise error or exc from None
        error = _refusal(mail, rcpt, data, recipient=recipient)
        if error is not None:
            if data.code == 354:  # DATA taken with nobody to deliver to: end it empty
                try:
                    await wire.command(b".\r\n", timeout=timeout)
                except (TimeoutError, aiosmtplib.SMTPException, OSError):
                    wire.close()  # the refusal stands; the session does not
            raise error
        reply = await wire.command(
            wire_bytes(message.data, ready=message.wire_ready), timeout=timeout
        )
        if reply.code != 250:
            raise _message_refused(reply)
    except (TimeoutError, aiosmtplib.SMTPException, OSError) as exc:
        raise TransientDeliveryError(_describe(exc)) from exc


def _refusal(*replies: SMTPResponse, recipient: str) -> DeliveryError | None:
    """The error the first refusing reply of MAIL, RCPT and DATA (in that order) means."""
    for reply, (what, fine) in zip(
        replies, (("MAIL", (250,)), ("RCPT", (250, 251)), ("DATA", (354,))), strict=False
    ):
        if reply.code in fine:
            continue
        if what == "MAIL":  # our sender address or the relay's policy, never the recipient's
            return TransientDeliveryError(f"MAIL FROM refused: {reply.message}", code=reply.code)
        if what == "RCPT":
            return _recipient_error(reply.code, reply.message, recipient)
        return classify_reply(reply.code, reply.message)
    return None


def _envelope(message: OutgoingMessage) -> tuple[bytes, bytes]:
    """MAIL's and RCPT's arguments; an address with a control character (which could
    smuggle a command in) is refused here, before any session is used for it."""
    (recipient,) = message.recipients  # a digest has exactly one
    sender, to = b"FROM:<" + message.sender.encode() + b">", b"TO:<" + recipient.encode() + b">"
    if _UNSAFE_RE.search(sender) or _UNSAFE_RE.search(to):
        raise PermanentDeliveryError("unsafe envelope address: a control character in it")
    return sender, to


_UNSAFE_RE = re.compile(rb"[\x00-\x1f\x7f]")
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


_MAILBOX_STATUS = re.compile(r"[245]\.2\.[0-9]{1,3}\b")  # RFC 3463: x.2.x is the mailbox


def _message_refused(reply: SMTPResponse) -> DeliveryError:
    """The message refused after DATA. A digest has one recipient, so a reply about the
    mailbox (552 storage exceeded, or an enhanced status x.2.x: full, disabled) is the
    recipient's, a bounce; anything else (size, content, policy) is this message's."""
    mailbox = reply.code == 552 or _MAILBOX_STATUS.match(reply.message) is not None
    return classify_reply(reply.code, reply.message, recipient_fault=mailbox)


def _recipient_error(code: int, text: str, address: str) -> DeliveryError:
    return classify_reply(code, f"{address}: {text}", recipient_fault=True)


def _describe(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text if isinstance(exc, aiosmtplib.SMTPException) else f"{type(exc).__name__}: {text}"


async def _reset(conn: _Connection, error: DeliveryError) -> bool:
    """RSET after a refusal by reply; True when the session is still good to use."""
    if error.code is None or error.code == 421 or not conn.alive:
        return False
    try:
        if conn.wire is not None:
            return (await conn.wire.command(b"RSET\r\n", timeout=conn.client.timeout)).code == 250
        return (await conn.client.rset()).code == 250
    except (TimeoutError, aiosmtplib.SMTPException, OSError):
        return False


async def _quit(conn: _Connection) -> None:
    try:
        if conn.wire is None:
            await conn.client.quit()
            return
        if conn.wire.is_open:
            await conn.wire.command(b"QUIT\r\n", timeout=conn.client.timeout)
        conn.client.close()
    except (TimeoutError, aiosmtplib.SMTPException, OSError):
        conn.client.close()

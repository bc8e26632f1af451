"""SMTP command pipelining (RFC 2920) on a session aiosmtplib has opened.

aiosmtplib sends one command and waits for its reply (its protocol parses a reply
only as data arrives, so replies that arrive together are lost). A message then
costs four round trips: MAIL, RCPT, DATA and the message. Where the relay offers
PIPELINING, MAIL, RCPT and DATA go in one write and their three replies are read
together: two round trips a message. On loopback that is fewer wake-ups of both
ends (bench/send.py); to a relay 50 ms away it is 100 ms less per message per
session, which is what bounds a pool's throughput there.

aiosmtplib still connects, greets, upgrades to TLS and logs in; then this protocol
takes the session's transport over (``Wire.take``), and every later command of the
session (the transaction, RSET, QUIT) goes through it.
"""

from __future__ import annotations

import asyncio
from collections import deque

import aiosmtplib
from aiosmtplib import SMTPResponse

MAX_LINE = 8192  # a reply line longer than this is not SMTP (RFC 5321 says 512)
MAX_REPLY = 32 * 1024  # a reply's bytes, all its lines (aiosmtplib's bound too)


class ReplyError(aiosmtplib.SMTPException):
    """The relay's bytes are not SMTP replies, or it closed the session; ``received``
    holds the replies that came before (a 421 to RCPT, then the session closed)."""

    def __init__(self, message: str, received: tuple[SMTPResponse, ...] = ()) -> None:
        super().__init__(message)
        self.received = received


class Wire(asyncio.Protocol):
    """One SMTP session's transport: writes commands, parses every reply as it comes.

    Replies pair with commands by order alone, so the session ends at the first reply
    no command is owed (a relay answering twice, or speaking out of turn): the next
    command would otherwise take it for its own. What it buffers is bounded by the
    replies owed, each at most ``MAX_REPLY`` bytes.
    """

    def __init__(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        self._buffer = bytearray()
        self._lines: list[str] = []  # the lines of a reply not complete yet
        self._size = 0  # their bytes
        self._replies: deque[SMTPResponse] = deque()
        self._owed = 0  # replies still due to commands sent, taken or not
        self._waiter: asyncio.Future[None] | None = None
        self._wanted = 0
        self._failed: BaseException | None = None
        self._code = b""  # of the reply being read

    @classmethod
    def take(cls, client: aiosmtplib.SMTP) -> Wire:
        """Take the connected ``client``'s session over; use only this from now on."""
        transport = client.transport
        if transport is None or transport.is_closing():
            raise ReplyError("the relay closed the connection")
        wire = cls(transport)  # type: ignore[arg-type]  # uvloop's is not asyncio's class
        transport.set_protocol(wire)
        return wire

    # --- asyncio.Protocol -------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        try:
            self._parse()
        except ReplyError as exc:  # the session is over; the replies owed that came count
            self._fail(exc)
            self.transport.close()
        self._settle()

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(ReplyError(f"the relay closed the connection: {exc}" if exc else
                              "the relay closed the connection"))  # fmt: skip
        self._settle()

    def eof_received(self) -> bool:
        self._fail(ReplyError("the relay closed the connection"))
        self._settle()
        return False

    # --- for the backend --------------------------------------------------------------

    @property
    def is_open(self) -> bool:
        return self._failed is None and not self.transport.is_closing()

    def send(self, data: bytes, *, replies: int) -> None:
        """Write ``data``: commands (or a message) that ``replies`` replies answer."""
        if not self.is_open:
            raise ReplyError("the relay closed the connection")
        self._owed += replies
        self.transport.write(data)

    async def replies(self, count: int, *, timeout: float | None) -> list[SMTPResponse]:
        """The next ``count`` replies, in the order of the commands sent."""
        if len(self._replies) < count:
            loop = asyncio.get_running_loop()
            self._waiter, self._wanted = loop.create_future(), count
            self._settle()
            timer = None
            if timeout is not None:
                timer = loop.call_later(timeout, self._time_out, self._waiter)
            try:
                await self._waiter
            except ReplyError as exc:
                received = tuple(self._replies)
                self._replies.clear()
                raise ReplyError(str(exc), received) from None
            finally:
                self._waiter = None
                if timer is not None:
                    timer.cancel()
        self._owed -= count
        return [self._replies.popleft() for _ in range(count)]

    async def command(self, data: bytes, *, timeout: float | None) -> SMTPResponse:
        """Write ``data`` (a command, or a message's DATA) and read its one reply."""
        self.send(data, replies=1)
        (reply,) = await self.replies(1, timeout=timeout)
        return reply

    def close(self) -> None:
        self.transport.close()

    # --- inside ---------------------------------------------------------------------

    def _parse(self) -> None:
        while True:
            end = self._buffer.find(b"\n")
            if end < 0:
                if len(self._buffer) > MAX_LINE:
                    raise ReplyError("a reply line too long")
                return
            line = bytes(self._buffer[: end + 1])
            del self._buffer[: end + 1]
            if len(self._replies) >= self._owed:
                raise ReplyError(f"a reply no command asked for: {_shown(line)}")
            self._size += len(line)
            if len(line) > MAX_LINE or self._size > MAX_REPLY:
                raise ReplyError("a reply too long")
            code, more = line[:3], line[3:4]
            if not code.isdigit() or more not in (b" ", b"-", b"\r", b"\n"):
                raise ReplyError(f"not an SMTP reply: {_shown(line)}")
            if self._lines and code != self._code:  # RFC 5321 4.2.1: one code per reply
                raise ReplyError(f"a reply's lines disagree: {_shown(line)}")
            self._code = code
            self._lines.append(line[4:].strip(b" \t\r\n").decode("utf-8", "surrogateescape"))
            if more != b"-":
                self._replies.append(SMTPResponse(int(code), "\n".join(self._lines)))
                self._lines, self._size = [], 0

    def _fail(self, exc: BaseException) -> None:
        if self._failed is None:
            self._failed = exc

    def _settle(self) -> None:
        """Wake the reader: with its replies when they are all here, else with why
        they never will be."""
        waiter = self._waiter
        if waiter is None or waiter.done():
            return
        if len(self._replies) >= self._wanted:
            waiter.set_result(None)
        elif self._failed is not None:
            waiter.set_exception(self._failed)

    def _time_out(self, waiter: asyncio.Future[None]) -> None:
        if not waiter.done():
            waiter.set_exception(TimeoutError("timed out waiting for the relay's reply"))


def _shown(line: bytes) -> str:
    return repr(line.decode("utf-8", "replace").strip()[:80])

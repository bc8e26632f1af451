"""A real SMTP server for tests: aiosmtpd on a free local port, with faults on demand.

It records every message it accepted (recipient, Message-ID, bytes), so tests
can assert "exactly one accepted copy" from the server's side, and it injects
the failures a relay produces: transient 421/451/452 on a fraction of
recipients, 550/553 for some addresses, 552 (mailbox full) for the first tries
of some addresses, a connection dropped in the middle of DATA, replies slower
than the client's timeout, and whole outages (``stop`` then ``start``). With
``pipelining`` it offers PIPELINING, so clients send their envelope in one write.
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import random
import socket
import ssl
import threading
from collections import Counter
from dataclasses import dataclass, field

from aiosmtpd.controller import Controller


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Faults:
    transient_rate: float = 0.0  # fraction of RCPTs answered 421, 451 or 452
    permanent: dict[str, int] = field(default_factory=dict)  # address -> 550 / 553 at RCPT
    full_for: dict[str, int] = field(default_factory=dict)  # address -> how many tries get 552
    drop_in_data_rate: float = 0.0  # fraction of DATAs whose connection is cut before the reply
    slow_rate: float = 0.0  # fraction of DATAs answered after ``slow_seconds``
    slow_seconds: float = 0.0
    after_data: dict[str, str] = field(default_factory=dict)  # address -> reply to its message
    # address -> the raw bytes its RCPT is answered with, every try (a relay's own text:
    # Latin-1, a NUL, whatever it sends)
    rcpt_bytes: dict[str, bytes] = field(default_factory=dict)
    seed: int = 1


@dataclass(frozen=True)
class Accepted:
    recipient: str
    message_id: str
    data: bytes
    mail_from: str = ""  # the envelope sender (the return path)
    encrypted: bool = False  # came over TLS (STARTTLS or implicit)


class FaultyHandler:
    def __init__(self, faults: Faults, *, pipelining: bool = False) -> None:
        self.faults = faults
        self.pipelining = pipelining  # offer PIPELINING (aiosmtpd reads pipelined commands)
        self.rng = random.Random(faults.seed)
        self.lock = threading.Lock()
        self.accepted: list[Accepted] = []
        self.tries: Counter[str] = Counter()
        self.injected: Counter[str] = Counter()
        self.sessions = 0  # connections greeted

    async def handle_EHLO(self, server, session, envelope, hostname, responses):  # type: ignore[no-untyped-def]
        self.sessions += 1
        session.host_name = hostname
        if self.pipelining:
            responses.insert(-1, "250-PIPELINING")
        return responses

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):  # type: ignore[no-untyped-def]
        f = self.faults
        self.tries[address] += 1
        if address in f.rcpt_bytes:
            self.injected["raw"] += 1
            return f.rcpt_bytes[address]  # aiosmtpd writes bytes as they are
        if address in f.permanent:
            self.injected["permanent"] += 1
            return f"{f.permanent[address]} 5.1.1 <{address}>: no such user"
        if self.tries[address] <= f.full_for.get(address, 0):
            self.injected["552"] += 1
            return "552 5.2.2 mailbox full"
        if self.rng.random() < f.transient_rate:
            code = self.rng.choice([421, 451, 452])
            self.injected[str(code)] += 1
            if code == 421:  # "service not available, closing channel": and it does
                asyncio.get_running_loop().call_soon(server.transport.close)
                return "421 4.3.2 too busy, closing"
            return f"{code} 4.3.0 try again later"
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server, session, envelope):  # type: ignore[no-untyped-def]
        f = self.faults
        if self.rng.random() < f.drop_in_data_rate:
            self.injected["drop"] += 1
            server.transport.close()  # gone before the reply: the client cannot know
            return "421 4.4.2 connection dropped"
        if self.rng.random() < f.slow_rate:
            self.injected["slow"] += 1
            await asyncio.sleep(f.slow_seconds)
            return "451 4.4.2 timed out"  # a server too slow to answer accepted nothing
        refused = [f.after_data[r] for r in envelope.rcpt_tos if r in f.after_data]
        if refused:
            self.injected["after_data"] += 1
            return refused[0]
        message = email.message_from_bytes(envelope.original_content, policy=email.policy.default)
        with self.lock:
            for rcpt in envelope.rcpt_tos:
                self.accepted.append(
                    Accepted(
                        rcpt,
                        str(message["Message-ID"]),
                        envelope.original_content,
                        envelope.mail_from or "",
                        session.ssl is not None  # after STARTTLS
                        or server.transport.get_extra_info("ssl_object") is not None,
                    )
                )
        return "250 2.0.0 queued"

    def copies(self) -> Counter[str]:
        with self.lock:
            return Counter(a.recipient for a in self.accepted)


class SMTPServer:
    """Start, stop and start again on the same port (an outage)."""

    def __init__(
        self,
        faults: Faults | None = None,
        *,
        port: int | None = None,
        pipelining: bool = False,
        tls: str = "none",  # "starttls" (offered, required) or "implicit": with ``context``
        context: ssl.SSLContext | None = None,
    ) -> None:
        self.handler = FaultyHandler(faults or Faults(), pipelining=pipelining)
        self.port = port or free_port()
        self.controller: Controller | None = None
        self.tls, self.context = tls, context

    def start(self) -> SMTPServer:
        options: dict[str, object] = {}
        if self.tls == "starttls":
            options = {"tls_context": self.context, "require_starttls": True}
        elif self.tls == "implicit":
            options = {"ssl_context": self.context}
        self.controller = Controller(self.handler, hostname="127.0.0.1", port=self.port, **options)  # type: ignore[arg-type]
        self.controller.start()
        return self

    def stop(self) -> None:
        if self.controller is not None:
            self.controller.stop()
            self.controller = None

"""SMTP pipelining (RFC 2920) against a relay that answers nothing of an envelope
until DATA has arrived: a client that waits for each reply before the next command
would time out here, so every message that gets through was pipelined. The relay's
answers are scripted per recipient: refusals at MAIL and RCPT, DATA taken with
nobody to deliver to, a session closed after a 421, bytes that are not SMTP. And
sessions over STARTTLS and implicit TLS, pipelined or not."""

from __future__ import annotations

import asyncio
import ipaddress
import ssl
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest

from newsletter import eventloop
from newsletter.backends.base import OutgoingMessage
from newsletter.backends.smtp import SMTPBackend
from newsletter.config import SmtpSettings
from newsletter.errors import DeliveryError, PermanentDeliveryError, TransientDeliveryError
from tests.smtp_server import SMTPServer

# recipient -> replies to MAIL, RCPT, DATA (a lenient relay may take DATA after a refusal)
SCRIPT = {
    "refused@example.org": b"250 ok\r\n550 5.1.1 no such user\r\n354 go on\r\n",
    "strict@example.org": b"250 ok\r\n550 5.1.1 no such user\r\n503 5.5.1 no recipients\r\n",
    "sender@example.org": b"451 4.3.0 try later\r\n503 5.5.1 MAIL first\r\n503 5.5.1 no\r\n",
    "busy@example.org": b"250 ok\r\n421-4.3.2 too busy,\r\n421 4.3.2 closing\r\n",
    "garbled@example.org": b"hello there\r\n",
    "gone@example.org": b"250 ok\r\n550 5.1.1 no such user\r\n354 go on\r\n",  # then closes
    "chatty@example.org": b"250-" + b"x" * 60 + b"\r\n",  # ... and on, one reply without end
}


@dataclass
class Relay:
    envelopes: list[list[bytes]] = field(default_factory=list)
    bodies: list[bytes] = field(default_factory=list)
    sessions: int = 0

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.sessions += 1
        writer.write(b"220 relay ready\r\n")
        await reader.readline()  # EHLO
        writer.write(b"250-relay\r\n250-PIPELINING\r\n250 SIZE 1000000\r\n")
        try:
            while True:
                commands: list[bytes] = []
                while not commands or commands[-1] not in (b"DATA\r\n", b"QUIT\r\n", b"RSET\r\n"):
                    line = await reader.readline()
                    if not line:
                        return
                    commands.append(line)
                if commands[-1] == b"QUIT\r\n":
                    writer.write(b"221 bye\r\n")
                    return
                if commands[-1] == b"RSET\r\n":
                    writer.write(b"250 reset\r\n" * len(commands))
                    continue
                self.envelopes.append(commands)
                rcpt = commands[1].decode().split("<", 1)[1].split(">", 1)[0]
                replies = SCRIPT.get(rcpt, b"250 ok\r\n250 ok\r\n354 go on\r\n")
                if rcpt == "chatty@example.org":
                    for _ in range(2000):  # 128 kB of one reply's lines, more than any reply
                        writer.write(replies)
                    await writer.drain()
                    continue
                writer.write(replies)
                if rcpt in ("busy@example.org", "gone@example.org"):
                    await writer.drain()
                    return  # 421: closing the channel; or gone before "."
                if not replies.endswith(b"354 go on\r\n"):
                    continue
                body = b""
                while not body.endswith(b"\r\n.\r\n") and body != b".\r\n":
                    line = await reader.readline()
                    if not line:
                        return
                    body += line
                self.bodies.append(body)
                writer.write(b"250 queued\r\n")
                if rcpt == "twice@example.org":  # a reply nobody asked for
                    writer.write(b"250 queued\r\n")
                if rcpt == "bye@example.org":  # an idle timeout, as the session waits
                    await writer.drain()
                    return
        finally:
            writer.close()


def message(to: str, n: int = 0) -> OutgoingMessage:
    return OutgoingMessage(
        message_id=f"<m{n}@x>",
        sender="papers@example.org",
        recipients=(to,),
        data=f"Message-ID: <m{n}@x>\r\n\r\nbody {n}\r\n".encode(),
        edition=date(2026, 11, 30),
        wire_ready=True,
    )


async def send_all(
    messages: list[OutgoingMessage], *, pause: float = 0.0
) -> tuple[Relay, list[DeliveryError | None]]:
    relay = Relay()
    server = await asyncio.start_server(relay.serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    settings = SmtpSettings(
        host="127.0.0.1", port=port, username="", password="", tls="none", timeout=2.0,
        pool_size=1, max_per_connection=100, rate=0.0,
    )  # fmt: skip
    outcomes: list[DeliveryError | None] = []
    async with server, SMTPBackend(settings=settings) as backend:
        for m in messages:
            try:
                await backend.send(m)
                outcomes.append(None)
            except DeliveryError as exc:
                outcomes.append(exc)
            await asyncio.sleep(pause)
    return relay, outcomes


def test_the_envelope_goes_in_one_write_and_a_session_carries_many() -> None:
    relay, outcomes = asyncio.run(send_all([message(f"r{n}@example.org", n) for n in range(3)]))
    assert outcomes == [None, None, None]
    assert relay.sessions == 1
    assert [[c.split(b":")[0] for c in e] for e in relay.envelopes] == [
        [b"MAIL FROM", b"RCPT TO", b"DATA\r\n"]
    ] * 3
    assert relay.bodies == [
        f"Message-ID: <m{n}@x>\r\n\r\nbody {n}\r\n.\r\n".encode() for n in range(3)
    ]


@pytest.mark.parametrize(
    ("to", "kind", "code", "same_session"),
    [
        ("refused@example.org", PermanentDeliveryError, 550, True),  # DATA ended empty
        ("strict@example.org", PermanentDeliveryError, 550, True),
        ("sender@example.org", TransientDeliveryError, 451, True),  # never the reader's fault
        ("busy@example.org", TransientDeliveryError, 421, False),  # the relay closed it
        ("garbled@example.org", TransientDeliveryError, None, False),
        # The refusal stands when the session dies as "." ends DATA; it is not retried.
        ("gone@example.org", PermanentDeliveryError, 550, False),
        # A reply that does not end: cut at 32 kB, not buffered whole.
        ("chatty@example.org", TransientDeliveryError, None, False),
    ],
)
def test_each_refusal_is_judged_by_the_first_reply_that_refuses(
    to: str, kind: type[DeliveryError], code: int | None, same_session: bool
) -> None:
    relay, outcomes = asyncio.run(send_all([message(to, 1), message("next@example.org", 2)]))
    error = outcomes[0]
    assert isinstance(error, kind) and error.code == code, error
    if to == "garbled@example.org":
        assert "not an SMTP reply: 'hello there'" in str(error)
    assert outcomes[1] is None  # the next message goes through, on a fresh session if need be
    assert relay.sessions == (1 if same_session else 2)
    # A relay that took DATA with nobody to deliver to got an empty message, not ours.
    assert relay.bodies[-1].endswith(b"body 2\r\n.\r\n")
    assert b"body 1" not in b"".join(relay.bodies)
    if to == "refused@example.org":
        assert relay.bodies[0] == b".\r\n"
    if to == "chatty@example.org":
        assert "a reply too long" in str(error)


def test_a_reply_nobody_asked_for_ends_the_session_and_pairs_with_nothing() -> None:
    """A relay that answers a message twice: the message counts as sent (its reply
    came), the extra reply is not taken for the next command's (which would turn the
    next refusal into something else), and the next message goes on a new session."""
    relay, outcomes = asyncio.run(
        send_all([message("twice@example.org", 1), message("refused@example.org", 2),
                  message("next@example.org", 3)])
    )  # fmt: skip
    assert outcomes[0] is None
    refused = outcomes[1]
    assert isinstance(refused, PermanentDeliveryError) and refused.code == 550, refused
    assert refused.recipient_fault  # a hard bounce, as it should be
    assert outcomes[2] is None and relay.sessions == 2


def test_a_session_the_relay_closed_while_it_waited_is_replaced_not_failed() -> None:
    """An idle timeout: the relay closed the session between two messages."""
    relay, outcomes = asyncio.run(
        send_all([message("bye@example.org", n) for n in range(3)], pause=0.1)
    )
    assert outcomes == [None, None, None]
    assert relay.sessions == 3


def test_a_control_character_in_an_address_is_refused_before_anything_is_sent() -> None:
    relay, outcomes = asyncio.run(send_all([message("a@example.org\r\nRCPT TO:<b@x>")]))
    assert isinstance(outcomes[0], PermanentDeliveryError)
    assert "control character" in str(outcomes[0]) and not relay.envelopes


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1, and its key."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test relay")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(hours=1))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    folder = tmp_path_factory.mktemp("tls")
    cert_file, key_file = folder / "relay.pem", folder / "relay.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_file, key_file


@pytest.mark.parametrize("pipelining", [False, True], ids=["one-by-one", "pipelined"])
@pytest.mark.parametrize("tls", ["starttls", "implicit"])
def test_tls_sessions_carry_messages_pipelined_or_not(
    certificate: tuple[Path, Path], tls: str, pipelining: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Over STARTTLS and implicit TLS, on uvloop as ``newsletter send`` runs: the relay's
    certificate verified (trusted here through SSL_CERT_FILE, as an operator trusts a
    private relay's CA), then the pipelined protocol takes the encrypted session over."""
    cert_file, key_file = certificate
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert_file, key_file)
    monkeypatch.setenv("SSL_CERT_FILE", str(cert_file))
    server = SMTPServer(pipelining=pipelining, tls=tls, context=context).start()
    settings = SmtpSettings(
        host="127.0.0.1", port=server.port, username="", password="", tls=tls, timeout=5.0,
        pool_size=1, max_per_connection=100, rate=0.0,
    )  # fmt: skip

    async def send() -> None:
        async with SMTPBackend(settings=settings) as backend:
            for n in range(3):
                await backend.send(message(f"t{n}@example.org", n))

    try:
        eventloop.run(send())
    finally:
        server.stop()
    accepted = server.handler.accepted
    assert [(a.recipient, a.encrypted) for a in accepted] == [
        (f"t{n}@example.org", True) for n in range(3)
    ]
    assert accepted[2].data == b"Message-ID: <m2@x>\r\n\r\nbody 2\r\n"
    # One connection for the three (greeted twice over STARTTLS: EHLO again after it)
    assert server.handler.sessions == (2 if tls == "starttls" else 1)

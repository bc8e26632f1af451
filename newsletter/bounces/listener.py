"""The bounce mailbox as a service: an LMTP (or SMTP) listener that the MTA hands the
bounce address's mail to, inside ``newsletter run`` and alone as ``bounces serve``.

Only the bounce addresses are taken (``LOCALPART@DOMAIN`` and its VERP forms): anything
else is refused at RCPT, so the listener relays nothing. Each message is processed as
``bounces process`` does, in a thread (it talks to the database), and accepted once
recorded; a message that cannot be processed gets a temporary failure, so the MTA
keeps it and tries again. LMTP answers once per recipient after DATA (RFC 2033), as
Mailman's LMTP runner does with aiosmtpd.
"""

from __future__ import annotations

import asyncio
import logging

from aiosmtpd.lmtp import LMTP
from aiosmtpd.smtp import SMTP

from newsletter.bounces.process import BounceAddress, process_message
from newsletter.errors import ConfigError
from newsletter.models import utcnow
from newsletter.runtime import Runtime
from newsletter.setting_values import listen_address

log = logging.getLogger("newsletter.bounces")
MAX_MESSAGE_BYTES = 10 * 2**20


class _Handler:
    def __init__(self, runtime: Runtime, protocol: str) -> None:
        settings = runtime.settings
        self.runtime, self.protocol = runtime, protocol
        self.address = BounceAddress(settings.bounce_localpart, settings.bounce_domain, runtime.key)

    def ours(self, address: str) -> bool:
        local, _, domain = address.rpartition("@")
        base = local.partition("+")[0].lower()
        return domain.lower() == self.address.domain and base == self.address.localpart.lower()

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):  # type: ignore[no-untyped-def]
        if not self.ours(address):
            return "550 5.1.1 not a bounce address of this service"
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server, session, envelope):  # type: ignore[no-untyped-def]
        try:
            outcome = await asyncio.to_thread(
                process_message,
                engine=self.runtime.engine,
                data=envelope.original_content,
                address=self.address,
                policy=self.runtime.settings.retry,
                now=utcnow(),
                source=self.protocol,
                envelope_to=list(envelope.rcpt_tos),
            )
        except Exception:
            log.exception("cannot process a bounce", extra={"rcpt": envelope.rcpt_tos})
            status = "451 4.3.0 cannot record this now, try again later"
        else:
            log.info(
                "bounce processed",
                extra={
                    "kind": outcome.report.kind.value,
                    "action": outcome.action,
                    "delivery_id": outcome.delivery_id,
                    "subscriber_id": outcome.subscriber_id,
                },
            )
            status = "250 2.0.0 recorded"
        if self.protocol == "lmtp":  # one reply per recipient
            return "\r\n".join([status] * len(envelope.rcpt_tos))
        return status


async def serve_bounces(*, runtime: Runtime, listen: str, stop: asyncio.Event) -> None:
    """Listen until ``stop``; the bound port is logged (a port of 0 picks a free one)."""
    if not runtime.settings.bounce_domain:
        raise ConfigError(
            setting="NEWSLETTER_BOUNCE_DOMAIN", message="the bounce listener needs the domain"
        )
    protocol, host, port = listen_address(listen)
    handler = _Handler(runtime, protocol)
    kind = LMTP if protocol == "lmtp" else SMTP

    def factory() -> SMTP:
        return kind(handler, data_size_limit=MAX_MESSAGE_BYTES, hostname=host)

    server = await asyncio.get_running_loop().create_server(factory, host=host, port=port)
    bound = server.sockets[0].getsockname()[1]
    log.info("bounce listener started", extra={"protocol": protocol, "host": host, "port": bound})
    try:
        await stop.wait()
    finally:
        server.close()
        await server.wait_closed()

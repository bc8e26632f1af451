"""POST /webhooks/ses, /webhooks/postmark, /webhooks/mailgun: relays reporting bounces and
complaints. Each is off (404) until its setting is there; a call that is not signed
by whom it claims is refused (403, or 401 for a missing password) and logged, and
changes nothing. What a report means is recorded as a bounce message's would be
(``bounces.process.record``), tied to its digest by the return path when the relay
reports it, else by Message-ID and recipient, else (an authenticated relay naming
only an address) by the latest digest sent to that address.
"""

from __future__ import annotations

import asyncio
import logging

import httpx
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from newsletter.bounces.classify import Report
from newsletter.bounces.process import BounceAddress, record
from newsletter.bounces.webhooks import (
    MailgunVerifier,
    SnsVerifier,
    WebhookRefused,
    loads,
    mailgun_report,
    postmark_check,
    postmark_report,
    ses_reports,
)
from newsletter.models import utcnow
from newsletter.web.site import PAGE_HEADERS, Site

log = logging.getLogger("newsletter.webhooks")
MAX_BODY = 512 * 1024  # an SES notification with headers is a few kB


def _fetch(url: str) -> bytes:
    reply = httpx.get(url, timeout=10, follow_redirects=False)
    reply.raise_for_status()
    return reply.content[:65536]


def routes(site: Site) -> list[Route]:
    settings, engine = site.runtime.settings, site.runtime.engine
    address = (
        BounceAddress(settings.bounce_localpart, settings.bounce_domain, site.key)
        if settings.bounce_domain
        else None
    )
    sns = SnsVerifier(hosts=settings.sns_cert_hosts, fetch=_fetch)
    mailgun = MailgunVerifier(key=settings.mailgun_signing_key)

    def refused(relay: str, exc: WebhookRefused, status: int = 403) -> Response:
        # The reason goes to the log; the caller learns only that it was refused.
        log.warning("webhook refused", extra={"relay": relay, "reason": str(exc)})
        return JSONResponse({"error": "refused"}, status_code=status, headers=PAGE_HEADERS)

    async def body_of(request: Request) -> bytes:
        body = bytearray()
        async for chunk in request.stream():  # read no further than the cap
            body += chunk
            if len(body) > MAX_BODY:
                raise WebhookRefused("the body is too large")
        return bytes(body)

    async def recorded(relay: str, found: list[tuple[Report, str, str]]) -> Response:
        """Record each (report, return path, id) and answer with what was done."""
        actions = []
        for report, return_path, ident in found:
            outcome = await asyncio.to_thread(
                record,
                engine=engine,
                report=report,
                bounce_id=f"{relay}:{ident}:{','.join(report.recipients)}",
                source=relay,
                address=address,
                candidates=[return_path] if return_path else [],
                policy=settings.retry,
                now=utcnow(),
                by_recipient=True,
            )
            actions.append(outcome.action)
        log.info("webhook processed", extra={"relay": relay, "actions": actions})
        return JSONResponse({"recorded": actions}, headers=PAGE_HEADERS)

    async def ses(request: Request) -> Response:
        if not settings.ses_topic_arn:
            return site.not_found()
        try:
            message = loads(await body_of(request))
            if not isinstance(message, dict):
                raise WebhookRefused("not an SNS message")
            # The cheap check first: no certificate is fetched for another topic.
            if message.get("TopicArn") != settings.ses_topic_arn:
                raise WebhookRefused(f"another topic: {message.get('TopicArn')!r}")
            await asyncio.to_thread(sns.verify, message)  # may fetch the certificate
        except WebhookRefused as exc:
            return refused("ses", exc)
        if message["Type"] == "SubscriptionConfirmation":
            url = str(message.get("SubscribeURL", ""))
            if not sns.allowed(url):
                return refused("ses", WebhookRefused(f"subscribe URL not allowed: {url!r}"))
            await asyncio.to_thread(_fetch, url)
            log.info("SNS subscription confirmed", extra={"topic": message.get("TopicArn")})
            return JSONResponse({"confirmed": True}, headers=PAGE_HEADERS)
        try:
            notification = loads(str(message.get("Message", "")).encode())
            found = [(r, rp, str(message.get("MessageId"))) for r, rp in ses_reports(notification)]
        except (WebhookRefused, AttributeError, TypeError) as exc:
            return refused("ses", WebhookRefused(f"not an SES event: {exc}"), 400)
        return await recorded("ses", found)

    async def postmark(request: Request) -> Response:
        if not settings.postmark_webhook_secret:
            return site.not_found()
        try:
            postmark_check(
                request.headers.get("authorization", ""), secret=settings.postmark_webhook_secret
            )
            payload = loads(await body_of(request))
        except WebhookRefused as exc:
            return refused("postmark", exc, 401)
        if not isinstance(payload, dict):
            return refused("postmark", WebhookRefused("not a Postmark event"), 400)
        report = postmark_report(payload)
        ident = str(payload.get("ID", ""))
        return await recorded("postmark", [(report, "", ident)] if report is not None else [])

    async def mailgun_hook(request: Request) -> Response:
        if not settings.mailgun_signing_key:
            return site.not_found()
        try:
            payload = loads(await body_of(request))
            if not isinstance(payload, dict):
                raise WebhookRefused("not a Mailgun event")
            token = mailgun.verify(payload.get("signature"))
        except WebhookRefused as exc:
            return refused("mailgun", exc)
        event = payload.get("event-data")
        try:
            found = mailgun_report(event) if isinstance(event, dict) else None
        except (AttributeError, TypeError) as exc:
            return refused("mailgun", WebhookRefused(f"not a Mailgun event: {exc}"), 400)
        ident = str(event.get("id", "")) if isinstance(event, dict) else ""
        try:
            return await recorded("mailgun", [(found[0], found[1], ident)] if found else [])
        except BaseException:
            mailgun.release(token)  # not recorded: Mailgun's retry must pass
            raise

    return [
        Route("/webhooks/ses", ses, methods=["POST"]),
        Route("/webhooks/postmark", postmark, methods=["POST"]),
        Route("/webhooks/mailgun", mailgun_hook, methods=["POST"]),
    ]

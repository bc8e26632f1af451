"""Relays' webhooks: Amazon SES (through SNS), Postmark and Mailgun, each checked and
turned into the same ``Report`` a bounce message gives.

* **SES / SNS**: the message is signed by SNS (SignatureVersion 1: SHA1withRSA, 2:
  SHA256withRSA) over its fields in a fixed order; the certificate is fetched from
  ``SigningCertURL``, which must be https on a host the operator allows (by default
  ``sns.*.amazonaws.com``), and the ``TopicArn`` must be the configured one. A
  subscription is confirmed by visiting its ``SubscribeURL`` (same host rule).
* **Postmark** does not sign its payloads: the webhook URL carries HTTP basic auth, and
  the password is the configured secret.
* **Mailgun** signs ``timestamp + token`` with HMAC-SHA256 and the webhook signing key;
  a timestamp older than 15 minutes, or a token seen before, is refused (replays).

Each failure is a ``WebhookRefused`` with the reason, which the route logs.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from newsletter.bounces.classify import Kind, Report, refuses_us, status_code, status_kind

MAILGUN_MAX_AGE = 15 * 60  # seconds
_SNS_FIELDS = {
    "Notification": ("Message", "MessageId", "Subject", "Timestamp", "TopicArn", "Type"),
    "SubscriptionConfirmation": (
        "Message", "MessageId", "SubscribeURL", "Timestamp", "Token", "TopicArn", "Type",
    ),
}  # fmt: skip


class WebhookRefused(Exception):
    """A call that is not signed, or not signed by whom it claims."""


# --- Amazon SES through SNS ---------------------------------------------------------------


class SnsVerifier:
    """Checks SNS signatures; certificates are fetched once per URL (``fetch``: bytes)."""

    def __init__(self, *, hosts: tuple[str, ...], fetch: Callable[[str], bytes]) -> None:
        self.fetch = fetch
        # A "*" stands for one DNS label, never for dots: sns.*.amazonaws.com does not
        # admit sns.evil.example.amazonaws.com.attacker.net or a.b.amazonaws.com.
        self._hosts = [
            re.compile(re.escape(h).replace(r"\*", "[a-z0-9-]+"), re.IGNORECASE) for h in hosts
        ]
        self._certs: dict[str, x509.Certificate] = {}
        self._lock = threading.Lock()

    def allowed(self, url: str, *, certificate: bool = False) -> bool:
        try:
            parts = urlsplit(url)
            host = (parts.hostname or "").lower()
        except ValueError:
            return False
        # Plain http only on loopback (a relay's test double on this machine).
        scheme_ok = parts.scheme == "https" or host in ("127.0.0.1", "localhost")
        # A certificate is a .pem file, named without a query (each query string would
        # otherwise be a new fetch and a new cache entry).
        shape_ok = not certificate or (parts.path.endswith(".pem") and not parts.query)
        return scheme_ok and shape_ok and any(p.fullmatch(host) for p in self._hosts)

    def verify(self, message: Mapping[str, Any]) -> None:
        kind = message.get("Type")
        if not isinstance(kind, str) or kind not in _SNS_FIELDS:
            raise WebhookRefused(f"not an SNS message type we take: {kind!r}")
        url = str(message.get("SigningCertURL", ""))
        if not self.allowed(url, certificate=True):
            raise WebhookRefused(f"signing certificate from a host not allowed: {url!r}")
        version = str(message.get("SignatureVersion", ""))
        algorithm = {"1": hashes.SHA1(), "2": hashes.SHA256()}.get(version)
        if algorithm is None:
            raise WebhookRefused(f"unknown SignatureVersion {version!r}")
        text = "".join(
            f"{name}\n{message[name]}\n" for name in _SNS_FIELDS[kind] if name in message
        )
        try:
            signature = base64.b64decode(str(message.get("Signature", "")), validate=True)
        except ValueError:
            raise WebhookRefused("the signature is not base64") from None
        key = self._certificate(url).public_key()
        if not isinstance(key, rsa.RSAPublicKey):
            raise WebhookRefused("the signing certificate does not hold an RSA key")
        try:
            key.verify(signature, text.encode(), padding.PKCS1v15(), algorithm)
        except InvalidSignature:
            raise WebhookRefused("the SNS signature does not check") from None

    def _certificate(self, url: str) -> x509.Certificate:
        with self._lock:
            found = self._certs.get(url)
        if found is None:
            try:
                found = x509.load_pem_x509_certificate(self.fetch(url))
            except Exception as exc:
                raise WebhookRefused(f"cannot load the signing certificate: {exc}") from None
            with self._lock:
                if len(self._certs) >= 16:  # AWS rotates a few; anything more is noise
                    self._certs.clear()
                self._certs[url] = found
        return found


# SES bounce subtypes about the message, not the address (SES's bounce types table).
_SES_MESSAGE_PROBLEMS = ("MessageTooLarge", "ContentRejected", "AttachmentRejected")


def ses_reports(notification: Mapping[str, Any]) -> list[tuple[Report, str]]:
    """An SES event (the SNS ``Message``, decoded) -> (report, its return path)."""
    kind = notification.get("notificationType") or notification.get("eventType")
    mail = notification.get("mail") or {}
    return_path = str(mail.get("source", ""))
    message_id = _angle((mail.get("commonHeaders") or {}).get("messageId"))
    if kind == "Bounce":
        bounce = notification.get("bounce") or {}
        permanent = bounce.get("bounceType") == "Permanent"
        rejected = bounce.get("bounceSubType") in _SES_MESSAGE_PROBLEMS

        def kind_of(status: object) -> Kind:
            if bounce.get("bounceType") == "Undetermined":
                return Kind.UNRECOGNISED
            if rejected:
                return Kind.REJECTED
            return status_kind(str(status) if status else None, permanent=permanent)

        return [
            (
                Report(
                    kind_of(r.get("status")),
                    (str(r.get("emailAddress", "")).lower(),),
                    r.get("status"),
                    str(r.get("diagnosticCode", ""))[:300],
                    message_id,
                    "ses",
                ),
                return_path,
            )
            for r in bounce.get("bouncedRecipients") or []
        ]
    if kind == "Complaint":
        complaint = notification.get("complaint") or {}
        complained = complaint.get("complainedRecipients") or []
        return [
            (Report(Kind.COMPLAINT, (str(r.get("emailAddress", "")).lower(),), None, "",
                    message_id, "ses"), return_path)
            for r in complained
        ]  # fmt: skip
    return []  # deliveries and other events: nothing to do


# --- Postmark -----------------------------------------------------------------------------


def postmark_check(authorization: str, *, secret: str) -> None:
    scheme, _, encoded = authorization.partition(" ")
    try:
        user_pass = base64.b64decode(encoded, validate=True).decode()
    except (ValueError, UnicodeDecodeError):
        user_pass = ""
    password = user_pass.partition(":")[2]
    if scheme.lower() != "basic" or not hmac.compare_digest(password.encode(), secret.encode()):
        raise WebhookRefused("missing or wrong basic-auth password")


def postmark_report(payload: Mapping[str, Any]) -> Report | None:
    record_type = payload.get("RecordType")
    email = str(payload.get("Email", "")).lower()
    if record_type == "SpamComplaint":
        return Report(Kind.COMPLAINT, (email,), how="postmark")
    if record_type != "Bounce":
        return None
    kind = {
        "HardBounce": Kind.HARD, "BadEmailAddress": Kind.HARD, "ManuallyDeactivated": Kind.HARD,
        "SoftBounce": Kind.SOFT, "Transient": Kind.SOFT, "DnsError": Kind.SOFT,
        # A spam filter flagged the content, not the reader: the message was refused
        "SpamNotification": Kind.REJECTED, "SpamComplaint": Kind.COMPLAINT,
        "AutoResponder": Kind.AUTO_REPLY,
    }.get(str(payload.get("Type")), Kind.UNRECOGNISED)  # fmt: skip
    return Report(kind, (email,), None, str(payload.get("Description", ""))[:300], how="postmark")


# --- Mailgun ------------------------------------------------------------------------------


class MailgunVerifier:
    def __init__(self, *, key: str) -> None:
        self.key = key
        self._seen: dict[str, float] = {}
        self._lock = threading.Lock()

    def verify(self, signature: object, *, now: float | None = None) -> str:
        """The call's token when its signature checks, is fresh and was not used before.
        Mailgun signs the timestamp and token only, not the event: the token is taken
        here, at once, so the same signature sent many times at once with other events
        passes once; ``release`` it if the call fails to record (Mailgun retries a
        failed call with the same token). It is kept until its signed timestamp is too
        old to pass, whatever the clock said when it came."""
        if not isinstance(signature, Mapping):
            raise WebhookRefused("no Mailgun signature")
        now = time.time() if now is None else now
        timestamp, token = str(signature.get("timestamp", "")), str(signature.get("token", ""))
        given = str(signature.get("signature", ""))
        expected = hmac.new(self.key.encode(), (timestamp + token).encode(), hashlib.sha256)
        if not token or not hmac.compare_digest(expected.hexdigest().encode(), given.encode()):
            raise WebhookRefused("the Mailgun signature does not check")
        if not timestamp.isascii() or not timestamp.isdigit():
            raise WebhookRefused("the Mailgun timestamp is not a number")
        if abs(now - int(timestamp)) > MAILGUN_MAX_AGE:
            raise WebhookRefused("the Mailgun timestamp is too old (a replay?)")
        with self._lock:
            self._seen = {t: until for t, until in self._seen.items() if until >= now}
            if token in self._seen:
                raise WebhookRefused("this Mailgun token was used before (a replay)")
            self._seen[token] = int(timestamp) + MAILGUN_MAX_AGE  # when it can pass no more
        return token

    def release(self, token: str) -> None:
        """The call with this token was not recorded: Mailgun may send it again."""
        with self._lock:
            self._seen.pop(token, None)


def mailgun_report(event: Mapping[str, Any]) -> tuple[Report, str] | None:
    name = event.get("event")
    recipient = str(event.get("recipient", "")).lower()
    headers = (event.get("message") or {}).get("headers") or {}
    message_id = _angle(headers.get("message-id"))
    return_path = str((event.get("envelope") or {}).get("sender", ""))
    if name == "complained":
        return Report(Kind.COMPLAINT, (recipient,), None, "", message_id, "mailgun"), return_path
    if name != "failed":
        return None
    status = event.get("delivery-status") or {}
    text = str(status.get("description") or status.get("message") or "")[:300]
    code = str(status.get("enhanced-code") or "") or status_code(text)
    if event.get("severity") != "permanent":
        kind = Kind.DELAYED  # Mailgun is still trying (greylisting, a busy server)
    elif event.get("reason") in (None, "bounce", "suppress-bounce"):
        # Mailgun judged the address: hard, unless the code or the words say a block of
        # us (a "bounce" for 5.7.1 rate limited), or a full mailbox
        kind = status_kind(code or None, permanent=True)
        if refuses_us(code or None, text):
            kind = Kind.REJECTED
        elif kind == Kind.REJECTED:
            kind = Kind.HARD  # a code of no clear meaning (5.5.0, 5.4.1): Mailgun's word
    else:  # esp-block, old (gave up after retrying), generic: the address only if it says
        kind = status_kind(code, permanent=True) if code else Kind.REJECTED
    return Report(kind, (recipient,), code or None, text, message_id, "mailgun"), return_path


def _angle(value: object) -> str | None:
    text = str(value or "").strip()
    if not text:
        return None
    return text if text.startswith("<") else f"<{text}>"


def loads(body: bytes) -> Any:
    try:
        return json.loads(body)
    except (ValueError, RecursionError):
        raise WebhookRefused("the body is not JSON") from None

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
import fnmatch
import hashlib
import hmac
import json
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from newsletter.bounces.classify import Kind, Report

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
        self.hosts, self.fetch = hosts, fetch
        self._certs: dict[str, x509.Certificate] = {}
        self._lock = threading.Lock()

    def allowed(self, url: str) -> bool:
        parts = urlsplit(url)
        host = (parts.hostname or "").lower()
        # Plain http only on loopback (a relay's test double on this machine).
        scheme_ok = parts.scheme == "https" or host in ("127.0.0.1", "localhost")
        return scheme_ok and any(fnmatch.fnmatchcase(host, pattern) for pattern in self.hosts)

    def verify(self, message: Mapping[str, Any]) -> None:
        kind = message.get("Type")
        if kind not in _SNS_FIELDS:
            raise WebhookRefused(f"not an SNS message type we take: {kind!r}")
        url = str(message.get("SigningCertURL", ""))
        if not self.allowed(url):
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
                self._certs[url] = found
        return found


def ses_reports(notification: Mapping[str, Any]) -> list[tuple[Report, str]]:
    """An SES event (the SNS ``Message``, decoded) -> (report, its return path)."""
    kind = notification.get("notificationType") or notification.get("eventType")
    mail = notification.get("mail") or {}
    return_path = str(mail.get("source", ""))
    message_id = _angle((mail.get("commonHeaders") or {}).get("messageId"))
    if kind == "Bounce":
        bounce = notification.get("bounce") or {}
        permanent = bounce.get("bounceType") == "Permanent"
        return [
            (
                Report(
                    Kind.HARD if permanent else Kind.SOFT,
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
        "SpamNotification": Kind.COMPLAINT, "SpamComplaint": Kind.COMPLAINT,
        "AutoResponder": Kind.AUTO_REPLY,
    }.get(str(payload.get("Type")), Kind.UNRECOGNISED)  # fmt: skip
    return Report(kind, (email,), None, str(payload.get("Description", ""))[:300], how="postmark")


# --- Mailgun ------------------------------------------------------------------------------


class MailgunVerifier:
    def __init__(self, *, key: str) -> None:
        self.key = key
        self._seen: dict[str, float] = {}
        self._lock = threading.Lock()

    def verify(self, signature: Mapping[str, Any], *, now: float | None = None) -> None:
        now = time.time() if now is None else now
        timestamp, token = str(signature.get("timestamp", "")), str(signature.get("token", ""))
        given = str(signature.get("signature", ""))
        expected = hmac.new(self.key.encode(), (timestamp + token).encode(), hashlib.sha256)
        if not token or not hmac.compare_digest(expected.hexdigest(), given):
            raise WebhookRefused("the Mailgun signature does not check")
        if not timestamp.isascii() or not timestamp.isdigit():
            raise WebhookRefused("the Mailgun timestamp is not a number")
        if abs(now - int(timestamp)) > MAILGUN_MAX_AGE:
            raise WebhookRefused("the Mailgun timestamp is too old (a replay?)")
        with self._lock:
            self._seen = {t: at for t, at in self._seen.items() if at > now - MAILGUN_MAX_AGE}
            if token in self._seen:
                raise WebhookRefused("this Mailgun token was used before (a replay)")
            self._seen[token] = now


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
    kind = Kind.HARD if event.get("severity") == "permanent" else Kind.SOFT
    text = str(status.get("description") or status.get("message") or "")[:300]
    code = status.get("enhanced-code") or None
    return Report(kind, (recipient,), code, text, message_id, "mailgun"), return_path


def _angle(value: object) -> str | None:
    text = str(value or "").strip()
    if not text:
        return None
    return text if text.startswith("<") else f"<{text}>"


def loads(body: bytes) -> Any:
    try:
        return json.loads(body)
    except ValueError:
        raise WebhookRefused("the body is not JSON") from None

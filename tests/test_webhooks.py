"""Relays' webhooks over real HTTP: Amazon SES through SNS (signed with a certificate this
test makes and serves from a local HTTP server), Postmark (basic auth) and Mailgun
(HMAC). Good calls have their consequence; unsigned, badly signed, replayed and
foreign ones are refused and change nothing."""

from __future__ import annotations

import base64
import concurrent.futures
import contextlib
import datetime as dt
import hashlib
import hmac
import http.server
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID

from newsletter.web import create_app
from tests.helpers import live_server, runtime_for
from tests.smtp_server import free_port
from tests.test_bounces import DOMAIN, _sent, _settings, _state

TOPIC = "arn:aws:sns:eu-west-1:123456789012:newsletter-bounces"
POSTMARK = "p" * 40
MAILGUN = "key-0123456789abcdef"


class _CertServer:
    """Serves the signing certificate and counts visits to the subscribe URL."""

    def __init__(self, pem: bytes) -> None:
        self.visits: list[str] = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                outer.visits.append(self.path)
                body = pem if self.path == "/cert.pem" else b"<ConfirmSubscriptionResponse/>"
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture(scope="module")
def signing() -> Iterator[tuple[rsa.RSAPrivateKey, _CertServer]]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sns.test")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(1).not_valid_before(now).not_valid_after(now + dt.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )  # fmt: skip
    server = _CertServer(cert.public_bytes(serialization.Encoding.PEM))
    yield key, server
    server.server.shutdown()


def _sns(key: rsa.RSAPrivateKey, cert_url: str, kind: str, **fields: str) -> dict[str, str]:
    message = {"Type": kind, "MessageId": fields.pop("MessageId", "m-1"), "TopicArn": TOPIC,
               "Timestamp": "2026-11-23T09:00:00.000Z", "SignatureVersion": "1",
               "SigningCertURL": cert_url, **fields}  # fmt: skip
    names = {
        "Notification": ("Message", "MessageId", "Subject", "Timestamp", "TopicArn", "Type"),
        "SubscriptionConfirmation": ("Message", "MessageId", "SubscribeURL", "Timestamp",
                                     "Token", "TopicArn", "Type"),
    }[kind]  # fmt: skip
    text = "".join(f"{n}\n{message[n]}\n" for n in names if n in message)
    signature = key.sign(text.encode(), padding.PKCS1v15(), hashes.SHA1())
    return message | {"Signature": base64.b64encode(signature).decode()}


def _ses_bounce(accepted, address: str, bounce_type: str = "Permanent") -> str:  # type: ignore[no-untyped-def]
    return json.dumps({
        "notificationType": "Bounce",
        "bounce": {"bounceType": bounce_type, "bouncedRecipients": [
            {"emailAddress": address, "status": "5.1.1", "diagnosticCode": "smtp; 550 5.1.1"}]},
        "mail": {"source": accepted.mail_from, "commonHeaders": {"messageId": accepted.message_id}},
    })  # fmt: skip


def _mailgun(event: dict, *, token: str, at: int | None = None) -> dict:  # type: ignore[type-arg]
    timestamp = str(int(time.time()) if at is None else at)
    mac = hmac.new(MAILGUN.encode(), (timestamp + token).encode(), hashlib.sha256).hexdigest()
    return {"signature": {"timestamp": timestamp, "token": token, "signature": mac},
            "event-data": event}  # fmt: skip


@contextlib.contextmanager
def _relays(tmp_path: Path, url: str, engine) -> Iterator[httpx.Client]:  # type: ignore[no-untyped-def]
    """The web app with all three webhooks on, and a client for it."""
    port = free_port()
    settings = _settings(
        tmp_path, url, NEWSLETTER_BASE_URL=f"http://127.0.0.1:{port}",
        NEWSLETTER_SES_TOPIC_ARN=TOPIC, NEWSLETTER_SNS_CERT_HOSTS="127.0.0.1",
        NEWSLETTER_POSTMARK_WEBHOOK_SECRET=POSTMARK, NEWSLETTER_MAILGUN_SIGNING_KEY=MAILGUN,
    )  # fmt: skip
    with (
        live_server(create_app(runtime=runtime_for(settings, engine)), port) as base,
        httpx.Client(base_url=base, timeout=10) as client,
    ):
        yield client


def test_relay_webhooks_record_signed_reports_and_refuse_the_rest(
    tmp_path: Path, database_url: str, signing
) -> None:  # type: ignore[no-untyped-def]
    key, certs = signing
    people = ["ses@example.org", "pm@example.org", "pmspam@example.org", "mg@example.org",
              "mgspam@example.org", "bystander@example.org"]  # fmt: skip
    engine, accepted = _sent(tmp_path, database_url, people)
    cert = f"{certs.url}/cert.pem"
    with _relays(tmp_path, database_url, engine) as client:
        # Amazon SES through SNS.
        body = _ses_bounce(accepted["ses@example.org"], "ses@example.org")
        other = _ses_bounce(accepted["bystander@example.org"], "bystander@example.org")
        good = _sns(key, cert, "Notification", Message=body)
        bad = [
            good | {"Message": other},  # signed for another message
            {k: v for k, v in good.items() if k != "Signature"},
            good | {"Signature": "bm90IGEgc2lnbmF0dXJl"},
            _sns(key, "http://evil.example/cert.pem", "Notification", Message=body),
            _sns(key, cert, "Notification", Message=body, TopicArn="arn:aws:sns:x:1:other"),
            good | {"SignatureVersion": "7"},
        ]
        for message in bad:
            assert client.post("/webhooks/ses", json=message).status_code == 403
        assert client.post("/webhooks/ses", content=b"{not json").status_code == 403
        done = client.post("/webhooks/ses", json=good)
        assert done.status_code == 200 and done.json()["recorded"] == ["suppressed: hard bounce"]
        assert _state(engine, "ses@example.org")[0] == "suppressed"
        again = client.post("/webhooks/ses", json=good)
        assert again.json()["recorded"] == ["nothing: already processed"]
        confirm = _sns(key, cert, "SubscriptionConfirmation", MessageId="m-2", Token="t",
                       Message="confirm", SubscribeURL=f"{certs.url}/confirm?t=1")  # fmt: skip
        assert client.post("/webhooks/ses", json=confirm).json() == {"confirmed": True}
        assert "/confirm?t=1" in certs.visits

        # Postmark: basic auth on the webhook URL.
        hard = {"RecordType": "Bounce", "ID": 42, "Type": "HardBounce", "Email": "pm@example.org",
                "Description": "The server was unable to deliver your message"}  # fmt: skip
        for auth in (None, ("postmark", "wrong"), ("postmark", POSTMARK[:-1])):
            assert client.post("/webhooks/postmark", json=hard, auth=auth).status_code == 401
        assert _state(engine, "pm@example.org")[0] == "active"
        ok = client.post("/webhooks/postmark", json=hard, auth=("postmark", POSTMARK))
        assert ok.status_code == 200 and _state(engine, "pm@example.org")[0] == "suppressed"
        spam = {"RecordType": "SpamComplaint", "ID": 43, "Email": "pmspam@example.org"}
        client.post("/webhooks/postmark", json=spam, auth=("postmark", POSTMARK))
        assert _state(engine, "pmspam@example.org")[:2] == (
            "unsubscribed",
            ["bounce.complaint", "subscriber.unsubscribed"],
        )

        # Mailgun: HMAC over timestamp and token, no replays.
        mg = accepted["mg@example.org"]
        failed = {"id": "ev-1", "event": "failed", "severity": "permanent",
                  "recipient": "mg@example.org", "envelope": {"sender": mg.mail_from},
                  "message": {"headers": {"message-id": mg.message_id.strip("<>")}},
                  "delivery-status": {"code": 550, "description": "No such mailbox"}}  # fmt: skip
        forged = _mailgun(failed, token="t" * 50)
        forged["signature"]["signature"] = "0" * 64
        old = _mailgun(failed, token="o" * 50, at=int(time.time()) - 3600)
        for payload in (forged, old, {"event-data": failed}):
            assert client.post("/webhooks/mailgun", json=payload).status_code == 403
        signed = _mailgun(failed, token="g" * 50)
        assert client.post("/webhooks/mailgun", json=signed).status_code == 200
        assert client.post("/webhooks/mailgun", json=signed).status_code == 403  # replayed
        assert _state(engine, "mg@example.org")[0] == "suppressed"
        spam_id = accepted["mgspam@example.org"].message_id
        complained = {"id": "ev-2", "event": "complained", "recipient": "mgspam@example.org",
                      "message": {"headers": {"message-id": spam_id}}}  # fmt: skip
        client.post("/webhooks/mailgun", json=_mailgun(complained, token="c" * 50))
        assert _state(engine, "mgspam@example.org")[0] == "unsubscribed"

    assert _state(engine, "bystander@example.org") == ("active", [], 0)


def test_webhooks_refuse_malformed_calls_with_4xx_and_read_what_a_failure_means(
    tmp_path: Path, database_url: str, signing
) -> None:  # type: ignore[no-untyped-def]
    key, certs = signing
    engine, accepted = _sent(tmp_path, database_url, ["big@example.org", "grey@example.org"])
    cert = f"{certs.url}/cert.pem"
    with _relays(tmp_path, database_url, engine) as client:
        for relay, body in (
            ("ses", {"Type": ["x"], "TopicArn": TOPIC}),
            ("ses", {"Type": "Notification", "TopicArn": TOPIC, "SigningCertURL": "https://[x"}),
            ("ses", "[" * 100_000),
            ("mailgun", {"signature": "abc"}),
            ("mailgun", {"signature": {"timestamp": "1", "token": "t", "signature": "é"}}),
            ("mailgun", [1, 2]),
        ):
            content = body if isinstance(body, str) else json.dumps(body)
            reply = client.post(f"/webhooks/{relay}", content=content.encode())
            assert 400 <= reply.status_code < 500, (relay, body, reply.status_code)
            assert reply.json() == {"error": "refused"}  # the reason is logged, not told
        pm = client.post("/webhooks/postmark", json=[1], auth=("postmark", POSTMARK))
        assert pm.status_code == 400
        # Signed, but quoting what no database stores (a NUL, a lone surrogate): kept for
        # the operator, not a 500 the relay retries for days.
        odd = ('{"RecordType": "Bounce", "ID": 77, "Type": "HardBounce", '
               '"Email": "x\\u0000@example.org", "MessageID": "a\\u0000b", '
               '"Description": "\\ud800 refused"}')  # fmt: skip
        kept = client.post("/webhooks/postmark", content=odd.encode(), auth=("postmark", POSTMARK))
        assert kept.status_code == 200, kept.text
        nul = {"id": "ev-nul", "event": "failed", "severity": "permanent",
               "recipient": "big\u0000@example.org",
               "message": {"headers": {"message-id": "a\u0000b@example.org"}},
               "delivery-status": {"code": 550, "description": "\ud800"}}  # fmt: skip
        signed = json.dumps(_mailgun(nul, token="n" * 50)).encode()
        assert client.post("/webhooks/mailgun", content=signed).status_code == 200

        # SES: a message refused for its content is not the address's fault.
        big = accepted["big@example.org"]
        body = json.loads(_ses_bounce(big, "big@example.org"))
        body["bounce"]["bounceSubType"] = "MessageTooLarge"
        note = _sns(key, cert, "Notification", Message=json.dumps(body), MessageId="m-9")
        assert (
            client.post("/webhooks/ses", json=note)
            .json()["recorded"][0]
            .startswith("recorded: the message was refused")
        )
        # Mailgun: a temporary failure is Mailgun still trying, not a bounce.
        sender = accepted["grey@example.org"].mail_from
        grey = {"id": "ev-9", "event": "failed", "severity": "temporary",
                "recipient": "grey@example.org", "envelope": {"sender": sender},
                "delivery-status": {"code": 451, "description": "greylisted"}}  # fmt: skip
        done = client.post("/webhooks/mailgun", json=_mailgun(grey, token="z" * 50))
        assert done.json()["recorded"] == ["nothing: delayed"]
    assert _state(engine, "big@example.org") == ("active", ["bounce.rejected"], 0)
    assert _state(engine, "grey@example.org") == ("active", [], 0)


def test_webhooks_are_off_unless_configured(tmp_path: Path, database_url: str) -> None:
    engine, _ = _sent(tmp_path, database_url, ["ada@example.org"])
    port = free_port()
    settings = _settings(tmp_path, database_url, NEWSLETTER_BASE_URL=f"http://127.0.0.1:{port}")
    with (
        live_server(create_app(runtime=runtime_for(settings, engine)), port) as url,
        httpx.Client(base_url=url, timeout=10) as client,
    ):
        for relay in ("ses", "postmark", "mailgun"):
            assert client.post(f"/webhooks/{relay}", json={}).status_code == 404
    assert DOMAIN  # the bounce domain alone turns no webhook on


def test_a_relay_refusing_us_suppresses_nobody_and_a_signature_passes_once(
    tmp_path: Path, database_url: str
) -> None:
    """Mailgun calls a block of us a "bounce" (5.7.1, rate limited) and gives up on mail
    it could not deliver ("old", "esp-block"); Postmark's SpamNotification is a spam
    filter on the content: none is the address's fault, or a relay outage would
    suppress the whole list. Mailgun signs only a timestamp and a token, not the event:
    one signature sent many times at once, each with another reader's complaint,
    passes once."""
    readers = ["blocked@example.org", "old@example.org", "filtered@example.org"]
    victims = [f"victim{k}@example.org" for k in range(6)]
    engine, accepted = _sent(tmp_path, database_url, readers + victims)
    with _relays(tmp_path, database_url, engine) as client:
        for k, (address, extra) in enumerate((
            ("blocked@example.org", {"reason": "bounce", "delivery-status": {
                "code": 550, "enhanced-code": "5.7.1", "description": "rate limited"}}),
            ("old@example.org", {"reason": "old", "delivery-status": {"code": 0}}),
        )):  # fmt: skip
            event = {"id": f"ev-b{k}", "event": "failed", "severity": "permanent",
                     "recipient": address, "envelope": {"sender": accepted[address].mail_from},
                     **extra}  # fmt: skip
            reply = client.post("/webhooks/mailgun", json=_mailgun(event, token=f"b{k}" * 25))
            assert reply.json()["recorded"][0].startswith("recorded: the message was refused")
        spam = {"RecordType": "Bounce", "ID": 51, "Type": "SpamNotification",
                "Email": "filtered@example.org"}  # fmt: skip
        client.post("/webhooks/postmark", json=spam, auth=("postmark", POSTMARK))
        once = _mailgun({}, token="r" * 50)["signature"]
        calls = [
            {"signature": once, "event-data": {
                "id": f"ev-r{k}", "event": "complained", "recipient": address,
                "message": {"headers": {"message-id": accepted[address].message_id}}}}
            for k, address in enumerate(victims)
        ]  # fmt: skip
        with concurrent.futures.ThreadPoolExecutor(len(calls)) as pool:
            codes = list(pool.map(lambda c: client.post("/webhooks/mailgun", json=c).status_code,
                                  calls))  # fmt: skip
    assert sorted(codes) == [200] + [403] * (len(calls) - 1)
    for address in readers:
        assert _state(engine, address)[0] == "active", address
    assert sum(_state(engine, v)[0] == "unsubscribed" for v in victims) == 1

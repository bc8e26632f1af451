"""The header rules: nothing user-supplied reaches a header unchecked.

Addresses, names, URLs and the Message-ID raise ``HeaderInjectionError`` when they
hold a line break or a control character, or do not parse as exactly the one
address, URL or id the header needs. Paper titles are data, so the subject is
cleaned (``content.subject``) instead. Two builders: a digest's headers (with the
RFC 8058 one-click unsubscribe pair) and a transactional message's (without).
"""

from __future__ import annotations

import functools
import re
from datetime import UTC, datetime
from email.headerregistry import Address
from email.utils import format_datetime

from newsletter.errors import NewsletterError
from newsletter.render.content import Confirmation, Digest, Sender, clean
from newsletter.text import no_encoded_words

Headers = tuple[tuple[str, str], ...]


class HeaderInjectionError(NewsletterError, ValueError):
    """A header value is unsafe: control characters/line breaks, or it does not parse as
    exactly the one address / URL / message id the header needs."""


# Characters that must never reach a header: C0/C1 controls, DEL, the Unicode line and
# paragraph separators (str.splitlines() breaks on them) and lone surrogates.
_HEADER_UNSAFE_RE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")
_MESSAGE_ID_RE = re.compile(r"<[!-;=?-~]+@[!-;=?-~]+>")  # printable ASCII minus "<", ">"
_URL_RE = re.compile(r"https?://[!-;=?-~]+", re.IGNORECASE)  # no spaces, quotes are fine


def check(header: str, value: str) -> str:
    if _HEADER_UNSAFE_RE.search(value):
        raise HeaderInjectionError(f"{header}: value contains a line break or control character")
    return value


def check_url(field: str, url: str) -> str:
    check(field, url)
    if not _URL_RE.fullmatch(url):
        raise HeaderInjectionError(f"{field}: not a plain ASCII http(s) URL: {url!r}")
    return url


# A plain dot-atom address and a display name of letters, digits and spaces need no
# quoting or encoding: the common case skips the (slow) email.headerregistry parser.
_PLAIN_ADDR_RE = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*"
                            r"@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+")  # fmt: skip
_PLAIN_NAME_RE = re.compile(r"[A-Za-z0-9 ]*")


@functools.lru_cache(maxsize=100_000)
def address(header: str, name: str | None, addr_spec: str) -> str:
    """``Name <addr>`` for a header, quoted and encoded as needed; raises on anything
    that is not exactly one address."""
    check(header, addr_spec)
    check(header, name or "")
    display = no_encoded_words(clean(name or ""))
    if _PLAIN_ADDR_RE.fullmatch(addr_spec) and _PLAIN_NAME_RE.fullmatch(display):
        return f"{display} <{addr_spec}>" if display else addr_spec
    local, at, domain = addr_spec.rpartition("@")
    if at and not domain.isascii():
        # The stdlib would emit an RFC 2047 encoded-word inside the domain, which is
        # invalid; IDNA (punycode) is what a non-SMTPUTF8 relay can carry.
        try:
            addr_spec = f"{local}@{domain.encode('idna').decode('ascii')}"
        except UnicodeError as exc:
            raise HeaderInjectionError(f"{header}: cannot IDNA-encode {domain!r}") from exc
    try:
        # Address() parses addr_spec strictly: exactly one address, nothing left over,
        # and it quotes / encodes the display name as the header needs.
        return str(Address(display_name=display, addr_spec=addr_spec))
    except ValueError as exc:  # email.errors defects are ValueErrors too
        raise HeaderInjectionError(f"{header}: invalid address {addr_spec!r}: {exc}") from exc


@functools.lru_cache(maxsize=1024)
def _date_header(at: datetime) -> str:
    return format_datetime(at)  # a planning batch shares one time


def _common(
    *,
    sender: Sender,
    to_name: str | None,
    to_address: str,
    subject: str,
    at: datetime,
    message_id: str,
) -> Headers:
    if at.tzinfo is None or at.utcoffset() is None:
        # Times are stored in UTC and SQLite hands them back naive; "-0000" would claim
        # the zone is unknown, so say UTC rather than fail the delivery.
        at = at.replace(tzinfo=UTC)
    if not _MESSAGE_ID_RE.fullmatch(check("Message-ID", message_id)):
        raise HeaderInjectionError(f"Message-ID: not of the form <id@domain>: {message_id!r}")
    return (
        ("From", address("From", sender.name, sender.address)),
        ("To", address("To", to_name, to_address)),
        ("Subject", subject),
        ("Date", _date_header(at)),
        ("Message-ID", message_id),
    )


def _checked(headers: Headers) -> Headers:
    for name, value in headers:  # the final values too, subject included
        check(name, value)
    return headers


def digest_headers(*, digest: Digest, sender: Sender, subject: str) -> Headers:
    """A digest's headers in order, with RFC 8058 one-click unsubscribe."""
    common = _common(
        sender=sender,
        to_name=digest.to_name,
        to_address=digest.to_address,
        subject=subject,
        at=digest.date,
        message_id=digest.message_id,
    )
    unsubscribe = check_url("List-Unsubscribe", digest.unsubscribe_url)
    return _checked(
        (
            *common,
            ("List-Unsubscribe", f"<{unsubscribe}>"),
            ("List-Unsubscribe-Post", "List-Unsubscribe=One-Click"),
            # Gmail's feedback loop groups complaints by these fields (campaign, type,
            # sender): one edition of the digest from this sending domain.
            ("Feedback-ID", f"{digest.edition.isoformat()}:digest:newsletter:{_domain(sender)}"),
            # What vacation programs and Exchange's out-of-office honour: no replies to
            # bulk mail. (No Auto-Submitted: a digest is mail a person asked for.)
            ("Precedence", "bulk"),
        )
    )


def _domain(sender: Sender) -> str:
    domain = sender.address.rpartition("@")[2].lower()
    return domain if domain.isascii() else domain.encode("idna").decode("ascii")


def transactional_headers(*, confirmation: Confirmation, sender: Sender, subject: str) -> Headers:
    """A transactional message's headers: no List-Unsubscribe (there is nothing to leave
    yet), and no display name (see ``content.Confirmation``)."""
    return _checked(
        _common(
            sender=sender,
            to_name=None,
            to_address=confirmation.to_address,
            subject=subject,
            at=confirmation.date,
            message_id=confirmation.message_id,
        )
    )

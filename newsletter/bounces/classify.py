"""What a message sent to the bounce address says: a hard or soft bounce, a complaint, an
auto-reply, a delay, or something we do not recognise (kept for the operator, never
guessed).

Standards first: an RFC 5965 feedback report (``multipart/report;
report-type=feedback-report``) is a complaint; an RFC 3464 delivery status notification
(``report-type=delivery-status``) says per recipient what happened (``Action`` and
``Status``). Everything else goes through flufl.bounce's detectors, which know the
non-standard bounces of Exim, Postfix, qmail, Exchange and others; they tell permanent
from temporary failures. An out-of-office reply is not a bounce.
"""

from __future__ import annotations

import email.message
import email.policy
import enum
import re
from dataclasses import dataclass, field

from flufl.bounce import all_failures

_STATUS_RE = re.compile(r"\b([245])\.(\d{1,3})\.(\d{1,3})\b")
# Enhanced status codes (RFC 3463) that say the *address* is bad: X.1.x (no such
# mailbox, bad domain), X.2.1 (mailbox disabled), X.4.4 (no route to the domain). Other
# permanent failures are about the *message* or our sending (5.7.x policy, DMARC or
# spam blocks, 5.3.4 and 5.2.3 too big, 5.6.x content): suppressing the reader for those
# would punish them for our mistake, so they are "rejected", recorded and counted.
# Of X.1.x, not X.1.7 and X.1.8: those are about the *sender's* address (ours: our bounce
# domain's DNS broken would suppress every reader).
_ADDRESS_STATUS_RE = re.compile(r"5\.(1\.(?:[1-6]|10)|2\.1|4\.4)")
# In a bounce's own words: an SMTP reply's enhanced code ("550 5.7.1", "550-5.1.1"),
# not any three numbers with dots (a version, an address) ...
_REPLY_STATUS_RE = re.compile(r"\b[45][0-9][0-9][ -]+([45]\.[0-9]{1,3}\.[0-9]{1,3})\b")
# What says *we* were refused, not the address: policy, content, size, our sender address
_REFUSES_US_RE = re.compile(r"5\.(7\.\d+|6\.\d+|3\.4|2\.3|1\.[78])")
# ... and, when a bounce gives none, what only a refusal of *us* says: a blocklist, a rate
# limit, a policy, a relay refused. Those are recorded, never a reason to suppress.
_POLICY_RE = re.compile(
    r"block ?list|black ?list|blocked using|spamhaus|rate.?limit|too many (?:messages|connections)"
    r"|policy|relay(?:ing)? (?:access )?denied|not permitted to relay|reputation",
    re.IGNORECASE,
)
_MAILBOX_FULL = ("2.2",)
_QUOTED = ("message/rfc822", "text/rfc822-headers", "message/rfc822-headers")
_AUTO_SUBJECT_RE = re.compile(
    r"^\s*(out of (the )?office|automatic reply|auto(matic)?[- ]?reply|auto:|"
    r"abwesenheitsnotiz|absence|vacation)",
    re.IGNORECASE,
)


class Kind(enum.StrEnum):
    HARD = "hard"  # the address does not work: suppress
    SOFT = "soft"  # it may work later: count
    REJECTED = "rejected"  # the message was refused (policy, content): record, count
    COMPLAINT = "complaint"  # the reader marked it as spam: unsubscribe
    DELAYED = "delayed"  # still being tried: nothing to do
    AUTO_REPLY = "auto_reply"  # out of office and the like: not a bounce
    UNRECOGNISED = "unrecognised"  # kept for the operator


@dataclass(frozen=True, slots=True)
class Report:
    kind: Kind
    recipients: tuple[str, ...] = ()  # the original recipients it is about, lowercased
    status: str | None = None  # the enhanced status code, "5.1.1"
    diagnostic: str = ""  # what the remote server said, one line, cut short
    original_message_id: str | None = None  # of the message that bounced, when quoted
    how: str = ""  # which reading found it: "dsn", "arf", "flufl.bounce", "headers"
    details: dict[str, str] = field(default_factory=dict)


def parse(data: bytes) -> email.message.Message:
    """Headers as the raw strings they are (compat32): a bounce quotes whatever broken
    headers came its way, and a reader that raises on one would never record it."""
    return email.message_from_bytes(data, policy=email.policy.compat32)


def status_code(text: str) -> str | None:
    """The enhanced status code a server's words give: after a failure's SMTP reply code
    ("550 5.7.1 ...", the first permanent one when a transcript holds several; a "250
    2.1.0 Sender OK" before it says nothing), or opening them ("5.1.1 no such user")."""
    replies = [m[1] for m in _REPLY_STATUS_RE.finditer(text)]
    if replies:
        return next((r for r in replies if r.startswith("5.")), replies[0])
    found = _STATUS_RE.match(text.strip())
    return f"{found[1]}.{found[2]}.{found[3]}" if found else None


def refuses_us(status: str | None, text: str) -> bool:
    """A failure that is about us or our message (policy, a block, content, size, our
    sender address), by its code or, without one that says, its words ("rejected by
    local policy: user unknown" with 5.1.1 is the address's)."""
    if status is not None and _REFUSES_US_RE.fullmatch(status):
        return True
    if status is not None and _ADDRESS_STATUS_RE.fullmatch(status):
        return False
    return bool(_POLICY_RE.search(text))


def status_kind(status: str | None, *, permanent: bool) -> Kind:
    """A failure's kind from its enhanced status code (``permanent``: the reporter says
    it will not be retried)."""
    if status is not None and status.startswith("4."):
        return Kind.SOFT
    if status is not None and status[2:] in _MAILBOX_FULL:
        return Kind.SOFT
    if not permanent:
        return Kind.SOFT
    if status is None or _ADDRESS_STATUS_RE.fullmatch(status):
        return Kind.HARD
    return Kind.REJECTED


def classify(msg: email.message.Message) -> Report:
    report_type = (msg.get_param("report-type", header="content-type") or "").lower()  # type: ignore[union-attr]
    if msg.get_content_type() == "multipart/report" and report_type == "feedback-report":
        return _arf(msg)
    if msg.get_content_type() == "multipart/report" and report_type == "delivery-status":
        found = _dsn(msg)
        if found is not None:
            return found
    try:
        temporary, permanent = all_failures(msg)
    except Exception:  # a detector choking on a malformed message: not ours to guess
        temporary, permanent = frozenset(), frozenset()
    original = _original_message_id(msg)
    if permanent:
        # The detectors tell permanent from temporary, not the address from the message:
        # the bounce's own words do (a "550 5.7.1 rate limited" suppressed whole lists).
        said = _said(msg)
        status = status_code(said)
        kind = status_kind(status, permanent=True)
        if status is None and _POLICY_RE.search(said):
            kind = Kind.REJECTED
        return Report(kind, _addresses(permanent), status, _first_line(msg), original,
                      "flufl.bounce")  # fmt: skip
    if temporary:
        return Report(Kind.SOFT, _addresses(temporary), None, _first_line(msg), original,
                      "flufl.bounce")  # fmt: skip
    # Only now: mail systems mark their bounces "Auto-Submitted: auto-replied" too.
    if _auto_reply(msg):
        return Report(Kind.AUTO_REPLY, how="headers")
    return Report(Kind.UNRECOGNISED, original_message_id=original, how="none")


def _dsn(msg: email.message.Message) -> Report | None:
    """The worst outcome among the recipients of a delivery status notification."""
    groups = _status_groups(msg)
    if not groups:
        return None
    recipients: list[str] = []
    verdicts: list[tuple[int, Kind, str | None, str]] = []
    # The first group is about the message, the rest per recipient; a report that left
    # the first out still names its recipient in the group it has.
    for group in [g for g in groups if "action" in g or "final-recipient" in g]:
        action = group.get("action", "").strip().lower()
        status = _status(group.get("status", "")) or _status(group.get("diagnostic-code", ""))
        rcpt = _address(group.get("original-recipient") or group.get("final-recipient") or "")
        diagnostic = " ".join(group.get("diagnostic-code", "").split())[:300]
        if action == "failed":
            kind = status_kind(status, permanent=status is None or status.startswith("5."))
            rank = {Kind.HARD: 4, Kind.REJECTED: 3}.get(kind, 2)
        elif action == "delayed":
            kind, rank = Kind.DELAYED, 1
        else:  # delivered, relayed, expanded: nothing went wrong
            continue
        if rcpt:
            recipients.append(rcpt)
        verdicts.append((rank, kind, status, diagnostic))
    if not verdicts:
        return None  # nothing it could read: let the detectors try
    _, kind, status, diagnostic = max(verdicts, key=lambda v: v[0])
    return Report(
        kind, tuple(dict.fromkeys(recipients)), status, diagnostic, _original_message_id(msg), "dsn"
    )


def _arf(msg: email.message.Message) -> Report:
    fields: dict[str, str] = {}
    for part in msg.walk():
        if part.get_content_type() == "message/feedback-report":
            fields = _fields(_payload_text(part))
    if fields.get("feedback-type", "").lower() == "not-spam":
        return Report(Kind.DELAYED, how="arf")  # "this is not spam": nothing to do
    rcpt = _address(fields.get("original-rcpt-to", ""))
    original = _original_message_id(msg)
    if not rcpt:
        rcpt = _address(_original_header(msg, "To") or "")
    details = {k: fields[k] for k in ("feedback-type", "user-agent", "source-ip") if k in fields}
    return Report(Kind.COMPLAINT, (rcpt,) if rcpt else (), None, "", original, "arf", details)


def _auto_reply(msg: email.message.Message) -> bool:
    auto = str(msg.get("Auto-Submitted", "no")).strip().lower()
    if auto.startswith("auto-replied"):
        return True
    if any(msg.get(h) for h in ("X-Autoreply", "X-Autorespond", "X-Auto-Response-Suppress")):
        return msg.get_content_type() != "multipart/report"
    if str(msg.get("Precedence", "")).strip().lower() == "auto_reply":
        return True
    return bool(_AUTO_SUBJECT_RE.match(str(msg.get("Subject", ""))))


# --- reading the parts -----------------------------------------------------------------


def _status_groups(msg: email.message.Message) -> list[dict[str, str]]:
    for part in msg.walk():
        if part.get_content_type() in ("message/delivery-status", "message/global-delivery-status"):
            text = _payload_text(part)
            return [_fields(block) for block in re.split(r"\r?\n\s*\r?\n", text) if block.strip()]
    return []


def _payload_text(part: email.message.Message) -> str:
    """A message/* part's text: the standard library parses these as sub-messages."""
    payload = part.get_payload()
    if isinstance(payload, list):  # parsed into header blocks, one "message" each
        return "\n\n".join(
            "\n".join(f"{k}: {v}" for k, v in p.items()) for p in payload if hasattr(p, "items")
        )
    raw = part.get_payload(decode=True)
    return raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(payload)


def _fields(block: str) -> dict[str, str]:
    fields: dict[str, str] = {}
    name = None
    for line in block.splitlines():
        if line[:1] in (" ", "\t") and name is not None:
            fields[name] += " " + line.strip()
            continue
        key, colon, value = line.partition(":")
        if colon:
            name = key.strip().lower()
            fields[name] = value.strip()
    return fields


def _original(msg: email.message.Message) -> email.message.Message | None:
    for part in msg.walk():
        if part.get_content_type() in _QUOTED:
            payload = part.get_payload()
            if isinstance(payload, list) and payload:
                return payload[0]  # type: ignore[no-any-return]
            text = payload if isinstance(payload, str) else ""
            return email.message_from_string(text, policy=email.policy.default)
    return None


def _original_header(msg: email.message.Message, name: str) -> str | None:
    original = _original(msg)
    value = original.get(name) if original is not None else None
    return str(value) if value else None


def _original_message_id(msg: email.message.Message) -> str | None:
    value = _original_header(msg, "Message-ID")
    if value is None:  # some bounces quote the headers inline in their text
        for part in msg.walk():
            if part.get_content_type() == "text/plain":
                found = re.search(r"^Message-ID:\s*(<[^>\s]+>)", _payload_text(part), re.I | re.M)
                if found:
                    return found[1]
        return None
    found = re.search(r"<[^>\s]+>", value)
    return found[0] if found else None


def _status(text: str) -> str | None:
    found = _STATUS_RE.search(text)
    return f"{found[1]}.{found[2]}.{found[3]}" if found else None


def _address(text: str) -> str:
    """``rfc822; a@b.org`` or ``<a@b.org>`` -> ``a@b.org``."""
    value = text.split(";", 1)[-1].strip().strip("<>").strip()
    return value.lower() if "@" in value and " " not in value else ""


def _addresses(found: frozenset[bytes] | set[bytes]) -> tuple[str, ...]:
    return tuple(sorted(a.decode("utf-8", "replace").lower() for a in found))


def _said(msg: email.message.Message) -> str:
    """The bounce's own text parts: not the message it quotes back, whose words are ours."""
    said: list[str] = []
    for part in msg.walk():
        if part.get_content_type() in _QUOTED:
            break  # what follows is the original
        if part.get_content_type() == "text/plain":
            said.append(_payload_text(part))
    return "\n".join(said)[:100_000]


def _first_line(msg: email.message.Message) -> str:
    for part in msg.walk():
        if part.get_content_type() == "text/plain":
            for line in _payload_text(part).splitlines():
                if re.search(r"\b[45][0-9][0-9]\b", line):
                    return " ".join(line.split())[:300]
    return ""

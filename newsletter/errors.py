"""Typed errors. Each carries what an operator needs to act: where, and what."""

from __future__ import annotations

# What reading a value written around the checks (by hand, by an older version, by a
# bug; a feed's item of an unexpected shape) can raise: a list where an object was, a
# string where a mapping was, a number JSON writes and Python will not hold, nesting
# past the interpreter's depth. Caught where one such value must leave out only itself.
UNREADABLE = (ValueError, TypeError, AttributeError, LookupError, ArithmeticError, RecursionError)


class NewsletterError(Exception):
    """Base class: the CLI prints these as one line instead of a traceback."""


class ConfigError(NewsletterError):
    def __init__(self, *, setting: str, message: str) -> None:
        self.setting = setting
        super().__init__(f"{setting}: {message}")


class CorpusError(NewsletterError):
    """A dump that cannot be read; names the file and the 1-based line."""

    def __init__(self, *, path: str, line: int, message: str) -> None:
        self.path, self.line, self.message = path, line, message
        super().__init__(f"{path}:{line}: {message}")


class FilterSyntaxError(NewsletterError):
    """A topic filter that does not parse; ``column`` is 1-based."""

    def __init__(self, *, query: str, column: int, message: str) -> None:
        self.query, self.column, self.message = query, column, message
        super().__init__(f"column {column}: {message}")

    def caret(self) -> str:
        """The query with a caret under the offending column, for terminals and forms."""
        return f"{self.query}\n{' ' * (self.column - 1)}^"


class SubscriberError(NewsletterError):
    """Bad subscriber data (address, time zone, send time, duplicate)."""

    def __init__(self, message: str, *, field: str | None = None) -> None:
        self.field = field
        super().__init__(f"{field}: {message}" if field else message)


class DuplicateSubscriberError(SubscriberError):
    """The address is already subscribed."""


class TooManyVotesError(SubscriberError):
    """The reader has voted as often as the hour allows; nothing was recorded."""


class DeliveryError(NewsletterError):
    """A message could not be handed over; subclasses say whether to retry.

    ``code`` is the SMTP reply code when the server gave one (None for a
    dropped connection, a timeout or a local failure); ``text`` what it said.
    """

    def __init__(
        self, text: str, *, code: int | None = None, recipient_fault: bool = False
    ) -> None:
        self.code, self.text = code, text
        # True when the recipient's server refused the address (RCPT): what makes a
        # permanent failure a hard bounce that suppresses the subscriber.
        self.recipient_fault = recipient_fault
        super().__init__(f"{code} {text}" if code else text)


class TransientDeliveryError(DeliveryError):
    """Try again later (4xx reply, 552, dropped connection, timeout, full disk)."""


class PermanentDeliveryError(DeliveryError):
    """Do not retry (5xx reply other than 552, a message that cannot be built)."""


def classify_reply(code: int | None, text: str, *, recipient_fault: bool = False) -> DeliveryError:
    """The error an SMTP outcome stands for.

    RFC 5321 section 4.5.3.1.10: 552 ("exceeded storage allocation") is sent
    as permanent but should be treated as temporary, as Mailman and Postfix do.
    No code (a dropped connection, a timeout) is transient: the message may
    not have arrived, and the same Message-ID lets the recipient spot a repeat.
    """
    if code is not None and code >= 500 and code != 552:
        return PermanentDeliveryError(text, code=code, recipient_fault=recipient_fault)
    return TransientDeliveryError(text, code=code, recipient_fault=recipient_fault)

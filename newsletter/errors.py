"""Typed errors. Each carries what an operator needs to act: where, and what."""

from __future__ import annotations


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


class DeliveryError(NewsletterError):
    """A message could not be handed over; subclasses say whether to retry."""


class TransientDeliveryError(DeliveryError):
    """Try again later (4xx reply, dropped connection, timeout, full disk)."""


class PermanentDeliveryError(DeliveryError):
    """Do not retry (5xx reply, invalid message)."""

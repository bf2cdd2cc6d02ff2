"""Send built messages: over SMTP, or into a Maildir when no ``[smtp]`` is configured.

Both transports have one interface (:class:`Transport`: ``send``, ``close``). Replies are
classified as Mailman 3 does: 2xx sent; 4xx, 552 and connection problems transient; other 5xx
permanent. :class:`ConnectionPool` (``pool``) runs one transport per connection in threads,
with in-run retries, and hands back whatever it could not deliver: nothing is dropped.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from ..config import Settings
from ..models import OutgoingMessage
from .maildir import MaildirTransport
from .pool import Attempted, ConnectionPool
from .smtp import RateLimit, SmtpTransport, is_transient

__all__ = [
    "Attempted",
    "ConnectionPool",
    "MaildirTransport",
    "RateLimit",
    "SmtpTransport",
    "Transport",
    "is_transient",
    "transport_factory",
]


class Transport(Protocol):
    """Something that delivers one message at a time."""

    def send(self, message: OutgoingMessage) -> None: ...

    def close(self) -> None: ...


def transport_factory(settings: Settings, rate: RateLimit | None = None) -> Callable[[], Transport]:
    """Makes a transport per connection: SMTP when ``[smtp]`` is configured, else the Maildir."""
    smtp = settings.smtp
    if smtp is not None:
        shared = rate or RateLimit(smtp.rate)
        return lambda: SmtpTransport(smtp, shared)
    maildir = settings.outbox.maildir
    return_path = settings.bounces is not None  # (the VERP sender, as an MDA would record it)
    return lambda: MaildirTransport(maildir, return_path=return_path)

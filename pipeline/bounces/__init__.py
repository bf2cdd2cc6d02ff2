"""Bounces: VERP envelope senders, reading bounce reports, and the bounce mailbox.

- :mod:`.verp`: the envelope sender ``bounce+TOKEN@domain`` of each delivery, and reading a
  token back (HMAC-signed: a forged bounce names no delivery).
- :mod:`.dsn`: bytes -> :class:`Bounce` (RFC 3464 reports, Exim's and qmail's texts), or a
  :class:`~pipeline.errors.BounceError` saying why a message is not one.
- :mod:`.mailbox`: the IMAP folder or local Maildir they arrive in; processed messages are
  moved, never deleted.

What a bounce does to a subscriber (counting, suppression) is the store's record
(:mod:`pipeline.store.bounces`); ``run.read_bounces`` chains these parts.
"""

from __future__ import annotations

from .dsn import Bounce, Failure, parse_bounce
from .mailbox import BounceMailbox, ImapMailbox, MailboxMessage, MaildirMailbox, open_mailbox
from .verp import Token, Verp

__all__ = [
    "Bounce",
    "BounceMailbox",
    "Failure",
    "ImapMailbox",
    "MailboxMessage",
    "MaildirMailbox",
    "Token",
    "Verp",
    "open_mailbox",
    "parse_bounce",
]

"""VERP (variable envelope return paths): each delivery's envelope sender names the delivery.

With ``[bounces] address = "bounce@example.org"``, the digest of outbox row 42 goes out with
``MAIL FROM:<bounce+42-3f9c0a1b2c4d5e6f@example.org>``, and a bounce comes back to that
address: the token in it says which delivery failed, whatever the report looks like.

The token is the row id, ``-``, and the first 16 hex digits (64 bits) of HMAC-SHA256 over the
row id and the digest's Message-ID, keyed with a random key kept in the state database. So
nobody who has not seen one of our envelopes can make a valid token (a forged bounce cannot
suppress anyone), and a row id that SQLite hands out again after pruning does not inherit an
old token (its Message-ID differs). Only lower-case hex and digits: some MTAs fold the case of
local parts. The local part stays far below RFC 5321's 64 octets.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Iterable
from dataclasses import dataclass

MAC_DIGITS = 16  # hex digits of the HMAC kept in a token: 64 bits


@dataclass(frozen=True, slots=True)
class Token:
    """What a VERP address carries: the outbox row and the MAC that vouches for it."""

    delivery_id: int
    mac: str


class Verp:
    """Makes and reads ``local+TOKEN@domain`` envelope senders for one base address and key."""

    def __init__(self, address: str, key: bytes) -> None:
        self.local, _, self.domain = address.rpartition("@")
        self.key = key
        self._keyed = hmac.new(key, digestmod=hashlib.sha256)  # (copied per token: no key setup each time)
        self._pattern = re.compile(
            rf"(?<![^\s<\"',;:]){re.escape(self.local)}\+(\d{{1,18}})-([0-9a-f]{{{MAC_DIGITS}}})"
            rf"@{re.escape(self.domain)}(?![\w.-])",
            re.IGNORECASE,
        )

    def mac(self, delivery_id: int, message_id: str) -> str:
        mac = self._keyed.copy()
        mac.update(f"{delivery_id}\0{message_id}".encode())
        return mac.hexdigest()[:MAC_DIGITS]

    def sender(self, delivery_id: int, message_id: str) -> str:
        """The envelope sender of this delivery (a few µs: it is asked once per message)."""
        return f"{self.local}+{delivery_id}-{self.mac(delivery_id, message_id)}@{self.domain}"

    def tokens(self, addresses: Iterable[str]) -> list[Token]:
        """The tokens in these addresses (or header values) that have our shape, verified or not."""
        found: dict[Token, None] = {}
        for address in addresses:
            for match in self._pattern.finditer(address):
                found[Token(int(match[1]), match[2].lower())] = None
        return list(found)

    def verifies(self, token: Token, message_id: str) -> bool:
        """Whether ``token`` is the one we made for the delivery with this Message-ID."""
        return hmac.compare_digest(token.mac, self.mac(token.delivery_id, message_id))

"""Build the RFC 5322 message for one digest: headers, a text part and an HTML part.

Only building happens here; ``deliver`` sends. Header values that come from feeds or the
config lose every control character first: on Python 3.11.7 (before the CVE-2024-6923 fix) a
trailing newline or an encoded ``=0A`` in a header value still yields an extra header line.
"""

from __future__ import annotations

import hashlib
from datetime import datetime
from email.headerregistry import Address
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import format_datetime, parseaddr
from functools import lru_cache

from .models import Digest, OutgoingMessage, RenderedDigest
from .text import clean_text

SUBJECT_LIMIT = 200
NAME_LIMIT = 100


@lru_cache(maxsize=16)  # parseaddr costs ~40 us, and every digest of a run has the same sender
def sender_address(sender: str) -> str:
    """The bare address of a ``Name <addr>`` sender."""
    return parseaddr(sender)[1]


def message_id(subscriber: str, entry_ids: list[int], created_at: datetime, sender: str) -> str:
    """A Message-ID fixed by the digest's content and time, on the sender's domain."""
    iso, stamp = _stamps(created_at)
    seed = f"{subscriber}\n{iso}\n{','.join(map(str, sorted(entry_ids)))}"
    token = hashlib.sha256(seed.encode()).hexdigest()[:24]
    domain = sender_address(sender).rpartition("@")[2] or "localhost"
    return f"<{stamp}.{token}@{domain}>"


@lru_cache(maxsize=16)  # one run plans thousands of digests created at the same time
def _stamps(created_at: datetime) -> tuple[str, str]:
    return created_at.isoformat(), created_at.strftime("%Y%m%d%H%M%S")


def header_text(value: str, limit: int) -> str:
    """A header value with no control characters, at most ``limit`` characters."""
    value = clean_text(value)
    return value if len(value) <= limit else value[: limit - 1].rstrip() + "…"


def compose_message(
    digest: Digest,
    rendered: RenderedDigest,
    *,
    sender: str,
    list_id: str,
    unsubscribe: list[str],
    one_click: bool = False,
) -> OutgoingMessage:
    """The message for one subscriber: one recipient, multipart/alternative (text, then HTML)."""
    msg = EmailMessage(policy=SMTP)
    sender_name, sender_addr = parseaddr(sender)
    msg["From"] = Address(header_text(sender_name, NAME_LIMIT), addr_spec=sender_addr)
    msg["To"] = Address(header_text(digest.name or "", NAME_LIMIT), addr_spec=digest.subscriber)
    msg["Subject"] = header_text(rendered.subject, SUBJECT_LIMIT)
    msg["Date"] = format_datetime(digest.created_at)
    msg["Message-ID"] = digest.message_id
    msg["List-Id"] = list_id
    msg["List-Unsubscribe"] = ", ".join(f"<{url}>" for url in unsubscribe)
    if one_click:
        msg["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"  # RFC 8058
    msg["Auto-Submitted"] = "auto-generated"  # RFC 3834: no autoreplies to digests
    msg.set_content(rendered.text, cte="quoted-printable")
    msg.add_alternative(rendered.html, subtype="html", cte="quoted-printable")
    return OutgoingMessage(
        sender=sender_addr, recipient=digest.subscriber, message_id=digest.message_id, data=msg.as_bytes()
    )

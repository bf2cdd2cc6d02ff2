"""Build the email that tells the admin a feed has been failing, or has recovered.

Only building happens here (like ``compose``); ``run`` decides when and sends it through the
same transport as digests. Error texts come from servers: they lose control characters.
"""

from __future__ import annotations

from datetime import UTC, datetime
from email.headerregistry import Address
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import format_datetime, make_msgid, parseaddr

from .compose import header_text
from .models import OutgoingMessage
from .text import clean_text

SUBJECT_LIMIT = 200


def feed_alert(
    *,
    title: str,
    sender: str,
    admin: str,
    feed: str,
    url: str,
    recovered: bool,
    now: datetime,
    failing_since: datetime | None,
    failures: int,
    last_error: str | None,
    next_attempt_at: datetime | None,
) -> OutgoingMessage:
    """The alert (or recovery notice) for one feed, as a plain-text message to the admin."""
    if recovered:
        subject = f"[{title}] feed {feed} works again"
        lines = [
            f"The feed {feed} was fetched successfully at {_when(now)}.",
            "",
            f"URL: {url}",
            f"Last error before it recovered: {clean_text(last_error or '-')}",
        ]
    else:
        subject = f"[{title}] feed {feed} has been failing since {_when(failing_since)}"
        lines = [
            f"The feed {feed} has failed {failures} time(s) in a row since {_when(failing_since)}.",
            "",
            f"URL:           {url}",
            f"Last error:    {clean_text(last_error or '-')}",
            f"Next attempt:  {_when(next_attempt_at) if next_attempt_at else 'at the next poll'}",
            "",
            "digest keeps trying on its own (backing off up to once a day) and will write again",
            "when the feed works. If the feed has moved or gone, change or remove it in the config.",
            "`digest status` shows every feed's state.",
        ]
    msg = EmailMessage(policy=SMTP)
    sender_name, sender_addr = parseaddr(sender)
    msg["From"] = Address(header_text(sender_name, 100), addr_spec=sender_addr)
    msg["To"] = Address(addr_spec=admin)
    msg["Subject"] = header_text(subject, SUBJECT_LIMIT)
    msg["Date"] = format_datetime(now)
    domain = sender_addr.rpartition("@")[2] or "localhost"
    message_id = make_msgid(idstring=f"feed-{'ok' if recovered else 'alert'}", domain=domain)
    msg["Message-ID"] = message_id
    msg["Auto-Submitted"] = "auto-generated"  # RFC 3834
    msg.set_content("\n".join(lines) + "\n", cte="quoted-printable")
    return OutgoingMessage(sender=sender_addr, recipient=admin, message_id=message_id, data=msg.as_bytes())


def _when(value: datetime | None) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC") if value else "-"

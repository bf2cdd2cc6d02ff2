"""Reading bounces: what failed, for whom, how badly, and which message it was.

Three shapes are read, in this order (the first that fits wins):

- **RFC 3464 delivery status notifications**: a ``multipart/report`` (RFC 6522) with a
  ``message/delivery-status`` part, anywhere in the message (Postfix, Gmail, Exchange, modern
  Exim, Sendmail). Each per-recipient block gives ``Final-Recipient`` (and perhaps
  ``Original-Recipient``), ``Action`` (``failed``,
  ``delayed``; ``delivered``, ``relayed`` and ``expanded`` are not failures), ``Status``
  (RFC 3463: ``5.1.1``) and ``Diagnostic-Code``; the per-message block may give
  ``Original-Envelope-Id``. The returned message (``message/rfc822`` or
  ``text/rfc822-headers``) gives the Message-ID and Return-Path of what bounced.
- **Exim's own text**: "This message was created automatically by mail delivery software",
  then the failed addresses, each with the remote server's reply; or the delay warning ("has
  not yet been delivered ... still in the queue").
- **qmail's**: "Hi. This is the qmail-send program", then ``<address>:`` paragraphs; "This is
  a permanent error" or "has been in the queue too long".

How bad: a ``failed`` action with a 5.x.x status is a **hard** bounce, except 5.2.2 (mailbox
full: RFC 3463 calls it persistent but transient, and Mailman 3 treats 552 so) and 5.7.x
(policy: a refusal of our message or our server, not of the address); those, a ``failed``
4.x.x (the remote server gave up after temporary errors) and a ``delayed`` report are
**soft**. Without a status code (Exim, qmail) the code in the server's reply is used (550 ->
5.0.0), else the text's own words ("permanent error" -> 5.0.0, "in the queue too long" ->
4.4.7).

Anything else raises :class:`~pipeline.errors.BounceError` saying why: an automatic reply
(RFC 3834 ``Auto-Submitted: auto-replied``, "Out of office"), a report without a recipient's
action, a message of no known shape. Bounces are untrusted text from anywhere: nothing here
executes, fetches or writes; texts are cut to ``TEXT_LIMIT`` characters and lose control
characters.
"""

from __future__ import annotations

import email
import email.policy
import re
from dataclasses import dataclass
from email.header import decode_header, make_header
from email.message import Message
from email.utils import getaddresses

from ..errors import BounceError

TEXT_LIMIT = 300  # characters kept of a diagnostic
MAX_BYTES = 10_000_000  # a bounce larger than this is not read
# Headers that say where a message was delivered: the address it came back to.
ADDRESSED_TO = ("To", "Delivered-To", "X-Original-To", "Envelope-To", "X-Envelope-To", "X-Rcpt-To")
_STATUS = re.compile(r"\b([245])\.(\d{1,3})\.(\d{1,3})\b")
_REPLY_CODE = re.compile(r"(?:^|[\s:])([245])\d\d(?=[\s-])")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]+")
_EXIM = "This message was created automatically by mail delivery software"
_QMAIL = "Hi. This is the qmail-send program"
_NOT_FAILURES = ("delivered", "relayed", "expanded")
_AUTO_REPLY_SUBJECT = re.compile(
    r"^\s*(out of (the )?office|auto(matic)?[ -]?(reply|response)|abwesenheit|vacation)\b", re.I
)


@dataclass(frozen=True, slots=True)
class Failure:
    """One recipient's failure as the report gives it."""

    recipient: str | None  # Final-Recipient, or the address the text names
    action: str  # failed | delayed
    status: str  # RFC 3463, e.g. 5.1.1
    diagnostic: str  # the remote server's words, cleaned and cut
    original_recipient: str | None = None  # Original-Recipient (RFC 3461 ORCPT), when given

    @property
    def hard(self) -> bool:
        """Whether this failure means the address does not work (see the module docstring)."""
        if self.action != "failed" or not self.status.startswith("5."):
            return False
        return not (self.status.startswith("5.7.") or self.status == "5.2.2")


@dataclass(frozen=True, slots=True)
class Bounce:
    """A report read from the bounce mailbox."""

    shape: str  # "RFC 3464", "Exim" or "qmail"
    failures: tuple[Failure, ...]  # empty: a report of success (delivered, relayed)
    addressed_to: tuple[str, ...]  # where it came back to, and the returned Return-Path
    envelope_id: str | None  # Original-Envelope-Id (RFC 3461 ENVID)
    returned_message_id: str | None  # the Message-ID of the message that bounced

    @property
    def worst(self) -> Failure | None:
        """The failure that counts: a hard one before a soft one, a final before a delay."""
        if not self.failures:
            return None
        return max(self.failures, key=lambda f: (f.hard, f.action == "failed"))


def parse_bounce(data: bytes) -> Bounce:
    """The bounce in these bytes, or BounceError saying why it is not one we can read."""
    if len(data) > MAX_BYTES:
        raise BounceError(f"too large to be a bounce ({len(data)} bytes)")
    if not data.strip():
        raise BounceError("empty message")
    message = email.message_from_bytes(data, policy=email.policy.compat32)
    if not message.keys():
        raise BounceError("no headers: not an email message")
    addressed = _addressed_to(message)
    report = _delivery_status(message)
    if report is not None:
        return _rfc3464(message, report, addressed)
    text = _first_text(message)
    if _EXIM in text:
        return _exim(text, addressed)
    if _QMAIL in text:
        return _qmail(text, addressed)
    if _auto_reply(message):
        raise BounceError("an automatic reply (out of office), not a bounce")
    raise BounceError("not a delivery status notification (no RFC 3464 report, nor Exim's or qmail's text)")


# --- RFC 3464 ------------------------------------------------------------------------------


def _delivery_status(message: Message) -> Message | None:
    for part in message.walk():
        if part.get_content_type() == "message/delivery-status":
            return part
    return None


def _rfc3464(message: Message, report: Message, addressed: list[str]) -> Bounce:
    blocks = _status_blocks(report)
    if not blocks:
        raise BounceError("a delivery report with no status fields")
    per_message, recipients = blocks[0], [b for b in blocks[1:] if b.get("Action")]
    if per_message.get("Action"):  # (a report without its per-message block)
        recipients.insert(0, per_message)
    if not recipients:
        raise BounceError("a delivery report without a recipient's Action")
    failures = []
    for block in recipients:
        action = _clean(block.get("Action", "")).lower().split(" ")[0]
        if action in _NOT_FAILURES:
            continue
        if action not in ("failed", "delayed"):
            raise BounceError(f"a delivery report with an unknown Action {action!r}")
        diagnostic = _clean(block.get("Diagnostic-Code", "")).partition(";")[2].strip() or _clean(
            block.get("Diagnostic-Code", "")
        )
        status = _status_code(_clean(block.get("Status", "")), diagnostic, action)
        failures.append(
            Failure(
                _typed_address(block.get("Final-Recipient")),
                action,
                status,
                diagnostic,
                _typed_address(block.get("Original-Recipient")),
            )
        )
    returned = _returned_headers(message)
    envelope_id = _clean(per_message.get("Original-Envelope-Id", "")) or None
    if returned is not None:
        addressed += [a for _, a in getaddresses(returned.get_all("Return-Path", []))]
    return Bounce(
        "RFC 3464",
        tuple(failures),
        tuple(a for a in addressed if a),
        envelope_id,
        _message_id(returned),
    )


def _status_blocks(report: Message) -> list[Message]:
    """The report's blocks of fields: the per-message one, then one per recipient."""
    payload = report.get_payload()
    if isinstance(payload, list) and payload:
        return [block for block in payload if isinstance(block, Message)]
    # A report the parser left as text (a wrong transfer encoding): split it at blank lines.
    raw = report.get_payload(decode=True)
    text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(payload or "")
    chunks = re.split(r"\r?\n\s*\r?\n", text.strip())
    return [
        email.message_from_string(chunk + "\n", policy=email.policy.compat32) for chunk in chunks if chunk
    ]


def _returned_headers(message: Message) -> Message | None:
    """The headers of the message that bounced, when the report returns them."""
    for part in message.walk():
        kind = part.get_content_type()
        if kind == "message/rfc822":
            payload = part.get_payload()
            if isinstance(payload, list) and payload and isinstance(payload[0], Message):
                return payload[0]
        elif kind == "text/rfc822-headers":
            raw = part.get_payload(decode=True)
            if isinstance(raw, bytes):
                return email.message_from_bytes(raw.lstrip() + b"\n\n", policy=email.policy.compat32)
    return None


# --- Exim and qmail ------------------------------------------------------------------------


def _exim(text: str, addressed: list[str]) -> Bounce:
    body = re.split(r"^-+ This is a copy of the message", text, maxsplit=1, flags=re.M)[0]
    delayed = "has not yet been delivered" in body or "still in the queue" in body
    permanent = "permanent error" in body
    failures = []
    # Each address starts a line of its own, indented by two spaces; the server's words follow,
    # indented further.
    for found in re.finditer(r"^  (\S+@[^\s:]+):?[ \t]*\n((?:^    .*\n?)*)", body, re.M):
        recipient = found[1].strip("<>")
        diagnostic = _clean(" ".join(found[2].split()))
        action = "delayed" if delayed else "failed"
        status = _status_code("", diagnostic, action, permanent=None if delayed else permanent)
        failures.append(Failure(recipient, action, status, diagnostic))
    if not failures:
        raise BounceError("Exim's text, but no failed address in it")
    returned = _copied_headers(text, r"^-+ This is a copy of the message")
    return _text_bounce("Exim", failures, addressed, returned)


def _qmail(text: str, addressed: list[str]) -> Bounce:
    body = re.split(r"^--- Below this line is a copy of the message", text, maxsplit=1, flags=re.M)[0]
    permanent = "This is a permanent error" in body
    too_long = "in the queue too long" in body
    failures = []
    for found in re.finditer(r"^<([^>\s]+@[^>\s]+)>:\s*\n((?:(?!<[^>\s]+@[^>\s]+>:).*\S.*\n?)*)", body, re.M):
        diagnostic = _clean(" ".join(found[2].split()))
        if too_long and not _STATUS.search(diagnostic):
            status = "4.4.7"  # delivery time expired (RFC 3463)
        else:
            status = _status_code("", diagnostic, "failed", permanent=permanent)
        failures.append(Failure(found[1], "failed", status, diagnostic))
    if not failures:
        raise BounceError("qmail's text, but no failed address in it")
    returned = _copied_headers(text, r"^--- Below this line is a copy of the message")
    return _text_bounce("qmail", failures, addressed, returned)


def _copied_headers(text: str, marker: str) -> Message | None:
    parts = re.split(marker + r".*$", text, maxsplit=1, flags=re.M)
    if len(parts) < 2:
        return None
    copy = parts[1].lstrip("\r\n")
    return email.message_from_string(copy, policy=email.policy.compat32)


def _text_bounce(
    shape: str, failures: list[Failure], addressed: list[str], returned: Message | None
) -> Bounce:
    if returned is not None:
        addressed += [a for _, a in getaddresses(returned.get_all("Return-Path", []))]
    return Bounce(shape, tuple(failures), tuple(a for a in addressed if a), None, _message_id(returned))


# --- fields --------------------------------------------------------------------------------


def _status_code(status: str, diagnostic: str, action: str, *, permanent: bool | None = None) -> str:
    """The RFC 3463 code: the Status field's, else one in the diagnostic, else inferred."""
    for text in (status, diagnostic):
        found = _STATUS.search(text)
        if found:
            return found.group(0)
    reply = _REPLY_CODE.search(" " + diagnostic)
    if reply:
        return f"{reply[1]}.0.0"
    if action == "delayed" or permanent is False:
        return "4.0.0"
    return "5.0.0" if permanent or permanent is None else "4.0.0"


def _typed_address(value: str | None) -> str | None:
    """The address of an ``rfc822; user@example.org`` field."""
    if not value:
        return None
    address = _clean(value).partition(";")[2].strip() or _clean(value)
    return address.strip("<>") or None


def _message_id(headers: Message | None) -> str | None:
    if headers is None:
        return None
    value = _clean(str(headers.get("Message-ID", "") or ""))
    found = re.search(r"<[^<>\s]+>", value)
    return found.group(0) if found else None


def _addressed_to(message: Message) -> list[str]:
    values = [str(v) for name in ADDRESSED_TO for v in message.get_all(name, [])]
    return [address for _, address in getaddresses(values) if address]


def _first_text(message: Message) -> str:
    """The first text/plain part, decoded (where Exim and qmail write their words)."""
    for part in message.walk():
        if part.get_content_maintype() == "multipart":
            continue
        if part.get_content_type() in ("text/plain", "text"):
            raw = part.get_payload(decode=True)
            if isinstance(raw, bytes):
                charset = part.get_content_charset() or "utf-8"
                try:
                    return raw.decode(charset, "replace").replace("\r\n", "\n")
                except LookupError:
                    return raw.decode("utf-8", "replace").replace("\r\n", "\n")
        return ""
    return ""


def _auto_reply(message: Message) -> bool:
    submitted = str(message.get("Auto-Submitted", "")).strip().lower()
    if submitted.startswith("auto-replied"):
        return True
    if message.get("X-Autoreply") or message.get("X-Autorespond"):
        return True
    return bool(_AUTO_REPLY_SUBJECT.match(_decoded(message.get("Subject", ""))))


def _decoded(value: object) -> str:
    try:
        return str(make_header(decode_header(str(value))))
    except (ValueError, LookupError, UnicodeError):
        return str(value)


def _clean(value: object) -> str:
    text = " ".join(_CONTROL.sub(" ", str(value)).split())
    return text if len(text) <= TEXT_LIMIT else text[: TEXT_LIMIT - 1] + "…"

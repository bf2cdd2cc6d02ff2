"""Build the RFC 5322 message for one digest (headers, a text part and an HTML part), and the
plain-text alert that tells the admin a feed is failing or has recovered.

Only building happens here; ``deliver`` sends. The message is written as bytes directly, not
through ``EmailMessage`` (whose build and ``as_bytes`` cost more than the rest of a digest): headers are
ours, non-ASCII header text is encoded by the email package's RFC 2047 ``Header``, and both
bodies are quoted-printable from ``binascii.b2a_qp`` (C), line by line with a per-process
cache, since most lines of a run's emails (its entries) are the same for every subscriber.

Header values lose every control character first and are capped: on Python 3.11.7 (before
the CVE-2024-6923 fix) a trailing newline, or an encoded word ``=?UTF-8?Q?=0A?=`` written by
the email package's folding, still yields an extra header line. Values that look like
encoded words are themselves encoded, so a recipient's client shows them literally.

Lines: every body line is at most 76 characters (quoted-printable), every header line at most
78 where it can be folded and never more than 998 (RFC 5322 2.1.1); line ends are CRLF.
"""

from __future__ import annotations

import binascii
import hashlib
from datetime import UTC, datetime
from email.header import Header
from email.headerregistry import Address
from email.message import EmailMessage
from email.policy import SMTP, SMTPUTF8
from email.utils import format_datetime, formataddr, make_msgid, parseaddr
from functools import lru_cache
from typing import TYPE_CHECKING, cast
from urllib.parse import quote

from .config import Settings
from .models import Digest, OutgoingMessage, RenderedDigest
from .text import clean_text

if TYPE_CHECKING:
    from .sign import DkimSigner

SUBJECT_LIMIT = 200
NAME_LIMIT = 100
LINE = 78  # recommended header line length (RFC 5322 2.1.1)
CRLF = b"\r\n"
# Encoded bytes each cache keeps before it starts over (sizes measured: docs/performance.md).
# Most lines an email adds are its own (name, links): a small cache keeps the shared ones hot
# about as well as a large one. Parts are pieces that many emails share: they need more room.
_QP_LINES_BYTES = 2**20
_QP_PARTS_BYTES = 4 * 2**20
_qp_lines: dict[str, bytes] = {}
_qp_parts: dict[str, bytes] = {}
_qp_size = {"lines": 0, "parts": 0}
_URL_SAFE = "!#$%&'()*+,-./:;=?@[]~_"


def header_text(value: str, limit: int) -> str:
    """A header value with no control characters, at most ``limit`` characters."""
    value = clean_text(value)
    return value if len(value) <= limit else value[: limit - 1].rstrip() + "…"


# --- headers -----------------------------------------------------------------------------------


def _plain(value: str) -> bool:
    """Whether a value can be written as it is: printable ASCII, nothing like an encoded word."""
    return value.isascii() and value.isprintable() and "=?" not in value


def _encoded(name: str, value: str) -> str:
    """RFC 2047 encoded words for ``value``, folded into lines of at most 76 characters."""
    return Header(value, "utf-8", header_name=name).encode(linesep="\r\n")


def _fold(name: str, value: str) -> str:
    """Fold plain text at spaces so lines stay within 78 characters where possible."""
    if len(name) + 2 + len(value) <= LINE:
        return value
    lines: list[str] = []
    line = ""
    width = LINE - len(name) - 2
    for word in value.split(" "):
        if line and len(line) + 1 + len(word) > width:
            lines.append(line)
            line, width = word, LINE - 1
        else:
            line = f"{line} {word}" if line else word
    lines.append(line)
    return "\r\n ".join(lines)


def unstructured(name: str, value: str) -> str:
    """An unstructured header value (Subject): plain and folded, or encoded."""
    return _fold(name, value) if _plain(value) else _encoded(name, value)


def _phrase(name: str, display: str) -> str:
    """A display name: bare, quoted (RFC 5322 specials) or encoded words (non-ASCII)."""
    if not _plain(display):
        return _encoded(name, display)
    return formataddr((display, "a@b")).removesuffix(" <a@b>")


def mailbox(name: str, display: str | None, address: str) -> str:
    """``Display Name <address>`` with the name quoted or encoded as needed."""
    display = header_text(display or "", NAME_LIMIT)
    if not display:
        return address
    if _plain(display):
        return _fold(name, f"{_phrase(name, display)} <{address}>")
    phrase = _encoded(name, display)
    last = phrase.rpartition("\r\n")[2] if "\r\n" in phrase else f"{name}: {phrase}"
    fold = "\r\n" if len(last) + len(address) + 3 > LINE else ""
    return f"{phrase}{fold} <{address}>"


@lru_cache(maxsize=16)
def list_id_header(list_id: str) -> str:
    """``Title <list.id>`` (RFC 2919), written as :func:`mailbox` writes ``Name <address>``.

    The title is quoted or encoded, and folded only between words (encoded words come folded
    already: folding them again would leave an empty line, which ends the header block).
    """
    phrase, _, rest = clean_text(list_id).rpartition("<")
    ident = "".join(rest.rstrip(">").split())
    return mailbox("List-Id", phrase, ident) if header_text(phrase, NAME_LIMIT) else f"<{ident}>"


@lru_cache(maxsize=16)
def _sender(sender: str) -> tuple[str, str]:
    """The envelope address and the From header of a ``Name <address>`` sender (once per run)."""
    name, address = parseaddr(clean_text(sender))
    return address, mailbox("From", name, address)


@lru_cache(maxsize=1024)
def _subject(subject: str) -> str:
    return unstructured("Subject", header_text(subject, SUBJECT_LIMIT))


@lru_cache(maxsize=16)
def _date(when: datetime) -> str:
    return format_datetime(when)


@lru_cache(maxsize=1024)
def _url(url: str) -> str:
    """A URL fit for ``<...>`` in List-Unsubscribe: ASCII, no spaces or angle brackets."""
    return quote(clean_text(url), safe=_URL_SAFE)


def _message_id(value: str) -> str:
    value = "".join(clean_text(value).split())
    return value if value.startswith("<") and value.endswith(">") and value.isascii() else f"<{quote(value)}>"


# --- bodies --------------------------------------------------------------------------------------


def quoted_printable(text: str) -> bytes:
    """``text`` as quoted-printable with CRLF line ends; every line at most 76 characters.

    Encoded line by line (each hard line break is a CRLF; soft breaks and trailing white
    space are decided within a line), so a line seen before costs a dictionary look-up.
    """
    cache = _qp_lines
    if _qp_size["lines"] > _QP_LINES_BYTES:
        cache.clear()
        _qp_size["lines"] = 0
    out = []
    for line in text.replace("\r\n", "\n").replace("\r", "\n").split("\n"):
        encoded = cache.get(line)
        if encoded is None:
            qp = binascii.b2a_qp(line.encode("utf-8"), istext=False, header=False)
            encoded = cache[line] = _soft_breaks(qp)
            _qp_size["lines"] += len(encoded) + len(line)
        out.append(encoded)
    return CRLF.join(out)


def _soft_breaks(qp: bytes) -> bytes:
    """One line's encoding by binascii, with CRLF soft breaks, and cut anew where a line
    would start with "." (written "=2E" instead): so no line of a digest starts with a dot,
    and SMTP's dot-stuffing (RFC 5321 4.5.2) need not copy each 70 KB message again."""
    if not qp.startswith(b".") and b"\n." not in qp:
        return qp.replace(b"=\n", b"=\r\n")
    flat = qp.replace(b"=\n", b"")
    lines = []
    start, end = 0, len(flat)
    while True:
        head = b""
        if flat.startswith(b".", start):
            head, start = b"=2E", start + 1
        room = 76 - len(head)
        if end - start <= room:
            lines.append(head + flat[start:])
            return b"\r\n".join(lines)
        cut = start + room - 1  # (and the "=" of the soft break)
        if flat[cut - 1] == ord("="):  # never split an "=XX" escape
            cut -= 1
        elif flat[cut - 2] == ord("="):
            cut -= 2
        lines.append(head + flat[start:cut] + b"=")
        start = cut


def _encoded_parts(parts: tuple[str, ...], whole: str, token: str = "") -> list[bytes]:
    """``quoted_printable(whole)``, from the encodings of its parts (cached), as the list of
    those encodings (whose join it is: a signer hashes shared ones once).

    Encoding is line by line, so the encodings of parts that end at line ends join into the
    encoding of the whole; a part shared by many emails is one object, hashed once. A part
    that ends mid-line is encoded with a soft line break after it (``=`` CRLF, which decoding
    removes), so that what follows starts a line of the encoding: its encoding is the same
    in every email, whatever precedes it. Parts must add up to ``whole`` (as ``RenderedDigest``
    says); parts whose first or last is not its start or end are ignored.

    ``token`` (the reader's own link token, see ``RenderedDigest``) is such a part, inside
    shared lines: it is this email's own, encoded once here and never kept.
    """
    cache = _qp_parts
    if _qp_size["parts"] > _QP_PARTS_BYTES:
        cache.clear()
        _qp_size["parts"] = 0
    # (the renderer makes ``whole`` by joining the parts; a first or last part that is not its
    # start or end means parts from elsewhere: a sum of their lengths costs 30 ns a part)
    if len(parts) < 2 or not (whole.startswith(parts[0]) and whole.endswith(parts[-1])):
        return [quoted_printable(whole)]
    own = bool(token) and token not in cache
    if own:  # (found by the look-ups below like a shared part, then taken out again)
        cache[token] = _open_line(_soft_breaks(binascii.b2a_qp(token.encode("utf-8"), istext=False)))
    try:
        middle = list(map(cache.get, parts[1:-1]))  # (one look-up per part, in C: most are there)
    finally:
        if own:
            del cache[token]
    if None in middle:  # (new parts: the first emails of a run)
        for i, encoded in enumerate(middle):
            if encoded is None:
                part = parts[i + 1]
                encoded = middle[i] = _encoded_part(part)
                cache[part] = encoded
                _qp_size["parts"] += len(encoded) + len(part)
    # the first and last parts are the email's own head and foot
    return [_encoded_part(parts[0]), *cast("list[bytes]", middle), quoted_printable(parts[-1])]


def _encoded_part(part: str) -> bytes:
    """A part's encoding; a part that ends mid-line is followed by a soft line break."""
    encoded = quoted_printable(part)
    return encoded if not part or part[-1] == "\n" else _open_line(encoded)


def _open_line(encoded: bytes) -> bytes:
    """Encoded text followed by a soft line break: its last line cut, if need be, so that
    the ``=`` still fits in 76 characters (never inside an ``=XX``; never before a dot)."""
    start = encoded.rfind(b"\n") + 1
    if len(encoded) - start <= 75:
        return encoded + b"=\r\n"
    cut = start + 75
    if encoded[cut - 1] == ord("="):
        cut -= 1
    elif encoded[cut - 2] == ord("="):
        cut -= 2
    rest = encoded[cut:]
    if rest.startswith(b"."):  # (no line starts with a dot: see _soft_breaks)
        rest = b"=2E" + rest[1:]
    return encoded[:cut] + b"=\r\n" + rest + b"=\r\n"


def _part(subtype: str, body: str, parts: tuple[str, ...], token: str = "") -> list[bytes]:
    return [
        (
            f'Content-Type: text/{subtype}; charset="utf-8"\r\n'
            "Content-Transfer-Encoding: quoted-printable\r\n\r\n"
        ).encode("ascii"),
        *_encoded_parts(parts, body, token),
    ]


# --- the message -----------------------------------------------------------------------------------


def compose_message(
    digest: Digest,
    rendered: RenderedDigest,
    *,
    sender: str,
    list_id: str,
    unsubscribe: list[str],
    one_click: bool = False,
    signer: DkimSigner | None = None,
) -> OutgoingMessage:
    """The message for one subscriber: one recipient, multipart/alternative (text, then HTML);
    with a ``signer``, DKIM-signed once everything else is final."""
    sender_addr, from_header = _sender(sender)
    recipient = "".join(clean_text(digest.subscriber).split())
    headers = [
        ("From", from_header),
        ("To", mailbox("To", digest.name, recipient)),
        ("Subject", _subject(rendered.subject)),
        ("Date", _date(digest.created_at)),
        ("Message-ID", _message_id(digest.message_id)),
        ("List-Id", list_id_header(list_id)),
        ("List-Unsubscribe", ",\r\n ".join(f"<{_url(u)}>" for u in unsubscribe)),
    ]
    if one_click:
        headers.append(("List-Unsubscribe-Post", "List-Unsubscribe=One-Click"))  # RFC 8058
    headers.append(("Auto-Submitted", "auto-generated"))  # RFC 3834: no autoreplies to digests
    boundary = "=" * 15 + hashlib.sha256(digest.message_id.encode()).hexdigest()[:24] + "=="
    headers += [
        ("MIME-Version", "1.0"),
        ("Content-Type", f'multipart/alternative;\r\n boundary="{boundary}"'),
    ]
    # An internationalised address is written as UTF-8 (RFC 6532); it needs an SMTPUTF8 server.
    head = "".join(f"{name}: {value}\r\n" for name, value in headers).encode("utf-8")
    delimiter = f"--{boundary}\r\n".encode("ascii")
    text = _part("plain", rendered.text, rendered.text_parts, rendered.token)
    html = _part("html", rendered.html, rendered.html_parts, rendered.token)
    # The body in pieces that end at line ends (a signer canonicalises shared ones once); no
    # preamble: the first delimiter follows the blank line.
    body = [
        delimiter + text[0],
        *text[1:-1],
        text[-1] + CRLF + delimiter + html[0],
        *html[1:-1],
        html[-1] + f"\r\n--{boundary}--\r\n".encode("ascii"),
    ]
    signature = signer.signature(head.removesuffix(CRLF), body) if signer is not None else b""
    data = b"".join([signature, head, CRLF, *body])
    # (canonical by construction: lines are cut and quoted-printable encoded here, a leading dot as =2E)
    return OutgoingMessage(sender_addr, recipient, digest.message_id, data, canonical=True)


def digest_message(
    settings: Settings, digest: Digest, rendered: RenderedDigest, signer: DkimSigner | None = None
) -> OutgoingMessage:
    """The email of one digest, with the list headers its settings call for (and signed by
    ``signer``, the one ``[dkim]`` describes: :func:`pipeline.sign.load_signer`)."""
    return compose_message(
        digest,
        rendered,
        sender=settings.sender,
        list_id=settings.list_id,
        unsubscribe=settings.unsubscribe_links(digest.subscriber),
        one_click=bool(settings.digest.base_url),
        signer=signer,
    )


# --- feed alerts ----------------------------------------------------------------------------------
# Error texts come from servers: they lose control characters.


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


# --- web sign-up confirmations ([web] signup, pipeline/web/signup.py) ------------------------------
# The recipient is an address someone typed into a web form: it was validated as an address,
# and loses control characters and white space here all the same. Nothing else of the form
# reaches a header.


def signup_message(
    *, sender: str, list_id: str, recipient: str, subject: str, text: str, now: datetime
) -> OutgoingMessage:
    """A plain-text email about a sign-up (its confirmation link), from the digest's sender,
    with its List-Id (RFC 2919) like a digest, to one recipient."""
    recipient = "".join(clean_text(recipient).split())
    # (an internationalised address is written as UTF-8, RFC 6532, as a digest's is)
    msg = EmailMessage(policy=SMTP if recipient.isascii() else SMTPUTF8)
    sender_name, sender_addr = parseaddr(clean_text(sender))
    msg["From"] = Address(header_text(sender_name, NAME_LIMIT), addr_spec=sender_addr)
    msg["To"] = Address(addr_spec=recipient)
    msg["Subject"] = header_text(subject, SUBJECT_LIMIT)
    msg["Date"] = format_datetime(now)
    domain = sender_addr.rpartition("@")[2] or "localhost"
    message_id = make_msgid(idstring="signup", domain=domain)
    msg["Message-ID"] = message_id
    msg["List-Id"] = header_text(list_id, 2 * NAME_LIMIT)
    msg["Auto-Submitted"] = "auto-generated"  # RFC 3834: no autoreplies
    msg.set_content(text, cte="quoted-printable")
    return OutgoingMessage(
        sender=sender_addr, recipient=recipient, message_id=message_id, data=msg.as_bytes()
    )

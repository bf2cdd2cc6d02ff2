"""The message bytes: they parse back into exactly the headers and parts we meant, safely."""

from __future__ import annotations

import binascii
import email
import email.policy
import quopri
from datetime import UTC, datetime
from email.message import EmailMessage

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.compose import NAME_LIMIT, SUBJECT_LIMIT, compose_message, quoted_printable
from pipeline.models import Digest, OutgoingMessage, RenderedDigest

NOW = datetime(2026, 11, 30, 7, 0, tzinfo=UTC)
SENDER = "Paper Digest <digest@example.net>"
LIST_ID = "Paper Digest <paper-digest.example.net>"
UNSUBSCRIBE = ["https://digest.example.net/unsubscribe?email=ada%40example.org", "mailto:digest@example.net"]
HEADERS = [
    "From",
    "To",
    "Subject",
    "Date",
    "Message-ID",
    "List-Id",
    "List-Unsubscribe",
    "List-Unsubscribe-Post",
    "Auto-Submitted",
    "MIME-Version",
    "Content-Type",
]


def _digest(name: str | None = "Ada", subscriber: str = "ada@example.org") -> Digest:
    return Digest(
        subscriber=subscriber,
        name=name,
        sections=(),
        topics=("Spiking neural networks",),
        created_at=NOW,
        message_id="<20261130070000.abc@example.net>",
    )


def _rendered(subject: str = "[Paper Digest] 3 new papers: SNN", **kw: str) -> RenderedDigest:
    text = kw.get("text", "Paper Digest\n\n* A title\n  https://example.org/a\n")
    html = kw.get("html", "<!DOCTYPE html>\n<html><body><p>A title</p></body></html>\n")
    return RenderedDigest(subject=subject, html=html, text=text)


def _compose(digest: Digest | None = None, rendered: RenderedDigest | None = None) -> OutgoingMessage:
    return compose_message(
        digest or _digest(),
        rendered or _rendered(),
        sender=SENDER,
        list_id=LIST_ID,
        unsubscribe=UNSUBSCRIBE,
        one_click=True,
    )


def _parse(data: bytes) -> EmailMessage:
    message = email.message_from_bytes(data, policy=email.policy.default)
    assert isinstance(message, EmailMessage)
    return message


def test_headers_and_parts_parse_back_exactly() -> None:
    rendered = _rendered()
    out = _compose(rendered=rendered)
    assert out.sender == "digest@example.net" and out.recipient == "ada@example.org"
    message = _parse(out.data)
    assert list(message.keys()) == HEADERS
    assert message["From"] == SENDER
    assert message["To"] == "Ada <ada@example.org>"
    assert message["Subject"] == rendered.subject
    assert message["Date"].datetime == NOW
    assert message["Message-ID"] == "<20261130070000.abc@example.net>"
    assert message["List-Id"] == LIST_ID
    assert message["List-Unsubscribe"] == ", ".join(f"<{u}>" for u in UNSUBSCRIBE)
    assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert message["Auto-Submitted"] == "auto-generated"
    assert message.get_content_type() == "multipart/alternative"
    plain, html = message.iter_parts()
    assert plain.get_content_type() == "text/plain" and html.get_content_type() == "text/html"
    assert plain["Content-Transfer-Encoding"] == "quoted-printable"
    assert plain.get_content_charset() == "utf-8"
    # MIME text has CRLF line ends: Python's parser hands them back as they are
    assert plain.get_content().replace("\r\n", "\n") == rendered.text
    assert html.get_content().replace("\r\n", "\n") == rendered.html
    assert message.defects == [] and plain.defects == [] and html.defects == []


def test_without_one_click_there_is_no_post_header() -> None:
    out = compose_message(
        _digest(), _rendered(), sender=SENDER, list_id=LIST_ID, unsubscribe=["mailto:digest@example.net"]
    )
    message = _parse(out.data)
    assert "List-Unsubscribe-Post" not in message
    assert message["List-Unsubscribe"] == "<mailto:digest@example.net>"


def test_lines_are_crlf_within_limits() -> None:
    long_text = "word " * 400 + "\n" + "x" * 3000 + "\n" + "é" * 500 + " \n" + "." * 300 + "\n.\n"
    out = _compose(rendered=_rendered(text=long_text, html=f"<p>{long_text}</p>"))
    assert b"\n" not in out.data.replace(b"\r\n", b"")
    assert b"\r\n." not in out.data  # SMTP needs no dot-stuffing
    head, _, body = out.data.partition(b"\r\n\r\n")
    assert max(len(line) for line in head.split(b"\r\n")) <= 998
    assert max(len(line) for line in body.split(b"\r\n")) <= 76  # quoted-printable
    plain, _ = _parse(out.data).iter_parts()
    assert plain.get_content().replace("\r\n", "\n") == long_text


def test_non_ascii_subject_and_names_are_encoded_and_come_back() -> None:
    subject = "[Revue] 3 nouveaux articles : réseaux de neurones à impulsions, 強化学習 " + "é" * 80
    digest = _digest(name="Zoë Ünïcödé-Ñame, Jr.")
    out = _compose(digest, _rendered(subject=subject))
    assert out.data.isascii()
    message = _parse(out.data)
    assert message["Subject"] == subject
    assert message["To"].addresses[0].display_name == "Zoë Ünïcödé-Ñame, Jr."
    assert message["To"].addresses[0].addr_spec == "ada@example.org"
    head = out.data.partition(b"\r\n\r\n")[0].decode()
    for line in head.split("\r\n"):
        assert len(line) <= 78 or line.startswith("List-Unsubscribe: <https://"), line  # a URL cannot fold


def test_quoted_and_special_display_names() -> None:
    for name in ('Doe, "Johnny" <x>', "O'Neil (ops)", "a\\b", "=?utf-8?q?hi?="):
        message = _parse(_compose(_digest(name=name)).data)
        (address,) = message["To"].addresses
        assert address.display_name == name and address.addr_spec == "ada@example.org"


@pytest.mark.parametrize(
    "subject",
    [
        "Hi\r\nBcc: victim@example.com",
        "Hi\nBcc: victim@example.com",
        "Hi\rBcc: victim@example.com",
        "Trailing newline\n",
        "Hi =?UTF-8?Q?=0A?=Bcc: victim@example.com",
        "=?UTF-8?Q?=0D=0ABcc:_victim@example.com?=",
        "Hi\u2028Bcc: victim@example.com\x00\x1b[31m",
        "x" * 5000,
    ],
)
def test_hostile_subjects_cannot_add_headers(subject: str) -> None:
    message = _parse(_compose(rendered=_rendered(subject=subject)).data)
    assert list(message.keys()) == HEADERS
    assert "Bcc" not in message  # the text stays inside the one Subject
    value = str(message["Subject"])
    assert "\n" not in value and "\r" not in value
    assert len(value) <= SUBJECT_LIMIT
    assert [a.addr_spec for a in message["To"].addresses] == ["ada@example.org"]


@pytest.mark.parametrize("name", ["Ada\r\nBcc: victim@example.com", "Ada =?UTF-8?Q?=0A?=Bcc: v@x", "y" * 500])
def test_hostile_names_cannot_add_headers_or_recipients(name: str) -> None:
    message = _parse(_compose(_digest(name=name)).data)
    assert list(message.keys()) == HEADERS
    (address,) = message["To"].addresses
    assert address.addr_spec == "ada@example.org"
    # (Python's parser keeps the space between the encoded words of a long name; RFC 2047 drops it)
    assert "\n" not in address.display_name and len("".join(address.display_name.split())) <= NAME_LIMIT


@settings(max_examples=200, deadline=None)
@given(subject=st.text(), name=st.one_of(st.none(), st.text(max_size=300)), body=st.text(max_size=300))
def test_any_subject_name_or_body_parses_back_with_one_subject_and_the_same_recipient(
    subject: str, name: str | None, body: str
) -> None:
    out = _compose(_digest(name=name), _rendered(subject=subject, text=body, html=body))
    # What out.canonical promises (the SMTP transport sends such messages unchecked):
    bare = out.data.replace(b"\r\n", b"")
    assert out.canonical and b"\n" not in bare and b"\r" not in bare
    assert not out.data.startswith(b".") and b"\r\n." not in out.data
    message = _parse(out.data)
    assert list(message.keys()) == HEADERS
    assert len(message.get_all("Subject") or []) == 1
    assert [a.addr_spec for a in message["To"].addresses] == ["ada@example.org"]
    assert out.recipient == "ada@example.org"
    assert "\n" not in str(message["Subject"])


def test_internationalised_address_is_written_as_utf8() -> None:
    out = _compose(_digest(subscriber="zoë@exämple.org"))
    assert "To: Ada <zoë@exämple.org>\r\n".encode() in out.data  # RFC 6532
    message = email.message_from_string(out.data.decode("utf-8"), policy=email.policy.SMTPUTF8)
    assert isinstance(message, EmailMessage)
    assert message["To"].addresses[0].addr_spec == "zoë@exämple.org"
    assert out.recipient == "zoë@exämple.org"
    assert message["Subject"] == "[Paper Digest] 3 new papers: SNN"


@settings(max_examples=500, deadline=None)
@given(
    st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=400)
    | st.text(alphabet=". =\né\tx", max_size=400)  # dots where lines break, escapes beside them
)
def test_quoted_printable_round_trips_with_short_lines_none_starting_with_a_dot(text: str) -> None:
    encoded = quoted_printable(text)
    assert encoded.isascii()
    assert all(len(line) <= 76 for line in encoded.split(b"\r\n"))
    assert not any(line.startswith(b".") for line in encoded.split(b"\r\n"))  # no SMTP dot-stuffing
    decoded = quopri.decodestring(encoded).decode("utf-8")
    expected = text.replace("\r\n", "\n").replace("\r", "\n").replace("\n", "\r\n")
    assert decoded == expected
    assert binascii.a2b_qp(encoded).decode("utf-8") == expected


def test_encoding_by_parts_equals_encoding_the_whole() -> None:
    parts = ("<p>head é</p>\n", "x" * 200 + " \n", "", "=tail\n", "last")
    whole = "".join(parts)
    by_parts = compose_message(
        _digest(),
        RenderedDigest("s", whole, whole, html_parts=parts, text_parts=parts),
        sender=SENDER,
        list_id=LIST_ID,
        unsubscribe=UNSUBSCRIBE,
    )
    at_once = compose_message(
        _digest(), RenderedDigest("s", whole, whole), sender=SENDER, list_id=LIST_ID, unsubscribe=UNSUBSCRIBE
    )
    assert by_parts.data == at_once.data
    misaligned = compose_message(
        _digest(),
        RenderedDigest("s", "ab\n", "ab\n", html_parts=("a", "b\n"), text_parts=("zz",)),
        sender=SENDER,
        list_id=LIST_ID,
        unsubscribe=UNSUBSCRIBE,
    )
    plain, html = _parse(misaligned.data).iter_parts()
    assert plain.get_content() == "ab\r\n" and html.get_content() == "ab\r\n"

"""Reading bounces (pipeline.bounces.dsn) from the real-world shapes in fixtures/, and VERP
tokens (pipeline.bounces.verp): tables, and hypothesis on arbitrary bytes."""

from __future__ import annotations

import contextlib

import pytest
from conftest import bounce_from_fixture
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.bounces import Token, Verp, parse_bounce
from pipeline.errors import BounceError

VERP_ADDRESS = "bounce+42-0123456789abcdef@example.net"
MESSAGE_ID = "<digest.3f2a@example.net>"


def fixture(name: str) -> bytes:
    return bounce_from_fixture(name, verp=VERP_ADDRESS, recipient="ada@example.org", message_id=MESSAGE_ID)


@pytest.mark.parametrize(
    ("name", "shape", "action", "status", "hard", "diagnostic"),
    [
        ("postfix-hard", "RFC 3464", "failed", "5.1.1", True, "User unknown in virtual mailbox table"),
        (
            "gmail-hard",
            "RFC 3464",
            "failed",
            "5.1.1",
            True,
            "The email account that you tried to reach does not exist",
        ),
        (
            "exim-hard",
            "Exim",
            "failed",
            "5.1.1",
            True,
            "550 5.1.1 <ada@example.org>: Recipient address rejected",
        ),
        ("qmail-hard", "qmail", "failed", "5.1.1", True, "Sorry, no mailbox here by that name."),
        ("postfix-delay", "RFC 3464", "delayed", "4.2.2", False, "452 4.2.2 <ada@example.org>: Mailbox full"),
    ],
)
def test_real_world_shapes(
    name: str, shape: str, action: str, status: str, hard: bool, diagnostic: str
) -> None:
    bounce = parse_bounce(fixture(name))
    assert bounce.shape == shape
    worst = bounce.worst
    assert worst is not None
    assert (worst.recipient, worst.action, worst.status, worst.hard) == (
        "ada@example.org",
        action,
        status,
        hard,
    )
    assert diagnostic in worst.diagnostic
    assert VERP_ADDRESS in bounce.addressed_to
    assert bounce.returned_message_id == MESSAGE_ID
    # Postfix gives the Original-Recipient (ORCPT) too; the others do not.
    assert worst.original_recipient == ("ada@example.org" if name.startswith("postfix") else None)


@pytest.mark.parametrize(
    ("name", "why"),
    [
        ("autoreply", "an automatic reply (out of office), not a bounce"),
        ("garbage", "no headers: not an email message"),
        ("unrelated", "not a delivery status notification"),
    ],
)
def test_what_is_not_a_bounce_says_why(name: str, why: str) -> None:
    with pytest.raises(BounceError, match=why.replace("(", r"\(").replace(")", r"\)")):
        parse_bounce(fixture(name))


def _report(action: str, status: str, diagnostic: str = "") -> bytes:
    return (
        "From: MAILER-DAEMON@mx.example.org\r\nTo: bounce@example.net\r\nSubject: report\r\n"
        'MIME-Version: 1.0\r\nContent-Type: multipart/report; report-type=delivery-status; boundary="b"\r\n'
        "\r\n--b\r\nContent-Type: text/plain\r\n\r\nA report.\r\n"
        "--b\r\nContent-Type: message/delivery-status\r\n\r\n"
        "Reporting-MTA: dns; mx.example.org\r\nOriginal-Envelope-Id: 42-0123456789abcdef\r\n\r\n"
        f"Final-Recipient: rfc822; ada@example.org\r\nAction: {action}\r\nStatus: {status}\r\n"
        + (f"Diagnostic-Code: smtp; {diagnostic}\r\n" if diagnostic else "")
        + "\r\n--b--\r\n"
    ).encode()


@pytest.mark.parametrize(
    ("action", "status", "hard"),
    [
        ("failed", "5.1.1", True),  # no such user
        ("failed", "5.1.10", True),  # null MX (RFC 7505)
        ("failed", "5.2.2", False),  # mailbox full: persistent but transient
        ("failed", "5.7.1", False),  # policy: about our message or server, not the address
        ("failed", "4.4.7", False),  # the remote server gave up after temporary errors
        ("delayed", "4.4.1", False),
        ("failed", "5.0.0 (permanent failure)", True),
    ],
)
def test_how_bad_a_failure_is(action: str, status: str, hard: bool) -> None:
    bounce = parse_bounce(_report(action, status))
    assert bounce.worst is not None and bounce.worst.hard is hard
    assert bounce.envelope_id == "42-0123456789abcdef"


def test_a_report_of_success_holds_no_failure_and_a_broken_report_is_refused() -> None:
    assert parse_bounce(_report("delivered", "2.0.0")).failures == ()
    with pytest.raises(BounceError, match="unknown Action"):
        parse_bounce(_report("exploded", "5.1.1"))
    with pytest.raises(BounceError, match="without a recipient's Action"):
        parse_bounce(_report("failed", "5.1.1").replace(b"Action: failed\r\n", b""))


def test_diagnostics_lose_control_characters_and_are_cut() -> None:
    bounce = parse_bounce(_report("failed", "5.1.1", "550 5.1.1 user\x1b[31m unknown " + "x" * 1000))
    assert bounce.worst is not None
    assert "\x1b" not in bounce.worst.diagnostic and len(bounce.worst.diagnostic) <= 300


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2000))
def test_arbitrary_bytes_are_a_bounce_or_a_bounce_error(data: bytes) -> None:
    with contextlib.suppress(BounceError):
        parse_bounce(data)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=400), st.sampled_from(["postfix-hard", "exim-hard", "qmail-hard", "gmail-hard"]))
def test_hostile_text_in_a_real_shape_never_breaks_the_parser(text: str, name: str) -> None:
    data = fixture(name).replace(b"ada@example.org", text.encode("utf-8", "replace"), 1)
    with contextlib.suppress(BounceError):
        parse_bounce(data)


def test_verp_tokens_are_signed_and_read_back_whatever_the_case() -> None:
    verp = Verp("bounce@example.net", b"k" * 32)
    sender = verp.sender(42, "<a@example.net>")
    assert (
        sender.startswith("bounce+42-") and sender.endswith("@example.net") and len(sender.split("@")[0]) < 64
    )
    (token,) = verp.tokens([f"Bounces <{sender.upper()}>"])
    assert token.delivery_id == 42 and verp.verifies(token, "<a@example.net>")
    assert not verp.verifies(token, "<b@example.net>")  # a row id handed out again: another digest
    assert not verp.verifies(Token(42, "0" * 16), "<a@example.net>")
    other = Verp("bounce@example.net", b"j" * 32)
    assert not other.verifies(token, "<a@example.net>")  # another database's key
    assert verp.tokens(["bounce+42-0123@example.net", "xbounce+42-0123456789abcdef@example.net"]) == []
    assert verp.tokens(["bounce+42-0123456789abcdef@example.net.evil.org"]) == []

"""Bounce handling end to end with a local Maildir as the bounce mailbox: real digests sent to
aiosmtpd on loopback, their VERP envelope senders, DSNs built from the fixtures for exactly
those deliveries, the real CLI reading them (``digest bounces``), suppression and unsuppress."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import Result
from conftest import BASE_CONFIG, SmtpServer, bounce_from_fixture, delivery_rows, smtp_section

from pipeline.bounces import mailbox
from pipeline.store import Store

VERP = re.compile(r"^bounce\+(\d+)-[0-9a-f]{16}@example\.net$")


def bounce_config(
    write_config: Callable[..., Path], tmp_path: Path, smtp: str = "", **bounces: object
) -> Path:
    box = tmp_path / "bounce-box"
    for sub in ("new", "cur", "tmp"):
        (box / sub).mkdir(parents=True, exist_ok=True)
    values: dict[str, object] = {"address": "bounce@example.net", "maildir": str(box), **bounces}
    section = "[bounces]\n" + "".join(f"{key} = {json.dumps(value)}\n" for key, value in values.items())
    # send_empty: every send makes a digest for everyone, so a test can make many deliveries.
    text = BASE_CONFIG.replace('lookback = "3650d"\n', 'lookback = "3650d"\nsend_empty = true\n', 1)
    return write_config(text, smtp=smtp + "\n" + section)


def last_delivery(server: SmtpServer, address: str) -> tuple[str, str]:
    """The envelope sender and Message-ID of the latest digest to ``address``."""
    handler = server.handler
    found = [
        (m, f) for m, (f, rcpts) in zip(handler.messages, handler.envelopes, strict=True) if address in rcpts
    ]
    message, mail_from = found[-1]
    return mail_from, str(message["Message-ID"])


def drop(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / "bounce-box" / "new" / name
    path.write_bytes(data)
    return path


def send_to_all(cli: Callable[..., Result], config: Path) -> Result:
    result = cli("--config", config, "send", "--no-fetch")
    assert result.exit_code in (0, 3), result.output
    return result


@pytest.mark.parametrize(
    ("fixture", "summary"),
    [
        ("postfix-hard", "hard bounce 5.1.1"),
        ("gmail-hard", "hard bounce 5.1.1"),
        ("exim-hard", "hard bounce 5.1.1"),
        ("qmail-hard", "hard bounce 5.1.1"),
        ("postfix-delay", "soft delay 4.2.2"),
    ],
)
def test_each_shape_of_bounce_is_recorded_against_its_delivery(
    cli: Callable[..., Result],
    write_config: Callable[..., Path],
    smtp_server: SmtpServer,
    tmp_path: Path,
    fixture: str,
    summary: str,
) -> None:
    config = bounce_config(write_config, tmp_path, smtp_section(smtp_server))
    assert cli("--config", config, "send").exit_code == 0
    rows = {row["subscriber"]: row for row in delivery_rows(tmp_path)}
    senders = {rcpts[0]: sender for sender, rcpts in smtp_server.handler.envelopes}
    for address, sender in senders.items():  # each delivery has its own envelope sender
        found = VERP.match(sender)
        assert found, sender
        assert int(found[1]) == rows[address]["id"]
    assert len(set(senders.values())) == 3

    verp, message_id = last_delivery(smtp_server, "grace@example.org")
    dsn = bounce_from_fixture(fixture, verp=verp, recipient="grace@example.org", message_id=message_id)
    file = drop(tmp_path, "1796540472.M1P1.mx", dsn)
    result = cli("--config", config, "bounces")
    assert result.exit_code == 0, result.output
    assert f"new/{file.name}: recorded: {summary}" in result.output
    assert "[grace@example.org]" in result.output
    moved = tmp_path / "bounce-box" / ".Processed" / "cur" / f"{file.name}:2,"
    assert moved.read_bytes() == dsn and not file.exists()  # moved whole, not copied nor lost

    status = cli("--config", config, "status")
    hard = "hard" in summary
    assert ("grace@example.org: suppressed (hard bounce: 5.1.1" in status.output) is hard
    sent_before = len(smtp_server.handler.messages)
    send_to_all(cli, config)
    got = [rcpts[0] for _, rcpts in smtp_server.handler.envelopes[sent_before:]]
    assert ("grace@example.org" in got) is not hard  # a hard bounce stops the digests at once
    assert sorted(set(got) - {"grace@example.org"}) == ["ada@example.org", "alan@example.org"]


def test_soft_bounces_in_a_row_suppress_a_delivery_resets_the_count_and_unsuppress_undoes_it(
    cli: Callable[..., Result], write_config: Callable[..., Path], smtp_server: SmtpServer, tmp_path: Path
) -> None:
    config = bounce_config(write_config, tmp_path, smtp_section(smtp_server), soft_limit=3)
    n = 0

    def send_and_bounce(*, bounce: bool) -> Result:
        nonlocal n
        send_to_all(cli, config)
        if not bounce:
            return cli("--config", config, "bounces")
        n += 1
        verp, message_id = last_delivery(smtp_server, "ada@example.org")
        dsn = bounce_from_fixture(
            "postfix-delay", verp=verp, recipient="ada@example.org", message_id=message_id
        )
        drop(tmp_path, f"soft-{n}", dsn)
        result = cli("--config", config, "bounces")
        assert result.exit_code == 0, result.output
        return result

    assert "0 hard, 1 soft in a row" in send_and_bounce(bounce=True).output
    assert "0 hard, 2 soft in a row" in send_and_bounce(bounce=True).output
    assert (
        "ada@example.org: 0 hard bounces and 2 soft bounces in a row"
        in cli("--config", config, "status").output
    )
    send_and_bounce(bounce=False)  # a digest that is delivered and does not bounce
    assert "soft bounces in a row" not in cli("--config", config, "status").output  # reset
    assert "0 hard, 1 soft in a row" in send_and_bounce(bounce=True).output
    assert "0 hard, 2 soft in a row" in send_and_bounce(bounce=True).output
    third = send_and_bounce(bounce=True)
    assert "suppressed since" in third.output and "1 subscriber newly suppressed" in third.output

    status = cli("--config", config, "status")
    assert (
        "ada@example.org: suppressed (soft bounce: 4.2.2 452 4.2.2 <ada@example.org>: Mailbox full, since "
        in (" ".join(status.output.split()))
    )
    before = len(smtp_server.handler.messages)
    send_to_all(cli, config)
    assert "ada@example.org" not in [r[0] for _, r in smtp_server.handler.envelopes[before:]]

    lifted = cli("--config", config, "unsuppress", "ada@example.org")
    assert lifted.exit_code == 0, lifted.output
    assert "ada@example.org: no longer suppressed" in lifted.output
    assert "suppressed" not in cli("--config", config, "status").output
    before = len(smtp_server.handler.messages)
    send_to_all(cli, config)
    assert "ada@example.org" in [r[0] for _, r in smtp_server.handler.envelopes[before:]]
    # The counts start again from zero: one more soft bounce is one, not four.
    n += 1
    verp, message_id = last_delivery(smtp_server, "ada@example.org")
    drop(
        tmp_path,
        f"soft-{n}",
        bounce_from_fixture("postfix-delay", verp=verp, recipient="ada@example.org", message_id=message_id),
    )
    assert "0 hard, 1 soft in a row" in cli("--config", config, "bounces").output
    again = cli("--config", config, "unsuppress", "nobody@example.org")
    assert again.exit_code == 1 and "is not suppressed and has no bounces counted" in again.output


def test_forged_tokens_are_ignored_and_so_is_a_bounce_without_one_that_names_a_message_id(
    cli: Callable[..., Result], write_config: Callable[..., Path], smtp_server: SmtpServer, tmp_path: Path
) -> None:
    config = bounce_config(write_config, tmp_path, smtp_section(smtp_server))
    assert cli("--config", config, "send").exit_code == 0
    ada_verp, ada_id = last_delivery(smtp_server, "ada@example.org")
    grace_verp, grace_id = last_delivery(smtp_server, "grace@example.org")
    row = VERP.match(ada_verp)
    assert row is not None
    # A well-formed token with a made-up MAC, and one naming another delivery's row: neither
    # may suppress anyone, even with the real Message-ID in the returned headers.
    forged = f"bounce+{row[1]}-0123456789abcdef@example.net"
    drop(
        tmp_path,
        "forged",
        bounce_from_fixture("postfix-hard", verp=forged, recipient="ada@example.org", message_id=ada_id),
    )
    mac = ada_verp.split("-")[1].split("@")[0]
    other_row = VERP.match(grace_verp)
    assert other_row is not None
    swapped = f"bounce+{other_row[1]}-{mac}@example.net"
    drop(
        tmp_path,
        "swapped",
        bounce_from_fixture("qmail-hard", verp=swapped, recipient="grace@example.org", message_id=grace_id),
    )
    result = cli("--config", config, "bounces")
    assert result.exit_code == 0, result.output
    assert result.output.count("ignored: hard bounce 5.1.1") == 2
    assert "names no delivery of ours (forged, or forgotten)" in result.output
    assert "suppressed" not in cli("--config", config, "status").output

    # No VERP token at all, but the real Message-ID of grace's digest in the returned headers:
    # anyone who saw that digest knows it, and anyone may write to the bounce address, while
    # every real bounce of a digest comes back to its VERP address. Ignored, like a forged one.
    plain = bounce_from_fixture(
        "exim-hard", verp="digest@example.net", recipient="grace@example.org", message_id=grace_id
    )
    plain = plain.replace(f"<{grace_verp}>".encode(), b"<digest@example.net>")
    assert grace_verp.encode() not in plain and grace_id.encode() in plain
    drop(tmp_path, "by-message-id", plain)
    result = cli("--config", config, "bounces")
    assert result.exit_code == 0, result.output
    assert "new/by-message-id: ignored: hard bounce 5.1.1" in result.output, result.output
    assert "no VERP token: it names no delivery" in result.output
    assert "0 recorded, 1 ignored, 0 left in place" in result.output
    status = cli("--config", config, "status").output
    assert "suppressed" not in status and "bounces in a row" not in status
    processed = sorted(p.name for p in (tmp_path / "bounce-box" / ".Processed" / "cur").iterdir())
    assert processed == ["by-message-id:2,", "forged:2,", "swapped:2,"]  # moved, not left to pile up
    assert not list((tmp_path / "bounce-box" / "new").iterdir())


def test_a_bounce_from_a_forwarded_copy_counts_as_soft_and_never_suppresses_the_reader(
    cli: Callable[..., Result], write_config: Callable[..., Path], smtp_server: SmtpServer, tmp_path: Path
) -> None:
    config = bounce_config(write_config, tmp_path, smtp_section(smtp_server))  # hard_limit 1
    assert cli("--config", config, "send").exit_code == 0
    ada_verp, ada_id = last_delivery(smtp_server, "ada@example.org")
    grace_verp, grace_id = last_delivery(smtp_server, "grace@example.org")
    # Ada's server took her digest and forwarded it on (keeping our envelope sender, so the
    # bounce has her real VERP token); the forward target does not exist. Postfix passes the
    # ORCPT on: Original-Recipient is Ada's own address, Final-Recipient the target's.
    forwarded = bounce_from_fixture(
        "postfix-hard", verp=ada_verp, recipient="ada.old@forward.example.com", message_id=ada_id
    ).replace(
        b"Original-Recipient: rfc822;ada.old@forward.example.com",
        b"Original-Recipient: rfc822;ada@example.org",
    )
    assert b"Final-Recipient: rfc822; ada.old@forward.example.com" in forwarded
    drop(tmp_path, "forwarded", forwarded)
    # Exim's text names only the address that failed: grace's forward target.
    drop(
        tmp_path,
        "forwarded-exim",
        bounce_from_fixture(
            "exim-hard", verp=grace_verp, recipient="grace@old.example.com", message_id=grace_id
        ),
    )
    result = cli("--config", config, "bounces")
    assert result.exit_code == 0, result.output
    out = " ".join(result.output.split())
    assert "new/forwarded: recorded: soft bounce 5.1.1" in out, out
    assert (
        "(for ada.old@forward.example.com, not ada@example.org: a forwarded copy, counted as soft): "
        "0 hard, 1 soft in a row [ada@example.org]"
    ) in out
    assert "new/forwarded-exim: recorded: soft bounce 5.1.1" in out
    assert "(for grace@old.example.com, not grace@example.org: a forwarded copy" in out
    assert "0 subscribers newly suppressed" in out
    status = cli("--config", config, "status").output
    assert "suppressed" not in status
    assert "ada@example.org: 0 hard bounces and 1 soft bounce in a row" in status

    # Her own address refusing it (Final-Recipient in another case, and typed) is hard, as before.
    own = bounce_from_fixture("postfix-hard", verp=ada_verp, recipient="ada@example.org", message_id=ada_id)
    own = own.replace(
        b"Final-Recipient: rfc822; ada@example.org", b"Final-Recipient: RFC822; <ADA@Example.ORG>"
    )
    drop(tmp_path, "own", own)
    result = cli("--config", config, "bounces")
    assert "new/own: recorded: hard bounce 5.1.1" in result.output, result.output
    assert "1 subscriber newly suppressed" in result.output
    assert "ada@example.org: suppressed (hard bounce: 5.1.1" in cli("--config", config, "status").output


def test_messages_left_in_place_never_starve_new_bounces(
    cli: Callable[..., Result],
    write_config: Callable[..., Path],
    smtp_server: SmtpServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(mailbox, "FETCH_LIMIT", 2)  # (500 in earnest)
    config = bounce_config(write_config, tmp_path, smtp_section(smtp_server))
    assert cli("--config", config, "send").exit_code == 0
    junk = bounce_from_fixture("unrelated", verp="x", recipient="y", message_id="z")
    left = [drop(tmp_path, f"100{i}.M1P1.mx", junk) for i in range(3)]  # the oldest, unreadable
    verp, message_id = last_delivery(smtp_server, "grace@example.org")
    dsn = bounce_from_fixture("postfix-hard", verp=verp, recipient="grace@example.org", message_id=message_id)
    bounce = drop(tmp_path, "200.M1P1.mx", dsn)

    first = cli("--config", config, "bounces")
    assert "new/1000.M1P1.mx: left" in first.output and "new/1001.M1P1.mx: left" in first.output
    assert "2 messages read, 0 recorded, 0 ignored, 2 left in place;" in first.output
    second = cli("--config", config, "bounces")  # the two left are passed over, not read again
    assert "new/1000.M1P1.mx" not in second.output
    assert "new/1002.M1P1.mx: left" in second.output
    assert "new/200.M1P1.mx: recorded: hard bounce 5.1.1" in second.output, second.output
    assert "(2 more left before, not read again)" in second.output
    assert not bounce.exists()
    assert "grace@example.org: suppressed (hard bounce: 5.1.1" in cli("--config", config, "status").output

    # A mail reader marking one seen (new/ -> cur/, ":2,S") does not make it new again; one
    # taken out of the mailbox is forgotten; nothing left was touched.
    left[0].rename(tmp_path / "bounce-box" / "cur" / f"{left[0].name}:2,S")
    left[1].unlink()
    third = cli("--config", config, "bounces")
    assert "0 messages read, 0 recorded, 0 ignored, 0 left in place (2 more left before" in third.output
    assert left[2].read_bytes() == junk
    with Store(f"sqlite:///{tmp_path / 'state' / 'digest.db'}") as store:
        assert store.left_in_mailbox(str(tmp_path / "bounce-box")) == {"1000.M1P1.mx", "1002.M1P1.mx"}


def test_what_is_no_bounce_is_left_in_place_and_reported(
    cli: Callable[..., Result], write_config: Callable[..., Path], smtp_server: SmtpServer, tmp_path: Path
) -> None:
    config = bounce_config(write_config, tmp_path, smtp_section(smtp_server))
    assert cli("--config", config, "send").exit_code == 0
    verp, message_id = last_delivery(smtp_server, "alan@example.org")
    files = {
        name: drop(
            tmp_path,
            name,
            bounce_from_fixture(name, verp=verp, recipient="alan@example.org", message_id=message_id),
        )
        for name in ("autoreply", "garbage", "unrelated")
    }
    before = {name: path.read_bytes() for name, path in files.items()}
    result = cli("--config", config, "bounces")
    assert result.exit_code == 0, result.output
    assert "new/autoreply: left: an automatic reply (out of office), not a bounce" in result.output
    assert "new/garbage: left: no headers: not an email message" in result.output
    assert "new/unrelated: left: not a delivery status notification" in result.output
    assert "3 messages read, 0 recorded, 0 ignored, 3 left in place" in result.output
    assert {name: path.read_bytes() for name, path in files.items()} == before  # untouched
    assert not (tmp_path / "bounce-box" / ".Processed").exists()
    assert "suppressed" not in cli("--config", config, "status").output


def test_a_maildir_outbox_records_the_verp_sender_as_return_path(
    cli: Callable[..., Result], write_config: Callable[..., Path], tmp_path: Path
) -> None:
    config = bounce_config(write_config, tmp_path)  # no [smtp]: digests go to the outbox Maildir
    assert cli("--config", config, "send").exit_code == 0
    files = sorted((tmp_path / "outbox" / "new").iterdir())
    assert len(files) == 3
    ada = next(f for f in files if b"\r\nTo: Ada <ada@example.org>\r\n" in f.read_bytes())
    data = ada.read_bytes()
    head = data.split(b"\r\n", 1)[0].decode()
    found = re.fullmatch(r"Return-Path: <(bounce\+\d+-[0-9a-f]{16}@example\.net)>", head)
    assert found, head
    message_id = re.search(rb"\r\nMessage-ID: (<[^>]+>)", data)
    assert message_id is not None
    drop(
        tmp_path,
        "qmail",
        bounce_from_fixture(
            "qmail-hard", verp=found[1], recipient="ada@example.org", message_id=message_id[1].decode()
        ),
    )
    result = cli("--config", config, "bounces")
    assert "new/qmail: recorded: hard bounce 5.1.1" in result.output and "suppressed since" in result.output
    again = cli("--config", config, "send")
    assert "no digest for ada@example.org: suppressed after bounces" in again.output, again.output
    assert len(list((tmp_path / "outbox" / "new").iterdir())) == 5  # grace and alan only


def test_a_digest_waiting_in_the_outbox_is_not_sent_once_its_reader_is_suppressed(
    cli: Callable[..., Result], write_config: Callable[..., Path], smtp_server: SmtpServer, tmp_path: Path
) -> None:
    config = bounce_config(write_config, tmp_path, smtp_section(smtp_server))
    send_to_all(cli, config)  # delivered: the one that will bounce
    verp, message_id = last_delivery(smtp_server, "ada@example.org")
    smtp_server.handler.faults["ada@example.org"] = ["451 4.3.0 try later"] * 20
    waiting = cli("--config", config, "send", "--no-fetch")
    assert waiting.exit_code == 3, waiting.output  # ada's second digest waits for a retry
    dsn = bounce_from_fixture("postfix-hard", verp=verp, recipient="ada@example.org", message_id=message_id)
    drop(tmp_path, "hard", dsn)
    assert "1 subscriber newly suppressed" in cli("--config", config, "bounces").output
    attempts = smtp_server.handler.attempts["ada@example.org"]
    before = len(smtp_server.handler.messages)
    cli("--config", config, "send", "--no-fetch", "--retry-now")
    assert "ada@example.org" not in [r[0] for _, r in smtp_server.handler.envelopes[before:]]
    assert smtp_server.handler.attempts["ada@example.org"] == attempts  # never offered again
    (last,) = [row for row in delivery_rows(tmp_path) if row["subscriber"] == "ada@example.org"][-1:]
    assert last["state"] == "failed", last
    assert last["last_error"].startswith("not sent: suppressed after hard bounces (since "), last

"""The bounce mailbox over IMAP: a real Dovecot (tests/dovecot_server.py) on loopback with TLS,
bounces APPENDed to it, ``digest bounces`` run as a process. The VERP round trip (a real
digest's MAIL FROM, a DSN to it), processed messages moved, the rest left, nothing deleted."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from click.testing import Result
from conftest import BASE_CONFIG, SmtpServer, bounce_from_fixture, smtp_section
from dovecot_server import DovecotServer, dovecot_available, running_dovecot

from pipeline import run
from pipeline.bounces import ImapMailbox, mailbox
from pipeline.config import load_settings
from pipeline.store import Store

PASSWORD_ENV = "DIGEST_TEST_IMAP_PASSWORD"


@pytest.fixture
def dovecot(tmp_path: Path) -> Iterator[DovecotServer]:
    reason = dovecot_available()
    if reason is not None:
        pytest.skip(reason)
    with running_dovecot(tmp_path) as server:
        yield server


def imap_config(
    write_config: Callable[..., Path], smtp_server: SmtpServer, dovecot: DovecotServer, **extra: object
) -> Path:
    values: dict[str, object] = {
        "address": "bounce@example.net",
        "imap_host": "127.0.0.1",
        "imap_port": dovecot.imaps_port,
        "imap_username": dovecot.user,
        "imap_password_env": PASSWORD_ENV,
        "ca_file": str(dovecot.ca_file),
        "processed_folder": "Digest Processed",  # (a name IMAP must quote)
        "timeout": "10s",
        **extra,
    }
    values = {key: value for key, value in values.items() if value is not None}
    section = "[bounces]\n" + "".join(f"{key} = {json.dumps(value)}\n" for key, value in values.items())
    text = BASE_CONFIG.replace('lookback = "3650d"\n', 'lookback = "3650d"\nsend_empty = true\n', 1)
    return write_config(text, smtp=smtp_section(smtp_server) + "\n" + section)


def bounces_process(config: Path, password: str) -> subprocess.CompletedProcess[str]:
    """``digest bounces`` as the real command, in a process of its own."""
    env = {**os.environ, PASSWORD_ENV: password, "COLUMNS": "200"}
    return subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "--config", str(config), "bounces"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )


def delivery_of(server: SmtpServer, address: str) -> tuple[str, str]:
    handler = server.handler
    for message, (sender, rcpts) in zip(handler.messages, handler.envelopes, strict=True):
        if rcpts == [address]:
            return sender, str(message["Message-ID"])
    raise AssertionError(f"no digest to {address}")


def test_verp_round_trip_over_imap_moves_only_what_was_processed(
    cli: Callable[..., Result],
    write_config: Callable[..., Path],
    smtp_server: SmtpServer,
    dovecot: DovecotServer,
) -> None:
    config = imap_config(write_config, smtp_server, dovecot)
    assert cli("--config", config, "send").exit_code == 0
    verp, message_id = delivery_of(smtp_server, "ada@example.org")
    assert re.fullmatch(r"bounce\+\d+-[0-9a-f]{16}@example\.net", verp), verp
    grace_verp, grace_id = delivery_of(smtp_server, "grace@example.org")
    forged = re.sub(r"-[0-9a-f]{16}@", "-00000000deadbeef@", grace_verp)

    appended = [
        bounce_from_fixture("postfix-hard", verp=verp, recipient="ada@example.org", message_id=message_id),
        bounce_from_fixture("autoreply", verp=verp, recipient="ada@example.org", message_id=message_id),
        bounce_from_fixture("gmail-hard", verp=forged, recipient="grace@example.org", message_id=grace_id),
        bounce_from_fixture("garbage", verp=verp, recipient="", message_id=""),
        bounce_from_fixture(
            "postfix-delay", verp=grace_verp, recipient="grace@example.org", message_id=grace_id
        ),
    ]
    for data in appended:
        dovecot.append(data)

    result = bounces_process(config, dovecot.password)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "UID 1: recorded: hard bounce 5.1.1 (550 5.1.1 <ada@example.org>" in result.stdout
    assert "suppressed since" in result.stdout
    assert "UID 3: ignored: hard bounce 5.1.1" in result.stdout and "forged" in result.stdout
    assert "UID 5: recorded: soft delay 4.2.2" in result.stdout
    assert "UID 2: left: an automatic reply (out of office), not a bounce" in result.stderr
    assert "UID 4: left: no headers: not an email message" in result.stderr
    assert (
        "5 messages read, 2 recorded, 1 ignored, 2 left in place; 1 subscriber newly suppressed"
        in result.stdout
    )

    # Moved, not deleted: every message is in one folder or the other, byte for byte.
    inbox, processed = dovecot.folder("INBOX"), dovecot.folder("Digest Processed")
    assert inbox == [appended[1], appended[3]]
    assert processed == [appended[0], appended[2], appended[4]]
    # The ones left stay unread (they were only peeked at).
    conn = dovecot.client()
    try:
        conn.select("INBOX", readonly=True)
        assert conn.uid("SEARCH", "UNSEEN")[1][0].split() == [b"2", b"4"]
    finally:
        conn.logout()

    status = cli("--config", config, "status")
    assert "ada@example.org: suppressed (hard bounce: 5.1.1 550 5.1.1" in " ".join(status.output.split())
    assert "grace@example.org: suppressed" not in status.output
    before = len(smtp_server.handler.messages)
    sent = cli("--config", config, "send", "--no-fetch")
    assert "no digest for ada@example.org: suppressed after bounces" in sent.output
    assert sorted(r[0] for _, r in smtp_server.handler.envelopes[before:]) == [
        "alan@example.org",
        "grace@example.org",
    ]

    # A second reading passes over what was left (reported once), and changes nothing.
    again = bounces_process(config, dovecot.password)
    assert "0 messages read, 0 recorded, 0 ignored, 0 left in place (2 more left before" in again.stdout
    assert "UID 2" not in again.stdout + again.stderr
    assert dovecot.folder("INBOX") == [appended[1], appended[3]]


def test_copy_then_delete_where_move_is_not_used_over_starttls(
    write_config: Callable[..., Path],
    smtp_server: SmtpServer,
    dovecot: DovecotServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    config = imap_config(
        write_config, smtp_server, dovecot, imap_security="starttls", imap_port=dovecot.imap_port
    )
    monkeypatch.setenv(PASSWORD_ENV, dovecot.password)
    settings = load_settings(config)
    with Store(settings.digest.database_url) as store:
        run.send(settings, store)
        verp, message_id = delivery_of(smtp_server, "alan@example.org")
        bounce = bounce_from_fixture(
            "exim-hard", verp=verp, recipient="alan@example.org", message_id=message_id
        )
        other = bounce_from_fixture(
            "autoreply", verp=verp, recipient="alan@example.org", message_id=message_id
        )
        # Another client's message already marked \Deleted must survive our expunge.
        dovecot.append(other)
        conn = dovecot.client()
        try:
            conn.select("INBOX")
            conn.uid("STORE", "1", "+FLAGS", "(\\Deleted)")
        finally:
            conn.logout()
        dovecot.append(bounce)
        assert settings.bounces is not None
        report = run.read_bounces(settings, store, mailbox=ImapMailbox(settings.bounces, prefer_move=False))
    assert [(o.ref, o.result) for o in report.outcomes] == [("UID 2", "recorded")]
    assert dovecot.folder("Digest Processed") == [bounce]
    conn = dovecot.client()
    try:
        conn.select("INBOX", readonly=True)
        assert conn.uid("SEARCH", "ALL")[1][0].split() == [b"1"]  # only ours was expunged
    finally:
        conn.logout()


def test_an_untrusted_certificate_or_a_wrong_password_is_a_clear_error(
    write_config: Callable[..., Path], smtp_server: SmtpServer, dovecot: DovecotServer
) -> None:
    untrusted = imap_config(write_config, smtp_server, dovecot, ca_file=None)
    result = bounces_process(untrusted, dovecot.password)
    assert result.returncode == 1
    assert (
        "the server's certificate is not trusted" in result.stderr
        and "set [bounces] ca_file" in result.stderr
    )

    config = imap_config(write_config, smtp_server, dovecot)
    result = bounces_process(config, "wrong")
    assert result.returncode == 1
    assert "check [bounces] imap_username and the password" in result.stderr, result.stderr
    result = bounces_process(config, "pässwört")
    assert result.returncode == 1 and "has characters IMAP cannot send" in result.stderr, result.stderr
    dovecot.append(b"Subject: still here\r\n\r\nx\r\n")
    assert len(dovecot.folder("INBOX")) == 1


def test_messages_left_in_place_never_starve_new_bounces_over_imap(
    write_config: Callable[..., Path],
    smtp_server: SmtpServer,
    dovecot: DovecotServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(mailbox, "FETCH_LIMIT", 2)  # (500 in earnest)
    config = imap_config(write_config, smtp_server, dovecot)
    monkeypatch.setenv(PASSWORD_ENV, dovecot.password)
    settings = load_settings(config)
    assert settings.bounces is not None
    junk = bounce_from_fixture("unrelated", verp="x", recipient="y", message_id="z")
    with Store(settings.digest.database_url) as store:
        run.send(settings, store)
        verp, message_id = delivery_of(smtp_server, "ada@example.org")
        for _ in range(3):
            dovecot.append(junk)  # UIDs 1-3: the oldest, and no bounce
        bounce = bounce_from_fixture(
            "postfix-hard", verp=verp, recipient="ada@example.org", message_id=message_id
        )
        dovecot.append(bounce)  # UID 4

        def reading() -> list[tuple[str, str]]:
            report = run.read_bounces(settings, store)
            return [(o.ref, o.result) for o in report.outcomes]

        assert reading() == [("UID 1", "left"), ("UID 2", "left")]
        assert reading() == [("UID 3", "left"), ("UID 4", "recorded")]
        assert "ada@example.org" in store.suppressions()
        assert reading() == []
        left = store.left_in_mailbox(ImapMailbox(settings.bounces).where)
        validity = {key.split("/")[0] for key in left}
        assert len(validity) == 1 and validity != {""}  # UIDs are kept with their UIDVALIDITY
        assert sorted(key.split("/")[1] for key in left) == ["1", "2", "3"]
    assert dovecot.folder("INBOX") == [junk] * 3  # left, never deleted
    assert dovecot.folder("Digest Processed") == [bounce]

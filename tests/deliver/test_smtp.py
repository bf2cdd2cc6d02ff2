"""The SMTP transport: reply classes, TLS and login, the rate limit, pipelining and dot lines.

Against a real aiosmtpd server on 127.0.0.1 (see conftest.SmtpHandler), which can require
STARTTLS or implicit TLS with a certificate from a private CA (trustme) and AUTH LOGIN.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import pytest
from click.testing import Result
from conftest import (
    ONE_PAPER_FEED,
    SmtpHandler,
    SmtpServer,
    body_text,
    delivery_states,
    many,
    smtp_section,
    tls_smtp_server,
)

from pipeline import run
from pipeline.config import load_settings
from pipeline.deliver import SmtpTransport, is_transient
from pipeline.models import OutgoingMessage
from pipeline.store import Store, utcnow


@pytest.mark.parametrize(
    ("code", "transient"),
    [
        (421, True),
        (450, True),
        (451, True),
        (452, True),
        (552, True),
        (550, False),
        (551, False),
        (553, False),
        (554, False),
        (501, False),
    ],
)
def test_reply_classification(code: int, transient: bool) -> None:
    # Mailman 3's rule: 4xx and 552 are temporary, every other 5xx permanent.
    assert is_transient(code) is transient


def test_rate_limits_messages_per_second(
    cli: Callable[..., Result], tmp_path: Path, smtp_server: SmtpServer
) -> None:
    config = many(tmp_path, 11, smtp_section(smtp_server, rate=20))
    started = time.monotonic()
    assert cli("--config", config, "send", "--no-fetch").exit_code == 0  # nothing stored yet: no mail
    assert cli("--config", config, "send").exit_code == 0
    assert time.monotonic() - started >= 0.5  # 11 messages at 20/s need at least 0.5 s
    assert len(smtp_server.handler.messages) == 11


@pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")  # aiosmtpd, implicit TLS
@pytest.mark.parametrize("security", ["starttls", "tls"])
def test_tls_with_a_private_ca_and_login(
    cli: Callable[..., Result], tmp_path: Path, security: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    handler = SmtpHandler()
    controller, port, ca_file = tls_smtp_server(
        tmp_path, implicit=security == "tls", handler=handler, auth=True
    )
    try:
        server = SmtpServer("localhost", port, handler)
        smtp = smtp_section(
            server,
            host="localhost",
            security=security,
            ca_file=str(ca_file),
            username="digest",
            password_env="DIGEST_TEST_SMTP_PASSWORD",
        )
        config = many(tmp_path, 2, smtp)
        monkeypatch.setenv("DIGEST_TEST_SMTP_PASSWORD", "s3cret")
        result = cli("--config", config, "send")
        assert result.exit_code == 0, result.output
        assert len(handler.messages) == 2
    finally:
        controller.stop()


def test_an_untrusted_certificate_or_a_wrong_password_loses_nothing(
    cli: Callable[..., Result], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    handler = SmtpHandler()
    controller, port, ca_file = tls_smtp_server(tmp_path, implicit=False, handler=handler, auth=True)
    try:
        server = SmtpServer("localhost", port, handler)
        untrusted = many(tmp_path, 2, smtp_section(server, host="localhost", security="starttls"))
        result = cli("--config", untrusted, "send")
        assert result.exit_code == 2, result.output  # a config mistake: fix it, nothing is lost
        assert "certificate is not trusted" in result.output and "set [smtp] ca_file" in result.output
        assert "_ssl.c" not in result.output
        assert set(delivery_states(tmp_path).values()) == {"pending"}

        monkeypatch.setenv("DIGEST_TEST_SMTP_PASSWORD", "wrong")
        smtp = smtp_section(
            server,
            host="localhost",
            security="starttls",
            ca_file=str(ca_file),
            username="digest",
            password_env="DIGEST_TEST_SMTP_PASSWORD",
        )
        config = many(tmp_path, 2, smtp)
        settings = load_settings(config)
        with Store(settings.digest.database_url) as store:
            report = run.deliver_due(settings, store, clock=lambda: utcnow() + timedelta(minutes=5))
        assert report.exit_code == 2 and report.refused and "login refused: 535" in report.refused
        assert set(delivery_states(tmp_path).values()) == {"pending"} and handler.messages == []
    finally:
        controller.stop()


@pytest.mark.parametrize("pipelining", [True, False])
def test_pipelined_and_plain_transactions_deliver_the_same_bytes(
    tmp_path: Path, smtp_server: SmtpServer, pipelining: bool
) -> None:
    # A line that starts with a dot must survive SMTP's dot-stuffing either way (RFC 5321 4.5.2).
    smtp_server.handler.pipelining = pipelining
    feed = ONE_PAPER_FEED.replace("An SNN paper.", "An SNN paper.\n.hidden line\n..and two dots")
    config = many(tmp_path, 2, smtp_section(smtp_server))
    (tmp_path / "feed.xml").write_text(feed)
    settings = load_settings(config)
    with Store(settings.digest.database_url) as store:
        assert run.send(settings, store).count("sent") == 2
    sent = {m["To"].addresses[0].addr_spec: m for m in smtp_server.handler.messages}
    assert set(sent) == {"user0@example.org", "user1@example.org"}
    for message in sent.values():
        assert ".hidden line" in body_text(message) or ". hidden line" in body_text(message)


@pytest.mark.parametrize("pipelining", [True, False])
def test_lines_starting_with_a_dot_survive_either_transaction(
    tmp_path: Path, smtp_server: SmtpServer, pipelining: bool
) -> None:
    # compose writes no such line (it encodes the dot), but the transport takes any message.
    smtp_server.handler.pipelining = pipelining
    settings = load_settings(many(tmp_path, 1, smtp_section(smtp_server)))
    assert settings.smtp is not None
    body = ".first\r\nmiddle\r\n..two\r\n.\r\n.end"  # (a lone dot would end the data)
    data = f"From: a@example.org\r\nTo: b@example.org\r\nSubject: dots\r\n\r\n{body}".encode()
    transport = SmtpTransport(settings.smtp)
    try:
        transport.send(OutgoingMessage("a@example.org", "b@example.org", "<dots@x>", data))
    finally:
        transport.close()
    (message,) = smtp_server.handler.messages
    assert message.get_payload().replace("\r\n", "\n").rstrip("\n") == body.replace("\r\n", "\n")


def test_a_refused_sender_in_a_pipelined_transaction_stops_the_run_and_keeps_every_digest(
    tmp_path: Path, smtp_server: SmtpServer
) -> None:
    # A 5xx to MAIL FROM is about our sender, not the recipient: every digest would meet it.
    smtp_server.handler.mail_faults.append("553 5.1.8 sender rejected")
    config = many(tmp_path, 2, smtp_section(smtp_server))
    settings = load_settings(config)
    with Store(settings.digest.database_url) as store:
        report = run.send(settings, store)
        assert report.exit_code == 2 and report.count("failed") == 0 and report.count("sent") == 0
        assert report.refused and "553 5.1.8 sender rejected" in report.refused
        assert "MAIL FROM" in report.refused and "[smtp] from" in report.refused
        assert set(delivery_states(tmp_path).values()) == {"pending"}
        again = run.send(settings, store)  # the server takes the sender now: both go, once
    assert again.exit_code == 0 and again.count("sent") == 2
    assert sorted(rcpt for _, (rcpt,) in smtp_server.handler.envelopes) == [
        "user0@example.org",
        "user1@example.org",
    ]

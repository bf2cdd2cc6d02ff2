"""The Postfix harness (tests/postfix_server.py) checked through plain smtplib, then digest
sending through it end to end: STARTTLS with the harness CA, AUTH through Dovecot, the
replies Postfix gives for refused recipients, oversized messages and too many connections."""

from __future__ import annotations

import hashlib
import smtplib
import ssl
import time
from collections.abc import Callable
from email.message import EmailMessage
from pathlib import Path

import pytest
from click.testing import Result
from conftest import FeedServer, smtp_section
from postfix_server import PostfixServer, postfix_available, running_postfix

pytestmark = pytest.mark.skipif(postfix_available() is not None, reason=str(postfix_available()))

USERS = {"digest": "s3cret"}


def message(to: str = "ada@example.org", *, body: str = "hello from the smoke test") -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = "digest@example.net"
    msg["To"] = to
    msg["Subject"] = f"smoke test for {to}"
    msg.set_content(body)
    return msg


def connect(server: PostfixServer) -> smtplib.SMTP:
    return smtplib.SMTP(server.host, server.smtp_port, timeout=10)


def tls_context(server: PostfixServer) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(server.ca_file))


def test_starttls_with_the_harness_ca_then_auth_plain_delivers(tmp_path: Path) -> None:
    with running_postfix(tmp_path, tls="starttls", auth_users=USERS, auth_required=True) as server:
        with connect(server) as smtp:
            smtp.ehlo()
            assert smtp.has_extn("starttls")
            assert not smtp.has_extn("auth")  # smtpd_tls_auth_only: no AUTH in the clear
            smtp.starttls(context=tls_context(server))  # verifies the certificate for 127.0.0.1
            smtp.ehlo()
            assert set(smtp.esmtp_features["auth"].split()) == {"PLAIN", "LOGIN"}
            smtp.user, smtp.password = "digest", "s3cret"
            assert smtp.auth("PLAIN", smtp.auth_plain)[0] == 235
            assert smtp.send_message(message()) == {}
        (delivered,) = server.messages(count=1)
        assert delivered["Delivered-To"] == "ada@example.org"
        assert delivered["Subject"] == "smoke test for ada@example.org"
        assert "with ESMTPSA" in str(delivered["Received"])  # authenticated, over TLS
        assert server.wait_for_log("sasl_method=PLAIN, sasl_username=digest")
    assert server.leftover_processes() == []
    assert not server.root.exists() and (tmp_path / "postfix-logs" / "maillog").exists()


def test_implicit_tls_port_and_auth_login(tmp_path: Path) -> None:
    with running_postfix(tmp_path, tls="tls", auth_users=USERS) as server:
        assert server.smtps_port is not None
        with smtplib.SMTP_SSL(
            server.host, server.smtps_port, context=tls_context(server), timeout=10
        ) as smtp:
            smtp.ehlo()
            smtp.user, smtp.password = "digest", "s3cret"
            assert smtp.auth("LOGIN", smtp.auth_login, initial_response_ok=False)[0] == 235
            smtp.send_message(message("grace@example.org"))
        assert [m["Delivered-To"] for m in server.messages(count=1)] == ["grace@example.org"]


def test_a_wrong_password_is_refused_with_535(tmp_path: Path) -> None:
    with running_postfix(tmp_path, tls=True, auth_users=USERS) as server, connect(server) as smtp:
        smtp.starttls(context=tls_context(server))
        with pytest.raises(smtplib.SMTPAuthenticationError) as refused:
            smtp.login("digest", "wrong")
        assert refused.value.smtp_code == 535
        assert server.messages() == []


def test_an_unauthenticated_client_is_rejected_when_auth_is_required(tmp_path: Path) -> None:
    with running_postfix(tmp_path, tls=True, auth_users=USERS, auth_required=True) as server:
        with connect(server) as smtp:
            smtp.starttls(context=tls_context(server))
            with pytest.raises(smtplib.SMTPRecipientsRefused) as refused:
                smtp.send_message(message())
        code, text = refused.value.recipients["ada@example.org"]
        assert code == 554 and b"5.7.1" in text and b"Access denied" in text
        assert server.messages() == []


def test_the_recipient_access_map_answers_450_550_and_reject(tmp_path: Path) -> None:
    access = {
        "busy@example.org": "450 4.2.0 try later",
        "gone@example.org": "550 5.1.1 no such user",
        "banned@example.org": "REJECT",
    }
    with running_postfix(tmp_path, recipient_access=access) as server, connect(server) as smtp:
        to = ["ada@example.org", *access]
        refused = smtp.sendmail("digest@example.net", to, message().as_bytes())
        assert {address: code for address, (code, _) in refused.items()} == {
            "busy@example.org": 450,
            "gone@example.org": 550,
            "banned@example.org": 554,
        }
        assert b"4.2.0" in refused["busy@example.org"][1] and b"try later" in refused["busy@example.org"][1]
        assert b"5.1.1" in refused["gone@example.org"][1]
        assert [m["Delivered-To"] for m in server.messages(count=1)] == ["ada@example.org"]


def test_a_message_over_message_size_limit_is_refused_with_552(tmp_path: Path) -> None:
    big = message(body=("x" * 70 + "\n") * 300)  # ~21 KB
    with running_postfix(tmp_path, message_size_limit=10_000) as server, connect(server) as smtp:
        smtp.ehlo()
        assert smtp.esmtp_features["size"] == "10000"
        # smtplib declares SIZE= (RFC 1870): refused at MAIL FROM
        with pytest.raises(smtplib.SMTPSenderRefused) as refused:
            smtp.send_message(big)
        assert refused.value.smtp_code == 552 and b"5.3.4" in refused.value.smtp_error
        # not declared: refused after the data
        smtp.rset()
        assert smtp.mail("digest@example.net")[0] == 250
        assert smtp.rcpt("ada@example.org")[0] == 250
        code, text = smtp.data(big.as_bytes())
        assert code == 552 and text == b"5.3.4 Error: message file too big"
        smtp.send_message(message())  # a small one still goes through
        assert len(server.messages(count=1)) == 1


def test_a_second_connection_is_refused_with_421_at_a_limit_of_one(tmp_path: Path) -> None:
    with running_postfix(tmp_path, client_connection_limit=1) as server:
        with connect(server) as first:
            assert first.noop()[0] == 250
            with pytest.raises(smtplib.SMTPConnectError) as refused:
                connect(server)
            assert refused.value.smtp_code == 421
            assert b"too many connections" in refused.value.smtp_error
            first.send_message(message())  # the first one is unharmed
        # once the first is gone, a new one is let in (anvil hears of the disconnect a moment later)
        deadline = time.monotonic() + 5
        while True:
            try:
                with connect(server) as again:
                    assert again.noop()[0] == 250
                break
            except smtplib.SMTPConnectError:
                assert time.monotonic() < deadline
                time.sleep(0.05)
        assert len(server.messages(count=1)) == 1


def test_the_instance_leaves_the_system_postfix_alone(tmp_path: Path) -> None:
    system = [Path("/etc/postfix/main.cf"), Path("/etc/postfix/master.cf")]

    def digests() -> list[str]:
        return [hashlib.sha256(p.read_bytes()).hexdigest() if p.exists() else "" for p in system]

    before = digests()
    with running_postfix(tmp_path) as server:
        main_cf = (server.root / "conf" / "main.cf").read_text()
        assert f"queue_directory = {server.root}/queue" in main_cf
        assert "inet_interfaces = 127.0.0.1" in main_cf
        assert server.leftover_processes() != []
    assert digests() == before
    assert server.leftover_processes() == []


def test_digest_send_delivers_through_postfix_with_starttls_and_auth(
    cli: Callable[..., Result],
    write_config: Callable[..., Path],
    feed_server: FeedServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with running_postfix(
        tmp_path, tls="starttls", tls_required=True, auth_users=USERS, auth_required=True
    ) as server:
        # smtp_section reads only .port, which PostfixServer has too
        smtp = smtp_section(
            server,  # type: ignore[arg-type]
            security="starttls",
            ca_file=str(server.ca_file),
            username="digest",
            password_env="DIGEST_TEST_SMTP_PASSWORD",
        )
        feeds = {
            "arxiv": feed_server.url("arxiv-cs.xml"),
            "hf": feed_server.url("hf-papers.xml"),
            "blog": feed_server.url("lab-blog.xml"),
        }
        config = write_config(smtp=smtp, feeds=feeds)
        monkeypatch.setenv("DIGEST_TEST_SMTP_PASSWORD", "s3cret")
        result = cli("--config", config, "send")
        assert result.exit_code == 0, result.output + server.log_tail()
        assert "3 sent, 0 pending, 0 failed" in result.output
        delivered = server.messages(count=3)
        assert sorted(m["Delivered-To"] for m in delivered) == [
            "ada@example.org",
            "alan@example.org",
            "grace@example.org",
        ]
        for m in delivered:
            assert m["To"].addresses[0].addr_spec == m["Delivered-To"]
            assert "with ESMTPSA" in str(m["Received"])
            assert m.get_body(("plain",)) is not None and m.get_body(("html",)) is not None
        assert len(server.wait_for_log("sasl_username=digest", count=3)) == 3
        # a second send finds nothing new: nothing goes through Postfix twice
        assert cli("--config", config, "send").exit_code == 0
        assert len(server.messages()) == 3

"""SMTP sessions: whose fault a refusal is, bounded steps, sizes, logins, extra connections.

A refusal of the message's recipient fails that digest; a refusal of us (our sender, our
client, our login, our TLS settings) stops the run and keeps every digest pending (exit 2),
so that fixing the cause and sending again loses nothing. Real aiosmtpd servers on 127.0.0.1
(or a raw socket server for replies aiosmtpd cannot give), a real SQLite file, the real CLI.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from click.testing import Result
from conftest import (
    SmtpHandler,
    SmtpServer,
    delivery_states,
    many,
    serving_smtp,
    smtp_section,
    start_smtp,
    tls_smtp_server,
)


@contextmanager
def drip_server(after_greeting: bytes = b"") -> Iterator[int]:
    """A server that greets, then answers EHLO with endless ``250-`` lines, one every 0.3 s."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    stop = threading.Event()

    def serve(conn: socket.socket) -> None:
        with conn:
            try:
                conn.sendall(b"220 drip ready\r\n" + after_greeting)
                conn.recv(1024)
                while not stop.wait(0.3):
                    conn.sendall(b"250-still talking\r\n")
            except OSError:
                return

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            threading.Thread(target=serve, args=(conn,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    try:
        yield int(listener.getsockname()[1])
    finally:
        stop.set()
        listener.close()


def test_a_reply_that_never_ends_is_bounded_by_the_timeout(
    cli: Callable[..., Result], tmp_path: Path
) -> None:
    # smtplib's timeout is per read: one continuation line a second held a send forever.
    with drip_server() as port:
        server = SmtpServer("127.0.0.1", port, SmtpHandler())
        config = many(tmp_path, 2, smtp_section(server, timeout="1s", retries=2))
        started = time.monotonic()
        result = cli("--config", config, "send")
        elapsed = time.monotonic() - started
    assert result.exit_code == 3, result.output
    assert "no complete reply within 1s" in result.output
    assert elapsed < 15, elapsed  # two connects of at most the timeout each, plus a TLS probe
    assert set(delivery_states(tmp_path).values()) == {"pending"}


@pytest.mark.parametrize(
    ("where", "reply"),
    [
        ("MAIL", "553 5.1.8 sender address rejected"),
        ("RCPT", "554 5.7.1 Client host rejected: Access denied"),
        ("RCPT", "554 5.7.1 <user0@example.org>: Relay access denied"),
    ],
)
def test_a_refusal_of_us_stops_the_run_and_every_digest_waits(
    cli: Callable[..., Result], tmp_path: Path, smtp_server: SmtpServer, where: str, reply: str
) -> None:
    handler = smtp_server.handler
    if where == "MAIL":
        handler.mail_faults.append(reply)
    else:
        handler.faults["user0@example.org"] = [reply, None]
    config = many(tmp_path, 5, smtp_section(smtp_server))
    result = cli("--config", config, "send")
    assert result.exit_code == 2, result.output
    assert reply in result.output and "Nothing was lost" in result.output
    assert "failed" not in delivery_states(tmp_path).values()
    assert handler.messages == []  # the run stopped at the first refusal
    again = cli("--config", config, "send")  # the cause is gone: everyone gets their digest, once
    assert again.exit_code == 0, again.output
    assert sorted(rcpt for _, (rcpt,) in handler.envelopes) == [f"user{i}@example.org" for i in range(5)]


def test_a_refusal_of_the_recipient_fails_only_that_digest(
    cli: Callable[..., Result], tmp_path: Path, smtp_server: SmtpServer
) -> None:
    smtp_server.handler.faults["user1@example.org"] = ["550 5.1.1 no such user"]
    config = many(tmp_path, 3, smtp_section(smtp_server))
    result = cli("--config", config, "send")
    assert result.exit_code == 1, result.output
    assert delivery_states(tmp_path) == {
        "user0@example.org": "sent",
        "user1@example.org": "failed",
        "user2@example.org": "sent",
    }


class SizeHandler(SmtpHandler):
    """Records every MAIL FROM's parameters."""

    def __init__(self) -> None:
        super().__init__()
        self.mail_options: list[list[str]] = []

    async def handle_MAIL(
        self, server: Any, session: Any, envelope: Any, address: str, options: list[str]
    ) -> str:
        self.mail_options.append(list(options))
        return await super().handle_MAIL(server, session, envelope, address, options)


@pytest.mark.parametrize("pipelining", [True, False])
def test_the_size_is_announced_and_a_message_over_the_limit_is_never_uploaded(
    cli: Callable[..., Result], tmp_path: Path, pipelining: bool
) -> None:
    handler = SizeHandler()
    handler.pipelining = pipelining
    controller, port = start_smtp(handler, data_size_limit=100_000)
    try:
        server = SmtpServer("127.0.0.1", port, handler)
        config = many(tmp_path, 2, smtp_section(server))
        assert cli("--config", config, "send").exit_code == 0
        sizes = [
            int(o.split("=")[1]) for options in handler.mail_options for o in options if o.startswith("SIZE=")
        ]
        assert len(sizes) == 2 and all(1000 < size < 100_000 for size in sizes)  # RFC 1870
    finally:
        controller.stop()
    small = SizeHandler()
    controller, port = start_smtp(small, data_size_limit=1000)
    try:
        other = tmp_path / "small"
        other.mkdir()
        config = many(other, 2, smtp_section(SmtpServer("127.0.0.1", port, small)))
        result = cli("--config", config, "send")
        assert result.exit_code == 1, result.output
        assert "message too big" in result.output and "over the 1000 bytes" in result.output
        assert small.mail_options == [] and small.messages == []  # refused before any upload
        assert set(delivery_states(other).values()) == {"failed"}  # not retried for two days
    finally:
        controller.stop()


@pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")  # aiosmtpd, on loopback
def test_a_wrong_password_is_tried_once_per_run(
    cli: Callable[..., Result], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # smtplib's login tries every mechanism in turn (PLAIN, then LOGIN): two failed logins per
    # run, and a server locks the account for less.
    handler = SmtpHandler()
    tried: list[str] = []

    def authenticator(server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any) -> Any:
        from aiosmtpd.smtp import AuthResult

        tried.append(mechanism)
        return AuthResult(success=False, handled=False)

    controller, port = start_smtp(
        handler, authenticator=authenticator, auth_require_tls=False, auth_required=True
    )
    monkeypatch.setenv("DIGEST_TEST_SMTP_PASSWORD", "wrong")
    try:
        server = SmtpServer("127.0.0.1", port, handler)
        smtp = smtp_section(server, username="digest", password_env="DIGEST_TEST_SMTP_PASSWORD")
        config = many(tmp_path, 4, smtp)
        result = cli("--config", config, "send")
    finally:
        controller.stop()
    assert result.exit_code == 2, result.output
    assert "login refused: 535" in result.output and "username and the password" in result.output
    assert len(tried) == 1, tried
    assert set(delivery_states(tmp_path).values()) == {"pending"}


def test_a_missing_password_is_a_config_error(
    cli: Callable[..., Result], tmp_path: Path, smtp_server: SmtpServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("DIGEST_NO_SUCH_PASSWORD", raising=False)
    smtp = smtp_section(smtp_server, username="digest", password_env="DIGEST_NO_SUCH_PASSWORD")
    result = cli("--config", many(tmp_path, 2, smtp), "send")
    assert result.exit_code == 2, result.output
    assert "DIGEST_NO_SUCH_PASSWORD" in result.output
    assert set(delivery_states(tmp_path).values()) == {"pending"}


def test_implicit_tls_against_a_starttls_port_says_what_to_set(
    cli: Callable[..., Result], tmp_path: Path
) -> None:
    handler = SmtpHandler()
    controller, port, ca_file = tls_smtp_server(tmp_path, implicit=False, handler=handler)
    try:
        server = SmtpServer("localhost", port, handler)
        smtp = smtp_section(server, host="localhost", security="tls", ca_file=str(ca_file))
        result = cli("--config", many(tmp_path, 2, smtp), "send")
    finally:
        controller.stop()
    assert result.exit_code == 2, result.output
    assert 'set security = "starttls"' in result.output and "_ssl.c" not in result.output


def test_starttls_against_an_implicit_tls_port_says_what_to_set(
    cli: Callable[..., Result], tmp_path: Path
) -> None:
    handler = SmtpHandler()
    controller, port, ca_file = tls_smtp_server(tmp_path, implicit=True, handler=handler)
    try:
        server = SmtpServer("localhost", port, handler)
        smtp = smtp_section(server, host="localhost", security="starttls", ca_file=str(ca_file), timeout="1s")
        started = time.monotonic()
        result = cli("--config", many(tmp_path, 2, smtp), "send")
        elapsed = time.monotonic() - started
    finally:
        controller.stop()
    assert result.exit_code == 2, result.output
    assert 'set security = "tls"' in result.output
    assert elapsed < 10, elapsed  # tried once, not once per digest or per retry


def test_login_offered_only_after_starttls_is_named(
    cli: Callable[..., Result], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    handler = SmtpHandler()
    controller, port, _ = tls_smtp_server(tmp_path, implicit=False, handler=handler, auth=True)
    monkeypatch.setenv("DIGEST_TEST_SMTP_PASSWORD", "s3cret")
    try:
        server = SmtpServer("127.0.0.1", port, handler)
        smtp = smtp_section(server, username="digest", password_env="DIGEST_TEST_SMTP_PASSWORD")
        result = cli("--config", many(tmp_path, 1, smtp), "send")
    finally:
        controller.stop()
    # (aiosmtpd with require_starttls refuses even EHLO's extensions before STARTTLS: either
    # way the message must say what to set, not "cannot connect".)
    assert result.exit_code == 2, result.output
    assert "cannot connect" not in result.output
    assert 'security = "starttls"' in result.output or "530" in result.output


class OneConnection(SmtpHandler):
    """Answers 421 to EHLO on any session but the first one's (a per-client connection limit)."""

    def __init__(self) -> None:
        super().__init__()
        self.first: Any = None
        self.refused = 0

    async def handle_EHLO(
        self, server: Any, session: Any, envelope: Any, hostname: str, responses: list[str]
    ) -> list[str]:
        with self.lock:
            if self.first is None:
                self.first = session
            mine = self.first is session
            self.refused += 0 if mine else 1
        if not mine:
            return ["421 4.7.0 too many connections from your host"]
        return await super().handle_EHLO(server, session, envelope, hostname, responses)


def test_extra_connections_the_server_refuses_do_not_stop_the_run(
    cli: Callable[..., Result], tmp_path: Path
) -> None:
    handler = OneConnection()
    with serving_smtp(handler) as server:
        config = many(tmp_path, 30, smtp_section(server, connections=3))
        result = cli("--config", config, "send")
    assert result.exit_code == 0, result.output
    assert "30 sent, 0 pending, 0 failed" in result.output
    assert len(handler.messages) == 30
    assert handler.refused <= 2  # each extra connection tried once, then given up for the run


def test_a_size_refusal_at_mail_from_fails_that_digest(
    cli: Callable[..., Result], tmp_path: Path, smtp_server: SmtpServer
) -> None:
    # RFC 1870: 552 to MAIL FROM ... SIZE= is about this message, not about us.
    smtp_server.handler.mail_faults.append("552 5.3.4 message size exceeds fixed limit")
    config = many(tmp_path, 2, smtp_section(smtp_server))
    result = cli("--config", config, "send")
    assert result.exit_code == 1, result.output
    assert "message too big" in result.output
    assert sorted(delivery_states(tmp_path).values()) == ["failed", "sent"]


def test_a_reply_that_is_not_a_reply_is_temporary(
    cli: Callable[..., Result], tmp_path: Path, smtp_server: SmtpServer
) -> None:
    smtp_server.handler.faults["user1@example.org"] = ["what is this", None]
    config = many(tmp_path, 2, smtp_section(smtp_server))
    result = cli("--config", config, "send")
    assert result.exit_code == 0, result.output  # retried within the run, then accepted
    assert delivery_states(tmp_path) == {"user0@example.org": "sent", "user1@example.org": "sent"}


@pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")  # aiosmtpd, on loopback
def test_a_password_smtp_cannot_send_is_a_config_error_not_a_hang(
    cli: Callable[..., Result], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    handler = SmtpHandler()
    controller, port = start_smtp(
        handler, authenticator=lambda *args: None, auth_require_tls=False, auth_required=True
    )
    monkeypatch.setenv("DIGEST_TEST_SMTP_PASSWORD", "pässwörd")
    try:
        server = SmtpServer("127.0.0.1", port, handler)
        smtp = smtp_section(server, username="digest", password_env="DIGEST_TEST_SMTP_PASSWORD", timeout="2s")
        started = time.monotonic()
        result = cli("--config", many(tmp_path, 3, smtp), "send")
        elapsed = time.monotonic() - started
    finally:
        controller.stop()
    assert result.exit_code == 2, result.output
    assert "password has characters" in result.output
    assert elapsed < 20, elapsed
    assert set(delivery_states(tmp_path).values()) == {"pending"}

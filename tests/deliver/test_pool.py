"""The connection pool: retries within the run, what a fault costs, connections reused and in parallel.

Every test talks to a real aiosmtpd server on 127.0.0.1 that scripts faults (see
conftest.SmtpHandler) and keeps state in a real SQLite file.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import Result
from conftest import SmtpHandler, SmtpServer, delivery_rows, delivery_states, free_port, many, smtp_section

from pipeline import run
from pipeline.config import load_settings
from pipeline.store import Store, utcnow


@pytest.mark.parametrize(
    "fault",
    [
        "421 4.3.2 service shutting down",
        "451 4.3.0 try again later",
        "452 4.2.2 mailbox full",
        ("DATA", "451 4.3.0 local error"),
        ("DATA", "452 4.3.1 insufficient storage"),
        ("DATA", "421 4.3.2 closing"),
        "552 5.2.2 mailbox full",
        ("RCPT", "DROP"),
    ],
)
def test_a_transient_fault_is_retried_within_the_run(
    cli: Callable[..., Result], tmp_path: Path, smtp_server: SmtpServer, fault: Any
) -> None:
    handler = smtp_server.handler
    handler.stall = 1.5
    handler.faults["user1@example.org"] = [fault, None]
    config = many(tmp_path, 3, smtp_section(smtp_server, timeout="0.5s"))
    result = cli("--config", config, "send")
    assert result.exit_code == 0, result.output
    assert "3 sent, 0 pending, 0 failed, 1 retried" in result.output
    assert "sent user1@example.org: 1 entry (after 2 attempts)" in result.output
    assert sorted(rcpt for _, (rcpt,) in handler.envelopes) == [f"user{i}@example.org" for i in range(3)]
    assert set(delivery_states(tmp_path).values()) == {"sent"}


@pytest.mark.parametrize("reply", ["421 4.3.2 busy", "451 4.7.1 greylisted", "452 4.3.1 too many sessions"])
def test_transient_faults_at_mail_are_retried(
    cli: Callable[..., Result], tmp_path: Path, smtp_server: SmtpServer, reply: str
) -> None:
    smtp_server.handler.mail_faults.extend([reply, reply])
    config = many(tmp_path, 3, smtp_section(smtp_server))
    result = cli("--config", config, "send")
    assert result.exit_code == 0, result.output
    assert len(smtp_server.handler.messages) == 3


@pytest.mark.parametrize("fault", ["DROP", "STALL"])
def test_a_connection_lost_after_the_message_is_not_sent_again_within_the_run(
    cli: Callable[..., Result], tmp_path: Path, smtp_server: SmtpServer, fault: str
) -> None:
    # The whole message went, then no reply: the server may have stored it (RFC 1047).
    handler = smtp_server.handler
    handler.stall = 1.5
    handler.faults["user1@example.org"] = [("DATA", fault), None]
    config = many(tmp_path, 3, smtp_section(smtp_server, timeout="0.5s"))
    result = cli("--config", config, "send")
    assert result.exit_code == 3, result.output
    assert "2 sent, 1 pending, 0 failed, 0 retried" in result.output
    assert handler.attempts["user1@example.org"] == 1  # once in this run, not three times
    (row,) = [r for r in delivery_rows(tmp_path) if r["subscriber"] == "user1@example.org"]
    assert row["state"] == "pending" and row["unconfirmed"] == 1


def test_the_accepted_then_dropped_window_gives_a_duplicate_with_the_same_message_id(
    cli: Callable[..., Result], tmp_path: Path, smtp_server: SmtpServer
) -> None:
    # RFC 1047: the server stored it, the client never heard the 250. The only duplicate
    # allowed, and only in a later attempt (after a backoff), never within the same run.
    smtp_server.handler.faults["user0@example.org"] = [("DATA", "ACCEPT-DROP"), None]
    config = many(tmp_path, 2, smtp_section(smtp_server))
    assert cli("--config", config, "send").exit_code == 3
    assert len(smtp_server.handler.to("user0@example.org")) == 1
    settings = load_settings(config)
    with Store(settings.digest.database_url) as store:
        later = run.deliver_due(settings, store, clock=lambda: utcnow() + timedelta(minutes=2))
    assert later.count("sent") == 1
    copies = smtp_server.handler.to("user0@example.org")
    assert len(copies) == 2 and copies[0]["Message-ID"] == copies[1]["Message-ID"]
    assert len(smtp_server.handler.to("user1@example.org")) == 1


@pytest.mark.parametrize(
    "fault",
    [
        "550 5.1.1 no such user",
        "554 rejected",
        ("DATA", "554 5.6.0 content rejected"),
        ("DATA", "552 5.3.4 message too big"),
        "553 5.1.3 bad address",
    ],
)
def test_a_permanent_fault_fails_at_once_and_is_named(
    cli: Callable[..., Result], tmp_path: Path, smtp_server: SmtpServer, fault: Any
) -> None:
    smtp_server.handler.faults["user1@example.org"] = [fault]
    config = many(tmp_path, 3, smtp_section(smtp_server))
    result = cli("--config", config, "send")
    assert result.exit_code == 1, result.output
    reply = fault if isinstance(fault, str) else fault[1]
    assert "failed user1@example.org: " in result.output and reply in result.output
    assert smtp_server.handler.attempts["user1@example.org"] == 1  # not retried
    assert delivery_states(tmp_path) == {
        "user0@example.org": "sent",
        "user1@example.org": "failed",
        "user2@example.org": "sent",
    }
    status = cli("--config", config, "status")
    assert "failed user1@example.org (attempts 1, no more attempts)" in status.output
    assert reply in status.output


def test_an_unreachable_server_leaves_everything_pending_then_delivers_it(
    cli: Callable[..., Result], tmp_path: Path
) -> None:
    handler = SmtpHandler()
    port = free_port()
    server = SmtpServer("127.0.0.1", port, handler)
    config = many(tmp_path, 3, smtp_section(server, timeout="1s"))
    result = cli("--config", config, "send")
    assert result.exit_code == 3, result.output
    assert "SMTP server unusable" in result.output and "cannot connect" in result.output
    assert "0 sent, 3 pending, 0 failed" in result.output
    before = {r["subscriber"]: r["message_id"] for r in delivery_rows(tmp_path)}
    assert set(delivery_states(tmp_path).values()) == {"pending"}
    controller, _ = _start_on(handler, port)
    try:
        settings = load_settings(config)
        with Store(settings.digest.database_url) as store:
            report = run.deliver_due(settings, store, clock=lambda: utcnow() + timedelta(minutes=2))
        assert report.exit_code == 0 and report.count("sent") == 3
        assert {m["To"].addresses[0].addr_spec: m["Message-ID"] for m in handler.messages} == before
    finally:
        controller.stop()


def _start_on(handler: SmtpHandler, port: int, **kwargs: Any) -> Any:
    from aiosmtpd.controller import Controller

    controller = Controller(handler, hostname="127.0.0.1", port=port, **kwargs)
    controller.start()
    return controller, port


def test_one_connection_is_reused_and_connections_run_in_parallel(
    cli: Callable[..., Result], tmp_path: Path, smtp_server: SmtpServer
) -> None:
    config = many(tmp_path, 12, smtp_section(smtp_server))
    assert cli("--config", config, "send").exit_code == 0
    assert len(smtp_server.handler.peers) == 1
    smtp_server.handler.peers.clear()
    other = tmp_path / "parallel"
    other.mkdir()
    config = many(other, 30, smtp_section(smtp_server, connections=3))
    assert cli("--config", config, "send").exit_code == 0
    assert len(smtp_server.handler.peers) == 3
    assert len(smtp_server.handler.messages) == 42

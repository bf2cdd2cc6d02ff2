"""digest against a real Postfix 3.7 on loopback (tests/postfix_server.py): who is at fault.

STARTTLS with a CA made here, SASL through Dovecot, recipient access maps, message_size_limit,
a per-client connection limit. Each test names the rule of README's "Delivery: who is at
fault" table it checks. Skipped, with the reason, where Postfix or Dovecot cannot start.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import Result
from conftest import delivery_rows, delivery_states, many, smtp_section
from postfix_server import PostfixServer, postfix_available, running_postfix

pytestmark = pytest.mark.skipif(postfix_available() is not None, reason=str(postfix_available()))

USERS = {"digest": "s3cret"}


@pytest.fixture
def password(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    monkeypatch.setenv("DIGEST_TEST_SMTP_PASSWORD", "s3cret")
    yield "DIGEST_TEST_SMTP_PASSWORD"


def smtp(server: PostfixServer, **extra: Any) -> str:
    values: dict[str, Any] = {"security": "starttls", "ca_file": str(server.ca_file)}
    values.update(extra)
    values = {key: value for key, value in values.items() if value is not None}
    return smtp_section(server, **values)  # type: ignore[arg-type]  # (it reads .port)


def test_a_session_refusal_keeps_every_digest_and_a_fixed_config_delivers_them(
    cli: Callable[..., Result], tmp_path: Path, password: str
) -> None:
    # Postfix refuses an unauthenticated client at RCPT with 554 5.7.1 ... Access denied: about
    # us, not the recipient. The entries must not be used up by failed digests.
    with running_postfix(tmp_path, tls="starttls", auth_users=USERS, auth_required=True) as server:
        config = many(tmp_path, 5, smtp(server))
        result = cli("--config", config, "send")
        assert result.exit_code == 2, result.output
        assert "5.7.1" in result.output and "Access denied" in result.output
        assert set(delivery_states(tmp_path).values()) == {"pending"}
        fixed = many(tmp_path, 5, smtp(server, username="digest", password_env=password))
        again = cli("--config", fixed, "send")
        assert again.exit_code == 0, again.output + server.log_tail()
        assert sorted(m["Delivered-To"] for m in server.messages(count=5)) == [
            f"user{i}@example.org" for i in range(5)
        ]


def test_an_untrusted_certificate_is_a_config_error_tried_once(
    cli: Callable[..., Result], tmp_path: Path
) -> None:
    with running_postfix(tmp_path, tls="starttls") as server:
        config = many(tmp_path, 30, smtp(server, ca_file=None, retries=3))
        result = cli("--config", config, "send")
        handshakes = [
            line for line in server.log_lines() if "connect from" in line and "disconnect" not in line
        ]
    assert result.exit_code == 2, result.output
    assert "certificate is not trusted" in result.output and "set [smtp] ca_file" in result.output
    assert "_ssl.c" not in result.output
    assert len(handshakes) <= 2, handshakes  # one connection (and a TLS probe at most), not 101
    assert set(delivery_states(tmp_path).values()) == {"pending"}


def test_tls_settings_on_the_wrong_port_say_what_to_set(cli: Callable[..., Result], tmp_path: Path) -> None:
    with running_postfix(tmp_path, tls="both") as server:
        wrong = many(tmp_path, 2, smtp(server, security="tls"))
        result = cli("--config", wrong, "send")
        assert result.exit_code == 2, result.output
        assert 'set security = "starttls"' in result.output
        assert server.smtps_port is not None
        other = tmp_path / "other"
        other.mkdir()
        reverse = many(other, 2, smtp(server, timeout="2s", port=server.smtps_port))
        result = cli("--config", reverse, "send")
        assert result.exit_code == 2, result.output
        assert 'set security = "tls"' in result.output


def test_a_wrong_password_costs_one_login_per_run(
    cli: Callable[..., Result], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DIGEST_TEST_SMTP_PASSWORD", "wrong")
    with running_postfix(tmp_path, tls="starttls", auth_users=USERS, auth_required=True) as server:
        config = many(tmp_path, 10, smtp(server, username="digest", password_env="DIGEST_TEST_SMTP_PASSWORD"))
        result = cli("--config", config, "send")
        failures = [line for line in server.log_lines() if "authentication failed" in line]
    assert result.exit_code == 2, result.output
    assert "login refused: 535" in result.output
    assert len(failures) == 1, failures  # not PLAIN and then LOGIN, not once per digest
    assert set(delivery_states(tmp_path).values()) == {"pending"}


def test_login_offered_only_after_starttls_says_so(
    cli: Callable[..., Result], tmp_path: Path, password: str
) -> None:
    with running_postfix(tmp_path, tls="starttls", auth_users=USERS) as server:
        config = many(tmp_path, 2, smtp(server, security="none", username="digest", password_env=password))
        result = cli("--config", config, "send")
    assert result.exit_code == 2, result.output
    assert "AUTH extension not supported" not in result.output
    assert 'set security = "starttls"' in result.output


def test_a_message_over_the_size_limit_fails_without_upload_and_is_not_retried(
    cli: Callable[..., Result], tmp_path: Path
) -> None:
    with running_postfix(tmp_path, tls="starttls", message_size_limit=2000) as server:
        config = many(tmp_path, 3, smtp(server))
        result = cli("--config", config, "send")
        log = server.log_lines()
        assert server.messages() == []
    assert result.exit_code == 1, result.output
    assert "message too big" in result.output and "2000 bytes" in result.output
    assert set(delivery_states(tmp_path).values()) == {"failed"}
    # Refused by us from the SIZE in EHLO (RFC 1870): never uploaded, so Postfix refused nothing.
    assert not [line for line in log if "552" in line or "exceeds" in line], log
    assert [row["attempts"] for row in delivery_rows(tmp_path)] == [1, 1, 1]


def test_recipient_maps_fail_or_defer_only_their_recipient(
    cli: Callable[..., Result], tmp_path: Path
) -> None:
    access = {"user1@example.org": "550 5.1.1 no such user", "user2@example.org": "450 4.2.0 try later"}
    with running_postfix(tmp_path, tls="starttls", recipient_access=access) as server:
        config = many(tmp_path, 4, smtp(server))
        result = cli("--config", config, "send")
        delivered = sorted(m["Delivered-To"] for m in server.messages(count=2))
    assert result.exit_code == 1, result.output  # a permanent failure (and one pending)
    assert delivered == ["user0@example.org", "user3@example.org"]
    assert delivery_states(tmp_path) == {
        "user0@example.org": "sent",
        "user1@example.org": "failed",
        "user2@example.org": "pending",
        "user3@example.org": "sent",
    }
    assert "1 pending, 1 failed" in result.output


def test_more_connections_than_the_server_allows_still_deliver_everything(
    cli: Callable[..., Result], tmp_path: Path
) -> None:
    with running_postfix(tmp_path, tls="starttls", client_connection_limit=1) as server:
        config = many(tmp_path, 30, smtp(server, connections=3))
        result = cli("--config", config, "send")
        delivered = server.messages(count=30)
    assert result.exit_code == 0, result.output
    assert "30 sent, 0 pending, 0 failed" in result.output
    assert len(delivered) == 30


def test_a_deferred_digest_is_shown_waiting_on_the_next_send_and_retry_now_tries_it(
    cli: Callable[..., Result], tmp_path: Path
) -> None:
    # A later send used to say "0 pending" and exit 0 while the digest waited on its backoff.
    access = {"user1@example.org": "450 4.2.0 try later"}
    with running_postfix(tmp_path, tls="starttls", recipient_access=access) as server:
        config = many(tmp_path, 2, smtp(server, retries=1))
        first = cli("--config", config, "send")
        assert first.exit_code == 3 and "1 sent, 1 pending" in first.output, first.output
        again = cli("--config", config, "send")
        assert again.exit_code == 3, again.output
        assert "waiting user1@example.org: next attempt" in again.output and "450 4.2.0" in again.output
        assert "1 waiting in the outbox" in again.output
        now = cli("--config", config, "send", "--retry-now")  # still refused: tried at once, again
        assert now.exit_code == 3 and "pending user1@example.org: 450 4.2.0" in now.output, now.output
        assert [m["Delivered-To"] for m in server.messages(count=1)] == ["user0@example.org"]
    assert [r["attempts"] for r in delivery_rows(tmp_path) if r["subscriber"] == "user1@example.org"] == [2]

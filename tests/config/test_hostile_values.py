"""Values that looked valid and were not: strings for booleans, domains without a dot, ASCII
addresses turned into Unicode, a password sent in the clear. Each through the real CLI."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import Result
from conftest import SmtpServer, many, smtp_section

from pipeline.config import email_address, load_settings


def _check(cli: Callable[..., Result], config: Path, **env: str) -> Result:
    return cli("--config", config, "check", env=env or None)


# --- an ASCII address stays ASCII ---------------------------------------------------------------


def test_an_ascii_idn_address_is_sent_to_as_written(
    cli: Callable[..., Result], tmp_path: Path, smtp_server: SmtpServer
) -> None:
    config = many(tmp_path, 1, smtp_section(smtp_server))
    config.write_text(config.read_text().replace("user0@example.org", "a@xn--r8jz45g.jp"))
    assert load_settings(config).subscribers[0].email == "a@xn--r8jz45g.jp"
    checked = _check(cli, config)
    assert checked.exit_code == 0, checked.output
    sent = cli("--config", config, "send")
    assert sent.exit_code == 0, sent.output
    ((_, recipients),) = smtp_server.handler.envelopes
    assert recipients == ["a@xn--r8jz45g.jp"]  # a server without SMTPUTF8 takes it
    (message,) = smtp_server.handler.messages
    assert [a.addr_spec for a in message["To"].addresses] == ["a@xn--r8jz45g.jp"]


def test_ascii_addresses_keep_their_ascii_domain_and_unicode_ones_stay_unicode() -> None:
    assert email_address("a@xn--r8jz45g.jp") == "a@xn--r8jz45g.jp"
    assert email_address("A.Long+Tag@xn--r8jz45g.jp") == "A.Long+Tag@xn--r8jz45g.jp"  # not the fast path
    assert email_address("b@xn--r8jz45g.jp") == "b@xn--r8jz45g.jp"  # the domain's cached result
    assert email_address("a@例え.jp") == "a@例え.jp"
    assert email_address("ada@EXAMPLE.org") == "ada@example.org"


# --- booleans are booleans ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ('send_empty = "yes"', 'digest.send_empty: expected true or false, got "yes"'),
        ('send_empty = "false"', 'digest.send_empty: expected true or false, got "false"'),
        ("images = 1", "digest.images: expected true or false, got 1"),
    ],
)
def test_a_boolean_key_refuses_anything_but_true_and_false(
    cli: Callable[..., Result], tmp_path: Path, line: str, expected: str
) -> None:
    config = many(tmp_path, 1, "", extra_digest=line)
    result = _check(cli, config)
    assert result.exit_code == 2, result.output
    assert f"{config}:4: {expected}" in result.output


def test_allow_plaintext_auth_is_a_boolean_too(
    cli: Callable[..., Result], tmp_path: Path, smtp_server: SmtpServer
) -> None:
    config = many(tmp_path, 1, smtp_section(smtp_server, allow_plaintext_auth="yes"))
    result = _check(cli, config)
    assert result.exit_code == 2
    assert 'smtp.allow_plaintext_auth: expected true or false, got "yes"' in result.output


# --- a domain has a dot ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("old", "new", "key"),
    [
        ('email = "user0@example.org"', 'email = "turing@example"', "subscribers[1].email"),
        ('title = "T"', 'title = "T"\nadmin = "root@example"', "digest.admin"),
    ],
)
def test_an_address_whose_domain_has_no_dot_is_refused(
    cli: Callable[..., Result], tmp_path: Path, old: str, new: str, key: str
) -> None:
    config = many(tmp_path, 1, "")
    config.write_text(config.read_text().replace(old, new))
    result = _check(cli, config)
    assert result.exit_code == 2, result.output
    assert f"{key}: bad email address" in result.output
    assert "It should have a period." in result.output


def test_a_sender_whose_domain_has_no_dot_is_refused(
    cli: Callable[..., Result], tmp_path: Path, smtp_server: SmtpServer
) -> None:
    config = many(tmp_path, 1, smtp_section(smtp_server, **{"from": "Digest <digest@example>"}))
    result = _check(cli, config)
    assert result.exit_code == 2 and "smtp.from: bad email address" in result.output


def test_the_default_sender_on_localhost_localdomain_stays_valid(
    cli: Callable[..., Result], tmp_path: Path
) -> None:
    config = many(tmp_path, 1, "")  # no [smtp]: the Maildir, from digest@localhost.localdomain
    result = _check(cli, config)
    assert result.exit_code == 0, result.output
    assert load_settings(config).sender == "Paper Digest <digest@localhost.localdomain>"


# --- no password in the clear ----------------------------------------------------------------------


def _auth(server: SmtpServer, host: str, **extra: object) -> str:
    return smtp_section(server, host=host, username="digest", password_env="DIGEST_TEST_PASSWORD", **extra)


def test_login_without_tls_to_another_host_is_refused_by_check_and_send(
    cli: Callable[..., Result], tmp_path: Path, smtp_server: SmtpServer
) -> None:
    config = many(tmp_path, 1, _auth(smtp_server, "mail.example.org"))
    line = config.read_text().splitlines().index("[smtp]") + 1
    result = _check(cli, config, DIGEST_TEST_PASSWORD="secret")
    assert result.exit_code == 2, result.output
    assert f'{config}:{line}: smtp: username is set but security = "none"' in result.output
    assert "unencrypted" in result.output and "allow_plaintext_auth = true" in result.output
    send = cli("--config", config, "send", env={"DIGEST_TEST_PASSWORD": "secret"})
    assert send.exit_code == 2 and "security = " in send.output
    assert smtp_server.handler.messages == []


def test_login_without_tls_is_allowed_when_asked_for(
    cli: Callable[..., Result], tmp_path: Path, smtp_server: SmtpServer
) -> None:
    config = many(tmp_path, 1, _auth(smtp_server, "mail.example.org", allow_plaintext_auth=True))
    result = _check(cli, config, DIGEST_TEST_PASSWORD="secret")
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "::1"])
def test_login_without_tls_to_this_machine_is_allowed(
    cli: Callable[..., Result], tmp_path: Path, smtp_server: SmtpServer, host: str
) -> None:
    config = many(tmp_path, 1, _auth(smtp_server, host))
    result = _check(cli, config, DIGEST_TEST_PASSWORD="secret")
    assert result.exit_code == 0, result.output

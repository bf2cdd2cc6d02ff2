"""Refusals at RCPT feed the bounce record (aiosmtpd on loopback answering 550 or 451): a 5xx is
a hard bounce, a 4xx that outlives give_up_after a soft one; policy refusals (5.7.x, about us)
and refusals without [bounces] count for nothing."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

from click.testing import Result
from conftest import BASE_CONFIG, SmtpServer, smtp_section

BOUNCES = '[bounces]\naddress = "bounce@example.net"\nsoft_limit = 1\n'


def config_with(
    write_config: Callable[..., Path], smtp_server: SmtpServer, bounces: str, **smtp: object
) -> Path:
    text = BASE_CONFIG.replace('lookback = "3650d"\n', 'lookback = "3650d"\nsend_empty = true\n', 1)
    return write_config(text, smtp=smtp_section(smtp_server, **smtp) + "\n" + bounces)


def events(tmp_path: Path) -> list[tuple[str, str, str, str]]:
    with sqlite3.connect(tmp_path / "state" / "digest.db") as db:
        return list(db.execute("select subscriber, kind, status, source from bounce_events order by id"))


def test_a_5xx_at_rcpt_is_a_hard_bounce_and_suppresses(
    cli: Callable[..., Result], write_config: Callable[..., Path], smtp_server: SmtpServer, tmp_path: Path
) -> None:
    smtp_server.handler.faults["grace@example.org"] = ["550 5.1.1 <grace@example.org>: no such user"]
    config = config_with(write_config, smtp_server, BOUNCES)
    result = cli("--config", config, "send")
    assert result.exit_code == 1, result.output
    assert "failed grace@example.org: 550 5.1.1" in result.output
    assert events(tmp_path) == [("grace@example.org", "hard", "5.1.1", "smtp")]
    status = cli("--config", config, "status")
    assert (
        "grace@example.org: suppressed (hard bounce: 5.1.1 550 5.1.1 <grace@example.org>: no such user"
        in (" ".join(status.output.split()))
    )
    attempts = smtp_server.handler.attempts["grace@example.org"]
    again = cli("--config", config, "send", "--no-fetch")
    assert again.exit_code == 0, again.output
    assert smtp_server.handler.attempts["grace@example.org"] == attempts  # not tried again
    assert "no digest for grace@example.org: suppressed after bounces" in again.output


def test_a_4xx_that_outlives_give_up_after_is_a_soft_bounce(
    cli: Callable[..., Result], write_config: Callable[..., Path], smtp_server: SmtpServer, tmp_path: Path
) -> None:
    smtp_server.handler.faults["alan@example.org"] = ["451 4.2.0 <alan@example.org>: try again later"]
    config = config_with(write_config, smtp_server, BOUNCES, give_up_after="1s", retries=1)
    first = cli("--config", config, "send")
    assert first.exit_code == 3, first.output
    assert events(tmp_path) == []  # still being retried: nothing counted yet
    time.sleep(1.1)
    later = cli("--config", config, "send", "--no-fetch", "--retry-now")
    assert "failed alan@example.org: gave up after" in later.output, later.output
    assert ("alan@example.org", "soft", "4.2.0", "smtp") in events(tmp_path)
    assert "alan@example.org: suppressed (soft bounce: 4.2.0" in cli("--config", config, "status").output


def test_policy_refusals_and_refusals_without_bounces_count_for_nothing(
    cli: Callable[..., Result], write_config: Callable[..., Path], smtp_server: SmtpServer, tmp_path: Path
) -> None:
    smtp_server.handler.faults["ada@example.org"] = ["550 5.1.1 <ada@example.org>: no such user"]
    config = config_with(write_config, smtp_server, "")
    assert cli("--config", config, "send").exit_code == 1
    senders = {sender for sender, _ in smtp_server.handler.envelopes}
    assert senders == {"digest@example.net"}  # without [bounces]: the From address, as before
    with sqlite3.connect(tmp_path / "state" / "digest.db") as db:
        assert db.execute("select count(*) from bounce_events").fetchone() == (0,)
    assert "suppressed" not in cli("--config", config, "status").output

    smtp_server.handler.faults["ada@example.org"] = ["554 5.7.1 <ada@example.org>: Relay access denied"]
    config = config_with(write_config, smtp_server, BOUNCES)
    result = cli("--config", config, "send", "--no-fetch")
    assert result.exit_code == 2, result.output  # about us: every digest waits, nobody bounced
    assert events(tmp_path) == []

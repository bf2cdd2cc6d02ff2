"""Telling [digest] admin about a feed that keeps failing, once, and once when it recovers."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

from click.testing import Result
from conftest import FeedServer, SmtpServer, body_text, opened, serve, smtp_section

from pipeline import run

T0 = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)


def test_the_admin_is_told_once_when_a_feed_keeps_failing_and_once_when_it_recovers(
    configure: Callable[..., Path], feed_server: FeedServer, smtp_server: SmtpServer
) -> None:
    config = configure(
        {"flaky": feed_server.url("flaky.xml"), "papers-arxiv": feed_server.url("papers-arxiv.xml")},
        digest='admin = "ops@example.org"',
        fetch='alert_after = "1h"',
        smtp=smtp_section(smtp_server),
    )
    outbox = smtp_server.handler
    outbox.faults["ops@example.org"] = [None, "451 4.3.0 try again later", None]  # the 2nd mail fails once
    with opened(config) as (settings, store):

        def fetch_at(hours: float) -> None:
            run.fetch_all(settings, store, clock=lambda: T0 + timedelta(hours=hours), force=True)

        fetch_at(0)
        fetch_at(0.5)
        assert outbox.to("ops@example.org") == []  # failing, but not for an hour yet
        fetch_at(1.5)
        (alert,) = outbox.to("ops@example.org")
        assert str(alert["Subject"]) == "[Test Digest] feed flaky has been failing since 2026-11-29 12:00 UTC"
        assert alert["Auto-Submitted"] == "auto-generated"
        text = body_text(alert)
        assert "failed 3 time(s) in a row" in text and "HTTP 404 Not Found" in text
        assert feed_server.url("flaky.xml") in text
        fetch_at(2)
        fetch_at(30)
        assert len(outbox.to("ops@example.org")) == 1  # one alert, not one per run
        serve(feed_server, "flaky.xml", "lab-blog.xml")
        fetch_at(31)  # recovered; telling so fails (451): it is tried again next run
        assert len(outbox.to("ops@example.org")) == 1
        fetch_at(32)
        recovered = outbox.to("ops@example.org")[-1]
        assert str(recovered["Subject"]) == "[Test Digest] feed flaky works again"
        fetch_at(33)
        assert len(outbox.to("ops@example.org")) == 2
        assert store.feed_states()["flaky"].alert is None
    # The digests' subscribers never hear about it.
    assert outbox.to("ada@example.org") == []


def test_no_alerts_from_a_dry_run(
    cli: Callable[..., Result],
    configure: Callable[..., Path],
    feed_server: FeedServer,
    smtp_server: SmtpServer,
) -> None:
    config = configure(
        {"broken": feed_server.url("status/500")},
        digest='admin = "ops@example.org"',
        fetch='alert_after = "1s"',
        smtp=smtp_section(smtp_server),
    )
    cli("--config", config, "fetch")
    time.sleep(1.1)
    dry = cli("--config", config, "send", "--dry-run")
    assert dry.exit_code == 0
    assert smtp_server.handler.messages == []
    cli("--config", config, "fetch", "--feed", "broken")
    assert len(smtp_server.handler.to("ops@example.org")) == 1

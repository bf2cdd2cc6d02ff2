"""`digest send` and `digest preview` end to end: the real CLI fetching from a loopback HTTP server
and sending to a loopback SMTP server (or into a Maildir); a SIGTERM in the middle of a send."""

from __future__ import annotations

import mailbox
import os
import signal
import sqlite3
import time
from collections import Counter
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

from click.testing import Result
from conftest import (
    FeedServer,
    SmtpHandler,
    SmtpServer,
    body_html,
    body_text,
    delivery_states,
    html_titles,
    http_feeds,
    many,
    send_process,
    smtp_section,
    start_smtp,
    text_titles,
    wait_for,
)
from samples import DIFFUSION, NEVER, RL, ROBOTS, SPIKING

from pipeline import run
from pipeline.config import load_settings
from pipeline.store import Store, utcnow


def test_send_delivers_the_right_entries_to_each_subscriber_once(
    cli: Callable[..., Result],
    write_config: Callable[..., Path],
    smtp_server: SmtpServer,
    feed_server: FeedServer,
) -> None:
    config = write_config(smtp=smtp_section(smtp_server), feeds=http_feeds(feed_server))
    result = cli("--config", config, "send")
    assert result.exit_code == 0, result.output
    assert "3 sent, 0 pending, 0 failed" in result.output
    handler = smtp_server.handler
    assert len(handler.messages) == 3
    for message, (_, rcpts) in zip(handler.messages, handler.envelopes, strict=True):
        assert len(rcpts) == 1 and message["To"].addresses[0].addr_spec == rcpts[0]
    expected = {
        "ada@example.org": SPIKING | RL,
        "grace@example.org": DIFFUSION | ROBOTS,
        # an entry under several topics appears once (robots repeats an rl entry)
        "alan@example.org": RL | ROBOTS | SPIKING,
    }
    for address, wanted in expected.items():
        (message,) = handler.to(address)
        text = body_text(message)
        assert set(text_titles(text)) == wanted, address
        assert not set(text_titles(text)) & NEVER
        assert html_titles(body_html(message)) == wanted
        assert str(message["Subject"]).strip().startswith("[Test Digest] ")
        assert message["Message-ID"].endswith("@example.net>")
        assert message["List-Unsubscribe"].startswith("<mailto:digest@example.net")
        assert message["Date"]
    alan = body_text(handler.to("alan@example.org")[0])
    assert alan.count("Model-Based Reinforcement Learning for Legged Robots") == 1

    again = cli("--config", config, "send")
    assert again.exit_code == 0, again.output
    assert "0 sent" in again.output and "3 with nothing new" in again.output
    assert len(handler.messages) == 3


def test_new_entries_arrive_in_the_next_send_and_old_ones_do_not_repeat(
    cli: Callable[..., Result],
    write_config: Callable[..., Path],
    smtp_server: SmtpServer,
    feed_server: FeedServer,
) -> None:
    config = write_config(smtp=smtp_section(smtp_server), feeds=http_feeds(feed_server))
    assert cli("--config", config, "send").exit_code == 0
    blog = feed_server.directory / "lab-blog.xml"
    new_item = """<item><title>Spiking neural networks on a budget</title>
      <link>https://lab.example.org/blog/snn-budget</link><guid>https://lab.example.org/blog/snn-budget</guid>
      <description>How we train an SNN on one GPU.</description>
      <pubDate>Fri, 27 Nov 2026 10:00:00 +0000</pubDate></item>"""
    blog.write_text(blog.read_text().replace("<item>", new_item + "\n<item>", 1))
    later = blog.stat().st_mtime + 5  # Last-Modified has one-second resolution
    os.utime(blog, (later, later))
    result = cli("--config", config, "send")
    assert result.exit_code == 0, result.output
    assert "2 sent" in result.output  # ada and alan follow spiking; grace does not
    for address in ("ada@example.org", "alan@example.org"):
        latest = smtp_server.handler.to(address)[-1]
        assert set(text_titles(body_text(latest))) == {"Spiking neural networks on a budget"}
    assert len(smtp_server.handler.to("grace@example.org")) == 1


def test_dry_run_and_preview_send_and_record_nothing(
    cli: Callable[..., Result], write_config: Callable[..., Path], smtp_server: SmtpServer, tmp_path: Path
) -> None:
    config = write_config(smtp=smtp_section(smtp_server))
    dry = cli("--config", config, "send", "--dry-run")
    assert dry.exit_code == 0, dry.output
    assert "would send ada@example.org: 10 entries" in dry.output
    assert smtp_server.handler.messages == []

    out = tmp_path / "ada.html"
    shown = cli("--config", config, "preview", "--subscriber", "ada@example.org", "--output", out)
    assert shown.exit_code == 0, shown.output
    html = out.read_text()
    # hit words in titles are wrapped in <mark>: compare the titles' text
    assert "Offline Reinforcement Learning with Conservative Value Ensembles" in html_titles(html)
    assert 'style="' in html  # CSS was inlined
    assert smtp_server.handler.messages == []

    real = cli("--config", config, "send", "--subscriber", "ada@example.org")
    assert real.exit_code == 0, real.output
    assert [m["To"].addresses[0].addr_spec for m in smtp_server.handler.messages] == ["ada@example.org"]
    assert set(text_titles(body_text(smtp_server.handler.messages[0]))) == SPIKING | RL


def test_preview_defaults_to_a_temporary_file(
    cli: Callable[..., Result], write_config: Callable[..., Path]
) -> None:
    config = write_config()
    result = cli("--config", config, "preview", "-s", "grace@example.org")
    assert result.exit_code == 0, result.output
    path = Path(result.output.strip().splitlines()[-1])
    assert path.is_file() and "Diffusion models" in path.read_text()
    path.unlink()


def test_maildir_delivery_without_smtp(
    cli: Callable[..., Result], write_config: Callable[..., Path], tmp_path: Path
) -> None:
    config = write_config()
    result = cli("--config", config, "send")
    assert result.exit_code == 0, result.output
    box = mailbox.Maildir(tmp_path / "outbox", create=False)
    messages = list(box)
    assert sorted(m["To"] for m in messages) == [
        "Ada <ada@example.org>",
        "Grace <grace@example.org>",
        "alan@example.org",
    ]
    assert f"Maildir {tmp_path / 'outbox'}/new" in result.output
    again = cli("--config", config, "send")
    assert again.exit_code == 0 and len(box.keys()) == 3


def test_a_refused_address_fails_alone_and_is_named(
    cli: Callable[..., Result], write_config: Callable[..., Path], smtp_server: SmtpServer, tmp_path: Path
) -> None:
    smtp_server.handler.faults["grace@example.org"] = ["550 5.1.1 <grace@example.org>: mailbox unavailable"]
    config = write_config(smtp=smtp_section(smtp_server))
    result = cli("--config", config, "send")
    assert result.exit_code == 1, result.output
    assert "failed grace@example.org: 550 5.1.1 <grace@example.org>: mailbox unavailable" in result.output
    assert sorted(a for _, (a,) in smtp_server.handler.envelopes) == ["ada@example.org", "alan@example.org"]
    # A permanent failure is final: the next send does not try again, nor re-send the others.
    smtp_server.handler.faults.clear()
    again = cli("--config", config, "send")
    assert again.exit_code == 0 and len(smtp_server.handler.messages) == 2
    with sqlite3.connect(tmp_path / "state" / "digest.db") as db:
        states = dict(db.execute("select subscriber, state from deliveries"))
    assert states == {"ada@example.org": "sent", "alan@example.org": "sent", "grace@example.org": "failed"}


def test_a_broken_feed_is_reported_and_the_others_still_delivered(
    cli: Callable[..., Result],
    write_config: Callable[..., Path],
    smtp_server: SmtpServer,
    feed_server: FeedServer,
) -> None:
    feeds = http_feeds(feed_server) | {"blog": feed_server.url("status/500")}
    config = write_config(smtp=smtp_section(smtp_server), feeds=feeds)
    result = cli("--config", config, "send")
    assert result.exit_code == 0, result.output
    assert "feed lab-blog: error: HTTP 500 Internal Server Error" in result.output
    (ada,) = smtp_server.handler.to("ada@example.org")
    assert set(text_titles(body_text(ada))) == (SPIKING | RL) - {
        "A roadmap for neuromorphic hardware in the data centre",
        "How we taught agents to explore with sparse rewards",
    }


def test_unknown_subscriber_is_a_usage_error(
    cli: Callable[..., Result], write_config: Callable[..., Path]
) -> None:
    result = cli("--config", write_config(), "send", "--subscriber", "nobody@example.org")
    assert result.exit_code == 2
    assert "unknown subscriber nobody@example.org" in result.output


def test_maildir_delivery_into_an_existing_empty_folder(
    cli: Callable[..., Result], write_config: Callable[..., Path], tmp_path: Path
) -> None:
    (tmp_path / "outbox").mkdir()  # e.g. made by `preview --output outbox/ada.html`
    result = cli("--config", write_config(), "send")
    assert result.exit_code == 0, result.output
    assert len(list((tmp_path / "outbox" / "new").iterdir())) == 3


def test_sigterm_finishes_the_message_in_flight_and_returns_the_rest(tmp_path: Path) -> None:
    handler = SmtpHandler()
    handler.stall = 2
    handler.faults["user5@example.org"] = [("DATA", "STALL"), None]
    controller, port = start_smtp(handler)
    try:
        config = many(tmp_path, 20, smtp_section(SmtpServer("127.0.0.1", port, handler), timeout="10s"))
        process = send_process(config)
        wait_for(lambda: handler.attempts.get("user5@example.org") == 1)
        started = time.monotonic()
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=10)
        assert time.monotonic() - started < 5
        assert process.returncode == 3, (out, err)
        assert b"SIGTERM: stopping after the messages in flight" in err
        final = delivery_states(tmp_path)
        assert [a for a, s in final.items() if s == "sent"] == [f"user{i}@example.org" for i in range(5)]
        assert set(final.values()) == {"sent", "pending"}  # nothing lost, nothing still claimed
        settings = load_settings(config)
        with Store(settings.digest.database_url) as store:
            later = run.deliver_due(settings, store, clock=lambda: utcnow() + timedelta(minutes=2))
        assert later.count("sent") == 15
        assert Counter(r for _, (r,) in handler.envelopes) == Counter(
            {f"user{i}@example.org": 1 for i in range(20)}
        )
    finally:
        controller.stop()

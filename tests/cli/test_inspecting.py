"""The verbs that look without sending, through the real CLI: `fetch` and `status`.

(`match` and `check` are tested with the topics they work on, in run/test_topics.py.)
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

from click.testing import Result
from conftest import FeedServer, SmtpServer, http_feeds, many, smtp_section


def test_status_shows_feeds_subscribers_and_outbox(
    cli: Callable[..., Result], write_config: Callable[..., Path]
) -> None:
    config = write_config()
    before = cli("--config", config, "status")
    assert before.exit_code == 0, before.output
    assert "never fetched" in before.output
    cli("--config", config, "fetch")
    pending = cli("--config", config, "status")
    assert re.search(r"ada@example\.org\s+spiking, rl\s+daily 07:00\s+-\s+10\b", pending.output), (
        pending.output
    )
    cli("--config", config, "send", "--no-fetch")
    after = cli("--config", config, "status")
    assert re.search(r"arxiv-cs\s+\S+ \S+ \S+\s+\S+ \S+ \S+\s+13\s", after.output), after.output
    assert "Outbox: 3 sent" in after.output
    assert re.search(r"ada@example\.org\s+spiking, rl\s+daily 07:00\s+\S+ \S+ \S+\s+0\b", after.output), (
        after.output
    )


def test_fetch_prints_a_line_per_feed(
    cli: Callable[..., Result], write_config: Callable[..., Path], feed_server: FeedServer
) -> None:
    feeds = http_feeds(feed_server) | {"blog": feed_server.url("status/404")}
    config = write_config(feeds=feeds)
    first = cli("--config", config, "fetch")
    assert first.exit_code == 1  # a feed failed
    assert re.search(r"arxiv-cs\s+13 new", first.output)
    assert re.search(r"hf-papers\s+\d+ new", first.output)
    assert re.search(r"lab-blog\s+error: HTTP 404 Not Found", first.output)
    second = cli("--config", config, "fetch")
    # SimpleHTTPRequestHandler sends Last-Modified: the second fetch is a conditional GET -> 304.
    assert re.search(r"arxiv-cs\s+not modified", second.output), second.output
    assert any(h.get("If-Modified-Since") for p, h in feed_server.requests if p == "/arxiv-cs.xml")


def test_status_lists_pending_deliveries(
    cli: Callable[..., Result], tmp_path: Path, smtp_server: SmtpServer
) -> None:
    smtp_server.handler.faults["user0@example.org"] = ["451 4.3.0 greylisted"]
    config = many(tmp_path, 2, smtp_section(smtp_server))
    assert cli("--config", config, "send").exit_code == 3
    status = cli("--config", config, "status")
    assert "Outbox: 1 pending, 1 sent" in status.output
    assert (
        "pending user0@example.org (attempts 1, next" in status.output
        and "451 4.3.0 greylisted" in status.output
    )


def test_fetch_and_status_show_resting_feeds(
    cli: Callable[..., Result], configure: Callable[..., Path], feed_server: FeedServer
) -> None:
    config = configure({"broken": feed_server.url("status/500"), "cut": feed_server.url("truncated.xml")})
    first = cli("--config", config, "fetch")
    assert re.search(
        r"broken\s+error: HTTP 500 Internal Server Error \(failure 1; next attempt after \S+ \S+ \S+\)\s+\d",
        first.output,
    ), first.output
    second = cli("--config", config, "fetch")
    assert re.search(
        r"broken\s+skipped: resting after 1 failure until \S+ \S+ \S+ "
        r"\(last error: HTTP 500 Internal Server Error\); name it with --feed to fetch it now\s+-",
        second.output,
    ), second.output
    assert re.search(r"cut\s+not modified", second.output)
    named = cli("--config", config, "fetch", "--feed", "broken")
    assert "failure 2;" in named.output and "cut" not in named.output
    status = cli("--config", config, "status")
    line = next(line.rstrip() for line in status.output.splitlines() if line.startswith("broken"))
    # feed, last fetch, last success, entries, result, failures, next attempt, last error, url
    assert re.match(
        r"broken\s+\S+ \S+ \S+\s+-\s+0\s+error\s+2\s+\d{4}-\d\d-\d\d \d\d:\d\d \S+\s+"
        r"\d{4}-\d\d-\d\d \d\d:\d\d \S+ HTTP 500 Internal Server Error\s+http://127\.0\.0\.1:\d+/status/500$",
        line,
    ), line
    cut = next(line.rstrip() for line in status.output.splitlines() if line.startswith("cut"))
    assert re.match(r"cut\s+\S+ \S+ \S+\s+\S+ \S+ \S+\s+3\s+not modified\s+0\s+due\s+-\s+http", cut), cut

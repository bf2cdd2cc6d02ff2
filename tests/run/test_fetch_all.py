"""fetch_all (config -> fetch -> parse -> store, a report per feed) and the CLI around it:
broken feeds, backoff and recovery, moved feeds, and the run with hung, huge and broken feeds.

Time-dependent behaviour is driven through ``run.fetch_all`` with a clock; everything else
through the real CLI. Feeds come from the loopback HTTP server (or files).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import quote

from click.testing import Result
from conftest import FeedServer, SmtpServer, body_text, fake_network, opened, serve, smtp_section, text_titles

from pipeline import run

T0 = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)


def test_a_page_that_is_not_a_feed_fails_alone_and_a_truncated_feed_is_used(
    cli: Callable[..., Result], configure: Callable[..., Path], feed_server: FeedServer
) -> None:
    config = configure(
        {
            "home": feed_server.url("not-a-feed.html"),
            "cut": feed_server.url("truncated.xml"),
            "papers-arxiv": feed_server.url("papers-arxiv.xml"),
        }
    )
    result = cli("--config", config, "fetch")
    assert result.exit_code == 1  # home failed (alone)
    assert re.search(r"home\s+error: not a feed: no RSS, RDF or Atom document found", result.output)
    assert re.search(r"cut\s+3 new \(warning: feed is malformed but has 3 usable entries", result.output)
    assert re.search(r"papers-arxiv\s+3 new\s+\d+\.\d\ds", result.output), result.output


# --- failures, backoff, recovery --------------------------------------------------------------


def test_failures_back_off_and_polling_resumes_by_itself(
    configure: Callable[..., Path], feed_server: FeedServer
) -> None:
    config = configure({"later": feed_server.url("later.xml")})
    with opened(config) as (settings, store):

        def fetch_at(delay: timedelta, **options: bool) -> run.FeedReport:
            (report,) = run.fetch_all(settings, store, clock=lambda: T0 + delay, **options)
            return report

        first = fetch_at(timedelta(0))
        assert first.result == "error" and first.error == "HTTP 404 Not Found"
        assert first.failures == 1 and first.next_attempt_at == T0 + timedelta(minutes=5)
        assert fetch_at(timedelta(minutes=1)).result == "skipped"
        second = fetch_at(timedelta(minutes=6))
        assert second.failures == 2 and second.next_attempt_at == T0 + timedelta(minutes=16)
        third = fetch_at(timedelta(minutes=7), force=True)  # named feeds are fetched regardless
        assert third.result == "error" and third.failures == 3
        requests = len(feed_server.requests)
        serve(feed_server, "later.xml", "lab-blog.xml")  # the feed comes back
        assert fetch_at(timedelta(minutes=8)).result == "skipped"
        assert len(feed_server.requests) == requests  # resting feeds cost the server nothing
        back = fetch_at(timedelta(hours=1))
        assert back.describe() == "4 new"
        state = store.feed_states()["later"]
    assert state.failures == 0 and state.next_attempt_at is None and state.failing_since is None
    assert state.last_error == "HTTP 404 Not Found"  # kept, with its time, for `status`
    assert state.last_error_at == T0 + timedelta(minutes=7)
    assert state.last_success_at == T0 + timedelta(hours=1)


def test_retry_after_and_gone(configure: Callable[..., Path], feed_server: FeedServer) -> None:
    config = configure(
        {"busy": feed_server.url("status/429?retry_after=7200"), "gone": feed_server.url("status/410")}
    )
    with opened(config) as (settings, store):
        busy, gone = run.fetch_all(settings, store, clock=lambda: T0)
    assert busy.next_attempt_at == T0 + timedelta(hours=2)
    assert gone.next_attempt_at == T0 + timedelta(hours=24)


def test_a_permanent_redirect_is_remembered_and_shown(
    cli: Callable[..., Result], configure: Callable[..., Path], feed_server: FeedServer
) -> None:
    moved_from = feed_server.url("redirect/301?to=/arxiv-cs.xml")
    config = configure({"arxiv": moved_from})
    first = cli("--config", config, "fetch")
    assert f"13 new (moved permanently to {feed_server.url('arxiv-cs.xml')})" in first.output
    status = cli("--config", config, "status")
    assert f"{feed_server.url('arxiv-cs.xml')} (moved from {moved_from})" in status.output
    del feed_server.requests[:]
    second = cli("--config", config, "fetch")
    assert re.search(r"arxiv\s+not modified", second.output), second.output
    # Straight to the new address, conditionally; the config's URL was not asked again.
    assert [path for path, _ in feed_server.requests] == ["/arxiv-cs.xml"]
    assert feed_server.requests[0][1].get("If-Modified-Since")
    # A new URL in the config starts afresh.
    config.write_text(config.read_text().replace(moved_from, feed_server.url("hf-papers.xml")))
    third = cli("--config", config, "status")
    assert "moved from" not in third.output and feed_server.url("hf-papers.xml") in third.output


def test_a_redirect_to_a_private_address_is_an_error_for_that_feed(
    configure: Callable[..., Path], feed_server: FeedServer
) -> None:
    port = feed_server.base.rsplit(":", 1)[1]
    target = quote(feed_server.url("arxiv-cs.xml"), safe="")
    config = configure(
        {
            "sneaky": f"http://feeds.example.net:{port}/redirect/302?to={target}",
            "fine": f"http://feeds.example.net:{port}/hf-papers.xml",
        }
    )
    network = fake_network({"feeds.example.net": ["93.184.216.34"]})
    with opened(config) as (settings, store):
        sneaky, fine = run.fetch_all(settings, store, clock=lambda: T0, network=network)
    assert sneaky.result == "error" and sneaky.error is not None
    assert sneaky.error.startswith("refused to connect to the non-public address 127.0.0.1")
    assert fine.describe() == "7 new"


# --- the done condition ---------------------------------------------------------------------


def test_hung_huge_and_broken_feeds_do_not_hold_up_the_good_ones(
    cli: Callable[..., Result],
    configure: Callable[..., Path],
    feed_server: FeedServer,
    smtp_server: SmtpServer,
) -> None:
    config = configure(
        {
            "papers-hf": feed_server.url("papers-hf.xml"),
            "hung": feed_server.url("hang?seconds=60"),
            "papers-arxiv": feed_server.url("papers-arxiv.xml"),
            "huge": feed_server.url("huge?bytes=200000000&no_length=1"),
            "broken": feed_server.url("status/500"),
            "trickle": feed_server.url("trickle?every=0.1&total=60"),
            "blog": feed_server.url("lab-blog.xml"),
        },
        timeout="2s",
        smtp=smtp_section(smtp_server),
    )
    started = time.monotonic()
    result = cli("--config", config, "send")
    took = time.monotonic() - started
    assert result.exit_code == 0, result.output
    assert "feed hung: error: timed out after 2s" in result.output
    assert "feed trickle: error: timed out after 2s" in result.output
    assert "feed huge: error: feed is larger than the 10,000,000-byte limit" in result.output
    assert "feed broken: error: HTTP 500 Internal Server Error" in result.output
    assert "2 sent, 0 pending, 0 failed" in result.output
    (ada,) = smtp_server.handler.to("ada@example.org")
    assert "How we taught agents to explore with sparse rewards" in text_titles(body_text(ada))
    assert len(text_titles(body_text(ada))) == 6  # 4 papers and 2 blog posts
    # The timeout, plus parsing, rendering and sending; far from the hung server's 60 s.
    assert took < 2 + 5, f"took {took:.1f}s"


def test_a_feed_that_would_take_forever_to_parse_fails_alone(
    configure: Callable[..., Path], feed_server: FeedServer
) -> None:
    evil = (
        '<?xml version="1.0"?><rss version="2.0"><channel><title>t</title>'
        f"<item><title>x</title><link>https://e.example/1</link><author>{'a' * 400_000}</author></item>"
        "</channel></rss>"
    )
    config = configure(
        {"evil": serve(feed_server, "evil.xml", text=evil), "blog": feed_server.url("lab-blog.xml")},
        timeout="1s",
    )
    started = time.monotonic()
    with opened(config) as (settings, store):
        evil_report, blog = run.fetch_all(settings, store, clock=lambda: T0)
    assert evil_report.error == "parsing took longer than 1s (stopped)"
    assert blog.describe() == "4 new"
    assert time.monotonic() - started < 3

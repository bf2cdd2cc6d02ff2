"""fetch_all and the CLI around it: identity across fetches and feeds, backoff, moved feeds,
admin alerts, pruning, the schema upgrade, and the run with hung, huge and broken feeds.

Time-dependent behaviour is driven through ``run.fetch_all`` / ``run.send`` with a clock;
everything else through the real CLI. Feeds come from the loopback HTTP server (or files).
"""

from __future__ import annotations

import os
import re
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import quote

import pytest
from click.testing import Result
from conftest import DATA, FeedServer, SmtpServer, body_text, fake_network, smtp_section

from pipeline import run
from pipeline.config import Settings, load_settings
from pipeline.errors import StoreError
from pipeline.speed import Speedups
from pipeline.store import SCHEMA_VERSION, Store

T0 = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)

CONFIG = """
[digest]
title = "Test Digest"
database = "state/digest.db"
lookback = "3650d"
{digest}

[fetch]
timeout = "{timeout}"
{fetch}

{feeds}

[topics.spiking]
keywords = ["spiking", "SNN", "neuromorphic"]

[topics.rl]
keywords = ["reinforcement learning", "RL", "bandit", "policy gradient"]

[topics.hf-spiking]
keywords = ["spiking"]
feeds = ["papers-hf"]

[[subscribers]]
email = "ada@example.org"
topics = ["spiking", "rl"]

[[subscribers]]
email = "grace@example.org"
topics = ["hf-spiking"]
"""


def config_text(
    feeds: dict[str, str], *, timeout: str = "5s", digest: str = "", fetch: str = "", smtp: str = ""
) -> str:
    feed_tables = "\n".join(f'[[feeds]]\nname = "{name}"\nurl = "{url}"\n' for name, url in feeds.items())
    text = CONFIG.format(digest=digest, timeout=timeout, fetch=fetch, feeds=feed_tables)
    if "papers-hf" not in feeds:  # the topic restricted to papers-hf needs that feed
        text = text.replace('feeds = ["papers-hf"]', "")
    return text + "\n" + smtp


@pytest.fixture
def configure(tmp_path: Path) -> Callable[..., Path]:
    """Write a config for these feeds (name -> URL or path) and return its path."""

    def write(feeds: dict[str, str], **options: str) -> Path:
        path = tmp_path / "digest.toml"
        path.write_text(config_text(feeds, **options), encoding="utf-8")
        return path

    return write


@contextmanager
def opened(config: Path) -> Iterator[tuple[Settings, Store]]:
    settings = load_settings(config)
    with Store(settings.digest.database_url) as store:
        yield settings, store


def db(tmp_path: Path) -> sqlite3.Connection:
    return sqlite3.connect(tmp_path / "state" / "digest.db")


def titles_in(text: str) -> list[str]:
    found = re.findall(r"^\* (.+?)\n  (?:https?://|\(no link\))", text, re.M | re.S)
    return [" ".join(t.split()) for t in found]


def serve(feed_server: FeedServer, name: str, source: str | None = None, *, text: str | None = None) -> str:
    """Put a feed file on the server (from tests/data or given text) and return its URL."""
    path = feed_server.directory / name
    if text is None:
        path.write_bytes((DATA / (source or name)).read_bytes())
    else:
        path.write_text(text, encoding="utf-8")
    later = time.time() + 2 * len(feed_server.requests) + 2  # Last-Modified has 1 s resolution
    os.utime(path, (later, later))
    return feed_server.url(name)


# --- identity -------------------------------------------------------------------------------


def test_the_same_papers_from_two_feeds_are_stored_and_delivered_once(
    cli: Callable[..., Result],
    configure: Callable[..., Path],
    feed_server: FeedServer,
    smtp_server: SmtpServer,
    tmp_path: Path,
) -> None:
    config = configure(
        {
            "papers-hf": feed_server.url("papers-hf.xml"),
            "papers-arxiv": feed_server.url("papers-arxiv.xml"),
        },
        smtp=smtp_section(smtp_server),
    )
    result = cli("--config", config, "send")
    assert result.exit_code == 0, result.output
    assert "feed papers-hf: 3 new" in result.output
    assert "feed papers-arxiv: 1 new" in result.output  # two of its three papers were known
    (ada,) = smtp_server.handler.to("ada@example.org")
    shown = titles_in(body_text(ada))
    assert sorted(shown) == sorted(
        [
            "Spiking Neural Networks That Learn Online Without Backpropagation Through Time",
            "Bandit Feedback for Reinforcement Learning from Human Preferences",
            "Neuromorphic Keyword Spotting at the Edge",
            "Off-Policy Evaluation with Spiking Critics",
        ]
    )  # each paper once, though two of them came from both feeds
    # A topic restricted to one feed matches an entry any of whose feeds is that one.
    (grace,) = smtp_server.handler.to("grace@example.org")
    assert titles_in(body_text(grace)) == [
        "Spiking Neural Networks That Learn Online Without Backpropagation Through Time"
    ]
    with db(tmp_path) as conn:
        assert conn.execute("select count(*) from entries").fetchone() == (4,)
        feeds_of = dict(
            conn.execute(
                "select e.arxiv_id, group_concat(s.feed, ' ') from entries e"
                " join entry_sources s on s.entry_id = e.id group by e.id"
            )
        )
    assert feeds_of == {
        "2611.10001": "papers-hf papers-arxiv",
        "2611.10002": "papers-hf papers-arxiv",
        "2611.10003": "papers-hf",
        "2611.10004": "papers-arxiv",
    }
    again = cli("--config", config, "send")
    assert "0 sent" in again.output and len(smtp_server.handler.messages) == 2


def test_the_same_paper_arriving_later_from_another_feed_is_not_sent_again(
    configure: Callable[..., Path], feed_server: FeedServer, smtp_server: SmtpServer
) -> None:
    hf = serve(feed_server, "hf.xml", "papers-hf.xml")
    arxiv = feed_server.url("missing.xml")
    config = configure({"papers-hf": hf, "papers-arxiv": arxiv}, smtp=smtp_section(smtp_server))
    with opened(config) as (settings, store):
        run.send(settings, store, clock=lambda: T0)
        assert len(smtp_server.handler.to("ada@example.org")) == 1
        serve(feed_server, "missing.xml", "papers-arxiv.xml")  # the arXiv feed appears later
        report = run.send(settings, store, clock=lambda: T0 + timedelta(hours=1))
    assert [f.describe() for f in report.feeds] == ["not modified", "1 new"]
    latest = smtp_server.handler.to("ada@example.org")[-1]
    assert titles_in(body_text(latest)) == ["Off-Policy Evaluation with Spiking Critics"]


def test_duplicates_within_a_feed(configure: Callable[..., Path]) -> None:
    config = configure({"dup": str(DATA / "duplicates.xml"), "comments": str(DATA / "comments.xml")})
    with opened(config) as (settings, store):
        reports = run.fetch_all(settings, store, clock=lambda: T0)
        # One guid twice: one entry. Two guids, one link: two entries. Two guid-less items
        # whose links differ only by tracking parameters: one entry. Comments: two.
        assert [r.describe() for r in reports] == ["4 new", "2 new"]
        titles = sorted(e.title for e in store.entries_since(T0 - timedelta(days=3650)))
    assert titles == [
        "Bandit reading list (updated)",  # the later of the two copies in the document
        "By: Ada",
        "By: Alan",
        "Lab meeting: diffusion models",
        "Lab meeting: spiking neural networks",
        "Weekly reinforcement learning roundup",
    ]


def test_an_edited_entry_updates_the_stored_copy_and_is_not_sent_again(
    cli: Callable[..., Result],
    configure: Callable[..., Path],
    feed_server: FeedServer,
    smtp_server: SmtpServer,
    tmp_path: Path,
) -> None:
    url = serve(feed_server, "edits.xml", "edited-v1.xml")
    config = configure({"edits": url}, smtp=smtp_section(smtp_server))
    first = cli("--config", config, "send")
    assert first.exit_code == 0 and "1 sent" in first.output, first.output
    (ada,) = smtp_server.handler.to("ada@example.org")
    assert "Policy gradeint methods, explained" in titles_in(body_text(ada))
    serve(feed_server, "edits.xml", "edited-v2.xml")
    second = cli("--config", config, "send")
    assert "feed edits: 0 new" in second.output and "0 sent" in second.output, second.output
    assert len(smtp_server.handler.messages) == 1
    with db(tmp_path) as conn:
        rows = conn.execute("select title, summary_html from entries order by id").fetchall()
    assert rows[0] == (
        "Policy gradient methods, explained",
        "The final version, about policy gradient methods in reinforcement learning, with figures.",
    )
    assert len(rows) == 2


def test_a_feed_that_changes_all_its_guids_does_not_repeat_itself(
    configure: Callable[..., Path], feed_server: FeedServer
) -> None:
    url = serve(feed_server, "blog.xml", "lab-blog.xml")
    config = configure({"blog": url})
    with opened(config) as (settings, store):
        assert run.fetch_all(settings, store, clock=lambda: T0)[0].new == 4
        # The blog moved to another host: every guid and link changed, the posts did not.
        moved = (
            (DATA / "lab-blog.xml")
            .read_text()
            .replace("https://lab.example.org/", "https://www.lab.example.org/")
        )
        serve(feed_server, "blog.xml", text=moved)
        (report,) = run.fetch_all(settings, store, clock=lambda: T0 + timedelta(hours=1))
        assert report.describe() == "0 new"
        links = sorted(str(e.link) for e in store.entries_since(T0 - timedelta(days=3650)))
    assert len(links) == 4 and all(link.startswith("https://www.lab.example.org/") for link in links)


def test_entries_without_dates_are_dated_when_first_seen(configure: Callable[..., Path]) -> None:
    config = configure({"undated": str(DATA / "no-dates.xml")})
    with opened(config) as (settings, store):
        run.fetch_all(settings, store, clock=lambda: T0)
        entries = store.entries_since(T0 - timedelta(days=3650))
    assert [e.published for e in entries] == [T0, T0]


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
    assert result.exit_code == 0
    assert re.search(r"home\s+error: not a feed: no RSS, RDF or Atom document found", result.output)
    assert re.search(r"cut\s+3 new \(warning: feed is malformed but has 3 usable entries", result.output)
    assert re.search(r"papers-arxiv\s+3 new\s+\d+\.\d\ds", result.output), result.output


def test_a_parser_started_early_parses_and_stops_with_the_fetch(
    configure: Callable[..., Path], feed_server: FeedServer
) -> None:
    # `digest send` starts one before its imports; a parser that parsed a large feed holds its
    # memory, which must not stay for the rest of the send.
    config = configure({"arxiv": serve(feed_server, "arxiv-cs.xml")})
    with opened(config) as (settings, store), Speedups.for_command() as speed:
        early = _children_named(b"pipeline.parse")
        assert len(early) == 1  # started at once
        (report,) = run.fetch_all(settings, store, speed=speed)
        assert report.result == "new" and report.new > 0
        assert speed.take_parser() is None  # taken by the fetch ...
        assert _children_named(b"pipeline.parse") == []  # ... and stopped with it
        (again,) = run.fetch_all(settings, store, speed=speed, force=True)  # nothing left to take
        assert again.result == "not-modified"


def _children_named(module: bytes) -> list[int]:
    """This process's live children running ``python -m module``."""
    found = []
    for status in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = status.read_text().rsplit(")", 1)[1].split()
            command = (status.parent / "cmdline").read_bytes()
        except OSError:
            continue
        if int(fields[1]) == os.getpid() and fields[0] != "Z" and module in command.split(b"\0"):
            found.append(int(status.parent.name))
    return found


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


def test_fetch_and_status_show_resting_feeds(
    cli: Callable[..., Result], configure: Callable[..., Path], feed_server: FeedServer
) -> None:
    config = configure({"broken": feed_server.url("status/500"), "cut": feed_server.url("truncated.xml")})
    first = cli("--config", config, "fetch")
    assert re.search(
        r"broken\s+error: HTTP 500 Internal Server Error \(failure 1; next attempt after \S+ \S+\)\s+\d",
        first.output,
    ), first.output
    second = cli("--config", config, "fetch")
    assert re.search(
        r"broken\s+skipped: resting after 1 failure\(s\) until \S+ \S+ "
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
        r"broken\s+\S+ \S+\s+-\s+0\s+error\s+2\s+\d{4}-\d\d-\d\d \d\d:\d\d\s+"
        r"\d{4}-\d\d-\d\d \d\d:\d\d HTTP 500 Internal Server Error\s+http://127\.0\.0\.1:\d+/status/500$",
        line,
    ), line
    cut = next(line.rstrip() for line in status.output.splitlines() if line.startswith("cut"))
    assert re.match(r"cut\s+\S+ \S+\s+\S+ \S+\s+3\s+not modified\s+0\s+due\s+-\s+http", cut), cut


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


# --- admin alerts ---------------------------------------------------------------------------


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


# --- pruning --------------------------------------------------------------------------------


def test_pruning_never_causes_a_resend(
    configure: Callable[..., Path], feed_server: FeedServer, smtp_server: SmtpServer, tmp_path: Path
) -> None:
    # Undated entries are the dangerous ones: without their identity, a pruned entry that its
    # feed still lists would come back "new", dated now, inside anyone's lookback.
    url = serve(feed_server, "undated.xml", "no-dates.xml")
    config = configure({"undated": url}, digest='retain = "30d"', smtp=smtp_section(smtp_server))
    ada = smtp_server.handler

    def count(sql: str) -> int:
        with db(tmp_path) as conn:
            return int(conn.execute(sql).fetchone()[0])

    with opened(config) as (settings, store):

        def send_at(days: float) -> run.SendReport:
            return run.send(settings, store, clock=lambda: T0 + timedelta(days=days))

        send_at(0)
        assert sorted(titles_in(body_text(ada.to("ada@example.org")[0]))) == [
            "Notes on bandits",
            "Notes on spiking neural networks",
        ]
        report = send_at(31)  # 304 from the server; the entries are 31 days old
        assert report.feeds[0].describe() == "not modified" and report.outcomes == []
        assert count("select count(*) from entries where pruned_at is not null") == 2
        assert store.entries_since(T0 - timedelta(days=3650)) == []
        # The feed changes: its old items are recognised (only the new one is new).
        text = (DATA / "no-dates.xml").read_text()
        new_item = """<item><title>Notes on neuromorphic chips</title>
          <link>https://undated.example.org/notes/chips</link>
          <guid>https://undated.example.org/notes/chips</guid>
          <description>Reading notes.</description></item>"""
        serve(feed_server, "undated.xml", text=text.replace("<item>", new_item + "\n    <item>", 1))
        report = send_at(32)
        assert report.feeds[0].describe() == "1 new"
        assert titles_in(body_text(ada.to("ada@example.org")[-1])) == ["Notes on neuromorphic chips"]
        # The old items leave the feed; 30 days after they were last seen they are forgotten
        # (but the newest entry is always kept, so SQLite never reuses an id).
        only_new = text.split("<item>")[0] + new_item + "\n  </channel>\n</rss>\n"
        serve(feed_server, "undated.xml", text=only_new)
        send_at(40)
        assert count("select count(*) from entries") == 3
        send_at(75)
        assert count("select count(*) from entries") == 1
        assert count("select count(*) from entry_sources") == 1
        send_at(120)  # the newest entry is pruned (text dropped) and its identity stays
        assert count("select count(*) from entries where pruned_at is not null") == 1
    assert len(ada.to("ada@example.org")) == 2


def test_an_entry_in_a_digest_still_in_the_outbox_is_not_pruned(
    configure: Callable[..., Path], smtp_server: SmtpServer, tmp_path: Path
) -> None:
    smtp_server.handler.faults["ada@example.org"] = ["451 4.2.0 mailbox busy"]
    config = configure(
        {"undated": str(DATA / "no-dates.xml")}, digest='retain = "1d"', smtp=smtp_section(smtp_server)
    )
    with opened(config) as (settings, store):
        report = run.send(settings, store, clock=lambda: T0, subscribers=["ada@example.org"])
        assert [o.status for o in report.outcomes] == ["pending"]
        run.fetch_all(settings, store, clock=lambda: T0 + timedelta(days=2))
    with db(tmp_path) as conn:
        assert conn.execute("select count(*) from entries where pruned_at is null").fetchone() == (2,)


# --- the schema -----------------------------------------------------------------------------


def test_a_version_1_database_upgrades_itself(configure: Callable[..., Path], tmp_path: Path) -> None:
    blog = tmp_path / "blog.xml"
    blog.write_bytes((DATA / "lab-blog.xml").read_bytes())
    config = configure({"blog": str(blog)})
    with opened(config) as (settings, store):
        run.fetch_all(settings, store, clock=lambda: T0)
    # Turn the file back into what the first release wrote.
    with db(tmp_path) as conn:
        for index in ("ix_entries_fingerprint", "ix_entries_first_seen", "ix_entry_sources_last_seen"):
            conn.execute(f"drop index {index}")
        for table, column in [
            ("feeds", "last_error_at"),
            ("feeds", "failing_since"),
            ("feeds", "alert"),
            ("feeds", "body_hash"),
            ("entries", "fingerprint"),
            ("entries", "pruned_at"),
            ("entry_sources", "last_seen"),
            ("deliveries", "cut"),  # version 3
        ]:
            conn.execute(f"alter table {table} drop column {column}")
        conn.execute("update meta set value = '1' where key = 'schema'")
    os.utime(blog, (time.time() + 10, time.time() + 10))  # parsed again after the upgrade
    with opened(config) as (settings, store):
        assert store.feed_states()["blog"].entries == 4
        (report,) = run.fetch_all(settings, store, clock=lambda: T0 + timedelta(hours=1), force=True)
        assert report.describe() == "0 new"
    with db(tmp_path) as conn:
        version = conn.execute("select value from meta where key = 'schema'").fetchone()
        assert version == (str(SCHEMA_VERSION),)
        assert conn.execute("select count(*) from entries where fingerprint is null").fetchone() == (0,)
        assert conn.execute("select count(*) from entry_sources where last_seen is null").fetchone() == (0,)
        conn.execute("update meta set value = '99' where key = 'schema'")
    with pytest.raises(StoreError, match="schema 99 is newer"):
        Store(load_settings(config).digest.database_url)


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
    assert "How we taught agents to explore with sparse rewards" in titles_in(body_text(ada))
    assert len(titles_in(body_text(ada))) == 6  # 4 papers and 2 blog posts
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

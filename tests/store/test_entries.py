"""Pruning: old entries and finished digests are forgotten, and nothing forgotten is ever sent again."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

from conftest import (
    DATA,
    FeedServer,
    SmtpServer,
    body_text,
    delivery_rows,
    many,
    opened,
    serve,
    smtp_section,
    state_db,
    text_titles,
)

from pipeline import run
from pipeline.config import load_settings
from pipeline.store import Store, utcnow

T0 = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)


def test_pruning_never_causes_a_resend(
    configure: Callable[..., Path], feed_server: FeedServer, smtp_server: SmtpServer, tmp_path: Path
) -> None:
    # Undated entries are the dangerous ones: without their identity, a pruned entry that its
    # feed still lists would come back "new", dated now, inside anyone's lookback.
    url = serve(feed_server, "undated.xml", "no-dates.xml")
    config = configure({"undated": url}, digest='retain = "30d"', smtp=smtp_section(smtp_server))
    ada = smtp_server.handler

    def count(sql: str) -> int:
        with state_db(tmp_path) as conn:
            return int(conn.execute(sql).fetchone()[0])

    with opened(config) as (settings, store):

        def send_at(days: float) -> run.SendReport:
            return run.send(settings, store, clock=lambda: T0 + timedelta(days=days))

        send_at(0)
        assert sorted(text_titles(body_text(ada.to("ada@example.org")[0]))) == [
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
        assert text_titles(body_text(ada.to("ada@example.org")[-1])) == ["Notes on neuromorphic chips"]
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
    with state_db(tmp_path) as conn:
        assert conn.execute("select count(*) from entries where pruned_at is null").fetchone() == (2,)


def test_old_finished_digests_are_forgotten_without_any_resend(
    tmp_path: Path, smtp_server: SmtpServer
) -> None:
    config = many(tmp_path, 2, smtp_section(smtp_server), extra_digest='retain = "1d"')
    settings = load_settings(config)
    start = utcnow()
    with Store(settings.digest.database_url) as store:
        assert run.send(settings, store, clock=lambda: start).count("sent") == 2
        later = start + timedelta(days=3)
        again = run.send(settings, store, clock=lambda: later)  # fetches, prunes, plans
        assert again.outcomes == []
        assert sorted(again.nothing_new) == ["user0@example.org", "user1@example.org"]
    assert delivery_rows(tmp_path) == []  # the sent digests and their taken entries are gone
    with sqlite3.connect(tmp_path / "state" / "digest.db") as db:
        assert db.execute("select count(*) from delivered_entries").fetchone() == (0,)
    assert len(smtp_server.handler.messages) == 2

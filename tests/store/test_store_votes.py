"""Votes in the state database (a real SQLite file): one current vote per reader and entry,
and which later entries a "less like this" hides from that reader."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from pipeline.models import Entry, FeedItem
from pipeline.store import Store

NOW = datetime(2026, 12, 6, 8, 0, tzinfo=UTC)
BUDGET = "https://blog.example/budget"


def feed_item(feed: str, guid: str, title: str, link: str | None, text: str = "Text.") -> FeedItem:
    html = f"<p>{text}</p>"
    return FeedItem(feed=feed, guid=guid, title=title, link=link, summary_html=html, published=NOW)


def stored(store: Store, *items: FeedItem) -> dict[str, Entry]:
    """Store each item (a fetch of its feed each) and return the entries by title + guid."""
    for n, item in enumerate(items):
        store.add_items([item], NOW + timedelta(minutes=n))
    entries = store.entries_since(NOW - timedelta(days=1))
    return {e.title: e for e in entries}


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(f"sqlite:///{tmp_path / 'digest.db'}")


def test_one_current_vote_per_reader_and_entry(store: Store) -> None:
    assert store.record_vote("Ada@Example.org", 7, "less", NOW) is None
    first = store.vote_of("ada@example.org", 7)
    assert first is not None and (first.subscriber, first.vote, first.at) == ("ada@example.org", "less", NOW)
    # the same vote again: nothing changes, not even its time
    assert store.record_vote("ada@example.org", 7, "less", NOW + timedelta(hours=1)) == first
    assert store.vote_of("ADA@example.org", 7) == first
    # the other vote replaces it
    replaced = store.record_vote("ada@example.org", 7, "more", NOW + timedelta(hours=2))
    assert replaced == first
    now = store.vote_of("ada@example.org", 7)
    assert now is not None and (now.vote, now.at) == ("more", NOW + timedelta(hours=2))
    store.record_vote("bob@example.org", 7, "less", NOW)
    store.record_vote("bob@example.org", 8, "less", NOW)
    assert [v.subscriber for v in store.entry_votes(7)] == ["bob@example.org", "ada@example.org"]
    counts = store.vote_counts()
    assert (counts["ada@example.org"].more, counts["ada@example.org"].less) == (1, 0)
    assert (counts["bob@example.org"].more, counts["bob@example.org"].less) == (0, 2)
    with pytest.raises(ValueError, match="more or less"):
        store.record_vote("ada@example.org", 7, "maybe", NOW)  # type: ignore[arg-type]


def test_a_less_hides_later_edits_the_identity_rules_cannot_recognise(store: Store) -> None:
    entries = stored(
        store,
        feed_item("blog", "p1", "Spiking Networks  on a Budget", BUDGET),
        feed_item("blog", "p2", "Chips", "https://blog.example/chips"),
        feed_item("other", "o1", "Unrelated", "https://other.example/x"),
    )
    voted, chips = entries["Spiking Networks  on a Budget"], entries["Chips"]
    store.record_vote("ada@example.org", voted.id, "less", NOW)
    store.record_vote("ada@example.org", chips.id, "more", NOW)
    store.record_vote("bob@example.org", voted.id, "more", NOW)
    later = stored(
        store,
        # new guid, same link, text changed: a new entry of the same feed
        feed_item("blog", "p1-v2", "Spiking networks on a budget (corrected)", BUDGET, "New."),
        # new guid and link, same title (case and spacing aside), text changed
        feed_item("blog", "p1-v3", "spiking networks ON a budget", BUDGET + "-v3", "Newer."),
        # the same title in a feed that never carried the voted entry: not its edit
        feed_item("elsewhere", "e1", "Spiking Networks on a Budget", "https://elsewhere.example/b"),
        # an edit of an entry voted "more": not hidden
        feed_item("blog", "p2-v2", "Chips", "https://blog.example/chips", "Changed."),
    )
    candidates = list(later.values())
    hidden = store.hidden_edits(["Ada@example.org", "bob@example.org", "carol@example.org"], candidates)
    assert hidden == {
        "Ada@example.org": {
            later["Spiking networks on a budget (corrected)"].id,
            later["spiking networks ON a budget"].id,
        }
    }
    assert later["Spiking networks on a budget (corrected)"].id != voted.id  # (it is a new entry)
    assert store.hidden_edits(["ada@example.org"], []) == {}
    assert store.hidden_edits([], candidates) == {}
    # The voted entry itself is not "its own edit" (what was sent is already taken).
    assert store.hidden_edits(["ada@example.org"], [voted]) == {}


def test_votes_may_be_cast_only_on_entries_a_readers_digests_listed(store: Store) -> None:
    from pipeline import run
    from pipeline.config import parse_settings
    from pipeline.models import Digest, Match, Section
    from pipeline.run.stored import queued_digest

    entries = stored(store, feed_item("blog", "p1", "Listed", "https://blog.example/1"))
    entry = entries["Listed"]
    settings = parse_settings(
        '[[subscribers]]\nemail = "Ada@example.org"\ntopics = ["t"]\n[topics.t]\nkeywords = ["x"]\n',
        Path("digest.toml"),
    )
    digest = Digest(
        "Ada@example.org", None, (Section("t", "T", (Match(entry, "t", 1, ()),)),), ("T",), NOW, "<m@x>"
    )
    store.enqueue([queued_digest(settings, digest)])
    assert store.was_sent("ada@example.org", entry.id)
    assert not store.was_sent("bob@example.org", entry.id)
    assert not store.was_sent("ada@example.org", entry.id + 1)
    assert run.entry_votes(store, entry) == []

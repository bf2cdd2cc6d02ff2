"""What went to whom: the entries each subscriber already took, read back from the outbox."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from pipeline.models import FeedItem
from pipeline.store import QueuedDigest, Store

T0 = datetime(2026, 11, 27, tzinfo=UTC)


def test_taken_entries_reads_back_what_was_enqueued(tmp_path: Path) -> None:
    items = [
        FeedItem(
            "f", f"g{n}", f"Entry {n}", f"https://example.org/{n}", "", published=T0 - timedelta(minutes=n)
        )
        for n in range(1200)
    ]
    with Store(f"sqlite:///{tmp_path / 'state.db'}") as store:
        store.add_items(items, T0)
        ids = [e.id for e in store.entries_since(T0 - timedelta(days=1))]
        taken = {"a@example.org": set(ids[:700:3]), "b@example.org": set(ids[650:1100])}
        store.enqueue(
            [
                QueuedDigest(
                    email,
                    f"<{n}@x>",
                    T0,
                    T0 + timedelta(days=1),
                    tuple(sorted(got))[:10],
                    tuple(sorted(got))[10:],
                    "{}",
                )
                for n, (email, got) in enumerate(taken.items())
            ]
        )
        everyone = [*taken, *(f"s{n}@example.org" for n in range(600))]  # more than 500: all rows read
        found = store.taken_entries(everyone, ids)
        assert found["a@example.org"] == taken["a@example.org"]
        assert found["b@example.org"] == taken["b@example.org"]
        assert found["s1@example.org"] == set()
        assert store.taken_entries(["b@example.org"], ids[:700]) == {"b@example.org": set(ids[650:700])}

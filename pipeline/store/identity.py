"""Which stored entry a fetched item is: the identity rules, and the batch that applies them.

Identity, in this order:

1. within a feed an item is its guid (parse falls back to the link, then a hash): an item
   seen before with new content updates the stored entry, which is not new and is not sent
   again; two items of one feed with distinct guids stay distinct, even when their links are
   equal;
2. a new guid whose title and text equal those of an entry this feed carried under a guid
   that is no longer in the document is that entry (the feed changed its guids, for example
   when it moved from http to https);
3. across feeds, the same arXiv id or the same canonical link is the same entry, remembered
   with every feed that carried it.

Pruned entries (see :meth:`pipeline.store.Store.prune`) keep their identity, so they match
here and are never new again. The content hash tells an edit from a refetch of the same item;
the fingerprint (title and text) is what rule 2 compares.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, insert, select, update

from ..models import FeedItem
from .schema import entries_table, sources_table
from .sql import _chunks


class _FeedBatch:
    """One feed's items being stored: identities looked up in a few set queries, then decided
    item by item in memory (in document order, as if stored one at a time), then written in
    bulk: queries per item made a large feed far slower to store."""

    def __init__(self, conn: Connection, feed: str, items: list[FeedItem], now: datetime) -> None:
        self.conn, self.feed, self.items, self.now = conn, feed, items, now
        self.current = {item.guid for item in items}
        self.known: dict[str, tuple[int, str]] = {}  # guid -> entry id (negative: new), content hash

    def store(self) -> int:
        """Store the batch; return how many entries it created."""
        self._load_known()
        fresh = [item for item in self.items if item.guid not in self.known]
        renamed = self._renamed_candidates(fresh)
        same = self._same_item_candidates(fresh)
        created: list[tuple[FeedItem, str]] = []
        sources: list[tuple[str, int]] = []  # guid, entry id (negative: the new entry it names)
        edits: list[tuple[int, FeedItem, str]] = []
        for item in self.items:
            digest = _content_hash(item)
            if item.guid in self.known:
                entry_id, stored = self.known[item.guid]
                if stored == digest:
                    continue
                if entry_id < 0:  # a guid twice in one document: the later copy is kept
                    created[-entry_id - 1] = (item, digest)
                else:
                    edits.append((entry_id, item, digest))
                self.known[item.guid] = (entry_id, digest)
                continue
            found = renamed(item)
            if found is not None:
                edits.append((found, item, digest))  # a renamed entry may have a new link
            else:
                found = same(item)  # another feed's copy of the item: kept as it is
            if found is None:
                created.append((item, digest))
                found = -len(created)
            sources.append((item.guid, found))
            self.known[item.guid] = (found, digest)
        ids = self._insert_entries(created)
        if sources:
            self.conn.execute(
                insert(sources_table),
                [
                    {
                        "feed": self.feed,
                        "guid": guid,
                        "entry_id": ids[-eid - 1] if eid < 0 else eid,
                        "seen_at": self.now,
                        "last_seen": self.now,
                    }
                    for guid, eid in sources
                ],
            )
        self._apply_edits(edits)
        return len(created)

    def _load_known(self) -> None:
        for chunk in _chunks(sorted(self.current), 500):
            rows = self.conn.execute(
                select(sources_table.c.guid, sources_table.c.entry_id, entries_table.c.content_hash)
                .join(entries_table, entries_table.c.id == sources_table.c.entry_id)
                .where(sources_table.c.feed == self.feed, sources_table.c.guid.in_(chunk))
            )
            self.known.update({r.guid: (r.entry_id, r.content_hash) for r in rows})
            self.conn.execute(
                update(sources_table)
                .where(sources_table.c.feed == self.feed, sources_table.c.guid.in_(chunk))
                .values(last_seen=self.now)
            )

    def _renamed_candidates(self, fresh: list[FeedItem]) -> Callable[[FeedItem], int | None]:
        """Rule 2: an entry of this feed with the same title and text whose guids all left."""
        wanted = sorted({fp for item in fresh if (fp := _fingerprint(item))})
        by_print: dict[str, set[int]] = {}
        guids: dict[int, set[str]] = {}
        for chunk in _chunks(wanted, 500):
            for row in self.conn.execute(
                select(sources_table.c.entry_id, sources_table.c.guid, entries_table.c.fingerprint)
                .join(entries_table, entries_table.c.id == sources_table.c.entry_id)
                .where(sources_table.c.feed == self.feed, entries_table.c.fingerprint.in_(chunk))
            ):
                by_print.setdefault(row.fingerprint, set()).add(row.entry_id)
                guids.setdefault(row.entry_id, set()).add(row.guid)

        def find(item: FeedItem) -> int | None:
            fingerprint = _fingerprint(item)
            for entry_id in sorted(by_print.get(fingerprint or "", ())):
                if guids[entry_id].isdisjoint(self.current):
                    guids[entry_id].add(item.guid)  # it is in the document now
                    return entry_id
            return None

        return find

    def _same_item_candidates(self, fresh: list[FeedItem]) -> Callable[[FeedItem], int | None]:
        """Rule 3: an entry no item of this feed names yet, with the same arXiv id or link."""
        arxiv = sorted({i.arxiv_id for i in fresh if i.arxiv_id})
        links = sorted({i.link for i in fresh if i.link})
        by_key: dict[str, list[int]] = {}
        for column, values in ((entries_table.c.arxiv_id, arxiv), (entries_table.c.link, links)):
            for chunk in _chunks(values, 500):
                for row in self.conn.execute(select(entries_table.c.id, column).where(column.in_(chunk))):
                    by_key.setdefault(f"{column.name}:{row[1]}", []).append(row.id)
        candidates = sorted({eid for ids in by_key.values() for eid in ids})
        own: set[int] = set()
        for chunk in _chunks(candidates, 500):
            own.update(
                self.conn.execute(
                    select(sources_table.c.entry_id).where(
                        sources_table.c.feed == self.feed, sources_table.c.entry_id.in_(chunk)
                    )
                ).scalars()
            )

        def find(item: FeedItem) -> int | None:
            keys = [
                f"arxiv_id:{item.arxiv_id}" if item.arxiv_id else "",
                f"link:{item.link}" if item.link else "",
            ]
            for entry_id in sorted({eid for key in keys for eid in by_key.get(key, ())}):
                if entry_id not in own:
                    own.add(entry_id)  # this feed carries it now
                    return entry_id
            return None

        return find

    def _insert_entries(self, created: list[tuple[FeedItem, str]]) -> list[int]:
        if not created:
            return []
        result = self.conn.execute(
            insert(entries_table).returning(entries_table.c.id, sort_by_parameter_order=True),
            [
                {
                    "published": self.now,
                    **_entry_values(item),
                    "content_hash": digest,
                    "first_seen": self.now,
                    "updated_at": self.now,
                }
                for item, digest in created
            ],
        )
        return list(result.scalars())

    def _apply_edits(self, edits: list[tuple[int, FeedItem, str]]) -> None:
        """An edit (same identity, new content) updates the copy, unless it was pruned. Only
        the feed that first carried the entry edits it: otherwise two feeds with different
        copies of one paper would overwrite each other on every fetch."""
        first: dict[int, str] = {}
        for chunk in _chunks(sorted({entry_id for entry_id, _, _ in edits}), 500):
            rows = self.conn.execute(
                select(sources_table.c.entry_id, sources_table.c.feed)
                .where(sources_table.c.entry_id.in_(chunk))
                .order_by(sources_table.c.seen_at, sources_table.c.feed)
            )
            for row in rows:
                first.setdefault(row.entry_id, row.feed)
        for entry_id, item, digest in edits:
            if first.get(entry_id) != self.feed:
                continue
            self.conn.execute(
                update(entries_table)
                .where(
                    entries_table.c.id == entry_id,
                    entries_table.c.content_hash != digest,
                    entries_table.c.pruned_at.is_(None),
                )
                .values(**_entry_values(item), content_hash=digest, updated_at=self.now)
            )


def _entry_values(item: FeedItem) -> dict[str, Any]:
    values: dict[str, Any] = {
        "title": item.title,
        "link": item.link,
        "arxiv_id": item.arxiv_id,
        "summary_html": item.summary_html,
        "authors": list(item.authors),
        "categories": list(item.categories),
        "fingerprint": _fingerprint(item),
    }
    if item.published is not None:
        values["published"] = item.published
    return values


def _content_hash(item: FeedItem) -> str:
    """What an item says, to tell an edit from a refetch of the same item."""
    payload = json.dumps(
        [item.title, item.link, item.summary_html, item.authors, item.categories], ensure_ascii=False
    )
    return hashlib.sha256(payload.encode()).hexdigest()


def _fingerprint(item: FeedItem) -> str | None:
    """Title and text, to recognise an entry whose guid changed; None when there is no text
    (a title alone, such as "Weekly notes", says too little)."""
    return _fingerprint_of(item.title, item.summary_html)


def _fingerprint_of(title: str, summary_html: str) -> str | None:
    if not summary_html.strip():
        return None
    return hashlib.sha256(json.dumps([title, summary_html], ensure_ascii=False).encode()).hexdigest()

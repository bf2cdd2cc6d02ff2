"""The entries: storing a fetch's items, reading entries back, and pruning old ones.

Old entries are pruned in two steps (:meth:`Entries.prune`): after ``retain`` their text is
dropped and only their identity kept, so a feed that still carries them cannot make them new
again; the identity itself is forgotten once no feed has carried the item for ``retain``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, delete, func, select, update

from ..models import Entry, FeedItem
from .identity import _FeedBatch
from .schema import (
    FAILED,
    PENDING,
    SENDING,
    SENT,
    deliveries_table,
    entries_table,
    sources_table,
    taken_table,
)
from .sql import Transactions, _chunks, _serialise


class Entries(Transactions):
    """Entries and the feeds that carried them."""

    def add_items(self, items: Sequence[FeedItem], now: datetime) -> int:
        """Store one fetch's items (the whole document of each feed); return how many are new.

        Which stored entry an item is follows the identity rules of
        :mod:`pipeline.store.identity`; pruned entries keep their identity, so they are never
        new again.
        """
        if not items:
            return 0
        by_feed: dict[str, list[FeedItem]] = {}
        for item in items:
            by_feed.setdefault(item.feed, []).append(item)
        with self._tx() as conn:
            _serialise(conn, "entries")  # two fetches of one feed must not both create its entries
            return sum(_FeedBatch(conn, feed, batch, now).store() for feed, batch in by_feed.items())

    def prune(self, now: datetime, retain: timedelta) -> tuple[int, int, int]:
        """Prune old state; return (entries hollowed, identities forgotten, outbox rows dropped).

        An entry first seen more than ``retain`` ago loses its text (title and link stay) and
        is no longer offered to anyone, unless a digest holding it is still in the outbox. Its
        identity stays while any feed carries it and for ``retain`` after the last fetch that
        did, so an old item a feed still lists is recognised and never sent again. The entry
        with the highest id is never deleted: SQLite would hand its id out again, and an id
        in ``delivered_entries`` must never name a different entry.
        """
        cutoff = now - retain
        busy = (
            select(taken_table.c.entry_id)
            .join(deliveries_table, deliveries_table.c.id == taken_table.c.delivery_id)
            .where(deliveries_table.c.state.in_([PENDING, SENDING]))
        )
        with self._tx() as conn:
            _serialise(conn, "entries")
            hollowed = conn.execute(
                update(entries_table)
                .where(
                    entries_table.c.pruned_at.is_(None),
                    entries_table.c.first_seen < cutoff,
                    entries_table.c.id.not_in(busy),
                )
                .values(pruned_at=now, summary_html="", authors=[], categories=[])
            ).rowcount
            seen = select(sources_table.c.entry_id).where(sources_table.c.last_seen >= cutoff)
            newest = select(func.max(entries_table.c.id)).scalar_subquery()
            doomed = [
                row.id
                for row in conn.execute(
                    select(entries_table.c.id).where(
                        entries_table.c.pruned_at.is_not(None),
                        entries_table.c.id.not_in(seen),
                        entries_table.c.id < newest,
                    )
                )
            ]
            for chunk in _chunks(doomed, 500):
                conn.execute(delete(sources_table).where(sources_table.c.entry_id.in_(chunk)))
                conn.execute(delete(entries_table).where(entries_table.c.id.in_(chunk)))
            # A finished digest older than ``retain`` whose entries can no longer be offered to
            # anyone (all hollowed or gone) is forgotten with its taken rows: nothing can resurface.
            live = (
                select(taken_table.c.delivery_id)
                .join(entries_table, entries_table.c.id == taken_table.c.entry_id)
                .where(entries_table.c.pruned_at.is_(None))
            )
            old = [
                row.id
                for row in conn.execute(
                    select(deliveries_table.c.id).where(
                        deliveries_table.c.state.in_([SENT, FAILED]),
                        deliveries_table.c.created_at < cutoff,
                        deliveries_table.c.id.not_in(live),
                    )
                )
            ]
            for chunk in _chunks(old, 500):
                conn.execute(delete(taken_table).where(taken_table.c.delivery_id.in_(chunk)))
                conn.execute(delete(deliveries_table).where(deliveries_table.c.id.in_(chunk)))
        return hollowed, len(doomed), len(old)

    def entries_since(self, cutoff: datetime) -> list[Entry]:
        """Entries published (or, undated, first seen) at or after ``cutoff``, newest first."""
        with self._tx() as conn:
            rows = conn.execute(
                select(entries_table)
                .where(entries_table.c.published >= cutoff, entries_table.c.pruned_at.is_(None))
                .order_by(entries_table.c.published.desc(), entries_table.c.id.desc())
            ).all()
            return self._entries(conn, rows)

    def find_entry(self, *, link: str | None = None, arxiv_id: str | None = None) -> Entry | None:
        """The stored entry with this arXiv id, else the one with this link (the oldest if several)."""
        with self._tx() as conn:
            for column, value in ((entries_table.c.arxiv_id, arxiv_id), (entries_table.c.link, link)):
                if value:
                    row = conn.execute(
                        select(entries_table).where(column == value).order_by(entries_table.c.id).limit(1)
                    ).first()
                    if row is not None:
                        return self._entries(conn, [row])[0]
        return None

    def entries_by_id(self, ids: Iterable[int]) -> dict[int, Entry]:
        """The stored entries with these ids (missing or pruned ids are simply absent)."""
        wanted = sorted(set(ids))
        out: dict[int, Entry] = {}
        with self._tx() as conn:
            for chunk in _chunks(wanted, 500):
                rows = conn.execute(
                    select(entries_table).where(
                        entries_table.c.id.in_(chunk), entries_table.c.pruned_at.is_(None)
                    )
                ).all()
                out.update({e.id: e for e in self._entries(conn, rows)})
        return out

    @staticmethod
    def _entries(conn: Connection, rows: Sequence[Any]) -> list[Entry]:
        feeds: dict[int, list[str]] = {}
        ids = [row.id for row in rows]
        for chunk in _chunks(ids, 500):
            for src in conn.execute(
                select(sources_table.c.entry_id, sources_table.c.feed)
                .where(sources_table.c.entry_id.in_(chunk))
                .order_by(sources_table.c.seen_at, sources_table.c.feed)
            ):
                names = feeds.setdefault(src.entry_id, [])
                if src.feed not in names:
                    names.append(src.feed)
        return [
            Entry(
                id=row.id,
                title=row.title,
                link=row.link,
                summary_html=row.summary_html,
                authors=tuple(row.authors),
                categories=tuple(row.categories),
                published=row.published,
                first_seen=row.first_seen,
                feeds=tuple(feeds.get(row.id, ())),
                arxiv_id=row.arxiv_id,
            )
            for row in rows
        ]

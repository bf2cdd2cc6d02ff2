"""A reader's past digests, read back for their archive pages and Atom feed.

A digest sent is an outbox row (``deliveries``, state ``sent``) holding its spec: the
sections and the ids, scores and hits of its entries. So the archive keeps what the outbox
keeps: a row stays at least ``[digest] retain`` and is forgotten once none of its entries
can be offered again (:meth:`pipeline.store.entries.Entries.prune`). Entries older than
``retain`` lose their text first (title, link, date and feeds stay), and their identity
later: the archive shows what is left and says what is not.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select

from ..models import Entry
from .entries import Entries
from .outbox import _ROW_COLUMNS
from .records import OutboxRow
from .schema import SENT, deliveries_table, entries_table
from .sql import Transactions, _chunks


@dataclass(frozen=True, slots=True)
class SentDigest:
    """A digest the server accepted, with the spec it was rendered from."""

    row: OutboxRow
    spec: dict[str, Any]


@dataclass(frozen=True, slots=True)
class ArchivedEntries:
    """Stored entries by id; ``pruned``: those whose text is gone (older than ``retain``)."""

    entries: dict[int, Entry]
    pruned: frozenset[int]


class Archive(Transactions):
    """Sent digests by subscriber, and their entries, pruned ones included."""

    def sent_digests(self, subscriber: str, *, limit: int = 100) -> list[SentDigest]:
        """A subscriber's sent digests (as the config spells the address), newest first."""
        c = deliveries_table.c
        with self._tx() as conn:
            rows = conn.execute(
                select(*_ROW_COLUMNS, c.spec)
                .where(c.subscriber == subscriber, c.state == SENT)
                .order_by(c.created_at.desc(), c.id.desc())
                .limit(limit)
            ).all()
        return [_sent(row) for row in rows]

    def sent_digest(self, subscriber: str, delivery_id: int) -> SentDigest | None:
        """One of a subscriber's sent digests by its outbox id; None if it is not theirs, not
        sent, or forgotten."""
        c = deliveries_table.c
        with self._tx() as conn:
            row = conn.execute(
                select(*_ROW_COLUMNS, c.spec).where(
                    c.id == delivery_id, c.subscriber == subscriber, c.state == SENT
                )
            ).first()
        return _sent(row) if row is not None else None

    def archived_entries(self, ids: Iterable[int]) -> ArchivedEntries:
        """The stored entries with these ids, pruned ones too (with what they keep)."""
        wanted = sorted(set(ids))
        entries: dict[int, Entry] = {}
        pruned: set[int] = set()
        with self._tx() as conn:
            for chunk in _chunks(wanted, 500):
                rows = conn.execute(select(entries_table).where(entries_table.c.id.in_(chunk))).all()
                pruned.update(row.id for row in rows if row.pruned_at is not None)
                entries.update({e.id: e for e in Entries._entries(conn, rows)})
        return ArchivedEntries(entries, frozenset(pruned))


def _sent(row: Any) -> SentDigest:
    values = row._asdict()
    spec = values.pop("spec")
    return SentDigest(OutboxRow(**values), spec if isinstance(spec, dict) else json.loads(spec))

"""The subscribers: when each was last served, and which entries already went to them.

What went to whom is the ``delivered_entries`` table (one row per entry a digest listed) and
each digest's ``cut`` (the entries it only counted); the outbox writes both with the digest.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, func, select

from .records import SubscriberState
from .schema import deliveries_table, subscribers_table, taken_table
from .sql import Transactions, _chunks, _dialect_insert


class Subscribers(Transactions):
    """Per-subscriber state and the entries each has been sent."""

    def subscriber_states(self) -> dict[str, SubscriberState]:
        """Every subscriber the store has served or considered."""
        with self._tx() as conn:
            return {
                row.email: SubscriberState(**row._asdict()) for row in conn.execute(select(subscribers_table))
            }

    def taken_entries(
        self, emails: Iterable[str], entry_ids: Iterable[int], *, since: datetime | None = None
    ) -> dict[str, set[int]]:
        """For each subscriber, which of these entries already went (or are going) to them.

        That is the entries their digests showed, and those their digests created at or after
        ``since`` only counted in "and N more" (older ones cannot be offered again anyway).
        """
        emails = list(emails)
        ids = list(entry_ids)
        out: dict[str, set[int]] = {email: set() for email in emails}
        if not emails or not ids:
            return out
        few = len(emails) <= 500  # a preview or a send to a few: only their rows
        with self._tx() as conn:
            # A run over every subscriber reads hundreds of thousands of (subscriber, entry)
            # pairs: SQLite hands them over far faster as one string of ids per subscriber.
            grouped = conn.dialect.name == "sqlite"
            columns = (
                [taken_table.c.subscriber, func.group_concat(taken_table.c.entry_id)]
                if grouped
                else [taken_table.c.subscriber, taken_table.c.entry_id]
            )
            query = select(*columns)
            if few:
                query = query.where(taken_table.c.subscriber.in_(emails))
            for chunk in _chunks(ids, 500):
                chunked = query.where(taken_table.c.entry_id.in_(chunk))
                if grouped:
                    chunked = chunked.group_by(taken_table.c.subscriber)
                for subscriber, taken in conn.execute(chunked).all():
                    found = out.get(subscriber)
                    if found is None:
                        continue
                    if grouped:
                        found.update(map(int, taken.split(",")))
                    else:
                        found.add(taken)
            cut = select(deliveries_table.c.subscriber, deliveries_table.c.cut).where(
                deliveries_table.c.cut.is_not(None)
            )
            if since is not None:
                cut = cut.where(deliveries_table.c.created_at >= since)
            if few:
                cut = cut.where(deliveries_table.c.subscriber.in_(emails))
            wanted = set(ids)
            for subscriber, listed in conn.execute(cut):
                found = out.get(subscriber)
                if found is not None:
                    found.update(wanted.intersection(map(int, listed.split(","))))
        return out

    def mark_checked(self, emails: Iterable[str], now: datetime) -> None:
        """Remember that a real send considered these subscribers (it bounds their next lookback)."""
        rows = [{"email": email, "last_checked_at": now} for email in emails]
        if not rows:
            return
        with self._tx() as conn:
            statement = _dialect_insert(conn, subscribers_table)
            conn.execute(
                statement.on_conflict_do_update(
                    index_elements=["email"], set_={"last_checked_at": statement.excluded.last_checked_at}
                ),
                rows,
            )

    def mark_scheduled(self, email: str, fire_time: datetime) -> None:
        """Remember the last scheduled time served for a subscriber."""
        with self._tx() as conn:
            self._upsert_subscriber(conn, email, last_scheduled_at=fire_time)

    @staticmethod
    def _upsert_subscriber(conn: Connection, email: str, **values: Any) -> None:
        # One statement: with UPDATE-then-INSERT, two senders on PostgreSQL could both insert.
        statement = _dialect_insert(conn, subscribers_table).values(email=email, **values)
        conn.execute(statement.on_conflict_do_update(index_elements=["email"], set_=values))

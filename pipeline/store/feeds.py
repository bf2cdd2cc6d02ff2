"""The feeds table: what each configured feed's last fetches left (validators, health, alert).

Fetching reads it to send conditional requests and honour backoff; ``status`` and the admin
alert read its health. Its rows follow the config (:meth:`Feeds.sync_feeds`).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import case, func, insert, select, update

from .records import FeedState
from .schema import ALERT_RECOVERED, ALERT_SENT, entries_table, feeds_table, sources_table
from .sql import Transactions, _serialise


class Feeds(Transactions):
    """Feed state: one row per configured feed."""

    def feed_states(self) -> dict[str, FeedState]:
        """Every feed the store knows, with its entry count."""
        counts = (
            select(sources_table.c.feed, func.count().label("n"))
            .join(entries_table, entries_table.c.id == sources_table.c.entry_id)
            .where(entries_table.c.pruned_at.is_(None))
            .group_by(sources_table.c.feed)
            .subquery()
        )
        query = select(feeds_table, func.coalesce(counts.c.n, 0).label("entries")).outerjoin(
            counts, counts.c.feed == feeds_table.c.name
        )
        with self._tx() as conn:
            return {row.name: FeedState(**row._asdict()) for row in conn.execute(query)}

    def sync_feeds(self, configured: dict[str, str]) -> None:
        """Make the feeds table agree with the config: a changed URL resets the validators."""
        with self._tx() as conn:
            _serialise(conn, "feeds")
            known = {row.name: row for row in conn.execute(select(feeds_table))}
            for name, url in configured.items():
                row = known.get(name)
                if row is None:
                    conn.execute(
                        insert(feeds_table).values(
                            name=name, configured_url=url, url=url, failures=0, last_new=0
                        )
                    )
                elif row.configured_url != url:
                    # A new URL in the config starts afresh; an unchanged one keeps where a
                    # permanent redirect moved the feed (``url``).
                    conn.execute(
                        update(feeds_table)
                        .where(feeds_table.c.name == name)
                        .values(
                            configured_url=url,
                            url=url,
                            etag=None,
                            last_modified=None,
                            body_hash=None,
                            failures=0,
                            failing_since=None,
                            next_attempt_at=None,
                        )
                    )

    def record_fetch(
        self,
        feed: str,
        *,
        now: datetime,
        status: str,
        new: int = 0,
        error: str | None = None,
        etag: str | None = None,
        last_modified: str | None = None,
        url: str | None = None,
        next_attempt_at: datetime | None = None,
        body_hash: str | None = None,
    ) -> None:
        """Remember the outcome of one fetch (success when ``error`` is None).

        A success resets the failure count and, if the admin was told the feed fails, marks
        it "recovered" (to be told too); ``url`` is where a permanent redirect moved it.
        """
        values: dict[str, Any] = {
            "last_fetch_at": now,
            "last_status": status,
            "next_attempt_at": next_attempt_at,
        }
        if error is None:
            values.update(
                last_success_at=now,
                failures=0,
                failing_since=None,
                last_new=new,
                etag=etag,
                last_modified=last_modified,
                alert=case((feeds_table.c.alert == ALERT_SENT, ALERT_RECOVERED), else_=feeds_table.c.alert),
            )
            if body_hash is not None:
                values["body_hash"] = body_hash
            if url:
                values["url"] = url
        else:
            values.update(
                last_error=error,
                last_error_at=now,
                failures=feeds_table.c.failures + 1,
                failing_since=func.coalesce(feeds_table.c.failing_since, now),
            )
        with self._tx() as conn:
            conn.execute(update(feeds_table).where(feeds_table.c.name == feed).values(**values))

    def set_alert(self, feed: str, expected: str | None, new: str | None) -> bool:
        """Change a feed's alert state from ``expected`` to ``new`` atomically; False if it was
        not ``expected`` (another process got there first)."""
        current = feeds_table.c.alert.is_(None) if expected is None else feeds_table.c.alert == expected
        with self._tx() as conn:
            done = conn.execute(
                update(feeds_table).where(feeds_table.c.name == feed, current).values(alert=new)
            )
            return bool(done.rowcount)

    def touch_feed(self, feed: str, now: datetime) -> None:
        """The feed is unchanged (304, or the same bytes): the items of its last document are
        still carried, as far as pruning is concerned."""
        last = select(func.max(sources_table.c.last_seen)).where(sources_table.c.feed == feed)
        with self._tx() as conn:
            conn.execute(
                update(sources_table)
                .where(sources_table.c.feed == feed, sources_table.c.last_seen == last.scalar_subquery())
                .values(last_seen=now)
            )

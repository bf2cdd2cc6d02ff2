"""The state database: feeds, entries, subscribers and the delivery outbox (SQLAlchemy Core).

Entries and their identity: an item is known by (feed, guid) in ``entry_sources``; across feeds
the same arXiv id or canonical link is the same entry (see :meth:`Store.add_items`). Old
entries are pruned in two steps (:meth:`Store.prune`): after ``retain`` their text is dropped
and only their identity kept, so a feed that still carries them cannot make them new again;
the identity itself is forgotten once no feed has carried the item for ``retain``.

The ``meta`` table holds the schema version; a store opened on an older file upgrades it in
place (:func:`_upgrade`), and refuses a newer one.

Every change is one transaction per unit of work. A digest is written to the outbox, with its
entries marked as taken for that subscriber, in one transaction before it is sent; the
primary key on (subscriber, entry) makes it impossible for one entry to go into two digests
for the same person, even with two processes racing. SQLite runs in WAL mode with
``synchronous=FULL`` and a busy timeout, and every transaction starts with ``BEGIN IMMEDIATE``
so concurrent writers queue instead of failing on a lock upgrade.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    Column,
    Connection,
    DateTime,
    Engine,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    and_,
    case,
    create_engine,
    delete,
    event,
    func,
    insert,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.types import TypeDecorator

from .errors import StoreError
from .models import Entry, FeedItem

# 1: the first release. 2: feed health (last_error_at, failing_since, alert, body_hash),
# entry fingerprints and pruning (entries.fingerprint, entries.pruned_at), entry_sources.last_seen.
SCHEMA_VERSION = 3


class UTCDateTime(TypeDecorator[datetime]):
    """Aware datetimes in, aware UTC datetimes out, whatever the database keeps."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the store")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


metadata = MetaData()

meta_table = Table(
    "meta",
    metadata,
    Column("key", String(64), primary_key=True),
    Column("value", Text, nullable=False),
)

feeds_table = Table(
    "feeds",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("configured_url", Text, nullable=False),
    Column("url", Text, nullable=False),  # differs after a permanent redirect
    Column("etag", Text),
    Column("last_modified", Text),
    Column("last_fetch_at", UTCDateTime),
    Column("last_success_at", UTCDateTime),
    Column("last_status", String(64)),
    Column("last_error", Text),  # kept after a recovery, with its time, for `status`
    Column("failures", Integer, nullable=False, default=0),  # consecutive
    Column("next_attempt_at", UTCDateTime),  # not before this (backoff, Retry-After)
    Column("last_new", Integer, nullable=False, default=0),
    Column("last_error_at", UTCDateTime),
    Column("failing_since", UTCDateTime),  # first failure of the current run of failures
    Column("alert", String(16)),  # None, "sent" (admin told it fails), "recovered" (to tell)
    Column("body_hash", String(64)),  # sha256 of the last body parsed: same bytes, no parse
)

entries_table = Table(
    "entries",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("title", Text, nullable=False),
    Column("link", Text, index=True),
    Column("arxiv_id", String(64), index=True),
    Column("summary_html", Text, nullable=False),
    Column("authors", JSON, nullable=False),
    Column("categories", JSON, nullable=False),
    Column("published", UTCDateTime, nullable=False, index=True),
    Column("first_seen", UTCDateTime, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
    Column("content_hash", String(64), nullable=False),
    Column("fingerprint", String(64), index=True),  # title + text: recognises a changed guid
    Column("pruned_at", UTCDateTime),  # set: text dropped, only the identity is kept
    Index("ix_entries_first_seen", "first_seen"),
)

sources_table = Table(
    "entry_sources",
    metadata,
    Column("feed", String(64), primary_key=True),
    Column("guid", Text, primary_key=True),
    Column("entry_id", Integer, ForeignKey("entries.id", ondelete="CASCADE"), nullable=False, index=True),
    Column("seen_at", UTCDateTime, nullable=False),  # first seen in this feed
    Column("last_seen", UTCDateTime, index=True),  # last fetch of this feed that carried it
)

subscribers_table = Table(
    "subscribers",
    metadata,
    Column("email", String(320), primary_key=True),
    Column("last_digest_at", UTCDateTime),  # the last digest put in the outbox
    Column("last_checked_at", UTCDateTime),  # the last real send that considered them
    Column("last_scheduled_at", UTCDateTime),  # the last scheduled time served (scheduler)
)

deliveries_table = Table(
    "deliveries",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("subscriber", String(320), nullable=False, index=True),
    Column("message_id", String(255), nullable=False, unique=True),
    Column("created_at", UTCDateTime, nullable=False),
    Column("state", String(16), nullable=False),  # pending | sending | sent | failed
    Column("attempts", Integer, nullable=False, default=0),
    Column("next_attempt_at", UTCDateTime, nullable=False),
    Column("deliver_until", UTCDateTime, nullable=False),
    Column("lease_until", UTCDateTime),
    Column("claimed_by", String(255)),
    Column("last_error", Text),
    Column("sent_at", UTCDateTime),
    Column("spec", JSON, nullable=False),
    # Entries only counted in "and N more", as "id,id,...": taken too, but one row each would
    # be most of the table (they are read back with ``taken_entries``).
    Column("cut", Text),
    Index("ix_deliveries_due", "state", "next_attempt_at"),
)

taken_table = Table(
    "delivered_entries",
    metadata,
    Column("subscriber", String(320), primary_key=True),
    Column("entry_id", Integer, primary_key=True),
    Column(
        "delivery_id", Integer, ForeignKey("deliveries.id", ondelete="CASCADE"), nullable=False, index=True
    ),
    Column("shown", Boolean, nullable=False),  # False: counted in "and N more", not listed
)

leases_table = Table(
    "leases",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("holder", String(255), nullable=False),  # host:pid
    Column("acquired_at", UTCDateTime, nullable=False),
    Column("expires_at", UTCDateTime, nullable=False),
)

PENDING, SENDING, SENT, FAILED = "pending", "sending", "sent", "failed"
ALERT_SENT, ALERT_RECOVERED = "sent", "recovered"


@dataclass(frozen=True, slots=True)
class FeedState:
    """What the store remembers about one feed."""

    name: str
    url: str
    configured_url: str
    etag: str | None
    last_modified: str | None
    last_fetch_at: datetime | None
    last_success_at: datetime | None
    last_status: str | None
    last_error: str | None
    failures: int
    next_attempt_at: datetime | None
    last_new: int
    last_error_at: datetime | None = None
    failing_since: datetime | None = None
    alert: str | None = None
    body_hash: str | None = None
    entries: int = 0

    @property
    def moved(self) -> bool:
        """Whether a permanent redirect moved the feed away from its configured URL."""
        return self.url != self.configured_url


@dataclass(frozen=True, slots=True)
class SubscriberState:
    email: str
    last_digest_at: datetime | None
    last_checked_at: datetime | None
    last_scheduled_at: datetime | None


@dataclass(frozen=True, slots=True)
class OutboxRow:
    """A digest waiting in (or claimed from) the outbox."""

    id: int
    subscriber: str
    message_id: str
    created_at: datetime
    state: str
    attempts: int
    next_attempt_at: datetime
    deliver_until: datetime
    last_error: str | None


@dataclass(frozen=True, slots=True)
class NewDelivery:
    """A digest to put in the outbox: who, which entries (shown or only counted), and its spec."""

    subscriber: str
    message_id: str
    created_at: datetime
    deliver_until: datetime
    shown: tuple[int, ...]
    hidden: tuple[int, ...]
    spec: str  # JSON


def owner_id() -> str:
    """Who holds a claim: host and process, so a dead local holder can be recognised."""
    return f"{socket.gethostname()}:{os.getpid()}"


def _holder_is_dead(claimed_by: str | None) -> bool:
    if not claimed_by:
        return True
    host, _, pid = claimed_by.rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return False  # another machine's claim: only its lease can expire it
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def utcnow() -> datetime:
    return datetime.now(UTC)


class Store:
    """A handle on the state database; open one per process, close it when done."""

    def __init__(self, url: str) -> None:
        self.url = url
        try:
            self._turn = threading.RLock()
            self.engine = _engine(url)
            with self.engine.begin() as conn:
                _serialise(conn, "schema")  # two processes starting on a new database
                metadata.create_all(conn)
                version = conn.execute(
                    select(meta_table.c.value).where(meta_table.c.key == "schema")
                ).scalar()
                if version is None:
                    conn.execute(insert(meta_table).values(key="schema", value=str(SCHEMA_VERSION)))
                elif int(version) > SCHEMA_VERSION:
                    raise StoreError(
                        f"{url}: database schema {version} is newer than this digest ({SCHEMA_VERSION})"
                    )
                elif int(version) < SCHEMA_VERSION:
                    _upgrade(conn, int(version))
        except SQLAlchemyError as exc:
            raise StoreError(
                f"cannot open state database {_safe_url(url)}: {exc.__class__.__name__}: "
                f"{exc.args[0] if exc.args else exc}"
            ) from exc

    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def _tx(self) -> Iterator[Connection]:
        # Threads of this process take turns here: waiting in SQLite's busy handler instead
        # costs sleeps of up to 50 ms each (the sent-recorder and the claimer meet constantly).
        try:
            with self._turn, self.engine.begin() as conn:
                yield conn
        except SQLAlchemyError as exc:
            raise StoreError(f"state database error: {exc.__class__.__name__}: {exc}") from exc

    # --- feeds ---------------------------------------------------------------------------------

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

    # --- entries -------------------------------------------------------------------------------

    def add_items(self, items: Sequence[FeedItem], now: datetime) -> int:
        """Store one fetch's items (the whole document of each feed); return how many are new.

        Identity, in this order:

        1. within a feed an item is its guid (parse falls back to the link, then a hash): an
           item seen before with new content updates the stored entry, which is not new and
           is not sent again; two items of one feed with distinct guids stay distinct, even
           when their links are equal;
        2. a new guid whose title and text equal those of an entry this feed carried under a
           guid that is no longer in the document is that entry (the feed changed its guids,
           for example when it moved from http to https);
        3. across feeds, the same arXiv id or the same canonical link is the same entry,
           remembered with every feed that carried it.

        Pruned entries (see :meth:`prune`) keep their identity, so they match here and are
        never new again.
        """
        if not items:
            return 0
        by_feed: dict[str, list[FeedItem]] = {}
        for item in items:
            by_feed.setdefault(item.feed, []).append(item)
        with self._tx() as conn:
            _serialise(conn, "entries")  # two fetches of one feed must not both create its entries
            return sum(_FeedBatch(conn, feed, batch, now).store() for feed, batch in by_feed.items())

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

    # --- subscribers ---------------------------------------------------------------------------

    def subscriber_states(self) -> dict[str, SubscriberState]:
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
            # pairs: SQLite hands them over as one string of ids per subscriber, ~5x faster.
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

    # --- leases ------------------------------------------------------------------------------

    def acquire_lease(self, name: str, holder: str, now: datetime, ttl: timedelta) -> str | None:
        """Take the named lease; return None, or a description of the live holder that has it.

        A lease is free when nobody holds it, when it expired (its holder stopped renewing),
        or when its holder was a process on this machine that no longer exists.
        """
        with self._tx() as conn:
            _serialise(conn, "leases")
            row = conn.execute(select(leases_table).where(leases_table.c.name == name)).first()
            if (
                row is not None
                and row.holder != holder
                and row.expires_at > now
                and not _holder_is_dead(row.holder)
            ):
                return f"{row.holder}, since {row.acquired_at.isoformat(timespec='seconds')}"
            values = {"holder": holder, "acquired_at": now, "expires_at": now + ttl}
            if row is None:
                conn.execute(insert(leases_table).values(name=name, **values))
            else:
                conn.execute(update(leases_table).where(leases_table.c.name == name).values(**values))
            return None

    def renew_lease(self, name: str, holder: str, now: datetime, ttl: timedelta) -> bool:
        """Extend a lease we hold; False when another process has taken it."""
        with self._tx() as conn:
            done = conn.execute(
                update(leases_table)
                .where(leases_table.c.name == name, leases_table.c.holder == holder)
                .values(expires_at=now + ttl)
            )
            return bool(done.rowcount)

    def release_lease(self, name: str, holder: str) -> None:
        with self._tx() as conn:
            conn.execute(
                delete(leases_table).where(leases_table.c.name == name, leases_table.c.holder == holder)
            )

    # --- outbox --------------------------------------------------------------------------------

    def enqueue(self, deliveries: Sequence[NewDelivery]) -> list[NewDelivery]:
        """Commit digests to the outbox with their entries taken; return those that went in.

        A few bulk statements for any number of digests. Taken rows are inserted with
        ON CONFLICT DO NOTHING, then counted per digest: a digest that lost a row to a racing
        process (which took that entry for that person first) is removed again, whole, so
        racing senders never put one entry in two digests for the same person.
        """
        if not deliveries:
            return []
        with self._tx() as conn:
            _serialise(conn, "outbox")
            ids = [d.message_id for d in deliveries]
            present: set[str] = set()
            for chunk in _chunks(ids, 500):
                present.update(
                    conn.execute(
                        select(deliveries_table.c.message_id).where(deliveries_table.c.message_id.in_(chunk))
                    ).scalars()
                )
            todo = [d for d in deliveries if d.message_id not in present]
            if not todo:
                return []
            # Plain tuples straight to the driver: SQLAlchemy's per-row parameter processing
            # costs three times the inserts themselves (10^5 taken rows, JSON specs).
            mark = _mark(conn)
            when = _bind(conn, deliveries_table.c.created_at)
            json_mark = mark if conn.dialect.name == "sqlite" else f"CAST({mark} AS JSON)"
            conn.exec_driver_sql(
                "INSERT INTO deliveries (subscriber, message_id, created_at, state, attempts, "
                "next_attempt_at, deliver_until, spec, cut) "
                f"VALUES ({mark}, {mark}, {mark}, {mark}, 0, {mark}, {mark}, {json_mark}, {mark})",
                [
                    (
                        d.subscriber,
                        d.message_id,
                        when(d.created_at),
                        PENDING,
                        when(d.created_at),
                        when(d.deliver_until),
                        d.spec,
                        ",".join(map(str, d.hidden)) or None,
                    )
                    for d in todo
                ],
            )
            numbered: dict[str, int] = {}
            for chunk in _chunks([d.message_id for d in todo], 500):
                numbered.update(
                    conn.execute(
                        select(deliveries_table.c.message_id, deliveries_table.c.id).where(
                            deliveries_table.c.message_id.in_(chunk)
                        )
                    ).all()
                )
            delivery_ids = [numbered[d.message_id] for d in todo]
            rows = [
                (d.subscriber, eid, did, True)
                for d, did in zip(todo, delivery_ids, strict=True)
                for eid in d.shown
            ]
            if rows:
                conn.exec_driver_sql(
                    "INSERT INTO delivered_entries (subscriber, entry_id, delivery_id, shown) "
                    f"VALUES ({mark}, {mark}, {mark}, {mark}) ON CONFLICT DO NOTHING",
                    rows,
                )
            counts: dict[int, int] = {}
            for chunk in _chunks(delivery_ids, 500):
                found = conn.execute(
                    select(taken_table.c.delivery_id, func.count())
                    .where(taken_table.c.delivery_id.in_(chunk))
                    .group_by(taken_table.c.delivery_id)
                )
                counts.update((row[0], row[1]) for row in found)
            accepted, lost = [], []
            for d, did in zip(todo, delivery_ids, strict=True):
                if counts.get(did, 0) == len(d.shown):
                    accepted.append(d)
                else:
                    lost.append(did)
            for chunk in _chunks(lost, 500):
                conn.execute(delete(taken_table).where(taken_table.c.delivery_id.in_(chunk)))
                conn.execute(delete(deliveries_table).where(deliveries_table.c.id.in_(chunk)))
            if accepted:
                statement = _dialect_insert(conn, subscribers_table)
                conn.execute(
                    statement.on_conflict_do_update(
                        index_elements=["email"], set_={"last_digest_at": statement.excluded.last_digest_at}
                    ),
                    [{"email": d.subscriber, "last_digest_at": d.created_at} for d in accepted],
                )
        return accepted

    def count_due(self, now: datetime) -> int:
        """How many outbox rows a ``claim`` at ``now`` could take (a hint for progress bars)."""
        with self._tx() as conn:
            return int(conn.execute(select(func.count()).where(self._due(now))).scalar_one())

    @staticmethod
    def _due(now: datetime) -> Any:
        return or_(
            and_(deliveries_table.c.state == PENDING, deliveries_table.c.next_attempt_at <= now),
            and_(deliveries_table.c.state == SENDING, deliveries_table.c.lease_until < now),
        )

    def claim(self, now: datetime, *, lease: timedelta, owner: str, limit: int = 100) -> list[OutboxRow]:
        """Atomically take up to ``limit`` due rows (pending -> sending, with a lease).

        Due: sending rows whose lease expired or whose holder is a process on this machine
        that no longer exists (a crashed ``send``: its digests go out again, with the same
        Message-ID), then pending rows whose next attempt has come, earliest first.
        """
        c = deliveries_table.c
        # Each query walks an index in order and stops at the limit. (One query with an OR of
        # the two kinds, by id, made SQLite collect and sort every due row at each claim, so a
        # claim cost more the larger the send: 2.07 ms of CPU at 2,000 digests, 2.44 at
        # 10,000; now ~1.95 at both.)
        expired = select(c.id).where(c.state == SENDING, c.lease_until < now).order_by(c.id).limit(limit)
        orphans = select(c.id, c.claimed_by).where(
            c.state == SENDING, c.lease_until >= now, c.claimed_by != owner
        )
        pending = (
            select(c.id).where(c.state == PENDING, c.next_attempt_at <= now).order_by(c.next_attempt_at, c.id)
        )
        with self._tx() as conn:
            if conn.dialect.name == "postgresql":  # SQLite serialises writers with BEGIN IMMEDIATE
                expired = expired.with_for_update(skip_locked=True)
                orphans = orphans.with_for_update(skip_locked=True)
                pending = pending.with_for_update(skip_locked=True)
            ids = list(conn.execute(expired).scalars())
            ids += [row.id for row in conn.execute(orphans) if _holder_is_dead(row.claimed_by)]
            ids = ids[:limit]
            if len(ids) < limit:
                ids += conn.execute(pending.limit(limit - len(ids))).scalars()
            if not ids:
                return []
            conn.execute(
                update(deliveries_table)
                .where(deliveries_table.c.id.in_(ids))
                .values(
                    state=SENDING,
                    lease_until=now + lease,
                    claimed_by=owner,
                    attempts=deliveries_table.c.attempts + 1,
                )
            )
            rows = conn.execute(
                select(*_ROW_COLUMNS).where(deliveries_table.c.id.in_(ids)).order_by(deliveries_table.c.id)
            )
            return [_outbox_row(row) for row in rows]

    def renew(self, ids: Sequence[int], until: datetime, owner: str) -> None:
        """Extend the lease on rows this process still holds."""
        if ids:
            with self._tx() as conn:
                conn.execute(
                    update(deliveries_table)
                    .where(
                        deliveries_table.c.id.in_(list(ids)),
                        deliveries_table.c.state == SENDING,
                        deliveries_table.c.claimed_by == owner,
                    )
                    .values(lease_until=until)
                )

    def mark_retry(self, delivery_id: int, error: str, next_attempt_at: datetime) -> None:
        with self._tx() as conn:
            conn.execute(
                update(deliveries_table)
                .where(deliveries_table.c.id == delivery_id)
                .values(
                    state=PENDING,
                    next_attempt_at=next_attempt_at,
                    lease_until=None,
                    last_error=error,
                )
            )

    def mark_failed(self, delivery_id: int, error: str) -> None:
        with self._tx() as conn:
            conn.execute(
                update(deliveries_table)
                .where(deliveries_table.c.id == delivery_id)
                .values(
                    state=FAILED,
                    lease_until=None,
                    last_error=error,
                )
            )

    def deliveries(self, states: Sequence[str], limit: int = 1000) -> list[OutboxRow]:
        """Outbox rows in these states, oldest first."""
        with self._tx() as conn:
            rows = conn.execute(
                select(*_ROW_COLUMNS)
                .where(deliveries_table.c.state.in_(list(states)))
                .order_by(deliveries_table.c.id)
                .limit(limit)
            )
            return [_outbox_row(row) for row in rows]

    def specs(self, ids: Iterable[int]) -> dict[int, dict[str, Any]]:
        """What the outbox rows with these ids hold (sections, entries, scores, hits)."""
        out: dict[int, dict[str, Any]] = {}
        with self._tx() as conn:
            for chunk in _chunks(sorted(set(ids)), 500):
                rows = conn.execute(
                    select(deliveries_table.c.id, deliveries_table.c.spec).where(
                        deliveries_table.c.id.in_(chunk)
                    )
                )
                out.update(
                    (row.id, row.spec if isinstance(row.spec, dict) else json.loads(row.spec)) for row in rows
                )
        return out

    def delivery_counts(self) -> dict[str, int]:
        with self._tx() as conn:
            rows = conn.execute(
                select(deliveries_table.c.state, func.count()).group_by(deliveries_table.c.state)
            )
            return {row[0]: row[1] for row in rows}


def _dialect_insert(conn: Connection, table: Table) -> Any:
    """An INSERT that knows ON CONFLICT, for the connection's database."""
    if conn.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as postgresql_insert  # 70 ms: only if used

        return postgresql_insert(table)
    return sqlite_insert(table)


def _serialise(conn: Connection, what: str) -> None:
    """Hold a lock on ``what`` until the transaction ends, where reading then inserting races.

    SQLite needs nothing: every transaction starts with BEGIN IMMEDIATE, one writer at a time.
    On PostgreSQL two transactions could both see a row missing and both insert it.
    """
    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(hashtext(:what))"), {"what": f"digest:{what}"})


# An outbox row without its spec: most claims are of digests the sender planned itself.
_ROW_COLUMNS = [deliveries_table.c[name] for name in OutboxRow.__dataclass_fields__]


def _outbox_row(row: Any) -> OutboxRow:
    return OutboxRow(**row._asdict())


class _FeedBatch:
    """One feed's items being stored: identities looked up in a few set queries, then decided
    item by item in memory (in document order, as if stored one at a time), then written in
    bulk. Per-item queries cost ~5 ms an item, 2.5 s for a 500-entry feed."""

    def __init__(self, conn: Connection, feed: str, items: list[FeedItem], now: datetime) -> None:
        self.conn, self.feed, self.items, self.now = conn, feed, items, now
        self.current = {item.guid for item in items}
        self.known: dict[str, tuple[int, str]] = {}  # guid -> entry id (negative: new), content hash

    def store(self) -> int:
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


def _upgrade(conn: Connection, version: int) -> None:
    """Bring a database written by an older digest up to :data:`SCHEMA_VERSION`, in place."""
    if version < 2:
        added = {
            feeds_table: ("last_error_at", "failing_since", "alert", "body_hash"),
            entries_table: ("fingerprint", "pruned_at"),
            sources_table: ("last_seen",),
        }
        for table, names in added.items():
            for name in names:
                column = table.c[name]
                kind = column.type.compile(dialect=conn.dialect)
                conn.exec_driver_sql(f"ALTER TABLE {table.name} ADD COLUMN {name} {kind}")
        for table in added:
            for index in table.indexes:
                index.create(conn, checkfirst=True)
        conn.execute(update(sources_table).values(last_seen=sources_table.c.seen_at))
        rows = conn.execute(select(entries_table.c.id, entries_table.c.title, entries_table.c.summary_html))
        for row in rows.all():
            conn.execute(
                update(entries_table)
                .where(entries_table.c.id == row.id)
                .values(fingerprint=_fingerprint_of(row.title, row.summary_html))
            )
    if version < 3:
        conn.exec_driver_sql("ALTER TABLE deliveries ADD COLUMN cut TEXT")
    conn.execute(update(meta_table).where(meta_table.c.key == "schema").values(value=str(SCHEMA_VERSION)))


def _chunks(values: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(values), size):
        yield values[start : start + size]


def _safe_url(url: str) -> str:
    """The URL without a password, for messages."""
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        return f"{scheme}://***@{rest.rsplit('@', 1)[1]}"
    return url


class SentMarker:
    """Marks outbox rows sent, for the one thread that records the server's acceptances
    (``run.SentRecorder``: a commit per accepted message, or per few, in a large send).

    It holds one connection and writes at driver level: a commit costs ~0.3 ms of CPU
    instead of ~0.55 through ``Store._tx`` (pool trip, statement compilation per call).
    """

    def __init__(self, store: Store) -> None:
        self.store = store
        self.conn: Connection | None = None
        self.sent_at: Callable[[Any], Any] = lambda value: value

    def __call__(self, ids: Sequence[int], now: datetime) -> None:
        if not ids:
            return
        try:
            if self.conn is None:
                self.conn = self.store.engine.connect()
                self.sent_at = _bind(self.conn, deliveries_table.c.sent_at)
            mark = _mark(self.conn)
            with self.store._turn, self.conn.begin():
                self.conn.exec_driver_sql(
                    f"UPDATE deliveries SET state = {mark}, sent_at = {mark}, lease_until = NULL, "
                    f"last_error = NULL WHERE id IN ({', '.join([mark] * len(ids))})",
                    (SENT, self.sent_at(now), *ids),
                )
        except SQLAlchemyError as exc:
            self.close()  # the next call starts on a new connection
            raise StoreError(f"state database error: {exc.__class__.__name__}: {exc}") from exc

    def close(self) -> None:
        if self.conn is not None:
            with contextlib.suppress(SQLAlchemyError):
                self.conn.close()
            self.conn = None


def _mark(conn: Connection) -> str:
    """The driver's placeholder, for statements sent at driver level."""
    return "?" if conn.dialect.paramstyle == "qmark" else "%s"


def _bind(conn: Connection, column: Column[Any]) -> Callable[[Any], Any]:
    """What the driver is given for a value of ``column`` (as SQLAlchemy would convert it)."""
    processor = column.type.bind_processor(conn.dialect)
    return processor if processor is not None else lambda value: value


_BUSY_SECONDS = 30  # how long a connection waits for another's write to finish


def _wal(cursor: sqlite3.Cursor) -> None:
    """Switch the database to write-ahead logging (a no-op once it is).

    Two connections switching a new file at once can deadlock on its locks; SQLite then answers
    "database is locked" at once, without waiting in the busy handler, so the loser tries again.
    """
    deadline = time.monotonic() + _BUSY_SECONDS
    while True:
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if exc.sqlite_errorcode & 0xFF != sqlite3.SQLITE_BUSY or time.monotonic() > deadline:
                raise
            time.sleep(0.005)


def _engine(url: str) -> Engine:
    if url.startswith("sqlite:///"):
        path = url.removeprefix("sqlite:///")
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": _BUSY_SECONDS})

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_connection: Any, _record: Any) -> None:
            # Take transaction control from the driver so BEGIN IMMEDIATE and SAVEPOINT work.
            dbapi_connection.isolation_level = None
            cursor = dbapi_connection.cursor()
            _wal(cursor)
            cursor.execute("PRAGMA synchronous=FULL")
            cursor.execute(f"PRAGMA busy_timeout={_BUSY_SECONDS * 1000}")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.close()

        @event.listens_for(engine, "begin")
        def _begin(conn: Connection) -> None:
            conn.exec_driver_sql("BEGIN IMMEDIATE")

        return engine
    return create_engine(url, pool_pre_ping=True)

"""The state database: feeds, entries, subscribers and the delivery outbox (SQLAlchemy Core).

Entries and their identity: an item is known by (feed, guid) in ``entry_sources``; across feeds
the same arXiv id or canonical link is the same entry (the rules are in
:mod:`pipeline.store.identity`). Old entries are pruned in two steps (:meth:`Store.prune`):
after ``retain`` their text is dropped and only their identity kept, so a feed that still
carries them cannot make them new again; the identity itself is forgotten once no feed has
carried the item for ``retain``.

The ``meta`` table holds the schema version; a store opened on an older file upgrades it in
place (:mod:`pipeline.store.migrate`), and refuses a newer one.

Every change is one transaction per unit of work. A digest is written to the outbox, with its
entries marked as taken for that subscriber, in one transaction before it is sent; the
primary key on (subscriber, entry) makes it impossible for one entry to go into two digests
for the same person, even with two processes racing. SQLite runs in WAL mode with
``synchronous=FULL`` and a busy timeout, and every transaction starts with ``BEGIN IMMEDIATE``
so concurrent writers queue instead of failing on a lock upgrade.

The parts, one file each: ``schema`` (tables, states), ``records`` (what callers get),
``sqlite`` (opening the engine), ``sql`` (the transaction, dialect helpers), ``migrate``,
``feeds``, ``entries`` with ``identity``, ``subscribers``, ``leases`` and ``outbox``;
:class:`Store` puts the per-topic parts together.
"""

from __future__ import annotations

import threading

from sqlalchemy import Connection, insert, inspect, select
from sqlalchemy.exc import SQLAlchemyError

from ..errors import StoreError
from .archive import Archive, ArchivedEntries, SentDigest
from .bounces import BouncedDelivery, BounceEvent, Bounces, BounceTally, Suppression
from .entries import Entries
from .feeds import Feeds
from .leases import Leases, LeaseState, host_id, owner_id
from .migrate import _upgrade
from .outbox import Outbox, SentMarker
from .readers import ReaderChoices, Readers
from .records import FeedState, OutboxRow, QueuedDigest, SubscriberState
from .schema import (
    ALERT_RECOVERED,
    ALERT_SENT,
    FAILED,
    PENDING,
    SCHEMA_VERSION,
    SENDING,
    SENT,
    meta_table,
    metadata,
    utcnow,
)
from .signups import Signup, Signups
from .slots import Slots
from .sql import _serialise
from .sqlite import (
    _engine,
    _safe_url,
    check_sqlite_file,
    create_sqlite_file,
    database_error,
    foreign_database,
    sqlite_file,
)
from .subscribers import Subscribers
from .votes import VOTES, Vote, VoteCounts, VoteKind, Votes, voter
from .workers import Workers, WorkerState

__all__ = [
    "ALERT_RECOVERED",
    "ALERT_SENT",
    "FAILED",
    "PENDING",
    "SCHEMA_VERSION",
    "SENDING",
    "SENT",
    "VOTES",
    "ArchivedEntries",
    "BounceEvent",
    "BounceTally",
    "BouncedDelivery",
    "FeedState",
    "LeaseState",
    "OutboxRow",
    "QueuedDigest",
    "ReaderChoices",
    "SentDigest",
    "SentMarker",
    "Signup",
    "Store",
    "SubscriberState",
    "Suppression",
    "Vote",
    "VoteCounts",
    "VoteKind",
    "WorkerState",
    "host_id",
    "owner_id",
    "utcnow",
    "voter",
]


class Store(
    Feeds, Entries, Subscribers, Leases, Outbox, Readers, Slots, Workers, Votes, Archive, Bounces, Signups
):
    """A handle on the state database; open one per process, close it when done.

    A state file that exists but holds no digest state (0 bytes, or another program's tables)
    is refused with a :class:`StoreError` saying what to do, never taken for a first run.
    """

    def __init__(self, url: str) -> None:
        self.url = url
        file = sqlite_file(url)
        try:
            self._turn = threading.RLock()
            if file is not None:
                check_sqlite_file(file)
                if not file.exists():
                    create_sqlite_file(file, lambda conn: self._open(conn, new=True))
            self.engine = _engine(url)
            with self.engine.begin() as conn:
                self._open(conn, new=file is None)
        except SQLAlchemyError as exc:
            raise StoreError(database_error(url, exc, opening=True)) from exc

    def _open(self, conn: Connection, *, new: bool) -> None:
        """Create the tables of a new database, or check and upgrade those of an existing one.

        ``new``: a database that may hold nothing yet (a file being created, or a server
        database); there, only our own tables without ``meta`` mean another program's data.
        """
        _serialise(conn, "schema")  # two processes starting on a new database
        tables = set(inspect(conn).get_table_names())
        if "meta" not in tables and (tables & set(metadata.tables) if new else True):
            raise foreign_database(str(sqlite_file(self.url) or _safe_url(self.url)), tables=bool(tables))
        metadata.create_all(conn)
        version = conn.execute(select(meta_table.c.value).where(meta_table.c.key == "schema")).scalar()
        if version is None:
            conn.execute(insert(meta_table).values(key="schema", value=str(SCHEMA_VERSION)))
        elif int(version) > SCHEMA_VERSION:
            raise StoreError(
                f"{_safe_url(self.url)}: database schema {version} is newer than this digest "
                f"({SCHEMA_VERSION})"
            )
        elif int(version) < SCHEMA_VERSION:
            _upgrade(conn, int(version))

    def close(self) -> None:
        """Close the database's connections."""
        self.engine.dispose()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

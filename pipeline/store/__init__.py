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

from sqlalchemy import insert, select
from sqlalchemy.exc import SQLAlchemyError

from ..errors import StoreError
from .entries import Entries
from .feeds import Feeds
from .leases import Leases, owner_id
from .migrate import _upgrade
from .outbox import Outbox, SentMarker
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
from .sql import _serialise
from .sqlite import _engine, _safe_url
from .subscribers import Subscribers

__all__ = [
    "ALERT_RECOVERED",
    "ALERT_SENT",
    "FAILED",
    "PENDING",
    "SCHEMA_VERSION",
    "SENDING",
    "SENT",
    "FeedState",
    "OutboxRow",
    "QueuedDigest",
    "SentMarker",
    "Store",
    "SubscriberState",
    "owner_id",
    "utcnow",
]


class Store(Feeds, Entries, Subscribers, Leases, Outbox):
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
        """Close the database's connections."""
        self.engine.dispose()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

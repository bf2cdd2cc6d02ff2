"""Opening the database: SQLite in WAL mode, with full sync and a busy timeout; other URLs as given.

SQLite gets ``synchronous=FULL`` (a committed digest survives a power cut), foreign keys, a
busy timeout so a writer waits for another instead of failing, and ``BEGIN IMMEDIATE`` on every
transaction so that the write lock is taken up front: a transaction that first read and then
tried to upgrade its lock could fail at once, whatever the timeout.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event

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
    """An engine for ``url``, set up as described above when it is SQLite."""
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


def _safe_url(url: str) -> str:
    """The URL without a password, for messages."""
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        return f"{scheme}://***@{rest.rsplit('@', 1)[1]}"
    return url

"""Opening the database: SQLite in WAL mode, with full sync and a busy timeout; other URLs as given.

SQLite gets ``synchronous=FULL`` (a committed digest survives a power cut), foreign keys, a
busy timeout so a writer waits for another instead of failing, and ``BEGIN IMMEDIATE`` on every
transaction so that the write lock is taken up front: a transaction that first read and then
tried to upgrade its lock could fail at once, whatever the timeout.

**A state file is never empty.** A missing file is a first run; a new one is built beside the
final name and linked into place whole (:func:`create_sqlite_file`), so an existing file of
0 bytes was emptied by someone (a full disk, ``> state.db``) and is refused instead of being
taken for a first run, which would send every entry within ``lookback`` again, to everyone.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.exc import DBAPIError, SQLAlchemyError

from ..errors import StoreError

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


# What a damaged or foreign state file leaves its owner to do (and what the second costs).
_WHAT_TO_DO = (
    "restore it from a backup, or delete it to start afresh (a fresh state knows nothing of "
    "what was sent: every entry within [digest] lookback goes to everyone again)"
)
_CORRUPT = (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB)


def sqlite_file(url: str) -> Path | None:
    """The file an SQLite URL names (None for other databases and in-memory ones)."""
    if not url.startswith("sqlite:///"):
        return None
    path = url.removeprefix("sqlite:///").partition("?")[0]
    return Path(path) if path and path != ":memory:" else None


def create_sqlite_file(path: Path, initialise: Callable[[Connection], None]) -> None:
    """Make a new state file at ``path``, whole: built under another name, then linked into place.

    ``initialise`` writes the tables and the schema version. Two processes starting at once
    both build one; the first link wins and the other's copy is dropped. A file that is
    already there is left alone.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    draft = path.with_name(f".{path.name}.new-{os.getpid()}-{threading.get_ident()}")
    for leftover in (draft, Path(f"{draft}-wal"), Path(f"{draft}-shm")):
        leftover.unlink(missing_ok=True)
    engine = _engine(f"sqlite:///{draft}")
    try:
        with engine.begin() as conn:
            initialise(conn)
    finally:
        engine.dispose()  # the last connection checkpoints and removes the write-ahead log
    try:
        os.link(draft, path)  # fails if the name exists: never replaces a state file
    except FileExistsError:
        pass
    except OSError:  # a file system without hard links
        if not path.exists():
            draft.replace(path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            draft.unlink()


def check_sqlite_file(path: Path) -> None:
    """Refuse an existing state file that holds no digest state: empty (0 bytes), someone
    else's tables, or unreadable. Looked at with a plain connection: nothing in it changes."""
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return  # a first run
    if size == 0:
        raise StoreError(
            f"state file {path} is empty (0 bytes): it holds no record of what was sent. "
            f"Do not run digest on it: {_WHAT_TO_DO}"
        )
    try:
        with contextlib.closing(sqlite3.connect(path, timeout=_BUSY_SECONDS)) as db:
            tables = {name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    except sqlite3.Error as exc:
        raise StoreError(_driver_error(str(path), exc, opening=True)) from exc
    if "meta" not in tables:
        raise foreign_database(str(path), tables=bool(tables))


def foreign_database(where: str, *, tables: bool) -> StoreError:
    """The error for an existing database without digest's ``meta`` table (someone else's, or emptied)."""
    holds = "it holds tables but no digest `meta` table" if tables else "it holds no tables at all"
    return StoreError(
        f"state database {where} is not a digest state: {holds}. Check [digest] database; "
        f"if it is the right file, {_WHAT_TO_DO}"
    )


def database_error(url: str, exc: SQLAlchemyError, *, opening: bool = False) -> str:
    """What went wrong, for people: the database named, the driver's words, never the SQL."""
    where = str(sqlite_file(url) or _safe_url(url))
    original = exc.orig if isinstance(exc, DBAPIError) else None
    if original is not None:
        return _driver_error(where, original, opening=opening)
    detail = str(exc).partition("\n")[0]
    return f"{'cannot open ' if opening else ''}state database {where}: {type(exc).__name__}: {detail}"


def _driver_error(where: str, exc: BaseException, *, opening: bool) -> str:
    code = getattr(exc, "sqlite_errorcode", None)
    if isinstance(code, int) and code & 0xFF in _CORRUPT:
        return (
            f"state database {where} is corrupted ({exc}). Stop digest and {_WHAT_TO_DO}; "
            f"`sqlite3 {where} .recover | sqlite3 NEW.db` may save most of it"
        )
    return f"{'cannot open ' if opening else ''}state database {where}: {type(exc).__name__}: {exc}"

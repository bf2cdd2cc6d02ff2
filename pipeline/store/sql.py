"""What every part of the store writes SQL through: its transaction and a few helpers.

The helpers hide what differs between SQLite and PostgreSQL (ON CONFLICT inserts, the lock
that serialises read-then-insert, the driver's placeholder) and bound the size of IN lists.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Column, Connection, Engine, Table, text
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import SQLAlchemyError

from ..errors import StoreError
from .sqlite import database_error


class Transactions:
    """The engine and the one transaction per unit of work that every part of the store uses."""

    url: str
    engine: Engine
    _turn: threading.RLock  # threads of this process take turns at writing

    @contextmanager
    def _tx(self) -> Iterator[Connection]:
        # Threads of this process take turns here: waiting in SQLite's busy handler instead
        # means sleeps far longer than a commit (the sent-recorder and the claimer meet constantly).
        try:
            with self._turn, self.engine.begin() as conn:
                yield conn
        except SQLAlchemyError as exc:
            # (naming the database and what the driver said: a corrupted file, a full disk;
            # never the SQL statement and its parameters)
            raise StoreError(database_error(self.url, exc)) from exc


def _dialect_insert(conn: Connection, table: Table) -> Any:
    """An INSERT that knows ON CONFLICT, for the connection's database."""
    if conn.dialect.name == "postgresql":
        # Imported only when used: importing it is slow, and most stores are SQLite.
        from sqlalchemy.dialects.postgresql import insert as postgresql_insert

        return postgresql_insert(table)
    return sqlite_insert(table)


def _serialise(conn: Connection, what: str) -> None:
    """Hold a lock on ``what`` until the transaction ends, where reading then inserting races.

    SQLite needs nothing: every transaction starts with BEGIN IMMEDIATE, one writer at a time.
    On PostgreSQL two transactions could both see a row missing and both insert it.
    """
    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(hashtext(:what))"), {"what": f"digest:{what}"})


def _mark(conn: Connection) -> str:
    """The driver's placeholder, for statements sent at driver level."""
    return "?" if conn.dialect.paramstyle == "qmark" else "%s"


def _bind(conn: Connection, column: Column[Any]) -> Callable[[Any], Any]:
    """What the driver is given for a value of ``column`` (as SQLAlchemy would convert it)."""
    processor = column.type.bind_processor(conn.dialect)
    return processor if processor is not None else lambda value: value


def _chunks(values: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    """``values`` in slices of ``size``, to keep IN lists under the databases' bounds."""
    for start in range(0, len(values), size):
        yield values[start : start + size]

"""The task engine: a procrastinate App on the state database, and both schemas applied at start.

procrastinate keeps its jobs in tables of the same PostgreSQL database as digest's state, so
one database is the only moving part. Its schema file is not idempotent (CREATE TABLE, CREATE
TYPE): workers starting together take a transaction-level advisory lock, look whether its
tables exist, and apply it only if not; the first applies it, the others then see it.
"""

from __future__ import annotations

import psycopg
from procrastinate import App, PsycopgConnector
from procrastinate.schema import SchemaManager

from ..errors import WorkerError
from ..store.sqlite import _safe_url
from .database import conninfo

SCHEMA_LOCK = "digest:procrastinate-schema"


def make_app(database_url: str, concurrency: int) -> App:
    """A procrastinate App on the state database (not opened yet)."""
    # Jobs each hold a connection while they defer others; the side tasks (heartbeat,
    # listener, deferrer of periodic tasks) hold a few more.
    connector = PsycopgConnector(conninfo=conninfo(database_url), min_size=1, max_size=concurrency + 4)
    return App(connector=connector)


def apply_engine_schema(database_url: str) -> bool:
    """Create procrastinate's tables unless they exist; True when this call created them.

    Safe with several workers starting at once: the check and the creation happen under one
    advisory lock, in one transaction.
    """
    try:
        with psycopg.connect(conninfo(database_url)) as conn, conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (SCHEMA_LOCK,))
            found = conn.execute("SELECT to_regclass('procrastinate_jobs')").fetchone()
            if found is not None and found[0] is not None:
                return False
            conn.execute(SchemaManager.get_schema())  # (several statements, no parameters)
            return True
    except psycopg.Error as exc:
        raise WorkerError(f"cannot set up the task tables in {_safe_url(database_url)}: {exc}") from exc

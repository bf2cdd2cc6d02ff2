"""Upgrading a database written by an older digest, in place, when the store opens it.

The ``meta`` table holds the schema version. Each step adds the columns and indexes its
version introduced and fills them in from what is already stored; a database newer than
this digest is refused by :class:`pipeline.store.Store` instead.
"""

from __future__ import annotations

from sqlalchemy import Connection, select, update

from .identity import _fingerprint_of
from .schema import (
    SCHEMA_VERSION,
    entries_table,
    feeds_table,
    meta_table,
    sources_table,
    subscribers_table,
)


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
    if version < 4:
        conn.exec_driver_sql("ALTER TABLE deliveries ADD COLUMN unconfirmed INTEGER NOT NULL DEFAULT 0")
    if version < 5:
        # (version 5's tables are new: ``create_all`` made them before this step)
        for name in ("next_due_at", "due_for"):  # digest worker's schedule slots
            kind = subscribers_table.c[name].type.compile(dialect=conn.dialect)
            conn.exec_driver_sql(f"ALTER TABLE subscribers ADD COLUMN {name} {kind}")
        for index in subscribers_table.indexes:
            index.create(conn, checkfirst=True)
    conn.execute(update(meta_table).where(meta_table.c.key == "schema").values(value=str(SCHEMA_VERSION)))

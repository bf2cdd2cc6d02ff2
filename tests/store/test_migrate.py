"""Upgrading a database written by an older digest, in place; refusing one written by a newer."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from conftest import DATA, opened, state_db

from pipeline import run
from pipeline.config import load_settings
from pipeline.errors import StoreError
from pipeline.store import SCHEMA_VERSION, Store

T0 = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)


def test_a_version_1_database_upgrades_itself(configure: Callable[..., Path], tmp_path: Path) -> None:
    blog = tmp_path / "blog.xml"
    blog.write_bytes((DATA / "lab-blog.xml").read_bytes())
    config = configure({"blog": str(blog)})
    with opened(config) as (settings, store):
        run.fetch_all(settings, store, clock=lambda: T0)
    # Turn the file back into what the first release wrote.
    with state_db(tmp_path) as conn:
        for index in (
            "ix_entries_fingerprint",
            "ix_entries_first_seen",
            "ix_entry_sources_last_seen",
            "ix_subscribers_next_due_at",  # version 5
        ):
            conn.execute(f"drop index {index}")
        for table, column in [
            ("feeds", "last_error_at"),
            ("feeds", "failing_since"),
            ("feeds", "alert"),
            ("feeds", "body_hash"),
            ("entries", "fingerprint"),
            ("entries", "pruned_at"),
            ("entry_sources", "last_seen"),
            ("deliveries", "cut"),  # version 3
            ("deliveries", "unconfirmed"),  # version 4
            ("subscribers", "next_due_at"),  # version 5 (digest worker)
            ("subscribers", "due_for"),
        ]:
            conn.execute(f"alter table {table} drop column {column}")
        conn.execute("update meta set value = '1' where key = 'schema'")
    os.utime(blog, (time.time() + 10, time.time() + 10))  # parsed again after the upgrade
    with opened(config) as (settings, store):
        assert store.feed_states()["blog"].entries == 4
        (report,) = run.fetch_all(settings, store, clock=lambda: T0 + timedelta(hours=1), force=True)
        assert report.describe() == "0 new"
    with state_db(tmp_path) as conn:
        version = conn.execute("select value from meta where key = 'schema'").fetchone()
        assert version == (str(SCHEMA_VERSION),)
        assert conn.execute("select count(*) from entries where fingerprint is null").fetchone() == (0,)
        assert conn.execute("select count(*) from entry_sources where last_seen is null").fetchone() == (0,)
        conn.execute("update meta set value = '99' where key = 'schema'")
    with pytest.raises(StoreError, match="schema 99 is newer"):
        Store(load_settings(config).digest.database_url)

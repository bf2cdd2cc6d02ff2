"""Opening the state database: SQLite in WAL mode, however many processes open a new file at once."""

from __future__ import annotations

import sqlite3
import threading
from contextlib import closing
from pathlib import Path

from pipeline.store import Store


def test_senders_opening_a_new_database_at_once_all_get_in(tmp_path: Path) -> None:
    # Switching a new file to WAL from two connections at once can deadlock, and SQLite answers
    # "database is locked" without waiting: one send of two started together used to fail so.
    # Threads meet here far more tightly than processes do (the race hit ~3% of rounds).
    failures: list[Exception] = []

    def open_store(url: str, barrier: threading.Barrier) -> None:
        barrier.wait()
        try:
            Store(url).close()
        except Exception as exc:  # every failure is reported below
            failures.append(exc)

    for round_ in range(200):
        url = f"sqlite:///{tmp_path}/{round_}/digest.db"
        barrier = threading.Barrier(4)
        threads = [threading.Thread(target=open_store, args=(url, barrier)) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert failures == []
    with closing(sqlite3.connect(tmp_path / "0" / "digest.db")) as db:
        assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)

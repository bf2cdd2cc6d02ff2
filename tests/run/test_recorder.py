"""SentRecorder: the server's acceptances recorded in group commits, none lost."""

from __future__ import annotations

import itertools
import statistics
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

from conftest import queue_outbox, wait_for
from sqlalchemy import event

from pipeline import run
from pipeline.run.recorder import MAX_UNRECORDED, SENT_COMMITS_APART
from pipeline.store import Store, owner_id, utcnow

ROWS = 300


def test_rows_accepted_close_together_share_a_commit_and_none_is_lost(tmp_path: Path) -> None:
    # A fast server: a 250 every 0.1 ms or so. That is far closer together than commits may be
    # (SENT_COMMITS_APART), yet further apart than a commit takes here: without the grouping
    # nearly every row would get a commit (an fsync) of its own.
    with Store(f"sqlite:///{tmp_path}/state.db") as store:
        now = queue_outbox(store, ROWS)
        claimed = store.claim(now, lease=timedelta(minutes=5), owner=owner_id(), limit=ROWS)
        begun: list[float] = []

        def began(conn: Any) -> None:
            begun.append(time.monotonic())

        event.listen(store.engine, "begin", began)
        recorder = run.SentRecorder(store, utcnow, owner_id())
        for row in claimed:
            assert recorder.reserve()
            recorder.add(row.id)
            time.sleep(0.0001)
        recorder.close()
        event.remove(store.engine, "begin", began)
        assert store.delivery_counts() == {"sent": ROWS}
    # Each commit takes every row queued since the one before, and commits are SENT_COMMITS_APART
    # apart: a few dozen commits here (the feed takes ~50 ms), not one per row. Counted, not timed,
    # so that a slow machine cannot pass without grouping; the spacing is checked on its own.
    gap = statistics.median(b - a for a, b in itertools.pairwise(begun)) if len(begun) > 1 else 0.0
    found = f"{len(begun)} commits for {ROWS} rows, median {gap * 1000:.2f} ms apart"
    assert 1 < len(begun) <= ROWS / 4, found
    assert gap >= 0.9 * SENT_COMMITS_APART, found


def test_at_most_a_few_acceptances_wait_for_their_commit_however_slow_the_disk(tmp_path: Path) -> None:
    # Under load a commit (an fsync) can take hundreds of milliseconds; a crash then repeats
    # every message accepted but not yet recorded. The sender waits instead of running ahead.
    rows = 40
    with Store(f"sqlite:///{tmp_path}/state.db") as store:
        now = queue_outbox(store, rows)
        claimed = store.claim(now, lease=timedelta(minutes=5), owner=owner_id(), limit=rows)

        def slow_commit(conn: Any) -> None:
            time.sleep(0.02)

        event.listen(store.engine, "commit", slow_commit)
        recorder = run.SentRecorder(store, utcnow, owner_id())
        ahead = []
        for n, row in enumerate(claimed, 1):
            assert recorder.reserve()  # at once while few wait; else once the recorder caught up
            recorder.add(row.id)
            ahead.append(n - store.delivery_counts().get("sent", 0))
        recorder.close()
        event.remove(store.engine, "commit", slow_commit)
        assert store.delivery_counts() == {"sent": rows}
    assert max(ahead) <= MAX_UNRECORDED, ahead


def test_a_commit_that_fails_stops_the_recorder_and_nothing_after_it_is_taken_as_recorded(
    tmp_path: Path,
) -> None:
    with Store(f"sqlite:///{tmp_path}/state.db") as store:
        now = queue_outbox(store, 20)
        claimed = store.claim(now, lease=timedelta(minutes=5), owner=owner_id(), limit=20)
        recorder = run.SentRecorder(store, utcnow, owner_id())
        assert recorder.reserve()
        recorder.add(claimed[0].id)
        time.sleep(0.05)
        with store.engine.begin() as conn:  # the table goes read-only: every later mark fails
            conn.exec_driver_sql(
                "CREATE TRIGGER full BEFORE UPDATE ON deliveries BEGIN SELECT RAISE(ABORT, 'disk full'); END"
            )
        assert recorder.reserve()
        recorder.add(claimed[1].id)  # its commit fails: nothing more may be sent
        wait_for(lambda: recorder.failed is not None, timeout=10)
        assert not recorder.reserve()
        recorder.close()
        assert recorder.failed is not None and "disk full" in str(recorder.failed)
        assert store.delivery_counts() == {"sent": 1, "sending": 19}

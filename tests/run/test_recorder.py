"""SentRecorder: the server's acceptances recorded in group commits, none lost."""

from __future__ import annotations

import itertools
import statistics
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

from conftest import queue_outbox
from sqlalchemy import event

from pipeline import run
from pipeline.run.recorder import SENT_COMMITS_APART
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
        recorder = run.SentRecorder(store, utcnow)
        for row in claimed:
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

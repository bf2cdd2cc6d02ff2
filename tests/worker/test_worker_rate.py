"""``[smtp] rate`` holds over all workers together: the sending budget in PostgreSQL.

Three workers (each its own store, as on three machines) with two sending threads each all
send as fast as their limit lets them; together they keep to the rate (within 10%), where
each alone would take the whole rate. Real PostgreSQL, started here; skipped without it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest
from conftest import new_postgres_database, running_postgres

from pipeline.store import Store
from pipeline.worker.rate import SharedRate

RATE = 60.0  # messages per second for all workers together


@pytest.fixture(scope="module")
def postgres() -> Iterator[str]:
    with running_postgres() as server:
        yield server


def test_three_workers_share_one_rate(postgres: str) -> None:
    url = new_postgres_database(postgres)
    stores = [Store(url) for _ in range(3)]
    limits = [SharedRate(store, RATE) for store in stores]
    times: list[float] = []
    lock = threading.Lock()
    end = time.monotonic() + 4.0

    def send(limit: SharedRate) -> None:
        while time.monotonic() < end:
            limit.wait()
            with lock:
                times.append(time.monotonic())

    threads = [threading.Thread(target=send, args=(limit,)) for limit in limits for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for store in stores:
        store.close()
    start = min(times) + 1.0  # (steady state: after every worker took its first block)
    window = [t for t in times if start <= t < start + 2.5]
    measured = len(window) / 2.5
    assert abs(measured - RATE) <= 0.1 * RATE, f"{measured:.1f}/s for a rate of {RATE:g}/s"

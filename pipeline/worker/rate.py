"""``[smtp] rate`` over all workers together: sending times taken from a budget in the database.

Each worker takes a block of sending times (a twentieth of a second's worth, at least one) in
one statement on the database's clock (:meth:`Store.take_send_budget`), then spaces its
messages within the block. The workers together never go faster than the rate; a worker that
took a block and found nothing to send wastes at most that block. Dividing the rate by the
number of live workers instead is simpler, but a worker with nothing to send then leaves its
share unused, so the whole falls short whenever the work is uneven (see bench/bench_worker.py).
"""

from __future__ import annotations

import threading
import time

from ..deliver import RateLimit
from ..errors import StoreError
from ..store import Store

BLOCK_SECONDS = 0.05  # how much sending time one trip to the database reserves
BUDGET = "smtp"


class SharedRate(RateLimit):
    """At most ``rate`` messages per second, shared by every worker of the database."""

    def __init__(self, store: Store, rate: float | None) -> None:
        super().__init__(rate)
        self.store = store
        self.block = max(1, round((rate or 0) * BLOCK_SECONDS))
        self.left = 0  # sending times left in the block at hand
        self.turn = threading.Lock()  # the threads of this worker take times in turn

    def wait(self) -> None:
        """Wait for this process's next sending time."""
        if not self.interval:
            return
        with self.turn:
            if self.left and self.next_at < time.monotonic() - self.interval:
                self.left = 0  # (times left from a block taken before a pause: past, not to be used now)
            if self.left == 0:
                try:
                    delay = self.store.take_send_budget(BUDGET, self.block, self.interval)
                except StoreError:
                    delay = self.block * self.interval  # (the database is away: go no faster than alone)
                self.next_at = time.monotonic() + delay
                self.left = self.block
            self.left -= 1
            delay = self.next_at - time.monotonic()
            self.next_at = max(self.next_at, time.monotonic()) + self.interval
        if delay > 0:
            time.sleep(delay)

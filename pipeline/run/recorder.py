"""Recording the server's acceptances in the outbox, from the sending threads, in group commits."""

from __future__ import annotations

import logging
import queue
import threading
import time

from ..errors import StoreError
from ..store import SentMarker, Store
from .clock import Clock

log = logging.getLogger("digest")

SENT_COMMITS_APART = 0.002  # seconds: rows accepted within this share one commit (one fsync)


class SentRecorder:
    """Marks rows sent as soon as the server accepts them, in group commits.

    Called from the sending threads, so the time between a server's 250 and our record of it
    (the only window in which a crash causes a re-send) is at most ``SENT_COMMITS_APART`` and
    one commit, whatever the main thread is busy with; rows accepted meanwhile share that
    commit (a commit is an fsync: one per message or two was a measurable part of a send).
    """

    def __init__(self, store: Store, clock: Clock) -> None:
        self.mark_sent, self.clock = SentMarker(store), clock
        self.queue: queue.SimpleQueue[int | None] = queue.SimpleQueue()
        self.thread = threading.Thread(target=self._run, name="sent-recorder", daemon=True)
        self.thread.start()

    def add(self, row_id: int) -> None:
        self.queue.put(row_id)

    def _run(self) -> None:
        closing, last = False, 0.0
        while not closing:
            batch = [self.queue.get()]
            wait = last + SENT_COMMITS_APART - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            last = time.monotonic()
            while not self.queue.empty():
                batch.append(self.queue.get())
            closing = None in batch
            ids = [i for i in batch if i is not None]
            if ids:
                try:
                    self.mark_sent(ids, self.clock())
                except StoreError as exc:
                    # Not lost: the rows stay claimed and go out again (same Message-ID) later.
                    log.error("outbox error=%r rows=%s", str(exc), ids)
        self.mark_sent.close()

    def close(self) -> None:
        self.queue.put(None)
        self.thread.join()

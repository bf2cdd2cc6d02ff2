"""Recording the server's acceptances in the outbox, from the sending threads, in group commits.

A message the server accepted but that is not yet recorded as sent is sent again after a
crash (with the same Message-ID). Two bounds keep those few: rows accepted close together
share one commit (at most ``SENT_COMMITS_APART`` apart, so a slow commit delays none), and at
most ``MAX_UNRECORDED`` acceptances wait for their commit at any time: beyond that the sending
threads wait for the recorder, however slow the disk. When a commit fails (a full disk), the
recorder says so and stops recording: the sender must stop sending, since whatever it sent
next would go unrecorded.
"""

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
MAX_UNRECORDED = 8  # acceptances at most waiting for their commit (a crash repeats no more)


class SentRecorder:
    """Marks rows sent as soon as the server accepts them, in group commits.

    A sending thread calls ``reserve`` before it sends a message (it waits while
    ``MAX_UNRECORDED`` messages are sent or being sent and not yet recorded, and is told False
    once a commit has failed: then it must not send), then ``add`` straight after the server's
    250, or ``cancel`` if the message did not go.
    """

    def __init__(self, store: Store, clock: Clock, owner: str) -> None:
        self.mark_sent, self.clock, self.owner = SentMarker(store), clock, owner
        self.queue: queue.SimpleQueue[int | None] = queue.SimpleQueue()
        self.room = threading.BoundedSemaphore(MAX_UNRECORDED)
        self.failed: StoreError | None = None
        self.thread = threading.Thread(target=self._run, name="sent-recorder", daemon=True)
        self.thread.start()

    def reserve(self) -> bool:
        """Room for one more message whose acceptance is not recorded yet (waits for it);
        False when nothing can be recorded any more."""
        while not self.room.acquire(timeout=0.1):
            if self.failed is not None:
                return False
        if self.failed is not None:
            self.room.release()
            return False
        return True

    def add(self, row_id: int) -> None:
        """Record this row as sent (soon), in the room ``reserve`` gave."""
        self.queue.put(row_id)

    def cancel(self) -> None:
        """The message ``reserve`` made room for did not go."""
        self.room.release()

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
            if ids and self.failed is None:
                try:
                    self.mark_sent(ids, self.clock(), self.owner)
                except StoreError as exc:
                    # Not lost: the rows stay claimed and go out again (same Message-ID) later.
                    self.failed = exc
                    log.error(
                        "outbox error=%r rows=%s (stopping: sent messages cannot be recorded)", str(exc), ids
                    )
            for _ in ids:
                self.room.release()
        self.mark_sent.close()

    def close(self) -> None:
        self.queue.put(None)
        self.thread.join()

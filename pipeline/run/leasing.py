"""Keeping a sender's claims alive: their lease renewed every third of it, from a thread.

The sending loop renders, claims and records; under load one step can take longer than a
short lease (``[worker] lease``), and a lease renewed only between steps would then run out
while its rows are being sent, letting another sender take them and send them again. A thread
of its own renews every row this sender holds in one statement, whatever the loop is doing;
only a process that is not running at all (crashed, SIGSTOPped, a paused VM) lets its lease
run out, which is what the lease is for.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import timedelta

from ..errors import StoreError
from ..store import Store
from .clock import Clock

log = logging.getLogger("digest")


class LeaseKeeper:
    """Renews ``owner``'s claims every third of ``lease`` until stopped (while ``active()``)."""

    def __init__(
        self, store: Store, owner: str, lease: timedelta, clock: Clock, active: Callable[[], bool]
    ) -> None:
        self.store, self.owner, self.lease, self.clock, self.active = store, owner, lease, clock, active
        self.done = threading.Event()
        self.thread: threading.Thread | None = None

    def start(self) -> None:
        """Start renewing (once; later calls do nothing)."""
        if self.thread is None:
            self.thread = threading.Thread(target=self._run, name="lease-keeper", daemon=True)
            self.thread.start()

    def _run(self) -> None:
        while not self.done.wait(self.lease.total_seconds() / 3):
            if not self.active():
                continue
            try:
                self.store.renew_held(self.owner, self.clock() + self.lease)
            except StoreError as exc:  # (the next renewal may get through; else the lease runs out)
                log.warning("outbox lease not renewed: %s", exc)

    def stop(self) -> None:
        self.done.set()
        if self.thread is not None:
            self.thread.join()

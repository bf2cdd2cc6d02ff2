"""Delivering many messages over a few connections, with retries within the run.

:class:`ConnectionPool` runs one transport per connection in worker threads, so rendering the
next digest overlaps sending the last one. A message that meets a transient error is retried a
few times within the run, seconds apart, without holding up the others. When the server cannot
be used at all (no connection, TLS or login failing even after retries) the pool stops trying
and hands every remaining message back as undelivered: nothing is dropped, the caller leaves it
in the outbox for later.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from ..errors import DeliveryError
from ..models import OutgoingMessage

if TYPE_CHECKING:
    from . import Transport

log = logging.getLogger("digest")
UNRECORDABLE = "not sent: what is sent can no longer be recorded"


class Acceptances(Protocol):
    """Who records the server's acceptances (the outbox's recorder)."""

    def reserve(self) -> bool:
        """Before a message goes: room to record it (may wait); False: do not send it."""
        ...

    def add(self, key: int) -> None:
        """The server accepted the message ``reserve`` made room for."""
        ...

    def cancel(self) -> None:
        """The message ``reserve`` made room for did not go."""
        ...


@dataclass(frozen=True, slots=True)
class Attempted:
    """The end of one message's delivery in this run: sent (``error`` is None) or not."""

    key: int
    message: OutgoingMessage
    error: DeliveryError | None
    tries: int  # SMTP attempts made in this run


@dataclass(slots=True)
class _Job:
    key: int
    message: OutgoingMessage
    tries: int = 0


class ConnectionPool:
    """Delivers submitted messages over ``connections`` transports in worker threads.

    ``submit`` never blocks; ``results`` returns what has finished; ``acceptances`` is told
    from the worker thread before each message goes and as soon as the server accepts it.
    Message-level transient failures are retried up to ``retries`` times, ``retry_delay``
    apart, while other messages go on; a message whose connection was lost after it was sent
    is not (it may have arrived).
    A connection that cannot be opened while another works (a server that limits connections
    per client) is given up for the run, and its message goes to the others. Otherwise
    connection failures are retried the same way; if the server still cannot be used, or the
    failure is one only the operator can fix (``DeliveryError.operator``: tried once),
    ``unreachable`` is set and every remaining message comes back undelivered.
    """

    def __init__(
        self,
        make_transport: Callable[[], Transport],
        *,
        connections: int = 1,
        retries: int = 3,
        retry_delay: float = 2.0,
        acceptances: Acceptances | None = None,
    ) -> None:
        self.make_transport = make_transport
        self.acceptances = acceptances
        self.retries = retries
        self.retry_delay = retry_delay
        self.unreachable: str | None = None
        self.fatal: DeliveryError | None = None  # what made the server unusable
        self._working = 0  # workers whose connection has carried a message and is still open
        self._alive = connections  # workers not given up for the run
        self._cond = threading.Condition()
        self._work: deque[_Job] = deque()
        self._delayed: list[tuple[float, int, _Job]] = []
        self._order = itertools.count()
        self._done: deque[Attempted] = deque()
        self._closing = False
        self._abandoned: str | None = None
        self._threads = [
            threading.Thread(target=self._worker, name=f"smtp-{i}", daemon=True) for i in range(connections)
        ]
        for thread in self._threads:
            thread.start()

    def submit(self, key: int, message: OutgoingMessage) -> None:
        with self._cond:
            if self._abandoned:
                self._finish(_Job(key, message), DeliveryError(self._abandoned, transient=True))
            elif self.unreachable:
                self._finish(_Job(key, message), self._unreachable_error())
            else:
                self._work.append(_Job(key, message))
            self._cond.notify_all()

    def results(self, timeout: float | None = None) -> list[Attempted]:
        """Finished messages; waits up to ``timeout`` seconds for at least one (None: forever)."""
        with self._cond:
            if not self._done and timeout != 0:
                self._cond.wait_for(lambda: bool(self._done), timeout)
            done = list(self._done)
            self._done.clear()
            return done

    def abandon(self, reason: str) -> None:
        """Hand back every job not yet started; jobs in flight finish, but are not retried."""
        with self._cond:
            self._abandoned = reason
            error = DeliveryError(reason, transient=True)
            for waiting in [*self._work, *(entry[2] for entry in self._delayed)]:
                self._finish(waiting, error)
            self._work.clear()
            self._delayed.clear()

    def close(self) -> None:
        """Stop the workers after the jobs already submitted, and close every connection."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        for thread in self._threads:
            thread.join()

    def _unreachable_error(self) -> DeliveryError:
        operator = self.fatal is not None and self.fatal.operator
        return DeliveryError(
            f"server unusable: {self.unreachable}", transient=True, connection=True, operator=operator
        )

    def _finish(self, job: _Job, error: DeliveryError | None) -> None:
        # Called with the lock held.
        self._done.append(Attempted(job.key, job.message, error, job.tries))
        self._cond.notify_all()

    def _next(self) -> _Job | None:
        with self._cond:
            while True:
                now = time.monotonic()
                if self._delayed and self._delayed[0][0] <= now:
                    return heapq.heappop(self._delayed)[2]
                if self._work:
                    return self._work.popleft()
                if self._closing and not self._delayed:
                    return None
                self._cond.wait(self._delayed[0][0] - now if self._delayed else None)

    def _worker(self) -> None:
        transport: Transport | None = None
        working = False  # this worker's connection has carried a message
        retired = False
        try:
            while (job := self._next()) is not None:
                refusal = self._refusal()
                if refusal is not None:
                    with self._cond:
                        self._finish(job, refusal)
                    continue
                job.tries += 1
                try:
                    if transport is None:
                        transport = self.make_transport()
                    transport.send(job.message)
                except Exception as exc:
                    if self.acceptances is not None:
                        self.acceptances.cancel()
                    error = exc if isinstance(exc, DeliveryError) else _unexpected(exc)
                    if error.connection and working:
                        working = False  # (it reconnects on the next message, or gives up)
                        self._count_working(-1)
                    if self._retire(job, error, working):
                        retired = True
                        return
                    self._give_up_or_retry(job, error)
                    continue
                if self.acceptances is not None:
                    self.acceptances.add(job.key)  # straight from the 250: the re-send window stays tiny
                if not working:
                    working = True
                    self._count_working(1)
                with self._cond:
                    self._finish(job, None)
        finally:
            with self._cond:
                self._alive -= 0 if retired else 1
                self._working -= 1 if working else 0
            if transport is not None:
                transport.close()

    def _refusal(self) -> DeliveryError | None:
        """Why this job may not go now (the run was abandoned, the server is unusable, what
        is sent can no longer be recorded), or None: room was reserved to record it."""
        if self._abandoned:
            return DeliveryError(self._abandoned, transient=True)
        if self.unreachable:
            return self._unreachable_error()
        if self.acceptances is not None and not self.acceptances.reserve():
            return DeliveryError(UNRECORDABLE, transient=True)
        return None

    def _count_working(self, change: int) -> None:
        with self._cond:
            self._working += change

    def _retire(self, job: _Job, exc: DeliveryError, working: bool) -> bool:
        """A connection that cannot be opened while other workers work or still try: this one
        stops for the run (a server that limits connections per client answers 421) and its
        message goes back to the others. The last one left retries, then gives up."""
        with self._cond:
            alone = self._working == 0 and self._alive <= 1
            if not exc.connection or exc.operator or working or alone or self._closing or self._abandoned:
                return False
            job.tries -= 1  # (never attempted)
            self._alive -= 1  # (now, under the lock: two failing at once must not both go)
            self._work.appendleft(job)
            self._cond.notify_all()
            return True

    def _give_up_or_retry(self, job: _Job, exc: DeliveryError) -> None:
        retry = exc.transient and not exc.operator and not exc.after_data
        with self._cond:
            if retry and job.tries < self.retries and not self._abandoned:
                heapq.heappush(self._delayed, (time.monotonic() + self.retry_delay, next(self._order), job))
                self._cond.notify_all()
                return
            if exc.connection:
                # The server cannot be used now: hand back everything still waiting.
                self.unreachable, self.fatal = str(exc), exc
                for waiting in [*self._work, *(entry[2] for entry in self._delayed)]:
                    self._finish(waiting, self._unreachable_error())
                self._work.clear()
                self._delayed.clear()
            self._finish(job, exc)


def _unexpected(exc: Exception) -> DeliveryError:
    """A failure the transport did not classify (a bug, or input it cannot encode): the
    message waits, and the server is not used again in this run."""
    log.exception("delivery error=%r", exc)
    return DeliveryError(f"unexpected error: {exc!r}", transient=True, connection=True)

"""What a run did, as records the faces print: per feed, per digest, per send (no CLI wording)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Literal, Protocol

from ..store import OutboxRow
from .audience import Reader
from .fetching import FeedReport


@dataclass(frozen=True, slots=True)
class Outcome:
    """What happened to one digest."""

    subscriber: str
    entries: int
    status: Literal["sent", "pending", "failed", "planned"]
    detail: str = ""
    subject: str = ""
    tries: int = 0  # SMTP attempts in this run; more than one means it was retried


class Progress(Protocol):
    """Told how many digests are due, then about each one as it finishes."""

    def start(self, total: int) -> None: ...

    def advance(self, outcome: Outcome) -> None: ...


@dataclass(slots=True)
class SendReport:
    """Everything ``send`` did, for the CLI to print and turn into an exit code."""

    feeds: list[FeedReport] = field(default_factory=list)
    outcomes: list[Outcome] = field(default_factory=list)
    nothing_new: list[str] = field(default_factory=list)
    excluded: list[Reader] = field(default_factory=list)  # no digest: unsubscribed or paused (their choice)
    unreachable: str | None = None  # the server could not be used (for now)
    refused: str | None = None  # the server refused us, or the config is wrong: fix, then send again
    store_error: str | None = None  # sending stopped: what was sent could not be recorded
    waiting: list[OutboxRow] = field(default_factory=list)  # pending digests this run did not try
    requeued: int = 0  # failed digests put back (--retry-failed)
    dry_run: bool = False
    timings: dict[str, float] = field(default_factory=dict)  # seconds per stage

    @contextmanager
    def timed(self, stage: str) -> Iterator[None]:
        """Add the time the block takes to ``stage``."""
        started = time.perf_counter()
        try:
            yield
        finally:
            self.timings[stage] = self.timings.get(stage, 0.0) + time.perf_counter() - started

    def count(self, status: str) -> int:
        return sum(1 for o in self.outcomes if o.status == status)

    @property
    def retried(self) -> int:
        """Digests that were sent only after a retry within this run."""
        return sum(1 for o in self.outcomes if o.status == "sent" and o.tries > 1)

    @property
    def exit_code(self) -> int:
        """0 all delivered or nothing to do; 1 a permanent failure (or the outbox could not be
        written); 2 the SMTP server refused us or the config is wrong (nothing is lost: the
        digests wait); 3 some left pending for a later retry."""
        if self.store_error or self.count("failed"):
            return 1
        if self.refused:
            return 2
        if self.count("pending") or self.unreachable or self.waiting:
            return 3
        return 0

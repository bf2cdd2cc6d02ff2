"""The records the store hands out and takes in: frozen, typed, one per kind of row.

They carry only what callers use, so the tables (:mod:`pipeline.store.schema`) can change
without every caller changing with them.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime


@dataclass(frozen=True, slots=True)
class FeedState:
    """What the store remembers about one feed."""

    name: str
    url: str
    configured_url: str
    etag: str | None
    last_modified: str | None
    last_fetch_at: datetime | None
    last_success_at: datetime | None
    last_status: str | None
    last_error: str | None
    failures: int
    next_attempt_at: datetime | None
    last_new: int
    last_error_at: datetime | None = None
    failing_since: datetime | None = None
    alert: str | None = None
    body_hash: str | None = None
    entries: int = 0

    @property
    def moved(self) -> bool:
        """Whether a permanent redirect moved the feed away from its configured URL."""
        return self.url != self.configured_url


@dataclass(frozen=True, slots=True)
class SubscriberState:
    """What the store remembers about one subscriber: when they were last served."""

    email: str
    last_digest_at: datetime | None
    last_checked_at: datetime | None
    last_scheduled_at: datetime | None
    next_due_at: datetime | None = None  # digest worker: the next schedule slot
    due_for: str | None = None  # digest worker: the schedule next_due_at was computed from


@dataclass(frozen=True, slots=True)
class OutboxRow:
    """A digest waiting in (or claimed from) the outbox."""

    id: int
    subscriber: str
    message_id: str
    created_at: datetime
    state: str
    attempts: int
    next_attempt_at: datetime
    deliver_until: datetime
    last_error: str | None
    unconfirmed: int = 0  # copies that may have arrived (connection lost right after the data)
    sent_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class QueuedDigest:
    """A digest to put in the outbox: who, which entries (shown or only counted), and its spec."""

    subscriber: str
    message_id: str
    created_at: datetime
    deliver_until: datetime
    shown: tuple[int, ...]
    hidden: tuple[int, ...]
    spec: str  # JSON

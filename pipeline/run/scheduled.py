"""What ``digest run``'s scheduler asks of the chain: its lease, and serving one subscriber.

The scheduler decides *when* (fire times, catch-up); these functions do the work and keep the
state: the lease that lets one scheduler use a state database, and per subscriber the last
scheduled time served.
"""

from __future__ import annotations

import threading
from datetime import datetime, timedelta

from ..config import Settings, SubscriberConfig
from ..store import Store, owner_id
from .clock import Clock
from .fetching import fetch_stale
from .sending import send

LEASE_NAME = "scheduler"


def scheduler_id() -> str:
    """Who holds the scheduler lease: this host and process."""
    return owner_id()


def take_scheduler_lease(store: Store, holder: str, now: datetime, ttl: timedelta) -> str | None:
    """Take the scheduler lease; None, or a description of the live scheduler that holds it."""
    return store.acquire_lease(LEASE_NAME, holder, now, ttl)


def renew_scheduler_lease(store: Store, holder: str, now: datetime, ttl: timedelta) -> bool:
    """Extend the lease; False when another process has taken it."""
    return store.renew_lease(LEASE_NAME, holder, now, ttl)


def release_scheduler_lease(store: Store, holder: str) -> None:
    store.release_lease(LEASE_NAME, holder)


def last_served(store: Store, email: str) -> datetime | None:
    """The last scheduled time served for this subscriber (None: never)."""
    state = store.subscriber_states().get(email)
    return state.last_scheduled_at if state else None


def mark_served(store: Store, email: str, scheduled: datetime) -> None:
    """Remember that the scheduled time ``scheduled`` was served for this subscriber."""
    store.mark_scheduled(email, scheduled)


def serve_subscriber(
    settings: Settings,
    store: Store,
    subscriber: SubscriberConfig,
    scheduled: datetime,
    *,
    clock: Clock,
    stop: threading.Event,
) -> None:
    """The digest for a scheduled time: fetch the subscriber's stale feeds, send, and mark the
    time served (unless a stop cut the send short: then the next start serves it again)."""
    fetch_stale(settings, store, [subscriber], clock=clock)
    send(settings, store, subscribers=[subscriber.email], fetch=False, clock=clock, stop=stop)
    if not stop.is_set():
        mark_served(store, subscriber.email, scheduled)

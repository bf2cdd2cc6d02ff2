"""When to try a feed again: the server's Retry-After (RFC 9110 10.2.3), else exponential backoff."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime

from ..errors import FetchError

FIRST_BACKOFF = timedelta(minutes=5)
MAX_BACKOFF = timedelta(hours=24)
MAX_RETRY_AFTER = timedelta(days=7)


def retry_after(value: str | None, now: datetime | None = None) -> timedelta | None:
    """A Retry-After value (delay-seconds or an HTTP-date) as a delay, at most 7 days."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        delay = timedelta(seconds=int(value[:9]))
    else:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        delay = when - (now or datetime.now(UTC))
    return max(timedelta(0), min(delay, MAX_RETRY_AFTER))


def next_attempt_delay(failures: int, error: FetchError | None = None) -> timedelta:
    """How long a feed rests after its ``failures``-th consecutive failure.

    The server's Retry-After when it gave one; the maximum at once for 410 Gone; otherwise
    5 minutes, doubling with each failure, at most 24 hours.
    """
    if error is not None:
        if error.retry_after is not None:
            return error.retry_after
        if error.status == 410:
            return MAX_BACKOFF
    exponent = min(max(failures, 1) - 1, 20)
    delay: timedelta = min(FIRST_BACKOFF * 2**exponent, MAX_BACKOFF)
    return delay

"""Sign-ups on the web (``[web] signup``): requests waiting for confirmation, confirmed
subscribers, and the request counts behind the rate limits.

A request is stored with a random ``code`` that its confirmation link signs; confirming
checks that code in the same transaction that makes the address a subscriber, so a link is
good once, and only the latest request's link is. The rate limits are counted here, in one
transaction per request (:meth:`Signups.admit_signup`), so that several ``digest serve``
processes, or threads, share them. Who gets digests is decided in :mod:`pipeline.run.audience`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, delete, func, insert, select, update

from .schema import readers_table, signup_requests_table, signups_table
from .sql import Transactions, _dialect_insert, _serialise

CLIENT, ADDRESS = "client", "address"  # what a request row counts
WINDOW = timedelta(hours=1)  # the rate limits are per hour


@dataclass(frozen=True, slots=True)
class Signup:
    """One address that asked to subscribe on the web."""

    email: str  # lower-cased
    address: str  # as given (normalised)
    topics: tuple[str, ...] | None  # confirmed topics; None: never confirmed
    confirmed_at: datetime | None
    pending_topics: tuple[str, ...] | None  # a request waiting for its confirmation
    code: str | None
    requested_at: datetime


def _signup(row: Any) -> Signup:
    values = row._asdict()
    for name in ("topics", "pending_topics"):
        if values[name] is not None:
            values[name] = tuple(values[name])
    return Signup(**values)


class Signups(Transactions):
    """The sign-ups and sign-up requests tables."""

    def signups(self) -> list[Signup]:
        """Every confirmed sign-up, oldest first."""
        query = (
            select(signups_table)
            .where(signups_table.c.confirmed_at.is_not(None))
            .order_by(signups_table.c.confirmed_at, signups_table.c.email)
        )
        with self._tx() as conn:
            return [_signup(row) for row in conn.execute(query)]

    def signup(self, email: str) -> Signup | None:
        """One address's sign-up row (confirmed or waiting), if any."""
        with self._tx() as conn:
            row = conn.execute(select(signups_table).where(signups_table.c.email == email.lower())).first()
        return _signup(row) if row is not None else None

    def admit_signup(
        self, now: datetime, *, client: str, address: str, per_client: int, per_address: int, per_hour: int
    ) -> str | None:
        """Count a sign-up request from ``client`` for ``address`` against the hourly limits.

        None: a confirmation email may go (it is counted). Else which limit held: ``client``
        (too many requests from it: nothing else counted), ``total`` (too many emails in all),
        ``address`` (one went to it within the hour). One transaction, so processes share it.
        """
        since = now - WINDOW
        table = signup_requests_table
        with self._tx() as conn:
            _serialise(conn, "signup")
            conn.execute(delete(table).where(table.c.at <= since))  # (only the last hour counts)

            def count(*where: Any) -> int:
                return int(conn.execute(select(func.count()).select_from(table).where(*where)).scalar() or 0)

            if count(table.c.kind == CLIENT, table.c.key == client) >= per_client:
                return "client"
            conn.execute(insert(table).values(kind=CLIENT, key=client, at=now))
            if count(table.c.kind == ADDRESS) >= per_hour:
                return "total"
            if count(table.c.kind == ADDRESS, table.c.key == address.lower()) >= per_address:
                return "address"
            conn.execute(insert(table).values(kind=ADDRESS, key=address.lower(), at=now))
        return None

    def release_signup_email(self, address: str, at: datetime) -> None:
        """Take back the count of a confirmation email that could not be sent."""
        table = signup_requests_table
        with self._tx() as conn:
            conn.execute(
                delete(table).where(table.c.kind == ADDRESS, table.c.key == address.lower(), table.c.at == at)
            )

    def request_signup(self, address: str, topics: list[str], code: str, now: datetime) -> None:
        """Record a request waiting for confirmation (it replaces an earlier one's topics and code)."""
        pending = {"pending_topics": list(topics), "code": code, "requested_at": now}
        with self._tx() as conn:
            statement = _dialect_insert(conn, signups_table).values(
                email=address.lower(), address=address, **pending
            )
            conn.execute(statement.on_conflict_do_update(index_elements=["email"], set_=pending))

    def confirm_signup(self, email: str, code: str, now: datetime) -> Signup | None:
        """Make the request with this code a subscription (its topics; a reader who had
        unsubscribed is subscribed again); None when no such request waits (used, replaced
        or pruned)."""
        table = signups_table
        with self._tx() as conn:
            row = conn.execute(
                select(table).where(table.c.email == email.lower(), table.c.code == code)
            ).first()
            if row is None or row.pending_topics is None:
                return None
            conn.execute(
                update(table)
                .where(table.c.email == row.email)
                .values(topics=row.pending_topics, confirmed_at=now, pending_topics=None, code=None)
            )
            # Confirming is consent again: an earlier unsubscribe, and topics chosen on the
            # preferences page, give way to this sign-up.
            conn.execute(
                update(readers_table)
                .where(readers_table.c.email == row.email)
                .values(unsubscribed_at=None, unsubscribed_via=None, topics=None, updated_at=now)
            )
            found = conn.execute(select(table).where(table.c.email == row.email)).one()
        return _signup(found)

    def prune_signups(self, now: datetime, expires: timedelta) -> int:
        """Forget requests older than ``expires`` that were never confirmed; how many went."""
        table = signups_table
        cutoff = now - expires
        with self._tx() as conn:
            gone = conn.execute(
                delete(table).where(table.c.confirmed_at.is_(None), table.c.requested_at < cutoff)
            )
            conn.execute(
                update(table)
                .where(
                    and_(
                        table.c.confirmed_at.is_not(None),
                        table.c.code.is_not(None),
                        table.c.requested_at < cutoff,
                    )
                )
                .values(pending_topics=None, code=None)
            )
        return int(gone.rowcount or 0)

"""Leases: named, expiring claims that keep two processes from doing one job at once.

A holder is ``host:pid`` (:func:`owner_id`), so a claim left by a process of this machine that
no longer exists is recognised as free at once instead of when its lease runs out; the outbox
uses the same test for digests a crashed sender had claimed.
"""

from __future__ import annotations

import os
import socket
from datetime import datetime, timedelta

from sqlalchemy import delete, insert, select, update

from .schema import leases_table
from .sql import Transactions, _serialise


def owner_id() -> str:
    """Who holds a claim: host and process, so a dead local holder can be recognised."""
    return f"{socket.gethostname()}:{os.getpid()}"


def _holder_is_dead(claimed_by: str | None) -> bool:
    """Whether the holder was a process of this machine that no longer exists (or nobody)."""
    if not claimed_by:
        return True
    host, _, pid = claimed_by.rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return False  # another machine's claim: only its lease can expire it
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


class Leases(Transactions):
    """Named leases, one holder at a time (the scheduler holds one while it runs)."""

    def acquire_lease(self, name: str, holder: str, now: datetime, ttl: timedelta) -> str | None:
        """Take the named lease; return None, or a description of the live holder that has it.

        A lease is free when nobody holds it, when it expired (its holder stopped renewing),
        or when its holder was a process on this machine that no longer exists.
        """
        with self._tx() as conn:
            _serialise(conn, "leases")
            row = conn.execute(select(leases_table).where(leases_table.c.name == name)).first()
            if (
                row is not None
                and row.holder != holder
                and row.expires_at > now
                and not _holder_is_dead(row.holder)
            ):
                return f"{row.holder}, since {row.acquired_at.isoformat(timespec='seconds')}"
            values = {"holder": holder, "acquired_at": now, "expires_at": now + ttl}
            if row is None:
                conn.execute(insert(leases_table).values(name=name, **values))
            else:
                conn.execute(update(leases_table).where(leases_table.c.name == name).values(**values))
            return None

    def renew_lease(self, name: str, holder: str, now: datetime, ttl: timedelta) -> bool:
        """Extend a lease we hold; False when another process has taken it."""
        with self._tx() as conn:
            done = conn.execute(
                update(leases_table)
                .where(leases_table.c.name == name, leases_table.c.holder == holder)
                .values(expires_at=now + ttl)
            )
            return bool(done.rowcount)

    def release_lease(self, name: str, holder: str) -> None:
        """Give up a lease we hold (nothing happens if another process has taken it)."""
        with self._tx() as conn:
            conn.execute(
                delete(leases_table).where(leases_table.c.name == name, leases_table.c.holder == holder)
            )

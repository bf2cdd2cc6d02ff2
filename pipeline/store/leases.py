"""Leases: named, expiring claims that keep two processes from doing one job at once.

A holder is ``host:pid:scope`` (:func:`owner_id`). The scope names this boot of this kernel,
this process namespace, and this process start (a random part), so two containers with the
same host name and pid are told apart, and so is a pid used again after a reboot. A claim
left by a process of *this* machine and namespace that no longer exists is recognised as free
at once instead of when its lease runs out; the outbox uses the same test for digests a
crashed sender had claimed.
"""

from __future__ import annotations

import functools
import os
import secrets
import socket
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from sqlalchemy import delete, insert, select, update

from .schema import leases_table
from .sql import Transactions, _serialise


@functools.cache
def _place() -> str:
    """This kernel boot and process namespace (what makes a pid mean one process)."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip().replace("-", "")[:12]
        namespace = str(Path("/proc/self/ns/pid").stat().st_ino)
    except OSError:
        return "unknown"
    return f"{boot}.{namespace}"


_STARTED = secrets.token_hex(4)


HOST_ENV = "DIGEST_HOST_ID"


def host_id() -> str:
    """This machine's name in claims: $DIGEST_HOST_ID when set, else the host name.

    Two containers on one host may share a host name; setting it tells them apart (and lets
    a test play several machines on one). Processes claiming under another host's name are
    never tested for life here: only their lease frees what they hold.
    """
    return os.environ.get(HOST_ENV) or socket.gethostname()


def owner_id() -> str:
    """Who holds a claim: host, process, and where and when that process runs."""
    return f"{host_id()}:{os.getpid()}:{_place()}.{_STARTED}"


def holder_is_dead(claimed_by: str | None) -> bool:
    """Whether the holder was a process of this machine that no longer exists (or nobody)."""
    if not claimed_by:
        return True
    host, _, rest = claimed_by.partition(":")
    pid, _, scope = rest.partition(":")
    if host != host_id() or not pid.isdigit():
        return False  # another machine's claim: only its lease can expire it
    # scope: place.started, and a run of the process may add .run (see owner_id)
    if scope and not scope.startswith(f"{_place()}."):
        return False  # another container or boot: its pids are not ours to test
    if scope and int(pid) == os.getpid():
        ours = f"{_place()}.{_STARTED}"
        return scope != ours and not scope.startswith(f"{ours}.")  # else: an earlier process, our pid
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


@dataclass(frozen=True, slots=True)
class LeaseState:
    """A lease as stored: its holder, when it was taken, until when it runs, and whether its
    holder may still be alive (not a process of this machine known to be gone)."""

    holder: str
    acquired_at: datetime
    expires_at: datetime
    holder_alive: bool


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
                and not holder_is_dead(row.holder)
            ):
                return f"{row.holder}, since {row.acquired_at.isoformat(timespec='seconds')}"
            values = {"holder": holder, "acquired_at": now, "expires_at": now + ttl}
            if row is None:
                conn.execute(insert(leases_table).values(name=name, **values))
            else:
                conn.execute(update(leases_table).where(leases_table.c.name == name).values(**values))
            return None

    def lease(self, name: str) -> LeaseState | None:
        """Who holds the named lease, since when and until when (None: nobody ever took it)."""
        with self._tx() as conn:
            row = conn.execute(select(leases_table).where(leases_table.c.name == name)).first()
        if row is None:
            return None
        alive = not holder_is_dead(row.holder)
        return LeaseState(row.holder, row.acquired_at, row.expires_at, alive)

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

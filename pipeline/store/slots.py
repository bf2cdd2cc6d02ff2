"""Schedule slots (``digest worker``): who is due when, and each slot planned once.

Each subscriber row keeps ``next_due_at``, its next schedule slot, behind an index, so finding
who is due reads only the due rows, however many subscribers there are. Planning a slot writes,
in ONE transaction, the digests (the outbox's own enqueue), a ``planned_slots`` row per
subscriber and slot (its primary key makes a repeated or duplicated planning job plan nothing
twice) and the subscriber's next slot: a crash anywhere leaves either all of it or none.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime

from sqlalchemy import bindparam, delete, select, update

from .outbox import enqueue_in
from .records import QueuedDigest
from .schema import slots_table, subscribers_table
from .sql import Transactions, _chunks, _dialect_insert, _serialise


class Slots(Transactions):
    """Subscribers' next slots and the slots planned."""

    def set_due(self, rows: Sequence[tuple[str, datetime | None, str | None]]) -> None:
        """Set (email, next slot, schedule it was computed from) for these subscribers."""
        if not rows:
            return
        with self._tx() as conn:
            for chunk in _chunks(rows, 1000):
                statement = _dialect_insert(conn, subscribers_table)
                conn.execute(
                    statement.on_conflict_do_update(
                        index_elements=["email"],
                        set_={
                            "next_due_at": statement.excluded.next_due_at,
                            "due_for": statement.excluded.due_for,
                        },
                    ),
                    [{"email": email, "next_due_at": due, "due_for": what} for email, due, what in chunk],
                )

    def due_subscribers(self, now: datetime, limit: int) -> list[tuple[str, datetime]]:
        """Up to ``limit`` subscribers whose next slot has come, (email, slot), earliest first
        (an index range scan: the cost follows the due rows, not the table)."""
        c = subscribers_table.c
        with self._tx() as conn:
            rows = conn.execute(
                select(c.email, c.next_due_at)
                .where(c.next_due_at <= now)
                .order_by(c.next_due_at, c.email)
                .limit(limit)
            )
            return [(row.email, row.next_due_at) for row in rows]

    def still_due(self, emails: Sequence[str], slot: datetime) -> set[str]:
        """Which of these subscribers still wait for this slot (not planned since)."""
        c = subscribers_table.c
        found: set[str] = set()
        with self._tx() as conn:
            for chunk in _chunks(list(emails), 500):
                found.update(
                    conn.execute(select(c.email).where(c.email.in_(chunk), c.next_due_at == slot)).scalars()
                )
        return found

    def plan_slot(
        self,
        slot: datetime,
        next_due: Mapping[str, datetime | None],
        digests: Sequence[QueuedDigest],
        now: datetime,
    ) -> tuple[set[str], list[QueuedDigest]]:
        """Record ``slot`` as planned for the subscribers of ``next_due`` with their digests, in
        one transaction; return the subscribers planned now and the digests that went in.

        A subscriber whose slot was planned already (a duplicated job, a retried one) is
        skipped whole: no digest, no change. Those planned move on to their next slot (only
        from this one: a concurrent change of schedule is not overwritten) and count as
        considered now (``last_checked_at``: the next digest's lookback starts here).
        """
        if not next_due:
            return set(), []
        with self._tx() as conn:
            # First the outbox's lock: every planner takes it before any slot row, so two
            # planners never wait on each other's rows in opposite orders.
            _serialise(conn, "outbox")
            wanted = sorted(next_due)
            taken: set[str] = set()
            for chunk in _chunks(wanted, 500):
                taken.update(
                    conn.execute(
                        select(slots_table.c.subscriber).where(
                            slots_table.c.subscriber.in_(chunk), slots_table.c.slot_at == slot
                        )
                    ).scalars()
                )
            fresh = [email for email in wanted if email not in taken]
            if not fresh:
                return set(), []
            conn.execute(
                slots_table.insert(),
                [{"subscriber": email, "slot_at": slot, "planned_at": now} for email in fresh],
            )
            chosen = set(fresh)
            accepted = enqueue_in(conn, [d for d in digests if d.subscriber in chosen])
            sent = {d.subscriber: d.message_id for d in accepted}
            if sent:
                conn.execute(
                    update(slots_table)
                    .where(
                        slots_table.c.subscriber == bindparam("who"), slots_table.c.slot_at == bindparam("at")
                    )
                    .values(message_id=bindparam("mid")),
                    [{"who": email, "at": slot, "mid": mid} for email, mid in sent.items()],
                )
            c = subscribers_table.c
            conn.execute(
                update(subscribers_table)
                .where(c.email == bindparam("who"), c.next_due_at == bindparam("slot"))
                .values(
                    next_due_at=bindparam("next"), last_checked_at=bindparam("now"), last_scheduled_at=slot
                ),
                [{"who": email, "slot": slot, "next": next_due[email], "now": now} for email in fresh],
            )
        return chosen, accepted

    def planned_slots(self, since: datetime | None = None) -> list[tuple[str, datetime, str | None]]:
        """The slots planned (subscriber, slot, Message-ID or None), oldest first."""
        query = select(slots_table.c.subscriber, slots_table.c.slot_at, slots_table.c.message_id)
        if since is not None:
            query = query.where(slots_table.c.planned_at >= since)
        with self._tx() as conn:
            rows = conn.execute(query.order_by(slots_table.c.slot_at, slots_table.c.subscriber))
            return [(row.subscriber, row.slot_at, row.message_id) for row in rows]

    def prune_slots(self, before: datetime) -> int:
        """Forget slots planned before ``before`` (their subscribers have moved on); how many."""
        with self._tx() as conn:
            return int(conn.execute(delete(slots_table).where(slots_table.c.planned_at < before)).rowcount)

"""The outbox: digests committed before they are sent, claimed under a lease, marked when done.

A row goes pending -> sending (claimed, with a lease) -> sent, or back to pending for a retry,
or to failed. A claim whose lease ran out, or whose holder was a process of this machine that
no longer exists, is due again and goes out with the same Message-ID. A digest enters the
outbox in the same transaction as its entries are taken for its subscriber (see
:meth:`Outbox.enqueue`): a crash cannot lose it, and two senders cannot put one entry in two
digests for the same person.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, and_, delete, func, or_, select, update
from sqlalchemy.exc import SQLAlchemyError

from ..errors import StoreError
from .leases import holder_is_dead
from .records import OutboxRow, QueuedDigest
from .schema import FAILED, PENDING, SENDING, SENT, deliveries_table, subscribers_table, taken_table
from .sql import Transactions, _bind, _chunks, _dialect_insert, _mark, _serialise
from .sqlite import database_error

# An outbox row without its spec: most claims are of digests the sender planned itself.
_ROW_COLUMNS = [deliveries_table.c[name] for name in OutboxRow.__dataclass_fields__]


def _outbox_row(row: Any) -> OutboxRow:
    return OutboxRow(**row._asdict())


class Outbox(Transactions):
    """The deliveries table: digests to send, being sent, sent and failed."""

    def enqueue(self, deliveries: Sequence[QueuedDigest]) -> list[QueuedDigest]:
        """Commit digests to the outbox with their entries taken; return those that went in.

        A few bulk statements for any number of digests. Taken rows are inserted with
        ON CONFLICT DO NOTHING, then counted per digest: a digest that lost a row to a racing
        process (which took that entry for that person first) is removed again, whole, so
        racing senders never put one entry in two digests for the same person.
        """
        if not deliveries:
            return []
        with self._tx() as conn:
            return enqueue_in(conn, deliveries)

    def count_due(self, now: datetime) -> int:
        """How many outbox rows a ``claim`` at ``now`` could take (a hint for progress bars)."""
        with self._tx() as conn:
            return int(conn.execute(select(func.count()).where(self._due(now))).scalar_one())

    @staticmethod
    def _due(now: datetime) -> Any:
        return or_(
            and_(deliveries_table.c.state == PENDING, deliveries_table.c.next_attempt_at <= now),
            and_(deliveries_table.c.state == SENDING, deliveries_table.c.lease_until < now),
        )

    def claim(self, now: datetime, *, lease: timedelta, owner: str, limit: int = 100) -> list[OutboxRow]:
        """Atomically take up to ``limit`` due rows (pending -> sending, with a lease).

        Due: sending rows whose lease expired or whose holder is a process on this machine
        that no longer exists (a crashed ``send``: its digests go out again, with the same
        Message-ID), then pending rows whose next attempt has come, earliest first.
        """
        c = deliveries_table.c
        # Each query walks an index in order and stops at the limit. (One query with an OR of
        # the two kinds, by id, made SQLite collect and sort every due row at each claim, so a
        # claim cost more the larger the send.)
        # (never our own: a clock jump or a pause past the lease must not claim again what this
        # sender still holds and may be sending right now)
        expired = (
            select(c.id)
            .where(c.state == SENDING, c.lease_until < now, c.claimed_by != owner)
            .order_by(c.id)
            .limit(limit)
        )
        orphans = select(c.id, c.claimed_by).where(
            c.state == SENDING, c.lease_until >= now, c.claimed_by != owner
        )
        pending = (
            select(c.id).where(c.state == PENDING, c.next_attempt_at <= now).order_by(c.next_attempt_at, c.id)
        )
        with self._tx() as conn:
            if conn.dialect.name == "postgresql":  # SQLite serialises writers with BEGIN IMMEDIATE
                expired = expired.with_for_update(skip_locked=True)
                orphans = orphans.with_for_update(skip_locked=True)
                pending = pending.with_for_update(skip_locked=True)
            ids = list(conn.execute(expired).scalars())
            ids += [row.id for row in conn.execute(orphans) if holder_is_dead(row.claimed_by)]
            ids = ids[:limit]
            if len(ids) < limit:
                ids += conn.execute(pending.limit(limit - len(ids))).scalars()
            if not ids:
                return []
            conn.execute(
                update(deliveries_table)
                .where(deliveries_table.c.id.in_(ids))
                .values(
                    state=SENDING,
                    lease_until=now + lease,
                    claimed_by=owner,
                    attempts=deliveries_table.c.attempts + 1,
                )
            )
            rows = conn.execute(
                select(*_ROW_COLUMNS).where(deliveries_table.c.id.in_(ids)).order_by(deliveries_table.c.id)
            )
            return [_outbox_row(row) for row in rows]

    def renew_held(self, owner: str, until: datetime) -> int:
        """Extend the lease on every row ``owner`` holds (claimed, being sent); how many."""
        c = deliveries_table.c
        with self._tx() as conn:
            done = conn.execute(
                update(deliveries_table)
                .where(c.state == SENDING, c.claimed_by == owner)
                .values(lease_until=until)
            )
            return int(done.rowcount)

    # Every update of a claimed row is fenced: it changes the row only while this sender still
    # holds it (state sending, claimed by ``owner``). A sender paused past its lease (SIGSTOP,
    # a VM pause) finds the row taken over by another and must not put it back.

    def mark_retry(
        self,
        delivery_id: int,
        error: str,
        next_attempt_at: datetime,
        owner: str,
        *,
        unconfirmed: bool = False,
    ) -> bool:
        """Put a row we hold back to pending, to be claimed again at ``next_attempt_at``;
        ``unconfirmed``: its message may have arrived (counted). False: the row is not ours."""
        values: dict[str, Any] = {
            "state": PENDING,
            "next_attempt_at": next_attempt_at,
            "lease_until": None,
            "last_error": error,
        }
        if unconfirmed:
            values["unconfirmed"] = deliveries_table.c.unconfirmed + 1
        return self._update_held(delivery_id, owner, values)

    def mark_failed(self, delivery_id: int, error: str, owner: str) -> bool:
        """Give up on a row we hold: it is not sent, and its entries stay taken."""
        return self._update_held(
            delivery_id, owner, {"state": FAILED, "lease_until": None, "last_error": error}
        )

    def _update_held(self, delivery_id: int, owner: str, values: dict[str, Any]) -> bool:
        c = deliveries_table.c
        with self._tx() as conn:
            done = conn.execute(
                update(deliveries_table)
                .where(c.id == delivery_id, c.state == SENDING, c.claimed_by == owner)
                .values(**values)
            )
            return bool(done.rowcount)

    def pending(self) -> list[OutboxRow]:
        """Every pending row, the earliest next attempt first."""
        c = deliveries_table.c
        with self._tx() as conn:
            query = select(*_ROW_COLUMNS).where(c.state == PENDING).order_by(c.next_attempt_at, c.id)
            rows = conn.execute(query)
            return [_outbox_row(row) for row in rows]

    def retry_now(self, now: datetime, subscribers: Sequence[str] | None = None) -> int:
        """Make every pending row (of these subscribers) due now; how many were waiting."""
        c = deliveries_table.c
        query = update(deliveries_table).where(c.state == PENDING, c.next_attempt_at > now)
        if subscribers is not None:
            query = query.where(c.subscriber.in_(list(subscribers)))
        with self._tx() as conn:
            return int(conn.execute(query.values(next_attempt_at=now)).rowcount)

    def requeue_failed(
        self, now: datetime, give_up_after: timedelta, subscribers: Sequence[str] | None = None
    ) -> int:
        """Put failed rows (of these subscribers) back to pending, due now, with a new
        give-up time and their own Message-ID; how many."""
        c = deliveries_table.c
        query = update(deliveries_table).where(c.state == FAILED)
        if subscribers is not None:
            query = query.where(c.subscriber.in_(list(subscribers)))
        values = {
            "state": PENDING,
            "next_attempt_at": now,
            "deliver_until": now + give_up_after,
            "attempts": 0,
            "unconfirmed": 0,
            "claimed_by": None,
        }
        with self._tx() as conn:
            return int(conn.execute(query.values(**values)).rowcount)

    def last_delivered(self) -> dict[str, datetime]:
        """Each subscriber's last digest the server accepted."""
        c = deliveries_table.c
        with self._tx() as conn:
            rows = conn.execute(
                select(c.subscriber, func.max(c.sent_at)).where(c.state == SENT).group_by(c.subscriber)
            )
            return {row[0]: row[1] for row in rows if row[1] is not None}

    def deliveries(self, states: Sequence[str], limit: int = 1000) -> list[OutboxRow]:
        """Outbox rows in these states, oldest first."""
        with self._tx() as conn:
            rows = conn.execute(
                select(*_ROW_COLUMNS)
                .where(deliveries_table.c.state.in_(list(states)))
                .order_by(deliveries_table.c.id)
                .limit(limit)
            )
            return [_outbox_row(row) for row in rows]

    def specs(self, ids: Iterable[int]) -> dict[int, dict[str, Any]]:
        """What the outbox rows with these ids hold (sections, entries, scores, hits)."""
        out: dict[int, dict[str, Any]] = {}
        with self._tx() as conn:
            for chunk in _chunks(sorted(set(ids)), 500):
                rows = conn.execute(
                    select(deliveries_table.c.id, deliveries_table.c.spec).where(
                        deliveries_table.c.id.in_(chunk)
                    )
                )
                out.update(
                    (row.id, row.spec if isinstance(row.spec, dict) else json.loads(row.spec)) for row in rows
                )
        return out

    def delivery_counts(self) -> dict[str, int]:
        """How many outbox rows are in each state."""
        with self._tx() as conn:
            rows = conn.execute(
                select(deliveries_table.c.state, func.count()).group_by(deliveries_table.c.state)
            )
            return {row[0]: row[1] for row in rows}


def enqueue_in(conn: Connection, deliveries: Sequence[QueuedDigest]) -> list[QueuedDigest]:
    """:meth:`Outbox.enqueue` inside the caller's transaction (which may write more with it)."""
    _serialise(conn, "outbox")
    ids = [d.message_id for d in deliveries]
    present: set[str] = set()
    for chunk in _chunks(ids, 500):
        present.update(
            conn.execute(
                select(deliveries_table.c.message_id).where(deliveries_table.c.message_id.in_(chunk))
            ).scalars()
        )
    todo = [d for d in deliveries if d.message_id not in present]
    if not todo:
        return []
    delivery_ids = _insert_digests(conn, todo)
    accepted = _keep_whole(conn, todo, delivery_ids)
    if accepted:
        statement = _dialect_insert(conn, subscribers_table)
        conn.execute(
            statement.on_conflict_do_update(
                index_elements=["email"], set_={"last_digest_at": statement.excluded.last_digest_at}
            ),
            [{"email": d.subscriber, "last_digest_at": d.created_at} for d in accepted],
        )
    return accepted


def _insert_digests(conn: Connection, todo: list[QueuedDigest]) -> list[int]:
    """Insert the digests and their shown entries' taken rows; return the digests' row ids."""
    # Plain tuples straight to the driver: SQLAlchemy's per-row parameter processing
    # cost more than the inserts themselves.
    mark = _mark(conn)
    when = _bind(conn, deliveries_table.c.created_at)
    json_mark = mark if conn.dialect.name == "sqlite" else f"CAST({mark} AS JSON)"
    conn.exec_driver_sql(
        "INSERT INTO deliveries (subscriber, message_id, created_at, state, attempts, "
        "next_attempt_at, deliver_until, spec, cut) "
        f"VALUES ({mark}, {mark}, {mark}, {mark}, 0, {mark}, {mark}, {json_mark}, {mark})",
        [
            (
                d.subscriber,
                d.message_id,
                when(d.created_at),
                PENDING,
                when(d.created_at),
                when(d.deliver_until),
                d.spec,
                ",".join(map(str, d.hidden)) or None,
            )
            for d in todo
        ],
    )
    numbered: dict[str, int] = {}
    for chunk in _chunks([d.message_id for d in todo], 500):
        numbered.update(
            conn.execute(
                select(deliveries_table.c.message_id, deliveries_table.c.id).where(
                    deliveries_table.c.message_id.in_(chunk)
                )
            ).all()
        )
    delivery_ids = [numbered[d.message_id] for d in todo]
    rows = [
        (d.subscriber, eid, did, True) for d, did in zip(todo, delivery_ids, strict=True) for eid in d.shown
    ]
    if rows:
        conn.exec_driver_sql(
            "INSERT INTO delivered_entries (subscriber, entry_id, delivery_id, shown) "
            f"VALUES ({mark}, {mark}, {mark}, {mark}) ON CONFLICT DO NOTHING",
            rows,
        )
    return delivery_ids


def _keep_whole(conn: Connection, todo: list[QueuedDigest], delivery_ids: list[int]) -> list[QueuedDigest]:
    """The digests that got every taken row; the others (they lost a race) are removed whole."""
    counts: dict[int, int] = {}
    for chunk in _chunks(delivery_ids, 500):
        found = conn.execute(
            select(taken_table.c.delivery_id, func.count())
            .where(taken_table.c.delivery_id.in_(chunk))
            .group_by(taken_table.c.delivery_id)
        )
        counts.update((row[0], row[1]) for row in found)
    accepted, lost = [], []
    for d, did in zip(todo, delivery_ids, strict=True):
        if counts.get(did, 0) == len(d.shown):
            accepted.append(d)
        else:
            lost.append(did)
    for chunk in _chunks(lost, 500):
        conn.execute(delete(taken_table).where(taken_table.c.delivery_id.in_(chunk)))
        conn.execute(delete(deliveries_table).where(deliveries_table.c.id.in_(chunk)))
    return accepted


class SentMarker:
    """Marks outbox rows sent, for the one thread that records the server's acceptances
    (``run.SentRecorder``: a commit per accepted message, or per few, in a large send).

    It holds one connection and writes at driver level: a commit through ``Store._tx`` costs
    far more CPU (a pool trip and a statement compilation per call).
    """

    def __init__(self, store: Transactions) -> None:
        self.store = store
        self.conn: Connection | None = None
        self.sent_at: Callable[[Any], Any] = lambda value: value

    def __call__(self, ids: Sequence[int], now: datetime, owner: str) -> None:
        """Mark these rows sent at ``now``, in one commit (those ``owner`` still holds)."""
        if not ids:
            return
        try:
            if self.conn is None:
                self.conn = self.store.engine.connect()
                self.sent_at = _bind(self.conn, deliveries_table.c.sent_at)
            mark = _mark(self.conn)
            with self.store._turn, self.conn.begin():
                self.conn.exec_driver_sql(
                    f"UPDATE deliveries SET state = {mark}, sent_at = {mark}, lease_until = NULL, "
                    f"last_error = NULL WHERE state = {mark} AND claimed_by = {mark} "
                    f"AND id IN ({', '.join([mark] * len(ids))})",
                    (SENT, self.sent_at(now), SENDING, owner, *ids),
                )
        except SQLAlchemyError as exc:
            self.close()  # the next call starts on a new connection
            raise StoreError(database_error(self.store.url, exc)) from exc

    def close(self) -> None:
        """Close its connection (a later call opens a new one)."""
        if self.conn is not None:
            with contextlib.suppress(SQLAlchemyError):
                self.conn.close()
            self.conn = None

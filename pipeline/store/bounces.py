"""Bounces and suppressions: what came back from each delivery, and who gets no more digests.

A bounce is recorded against the outbox row (the delivery) it names; :meth:`Bounces.record_bounce`
then walks that subscriber's deliveries in order and counts the bounces **in a row**: a
delivery that was sent and has no bounce breaks the row (so a delivered digest resets the
count), a delivery that bounced several times (a delay warning, then the failure) counts once,
as its worst bounce. After ``hard_limit`` hard or ``soft_limit`` soft bounces in a row the
subscriber is suppressed, in the same transaction. ``unsuppress`` lifts it and makes every
delivery before it no longer count.

The VERP key (:mod:`pipeline.bounces.verp`) is made once, at random, and kept in ``meta``, so
every process and machine sharing the state database signs and checks the same tokens.

``meta`` also keeps, per bounce mailbox, the messages that were left in it as no bounce we can
read (:meth:`Bounces.left_in_mailbox`): later readings pass over them, so however many pile up
they never crowd out the bounces that arrive after them.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Connection, delete, insert, select

from .schema import FAILED, SENT, bounce_events_table, deliveries_table, meta_table, suppressions_table
from .sql import Transactions, _dialect_insert, _serialise

VERP_KEY = "verp_key"
LEFT_KEY = "bounces_left:"  # + a hash of the mailbox's name: the messages left in it
HARD, SOFT = "hard", "soft"


@dataclass(frozen=True, slots=True)
class BouncedDelivery:
    """The outbox row a bounce is about (None fields: the row was pruned)."""

    id: int
    subscriber: str
    message_id: str
    created_at: datetime
    state: str


@dataclass(frozen=True, slots=True)
class BounceEvent:
    """One bounce to record: for which delivery, how bad, and where it was read."""

    delivery: BouncedDelivery
    kind: str  # hard | soft
    status: str  # 5.1.1, or the SMTP reply code
    diagnostic: str
    source: str  # "smtp", or the mailbox and message it came in
    at: datetime


@dataclass(frozen=True, slots=True)
class Suppression:
    """A subscriber who gets no more digests, since when and why."""

    subscriber: str
    since: datetime
    kind: str
    status: str | None
    diagnostic: str | None


@dataclass(frozen=True, slots=True)
class BounceTally:
    """A subscriber's bounces in a row now, after recording one; ``suppression`` when suppressed."""

    hard: int
    soft: int
    suppression: Suppression | None
    duplicate: bool = False  # this very bounce was recorded before (read again after a failed move)


class Bounces(Transactions):
    """The bounce_events and suppressions tables, and the VERP key."""

    def verp_key(self) -> bytes:
        """The key VERP tokens are signed with (made on first use)."""
        with self._tx() as conn:
            found = conn.execute(select(meta_table.c.value).where(meta_table.c.key == VERP_KEY)).scalar()
            if found is None:
                statement = _dialect_insert(conn, meta_table).values(
                    key=VERP_KEY, value=secrets.token_hex(32)
                )
                conn.execute(statement.on_conflict_do_nothing(index_elements=["key"]))
                found = conn.execute(
                    select(meta_table.c.value).where(meta_table.c.key == VERP_KEY)
                ).scalar_one()
            return bytes.fromhex(found)

    def left_in_mailbox(self, where: str) -> frozenset[str]:
        """The keys of the messages left in mailbox ``where`` as unreadable at earlier readings."""
        with self._tx() as conn:
            return _left(conn, where)

    def remember_left(self, where: str, left: Iterable[str], *, present: Iterable[str]) -> None:
        """Remember the messages just left in ``where``; forget those no longer ``present`` in it
        (moved or deleted by someone since), so what is kept never outgrows the mailbox."""
        key = _left_key(where)
        with self._tx() as conn:
            _serialise(conn, key)
            known = _left(conn, where)
            keys = sorted((known & set(present)) | set(left))
            if keys == sorted(known):
                return  # (the usual reading: nothing new left, nothing taken away)
            conn.execute(delete(meta_table).where(meta_table.c.key == key))
            if keys:
                value = json.dumps({"mailbox": where, "left": keys})
                conn.execute(insert(meta_table).values(key=key, value=value))

    def bounced_delivery(self, delivery_id: int) -> BouncedDelivery | None:
        """The outbox row with this id, if the outbox still has it."""
        c = deliveries_table.c
        query = select(c.id, c.subscriber, c.message_id, c.created_at, c.state).where(c.id == delivery_id)
        with self._tx() as conn:
            row = conn.execute(query).first()
        return BouncedDelivery(*row) if row is not None else None

    def record_bounce(self, event: BounceEvent, *, hard_limit: int, soft_limit: int) -> BounceTally:
        """Record a bounce and, past a limit, suppress its subscriber: one transaction."""
        e = bounce_events_table.c
        subscriber = event.delivery.subscriber
        with self._tx() as conn:
            _serialise(conn, f"bounces:{subscriber}")
            duplicate = (
                event.source != "smtp"
                and conn.execute(
                    select(e.id).where(e.delivery_id == event.delivery.id, e.source == event.source)
                ).first()
                is not None
            )
            if not duplicate:
                conn.execute(
                    insert(bounce_events_table).values(
                        subscriber=subscriber,
                        delivery_id=event.delivery.id,
                        delivery_created_at=event.delivery.created_at,
                        kind=event.kind,
                        status=event.status[:16],
                        diagnostic=event.diagnostic,
                        source=event.source,
                        at=event.at,
                    )
                )
            hard, soft, reached = _in_a_row(conn, subscriber, hard_limit, soft_limit)
            current = _suppression(conn, subscriber)
            if reached and current is None:
                values = {
                    "since": event.at,
                    "kind": event.kind,
                    "status": event.status[:16],
                    "diagnostic": event.diagnostic,
                }
                statement = _dialect_insert(conn, suppressions_table).values(subscriber=subscriber, **values)
                conn.execute(statement.on_conflict_do_update(index_elements=["subscriber"], set_=values))
                current = _suppression(conn, subscriber)
        return BounceTally(hard, soft, current, duplicate)

    def suppressions(self) -> dict[str, Suppression]:
        """Every subscriber suppressed now, by address (lower case)."""
        s = suppressions_table.c
        with self._tx() as conn:
            rows = conn.execute(select(suppressions_table).where(s.since.is_not(None))).all()
        return {
            row.subscriber.lower(): Suppression(
                row.subscriber, row.since, row.kind, row.status, row.diagnostic
            )
            for row in rows
        }

    def unsuppress(self, email: str, now: datetime) -> tuple[Suppression | None, int]:
        """Lift a subscriber's suppression and reset their counts; the lifted suppression (None:
        there was none) and how many bounces stopped counting."""
        s, e = suppressions_table.c, bounce_events_table.c
        with self._tx() as conn:
            _serialise(conn, f"bounces:{email}")
            known = [
                *conn.execute(select(e.subscriber).distinct()).scalars(),
                *conn.execute(select(s.subscriber)).scalars(),
            ]
            names = [name for name in known if name.lower() == email.lower()] or [email]
            lifted: Suppression | None = None
            dropped = 0
            for name in dict.fromkeys(names):
                found = _suppression(conn, name)
                lifted = lifted or found
                dropped += len(_counted_events(conn, name))
                values = {"since": None, "counts_from": now}
                statement = _dialect_insert(conn, suppressions_table).values(subscriber=name, **values)
                conn.execute(statement.on_conflict_do_update(index_elements=["subscriber"], set_=values))
        return lifted, dropped

    def bounce_counts(self) -> dict[str, tuple[int, int]]:
        """Each bounced subscriber's (hard, soft) bounces in a row now, by address (lower case)."""
        with self._tx() as conn:
            names = conn.execute(select(bounce_events_table.c.subscriber).distinct()).scalars().all()
            out = {}
            for name in names:
                hard, soft, _ = _in_a_row(conn, name, 0, 0)
                if hard or soft:
                    out[name.lower()] = (hard, soft)
        return out


def _left_key(where: str) -> str:
    return LEFT_KEY + hashlib.sha256(where.encode()).hexdigest()[:40]  # (meta keys: 64 at most)


def _left(conn: Connection, where: str) -> frozenset[str]:
    found = conn.execute(select(meta_table.c.value).where(meta_table.c.key == _left_key(where))).scalar()
    if found is None:
        return frozenset()
    try:
        value = json.loads(found)
        keys = value["left"] if value.get("mailbox") == where else []
    except (ValueError, TypeError, KeyError, AttributeError):
        return frozenset()  # (unreadable: every message is read again once, nothing lost)
    return frozenset(k for k in keys if isinstance(k, str))


def _suppression(conn: Connection, subscriber: str) -> Suppression | None:
    s = suppressions_table.c
    row = conn.execute(
        select(suppressions_table).where(s.subscriber == subscriber, s.since.is_not(None))
    ).first()
    if row is None:
        return None
    return Suppression(row.subscriber, row.since, row.kind, row.status, row.diagnostic)


def _counts_from(conn: Connection, subscriber: str) -> datetime | None:
    s = suppressions_table.c
    return conn.execute(select(s.counts_from).where(s.subscriber == subscriber)).scalar()


def _counted_events(conn: Connection, subscriber: str) -> dict[int, tuple[datetime, str]]:
    """Each delivery that bounced and still counts: its time and worst bounce (hard first)."""
    e = bounce_events_table.c
    since = _counts_from(conn, subscriber)
    query = select(e.delivery_id, e.delivery_created_at, e.kind).where(e.subscriber == subscriber)
    if since is not None:
        query = query.where(e.delivery_created_at >= since)
    worst: dict[int, tuple[datetime, str]] = {}
    for delivery_id, created_at, kind in conn.execute(query):
        if delivery_id not in worst or kind == HARD:
            worst[delivery_id] = (created_at, kind)
    return worst


def _in_a_row(conn: Connection, subscriber: str, hard_limit: int, soft_limit: int) -> tuple[int, int, bool]:
    """The hard and soft bounces in a row at the end of the subscriber's deliveries, and
    whether at any point since the last reset they reached a limit (0: no limit)."""
    bounced = _counted_events(conn, subscriber)
    if not bounced:
        return 0, 0, False
    c = deliveries_table.c
    first = min(created for created, _ in bounced.values())
    # Only deliveries from the first counted bounce on can break a row that matters.
    others = conn.execute(
        select(c.id, c.created_at, c.state).where(
            c.subscriber == subscriber, c.state.in_([SENT, FAILED]), c.created_at >= first
        )
    ).all()
    timeline = sorted(
        [(created, did, kind) for did, (created, kind) in bounced.items()]
        + [
            (created, did, None if state == SENT else FAILED)
            for did, created, state in others
            if did not in bounced
        ]
    )
    hard = soft = 0
    reached = False
    for _, _, kind in timeline:
        if kind is None:  # delivered, and nothing came back: the row is broken
            hard = soft = 0
            continue
        if kind == FAILED:  # a failure that is no bounce (a message too big) is neither
            continue
        if kind == HARD:
            hard += 1
        else:
            soft += 1
        reached = (
            reached or bool(hard_limit and hard >= hard_limit) or bool(soft_limit and soft >= soft_limit)
        )
    return hard, soft, reached


__all__ = ["HARD", "SOFT", "BounceEvent", "BounceTally", "BouncedDelivery", "Bounces", "Suppression"]

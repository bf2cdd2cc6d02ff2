"""Readers' own choices, made on the web (``digest serve``): unsubscribed, paused, topics, schedule.

One row per reader, by lower-cased address; a column left NULL means "as the config says".
Each change is one statement (an upsert), so a preferences save and a one-click unsubscribe
arriving together cannot lose either. What the choices mean for sending is decided in
:mod:`pipeline.run.audience`, not here.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select

from .schema import readers_table
from .sql import Transactions, _chunks, _dialect_insert

_CHOICES = ("unsubscribed_at", "unsubscribed_via", "topics", "schedule", "paused_until")


@dataclass(frozen=True, slots=True)
class ReaderChoices:
    """What one reader chose on the web (None: as the config says)."""

    email: str  # lower-cased
    unsubscribed_at: datetime | None = None
    unsubscribed_via: str | None = None
    topics: tuple[str, ...] | None = None
    schedule: str | None = None
    paused_until: datetime | None = None
    updated_at: datetime | None = None


def _choices(row: Any) -> ReaderChoices:
    values = row._asdict()
    topics = values.pop("topics")
    return ReaderChoices(**values, topics=tuple(topics) if topics is not None else None)


class Readers(Transactions):
    """The readers' choices table."""

    def reader_choices(self) -> dict[str, ReaderChoices]:
        """Every reader who made a choice, by lower-cased address."""
        with self._tx() as conn:
            return {row.email: _choices(row) for row in conn.execute(select(readers_table))}

    def reader_choice(self, email: str) -> ReaderChoices | None:
        """One reader's choices (None: they never made one)."""
        with self._tx() as conn:
            row = conn.execute(select(readers_table).where(readers_table.c.email == email.lower())).first()
        return _choices(row) if row is not None else None

    def readers_among(self, emails: Iterable[str]) -> dict[str, ReaderChoices]:
        """The choices of those of these readers who made any, by lower-cased address."""
        wanted = sorted({email.lower() for email in emails})
        out: dict[str, ReaderChoices] = {}
        with self._tx() as conn:
            for chunk in _chunks(wanted, 500):
                query = select(readers_table).where(readers_table.c.email.in_(chunk))
                out.update((row.email, _choices(row)) for row in conn.execute(query))
        return out

    def record_reader_choices(self, email: str, now: datetime, **changes: Any) -> None:
        """Set some of a reader's choices (``topics``, ``schedule``, ``paused_until``,
        ``unsubscribed_at``, ``unsubscribed_via``); the others stay as they were."""
        unknown = set(changes) - set(_CHOICES)
        if unknown:
            raise TypeError(f"not a reader choice: {', '.join(sorted(unknown))}")
        if "topics" in changes and changes["topics"] is not None:
            changes["topics"] = list(changes["topics"])
        values = {**changes, "updated_at": now}
        with self._tx() as conn:
            statement = _dialect_insert(conn, readers_table).values(email=email.lower(), **values)
            conn.execute(statement.on_conflict_do_update(index_elements=["email"], set_=values))

    def unsubscribe_reader(self, email: str, now: datetime, *, via: str = "web") -> bool:
        """Unsubscribe a reader at once; False if they already were (the first time stays).

        One statement: an upsert whose update applies only while ``unsubscribed_at`` is NULL,
        so of two unsubscribes racing (a one-click POST and the page's button, two processes)
        the first time and way stick, and the reader's other choices are left as they are."""
        values = {"unsubscribed_at": now, "unsubscribed_via": via, "updated_at": now}
        with self._tx() as conn:
            statement = _dialect_insert(conn, readers_table).values(email=email.lower(), **values)
            statement = statement.on_conflict_do_update(
                index_elements=["email"], set_=values, where=readers_table.c.unsubscribed_at.is_(None)
            )
            return bool(conn.execute(statement).rowcount)

"""Readers' votes: "more like this" / "less like this" on the entries of their digests.

One current vote per reader and entry (``votes``, keyed by the lower-cased address their
links sign): voting again the same way changes nothing, voting the other way replaces it.
Relevance learning reads them (the relevance issue); until it exists, a "less like this"
hides the entry's *later edits* from that reader (:meth:`Votes.hidden_edits`).

A later edit is what the identity rules (:mod:`pipeline.store.identity`) cannot recognise as
the same entry, so that it would be new again: a feed that re-posts an item under a new guid
with its text changed (rule 2 needs the text unchanged), or under a new guid with the same
link (rule 1 keeps distinct guids of one feed apart). So an entry created after the voted one
is its edit when it has the same canonical link, or the same title (case and spacing aside)
in a feed that carried the voted one.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from sqlalchemy import func, select

from ..models import Entry
from .schema import entries_table, sources_table, taken_table, votes_table
from .sql import Transactions, _chunks, _dialect_insert

VoteKind = Literal["more", "less"]
VOTES: tuple[VoteKind, ...] = ("more", "less")


@dataclass(frozen=True, slots=True)
class Vote:
    """A reader's current vote on one entry."""

    subscriber: str  # lower-cased
    entry_id: int
    vote: VoteKind
    at: datetime


@dataclass(frozen=True, slots=True)
class VoteCounts:
    """How many entries a reader voted "more" and "less" on."""

    more: int = 0
    less: int = 0


def voter(email: str) -> str:
    """The key a reader's votes are kept under: their address as their links sign it."""
    return email.strip().lower()


def title_key(title: str) -> str:
    """A title compared for "the same item": case and spacing do not count."""
    return " ".join(title.casefold().split())


class Votes(Transactions):
    """The ``votes`` table."""

    def record_vote(self, email: str, entry_id: int, vote: VoteKind, now: datetime) -> Vote | None:
        """Record a reader's vote; return the vote it replaced (None: there was none).

        The same vote again changes nothing (its time stays); the other vote replaces it.
        """
        if vote not in VOTES:
            raise ValueError(f"a vote is more or less, not {vote!r}")
        who = voter(email)
        with self._tx() as conn:
            row = conn.execute(
                select(votes_table).where(votes_table.c.subscriber == who, votes_table.c.entry_id == entry_id)
            ).first()
            if row is not None and row.vote == vote:
                return _vote(row)
            statement = _dialect_insert(conn, votes_table).values(
                subscriber=who, entry_id=entry_id, vote=vote, at=now
            )
            # (one statement: two clicks racing on PostgreSQL must not both insert)
            conn.execute(
                statement.on_conflict_do_update(
                    index_elements=["subscriber", "entry_id"], set_={"vote": vote, "at": now}
                )
            )
        return _vote(row) if row is not None else None

    def vote_of(self, email: str, entry_id: int) -> Vote | None:
        """A reader's current vote on an entry, if any."""
        with self._tx() as conn:
            row = conn.execute(
                select(votes_table).where(
                    votes_table.c.subscriber == voter(email), votes_table.c.entry_id == entry_id
                )
            ).first()
        return _vote(row) if row is not None else None

    def entry_votes(self, entry_id: int) -> list[Vote]:
        """Every reader's vote on one entry, oldest first."""
        with self._tx() as conn:
            rows = conn.execute(
                select(votes_table)
                .where(votes_table.c.entry_id == entry_id)
                .order_by(votes_table.c.at, votes_table.c.subscriber)
            ).all()
        return [_vote(row) for row in rows]

    def vote_counts(self) -> dict[str, VoteCounts]:
        """Per reader (lower-cased address) with any vote: how many of each kind."""
        with self._tx() as conn:
            rows = conn.execute(
                select(votes_table.c.subscriber, votes_table.c.vote, func.count()).group_by(
                    votes_table.c.subscriber, votes_table.c.vote
                )
            ).all()
        counts: dict[str, dict[str, int]] = {}
        for who, vote, n in rows:
            counts.setdefault(who, {})[vote] = n
        return {who: VoteCounts(c.get("more", 0), c.get("less", 0)) for who, c in counts.items()}

    def was_sent(self, email: str, entry_id: int) -> bool:
        """Whether one of this reader's digests listed this entry (what they may vote on)."""
        with self._tx() as conn:
            found = conn.execute(
                select(taken_table.c.entry_id)
                .where(
                    func.lower(taken_table.c.subscriber) == voter(email),
                    taken_table.c.entry_id == entry_id,
                    taken_table.c.shown.is_(True),
                )
                .limit(1)
            ).first()
        return found is not None

    def hidden_edits(self, emails: Iterable[str], candidates: Sequence[Entry]) -> dict[str, set[int]]:
        """For each reader (as given), the candidates that are later edits of an entry they
        voted "less like this" on (see the module docstring): not to be offered to them."""
        by_voter: dict[str, list[str]] = {}
        for email in emails:
            by_voter.setdefault(voter(email), []).append(email)
        out: dict[str, set[int]] = {}
        if not by_voter or not candidates:
            return out
        with self._tx() as conn:
            query = (
                select(votes_table.c.subscriber, entries_table.c.id, entries_table.c.link)
                .add_columns(entries_table.c.title)
                .join(entries_table, entries_table.c.id == votes_table.c.entry_id)
                .where(votes_table.c.vote == "less")
            )
            if len(by_voter) <= 500:  # (a send to everyone reads every "less": there are few)
                query = query.where(votes_table.c.subscriber.in_(list(by_voter)))
            voted = [row for row in conn.execute(query) if row.subscriber in by_voter]
            feeds: dict[int, set[str]] = {}
            for chunk in _chunks(sorted({row.id for row in voted}), 500):
                for entry_id, feed in conn.execute(
                    select(sources_table.c.entry_id, sources_table.c.feed).where(
                        sources_table.c.entry_id.in_(chunk)
                    )
                ):
                    feeds.setdefault(entry_id, set()).add(feed)
        # What each "less" hides: its link, and its title in each of its feeds.
        by_link: dict[str, list[tuple[str, int]]] = {}
        by_title: dict[tuple[str, str], list[tuple[str, int]]] = {}
        for row in voted:
            if row.link:
                by_link.setdefault(row.link, []).append((row.subscriber, row.id))
            for feed in feeds.get(row.id, ()):
                by_title.setdefault((feed, title_key(row.title)), []).append((row.subscriber, row.id))
        if not by_link and not by_title:
            return out
        for entry in candidates:
            found = list(by_link.get(entry.link, ())) if entry.link else []
            key = title_key(entry.title)
            for feed in entry.feeds:
                found += by_title.get((feed, key), ())
            for who, voted_id in found:
                if entry.id > voted_id:  # created after the voted entry: its edit, not itself
                    for email in by_voter[who]:
                        out.setdefault(email, set()).add(entry.id)
        return out


def _vote(row: object) -> Vote:
    return Vote(row.subscriber, row.entry_id, row.vote, row.at)  # type: ignore[attr-defined]

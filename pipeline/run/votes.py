"""Readers' votes from their digests' links: what a reader may vote on, and recording a vote.

A reader votes on an entry one of their digests listed, nothing else: the link's token says
who, the path which entry, and an entry they were never sent is not theirs to vote on. What a
vote does is written where it acts: :mod:`pipeline.store.votes` (a "less like this" hides
the entry's later edits from that reader) and ``digest status`` / ``match --explain``, which
show them.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from ..models import Entry
from ..store import Store, Vote, VoteKind


@dataclass(frozen=True, slots=True)
class VoteTarget:
    """An entry a reader may vote on, and their vote on it so far."""

    entry: Entry
    current: Vote | None
    pruned: bool  # older than ``retain``: only its title, link and date are kept


def vote_target(store: Store, subscriber: str, entry_id: int) -> VoteTarget | None:
    """The entry, if one of this subscriber's digests listed it and it is still stored."""
    if not store.was_sent(subscriber, entry_id):
        return None
    found = store.archived_entries([entry_id])
    entry = found.entries.get(entry_id)
    if entry is None:
        return None
    return VoteTarget(entry, store.vote_of(subscriber, entry_id), entry_id in found.pruned)


def cast_vote(
    store: Store, subscriber: str, entry_id: int, vote: VoteKind, now: datetime
) -> tuple[VoteTarget, Vote | None] | None:
    """Record a reader's vote; the entry and the vote it replaced (None: a first vote).

    None when the entry is not one they may vote on (nothing is recorded then). The same vote
    twice records nothing new; the other vote replaces the first.
    """
    target = vote_target(store, subscriber, entry_id)
    if target is None:
        return None
    before = store.record_vote(subscriber, entry_id, vote, now)
    return target, before

"""Digests as outbox rows, and back: what the outbox keeps of a digest until it is delivered."""

from __future__ import annotations

import itertools
import json
from datetime import timedelta
from typing import Any

from ..config import Settings
from ..models import Digest, Entry, Match, Section
from ..store import OutboxRow, QueuedDigest

DEFAULT_GIVE_UP = timedelta(days=2)  # how long a Maildir outbox keeps trying


def queued_digest(settings: Settings, digest: Digest, encoder: OutboxEncoder | None = None) -> QueuedDigest:
    """A digest as the outbox row that will hold it until it is delivered."""
    give_up = settings.smtp.give_up_after if settings.smtp else DEFAULT_GIVE_UP
    spec, shown, hidden = (encoder or OutboxEncoder()).encode(digest)
    return QueuedDigest(
        subscriber=digest.subscriber,
        message_id=digest.message_id,
        created_at=digest.created_at,
        deliver_until=digest.created_at + give_up,
        shown=shown,
        hidden=hidden,
        spec=spec,
    )


class OutboxEncoder:
    """The outbox form of digests: a spec (JSON, read back by :func:`digest_from_row`) and
    the entry ids shown and only counted. Planning shares match records between digests (a
    large send holds a few hundred distinct ones in tens of thousands of places), so each is
    encoded once."""

    BOUND = 4096  # (matches kept; most sharing is between digests planned together)

    def __init__(self) -> None:
        # id(match) -> (the match, kept so that its id is not reused; its JSON)
        self.matches: dict[int, tuple[Match, str]] = {}

    def encode(self, digest: Digest) -> tuple[str, tuple[int, ...], tuple[int, ...]]:
        """The digest's spec, the ids of the entries it shows, and of those it only counts."""
        sections = []
        for s in digest.sections:
            head = json.dumps({"topic": s.topic, "title": s.title, "more": s.more})
            sections.append(f'{head[:-1]}, "entries": [{", ".join(map(self._match, s.matches))}]}}')
        head = json.dumps({"name": digest.name, "topics": list(digest.topics)})
        spec = f'{head[:-1]}, "sections": [{", ".join(sections)}]}}'
        shown = tuple(m.entry.id for s in digest.sections for m in s.matches)
        return spec, shown, tuple(itertools.chain.from_iterable(s.cut for s in digest.sections))

    def _match(self, match: Match) -> str:
        known = self.matches.get(id(match))
        if known is None:
            if len(self.matches) >= self.BOUND:
                self.matches.clear()
            text = json.dumps([match.entry.id, match.score, list(match.hits)])
            known = self.matches[id(match)] = (match, text)
        return known[1]


def digest_from_row(row: OutboxRow, spec: dict[str, Any], entries: dict[int, Entry]) -> Digest:
    """Rebuild the digest an outbox row describes (entries pruned since are left out)."""
    sections = []
    for s in spec["sections"]:
        matches = tuple(
            Match(entries[eid], s["topic"], score, tuple(hits))
            for eid, score, hits in s["entries"]
            if eid in entries
        )
        sections.append(Section(s["topic"], s["title"], matches, more=s["more"]))
    return Digest(
        subscriber=row.subscriber,
        name=spec.get("name"),
        sections=tuple(sections),
        topics=tuple(spec.get("topics", [])),
        created_at=row.created_at,
        message_id=row.message_id,
    )

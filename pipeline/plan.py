"""Planning, pure: subscribers x each topic's matches x what each already took -> digests.

A subscriber's digest holds, for each of their topics in their order, the topic's matches
published since their cutoff that they have not taken yet, each entry once (under the first of
their topics that matches it), best first: higher score, then newer, then the higher id.
``[digest] max_entries`` keeps the best across the whole email; the rest of each topic is
counted as "and N more" (``Section.more``) and its ids kept (``Section.cut``): they are taken
too, so they do not come back in the next digest.

Thousands of subscribers share a few topic lists and cutoffs, so each topic's matches are
ranked once and each variant of a topic's view (its earlier topics, a cutoff) is worked out
once (:class:`TopicViews`); only what a subscriber already took is their own.
"""

from __future__ import annotations

import bisect
import hashlib
import itertools
import operator
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache

from .config import Settings, SubscriberConfig, sender_address
from .models import Digest, Match, Section


def select_digests(
    settings: Settings,
    subscribers: Sequence[SubscriberConfig],
    matches: Mapping[str, Sequence[Match]],
    taken: Mapping[str, set[int]],
    cutoffs: Mapping[str, datetime],
    now: datetime,
    *,
    keep_empty: bool = False,
) -> list[Digest]:
    """Each subscriber's digest from every topic's matches (best first): the pure half of planning.

    ``matches`` holds every topic of these subscribers; ``taken`` the entries each subscriber
    already has; ``cutoffs`` the oldest publication date each may still get. Each topic's
    matches are prepared once and shared by its subscribers.
    """
    views = TopicViews(settings, matches)
    titles: dict[tuple[str, ...], tuple[str, ...]] = {}
    digests = []
    for sub in subscribers:
        topics = tuple(sub.topics)
        sections, shown = views.for_subscriber(topics, cutoffs[sub.email], taken.get(sub.email, set()))
        if not sections and not (keep_empty or settings.digest.send_empty):
            continue
        if topics not in titles:
            titles[topics] = tuple(settings.topic_title(t) for t in topics)
        digests.append(
            Digest(
                subscriber=sub.email,
                name=sub.name,
                sections=sections,
                topics=titles[topics],
                created_at=now,
                message_id=message_id(sub.email, shown, now, settings.sender),
            )
        )
    return digests


@dataclass(frozen=True, slots=True)
class RankedMatches:
    """One topic's matches in rank order, with their entry ids and ranks (ints: lower is better)."""

    matches: list[Match]
    ids: list[int]
    ranks: list[int]
    idset: frozenset[int]

    def since(self, cutoff: datetime) -> RankedMatches:
        mask = [m.entry.published >= cutoff for m in self.matches]
        return self if all(mask) else self._keep(mask)

    def without(self, excluded: Iterable[int]) -> RankedMatches:
        gone = self.idset.intersection(excluded)
        if not gone:
            return self
        if len(gone) * 8 > len(self.ids):
            return self._keep(list(map(operator.not_, map(gone.__contains__, self.ids))))
        # A few entries go (the usual overlap between two topics): copy the runs between them.
        # Slices and list.index run in C; a loop over every entry would not, and this is done
        # thousands of times per run.
        holes = sorted(map(self.ids.index, gone))
        runs = list(zip([0, *(h + 1 for h in holes)], [*holes, len(self.ids)], strict=True))
        matches: list[Match] = []
        ids: list[int] = []
        ranks: list[int] = []
        for start, end in runs:
            matches += self.matches[start:end]
            ids += self.ids[start:end]
            ranks += self.ranks[start:end]
        return RankedMatches(matches, ids, ranks, self.idset - gone)

    def _keep(self, mask: list[bool]) -> RankedMatches:
        ids = list(itertools.compress(self.ids, mask))
        matches = list(itertools.compress(self.matches, mask))
        return RankedMatches(matches, ids, list(itertools.compress(self.ranks, mask)), frozenset(ids))


class TopicViews:
    """Each topic's matches as its subscribers see them, each variant worked out once.

    What a subscriber gets under a topic depends only on the topic, the topics they list before
    it (an entry appears under the first) and their cutoff, which thousands of subscribers share;
    only the entries they already took are their own.
    """

    def __init__(self, settings: Settings, matches: Mapping[str, Sequence[Match]]) -> None:
        self.limit = settings.digest.max_entries
        self.titles = {topic: settings.topic_title(topic) for topic in matches}
        # One ordering of every match of every topic, so that ranks are plain ints.
        everything = sorted(((m, t) for t, found in matches.items() for m in found), key=_rank_pair)
        lists: dict[str, tuple[list[Match], list[int], list[int]]] = {t: ([], [], []) for t in matches}
        for n, (match, topic) in enumerate(everything):
            found, ids, ranks = lists[topic]
            found.append(match)
            ids.append(match.entry.id)
            ranks.append(n)
        self.ranked = {
            t: RankedMatches(found, ids, ranks, frozenset(ids)) for t, (found, ids, ranks) in lists.items()
        }
        self.views: dict[tuple[str, frozenset[str], datetime], RankedMatches] = {}
        self.chosen: dict[tuple[tuple[str, ...], datetime], list[tuple[str, RankedMatches]]] = {}
        self.sections: dict[tuple[tuple[str, ...], datetime], tuple[tuple[Section, ...], list[int]]] = {}

    def view(self, topic: str, earlier: frozenset[str], cutoff: datetime) -> RankedMatches:
        """The topic's matches published since ``cutoff`` that none of the ``earlier`` topics holds."""
        key = (topic, earlier, cutoff)
        found = self.views.get(key)
        if found is None:
            if earlier:
                shown = frozenset().union(*(self.view(t, frozenset(), cutoff).idset for t in earlier))
                found = self.view(topic, frozenset(), cutoff).without(shown)
            else:
                found = self.ranked[topic].since(cutoff)
            self.views[key] = found
        return found

    def for_subscriber(
        self, topics: tuple[str, ...], cutoff: datetime, taken: set[int]
    ) -> tuple[tuple[Section, ...], list[int]]:
        """A digest's sections (each entry once, under the first of ``topics`` that has it) and
        the ids of the entries shown.

        Subscribers with the same topics and cutoff who took none of these entries share them:
        fewer objects made means less work for Python's garbage collector too.
        """
        key = (topics, cutoff)
        chosen = self.chosen.get(key)
        if chosen is None:
            chosen = self.chosen[key] = [
                (topic, self.view(topic, frozenset(topics[:i]), cutoff)) for i, topic in enumerate(topics)
            ]
        if taken and not all(view.idset.isdisjoint(taken) for _, view in chosen):
            return self._cut([(topic, view.without(taken)) for topic, view in chosen])
        planned = self.sections.get(key)
        if planned is None:
            planned = self.sections[key] = self._cut(chosen)
        return planned

    def _cut(self, chosen: Sequence[tuple[str, RankedMatches]]) -> tuple[tuple[Section, ...], list[int]]:
        # max_entries keeps the best across the whole email; the rest is counted as "and N more".
        # Each list is in rank order, so what is kept is a prefix of each: find the worst rank kept.
        limit = self.limit
        worst = None
        if sum(len(view.ids) for _, view in chosen) > limit:
            best: list[int] = []
            for _, view in chosen:
                best += view.ranks[:limit]
            best.sort()
            worst = best[limit - 1]
        sections = []
        shown: list[int] = []
        for topic, view in chosen:
            if not view.ids:
                continue
            kept = len(view.ids) if worst is None else bisect.bisect_right(view.ranks, worst)
            shown += view.ids[:kept]
            sections.append(
                Section(
                    topic,
                    self.titles[topic],
                    tuple(view.matches[:kept]),
                    more=len(view.ids) - kept,
                    cut=tuple(view.ids[kept:]),
                )
            )
        return tuple(sections), shown


def _rank_pair(pair: tuple[Match, str]) -> tuple[int, float, int]:
    return _rank(pair[0])


def _rank(match: Match) -> tuple[int, float, int]:
    return (-match.score, -match.entry.published.timestamp(), -match.entry.id)


def message_id(subscriber: str, entry_ids: list[int], created_at: datetime, sender: str) -> str:
    """A Message-ID fixed by the digest's content and time, on the sender's domain."""
    iso, stamp = _stamps(created_at)
    seed = f"{subscriber}\n{iso}\n{','.join(map(str, sorted(entry_ids)))}"
    token = hashlib.sha256(seed.encode()).hexdigest()[:24]
    domain = sender_address(sender).rpartition("@")[2] or "localhost"
    return f"<{stamp}.{token}@{domain}>"


@lru_cache(maxsize=16)  # one run plans thousands of digests created at the same time
def _stamps(created_at: datetime) -> tuple[str, str]:
    return created_at.isoformat(), created_at.strftime("%Y%m%d%H%M%S")

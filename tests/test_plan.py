"""plan.select_digests, the optimised per-subscriber selection, against the plain algorithm it replaces."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline import plan
from pipeline.config import Settings, SubscriberConfig, parse_settings
from pipeline.models import Entry, Match

TOPICS = ["a", "b", "c", "d"]
T0 = datetime(2026, 11, 27, tzinfo=UTC)


def make_settings(max_entries: int, subscribers: list[list[str]]) -> Settings:
    lines = ["[digest]", f"max_entries = {max_entries}", ""]
    for name in TOPICS:
        lines += [f"[topics.{name}]", f'title = "Topic {name.upper()}"', f'keywords = ["{name}"]', ""]
    for n, topics in enumerate(subscribers):
        lines += [
            "[[subscribers]]",
            f'email = "s{n}@example.org"',
            f"topics = {topics!r}".replace("'", '"'),
            "",
        ]
    return parse_settings("\n".join(lines), Path("/nonexistent/digest.toml"))


def rank(m: Match) -> tuple[int, float, int]:
    return (-m.score, -m.entry.published.timestamp(), -m.entry.id)


def reference(
    settings: Settings,
    sub: SubscriberConfig,
    matches: dict[str, list[Match]],
    taken: set[int],
    cutoff: datetime,
) -> list[tuple[str, list[int], int, list[int]]]:
    """The selection as first written: one pass per subscriber over every match of their topics."""
    chosen: dict[str, list[Match]] = {}
    seen: set[int] = set()
    for topic in sub.topics:
        picked = chosen.setdefault(topic, [])
        for m in matches[topic]:
            if m.entry.id in taken or m.entry.id in seen or m.entry.published < cutoff:
                continue
            seen.add(m.entry.id)
            picked.append(m)
    ranked = sorted((m for ms in chosen.values() for m in ms), key=rank)
    keep = {id(m) for m in ranked[: settings.digest.max_entries]}
    return [
        (
            topic,
            [m.entry.id for m in picked if id(m) in keep],
            sum(1 for m in picked if id(m) not in keep),
            [m.entry.id for m in picked if id(m) not in keep],
        )
        for topic, picked in chosen.items()
        if picked
    ]


@st.composite
def scenarios(
    draw: st.DrawFn,
) -> tuple[Settings, dict[str, list[Match]], dict[str, set[int]], dict[str, datetime]]:
    count = draw(st.integers(1, 25))
    entries = [
        Entry(n, f"e{n}", None, "", (), (), T0 - timedelta(hours=h), T0, ("f",))
        for n, h in enumerate(draw(st.lists(st.integers(0, 12), min_size=count, max_size=count)), start=1)
    ]
    matches = {}
    for topic in TOPICS:
        chosen = draw(st.lists(st.sampled_from(entries), unique_by=lambda e: e.id, max_size=count))
        found = [Match(e, topic, draw(st.integers(1, 4)), (topic,)) for e in chosen]
        matches[topic] = sorted(found, key=rank)
    subscribers = draw(
        st.lists(
            st.lists(st.sampled_from(TOPICS), min_size=1, max_size=4, unique=True), min_size=1, max_size=6
        )
    )
    settings_ = make_settings(draw(st.integers(1, 8)), subscribers)
    ids = [e.id for e in entries]
    taken = {s.email: set(draw(st.lists(st.sampled_from(ids), max_size=5))) for s in settings_.subscribers}
    cutoffs = {
        s.email: T0 - timedelta(hours=draw(st.sampled_from([6, 12, 24]))) for s in settings_.subscribers
    }
    return settings_, matches, taken, cutoffs


@settings(max_examples=200, deadline=None)
@given(scenarios())
def test_select_digests_agrees_with_the_plain_algorithm(
    scenario: tuple[Settings, dict[str, list[Match]], dict[str, set[int]], dict[str, datetime]],
) -> None:
    settings_, matches, taken, cutoffs = scenario
    digests = plan.select_digests(
        settings_, settings_.subscribers, matches, taken, cutoffs, T0, keep_empty=True
    )
    assert [d.subscriber for d in digests] == [s.email for s in settings_.subscribers]
    for sub, digest in zip(settings_.subscribers, digests, strict=True):
        got = [(s.topic, [m.entry.id for m in s.matches], s.more, list(s.cut)) for s in digest.sections]
        assert got == reference(settings_, sub, matches, taken[sub.email], cutoffs[sub.email])
        assert all(s.title == f"Topic {s.topic.upper()}" for s in digest.sections)

"""Counting bounces in a row (pipeline.store.bounces) on a real SQLite state file: each case is
a subscriber's deliveries in order, each sent without a bounce (``ok``), bounced soft (``s``)
or hard (``h``), or failed for a reason that is no bounce (``big``, a message too big)."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from pipeline.store import BouncedDelivery, BounceEvent, QueuedDigest, SentMarker, Store, utcnow

SPEC = '{"name": null, "topics": [], "sections": []}'


def deliveries(store: Store, plan: list[str]) -> list[BouncedDelivery]:
    """One outbox row per letter of ``plan``, an hour apart, sent or failed as it says."""
    start = utcnow() - timedelta(days=30)
    out = []
    for i, what in enumerate(plan):
        when = start + timedelta(hours=i)
        store.enqueue(
            [QueuedDigest("ada@example.org", f"<{i}@test>", when, when + timedelta(days=2), (), (), SPEC)]
        )
        (row,) = store.claim(utcnow(), lease=timedelta(minutes=1), owner="me", limit=1)
        if what == "big":
            store.mark_failed(row.id, "message too big", "me")
        else:
            marker = SentMarker(store)
            marker([row.id], when, "me")
            marker.close()
        delivery = store.bounced_delivery(row.id)
        assert delivery is not None
        out.append(delivery)
    return out


@pytest.mark.parametrize(
    ("plan", "limits", "counts", "suppressed"),
    [
        (["s", "s", "s"], (1, 3), (0, 3), True),
        (["s", "s", "ok", "s"], (1, 3), (0, 1), False),  # a delivered digest resets the row
        (["s", "s", "big", "s"], (1, 3), (0, 3), True),  # a failure that is no bounce does not
        (["h", "ok"], (2, 5), (0, 0), False),
        (["h", "s", "h"], (2, 5), (2, 1), True),  # hard and soft in one row count apart
        (["s", "s", "s", "ok", "ok"], (1, 3), (0, 0), True),  # reached once: suppressed
        (["h"], (1, 5), (1, 0), True),
    ],
)
def test_bounces_in_a_row(
    tmp_path: Path, plan: list[str], limits: tuple[int, int], counts: tuple[int, int], suppressed: bool
) -> None:
    with Store(f"sqlite:///{tmp_path / 'state.db'}") as store:
        made = deliveries(store, plan)
        tally = None
        for delivery, what in zip(made, plan, strict=True):
            if what in ("s", "h"):
                event = BounceEvent(
                    delivery, "soft" if what == "s" else "hard", "5.1.1", "x", f"box {delivery.id}", utcnow()
                )
                tally = store.record_bounce(event, hard_limit=limits[0], soft_limit=limits[1])
        assert tally is not None
        assert (tally.suppression is not None) is suppressed
        assert ("ada@example.org" in store.suppressions()) is suppressed
        assert store.bounce_counts().get("ada@example.org", (0, 0)) == counts


def test_a_late_bounce_joins_its_own_place_in_the_row_and_one_delivery_counts_once(tmp_path: Path) -> None:
    with Store(f"sqlite:///{tmp_path / 'state.db'}") as store:
        d1, d2, d3 = deliveries(store, ["s", "s", "ok"])

        def bounce(delivery: BouncedDelivery, kind: str, source: str) -> object:
            event = BounceEvent(delivery, kind, "4.2.2", "full", source, utcnow())
            return store.record_bounce(event, hard_limit=1, soft_limit=3)

        bounce(d1, "soft", "UID 1")
        bounce(d1, "soft", "UID 2")  # a delay warning, then the failure: one delivery, once
        bounce(d2, "soft", "UID 3")
        assert store.bounce_counts() == {}  # d3 was delivered since: the row is broken
        assert store.suppressions() == {}
        again = store.record_bounce(
            BounceEvent(d2, "soft", "4.2.2", "full", "UID 3", utcnow()), hard_limit=1, soft_limit=3
        )
        assert again.duplicate  # the same message read again (its move had failed)
        bounce(d3, "soft", "UID 4")  # d3's bounce arrives late: now three in a row
        assert "ada@example.org" in store.suppressions()
        lifted, counted = store.unsuppress("Ada@Example.org", utcnow())
        assert lifted is not None and counted == 3
        assert store.suppressions() == {} and store.bounce_counts() == {}

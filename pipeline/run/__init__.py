"""The chain: the one place that strings the stages together. The CLI and the scheduler (the
faces) call these functions and nothing below them.

- ``fetch_all`` (:mod:`.fetching`): config -> fetch -> parse -> store, a report per feed.
- ``send`` (:mod:`.sending`): ``fetch_all``; then store -> match -> plan (:mod:`pipeline.plan`)
  -> the outbox (``enqueue_digests``); then ``deliver_due``.
- ``deliver_due`` (:mod:`.outbox`): claim -> render -> compose -> deliver, recording each
  outcome (:mod:`.recorder`).
- ``find_matches``, ``explain_entry``, ``preview``, ``status``, ``check`` (:mod:`.inspection`):
  looking without sending.
- the scheduler's lease and serving one subscriber at a scheduled time (:mod:`.scheduled`).

Speed machinery stays out of these signatures but one: an optional ``speed`` handle
(:class:`pipeline.speed.Speedups`).
"""

from __future__ import annotations

from .alerts import send_feed_alerts
from .fetching import FeedReport, body_hash, feeds_of, fetch_all, fetch_stale
from .inspection import (
    StatusReport,
    SubscriberStatus,
    TopicMatches,
    check,
    explain_entry,
    find_matches,
    preview,
    select_topics,
    status,
)
from .outbox import CLAIM_BATCH, LEASE, OutboxRun, deliver_due
from .recorder import SentRecorder
from .reports import Outcome, Progress, SendReport
from .scheduled import (
    last_served,
    mark_served,
    release_scheduler_lease,
    renew_scheduler_lease,
    scheduler_id,
    serve_subscriber,
    take_scheduler_lease,
)
from .sending import enqueue_digests, plan_digests, select_subscribers, send
from .stored import OutboxEncoder, digest_from_row, queued_digest

__all__ = [
    "CLAIM_BATCH",
    "LEASE",
    "FeedReport",
    "OutboxEncoder",
    "OutboxRun",
    "Outcome",
    "Progress",
    "SendReport",
    "SentRecorder",
    "StatusReport",
    "SubscriberStatus",
    "TopicMatches",
    "body_hash",
    "check",
    "deliver_due",
    "digest_from_row",
    "enqueue_digests",
    "explain_entry",
    "feeds_of",
    "fetch_all",
    "fetch_stale",
    "find_matches",
    "last_served",
    "mark_served",
    "plan_digests",
    "preview",
    "queued_digest",
    "release_scheduler_lease",
    "renew_scheduler_lease",
    "scheduler_id",
    "select_subscribers",
    "select_topics",
    "send",
    "send_feed_alerts",
    "serve_subscriber",
    "status",
    "take_scheduler_lease",
]

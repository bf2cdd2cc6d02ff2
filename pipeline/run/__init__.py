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
- bounces (:mod:`.bounced`): VERP senders for the outbox, ``read_bounces`` (mailbox -> parse
  -> record, suppressing past the limits), refusals at RCPT, ``unsuppress``.
- ``digest worker``'s schedule slots: who is due (``due_batches``), planning one batch of a
  slot (``plan_batch``, ``send``'s planning committed with the slot) (:mod:`.slotted`).

Speed machinery stays out of these signatures but one: an optional ``speed`` handle
(:class:`pipeline.speed.Speedups`).
"""

from __future__ import annotations

from .alerts import send_feed_alerts
from .audience import Reader, audience, excluded_readers, known_subscriber, listed, readers
from .bounced import BounceOutcome, BounceReport, envelope_senders, read_bounces, record_rejection, unsuppress
from .fetching import FeedReport, body_hash, feeds_of, fetch_all, fetch_stale, stale_feeds
from .inspection import (
    StatusReport,
    SubscriberStatus,
    TopicMatches,
    check,
    entry_votes,
    explain_entry,
    find_matches,
    preview,
    select_topics,
    status,
)
from .outbox import CLAIM_BATCH, OutboxRun, deliver_due
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
from .slotted import DueBatch, SlotReport, due_batches, next_slot, plan_batch, schedule_of, sync_schedules
from .stored import OutboxEncoder, digest_from_row, queued_digest

__all__ = [
    "CLAIM_BATCH",
    "BounceOutcome",
    "BounceReport",
    "DueBatch",
    "FeedReport",
    "OutboxEncoder",
    "OutboxRun",
    "Outcome",
    "Progress",
    "Reader",
    "SendReport",
    "SentRecorder",
    "SlotReport",
    "StatusReport",
    "SubscriberStatus",
    "TopicMatches",
    "audience",
    "body_hash",
    "check",
    "deliver_due",
    "digest_from_row",
    "due_batches",
    "enqueue_digests",
    "entry_votes",
    "envelope_senders",
    "excluded_readers",
    "explain_entry",
    "feeds_of",
    "fetch_all",
    "fetch_stale",
    "find_matches",
    "known_subscriber",
    "last_served",
    "listed",
    "mark_served",
    "next_slot",
    "plan_batch",
    "plan_digests",
    "preview",
    "queued_digest",
    "read_bounces",
    "readers",
    "record_rejection",
    "release_scheduler_lease",
    "renew_scheduler_lease",
    "schedule_of",
    "scheduler_id",
    "select_subscribers",
    "select_topics",
    "send",
    "send_feed_alerts",
    "serve_subscriber",
    "stale_feeds",
    "status",
    "sync_schedules",
    "take_scheduler_lease",
    "unsuppress",
]

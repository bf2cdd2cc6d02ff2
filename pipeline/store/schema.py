"""The tables of the state database, their version, and the states a row can be in.

Every datetime goes through :class:`UTCDateTime`, so the rest of the store only ever sees aware
UTC datetimes whatever the database keeps. A change here that adds or alters a column raises
:data:`SCHEMA_VERSION` and gets a step in :mod:`pipeline.store.migrate`.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    Column,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
)
from sqlalchemy.types import TypeDecorator

# 1: the first release. 2: feed health (last_error_at, failing_since, alert, body_hash),
# entry fingerprints and pruning (entries.fingerprint, entries.pruned_at), entry_sources.last_seen.
# 3: deliveries.cut (the entries a digest only counted). 4: deliveries.unconfirmed.
# 5: readers' own choices, votes and sign-ups (``digest serve``); bounces and suppressions;
# the workers' planning slots and subscribers.next_due_at (``digest worker``).
SCHEMA_VERSION = 5


def utcnow() -> datetime:
    """Now, as the aware UTC datetime the store takes and gives back."""
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """Aware datetimes in, aware UTC datetimes out, whatever the database keeps."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the store")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


metadata = MetaData()

meta_table = Table(
    "meta",
    metadata,
    Column("key", String(64), primary_key=True),
    Column("value", Text, nullable=False),
)

feeds_table = Table(
    "feeds",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("configured_url", Text, nullable=False),
    Column("url", Text, nullable=False),  # differs after a permanent redirect
    Column("etag", Text),
    Column("last_modified", Text),
    Column("last_fetch_at", UTCDateTime),
    Column("last_success_at", UTCDateTime),
    Column("last_status", String(64)),
    Column("last_error", Text),  # kept after a recovery, with its time, for `status`
    Column("failures", Integer, nullable=False, default=0),  # consecutive
    Column("next_attempt_at", UTCDateTime),  # not before this (backoff, Retry-After)
    Column("last_new", Integer, nullable=False, default=0),
    Column("last_error_at", UTCDateTime),
    Column("failing_since", UTCDateTime),  # first failure of the current run of failures
    Column("alert", String(16)),  # None, "sent" (admin told it fails), "recovered" (to tell)
    Column("body_hash", String(64)),  # sha256 of the last body parsed: same bytes, no parse
)

entries_table = Table(
    "entries",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("title", Text, nullable=False),
    Column("link", Text, index=True),
    Column("arxiv_id", String(64), index=True),
    Column("summary_html", Text, nullable=False),
    Column("authors", JSON, nullable=False),
    Column("categories", JSON, nullable=False),
    Column("published", UTCDateTime, nullable=False, index=True),
    Column("first_seen", UTCDateTime, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
    Column("content_hash", String(64), nullable=False),
    Column("fingerprint", String(64), index=True),  # title + text: recognises a changed guid
    Column("pruned_at", UTCDateTime),  # set: text dropped, only the identity is kept
    Index("ix_entries_first_seen", "first_seen"),
)

sources_table = Table(
    "entry_sources",
    metadata,
    Column("feed", String(64), primary_key=True),
    Column("guid", Text, primary_key=True),
    Column("entry_id", Integer, ForeignKey("entries.id", ondelete="CASCADE"), nullable=False, index=True),
    Column("seen_at", UTCDateTime, nullable=False),  # first seen in this feed
    Column("last_seen", UTCDateTime, index=True),  # last fetch of this feed that carried it
)

subscribers_table = Table(
    "subscribers",
    metadata,
    Column("email", String(320), primary_key=True),
    Column("last_digest_at", UTCDateTime),  # the last digest put in the outbox
    Column("last_checked_at", UTCDateTime),  # the last real send that considered them
    Column("last_scheduled_at", UTCDateTime),  # the last scheduled time served (scheduler)
    # digest worker: the subscriber's next schedule slot (the tick reads only the due ones,
    # through the index), and the schedule and zone it was computed from.
    Column("next_due_at", UTCDateTime),
    Column("due_for", Text),
    Index("ix_subscribers_next_due_at", "next_due_at"),
)

deliveries_table = Table(
    "deliveries",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("subscriber", String(320), nullable=False, index=True),
    Column("message_id", String(255), nullable=False, unique=True),
    Column("created_at", UTCDateTime, nullable=False),
    Column("state", String(16), nullable=False),  # pending | sending | sent | failed
    Column("attempts", Integer, nullable=False, default=0),
    Column("next_attempt_at", UTCDateTime, nullable=False),
    Column("deliver_until", UTCDateTime, nullable=False),
    Column("lease_until", UTCDateTime),
    Column("claimed_by", String(255)),
    Column("last_error", Text),
    Column("sent_at", UTCDateTime),
    Column("spec", JSON, nullable=False),
    # Entries only counted in "and N more", as "id,id,...": taken too, but one row each would
    # be most of the table (they are read back with ``taken_entries``).
    Column("cut", Text),
    # Times the connection was lost right after the whole message went: it may have arrived.
    Column("unconfirmed", Integer, nullable=False, default=0, server_default="0"),
    Index("ix_deliveries_due", "state", "next_attempt_at"),
)

taken_table = Table(
    "delivered_entries",
    metadata,
    Column("subscriber", String(320), primary_key=True),
    Column("entry_id", Integer, primary_key=True),
    Column(
        "delivery_id", Integer, ForeignKey("deliveries.id", ondelete="CASCADE"), nullable=False, index=True
    ),
    Column("shown", Boolean, nullable=False),  # False: counted in "and N more", not listed
)

leases_table = Table(
    "leases",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("holder", String(255), nullable=False),  # host:pid
    Column("acquired_at", UTCDateTime, nullable=False),
    Column("expires_at", UTCDateTime, nullable=False),
)

# --- bounces (schema 5): what came back from each delivery, and who gets no more digests ------
# (pipeline/store/bounces.py) No foreign key to deliveries: pruning an old outbox row must not
# take its bounces with it, nor the suppression they caused.
bounce_events_table = Table(
    "bounce_events",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("subscriber", String(320), nullable=False, index=True),
    Column("delivery_id", Integer, nullable=False, index=True),  # the outbox row that bounced
    Column("delivery_created_at", UTCDateTime, nullable=False),  # its order among the deliveries
    Column("kind", String(8), nullable=False),  # hard | soft
    Column("status", String(16)),  # the RFC 3463 code (5.1.1), or the SMTP reply code
    Column("diagnostic", Text),
    Column("source", Text, nullable=False),  # "smtp" (refused at RCPT), or the mailbox message
    Column("at", UTCDateTime, nullable=False),
)

suppressions_table = Table(
    "suppressions",
    metadata,
    Column("subscriber", String(320), primary_key=True),
    Column("since", UTCDateTime),  # set: no more digests; None: lifted (``digest unsuppress``)
    Column("kind", String(8)),  # the bounce that decided it: hard | soft
    Column("status", String(16)),
    Column("diagnostic", Text),
    Column("counts_from", UTCDateTime),  # deliveries made before this no longer count
)

# --- digest worker (pipeline.worker) -----------------------------------------------------------
# A schedule slot planned for a subscriber: the unique key makes a repeated or duplicated
# planning job plan nothing twice; written in the transaction that enqueues the digest.
slots_table = Table(
    "planned_slots",
    metadata,
    Column("subscriber", String(320), primary_key=True),
    Column("slot_at", UTCDateTime, primary_key=True),
    Column("planned_at", UTCDateTime, nullable=False, index=True),
    Column("message_id", String(255)),  # None: nothing new for them at that slot
)

# The worker processes: who is alive (last heartbeat), for ``status`` and the shared SMTP rate.
workers_table = Table(
    "workers",
    metadata,
    Column("id", String(255), primary_key=True),  # its owner id (host:pid:scope)
    Column("host", String(255), nullable=False),
    Column("pid", Integer, nullable=False),
    Column("concurrency", Integer, nullable=False),
    Column("started_at", UTCDateTime, nullable=False),
    Column("heartbeat_at", UTCDateTime, nullable=False, index=True),
)

# The SMTP rate shared by every sender of this database: one row per budget, the time from
# which the next message may go (taken in blocks, so not a round trip per message).
send_budget_table = Table(
    "send_budget",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("next_at", UTCDateTime, nullable=False),
)

# --- readers' own choices (schema 5; ``digest serve``, pipeline/store/readers.py) --------------
# One row per reader who acted on a link, by lower-cased address; a NULL column means "as the
# config says". They win over the config for that reader (pipeline/run/audience.py).
readers_table = Table(
    "readers",
    metadata,
    Column("email", String(320), primary_key=True),  # lower-cased
    Column("unsubscribed_at", UTCDateTime),  # set: no digests (None again after re-subscribing)
    Column("unsubscribed_via", String(16)),  # "web" (a page or the one-click POST)
    Column("topics", JSON(none_as_null=True)),  # the topic names they chose, in the config's order
    Column("schedule", Text),  # a schedule as the config writes it ("daily 07:00")
    Column("paused_until", UTCDateTime),  # no digests before this
    Column("updated_at", UTCDateTime, nullable=False),
)

# --- readers' votes (schema 5; "more / less like this", pipeline/store/votes.py) ---------------
# One current vote per reader and entry, by lower-cased address (as their links sign it); a
# changed vote replaces the old. No foreign key to entries: a vote outlives its entry's text.
votes_table = Table(
    "votes",
    metadata,
    Column("subscriber", String(320), primary_key=True),  # lower-cased
    Column("entry_id", Integer, primary_key=True),
    Column("vote", String(8), nullable=False),  # more | less
    Column("at", UTCDateTime, nullable=False),
    Index("ix_votes_entry_id", "entry_id"),
)

# --- web sign-ups (schema 5; ``[web] signup``, pipeline/store/signups.py) -----------------------
# One row per address that asked to subscribe on the web, by lower-cased address. A request
# waits (``code``, ``pending_topics``) until its confirmation link is used, and is pruned after
# ``[web] signup_expires``; ``confirmed_at`` set: a subscriber (pipeline/run/audience.py).
signups_table = Table(
    "signups",
    metadata,
    Column("email", String(320), primary_key=True),  # lower-cased
    Column("address", String(320), nullable=False),  # as given (normalised): where mail goes
    Column("topics", JSON(none_as_null=True)),  # the confirmed topics (NULL: never confirmed)
    Column("confirmed_at", UTCDateTime),
    Column("pending_topics", JSON(none_as_null=True)),  # those of the request waiting for confirmation
    Column("code", String(64)),  # that request's nonce, signed into its link (None: none waits)
    Column("requested_at", UTCDateTime, nullable=False),  # the last request
)

# Sign-up requests within the last hour, for the rate limits (held in the database, so they
# hold across processes and restarts): kind "client" (a request from that client) or "address"
# (a confirmation email to that address).
signup_requests_table = Table(
    "signup_requests",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("kind", String(8), nullable=False),
    Column("key", String(320), nullable=False),
    Column("at", UTCDateTime, nullable=False, index=True),
    Index("ix_signup_requests_kind_key", "kind", "key", "at"),
)

# The states of an outbox row (``deliveries.state``) and of a feed's alert (``feeds.alert``).
PENDING, SENDING, SENT, FAILED = "pending", "sending", "sent", "failed"
ALERT_SENT, ALERT_RECOVERED = "sent", "recovered"

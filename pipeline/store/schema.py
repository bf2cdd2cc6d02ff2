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

# The states of an outbox row (``deliveries.state``) and of a feed's alert (``feeds.alert``).
PENDING, SENDING, SENT, FAILED = "pending", "sending", "sent", "failed"
ALERT_SENT, ALERT_RECOVERED = "sent", "recovered"

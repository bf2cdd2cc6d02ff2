"""Bounces in the chain: VERP senders for the outbox, the bounce mailbox, refusals at RCPT.

- ``read_bounces``: mailbox -> parse (:mod:`pipeline.bounces`) -> the delivery it names ->
  the store's record (which suppresses past the limits) -> the message moved to
  ``processed_folder``. A message is moved once everything it says is recorded, or once it is
  known to name no delivery of ours (a forged or forgotten token, or none: it never will); one
  that is no bounce we can read is left where it is and reported, with its reference and why,
  once: the store remembers it (:meth:`~pipeline.store.Store.left_in_mailbox`), and later
  readings pass over it, so messages left in place never crowd out new bounces.
- ``record_rejection``: the outbox gave up on a digest the server refused at RCPT: a 5xx is a
  hard bounce, a 4xx that outlived ``give_up_after`` a soft one.
- ``unsuppress``: lift a suppression, reset the counts.

Which delivery a bounce names: the VERP token of an address it came back to (To,
Delivered-To, X-Original-To, Envelope-To, the returned message's Return-Path) or its
Original-Envelope-Id, checked against the row's Message-ID; a token of our shape that does not
check out is forged, and the bounce is ignored. So is a bounce with no token at all: every
digest goes out with a VERP envelope sender, so a real bounce of one carries its token, and
the Message-ID of the returned message is no proof (anyone who saw the digest knows it, and
anyone may write to the bounce address).

Whose failure it is: a report whose Final-Recipient or Original-Recipient names another
address than the delivery's subscriber is about a copy forwarded on from the subscriber's
mailbox (an alias, a ``.forward``); its failure counts as soft, never hard (see
:func:`_counted_failure`).
"""

from __future__ import annotations

import contextlib
import logging
import re
from dataclasses import dataclass, field
from typing import Literal

from ..bounces import Bounce, BounceMailbox, Failure, Verp, open_mailbox, parse_bounce
from ..config import Settings
from ..errors import BounceError, DeliveryError
from ..store import BouncedDelivery, BounceEvent, BounceTally, OutboxRow, Store, Suppression, utcnow
from .clock import Clock

log = logging.getLogger("digest")

_STATUS = re.compile(r"\b[245]\.\d{1,3}\.\d{1,3}\b")

Result = Literal["recorded", "ignored", "left"]


@dataclass(frozen=True, slots=True)
class BounceOutcome:
    """What became of one message of the bounce mailbox."""

    ref: str  # "UID 17" or the Maildir file name
    result: Result  # recorded (and moved), ignored (and moved), left (where it was)
    detail: str
    subscriber: str | None = None
    suppressed: bool = False  # this bounce suppressed the subscriber


@dataclass(slots=True)
class BounceReport:
    """One reading of the bounce mailbox."""

    mailbox: str
    outcomes: list[BounceOutcome] = field(default_factory=list)
    passed_over: int = 0  # messages left at earlier readings (reported then), not read again

    def count(self, result: Result) -> int:
        return sum(1 for o in self.outcomes if o.result == result)


def envelope_senders(settings: Settings, store: Store) -> Verp | None:
    """What makes each delivery's VERP envelope sender; None without ``[bounces]``."""
    if settings.bounces is None:
        return None
    return Verp(settings.bounces.address, store.verp_key())


def read_bounces(
    settings: Settings, store: Store, *, clock: Clock = utcnow, mailbox: BounceMailbox | None = None
) -> BounceReport:
    """Read the bounce mailbox once: record each bounce, move what was processed."""
    config = settings.bounces
    if config is None:
        raise BounceError("the config has no [bounces] section")
    box = mailbox or open_mailbox(config)
    verp = Verp(config.address, store.verp_key())
    report = BounceReport(box.where)
    with box:
        before = store.left_in_mailbox(box.where)
        unreadable: list[str] = []
        for message in box.messages(skip=before):
            outcome = _one(settings, store, verp, message.ref, message.data, box.where, clock)
            if outcome.result == "left":
                unreadable.append(message.key)  # (it stays so: the next readings pass over it)
            else:
                try:
                    box.move(message)
                except BounceError as exc:
                    # Recorded, not moved: the next reading sees it again and records nothing twice.
                    outcome = BounceOutcome(message.ref, "left", f"{outcome.detail}; not moved: {exc}")
            report.outcomes.append(outcome)
            _log(outcome, box.where)
        store.remember_left(box.where, unreadable, present=box.present)
        report.passed_over = len(before & box.present)
    if report.passed_over:
        log.info(
            "bounce mailbox=%s passed_over=%d (left at earlier readings, not read again)",
            box.where,
            report.passed_over,
        )
    return report


def _one(
    settings: Settings, store: Store, verp: Verp, ref: str, data: bytes, where: str, clock: Clock
) -> BounceOutcome:
    assert settings.bounces is not None
    try:
        bounce = parse_bounce(data)
    except BounceError as exc:
        return BounceOutcome(ref, "left", str(exc))
    worst = bounce.worst
    if worst is None:
        return BounceOutcome(ref, "ignored", f"a {bounce.shape} report of success: nothing failed")
    delivery, why = _delivery_of(bounce, verp, store)
    if delivery is None:
        return BounceOutcome(ref, "ignored", f"{_describe(worst, worst.hard)}: {why}")
    failure, hard, elsewhere = _counted_failure(bounce, delivery.subscriber)
    kind = "hard" if hard else "soft"
    event = BounceEvent(delivery, kind, failure.status, failure.diagnostic, f"{where} {ref}", clock())
    tally = store.record_bounce(
        event, hard_limit=settings.bounces.hard_limit, soft_limit=settings.bounces.soft_limit
    )
    forwarded = (
        f" (for {elsewhere}, not {delivery.subscriber}: a forwarded copy, counted as soft)"
        if elsewhere and failure.hard
        else ""
    )
    return BounceOutcome(
        ref,
        "recorded",
        f"{_describe(failure, hard)}{forwarded}: {_tallied(tally)}"
        + (" (read before: counted once)" if tally.duplicate else ""),
        delivery.subscriber,
        suppressed=tally.suppression is not None and tally.suppression.since == event.at,
    )


def _counted_failure(bounce: Bounce, subscriber: str) -> tuple[Failure, bool, str | None]:
    """The failure that counts against ``subscriber``, whether it counts as hard, and the other
    address it is about (None: the subscriber's own, or it names nobody).

    A failure whose Final-Recipient or Original-Recipient is another address happened past the
    subscriber's own mailbox: their server took the digest and forwarded it (an alias, a
    ``.forward``), keeping our envelope sender, and the forward target refused it. It says
    nothing about whether the subscriber's address works, so it is never hard: one such
    bounce must not suppress the reader. It is recorded as soft rather than dropped, because
    a forward that fails at every digest still means the reader gets none of them: like a
    mailbox that stays full, ``soft_limit`` of them in a row suppress (and a digest delivered
    in between resets the row as usual).
    """
    mine = _address(subscriber)
    judged = []
    for failure in bounce.failures:
        named = [a for a in (failure.recipient, failure.original_recipient) if a]
        other = next((a for a in named if _address(a) != mine), None)
        judged.append((failure, failure.hard and other is None, other))
    return max(judged, key=lambda j: (j[1], j[0].action == "failed", j[0].hard))


def _address(value: str) -> str:
    """An address to compare: without ``rfc822;`` and ``<>``, lower case, the domain in IDNA."""
    text = value.strip()
    if text[:7].lower() == "rfc822;":
        text = text[7:]
    local, _, domain = text.strip().strip("<>").strip().rpartition("@")
    with contextlib.suppress(UnicodeError):  # (not IDNA: compared as written)
        domain = domain.encode("idna").decode("ascii")
    return f"{local}@{domain}".lower()


def _delivery_of(bounce: Bounce, verp: Verp, store: Store) -> tuple[BouncedDelivery | None, str]:
    """The delivery a bounce names, or None and why not."""
    tokens = verp.tokens([*bounce.addressed_to, bounce.envelope_id or ""])
    if bounce.envelope_id and not tokens:
        tokens = verp.tokens([f"{verp.local}+{bounce.envelope_id}@{verp.domain}"])
    for token in tokens:
        delivery = store.bounced_delivery(token.delivery_id)
        if delivery is not None and verp.verifies(token, delivery.message_id):
            return delivery, ""
    if tokens:
        return (
            None,
            f"its VERP token ({tokens[0].delivery_id}-…) names no delivery of ours (forged, or forgotten)",
        )
    # No token: not matched by the returned Message-ID, which anyone who saw the digest knows
    # and anyone may send back; a real bounce of a digest comes back to its VERP address.
    return (
        None,
        "no VERP token: it names no delivery (a bounce of a digest comes back to its bounce+TOKEN "
        "address; a Message-ID alone proves nothing)",
    )


def record_rejection(
    settings: Settings, store: Store, row: OutboxRow, exc: DeliveryError, *, clock: Clock = utcnow
) -> BounceTally | None:
    """Record a digest refused at RCPT (5xx: hard; a 4xx that outlived give_up_after: soft)."""
    config = settings.bounces
    if config is None or not exc.recipient or exc.code is None:
        return None
    found = _STATUS.search(str(exc))
    status = found.group(0) if found else str(exc.code)
    kind = "soft" if exc.transient or status.startswith(("4.", "5.7.")) or status == "5.2.2" else "hard"
    delivery = BouncedDelivery(row.id, row.subscriber, row.message_id, row.created_at, row.state)
    tally = store.record_bounce(
        BounceEvent(delivery, kind, status, str(exc), "smtp", clock()),
        hard_limit=config.hard_limit,
        soft_limit=config.soft_limit,
    )
    log.warning(
        "bounce to=%s kind=%s status=%s source=smtp %s", row.subscriber, kind, status, _tallied(tally)
    )
    return tally


def unsuppress(store: Store, email: str, *, clock: Clock = utcnow) -> tuple[Suppression | None, int]:
    """Lift a subscriber's suppression and reset their bounce counts."""
    return store.unsuppress(email.strip(), clock())


def _describe(failure: Failure, hard: bool) -> str:
    kind = "hard" if hard else "soft"
    what = "delay" if failure.action == "delayed" else "bounce"
    text = f"{kind} {what} {failure.status}"
    return f"{text} ({failure.diagnostic})" if failure.diagnostic else text


def _tallied(tally: BounceTally) -> str:
    if tally.suppression is not None:
        return f"suppressed since {tally.suppression.since.isoformat(timespec='seconds')}"
    return f"{tally.hard} hard, {tally.soft} soft in a row"


def _log(outcome: BounceOutcome, where: str) -> None:
    if outcome.result == "left":
        log.warning("bounce mailbox=%s message=%r left=%r", where, outcome.ref, outcome.detail)
    else:
        log.info(
            "bounce mailbox=%s message=%r to=%s %s=%r",
            where,
            outcome.ref,
            outcome.subscriber or "-",
            outcome.result,
            outcome.detail,
        )

"""Telling ``[digest] admin`` about feeds that fail for long, and about their recovery."""

from __future__ import annotations

import logging
from collections.abc import Iterable

from ..config import Settings
from ..deliver import Transport, transport_factory
from ..errors import ConfigError, DeliveryError
from ..store import ALERT_RECOVERED, ALERT_SENT, FeedState, Store, utcnow
from .clock import Clock

log = logging.getLogger("digest")


def send_feed_alerts(settings: Settings, store: Store, feeds: Iterable[str], *, clock: Clock = utcnow) -> int:
    """Tell ``[digest] admin`` once about each of these feeds failing for longer than
    ``[fetch] alert_after``, and once when it works again; return how many mails went out.

    The alert state is claimed atomically before sending (so two processes never both send)
    and released when sending fails (so the next run tries again).
    """
    admin = settings.digest.admin
    if not admin:
        return 0
    now = clock()
    states = store.feed_states()
    due: list[tuple[FeedState, bool]] = []
    for name in feeds:
        state = states.get(name)
        if state is None:
            continue
        if state.alert == ALERT_RECOVERED:
            if state.failures:  # failing again before the recovery was told: nothing new to say
                store.set_alert(name, ALERT_RECOVERED, ALERT_SENT)
            elif store.set_alert(name, ALERT_RECOVERED, None):
                due.append((state, True))
        elif (
            state.alert is None
            and state.failures
            and state.failing_since is not None
            and now - state.failing_since >= settings.fetch.alert_after
            and store.set_alert(name, None, ALERT_SENT)
        ):
            due.append((state, False))
    if not due:
        return 0
    from ..compose import feed_alert  # (here: most runs send no alert)
    from ..sign import load_signer

    try:
        signer = load_signer(settings)  # (signed like digests: DKIM covers every mail we send)
    except ConfigError as exc:
        for state, recovered in due:  # (released: the next run tells them, once the key is fixed)
            _release(store, state.name, recovered)
        log.error("alerts not sent: %s", exc)
        return 0
    sent = 0
    make_transport = transport_factory(settings)
    transport: Transport | None = None
    try:
        for state, recovered in due:
            message = feed_alert(
                title=settings.digest.title,
                sender=settings.sender,
                admin=admin,
                feed=state.name,
                url=state.url,
                recovered=recovered,
                now=now,
                failing_since=state.failing_since,
                failures=state.failures,
                last_error=state.last_error,
                next_attempt_at=state.next_attempt_at,
            )
            if signer is not None:
                message = signer.sign(message)
            try:
                transport = transport or make_transport()
                transport.send(message)
            except DeliveryError as exc:
                _release(store, state.name, recovered)
                log.warning("alert feed=%s to=%s error=%r (will retry)", state.name, admin, str(exc))
                continue
            sent += 1
            kind = "recovered" if recovered else "failing"
            log.info("alert feed=%s to=%s kind=%s", state.name, admin, kind)
    finally:
        if transport is not None:
            transport.close()
    return sent


def _release(store: Store, feed: str, recovered: bool) -> None:
    """Undo the claim on a feed's alert: the next run sends it."""
    if recovered:
        store.set_alert(feed, None, ALERT_RECOVERED)
    else:
        store.set_alert(feed, ALERT_SENT, None)

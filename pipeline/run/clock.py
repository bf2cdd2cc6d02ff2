"""The clock the chain reads: a function returning an aware UTC datetime (tests pass their own)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

Clock = Callable[[], datetime]

"""``digest worker``: the pipeline on N processes on any machines, sharing one PostgreSQL.

procrastinate (a PostgreSQL task queue) runs the jobs: a periodic tick that every worker
defers and a unique index keeps to one per period, and the jobs it defers (:mod:`.tasks`).
What was planned and sent lives in digest's own tables, written by the chain
(:mod:`pipeline.run`): schedule slots (:mod:`pipeline.run.slotted`), the outbox with its
claims and leases, the sent recorder. So a job repeated, duplicated or cut short by a crash
never plans or sends a digest twice, and nothing is lost when a worker dies: its outbox rows
are taken over when its lease runs out, its jobs re-queued by the sweep.

- :mod:`.database`: PostgreSQL only;
- :mod:`.app`: the procrastinate App on ``[digest] database``, its tables created at start;
- :mod:`.tick`: what is due now, found through indexes;
- :mod:`.tasks`: the tasks;
- :mod:`.rate`: ``[smtp] rate`` shared by all workers through the database;
- :mod:`.process`: one worker process, from start to SIGTERM.
"""

from __future__ import annotations

from .database import require_postgresql
from .process import run_worker

__all__ = ["require_postgresql", "run_worker"]

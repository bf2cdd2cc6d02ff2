"""The worker processes (``digest worker``): who is alive, and the SMTP rate they share.

Each worker keeps a row with its last heartbeat; one whose heartbeat is older than a lease is
gone (crashed, or cut off from the database). The shared SMTP budget is one row holding the
time from which the next message may go: a worker takes a block of sending times in one
statement, on the database's clock, so workers on machines whose clocks differ still share
one rate.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, select, text

from .schema import workers_table
from .sql import Transactions, _dialect_insert

__all__ = ["WorkerState", "Workers"]


@dataclass(frozen=True, slots=True)
class WorkerState:
    """A worker process as its row says: where it runs, since when, its last heartbeat."""

    id: str
    host: str
    pid: int
    concurrency: int
    started_at: datetime
    heartbeat_at: datetime


class Workers(Transactions):
    """The workers table and the shared sending budget."""

    def heartbeat(self, worker: WorkerState) -> None:
        """Record that this worker is alive now (its row is made on the first beat)."""
        with self._tx() as conn:
            statement = _dialect_insert(conn, workers_table).values(
                id=worker.id,
                host=worker.host,
                pid=worker.pid,
                concurrency=worker.concurrency,
                started_at=worker.started_at,
                heartbeat_at=worker.heartbeat_at,
            )
            conn.execute(
                statement.on_conflict_do_update(
                    index_elements=["id"], set_={"heartbeat_at": statement.excluded.heartbeat_at}
                )
            )

    def remove_worker(self, worker_id: str) -> None:
        """A worker that stopped cleanly takes its row away."""
        with self._tx() as conn:
            conn.execute(delete(workers_table).where(workers_table.c.id == worker_id))

    def workers(self) -> list[WorkerState]:
        """Every worker row, the most recent heartbeat first."""
        with self._tx() as conn:
            rows = conn.execute(select(workers_table).order_by(workers_table.c.heartbeat_at.desc()))
            return [WorkerState(**row._asdict()) for row in rows]

    def live_workers(self, now: datetime, lease: timedelta) -> list[WorkerState]:
        """The workers whose last heartbeat is within a lease of ``now``."""
        return [w for w in self.workers() if w.heartbeat_at > now - lease]

    def prune_workers(self, before: datetime) -> int:
        """Forget workers silent since before ``before``; how many."""
        with self._tx() as conn:
            done = conn.execute(delete(workers_table).where(workers_table.c.heartbeat_at < before))
            return int(done.rowcount)

    def take_send_budget(self, name: str, count: int, interval: float) -> float:
        """Reserve ``count`` sending times, ``interval`` seconds apart, from the shared budget
        ``name``; return in how many seconds the first of them comes (0: now).

        PostgreSQL only: one UPDATE on the database's clock. A budget left unused (a worker
        that reserved and then had nothing to send) is not given back: the rate can fall
        short by at most a block, never exceed.
        """
        span = timedelta(seconds=count * interval)
        with self._tx() as conn:
            conn.execute(
                text(
                    "INSERT INTO send_budget (name, next_at) "
                    "VALUES (:name, clock_timestamp() AT TIME ZONE 'UTC') ON CONFLICT (name) DO NOTHING"
                ),
                {"name": name},
            )
            row = conn.execute(
                text(
                    "UPDATE send_budget "
                    "SET next_at = GREATEST(next_at, clock_timestamp() AT TIME ZONE 'UTC') + :span "
                    "WHERE name = :name "
                    "RETURNING next_at - :span AS start, clock_timestamp() AT TIME ZONE 'UTC' AS db_now"
                ),
                {"name": name, "span": span},
            ).one()
            return max(0.0, float((row.start - row.db_now).total_seconds()))

    def job_counts(self) -> dict[str, int]:
        """The task engine's jobs per status (todo, doing, failed...); empty when its tables
        are absent (SQLite, or no worker ever started)."""
        with self._tx() as conn:
            if conn.dialect.name != "postgresql":
                return {}
            if conn.execute(text("SELECT to_regclass('procrastinate_jobs')")).scalar() is None:
                return {}
            rows = conn.execute(text("SELECT status::text, count(*) FROM procrastinate_jobs GROUP BY status"))
            return {str(status): int(count) for status, count in rows}

    def active_job_locks(self, task_name: str) -> set[str]:
        """The queueing locks of the task engine's jobs of ``task_name`` waiting or running
        (a running one holds no queueing lock there: the tick must not defer its twin)."""
        with self._tx() as conn:
            if conn.dialect.name != "postgresql":
                return set()
            if conn.execute(text("SELECT to_regclass('procrastinate_jobs')")).scalar() is None:
                return set()
            rows = conn.execute(
                text(
                    "SELECT queueing_lock FROM procrastinate_jobs WHERE task_name = :task "
                    "AND status IN ('todo', 'doing') AND queueing_lock IS NOT NULL"
                ),
                {"task": task_name},
            )
            return {str(lock) for (lock,) in rows}

"""One ``digest worker`` process: start, heartbeat, run jobs, stop on SIGTERM.

Start: procrastinate's tables are created if missing (under an advisory lock, see
:mod:`.app`; digest's own tables were made when the store opened, under another), the
schedules are synced, and the worker's row is written. It then runs jobs until SIGTERM or
SIGINT: no new job is taken, a delivery in progress hands back what it has not started (due
at once, for the next worker), the jobs in progress finish, the row goes, and it exits 0.
A job still blocked ``STOP_WITHIN`` seconds after the signal (an SMTP step waiting on a
server) is left: the process exits 0 all the same, and its claims are taken over (at once on
this machine, after the lease from any other).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import threading
from datetime import datetime

import psycopg
from procrastinate import App
from procrastinate.exceptions import ProcrastinateException

from .. import run
from ..config import Settings
from ..errors import DigestError, StoreError
from ..store import Store, WorkerState, host_id, owner_id, utcnow
from .app import apply_engine_schema, make_app
from .database import conninfo
from .tasks import QUEUE, Engine

log = logging.getLogger("digest")

STOP_WITHIN = 9.0  # seconds after SIGTERM before a job still blocked is left to the others


def run_worker(settings: Settings, store: Store, *, concurrency: int) -> int:
    """``digest worker``: run jobs on this state database until SIGTERM; the exit code."""
    url = settings.digest.database_url
    conninfo(url)  # (refuses SQLite before anything is started)
    stopping = threading.Event()
    early = {sig: signal.signal(sig, lambda *_: stopping.set()) for sig in (signal.SIGTERM, signal.SIGINT)}
    created = apply_engine_schema(url)
    now = utcnow()
    me = WorkerState(owner_id(), host_id(), os.getpid(), concurrency, now, now)
    run.sync_schedules(settings, store, now)
    store.heartbeat(me)
    app = make_app(url, concurrency)
    engine = Engine(settings, store, app, stopping)
    beating = threading.Thread(target=_heartbeat, args=(store, me, settings, stopping), daemon=True)
    beating.start()
    log.info(
        "worker started id=%s concurrency=%d lease=%gs tick=%gs%s",
        me.id,
        concurrency,
        settings.worker.lease.total_seconds(),
        settings.worker.tick.total_seconds(),
        " (task tables created)" if created else "",
    )
    asked = True
    try:
        if not stopping.is_set():  # (a signal during the start: stop before taking any job)
            try:
                asyncio.run(_serve(app, engine, concurrency, stopping))
            except (ProcrastinateException, psycopg.Error, OSError) as exc:
                # (the database went away: the engine stops and says so on its way out)
                log.error("worker task engine error=%r", str(exc).strip() or type(exc).__name__)
            asked = stopping.is_set()
    finally:
        for sig, handler in early.items():
            signal.signal(sig, handler)
        stopping.set()
        beating.join(timeout=5)
        try:
            store.remove_worker(me.id)
        except StoreError as exc:
            log.warning("worker row not removed: %s", exc)
    if engine.running:
        # A job still blocked: its claims are taken over; the interpreter would wait for it.
        log.warning("stopped with %d job(s) still running; their digests will be retried", engine.running)
        logging.shutdown()
        os._exit(0 if asked else 1)
    if not asked:
        # procrastinate stops a worker whose database connection failed: exit 1, so that a
        # supervisor (systemd Restart=on-failure) starts it again once the database is back.
        log.error("worker stopped id=%s: the task engine stopped (is the database reachable?)", me.id)
        return 1
    log.info("worker stopped id=%s", me.id)
    return 0


async def _serve(app: App, engine: Engine, concurrency: int, stopping: threading.Event) -> None:
    lease = engine.lease.total_seconds()
    async with app.open_async():
        worker = asyncio.create_task(
            app.run_worker_async(
                queues=[QUEUE],
                name=f"digest-{os.getpid()}",
                concurrency=concurrency,
                install_signal_handlers=False,
                update_heartbeat_interval=lease / 3,
                stalled_worker_timeout=lease,
                fetch_job_polling_interval=min(5.0, lease / 3),
                shutdown_graceful_timeout=STOP_WITHIN,
            )
        )
        loop = asyncio.get_running_loop()

        def stop(signum: int) -> None:
            name = signal.Signals(signum).name
            log.info("signal=%s stopping: no new jobs; deliveries hand back what they hold", name)
            stopping.set()
            worker.cancel()

        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop, signum)
        try:
            await worker
        except asyncio.CancelledError:
            if not stopping.is_set():
                raise
        finally:
            for signum in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(signum)


def _heartbeat(store: Store, me: WorkerState, settings: Settings, stopping: threading.Event) -> None:
    """Write this worker's heartbeat every third of a lease until it stops."""
    every = settings.worker.lease.total_seconds() / 3
    while not stopping.wait(every):
        try:
            store.heartbeat(_beat(me, utcnow()))
        except DigestError as exc:  # (the database is away: the next beat may reach it)
            log.warning("worker heartbeat error=%r", str(exc))


def _beat(me: WorkerState, now: datetime) -> WorkerState:
    return WorkerState(me.id, me.host, me.pid, me.concurrency, me.started_at, now)

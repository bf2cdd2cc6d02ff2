"""``digest worker``: digests/s with 1, 2 and 3 workers, the tick's cost, and the shared rate.

In one run, on this machine, with a PostgreSQL server started here (Debian's ``postgresql``)
and Postfix's ``smtp-sink`` on loopback:

1. **Throughput.** ``--subscribers`` subscribers (default 3,000) of a one-paper feed, all due
   in the same minute; 1, 2, then 3 ``digest worker --concurrency 2`` processes on a fresh
   database each time, into the same sink. Reported: digests/s from the first message
   accepted to the last, and from the workers' start (their start-up included).
2. **The tick** (``Engine.tick``: find who is due through the ``next_due_at`` index, the
   feeds and the outbox, and defer the planning jobs), median of 5, with 10,000 subscribers
   of whom 1% are due, 100,000 of whom 1% are due, and 100,000 of whom 100 (as many as in
   the first) are due: its cost follows the due, not the total.
3. **The SMTP rate over 3 workers**: the shared budget in the database (what the workers
   use) against the rate divided by the live workers, with even work (all three always have
   something to send) and uneven work (two run dry after a second).

The machine is shared (2 cores, other work running): compare ratios within one run. Run:
``flock /tmp/briefs/bench.lock .venv/bin/python bench/bench_worker.py``.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE.parent / "tests"))
sys.path.insert(0, str(HERE))

import sqlalchemy as sa  # noqa: E402
from bench_send import Sink  # noqa: E402
from conftest import many, new_postgres_database, running_postgres  # noqa: E402

from pipeline.config import load_settings  # noqa: E402
from pipeline.deliver import RateLimit  # noqa: E402
from pipeline.store import Store  # noqa: E402
from pipeline.worker.app import apply_engine_schema, make_app  # noqa: E402
from pipeline.worker.rate import SharedRate  # noqa: E402
from pipeline.worker.tasks import Engine  # noqa: E402

PYTHON = sys.executable


class DividedRate(RateLimit):
    """``rate`` divided by the live workers: the alternative to ``SharedRate`` measured here."""

    def __init__(self, rate: float | None) -> None:
        super().__init__(rate)
        self.rate = rate

    def share(self, workers: int) -> None:
        """The number of live workers changed: this worker's share follows."""
        if self.rate:
            self.interval = max(1, workers) / self.rate


def config_for(folder: Path, url: str, port: int, subscribers: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    at = datetime.now(UTC).strftime("%H:%M")
    smtp = f'[smtp]\nhost = "127.0.0.1"\nport = {port}\nsecurity = "none"\nfrom = "D <d@example.net>"\n'
    config = many(folder, subscribers, smtp, extra_digest=f'database = "{url}"\n')
    text = config.read_text().replace('topics = ["snn"]\n', f'topics = ["snn"]\nschedule = "daily {at}"\n')
    config.write_text(text + '\n[worker]\nlease = "30s"\ntick = "1s"\nbatch = 500\n')
    return config


def seed_due(url: str, subscribers: int) -> None:
    """As if ``digest run`` had served everyone yesterday: today's slot (now) is due."""
    yesterday = (datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(days=1)).replace(tzinfo=None)
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO subscribers (email, last_scheduled_at) VALUES (:e, :t) ON CONFLICT DO NOTHING"
            ),
            [{"e": f"user{i}@example.org", "t": yesterday} for i in range(subscribers)],
        )
    engine.dispose()


def throughput(server: str, workers: int, subscribers: int, folder: Path) -> tuple[float, float]:
    """(digests/s first to last message, digests/s from the workers' start)."""
    url = new_postgres_database(server)
    sink = Sink()
    try:
        config = config_for(folder / f"w{workers}", url, sink.port, subscribers)
        cli = [PYTHON, "-m", "pipeline.cli", "--config", str(config)]
        subprocess.run([*cli, "fetch"], check=True, capture_output=True)
        seed_due(url, subscribers)
        start = time.monotonic()
        procs = [
            subprocess.Popen([*cli, "-q", "worker", "--concurrency", "2"], stderr=subprocess.DEVNULL)
            for _ in range(workers)
        ]
        first = None
        while True:
            count = sink.count()
            if count and first is None:
                first = time.monotonic()
            if count >= subscribers:
                break
            if time.monotonic() - start > 600:
                raise SystemExit(f"only {count} of {subscribers} after 600 s")
        done = time.monotonic()
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            proc.wait(timeout=60)
        assert first is not None
        return subscribers / (done - first), subscribers / (done - start)
    finally:
        sink.stop()


def tick_time(server: str, total: int, due: int, folder: Path) -> float:
    """The median time of one tick (seconds) over ``total`` subscribers, ``due`` of them due."""
    url = new_postgres_database(server)
    config = config_for(folder / f"t{total}-{due}", url, 25, 1)
    settings = load_settings(config)
    store = Store(settings.digest.database_url)
    now = datetime.now(UTC).replace(tzinfo=None)
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        past, future = now - timedelta(minutes=1), now + timedelta(days=1)
        rows = [{"e": f"u{i:06d}@example.org", "d": past if i < due else future} for i in range(total)]
        for start in range(0, total, 10_000):
            conn.execute(
                sa.text("INSERT INTO subscribers (email, next_due_at, due_for) VALUES (:e, :d, 'x')"),
                rows[start : start + 10_000],
            )
        conn.execute(sa.text("ANALYZE subscribers"))
    apply_engine_schema(url)
    app = make_app(url, 2)
    app.open()
    work = Engine(settings, store, app, threading.Event())
    times = []
    try:
        for _ in range(5):
            with engine.begin() as conn:
                conn.execute(sa.text("DELETE FROM procrastinate_jobs"))
            started = time.perf_counter()
            work.tick()
            times.append(time.perf_counter() - started)
    finally:
        app.close()
        store.close()
        engine.dispose()
    return statistics.median(times)


def shared_rate(server: str, rate: float, uneven: bool, divided: bool) -> float:
    """Messages/s that 3 workers (2 threads each) sent together over 3 s at ``rate``."""
    url = new_postgres_database(server)
    stores = [Store(url) for _ in range(3)]
    limits: list[RateLimit] = []
    for store in stores:
        if divided:
            limit = DividedRate(rate)
            limit.share(3)
            limits.append(limit)
        else:
            limits.append(SharedRate(store, rate))
    sent: list[float] = []
    lock = threading.Lock()
    begin = time.monotonic() + 0.5
    end = begin + 3.0

    def send(index: int, limit: RateLimit) -> None:
        while True:
            now = time.monotonic()
            if now >= end or (uneven and index > 0 and now >= begin + 1.0):
                return
            limit.wait()
            with lock:
                sent.append(time.monotonic())

    threads = [threading.Thread(target=send, args=(i, lim)) for i, lim in enumerate(limits) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for store in stores:
        store.close()
    window = [t for t in sent if begin + 1.0 <= t < end] if uneven else [t for t in sent if begin <= t < end]
    return len(window) / (2.0 if uneven else 3.0)


def report(line: str) -> None:
    print(line, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--subscribers", type=int, default=3000)
    parser.add_argument("--rate", type=float, default=60.0)
    parser.add_argument("--skip", choices=["throughput", "tick", "rate"], action="append", default=[])
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="bench-worker-"))
    report(f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {os.cpu_count()} cores (shared machine)")
    with running_postgres() as server:
        if "throughput" not in args.skip:
            report(f"\nthroughput, {args.subscribers} subscribers due at once, one-paper digests, smtp-sink:")
            report("| workers | digests/s (first to last message) | digests/s (from start) |")
            report("|---|---|---|")
            for workers in (1, 2, 3):
                steady, whole = throughput(server, workers, args.subscribers, folder)
                report(f"| {workers} | {steady:,.0f} | {whole:,.0f} |")
        if "tick" not in args.skip:
            report("\ntick (median of 5):")
            report("| subscribers | due | tick ms |")
            report("|---|---|---|")
            for total, due in ((10_000, 100), (100_000, 1_000), (100_000, 100)):
                report(f"| {total:,} | {due:,} | {tick_time(server, total, due, folder) * 1000:.1f} |")
        if "rate" not in args.skip:
            report(f"\nSMTP rate {args.rate:g}/s over 3 workers (measured msgs/s):")
            report("| work | shared budget | rate / live workers |")
            report("|---|---|---|")
            for uneven in (False, True):
                shared = shared_rate(server, args.rate, uneven, divided=False)
                divided = shared_rate(server, args.rate, uneven, divided=True)
                report(f"| {'uneven' if uneven else 'even'} | {shared:.1f} | {divided:.1f} |")


if __name__ == "__main__":
    main()

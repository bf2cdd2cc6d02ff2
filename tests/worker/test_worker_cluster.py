"""``digest worker``: three worker processes on one real PostgreSQL, one of them SIGKILLed.

3,000 subscribers are due in the same minute. Three workers run (two of them under another
host identity, ``DIGEST_HOST_ID``, so that taking over a dead one's digests goes through the
expiry of its lease, as between machines). One is SIGKILLed while it holds outbox rows being
sent; in a second run, one is SIGKILLed inside a planning job. Each time every subscriber
gets exactly one digest for the slot, none is lost, and a message received twice is only one
the killed worker had in flight (same Message-ID). The PostgreSQL server is started here
(Debian package ``postgresql``); skipped when it is absent.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from click.testing import Result
from conftest import (
    SmtpServer,
    many,
    new_postgres_database,
    running_postgres,
    smtp_section,
    wait_for,
)

SUBSCRIBERS = 3000
LEASE = 4  # seconds ([worker] lease): short, so that a takeover fits in the test


@pytest.fixture(scope="module")
def postgres() -> Iterator[str]:
    with running_postgres() as server:
        yield server


def cluster_config(tmp_path: Path, url: str, smtp: SmtpServer, slot: datetime, *, batch: int) -> Path:
    """SUBSCRIBERS subscribers of one paper, all on a daily schedule at ``slot``'s time."""
    at = slot.strftime("%H:%M")
    config = many(tmp_path, SUBSCRIBERS, smtp_section(smtp), extra_digest=f'database = "{url}"\n')
    text = config.read_text().replace('topics = ["snn"]\n', f'topics = ["snn"]\nschedule = "daily {at}"\n')
    text += f'\n[worker]\nlease = "{LEASE}s"\ntick = "2s"\nbatch = {batch}\ndeliver_for = "10s"\n'
    config.write_text(text)
    return config


def served_yesterday(url: str, slot: datetime) -> None:
    """As if ``digest run`` had served everyone at yesterday's slot: today's is due now."""
    yesterday = (slot - timedelta(days=1)).replace(tzinfo=None)
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO subscribers (email, last_scheduled_at) VALUES (:e, :t) "
                "ON CONFLICT (email) DO UPDATE SET last_scheduled_at = :t"
            ),
            [{"e": f"user{i}@example.org", "t": yesterday} for i in range(SUBSCRIBERS)],
        )
    engine.dispose()


class Worker:
    """A ``digest worker`` process, its log in a file."""

    def __init__(self, config: Path, log: Path, host: str | None = None) -> None:
        env = dict(os.environ)
        if host:
            env["DIGEST_HOST_ID"] = host
        self.host, self.log = host, log
        self.process = subprocess.Popen(
            [sys.executable, "-m", "pipeline.cli", "--config", str(config), "worker", "--concurrency", "2"],
            stdout=subprocess.DEVNULL,
            stderr=log.open("wb"),
            env=env,
        )

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=30)


def rows(url: str, query: str, **params: object) -> list[Any]:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return list(conn.execute(sa.text(query), params))
    finally:
        engine.dispose()


def held_by(url: str, host: str) -> set[str]:
    """Message-IDs of the outbox rows a worker of ``host`` holds (claimed, being sent)."""
    found = rows(
        url, "SELECT message_id FROM deliveries WHERE state = 'sending' AND claimed_by LIKE :h", h=f"{host}:%"
    )
    return {str(r[0]) for r in found}


def job_states(url: str, ids: list[int]) -> dict[int, str]:
    """The task engine's status of these jobs."""
    found = rows(url, "SELECT id, status::text FROM procrastinate_jobs WHERE id = ANY(:ids)", ids=ids)
    return {int(r[0]): str(r[1]) for r in found}


def all_sent(url: str, smtp: SmtpServer) -> bool:
    found = rows(url, "SELECT state, count(*) FROM deliveries GROUP BY state")
    counts = {str(r[0]): int(r[1]) for r in found}
    return counts == {"sent": SUBSCRIBERS} and len(smtp.handler.messages) >= SUBSCRIBERS


def check_exactly_once(url: str, smtp: SmtpServer, slot: datetime, in_flight: set[str]) -> Counter[str]:
    """Every subscriber has one planned slot and got exactly that digest; return repeats."""
    slots = rows(url, "SELECT subscriber, slot_at, message_id FROM planned_slots")
    assert len(slots) == SUBSCRIBERS
    assert {r[1] for r in slots} == {slot.replace(tzinfo=None)}
    planned = {str(r[0]): str(r[2]) for r in slots}
    assert len(planned) == SUBSCRIBERS and all(planned.values())
    received: dict[str, set[str]] = defaultdict(set)
    ids: Counter[str] = Counter()
    for message, (_, rcpts) in zip(smtp.handler.messages, smtp.handler.envelopes, strict=True):
        (rcpt,) = rcpts
        received[rcpt].add(str(message["Message-ID"]))
        ids[str(message["Message-ID"])] += 1
    assert len(received) == SUBSCRIBERS, "some subscriber got nothing"
    wrong = {who: got for who, got in received.items() if got != {planned[who]}}
    assert not wrong, f"subscribers with another or a second digest: {list(wrong.items())[:5]}"
    repeats = Counter({mid: n for mid, n in ids.items() if n > 1})
    assert set(repeats) <= in_flight, "a message repeated that the killed worker did not have in flight"
    assert all(n == 2 for n in repeats.values())
    return repeats


def test_a_worker_killed_while_sending_loses_nothing_and_repeats_only_what_was_in_flight(
    tmp_path: Path, postgres: str, smtp_server: SmtpServer, cli: Callable[..., Result]
) -> None:
    url = new_postgres_database(postgres)
    slot = datetime.now(UTC).replace(second=0, microsecond=0)  # (due: this minute has begun)
    config = cluster_config(tmp_path, url, smtp_server, slot, batch=500)
    assert cli("--config", config, "fetch").exit_code == 0
    served_yesterday(url, slot)
    started = time.monotonic()
    a = Worker(config, tmp_path / "a.log")
    b = Worker(config, tmp_path / "b.log", host="machine-b")
    c = Worker(config, tmp_path / "c.log", host="machine-c")
    wait_for(lambda: bool(held_by(url, "machine-b")), timeout=60)
    b.process.kill()
    b.process.wait()
    # (frozen now: nobody may take them before their lease ends)
    leases = dict(
        rows(url, "SELECT message_id, lease_until FROM deliveries WHERE claimed_by LIKE 'machine-b:%'")
    )
    in_flight = held_by(url, "machine-b")
    assert in_flight
    wait_for(lambda: all_sent(url, smtp_server), timeout=90)
    assert (a.stop(), c.stop()) == (0, 0), a.text()[-2000:] + c.text()[-2000:]

    repeats = check_exactly_once(url, smtp_server, slot, in_flight)
    # What the dead worker held went out again only once its lease had run out, from another host.
    taken = rows(
        url,
        "SELECT message_id, claimed_by, sent_at FROM deliveries WHERE message_id = ANY(:ids)",
        ids=list(in_flight),
    )
    assert all(not str(r[1]).startswith("machine-b:") for r in taken)
    early = [r[0] for r in taken if r[2] < leases[r[0]]]
    assert not early, "taken over before the dead worker's lease ran out"
    logs = [w.text() for w in (a, b, c)]
    assert sum("(task tables created)" in text for text in logs) == 1  # three started at once
    status = cli("--config", config, "status")
    assert "Workers: 0 alive" in status.output
    assert f"gone: machine-b:{b.process.pid}" in status.output
    assert f"Outbox: {SUBSCRIBERS} sent" in status.output
    assert re.search(r"Jobs: \d+ waiting, \d+ doing, \d+ failed, \d+ done", status.output)
    print(f"repeated {sum(repeats.values()) - len(repeats)} of {len(in_flight)} in flight; "
          f"{time.monotonic() - started:.1f}s")


def test_a_worker_killed_inside_planning_plans_each_slot_once(
    tmp_path: Path, postgres: str, smtp_server: SmtpServer, cli: Callable[..., Result]
) -> None:
    url = new_postgres_database(postgres)
    slot = datetime.now(UTC).replace(second=0, microsecond=0)
    config = cluster_config(tmp_path, url, smtp_server, slot, batch=1500)
    assert cli("--config", config, "fetch").exit_code == 0
    served_yesterday(url, slot)
    b = Worker(config, tmp_path / "b.log", host="machine-b")  # alone first: it takes the planning
    planning = re.compile(r"plan job=(\d+) \S+ subscribers=\d+ start")
    wait_for(lambda: planning.search(b.text()) is not None, timeout=60)
    b.process.kill()
    b.process.wait()
    in_flight = held_by(url, "machine-b")
    killed = [int(job) for job in planning.findall(b.text())]
    done = {int(job) for job in re.findall(r"plan job=(\d+) \S+ planned=", b.text())}
    cut = [job for job in killed if job not in done]
    assert cut, "the worker was not killed inside planning"
    assert set(job_states(url, cut).values()) == {"doing"}  # left by the dead worker
    a = Worker(config, tmp_path / "a.log")
    c = Worker(config, tmp_path / "c.log", host="machine-c")
    wait_for(lambda: all_sent(url, smtp_server), timeout=90)
    # The sweep puts the dead worker's job back (or fails it, when its twin already waits).
    wait_for(lambda: "doing" not in set(job_states(url, cut).values()), timeout=30)
    assert (a.stop(), c.stop()) == (0, 0), a.text()[-2000:] + c.text()[-2000:]
    check_exactly_once(url, smtp_server, slot, in_flight)

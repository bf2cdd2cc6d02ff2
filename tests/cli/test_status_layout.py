"""`digest status` as a person reads it: tables that fit the terminal, subscribers' times in
their own timezone, and whether a scheduler holds the state's lease."""

from __future__ import annotations

import fcntl
import os
import re
import socket
import struct
import subprocess
import sys
import termios
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from click.testing import Result
from conftest import FeedServer, opened, wait_for

from pipeline import run
from pipeline.cli.base import PIPED_WIDTH, output_width, when

NEW_YORK = ZoneInfo("America/New_York")


def grace_in_new_york(config: Path) -> None:
    """Grace (the second subscriber of the shared config) reads her schedule in New York."""
    text = config.read_text()
    grace = 'email = "grace@example.org"\nname = "Grace"\ntopics = ["diffusion", "robots"]'
    assert grace in text
    config.write_text(
        text.replace(grace, grace + '\nschedule = "weekly mon 08:00"\ntimezone = "America/New_York"')
    )


def next_monday_8am_new_york(now: datetime) -> datetime:
    here = now.astimezone(NEW_YORK)
    day = here.date() + timedelta(days=-here.weekday() % 7)
    at = datetime(day.year, day.month, day.day, 8, 0, tzinfo=NEW_YORK)
    if at <= here:
        day += timedelta(days=7)
        at = datetime(day.year, day.month, day.day, 8, 0, tzinfo=NEW_YORK)
    return at


def test_when_shows_a_time_in_the_zone_given_with_its_name() -> None:
    fire = datetime(2026, 12, 7, 13, 0, tzinfo=UTC)  # weekly mon 08:00 in New York, in winter
    assert when(fire, NEW_YORK) == "2026-12-07 08:00 EST"
    assert when(datetime(2026, 7, 6, 12, 0, tzinfo=UTC), NEW_YORK) == "2026-07-06 08:00 EDT"
    assert when(fire, ZoneInfo("Europe/London")) == "2026-12-07 13:00 GMT"
    assert when(None, NEW_YORK) == "-"


def test_subscriber_times_are_in_their_own_timezone(
    cli: Callable[..., Result], write_config: Callable[..., Path]
) -> None:
    config = write_config()
    grace_in_new_york(config)
    cli("--config", config, "send")
    before = datetime.now(UTC)
    result = cli("--config", config, "status")
    assert result.exit_code == 0, result.output
    row = next(line for line in result.output.splitlines() if line.startswith("grace@example.org"))
    expected = next_monday_8am_new_york(before).strftime("%Y-%m-%d %H:%M %Z")
    assert re.search(
        r"weekly mon 08:00\s+\d{4}-\d\d-\d\d \d\d:\d\d E[SD]T\s+0\s+" + re.escape(expected) + "$",
        row.rstrip(),
    ), row
    # Ada keeps the config's zone (UTC): her next digest is her 07:00, not shifted to New York's.
    ada = next(line for line in result.output.splitlines() if line.startswith("ada@example.org"))
    assert re.search(r"\d{4}-\d\d-\d\d 07:00 UTC$", ada.rstrip()), ada


def test_status_fits_80_columns(
    cli: Callable[..., Result], write_config: Callable[..., Path], feed_server: FeedServer
) -> None:
    config = write_config(feeds={"blog": feed_server.url("status/500")})
    grace_in_new_york(config)
    cli("--config", config, "send")
    wide = cli("--config", config, "status").output  # piped, no $COLUMNS: a row per line, however long
    assert max(len(line) for line in wide.splitlines()) > 120
    assert re.search(
        r"^lab-blog\s.*HTTP 500 Internal Server Error\s+http://127\.0\.0\.1:\d+/status/500 *$", wide, re.M
    ), wide

    narrow = cli("--config", config, "status", env={"COLUMNS": "80"})
    assert narrow.exit_code == 0, narrow.output
    lines = narrow.output.splitlines()
    assert max(len(line.rstrip()) for line in lines) <= 80, "\n" + narrow.output
    # What matters stays, a row per feed and per subscriber, with its result and next digest.
    assert re.search(r"^arxiv-cs\s+\d{4}-\d\d-\d\d \d\d:\d\d \S+\s.*13 new", narrow.output, re.M), (
        narrow.output
    )
    assert re.search(r"^lab-blog\s.*\berror\b", narrow.output, re.M), narrow.output
    assert re.search(
        r"^grace@example\.org\s.*\d\d:\d\d E[SD]T\s+0\s+\d{4}-\d\d-\d\d 08:00 E[SD]T *$", narrow.output, re.M
    )
    # The failing feed's error, left out of the narrow table, is listed under it (wrapped, indented).
    note = next(i for i, line in enumerate(lines) if line.startswith("  lab-blog: "))
    assert lines[note + 1].startswith("  ") and lines[note + 2] == "Subscribers"
    assert re.fullmatch(
        r"lab-blog: 1 failure in a row, last error \d{4}-\d\d-\d\d \d\d:\d\d \S+: "
        r"HTTP 500 Internal Server Error",
        " ".join(" ".join(lines[note : note + 2]).split()),
    ), narrow.output
    assert "Outbox: 3 sent" in narrow.output


def test_output_width_follows_columns_then_the_terminal_then_pipes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    leader, follower = os.openpty()
    try:
        fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 72, 0, 0))
        with os.fdopen(os.dup(follower), "w") as terminal, (tmp_path / "piped").open("w") as piped:
            monkeypatch.delenv("COLUMNS", raising=False)
            assert output_width(terminal) == 72
            assert output_width(piped) == PIPED_WIDTH
            monkeypatch.setenv("COLUMNS", "100")
            assert output_width(terminal) == 100
            assert output_width(piped) == 100
    finally:
        os.close(leader)
        os.close(follower)


def test_status_says_whether_a_scheduler_holds_the_lease(
    cli: Callable[..., Result], write_config: Callable[..., Path]
) -> None:
    config = write_config()
    never = cli("--config", config, "status")
    assert "Scheduler: not running (" in never.output and "last held" not in never.output

    with opened(config) as (_, store):
        now = datetime.now(UTC)
        assert run.take_scheduler_lease(store, run.scheduler_id(), now, timedelta(seconds=60)) is None
    held = cli("--config", config, "status")
    host_pid = f"{socket.gethostname()}:{os.getpid()}"
    assert re.search(
        rf"^Scheduler: running \({re.escape(host_pid)}, since \d{{4}}-\d\d-\d\d \d\d:\d\d \S+\)$",
        held.output,
        re.M,
    ), held.output

    with opened(config) as (_, store):
        run.release_scheduler_lease(store, run.scheduler_id())
        # A holder on this machine whose process is gone does not hold it any more.
        dead = f"{socket.gethostname()}:{2**22 + 12345}"
        assert run.take_scheduler_lease(store, dead, datetime.now(UTC), timedelta(seconds=60)) is None
    gone = cli("--config", config, "status")
    assert re.search(
        rf"^Scheduler: not running; last held by {re.escape(dead)} until \S+ \S+ \S+ \(", gone.output, re.M
    ), gone.output


def test_status_sees_a_real_digest_run(tmp_path: Path, write_config: Callable[..., Path]) -> None:
    config = write_config()

    def status() -> str:
        return subprocess.run(
            [sys.executable, "-m", "pipeline.cli", "--config", str(config), "status"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout

    scheduler = subprocess.Popen(
        [sys.executable, "-m", "pipeline.cli", "--config", str(config), "run"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for(lambda: f":{scheduler.pid}, since" in status(), timeout=30)
        assert f"Scheduler: running ({socket.gethostname()}:{scheduler.pid}, since " in status()
    finally:
        scheduler.terminate()
        assert scheduler.wait(timeout=20) == 0
    assert "Scheduler: not running" in status()

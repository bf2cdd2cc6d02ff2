"""Schedules: parsing, next fire times across DST, catch-up bookkeeping, and `digest run` itself."""

from __future__ import annotations

import itertools
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from conftest import FeedServer, SmtpServer, body_text, smtp_section, text_titles
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.config import load_settings, parse_schedule
from pipeline.schedule import Scheduler, last_fire, next_fire, trigger_for
from pipeline.store import Store

LONDON = ZoneInfo("Europe/London")
NEW_YORK = ZoneInfo("America/New_York")


def fires(schedule: str, zone: ZoneInfo, start: datetime, count: int) -> list[datetime]:
    trigger = trigger_for(parse_schedule(schedule), zone)
    out: list[datetime] = []
    when = start
    for _ in range(count):
        fire = next_fire(trigger, when)
        assert fire is not None
        out.append(fire)
        when = fire
    return out


def local(fire: datetime, zone: ZoneInfo) -> str:
    return fire.astimezone(zone).strftime("%a %d %H:%M")


@pytest.mark.parametrize(
    ("zone", "start", "utc_hours"),
    [
        # Clocks go forward: 07:30 local is 07:30Z, then 06:30Z (BST) in London.
        (LONDON, datetime(2026, 3, 27, 12, tzinfo=UTC), ["07:30", "06:30", "06:30"]),
        # Clocks go back.
        (LONDON, datetime(2026, 10, 23, 12, tzinfo=UTC), ["06:30", "07:30", "07:30"]),
        (NEW_YORK, datetime(2026, 3, 6, 18, tzinfo=UTC), ["12:30", "11:30", "11:30"]),
        (NEW_YORK, datetime(2026, 10, 30, 18, tzinfo=UTC), ["11:30", "12:30", "12:30"]),
    ],
)
def test_daily_keeps_local_time_across_dst(zone: ZoneInfo, start: datetime, utc_hours: list[str]) -> None:
    found = fires("daily 07:30", zone, start, 3)
    assert [f.astimezone(zone).strftime("%H:%M") for f in found] == ["07:30"] * 3
    assert [f.astimezone(UTC).strftime("%H:%M") for f in found] == utc_hours
    assert [f.date() for f in found] == [(start + timedelta(days=i + 1)).date() for i in range(3)]


@pytest.mark.parametrize(
    ("zone", "night"),
    [(LONDON, datetime(2026, 10, 24, 12, tzinfo=UTC)), (NEW_YORK, datetime(2026, 10, 31, 12, tzinfo=UTC))],
)
def test_a_time_in_the_repeated_hour_fires_once(zone: ZoneInfo, night: datetime) -> None:
    # 01:30 happens twice when clocks go back; APScheduler alone fires at both.
    found = fires("daily 01:30", zone, night, 3)
    assert [local(f, zone) for f in found] == [
        (night + timedelta(days=d)).astimezone(zone).strftime("%a %d ") + "01:30" for d in (1, 2, 3)
    ]
    assert len({f.date() for f in found}) == 3


@pytest.mark.parametrize(
    ("zone", "night", "expected"),
    [
        (LONDON, datetime(2026, 3, 28, 12, tzinfo=UTC), "Sun 29 02:30"),  # 01:00 -> 02:00
        (NEW_YORK, datetime(2026, 3, 7, 12, tzinfo=UTC), "Sun 08 03:30"),  # 02:00 -> 03:00
    ],
)
def test_a_time_in_the_skipped_hour_fires_once_an_hour_late(
    zone: ZoneInfo, night: datetime, expected: str
) -> None:
    hour = "01:30" if zone is LONDON else "02:30"
    first, second = fires(f"daily {hour}", zone, night, 2)
    assert local(first, zone) == expected
    assert local(second, zone).endswith(hour) and second - first >= timedelta(hours=23)


def test_weekly_and_cron_days() -> None:
    start = datetime(2026, 11, 29, 12, tzinfo=UTC)  # a Sunday
    assert [local(f, LONDON) for f in fires("weekly mon 08:00", LONDON, start, 2)] == [
        "Mon 30 08:00",
        "Mon 07 08:00",
    ]
    weekdays = [local(f, UTC) for f in fires("cron 30 7 * * 1-5", ZoneInfo("UTC"), start, 6)]
    assert weekdays == [
        "Mon 30 07:30",
        "Tue 01 07:30",
        "Wed 02 07:30",
        "Thu 03 07:30",
        "Fri 04 07:30",
        "Mon 07 07:30",
    ]
    sundays = [local(f, UTC) for f in fires("cron 0 9 * * 0", ZoneInfo("UTC"), start, 2)]
    assert sundays == ["Sun 06 09:00", "Sun 13 09:00"]  # crontab: 0 is Sunday
    # Both day fields restricted: the 1st of the month OR a Monday, as crontab(5) says.
    either = [f.strftime("%a %d") for f in fires("cron 0 9 1 * mon", ZoneInfo("UTC"), start, 3)]
    assert either == ["Mon 30", "Tue 01", "Mon 07"]


def test_every_is_a_fixed_grid() -> None:
    start = datetime(2026, 11, 29, 10, 0, 0, 500000, tzinfo=UTC)
    assert [f.strftime("%H:%M:%S") for f in fires("every 2s", ZoneInfo("UTC"), start, 3)] == [
        "10:00:02",
        "10:00:04",
        "10:00:06",
    ]
    assert [f.strftime("%H:%M") for f in fires("every 6h", ZoneInfo("UTC"), start, 2)] == ["12:00", "18:00"]


@pytest.mark.parametrize(
    ("schedule", "since_days", "expected"),
    [
        ("daily 07:30", 3, "2026-11-29T07:30"),
        ("every 2s", 400, "2026-11-29T10:00:04"),
        ("weekly fri 17:00", 30, "2026-11-27T17:00"),
        ("cron 0 9 1 * *", 100, "2026-11-01T09:00"),
    ],
)
def test_last_fire_finds_the_latest_missed_time_quickly(
    schedule: str, since_days: int, expected: str
) -> None:
    now = datetime(2026, 11, 29, 10, 0, 5, tzinfo=UTC)
    trigger = trigger_for(parse_schedule(schedule), ZoneInfo("UTC"))
    started = time.perf_counter()
    found = last_fire(trigger, now, now - timedelta(days=since_days))
    assert time.perf_counter() - started < 0.5
    assert found is not None and found.isoformat().startswith(expected)
    assert last_fire(trigger, now, found) is None  # already served: nothing more is due


@settings(max_examples=40, deadline=None)
@given(
    schedule=st.sampled_from(
        ["daily 01:30", "daily 02:30", "weekly sun 01:15", "cron */20 0-3 * * *", "cron 30 1 * * 0"]
    ),
    zone=st.sampled_from([LONDON, NEW_YORK, ZoneInfo("Australia/Lord_Howe"), ZoneInfo("UTC")]),
    day=st.integers(min_value=0, max_value=365),
)
def test_fire_times_move_forward_and_never_repeat_a_wall_time(
    schedule: str, zone: ZoneInfo, day: int
) -> None:
    start = datetime(2026, 1, 1, tzinfo=UTC) + timedelta(days=day)
    found = fires(schedule, zone, start, 12)
    assert all(a < b for a, b in itertools.pairwise(found))
    walls = [f.astimezone(zone).replace(tzinfo=None) for f in found]
    assert len(set(walls)) == len(walls)


# --- digest run in a subprocess --------------------------------------------------------------

FEED_HEAD = '<?xml version="1.0"?><rss version="2.0"><channel><title>t</title><link>https://example.org/</link><description>d</description>'


def feed_xml(titles_: list[str]) -> str:
    items = "".join(
        f"<item><title>{t}</title><link>https://example.org/{i}</link><guid>https://example.org/{i}</guid>"
        f"<description>About SNN.</description><pubDate>Fri, 27 Nov 2026 10:00:00 +0000</pubDate></item>"
        for i, t in enumerate(titles_)
    )
    return FEED_HEAD + items + "</channel></rss>"


def write_feed(server: FeedServer, titles_: list[str]) -> None:
    path = server.directory / "live.xml"
    path.write_text(feed_xml(titles_))
    later = time.time() + len(titles_)  # Last-Modified has one-second resolution
    os.utime(path, (later, later))


def run_config(
    tmp_path: Path, feeds: FeedServer, smtp: SmtpServer, subscribers: list[tuple[str, str]]
) -> Path:
    subs = "".join(
        f'[[subscribers]]\nemail = "{e}"\ntopics = ["snn"]\nschedule = "{s}"\n\n' for e, s in subscribers
    )
    config = tmp_path / "digest.toml"
    config.write_text(
        '[digest]\ntitle = "T"\nlookback = "3650d"\n\n'
        f'[[feeds]]\nname = "live"\nurl = "{feeds.url("live.xml")}"\nevery = "1s"\n\n'
        '[topics.snn]\nkeywords = ["SNN"]\n\n'
        + subs
        + smtp_section(smtp, timeout="30s")  # slow test machines must not cause retries
    )
    return config


class Daemon:
    """`digest run` in a subprocess, with its log in a file."""

    def __init__(self, config: Path, log: Path) -> None:
        self.log = log
        self.handle = log.open("wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "pipeline.cli", "--config", str(config), "run"],
            stdout=self.handle,
            stderr=subprocess.STDOUT,
        )

    def text(self) -> str:
        return self.log.read_text()

    def wait_log(self, pattern: str, timeout: float = 60) -> None:
        try:
            wait_for(lambda: re.search(pattern, self.text()) is not None, timeout)
        except AssertionError:
            raise AssertionError(f"log never showed {pattern!r}:\n{self.text()}") from None

    def stop(self) -> float:
        started = time.monotonic()
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(timeout=15)
        self.handle.close()
        return time.monotonic() - started


def wait_for(
    predicate: Callable[[], bool], timeout: float = 60, message: str = "condition not reached"
) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(message)
        time.sleep(0.05)


@pytest.fixture
def daemons() -> Iterator[list[Daemon]]:
    started: list[Daemon] = []
    yield started
    for daemon in started:
        if daemon.process.poll() is None:
            daemon.process.kill()
            daemon.process.wait()


def received(smtp: SmtpServer, address: str) -> list[set[str]]:
    return [set(text_titles(body_text(m))) for m in smtp.handler.to(address)]


def test_run_delivers_on_schedule_new_entries_next_time_and_stops_on_sigterm(
    tmp_path: Path, feed_server: FeedServer, smtp_server: SmtpServer, daemons: list[Daemon]
) -> None:
    write_feed(feed_server, ["SNN one", "SNN two"])
    config = run_config(tmp_path, feed_server, smtp_server, [("ada@example.org", "every 2s")])
    daemon = Daemon(config, tmp_path / "run.log")
    daemons.append(daemon)
    wait_for(lambda: len(smtp_server.handler.to("ada@example.org")) == 1, 60, "no scheduled digest")
    assert received(smtp_server, "ada@example.org") == [{"SNN one", "SNN two"}]
    write_feed(feed_server, ["SNN one", "SNN two", "SNN three"])
    wait_for(lambda: len(smtp_server.handler.to("ada@example.org")) == 2, 60, "no second digest")
    assert received(smtp_server, "ada@example.org")[1] == {"SNN three"}
    time.sleep(4.5)  # two more scheduled times: nothing new, so nothing sent
    assert len(smtp_server.handler.to("ada@example.org")) == 2
    daemon.wait_log(r"digest to=ada@example\.org skipped=nothing-new")
    daemon.wait_log(r"feed=live new=1 status=200")
    daemon.wait_log(r"digest to=ada@example\.org entries=1 sent")
    elapsed = daemon.stop()
    assert daemon.process.returncode == 0 and elapsed < 10, daemon.text()


def test_a_second_run_is_refused_and_a_send_during_run_doubles_nothing(
    tmp_path: Path, feed_server: FeedServer, smtp_server: SmtpServer, daemons: list[Daemon]
) -> None:
    write_feed(feed_server, [f"SNN paper {i}" for i in range(5)])
    people = [(f"user{i}@example.org", "every 2s") for i in range(10)]
    config = run_config(tmp_path, feed_server, smtp_server, people)
    daemon = Daemon(config, tmp_path / "run.log")
    daemons.append(daemon)
    daemon.wait_log("scheduler started")
    second = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "--config", str(config), "run"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert second.returncode == 1
    assert "another digest run" in second.stderr and "only one scheduler per state database" in second.stderr
    # Manual sends racing the scheduler: every entry still reaches every person exactly once.
    for _ in range(3):
        subprocess.run(
            [sys.executable, "-m", "pipeline.cli", "--config", str(config), "send"],
            capture_output=True,
            timeout=60,
        )
    wait_for(lambda: all(smtp_server.handler.to(e) for e, _ in people), 60, "not everyone got a digest")
    time.sleep(3)
    for email, _ in people:
        got = Counter(t for digest in received(smtp_server, email) for t in digest)
        assert got == Counter({f"SNN paper {i}": 1 for i in range(5)}), email
    assert daemon.stop() < 10 and daemon.process.returncode == 0


def test_jobs_still_queued_at_the_stop_return_at_once(
    tmp_path: Path, feed_server: FeedServer, smtp_server: SmtpServer
) -> None:
    # A SIGTERM while jobs wait in the executor's queue (one worker, many subscribers due): they
    # still run after the shutdown, and the interpreter's exit waits for them, so each must
    # return at once (they used to wait forever for the lock the shutdown kept).
    write_feed(feed_server, ["SNN one"])
    config = run_config(tmp_path, feed_server, smtp_server, [("ada@example.org", "every 2s")])
    store = Store(load_settings(config).digest.database_url)
    scheduler = Scheduler(str(config), store)
    scheduler.aps.start()
    scheduler.stop.set()
    assert scheduler.shutdown() == 0
    queued = [
        threading.Thread(target=scheduler.serve, args=("ada@example.org",), daemon=True),
        threading.Thread(target=scheduler.fetch_feed, args=("live",), daemon=True),
        threading.Thread(target=scheduler.deliver_outbox, daemon=True),
    ]
    for job in queued:
        job.start()
    for job in queued:
        job.join(5)
    assert not any(job.is_alive() for job in queued)
    assert smtp_server.handler.messages == []
    store.close()


def test_sighup_adds_a_subscriber_and_a_broken_config_keeps_the_old_one(
    tmp_path: Path, feed_server: FeedServer, smtp_server: SmtpServer, daemons: list[Daemon]
) -> None:
    write_feed(feed_server, ["SNN one"])
    config = run_config(tmp_path, feed_server, smtp_server, [("ada@example.org", "every 2s")])
    daemon = Daemon(config, tmp_path / "run.log")
    daemons.append(daemon)
    wait_for(lambda: len(smtp_server.handler.to("ada@example.org")) == 1, 60, "no digest for ada")
    good = config.read_text()
    config.write_text(
        good.replace(
            "[[subscribers]]",
            '[[subscribers]]\nemail = "bob@example.org"\ntopics = ["snn"]\n'
            'schedule = "every 2s"\n\n[[subscribers]]',
            1,
        )
    )
    daemon.process.send_signal(signal.SIGHUP)
    daemon.wait_log(r"config reloaded .*added digest:bob@example\.org \(every 2s UTC\)")
    wait_for(lambda: len(smtp_server.handler.to("bob@example.org")) == 1, 60, "no digest for bob")
    assert received(smtp_server, "bob@example.org") == [{"SNN one"}]

    config.write_text(good.replace('topics = ["snn"]', 'topics = ["nope"]'))
    daemon.process.send_signal(signal.SIGHUP)
    daemon.wait_log(r"reload failed, keeping the running config: .*unknown topic 'nope'")
    write_feed(feed_server, ["SNN one", "SNN two"])
    wait_for(
        lambda: len(smtp_server.handler.to("bob@example.org")) == 2, 60, "the old config stopped working"
    )
    assert daemon.stop() < 10 and daemon.process.returncode == 0


def test_downtime_gives_exactly_one_catch_up_digest(
    tmp_path: Path, feed_server: FeedServer, smtp_server: SmtpServer, daemons: list[Daemon]
) -> None:
    write_feed(feed_server, ["SNN one"])
    config = run_config(
        tmp_path,
        feed_server,
        smtp_server,
        [("ada@example.org", "daily 00:01"), ("bob@example.org", "daily 00:01")],
    )
    settings_ = load_settings(config)
    with Store(settings_.digest.database_url) as store:
        # ada was last served long ago (many daily times missed); bob has never been scheduled.
        store.mark_scheduled("ada@example.org", datetime.now(UTC) - timedelta(days=40))
    daemon = Daemon(config, tmp_path / "run.log")
    daemons.append(daemon)
    wait_for(lambda: len(smtp_server.handler.to("ada@example.org")) == 1, 60, "no catch-up digest")
    daemon.wait_log(r"digest to=bob@example\.org first-scheduled")
    time.sleep(3)
    assert len(smtp_server.handler.to("ada@example.org")) == 1
    assert smtp_server.handler.to("bob@example.org") == []
    assert daemon.stop() < 10 and daemon.process.returncode == 0
    with Store(settings_.digest.database_url) as store:
        served = store.subscriber_states()["ada@example.org"].last_scheduled_at
    assert served is not None and served.date() in (
        datetime.now(UTC).date(),
        (datetime.now(UTC) - timedelta(days=1)).date(),
    )

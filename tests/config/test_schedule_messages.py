"""A subscriber's ``schedule`` that is wrong is said in our words (which field, which value, the
range it must be in), never in APScheduler's. Through the real CLI; and, as a property, every
cron expression APScheduler refuses is refused first by our checks, in our words."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from apscheduler.triggers.cron import CronTrigger
from click.testing import Result
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.config import cron_day_of_week, parse_schedule
from pipeline.config.values import toml_value

CONFIG = """\
[[feeds]]
name = "arxiv"
url = "feed.xml"

[topics.rl]
keywords = ["RL"]

[[subscribers]]
email = "ada@example.org"
topics = ["rl"]
schedule = "{schedule}"
"""
SCHEDULE_LINE = 11


@pytest.mark.parametrize(
    ("schedule", "expected"),
    [
        # each cron field out of its range
        ("cron 61 * * * *", 'minute 61 is out of range 0-59 in "61 * * * *"'),
        ("cron 0 24 * * *", 'hour 24 is out of range 0-23 in "0 24 * * *"'),
        ("cron 0 7 0 * *", 'day of month 0 is out of range 1-31 in "0 7 0 * *"'),
        ("cron 0 7 * 13 *", 'month 13 is out of range 1-12 in "0 7 * 13 *"'),
        ("cron 0 7 * * 8", 'day of week 8 is out of range 0-7 in "0 7 * * 8" (0 and 7 are Sunday)'),
        ("cron 0 7-30 * * *", 'hour 30 is out of range 0-23 in "0 7-30 * * *"'),
        ("cron 5,75 * * * *", 'minute 75 is out of range 0-59 in "5,75 * * * *"'),
        # a wrong number of fields
        (
            "cron 30 7 * *",
            "a cron schedule has 5 fields (minute, hour, day of month, month, day of week: like "
            '30 7 * * 1-5); "30 7 * *" has 4',
        ),
        (
            "cron 0 30 7 * * 1",
            "a cron schedule has 5 fields (minute, hour, day of month, month, day of week: like "
            '30 7 * * 1-5); "0 30 7 * * 1" has 6',
        ),
        (
            "cron",
            'write "cron" and 5 fields (minute, hour, day of month, month, day of week: like 30 7 * * 1-5)',
        ),
        # names: the day or month meant
        ("cron 0 7 * * mon-fry", 'unknown day of week "fry" in "0 7 * * mon-fry"; did you mean `fri`?'),
        (
            "cron 0 7 * * someday",
            'unknown day of week "someday" in "0 7 * * someday": use sun, mon, tue, wed, thu, fri, sat '
            "or 0-7",
        ),
        ("cron 0 7 1 janu *", 'unknown month "janu" in "0 7 1 janu *"; did you mean `jan`?'),
        (
            "cron 0 7 1 jan-jun/2 *",
            '"jan-jun/2" steps over month names in "0 7 1 jan-jun/2 *": write numbers, like 1-6/2',
        ),
        (
            "cron 0 7 1 1-mar *",
            'the month range "1-mar" mixes a number and a name in "0 7 1 1-mar *": write both as numbers '
            "or both as names",
        ),
        # what is not a field at all
        (
            "cron x * * * *",
            '"x" is not a valid minute in "x * * * *": write a number 0-59',
        ),
        (
            "cron 1-2-3 * * * *",
            '"1-2-3" is not a valid minute in "1-2-3 * * * *": write a number 0-59, a range like 0-5, a '
            "list like 0,5, a step like */5, or *",
        ),
        ("cron 1,,2 * * * *", 'the minute field "1,,2" has an empty item in "1,,2 * * * *"'),
        (
            "cron 30-10 * * * *",
            'the minute range "30-10" goes backwards in "30-10 * * * *": write the smaller minute first',
        ),
        # steps
        ("cron */0 * * * *", 'the minute step is 0 in "*/0 * * * *": it must be at least 1'),
        ("cron */x * * * *", 'the minute step "x" is not a whole number in "*/x * * * *"'),
        (
            "cron */60 * * * *",
            'the minute step 60 is larger than the range it steps over (0-59) in "*/60 * * * *"',
        ),
        ("cron 0 0 * * 1-5/x", 'the day of week step "x" is not a whole number in "0 0 * * 1-5/x"'),
        # daily, weekly, every
        ("daily 25:00", 'hour 25 is out of range 0-23 in "daily 25:00"'),
        ("daily 07:60", 'minute 60 is out of range 0-59 in "daily 07:60"'),
        ("daily 7am", '"7am" is not a time in "daily 7am": write HH:MM, like 07:00'),
        ("daily", 'write "daily" and a time, like "daily 07:00", not "daily"'),
        ("weekly mondey 08:00", 'unknown day "mondey" in "weekly mondey 08:00"; did you mean `monday`?'),
        ("weekly 08:00", 'write "weekly", a day and a time, like "weekly mon 07:00", not "weekly 08:00"'),
        ("weekly fri 8", '"8" is not a time in "weekly fri 8": write HH:MM, like 07:00'),
        ("every 6x", 'bad interval "6x" in "every 6x": write 30s, 15m, 6h or 1d'),
        ("every 6 hours", 'write "every" and an interval, like "every 6h", not "every 6 hours"'),
        # an unknown kind: the kind meant, else the kinds there are
        (
            "dayly 07:00",
            "bad schedule 'dayly 07:00': did you mean `daily`? Use daily HH:MM | weekly mon HH:MM | every "
            "6h | cron 30 7 * * 1-5",
        ),
        (
            "fortnightly",
            "bad schedule 'fortnightly': use daily HH:MM | weekly mon HH:MM | every 6h | cron 30 7 * * 1-5",
        ),
    ],
)
def test_a_wrong_schedule_is_said_in_our_words(
    cli: Callable[..., Result], tmp_path: Path, schedule: str, expected: str
) -> None:
    (tmp_path / "feed.xml").write_text("<rss/>")
    config = tmp_path / "digest.toml"
    config.write_text(CONFIG.format(schedule=schedule))
    result = cli("--config", config, "check")
    assert result.exit_code == 2, result.output
    assert result.output.splitlines() == [
        f"{config}:{SCHEDULE_LINE}: subscribers[1].schedule: {expected}",
        "1 problem in the config.",
    ]


@pytest.mark.parametrize(
    ("schedule", "cron"),
    [
        ("cron 30 7 * * 1-5", ("30", "7", "*", "*", "mon,tue,wed,thu,fri")),
        ("Cron 0 9 1 JAN-MAR SUN", ("0", "9", "1", "jan-mar", "sun")),
        ("cron */15 0-6/2 last * *", ("*/15", "0-6/2", "last", "*", "*")),
        ("cron 0 0 1,15 */3 7", ("0", "0", "1,15", "*/3", "sun")),
        ("cron 59/0059 * * * *", None),  # a step over one minute: refused, in our words
    ],
)
def test_what_our_checks_take_is_what_crontab_means(schedule: str, cron: tuple[str, ...] | None) -> None:
    if cron is None:
        with pytest.raises(ValueError, match="steps over a single minute"):
            parse_schedule(schedule)
    else:
        assert parse_schedule(schedule).cron == cron


FIELD = st.lists(
    st.sampled_from(
        ["*", "/", "-", ",", "0", "1", "5", "7", "12", "23", "24", "31", "32", "59", "60", "mon", "fri",
         "sun", "jan", "dec", "last", "x", "?", "²", "٣"]
    ),
    min_size=1,
    max_size=4,
).map("".join)  # fmt: skip


@settings(max_examples=1000, deadline=None)
@given(st.lists(FIELD, min_size=5, max_size=5))
def test_what_apscheduler_refuses_we_refuse_first_in_our_words(fields: list[str]) -> None:
    expression = " ".join(fields)
    try:
        parse_schedule("cron " + expression)
    except ValueError as exc:
        ours = str(exc)
        assert "the scheduler refuses" not in ours, ours  # our checks let nothing through it refuses
        assert f"in {toml_value(expression)}" in ours, ours  # (a long one cut, as every value)
        return
    # Taken: APScheduler takes it too, with the day of week as crontab(5) means it.
    minute, hour, day, month, dow = fields
    CronTrigger(
        minute=minute, hour=hour, day=day, month=month, day_of_week=cron_day_of_week(dow), timezone="UTC"
    )

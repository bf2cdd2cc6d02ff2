"""The value types of ``digest.toml``: durations, time zones, email addresses, schedules.

Each is a parse function that raises ValueError with a message meant for the person editing the
file, and an ``Annotated`` type that the pydantic sections use (``Duration``, ``TimeZone``,
``Email``, ``Mailbox``, ``Name``, ``ScheduleValue``). Messages spell values as the file does
(``toml_value``) and offer the name likely meant (``did_you_mean``). A cron schedule's fields
are checked here, field by field, so that a mistake is named in these words (``minute 61 is out
of range 0-59``) before APScheduler, whose sentences are its own, sees them.
"""

from __future__ import annotations

import difflib
import functools
import ipaddress
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, time, timedelta
from email.utils import parseaddr
from typing import Annotated, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

from email_validator import EmailNotValidError, ValidatedEmail, validate_email
from pydantic import AfterValidator, BeforeValidator, Field, PlainSerializer

# --- the words of messages -------------------------------------------------------------------

_VALUE_CHARS = 60  # of a value quoted in a message; a longer one is cut


def toml_value(value: object) -> str:
    """A value as the config file spells it, for messages: ``"yes"``, ``1``, ``true``,
    ``["a", "b"]``, ``{ a = 1 }``, ``07:00:00``; never Python's ``True`` or ``datetime.time(...)``."""
    if isinstance(value, str):
        quoted = json.dumps(value, ensure_ascii=False)
        return quoted if len(quoted) <= _VALUE_CHARS else quoted[: _VALUE_CHARS - 4] + '..."'
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, date | time):
        return value.isoformat()
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        pairs = ", ".join(f"{_toml_key(str(k))} = {toml_value(v)}" for k, v in value.items())
        return "{ " + pairs + " }" if pairs else "{}"
    return str(value)


def _toml_key(key: str) -> str:
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else json.dumps(key, ensure_ascii=False)


def did_you_mean(word: str, candidates: Iterable[str]) -> str | None:
    """The candidate ``word`` was most likely meant to be (a typo, another case), or None."""
    by_folded = {c.lower(): c for c in sorted(candidates, reverse=True)}
    found = difflib.get_close_matches(word.lower(), by_folded, n=1, cutoff=0.6)
    return by_folded[found[0]] if found else None


def suggestion(word: str, candidates: Iterable[str]) -> str:
    """``"; did you mean `timezone`?"`` when a candidate is close to ``word``, else ``""``."""
    close = did_you_mean(word, candidates)
    return f"; did you mean `{close}`?" if close is not None and close != word else ""


# --- durations, time zones, addresses -----------------------------------------------------

_DURATION = re.compile(r"(\d+(?:\.\d+)?)([smhd])")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(value: object) -> timedelta:
    """Turn ``30s``, ``15m``, ``6h``, ``7d`` (or a sum such as ``1h30m``) into a timedelta."""
    if isinstance(value, timedelta):
        return value
    if not isinstance(value, str):
        raise ValueError(
            f'a duration is a string such as "30s", "15m", "6h" or "7d", not {toml_value(value)}'
        )
    text = value.strip().lower().replace(" ", "")
    parts = _DURATION.findall(text)
    if not text or "".join(n + u for n, u in parts) != text:
        raise ValueError(f"bad duration {value!r}: write it as 30s, 15m, 6h or 7d")
    seconds = sum(float(n) * _UNITS[u] for n, u in parts)
    if seconds <= 0:
        raise ValueError(f"bad duration {value!r}: it must be longer than zero")
    return timedelta(seconds=seconds)


def format_duration(delta: timedelta) -> str:
    """The shortest ``7d`` / ``6h`` / ``15m`` / ``30s`` spelling of a duration."""
    seconds = int(delta.total_seconds())
    for unit in ("d", "h", "m"):
        if seconds % _UNITS[unit] == 0:
            return f"{seconds // _UNITS[unit]}{unit}"
    return f"{seconds}s"


def _zone(value: object) -> ZoneInfo:
    if isinstance(value, ZoneInfo):
        return value
    if not isinstance(value, str) or not value:
        raise ValueError(f'a timezone is an IANA name such as "Europe/London", not {toml_value(value)}')
    try:
        return ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError):
        close = did_you_mean(value, available_timezones())
        hint = f"did you mean `{close}`?" if close else 'use an IANA name such as "Europe/London"'
        raise ValueError(f"unknown timezone {value!r} ({hint})") from None


# A local part that email_validator takes as it is: lower-case letters, digits and ._%+- (no
# leading, trailing or doubled dot).
_PLAIN_LOCAL = re.compile(r"[a-z0-9_%+-]+(?:\.[a-z0-9_%+-]+)*")


def email_address(value: object) -> str:
    """An email address as email_validator normalises it, or ValueError saying what is wrong.

    An address written in ASCII stays ASCII: ``a@xn--r8jz45g.jp`` is not turned into
    ``a@例え.jp``, which only a server announcing SMTPUTF8 (RFC 6531) would accept. One written
    with non-ASCII characters keeps them. The domain must have a dot (``turing@example`` is a
    typo, not an address), except ``localhost``, which email_validator judges on its own.
    """
    if not isinstance(value, str):
        raise ValueError(f"an email address is a string, not {toml_value(value)}")
    address = _address(value)
    domain = address.rpartition("@")[2]
    if "." not in domain and domain.lower() != "localhost":
        raise ValueError(
            f"bad email address {value!r}: The part after the @-sign is not valid. It should have a period."
        )
    return address


def _address(value: str) -> str:
    # Most of email_validator's time goes on the domain, which subscribers share: a plain
    # address takes its domain's result, checked once. Anything else, and every error, goes
    # through the whole check.
    local, _, domain = value.rpartition("@")
    if len(value) <= 254 and domain.isascii() and _PLAIN_LOCAL.fullmatch(local):
        try:
            return f"{local}@{_domain(domain)}"
        except EmailNotValidError:
            pass
    try:
        checked = _validate(value)
    except EmailNotValidError as exc:
        raise ValueError(f"bad email address {value!r}: {exc}") from None
    if value.isascii() and checked.ascii_email:
        return str(checked.ascii_email)
    return str(checked.normalized)


@functools.lru_cache(maxsize=256)
def _domain(domain: str) -> str:
    """An ASCII domain as email_validator normalises it, still in ASCII (punycode stays)."""
    return str(_validate(f"x@{domain}").ascii_domain)


def ascii_domain(domain: str) -> str:
    """A domain in its ASCII form (IDNA, RFC 5891): ``例え.jp`` -> ``xn--r8jz45g.jp``.

    A domain email_validator does not take comes back lower-cased, as it is."""
    try:
        return _domain(domain)
    except EmailNotValidError:
        return domain.lower()


def is_loopback(host: str) -> bool:
    """Whether ``host`` names this machine (a password sent to it never crosses a network)."""
    if host.lower() in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _validate(address: str) -> ValidatedEmail:
    return validate_email(
        address, check_deliverability=False, globally_deliverable=False, test_environment=True
    )


def _mailbox(value: object) -> str:
    """A ``From`` value: ``addr@example.org`` or ``Name <addr@example.org>``."""
    if not isinstance(value, str) or any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise ValueError(f'bad sender {toml_value(value)}: write "Name <address@example.org>"')
    email_address(parseaddr(value)[1])
    return value.strip()


Duration = Annotated[timedelta, BeforeValidator(parse_duration), PlainSerializer(format_duration)]
TimeZone = Annotated[ZoneInfo, BeforeValidator(_zone), PlainSerializer(str)]
Email = Annotated[str, AfterValidator(email_address)]
Mailbox = Annotated[str, AfterValidator(_mailbox)]
Name = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$", max_length=64)]
EnvName = Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")]  # (an environment variable's name)

# --- schedules ------------------------------------------------------------------------------

WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_DAYS = {
    name: short
    for short, long in zip(
        WEEKDAYS, ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday"), strict=True
    )
    for name in (short, long)
}


@dataclass(frozen=True, slots=True)
class Schedule:
    """A parsed ``schedule`` value; ``schedule.trigger_for`` turns it into a trigger.

    ``cron`` holds the five fields (minute, hour, day, month, day of week) with the day of
    week already spelled as names: APScheduler 3.x reads a numeric day of week with 0 as
    Monday, where crontab(5) has 0 (and 7) as Sunday.
    """

    text: str
    kind: Literal["daily", "weekly", "every", "cron"]
    at: time | None = None
    weekday: str | None = None
    interval: timedelta | None = None
    cron: tuple[str, str, str, str, str] | None = None

    def __str__(self) -> str:
        return self.text


_SCHEDULE_HELP = "daily HH:MM | weekly mon HH:MM | every 6h | cron 30 7 * * 1-5"
_KINDS = ("daily", "weekly", "every", "cron")
_CRON_DAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")
_MONTHS = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
# The first four fields of a crontab line: name, lowest and highest value, names for values.
_CRON_FIELDS: tuple[tuple[str, int, int, tuple[str, ...]], ...] = (
    ("minute", 0, 59, ()),
    ("hour", 0, 23, ()),
    ("day of month", 1, 31, ()),
    ("month", 1, 12, _MONTHS),
)
_CRON_HELP = "minute, hour, day of month, month, day of week: like 30 7 * * 1-5"
_CRON_ITEM = re.compile(r"(?P<body>\*|(?P<first>[a-z0-9]+)(?:-(?P<last>[a-z0-9]+))?)(?:/(?P<step>.*))?")


class _Problem(ValueError):
    """What is wrong with one part of a schedule, and a hint; the schedule's message puts the
    whole expression between them (``minute 61 is out of range 0-59 in "61 * * * *"``)."""

    def __init__(self, what: str, hint: str = "") -> None:
        super().__init__(what + hint)
        self.what = what
        self.hint = hint

    def within(self, whole: str) -> ValueError:
        return ValueError(f"{self.what} in {toml_value(whole)}{self.hint}")


def _clock(text: str, whole: str) -> time:
    match = re.fullmatch(r"([0-9]{1,2}):([0-9]{2})", text)
    if not match:
        raise _Problem(f"{toml_value(text)} is not a time", ": write HH:MM, like 07:00").within(whole)
    hour, minute = int(match[1]), int(match[2])
    if hour > 23:
        raise _Problem(f"hour {hour} is out of range 0-23").within(whole)
    if minute > 59:
        raise _Problem(f"minute {minute} is out of range 0-59").within(whole)
    return time(hour, minute)


def _cron_day(value: str) -> int:
    if value.isascii() and value.isdigit():
        if int(value) > 7:
            raise _Problem(f"day of week {int(value)} is out of range 0-7", " (0 and 7 are Sunday)")
        return int(value)
    if value[:3] in _CRON_DAYS:
        return _CRON_DAYS.index(value[:3])
    raise _Problem(
        f"unknown day of week {toml_value(value)}",
        suggestion(value, _CRON_DAYS) or f": use {', '.join(_CRON_DAYS)} or 0-7",
    )


def _step(step: str, field: str) -> int:
    if not (step.isascii() and step.isdigit()):
        raise _Problem(f"the {field} step {toml_value(step)} is not a whole number")
    if int(step) == 0:
        raise _Problem(f"the {field} step is 0", ": it must be at least 1")
    return int(step)


def cron_day_of_week(field: str) -> str:
    """A crontab(5) day-of-week field (0 or 7 = Sunday) as a list of day names."""
    if field in ("*", "?"):
        return "*"
    days: list[str] = []
    for item in field.lower().split(","):
        item, slash, step = item.partition("/")
        every = _step(step, "day of week") if slash else 1
        if not item:
            raise _Problem(f"the day of week field {toml_value(field)} has an empty item")
        if item == "*":
            low, high = 0, 6
        elif "-" in item:
            first, _, last = item.partition("-")
            low, high = _cron_day(first), _cron_day(last)
            high += 7 if high < low else 0
        else:
            low = _cron_day(item)
            high = 6 if slash else low  # "a/n" means from a to the end, every n
        days.extend(_CRON_DAYS[day % 7] for day in range(low, high + 1, every))
    return ",".join(dict.fromkeys(days))


def _cron_value(text: str, field: str, low: int, high: int, names: tuple[str, ...]) -> int:
    if text.isascii() and text.isdigit():
        if not low <= int(text) <= high:
            raise _Problem(f"{field} {int(text)} is out of range {low}-{high}")
        return int(text)
    if names and text.isalpha():
        if text in names:
            return names.index(text) + 1
        raise _Problem(
            f"unknown {field} {toml_value(text)}",
            suggestion(text, names) or f": use {names[0]} to {names[-1]}, or {low}-{high}",
        )
    raise _Problem(f"{toml_value(text)} is not a valid {field}", f": write a number {low}-{high}")


def _cron_field(text: str, field: str, low: int, high: int, names: tuple[str, ...]) -> None:
    """Raise _Problem unless ``text`` is a field APScheduler's cron trigger takes as crontab(5)
    means it: numbers, ranges, lists, steps (and month names, and ``last`` day of month)."""
    for item in text.split(","):
        if not item:
            raise _Problem(f"the {field} field {toml_value(text)} has an empty item")
        if field == "day of month" and item == "last":  # APScheduler's: the month's last day
            continue
        match = _CRON_ITEM.fullmatch(item)
        if match is None:
            raise _Problem(
                f"{toml_value(item)} is not a valid {field}",
                f": write a number {low}-{high}, a range like {low}-{low + 5}, a list like "
                f"{low},{low + 5}, a step like */5, or *",
            )
        step = _step(match["step"], field) if match["step"] is not None else None
        last: int | None
        if match["body"] == "*":
            first, last = low, high
        else:
            first = _cron_value(match["first"], field, low, high, names)
            last = _cron_value(match["last"], field, low, high, names) if match["last"] else None
            if match["first"].isalpha() != (match["last"] or match["first"]).isalpha():
                raise _Problem(
                    f"the {field} range {toml_value(item)} mixes a number and a name",
                    ": write both as numbers or both as names",
                )
            if last is not None and first > last:
                raise _Problem(
                    f"the {field} range {toml_value(item)} goes backwards",
                    f": write the smaller {field} first",
                )
            if step is not None and match["first"].isalpha():
                # APScheduler would read "jan-jun/2" as "jan-jun" and drop the step unsaid.
                raise _Problem(f"{toml_value(item)} steps over month names", ": write numbers, like 1-6/2")
        if step is None:
            continue
        # The span APScheduler checks a step against: "a/n" runs to the field's end.
        span = (last or high) - first
        if span == 0:
            raise _Problem(f"{toml_value(item)} steps over a single {field}", f": write {first}")
        if step > span:
            raise _Problem(
                f"the {field} step {step} is larger than the range it steps over ({first}-{first + span})"
            )


def _cron(fields: list[str]) -> tuple[str, str, str, str, str]:
    """The five crontab fields, the day of week as names; ValueError in the file's words."""
    whole = " ".join(fields)
    if not fields:
        raise ValueError(f'write "cron" and 5 fields ({_CRON_HELP})')
    if len(fields) != 5:
        raise ValueError(
            f"a cron schedule has 5 fields ({_CRON_HELP}); {toml_value(whole)} has {len(fields)}"
        )
    lowered = [field.lower() for field in fields]
    try:
        for text, (field, low, high, names) in zip(lowered, _CRON_FIELDS, strict=False):
            _cron_field(text, field, low, high, names)
        minute, hour, day, month, dow = lowered
        parsed = (minute, hour, day, month, cron_day_of_week(dow))
    except _Problem as problem:
        raise problem.within(whole) from None
    # Imported here: only validation needs APScheduler's cron parser. It takes whatever the
    # checks above let through; should a later APScheduler refuse more, say that it does.
    from apscheduler.triggers.cron import CronTrigger

    try:
        CronTrigger(
            minute=parsed[0],
            hour=parsed[1],
            day=parsed[2],
            month=parsed[3],
            day_of_week=parsed[4],
            timezone="UTC",
        )
    except ValueError as exc:
        raise ValueError(f"the scheduler refuses the cron expression {toml_value(whole)}: {exc}") from None
    return parsed


def parse_schedule(value: object) -> Schedule:
    """Parse a subscriber's ``schedule`` (see ``_SCHEDULE_HELP``)."""
    if isinstance(value, Schedule):
        return value
    if not isinstance(value, str):
        raise ValueError(
            f'a schedule is a string such as "daily 07:00" ({_SCHEDULE_HELP}), not {toml_value(value)}'
        )
    text = " ".join(value.split())
    written = text.split(" ")
    words = [word.lower() for word in written]
    kind = words[0]
    if kind == "daily":
        if len(words) != 2:
            raise ValueError(f'write "daily" and a time, like "daily 07:00", not {toml_value(text)}')
        return Schedule(text, "daily", at=_clock(words[1], text))
    if kind == "weekly":
        if len(words) != 3:
            raise ValueError(
                f'write "weekly", a day and a time, like "weekly mon 07:00", not {toml_value(text)}'
            )
        day = _DAYS.get(words[1])
        if day is None:
            raise _Problem(
                f"unknown day {toml_value(written[1])}",
                suggestion(words[1], _DAYS) or ": use mon, tue, wed, thu, fri, sat or sun",
            ).within(text)
        return Schedule(text, "weekly", at=_clock(words[2], text), weekday=day)
    if kind == "every":
        if len(words) != 2:
            raise ValueError(f'write "every" and an interval, like "every 6h", not {toml_value(text)}')
        try:
            interval = parse_duration(words[1])
        except ValueError:
            raise _Problem(f"bad interval {toml_value(written[1])}", ": write 30s, 15m, 6h or 1d").within(
                text
            ) from None
        return Schedule(text, "every", interval=interval)
    if kind == "cron":
        return Schedule(text, "cron", cron=_cron(written[1:]))
    close = did_you_mean(kind, _KINDS)
    hint = f"did you mean `{close}`? Use" if close else "use"
    raise ValueError(f"bad schedule {value!r}: {hint} {_SCHEDULE_HELP}")


ScheduleValue = Annotated[Schedule, BeforeValidator(parse_schedule), PlainSerializer(str)]

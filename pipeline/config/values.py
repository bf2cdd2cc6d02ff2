"""The value types of ``digest.toml``: durations, time zones, email addresses, schedules.

Each is a parse function that raises ValueError with a message meant for the person editing the
file, and an ``Annotated`` type that the pydantic sections use (``Duration``, ``TimeZone``,
``Email``, ``Mailbox``, ``Name``, ``ScheduleValue``).
"""

from __future__ import annotations

import functools
import ipaddress
import re
from dataclasses import dataclass
from datetime import time, timedelta
from email.utils import parseaddr
from typing import Annotated, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from email_validator import EmailNotValidError, ValidatedEmail, validate_email
from pydantic import AfterValidator, BeforeValidator, Field, PlainSerializer

# --- durations, time zones, addresses -----------------------------------------------------

_DURATION = re.compile(r"(\d+(?:\.\d+)?)([smhd])")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(value: object) -> timedelta:
    """Turn ``30s``, ``15m``, ``6h``, ``7d`` (or a sum such as ``1h30m``) into a timedelta."""
    if isinstance(value, timedelta):
        return value
    if not isinstance(value, str):
        raise ValueError(f'a duration is a string such as "30s", "15m", "6h" or "7d", not {value!r}')
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
        raise ValueError(f'a timezone is an IANA name such as "Europe/London", not {value!r}')
    try:
        return ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f'unknown timezone {value!r} (use an IANA name such as "Europe/London")') from None


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
        raise ValueError(f"an email address is a string, not {value!r}")
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
        raise ValueError(f'bad sender {value!r}: write "Name <address@example.org>"')
    email_address(parseaddr(value)[1])
    return value.strip()


Duration = Annotated[timedelta, BeforeValidator(parse_duration), PlainSerializer(format_duration)]
TimeZone = Annotated[ZoneInfo, BeforeValidator(_zone), PlainSerializer(str)]
Email = Annotated[str, AfterValidator(email_address)]
Mailbox = Annotated[str, AfterValidator(_mailbox)]
Name = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$", max_length=64)]

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
_CRON_DAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")


def _clock(text: str, whole: str) -> time:
    match = re.fullmatch(r"(\d{1,2}):(\d{2})", text)
    if not match or int(match[1]) > 23 or int(match[2]) > 59:
        raise ValueError(f"bad time {text!r} in schedule {whole!r}: write HH:MM, 00:00 to 23:59")
    return time(int(match[1]), int(match[2]))


def _cron_day(value: str) -> int:
    if value.isdigit() and int(value) <= 7:
        return int(value)
    if value[:3] in _CRON_DAYS:
        return _CRON_DAYS.index(value[:3])
    raise ValueError(f"bad day of week {value!r}")


def cron_day_of_week(field: str) -> str:
    """A crontab(5) day-of-week field (0 or 7 = Sunday) as a list of day names."""
    if field in ("*", "?"):
        return "*"
    days: list[str] = []
    for item in field.lower().split(","):
        item, _, step = item.partition("/")
        if step and (not step.isdigit() or step == "0"):
            raise ValueError(f"bad step {step!r} in day of week")
        if item == "*":
            low, high = 0, 6
        elif "-" in item:
            first, _, last = item.partition("-")
            low, high = _cron_day(first), _cron_day(last)
            high += 7 if high < low else 0
        else:
            low = _cron_day(item)
            high = 6 if step else low  # "a/n" means from a to the end, every n
        days.extend(_CRON_DAYS[day % 7] for day in range(low, high + 1, int(step or 1)))
    return ",".join(dict.fromkeys(days))


def parse_schedule(value: object) -> Schedule:
    """Parse a subscriber's ``schedule`` (see ``_SCHEDULE_HELP``)."""
    if isinstance(value, Schedule):
        return value
    if not isinstance(value, str):
        raise ValueError(f"a schedule is a string ({_SCHEDULE_HELP}), not {value!r}")
    text = " ".join(value.split())
    words = text.lower().split(" ")
    kind = words[0]
    if kind == "daily" and len(words) == 2:
        return Schedule(text, "daily", at=_clock(words[1], value))
    if kind == "weekly" and len(words) == 3:
        day = _DAYS.get(words[1])
        if day is None:
            raise ValueError(f"bad day {words[1]!r} in schedule {value!r}: use mon, tue, ... sun")
        return Schedule(text, "weekly", at=_clock(words[2], value), weekday=day)
    if kind == "every" and len(words) == 2:
        try:
            interval = parse_duration(words[1])
        except ValueError:
            raise ValueError(
                f"bad interval {words[1]!r} in schedule {value!r}: write 30s, 15m, 6h or 1d"
            ) from None
        return Schedule(text, "every", interval=interval)
    if kind == "cron" and len(words) == 6:
        minute, hour, day, month, dow = words[1:]
        try:
            fields = (minute, hour, day, month, cron_day_of_week(dow))
            # Imported here: only validation needs APScheduler's cron parser.
            from apscheduler.triggers.cron import CronTrigger

            CronTrigger(
                minute=fields[0],
                hour=fields[1],
                day=fields[2],
                month=fields[3],
                day_of_week=fields[4],
                timezone="UTC",
            )
        except ValueError as exc:
            raise ValueError(f"bad cron expression {' '.join(words[1:])!r}: {exc}") from None
        return Schedule(text, "cron", cron=fields)
    raise ValueError(f"bad schedule {value!r}: use {_SCHEDULE_HELP}")


ScheduleValue = Annotated[Schedule, BeforeValidator(parse_schedule), PlainSerializer(str)]

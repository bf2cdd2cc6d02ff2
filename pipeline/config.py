"""Read and validate ``digest.toml`` into a frozen :class:`Settings`.

The file is TOML (read with tomllib) validated with pydantic. Every problem is reported with the
file, the line where it can be found, the key path and what is wrong, all at once, as a
:class:`~pipeline.errors.ConfigError`. Relative paths in the file resolve against the folder
the file is in.
"""

from __future__ import annotations

import functools
import os
import re
import tomllib
from dataclasses import dataclass
from datetime import time, timedelta
from email.utils import parseaddr
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import quote
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from email_validator import EmailNotValidError, ValidatedEmail, validate_email
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    ValidationError,
    ValidationInfo,
    field_validator,
)

from .errors import ConfigError

DEFAULT_CONFIG = Path("config/digest.toml")
CONFIG_ENV = "DIGEST_CONFIG"

# --- value types --------------------------------------------------------------------------

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


def _email(value: object) -> str:
    if not isinstance(value, str):
        raise ValueError(f"an email address is a string, not {value!r}")
    # Most of email_validator's time goes on the domain (~50 us), which subscribers share: a
    # plain address takes its domain's result, checked once. Anything else, and every error,
    # goes through the whole check.
    local, _, domain = value.rpartition("@")
    if len(value) <= 254 and domain.isascii() and _PLAIN_LOCAL.fullmatch(local):
        try:
            return f"{local}@{_domain(domain)}"
        except EmailNotValidError:
            pass
    try:
        return _validate(value).normalized
    except EmailNotValidError as exc:
        raise ValueError(f"bad email address {value!r}: {exc}") from None


@functools.lru_cache(maxsize=256)
def _domain(domain: str) -> str:
    return str(_validate(f"x@{domain}").domain)


def _validate(address: str) -> ValidatedEmail:
    return validate_email(
        address, check_deliverability=False, globally_deliverable=False, test_environment=True
    )


def _mailbox(value: object) -> str:
    """A ``From`` value: ``addr@example.org`` or ``Name <addr@example.org>``."""
    if not isinstance(value, str) or any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise ValueError(f'bad sender {value!r}: write "Name <address@example.org>"')
    _email(parseaddr(value)[1])
    return value.strip()


Duration = Annotated[timedelta, BeforeValidator(parse_duration), PlainSerializer(format_duration)]
TimeZone = Annotated[ZoneInfo, BeforeValidator(_zone), PlainSerializer(str)]
Email = Annotated[str, AfterValidator(_email)]
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

# --- sections ---------------------------------------------------------------------------------


class _Section(BaseModel):
    # validate_default: defaults such as database = "state/digest.db" resolve like given values.
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True, validate_default=True)


def _resolve(value: str, info: ValidationInfo) -> str:
    """Resolve a relative path against the config file's folder (URLs pass through)."""
    if "://" in value:
        return value
    base = (info.context or {}).get("base_dir")
    path = Path(value).expanduser()
    if base is not None and not path.is_absolute():
        path = Path(base) / path
    return str(path)


class DigestSection(_Section):
    title: str = Field("Paper Digest", min_length=1, max_length=200)
    database: str = "state/digest.db"
    lookback: Duration = timedelta(days=7)
    max_entries: int = Field(30, ge=1, le=1000)
    send_empty: bool = False
    timezone: TimeZone = ZoneInfo("UTC")
    templates: str | None = None
    summary_words: int = Field(120, ge=5, le=2000)
    images: bool = False
    base_url: str | None = Field(None, pattern=r"^https?://\S+$")
    admin: Email | None = None
    retain: Duration = timedelta(days=90)
    render_workers: int | None = Field(None, ge=0, le=16)  # for large sends; None: one per spare core

    @field_validator("database")
    @classmethod
    def _database(cls, value: str, info: ValidationInfo) -> str:
        return value if "://" in value else _resolve(value, info)

    @field_validator("templates")
    @classmethod
    def _templates(cls, value: str | None, info: ValidationInfo) -> str | None:
        return None if value is None else _resolve(value, info)

    @property
    def database_url(self) -> str:
        """An SQLAlchemy URL for ``database`` (a plain path means an SQLite file)."""
        return self.database if "://" in self.database else f"sqlite:///{self.database}"


class FetchSection(_Section):
    every: Duration = timedelta(hours=1)
    timeout: Duration = timedelta(seconds=20)
    max_bytes: int = Field(10_000_000, ge=1024)
    concurrency: int = Field(8, ge=1, le=64)
    alert_after: Duration = timedelta(hours=24)


class SmtpSection(_Section):
    host: str = Field(min_length=1)
    port: int | None = Field(None, ge=1, le=65535)
    security: Literal["none", "starttls", "tls"] = "starttls"
    username: str | None = None
    password_env: str | None = Field(None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    from_: Mailbox = Field(alias="from")
    rate: float | None = Field(None, gt=0)
    connections: int = Field(1, ge=1, le=32)
    ca_file: str | None = None
    timeout: Duration = timedelta(seconds=30)
    retries: int = Field(3, ge=1, le=10)
    retry_delay: Duration = timedelta(seconds=2)
    give_up_after: Duration = timedelta(days=2)

    @field_validator("ca_file")
    @classmethod
    def _ca_file(cls, value: str | None, info: ValidationInfo) -> str | None:
        return None if value is None else _resolve(value, info)

    @property
    def effective_port(self) -> int:
        return self.port or {"none": 25, "starttls": 587, "tls": 465}[self.security]

    def password(self) -> str | None:
        """The password from the environment variable ``password_env`` names, if any."""
        return os.environ.get(self.password_env) if self.password_env else None


class OutboxSection(_Section):
    maildir: str = "outbox"
    from_: Mailbox = Field("Paper Digest <digest@localhost.localdomain>", alias="from")

    @field_validator("maildir")
    @classmethod
    def _maildir(cls, value: str, info: ValidationInfo) -> str:
        return _resolve(value, info)


class FeedConfig(_Section):
    name: Name
    url: str = Field(min_length=1)
    every: Duration | None = None

    @field_validator("url")
    @classmethod
    def _url(cls, value: str, info: ValidationInfo) -> str:
        if value.startswith(("http://", "https://")):
            return value
        if "://" in value and not value.startswith("file://"):
            raise ValueError(f"unsupported URL {value!r}: use http(s):// or a local file path")
        return _resolve(value.removeprefix("file://"), info)

    @property
    def is_local(self) -> bool:
        return not self.url.startswith(("http://", "https://"))


class TopicConfig(_Section):
    title: str | None = Field(None, max_length=200)
    keywords: list[Annotated[str, Field(min_length=1)]] = []
    exclude: list[Annotated[str, Field(min_length=1)]] = []
    query: str | None = None
    feeds: list[str] = []


class SubscriberConfig(_Section):
    email: Email
    name: str | None = Field(None, max_length=200)
    topics: list[str] = Field(min_length=1)
    schedule: ScheduleValue = parse_schedule("daily 07:00")
    timezone: TimeZone | None = None


class Settings(_Section):
    """The whole validated configuration; ``path`` is the file it came from."""

    path: Path = DEFAULT_CONFIG
    digest: DigestSection = DigestSection()
    fetch: FetchSection = FetchSection()
    smtp: SmtpSection | None = None
    outbox: OutboxSection = OutboxSection()
    feeds: list[FeedConfig] = []
    topics: dict[Name, TopicConfig] = {}
    subscribers: list[SubscriberConfig] = []

    def topic_title(self, name: str) -> str:
        topic = self.topics[name]
        return topic.title or name

    def subscriber(self, email: str) -> SubscriberConfig | None:
        wanted = email.strip().lower()
        return next((s for s in self.subscribers if s.email.lower() == wanted), None)

    def zone_of(self, subscriber: SubscriberConfig) -> ZoneInfo:
        return subscriber.timezone or self.digest.timezone

    def feed_interval(self, feed: FeedConfig) -> timedelta:
        return feed.every or self.fetch.every

    @property
    def sender(self) -> str:
        """The ``From`` header value for every digest."""
        return self.smtp.from_ if self.smtp else self.outbox.from_

    @property
    def list_id(self) -> str:
        """The digest's list identifier (RFC 2919): ``Title <slug.sender-domain>``."""
        domain = sender_address(self.sender).rpartition("@")[2] or "localhost"
        title = self.digest.title
        slug = "".join(c if c.isalnum() else "-" for c in title.lower()).strip("-") or "digest"
        return f"{title} <{slug}.{domain}>"

    def unsubscribe_url(self, email: str) -> str:
        """Where a subscriber's unsubscribe link points: the web endpoint, else a mailto."""
        if self.digest.base_url:
            return f"{self.digest.base_url.rstrip('/')}/unsubscribe?email={quote(email)}"
        address = sender_address(self.sender)
        return f"mailto:{address}?subject={quote('unsubscribe ' + email)}"

    def unsubscribe_links(self, email: str) -> list[str]:
        """The targets of a digest's List-Unsubscribe header (RFC 2369), web endpoint first."""
        links = [self.unsubscribe_url(email)] if self.digest.base_url else []
        return [*links, f"mailto:{sender_address(self.sender)}?subject=unsubscribe"]


@functools.lru_cache(maxsize=16)  # parseaddr costs ~40 us, and every digest of a run asks
def sender_address(sender: str) -> str:
    """The bare address of a ``Name <addr>`` sender."""
    return parseaddr(sender)[1]


# --- loading ----------------------------------------------------------------------------------


def config_path(explicit: str | os.PathLike[str] | None = None) -> Path:
    """The config file to use: ``--config``, else ``$DIGEST_CONFIG``, else the default."""
    if explicit:
        return Path(explicit)
    return Path(os.environ.get(CONFIG_ENV) or DEFAULT_CONFIG)


def load_settings(path: str | os.PathLike[str] | None = None) -> Settings:
    """Read, validate and resolve the config file, or raise ConfigError listing every problem."""
    file = config_path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError([f"{file}: config file not found (use --config PATH or ${CONFIG_ENV})"]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError([f"{file}: cannot read config file: {exc}"]) from None
    return parse_settings(text, file)


def parse_settings(text: str, file: Path) -> Settings:
    """Validate config text as if it were the file ``file``."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        line = re.search(r"\(at line (\d+), column \d+\)", str(exc))
        raise ConfigError([f"{file}:{line[1] + ':' if line else ''} TOML syntax error: {exc}"]) from None
    locator = _Locator(text)
    problems: list[tuple[int | None, str]] = []
    settings: Settings | None = None
    if "path" in data:
        problems.append((locator.line(("path",)), "path: unknown key"))
    else:
        # Absent sections are validated from {} so their default paths resolve like given ones.
        sections: dict[str, Any] = {name: {} for name in ("digest", "fetch", "outbox")}
        try:
            settings = Settings.model_validate(
                {**sections, **data, "path": file}, context={"base_dir": file.resolve().parent}
            )
        except ValidationError as exc:
            for error in exc.errors():
                loc = tuple(error["loc"])
                problems.append((locator.line(loc), f"{_key_path(loc)}: {_message(error)}"))
    for loc, message in _cross_check(data):
        problems.append((locator.line(loc), f"{_key_path(loc)}: {message}"))
    if problems or settings is None:
        problems.sort(key=lambda p: p[0] or 0)
        raise ConfigError([f"{file}:{line}: {msg}" if line else f"{file}: {msg}" for line, msg in problems])
    return settings


def key_line(text: str, key: tuple[str | int, ...]) -> int | None:
    """The line of config ``text`` where the key path ``key`` (or its nearest parent) is written."""
    return _Locator(text).line(key)


def _message(error: Any) -> str:
    kind = error["type"]
    if kind == "extra_forbidden":
        return "unknown key"
    if kind == "missing":
        return "missing required key"
    message = str(error["msg"]).removeprefix("Value error, ")
    if kind.startswith(
        ("string_pattern", "string_type", "int_", "bool_", "float_", "greater", "less", "too_")
    ):
        message += f" (got {error.get('input')!r})"
    return message


def _cross_check(data: dict[str, Any]) -> list[tuple[tuple[Any, ...], str]]:
    """Checks across sections (names that must exist, duplicates), on the raw TOML data."""
    problems: list[tuple[tuple[Any, ...], str]] = []
    feeds = data.get("feeds", [])
    topics = data.get("topics", {})
    subscribers = data.get("subscribers", [])
    feed_names: set[str] = set()
    if isinstance(feeds, list):
        for i, feed in enumerate(feeds):
            name = feed.get("name") if isinstance(feed, dict) else None
            if isinstance(name, str):
                if name in feed_names:
                    problems.append((("feeds", i, "name"), f"duplicate feed name {name!r}"))
                feed_names.add(name)
    if isinstance(topics, dict):
        for tname, topic in topics.items():
            if not isinstance(topic, dict):
                continue
            if not topic.get("keywords") and not topic.get("query"):
                problems.append((("topics", tname), "a topic needs `keywords` or a `query`"))
            for j, feed in enumerate(topic.get("feeds", []) if isinstance(topic.get("feeds"), list) else []):
                if isinstance(feed, str) and feed not in feed_names:
                    problems.append(
                        (
                            ("topics", tname, "feeds", j),
                            f"unknown feed {feed!r} (feeds: {_names(feed_names)})",
                        )
                    )
    if isinstance(subscribers, list):
        seen: set[str] = set()
        for i, sub in enumerate(subscribers):
            if not isinstance(sub, dict):
                continue
            email = sub.get("email")
            if isinstance(email, str):
                if email.strip().lower() in seen:
                    problems.append((("subscribers", i, "email"), f"duplicate subscriber {email!r}"))
                seen.add(email.strip().lower())
            wanted = sub.get("topics")
            if isinstance(wanted, list) and isinstance(topics, dict):
                for j, name in enumerate(wanted):
                    if isinstance(name, str) and name not in topics:
                        problems.append(
                            (
                                ("subscribers", i, "topics", j),
                                f"unknown topic {name!r} (topics: {_names(topics)})",
                            )
                        )
    return problems


def _names(names: Any) -> str:
    return ", ".join(sorted(names)) or "none defined"


def _key_path(loc: tuple[Any, ...]) -> str:
    """``("subscribers", 2, "topics", 0)`` -> ``subscribers[3].topics[1]``: 1-based, as people count."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part + 1}]"
        else:
            out += ("." if out else "") + ("from" if part == "from_" else str(part))
    return out or "(top level)"


class _Locator:
    """Finds the line of a key path in TOML text: tables, arrays of tables and plain keys.

    tomllib keeps no positions, so this scans the text the way a reader would. It knows the
    forms config files use (``[a.b]``, ``[[a]]``, ``key = value``, dotted keys); for anything
    else it falls back to the nearest enclosing table it found.
    """

    _TABLE = re.compile(r"^\s*(\[\[?)\s*([^\]]+?)\s*\]\]?")
    _KEY = re.compile(
        r"""^\s*((?:[A-Za-z0-9_-]+|"[^"]*"|'[^']*')(?:\s*\.\s*(?:[A-Za-z0-9_-]+|"[^"]*"|'[^']*'))*)\s*="""
    )

    def __init__(self, text: str) -> None:
        self.lines: dict[tuple[Any, ...], int] = {}
        counts: dict[tuple[str, ...], int] = {}
        table: tuple[Any, ...] = ()
        for number, line in enumerate(text.splitlines(), start=1):
            header = self._TABLE.match(line)
            if header:
                parts = tuple(self._split(header[2]))
                if header[1] == "[[":
                    index = counts.get(parts, 0)
                    counts[parts] = index + 1
                    table = (*parts, index)
                else:
                    table = parts
                self.lines.setdefault(table, number)
                continue
            key = self._KEY.match(line)
            if key:
                self.lines.setdefault((*table, *self._split(key[1])), number)

    @staticmethod
    def _split(dotted: str) -> list[str]:
        return [p.strip().strip("\"'") for p in re.findall(r"""[A-Za-z0-9_-]+|"[^"]*"|'[^']*'""", dotted)]

    def line(self, loc: tuple[Any, ...]) -> int | None:
        loc = tuple("from" if p == "from_" else p for p in loc)
        for end in range(len(loc), 0, -1):
            if loc[:end] in self.lines:
                return self.lines[loc[:end]]
        return None

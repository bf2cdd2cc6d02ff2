"""Read and validate ``digest.toml`` into a frozen :class:`Settings`.

The file is TOML (read with tomllib) validated with pydantic. Every problem is reported with the
file, the line where it can be found, the key path and what is wrong, all at once, as a
:class:`~pipeline.errors.ConfigError`. Relative paths in the file resolve against the folder
the file is in.

``values`` holds the value types (durations, time zones, addresses, schedules), ``settings``
the sections and :class:`Settings`, ``load`` the reading, the error messages and their lines.
"""

from __future__ import annotations

from .load import CONFIG_ENV, ConfigParts, config_path, key_line, load_settings, parse_settings
from .settings import (
    DEFAULT_CONFIG,
    BouncesSection,
    DigestSection,
    DkimSection,
    FeedConfig,
    FetchSection,
    OutboxSection,
    Settings,
    SmtpSection,
    SubscriberConfig,
    TopicConfig,
    WebSection,
    WorkerSection,
    list_label,
    sender_address,
)
from .values import (
    WEEKDAYS,
    Duration,
    Email,
    Mailbox,
    Name,
    Schedule,
    ScheduleValue,
    TimeZone,
    ascii_domain,
    cron_day_of_week,
    email_address,
    format_duration,
    is_loopback,
    parse_duration,
    parse_schedule,
)

__all__ = [
    "CONFIG_ENV",
    "DEFAULT_CONFIG",
    "WEEKDAYS",
    "BouncesSection",
    "ConfigParts",
    "DigestSection",
    "DkimSection",
    "Duration",
    "Email",
    "FeedConfig",
    "FetchSection",
    "Mailbox",
    "Name",
    "OutboxSection",
    "Schedule",
    "ScheduleValue",
    "Settings",
    "SmtpSection",
    "SubscriberConfig",
    "TimeZone",
    "TopicConfig",
    "WebSection",
    "WorkerSection",
    "ascii_domain",
    "config_path",
    "cron_day_of_week",
    "email_address",
    "format_duration",
    "is_loopback",
    "key_line",
    "list_label",
    "load_settings",
    "parse_duration",
    "parse_schedule",
    "parse_settings",
    "sender_address",
]

"""The config file: every kind of mistake gets file, line, key path and what is wrong; and what
the settings derive (the list id and unsubscribe links every message carries)."""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import pytest
from click.testing import Result
from conftest import SmtpServer, many, smtp_section
from email_validator import EmailNotValidError, validate_email
from hypothesis import example, given, settings
from hypothesis import strategies as st

from pipeline.config import cron_day_of_week, email_address, load_settings, parse_duration, parse_schedule
from pipeline.errors import ConfigError
from pipeline.web.tokens import Signer

GOOD = """
[digest]
title = "T"

[[feeds]]
name = "a"
url = "feeds/a.xml"

[topics.snn]
keywords = ["SNN"]

[[subscribers]]
email = "ada@example.org"
topics = ["snn"]
"""


def problems(tmp_path: Path, text: str) -> list[str]:
    path = tmp_path / "digest.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    return info.value.problems


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        # TOML syntax error: the parser's line and column
        ('title = "T"', 'title = "T', "TOML syntax error: "),
        # unknown topic in a subscriber, with its line
        (
            'topics = ["snn"]',
            'topics = ["snn", "spikng"]',
            ":14: subscribers[1].topics[2]: unknown topic 'spikng' (topics: snn)",
        ),
        # bad duration
        (
            'title = "T"',
            'title = "T"\nlookback = "7 days"',
            ":4: digest.lookback: bad duration '7 days': write it as 30s, 15m, 6h or 7d",
        ),
        # bad address
        (
            'email = "ada@example.org"',
            'email = "ada-at-example.org"',
            ":13: subscribers[1].email: bad email address 'ada-at-example.org'",
        ),
        # bad schedule
        (
            'topics = ["snn"]',
            'topics = ["snn"]\nschedule = "daily 25:00"',
            ':15: subscribers[1].schedule: hour 25 is out of range 0-23 in "daily 25:00"',
        ),
        (
            'topics = ["snn"]',
            'topics = ["snn"]\nschedule = "fortnightly"',
            ":15: subscribers[1].schedule: bad schedule 'fortnightly'",
        ),
        (
            'topics = ["snn"]',
            'topics = ["snn"]\nschedule = "cron 61 * * * *"',
            ':15: subscribers[1].schedule: minute 61 is out of range 0-59 in "61 * * * *"',
        ),
        # bad timezone
        (
            'topics = ["snn"]',
            'topics = ["snn"]\ntimezone = "Mars/Olympus"',
            ":15: subscribers[1].timezone: unknown timezone 'Mars/Olympus'",
        ),
        # unknown key (a typo)
        ('title = "T"', 'title = "T"\nmax_entrys = 5', ":4: digest.max_entrys: unknown key"),
        # missing required key
        ('url = "feeds/a.xml"', "", ":5: feeds[1].url: missing required key"),
        # wrong type
        (
            'title = "T"',
            'title = "T"\nmax_entries = "many"',
            ':4: digest.max_entries: expected a whole number, like 30, not "many"',
        ),
        # unknown feed in a topic
        (
            'keywords = ["SNN"]',
            'keywords = ["SNN"]\nfeeds = ["b"]',
            ":11: topics.snn.feeds[1]: unknown feed 'b' (feeds: a)",
        ),
        # a topic with nothing to match
        ('keywords = ["SNN"]', "", ":9: topics.snn: a topic needs `keywords` or a `query`"),
        # duplicates
        (
            "[topics.snn]",
            '[[feeds]]\nname = "a"\nurl = "x.xml"\n\n[topics.snn]',
            ":10: feeds[2].name: duplicate feed name 'a'",
        ),
        # bad SMTP security value
        (
            "[topics.snn]",
            '[smtp]\nhost = "h"\nsecurity = "ssl"\nfrom = "d@example.org"\n\n[topics.snn]',
            ':11: smtp.security: expected one of "none", "starttls" or "tls", not "ssl"',
        ),
        (
            "[topics.snn]",
            '[smtp]\nhost = "h"\nfrom = "not an address"\n\n[topics.snn]',
            ":11: smtp.from: bad email address",
        ),
    ],
)
def test_each_mistake_is_reported_with_file_line_and_key(
    tmp_path: Path, old: str, new: str, expected: str
) -> None:
    assert old in GOOD
    found = problems(tmp_path, GOOD.replace(old, new, 1))
    assert any(str(tmp_path / "digest.toml") in p and expected in p for p in found), found


def test_toml_syntax_error_names_its_line(tmp_path: Path) -> None:
    (problem,) = problems(tmp_path, GOOD.replace('title = "T"', 'title = "T'))
    assert problem.startswith(f"{tmp_path / 'digest.toml'}:3: TOML syntax error: ")
    assert "(at line 3, column 11)" in problem


def test_every_problem_is_listed_at_once(tmp_path: Path) -> None:
    text = GOOD.replace('title = "T"', 'title = "T"\nlookback = "soon"').replace(
        'topics = ["snn"]', 'topics = ["nope"]\nschedule = "hourly"'
    )
    found = problems(tmp_path, text)
    assert len(found) == 3, found
    assert [p.split(": ")[1] for p in found] == [
        "digest.lookback",
        "subscribers[1].topics[1]",
        "subscribers[1].schedule",
    ]


def test_relative_paths_resolve_against_the_config_folder(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    path = tmp_path / "sub" / "digest.toml"
    path.write_text(GOOD)
    settings = load_settings(path)
    assert settings.digest.database_url == f"sqlite:///{tmp_path / 'sub' / 'state' / 'digest.db'}"
    assert settings.outbox.maildir == str(tmp_path / "sub" / "outbox")
    assert settings.feeds[0].url == str(tmp_path / "sub" / "feeds" / "a.xml")


def test_database_may_be_an_sqlalchemy_url(tmp_path: Path) -> None:
    text = GOOD.replace('title = "T"', 'title = "T"\ndatabase = "postgresql://digest@db/digest"')
    path = tmp_path / "digest.toml"
    path.write_text(text)
    assert load_settings(path).digest.database_url == "postgresql://digest@db/digest"


def test_config_path_from_environment(tmp_path: Path, cli: Callable[..., Result]) -> None:
    path = tmp_path / "elsewhere.toml"
    path.write_text(GOOD.replace('url = "feeds/a.xml"', f'url = "{tmp_path / "a.xml"}"'))
    (tmp_path / "a.xml").write_text("<rss/>")
    result = cli("check", env={"DIGEST_CONFIG": str(path)})
    assert result.exit_code == 0, result.output
    assert f"{path}: OK (1 feed, 1 topic, 1 subscriber," in result.output


def test_check_exits_2_and_lists_every_error(tmp_path: Path, cli: Callable[..., Result]) -> None:
    path = tmp_path / "digest.toml"
    path.write_text(GOOD.replace('topics = ["snn"]', 'topics = ["x"]\nschedule = "never"'))
    result = cli("--config", path, "check")
    assert result.exit_code == 2
    assert "subscribers[1].schedule: bad schedule 'never'" in result.output
    assert "subscribers[1].topics[1]: unknown topic 'x'" in result.output
    # and, checked despite those, the feed file GOOD names (feeds/a.xml) that does not exist
    assert "feeds[1].url: file" in result.output
    assert "3 problems in the config." in result.output
    assert "Traceback" not in result.output


def test_check_reports_missing_feed_file_and_password(tmp_path: Path, cli: Callable[..., Result]) -> None:
    path = tmp_path / "digest.toml"
    path.write_text(
        GOOD
        + '\n[smtp]\nhost = "h"\nusername = "u"\nfrom = "d@example.org"\n'
        + 'password_env = "DIGEST_TEST_NO_SUCH_VAR"\n'
    )
    result = cli("--config", path, "check")
    assert result.exit_code == 2
    assert f":7: feeds[1].url: file {tmp_path / 'feeds' / 'a.xml'} does not exist" in result.output
    assert (
        "smtp.password_env: environment variable DIGEST_TEST_NO_SUCH_VAR is empty or missing" in result.output
    )


def test_missing_config_file(tmp_path: Path, cli: Callable[..., Result]) -> None:
    result = cli("--config", tmp_path / "nope.toml", "check")
    assert result.exit_code == 2
    assert "config file not found" in result.output


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30s", 30), ("15m", 900), ("6h", 21600), ("7d", 604800), ("1h30m", 5400), ("1.5h", 5400)],
)
def test_durations(text: str, seconds: int) -> None:
    assert parse_duration(text) == timedelta(seconds=seconds)


@pytest.mark.parametrize("text", ["", "7", "7 days", "-1h", "0s", "h"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)


@pytest.mark.parametrize(
    ("text", "kind"),
    [
        ("daily 07:30", "daily"),
        ("weekly mon 08:00", "weekly"),
        ("Weekly Friday 17:05", "weekly"),
        ("every 6h", "every"),
        ("every 2s", "every"),
        ("cron 30 7 * * 1-5", "cron"),
    ],
)
def test_schedules(text: str, kind: str) -> None:
    assert parse_schedule(text).kind == kind


@pytest.mark.parametrize(
    ("field", "days"),
    [
        ("1-5", "mon,tue,wed,thu,fri"),
        ("0", "sun"),
        ("7", "sun"),
        ("sat,sun", "sat,sun"),
        ("*/2", "sun,tue,thu,sat"),
        ("5-7", "fri,sat,sun"),
        ("*", "*"),
        ("mon-fri", "mon,tue,wed,thu,fri"),
    ],
)
def test_cron_day_of_week_follows_crontab(field: str, days: str) -> None:
    # crontab(5): 0 and 7 are Sunday; APScheduler 3.x would read 0 as Monday.
    assert cron_day_of_week(field) == days


_LOCAL = st.text(alphabet="abcXYZ09._%+-!#'\"@ é", min_size=0, max_size=70)
_DOMAIN = st.sampled_from(
    [
        "example.org",
        "EXAMPLE.org",
        "xn--bcher-kva.example",
        "bücher.example",
        "a..b",
        "-x.org",
        "localhost",
        "x.test",
        "[127.0.0.1]",
        "",
        "a" * 250 + ".org",
        "exa mple.org",
        "example.invalid",
        "ex_ample.org",
    ]
)


@settings(max_examples=1000, deadline=None)
@given(_LOCAL, _DOMAIN)
@example("a" * 64, ".".join(["b" * 61] * 3) + ".orgx")  # an address too long (255)
@example("postmaster", "EXAMPLE.org")
def test_an_address_is_taken_exactly_as_email_validator_takes_it(local: str, domain: str) -> None:
    # Plain addresses reuse their domain's check (validated once): same result, same errors.
    address = f"{local}@{domain}"
    try:
        checked = validate_email(
            address, check_deliverability=False, globally_deliverable=False, test_environment=True
        )
        # An address written in ASCII stays ASCII (punycode is not turned into Unicode).
        expected = checked.ascii_email if address.isascii() else checked.normalized
    except EmailNotValidError as exc:
        with pytest.raises(ValueError, match=re.escape(str(exc))):
            email_address(address)
    else:
        assert email_address(address) == expected


# --- what the settings derive ---------------------------------------------------------------------


def test_list_unsubscribe_one_click_with_a_base_url(
    cli: Callable[..., Result], tmp_path: Path, smtp_server: SmtpServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = "k" * 32
    monkeypatch.setenv("DIGEST_WEB_SECRET", key)
    config = many(
        tmp_path, 1, smtp_section(smtp_server), extra_digest='base_url = "https://digest.example.net"'
    )
    assert cli("--config", config, "send").exit_code == 0
    (message,) = smtp_server.handler.messages
    token = Signer(key.encode()).token("unsubscribe", "user0@example.org")  # (signed: digest serve's link)
    assert str(message["List-Unsubscribe"]).strip() == (
        f"<https://digest.example.net/u/{token}>, "
        "<mailto:digest@example.net?subject=unsubscribe%20user0%40example.org>"
    )
    assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert message["List-Id"] == "T <t.example.net>"
    assert message["Message-ID"].endswith("@example.net>")

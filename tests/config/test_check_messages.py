"""`digest check` says what is wrong in the file's words: the key that was likely meant for an
unknown key, section, topic or feed; our own sentence for every wrong type, never pydantic's.
Each through the real CLI, each line ``file:line: key: message``."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from datetime import date, datetime, time
from pathlib import Path

import pytest
from click.testing import Result
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from pipeline.config import (
    DigestSection,
    FeedConfig,
    FetchSection,
    OutboxSection,
    SmtpSection,
    SubscriberConfig,
    TopicConfig,
    parse_settings,
)
from pipeline.errors import ConfigError

# Each table of the file: its header, the key path its keys are reported under, its model and
# the keys it holds in the valid config below.
TABLES: dict[str, tuple[str, str, type[BaseModel], dict[str, str]]] = {
    "digest": ("[digest]", "digest", DigestSection, {"title": '"T"'}),
    "fetch": ("[fetch]", "fetch", FetchSection, {}),
    "smtp": (
        "[smtp]",
        "smtp",
        SmtpSection,
        {"host": '"127.0.0.1"', "security": '"none"', "from": '"digest@example.org"'},
    ),
    "outbox": ("[outbox]", "outbox", OutboxSection, {}),
    "feeds": ("[[feeds]]", "feeds[1]", FeedConfig, {"name": '"arxiv-cs"', "url": '"feed.xml"'}),
    "topics": ("[topics.spiking]", "topics.spiking", TopicConfig, {"keywords": '["SNN"]'}),
    "subscribers": (
        "[[subscribers]]",
        "subscribers[1]",
        SubscriberConfig,
        {"email": '"ada@example.org"', "topics": '["spiking"]'},
    ),
}

# What pydantic (or a library under it) says; none of it may reach a person editing the file.
LIBRARY_WORDS = (
    "Input should",
    "input_value",
    "Value error",
    "validation error",
    "pydantic",
    "type=",
    "For further information",
    "String should",
    "List should",
    "Field required",
    "Extra inputs",
    "instance of",
)


def config_text(table: str = "", key: str = "", value: str | None = None) -> str:
    """The valid config, with ``key = value`` set in ``table`` (or removed when value is None)."""
    parts = []
    for name, (header, _, _, keys) in TABLES.items():
        lines = dict(keys)
        if name == table:
            lines.pop(key, None)
            if value is not None:
                lines[key] = value
        parts.append(header + "\n" + "".join(f"{k} = {v}\n" for k, v in lines.items()))
    return "\n".join(parts)


def check(cli: Callable[..., Result], tmp_path: Path, text: str) -> tuple[Result, Path]:
    (tmp_path / "feed.xml").write_text("<rss/>")
    config = tmp_path / "digest.toml"
    config.write_text(text, encoding="utf-8")
    return cli("--config", config, "check"), config


def test_the_config_of_these_tests_is_valid(cli: Callable[..., Result], tmp_path: Path) -> None:
    result, _ = check(cli, tmp_path, config_text())
    assert result.exit_code == 0, result.output


# --- did you mean ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        # a key of each table, misspelt
        (
            'title = "T"',
            'title = "T"\ntimezon = "UTC"',
            ":3: digest.timezon: unknown key; did you mean `timezone`?",
        ),
        (
            "[fetch]",
            "[fetch]\nconcurency = 4",
            ":5: fetch.concurency: unknown key; did you mean `concurrency`?",
        ),
        ('host = "127.0.0.1"', 'hots = "127.0.0.1"', ":7: smtp.hots: unknown key; did you mean `host`?"),
        ("[outbox]", '[outbox]\nmaildr = "out"', ":12: outbox.maildr: unknown key; did you mean `maildir`?"),
        ('url = "feed.xml"', 'URL = "feed.xml"', ":15: feeds[1].URL: unknown key; did you mean `url`?"),
        (
            'keywords = ["SNN"]',
            'kewords = ["SNN"]',
            ":18: topics.spiking.kewords: unknown key; did you mean `keywords`?",
        ),
        (
            'topics = ["spiking"]',
            'topic = ["spiking"]',
            ":22: subscribers[1].topic: unknown key; did you mean `topics`?",
        ),
        (
            'email = "ada@example.org"',
            'email = "ada@example.org"\nshedule = "daily 07:00"',
            ":22: subscribers[1].shedule: unknown key; did you mean `schedule`?",
        ),
        # the key Python spells from_ is offered as the file spells it
        (
            'from = "digest@example.org"',
            'form = "digest@example.org"',
            ":9: smtp.form: unknown key; did you mean `from`?",
        ),
        # the required key it stands for says so too
        (
            'from = "digest@example.org"',
            'form = "digest@example.org"',
            ":6: smtp.from: missing required key (is `form` it, misspelt?)",
        ),
        # nothing close: the keys there are
        (
            "[outbox]",
            '[outbox]\ncolour = "red"',
            ":12: outbox.colour: unknown key (keys of [outbox]: from, maildir)",
        ),
        # a key of another table
        (
            'title = "T"',
            'title = "T"\nevery = "1h"',
            ":3: digest.every: unknown key in [digest]: `every` belongs in [fetch] or [[feeds]] or [bounces]",
        ),
        (
            "[digest]",
            'lookback = "7d"\n[digest]',
            ":1: lookback: unknown key at the top of the file: `lookback` belongs in [digest]",
        ),
        # sections
        ("[outbox]", "[outbx]", ":11: outbx: unknown section; did you mean `outbox`?"),
        (
            "[[subscribers]]",
            "[[subscriber]]",
            ":20: subscriber: unknown section; did you mean `subscribers`?",
        ),
        # a subscriber's topics: the topics the file defines
        (
            'topics = ["spiking"]',
            'topics = ["spiking", "spikng"]',
            ":22: subscribers[1].topics[2]: unknown topic 'spikng'; did you mean `spiking`?",
        ),
        (
            'topics = ["spiking"]',
            'topics = ["Spiking"]',
            ":22: subscribers[1].topics[1]: unknown topic 'Spiking'; did you mean `spiking`?",
        ),
        (
            'topics = ["spiking"]',
            'topics = ["spiking", "quantum"]',
            ":22: subscribers[1].topics[2]: unknown topic 'quantum' (topics: spiking)",
        ),
        # a topic's feeds: the feeds the file defines
        (
            'keywords = ["SNN"]',
            'keywords = ["SNN"]\nfeeds = ["arxiv-sc"]',
            ":19: topics.spiking.feeds[1]: unknown feed 'arxiv-sc'; did you mean `arxiv-cs`?",
        ),
        (
            'keywords = ["SNN"]',
            'keywords = ["SNN"]\nfeeds = ["blog"]',
            ":19: topics.spiking.feeds[1]: unknown feed 'blog' (feeds: arxiv-cs)",
        ),
        # the values of a choice, and time zones
        (
            'security = "none"',
            'security = "TLS"',
            ':8: smtp.security: expected one of "none", "starttls" or "tls", not "TLS"; did you mean `tls`?',
        ),
        (
            'title = "T"',
            'title = "T"\ntimezone = "Europe/Londn"',
            ":3: digest.timezone: unknown timezone 'Europe/Londn' (did you mean `Europe/London`?)",
        ),
    ],
)
def test_a_misspelt_name_is_answered_with_the_name_meant(
    cli: Callable[..., Result], tmp_path: Path, old: str, new: str, expected: str
) -> None:
    text = config_text()
    assert old in text
    result, config = check(cli, tmp_path, text.replace(old, new, 1))
    assert result.exit_code == 2, result.output
    assert f"{config}{expected}" in result.output.splitlines(), result.output


# --- wrong types, in our words ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("table", "key", "value", "expected"),
    [
        # a list given a string: the list it was meant to be
        (
            "subscribers",
            "topics",
            '"spiking"',
            'subscribers[1].topics: expected a list of topic names, like ["spiking"]',
        ),
        (
            "subscribers",
            "topics",
            '"spiking, rl"',
            'subscribers[1].topics: expected a list of topic names, like ["spiking", "rl"]',
        ),
        (
            "subscribers",
            "topics",
            "3",
            'subscribers[1].topics: expected a list of topic names, like ["spiking"]',
        ),
        (
            "subscribers",
            "topics",
            "[]",
            'subscribers[1].topics: expected at least one topic name, like ["spiking"]',
        ),
        ("topics", "keywords", '"SNN"', 'topics.spiking.keywords: expected a list of keywords, like ["SNN"]'),
        (
            "topics",
            "feeds",
            '"arxiv-cs"',
            'topics.spiking.feeds: expected a list of feed names, like ["arxiv-cs"]',
        ),
        # an int given text, or a fraction
        (
            "digest",
            "max_entries",
            '"many"',
            'digest.max_entries: expected a whole number, like 30, not "many"',
        ),
        ("digest", "max_entries", "2.5", "digest.max_entries: expected a whole number, like 30, not 2.5"),
        ("smtp", "port", '"smtp"', 'smtp.port: expected a whole number, like 587, not "smtp"'),
        ("digest", "max_entries", "0", "digest.max_entries: must be at least 1, not 0"),
        ("fetch", "concurrency", "100", "fetch.concurrency: must be at most 64, not 100"),
        # a float given text
        ("smtp", "rate", '"fast"', 'smtp.rate: expected a number, like 2.5, not "fast"'),
        ("smtp", "rate", "0", "smtp.rate: must be more than 0, not 0"),
        # a string given a number, a date, a list, a table
        ("digest", "title", "7", 'digest.title: expected text in quotes, like "7"'),
        ("digest", "title", "1979-05-27", 'digest.title: expected text in quotes, like "1979-05-27"'),
        ("topics", "title", '["a"]', "topics.spiking.title: expected text in quotes, not a list"),
        ("feeds", "url", "{ href = 1 }", "feeds[1].url: expected text in quotes, not a table"),
        ("topics", "keywords", '["SNN", 4]', 'topics.spiking.keywords[2]: expected text in quotes, like "4"'),
        ("topics", "keywords", '["SNN", ""]', "topics.spiking.keywords[2]: must not be empty"),
        ("smtp", "host", '""', "smtp.host: must not be empty"),
        (
            "digest",
            "title",
            json.dumps("x" * 201),
            "digest.title: is too long: at most 200 characters, not 201",
        ),
        # a pattern, said in words
        (
            "feeds",
            "name",
            '"arxiv cs"',
            'feeds[1].name: a name is letters, digits, ".", "_" and "-", starting with a letter or digit, '
            'not "arxiv cs"',
        ),
        (
            "digest",
            "base_url",
            '"example.org"',
            'digest.base_url: expected a web address starting with http:// or https://, not "example.org"',
        ),
        (
            "smtp",
            "password_env",
            '"MY-PASSWORD"',
            'smtp.password_env: expected the name of an environment variable (letters, digits and "_", not '
            'starting with a digit), not "MY-PASSWORD"',
        ),
        # booleans and choices
        ("digest", "images", '"yes"', 'digest.images: expected true or false, got "yes"'),
        (
            "smtp",
            "security",
            '"ssl"',
            'smtp.security: expected one of "none", "starttls" or "tls", not "ssl"',
        ),
        # values our own parsers refuse: the value as the file spells it
        (
            "digest",
            "lookback",
            "7",
            'digest.lookback: a duration is a string such as "30s", "15m", "6h" or "7d", not 7',
        ),
        (
            "digest",
            "timezone",
            "true",
            'digest.timezone: a timezone is an IANA name such as "Europe/London", not true',
        ),
        (
            "subscribers",
            "schedule",
            "07:00:00",
            'subscribers[1].schedule: a schedule is a string such as "daily 07:00" (daily HH:MM | weekly '
            "mon HH:MM | every 6h | cron 30 7 * * 1-5), not 07:00:00",
        ),
    ],
)
def test_a_wrong_type_is_said_in_the_files_words(
    cli: Callable[..., Result], tmp_path: Path, table: str, key: str, value: str, expected: str
) -> None:
    result, config = check(cli, tmp_path, config_text(table, key, value))
    assert result.exit_code == 2, result.output
    problems = [line for line in result.output.splitlines() if line.startswith(f"{config}:")]
    assert [p.split(": ", 1)[1] for p in problems] == [expected], result.output


@pytest.mark.parametrize(
    ("old", "first", "expected"),
    [
        # a table given a value (written first in the file: a key after a table's header is the table's)
        (
            '[digest]\ntitle = "T"\n',
            "digest = 5",
            ":1: digest: expected a table: write [digest] on a line of its own, then its keys below it, "
            "not 5",
        ),
        (
            "[fetch]\n",
            'fetch = "hourly"',
            ":1: fetch: expected a table: write [fetch] on a line of its own, then its keys below it, not "
            '"hourly"',
        ),
        (
            '[[feeds]]\nname = "arxiv-cs"\nurl = "feed.xml"\n',
            'feeds = "feed.xml"',
            ":1: feeds: expected tables, each written [[feeds]] on a line of its own above its keys, not "
            '"feed.xml"',
        ),
        (
            '[topics.spiking]\nkeywords = ["SNN"]\n',
            'topics = ["spiking"]',
            ':1: topics: expected tables, each written [topics.NAME] above its keys, not ["spiking"]',
        ),
        (
            '[topics.spiking]\nkeywords = ["SNN"]\n',
            "topics = { spiking = 1 }",
            ":1: topics.spiking: expected a table: write [topics.spiking] on a line of its own, then its "
            "keys below it, not 1",
        ),
        # a topic's name, at the line of its table
        (
            "[topics.spiking]",
            '[topics."spiking nets"]',
            ':17: topics."spiking nets": a topic name is letters, digits, ".", "_" and "-", starting with '
            'a letter or digit, not "spiking nets"',
        ),
    ],
)
def test_a_value_where_a_table_belongs_is_said_in_the_files_words(
    cli: Callable[..., Result], tmp_path: Path, old: str, first: str, expected: str
) -> None:
    text = config_text()
    assert old in text
    # a table header takes the old one's place; a value goes first: after a header it is the table's
    text = text.replace(old, first, 1) if first.startswith("[") else first + "\n" + text.replace(old, "", 1)
    result, config = check(cli, tmp_path, text)
    assert result.exit_code == 2, result.output
    assert f"{config}{expected}" in result.output.splitlines(), result.output


# --- no library wording, whatever the value --------------------------------------------------

# A value of each TOML type, as written in the file.
WRONG_VALUES = (
    '"text"',
    '""',
    "7",
    "-1",
    "2.5",
    "inf",
    "true",
    "1979-05-27",
    "07:32:00",
    "[1, 2]",
    '["a"]',
    "{ a = 1 }",
)
KEYS = [
    (table, field.alias or name)
    for table, (_, _, model, _) in TABLES.items()
    for name, field in model.model_fields.items()
]  # fmt: skip
# Python's spelling of values: the file says true, false and leaves a key out.
PYTHON_WORDS = ("True", "False", "None", "datetime.")


def assert_in_our_words(problems: list[str], config: Path, table: str, words: tuple[str, ...]) -> None:
    """Every problem is in our words and names a key of the table that was changed."""
    path = TABLES[table][1]
    for problem in problems:
        assert problem.startswith(f"{config}:"), problem
        for said in words:
            assert said not in problem, problem
        line, _, rest = problem.removeprefix(f"{config}:").partition(" ")
        assert re.fullmatch(r"\d*:?", line) and rest.startswith(path), problem


@pytest.mark.parametrize(("table", "key"), KEYS)
def test_every_key_given_every_type_is_answered_in_our_words(
    cli: Callable[..., Result], tmp_path: Path, table: str, key: str
) -> None:
    for value in WRONG_VALUES:
        result, config = check(cli, tmp_path, config_text(table, key, value))
        assert result.exit_code in (0, 2), result.output
        if result.exit_code == 2:
            problems = [line for line in result.output.splitlines() if line.startswith(f"{config}:")]
            assert problems, result.output
            assert_in_our_words(problems, config, table, LIBRARY_WORDS + PYTHON_WORDS)


def test_a_refused_value_names_its_key(cli: Callable[..., Result], tmp_path: Path) -> None:
    """A value of a type no key of the table takes: the problem names that very key."""
    for table, key in KEYS:
        result, _ = check(cli, tmp_path, config_text(table, key, "[{ a = 1 }]"))
        assert result.exit_code == 2, (table, key, result.output)
        named = (f": {TABLES[table][1]}.{key}{after}" for after in (": ", "[1]: "))
        assert any(name in result.output for name in named), result.output


def toml_string(text: str) -> str:
    """A TOML basic string: quotes, backslashes and control characters escaped, the rest as is."""
    escaped = (c if c not in '"\\' and c.isprintable() else f"\\U{ord(c):08x}" for c in text)
    return '"' + "".join(escaped) + '"'


def toml(value: object) -> str:
    """``value`` written as TOML."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        return ("inf" if value > 0 else "-inf") if math.isinf(value) else repr(value)
    if isinstance(value, str):
        return toml_string(value)
    if isinstance(value, datetime | date | time):
        return value.isoformat()
    if isinstance(value, list):
        return "[" + ", ".join(toml(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{toml_string(k)} = {toml(v)}" for k, v in value.items()) + " }"
    return str(value)


SCALARS = st.one_of(
    st.text(max_size=30),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(),
    st.booleans(),
    st.dates(),
    st.times(),
    st.datetimes(),
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=6,
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(KEYS), VALUES)
def test_any_value_of_any_key_is_answered_in_our_words(key: tuple[str, str], value: object) -> None:
    # Through the loader (the CLI prints what it raises): many values, quickly. A value is
    # echoed in the message, so only the library's phrases are looked for, not True or None.
    table, name = key
    config = Path("config/digest.toml")
    try:
        parse_settings(config_text(table, name, toml(value)), config)
    except ConfigError as exc:
        assert_in_our_words(exc.problems, config, table, LIBRARY_WORDS)

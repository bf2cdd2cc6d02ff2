"""README.md documents every config key and every command-line verb and option (the contract)."""

from __future__ import annotations

import re
from pathlib import Path

import click
import pytest
from pydantic import BaseModel

from pipeline.cli import main as cli
from pipeline.config import (
    BouncesSection,
    DigestSection,
    DkimSection,
    FeedConfig,
    FetchSection,
    OutboxSection,
    SmtpSection,
    SubscriberConfig,
    TopicConfig,
    WebSection,
    WorkerSection,
)

README = (Path(__file__).parent.parent / "README.md").read_text(encoding="utf-8")

SECTIONS: dict[str, type[BaseModel]] = {
    "[digest]": DigestSection,
    "[fetch]": FetchSection,
    "[smtp]": SmtpSection,
    "[outbox]": OutboxSection,
    "[[feeds]]": FeedConfig,
    "[topics.NAME]": TopicConfig,
    "[[subscribers]]": SubscriberConfig,
    "[worker]": WorkerSection,
    "[bounces]": BouncesSection,
    "[web]": WebSection,
    "[dkim]": DkimSection,
}


def _table_keys(heading: str) -> set[str]:
    """The keys listed in the table under README's ``### `heading` `` section."""
    body = README.split(f"\n### `{heading}`\n", 1)[1].split("\n#", 1)[0]
    return set(re.findall(r"^\| `([a-z_]+)` \|", body, re.M))


@pytest.mark.parametrize("heading", SECTIONS)
def test_every_config_key_is_in_its_readme_table(heading: str) -> None:
    keys = {field.alias or name for name, field in SECTIONS[heading].model_fields.items()}
    documented = _table_keys(heading)
    assert keys - documented == set(), f"undocumented in README {heading}"
    assert documented - keys == set(), f"README {heading} documents keys that do not exist"


def test_every_verb_and_option_is_in_the_readme() -> None:
    assert isinstance(cli, click.Group)
    table = README.split("\n## The command line\n", 1)[1].split("\n## ", 1)[0]
    for name, command in cli.commands.items():
        assert f"| `{name}" in table, f"verb {name} is not in README's command table"
        for param in command.params:
            for option in param.opts:
                if option.startswith("--") and option != "--help":
                    assert option in README, f"{name} {option} is not documented in README"
    for param in cli.params:
        for option in param.opts:
            if option.startswith("--") and option != "--help":
                assert option in table, f"digest {option} is not in README's command line section"

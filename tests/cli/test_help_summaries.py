"""`digest --help`: every verb with its whole summary (never cut with "..."), and examples that
keep their lines; each verb's own help says what it prints."""

from __future__ import annotations

import re
from collections.abc import Callable

import click
from click.testing import Result

from pipeline.cli import main
from pipeline.cli.base import summary


def commands_section(output: str) -> dict[str, str]:
    """The Commands section of a group's help: verb -> its summary, wrapped lines joined."""
    body = output.split("\nCommands:\n", 1)[1]
    found: dict[str, str] = {}
    verb = ""
    for line in body.splitlines():
        head = re.match(r"  (\S+)\s+(.*)$", line)
        if head and not line.startswith("   "):
            verb = head[1]
            found[verb] = head[2]
        elif line.strip():
            found[verb] += " " + line.strip()
    return found


def test_every_verb_is_listed_with_its_whole_summary(cli: Callable[..., Result]) -> None:
    result = cli("--help", env={"COLUMNS": "80"})
    assert result.exit_code == 0
    listed = commands_section(result.output)
    assert isinstance(main, click.Group)
    assert set(listed) == set(main.commands)
    for name, command in main.commands.items():
        assert listed[name] == summary(command), name
        assert not listed[name].endswith("..."), name
        assert listed[name].endswith("."), name  # a sentence, whole


def test_each_summary_is_one_line_in_an_80_column_help(cli: Callable[..., Result]) -> None:
    assert isinstance(main, click.Group)
    for name, command in main.commands.items():
        if command.short_help:  # the verbs that set one keep it to a line (check's is its docstring's)
            assert len(f"  {name:<9}{command.short_help}") <= 78, name


def test_the_group_help_has_examples_line_by_line(cli: Callable[..., Result]) -> None:
    output = cli("--help", env={"COLUMNS": "80"}).output
    examples = output.split("\n  Examples:\n", 1)[1].split("\n\n", 1)[0].splitlines()
    assert len(examples) >= 6
    assert isinstance(main, click.Group)
    used = set()
    for line in examples:
        assert len(line) <= 80, line
        assert line.startswith("    digest "), line
        words = line.split()
        verb = next(w for w in words[1:] if w in main.commands)
        used.add(verb)
        # the command, then two spaces or more, then what it does (click kept the line as written)
        assert re.match(r"    digest \S.*\S {2,}\w", line), line
    assert {"check", "fetch", "send", "status", "match", "run"} <= used
    assert "\b" not in output


def test_fetch_help_says_it_prints_a_table(cli: Callable[..., Result]) -> None:
    output = cli("fetch", "--help").output
    assert "line per feed" not in output
    assert "table" in output.split("\n\n")[1]

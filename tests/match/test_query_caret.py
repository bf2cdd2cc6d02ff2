"""A query with a mistake is shown the way a compiler shows a line: what was expected, then the
query and a caret under the character where it went wrong. Through the real CLI, and as a
property of the parser: the caret always lands under the character the error names."""

from __future__ import annotations

import unicodedata
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import Result
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.config import TopicConfig
from pipeline.errors import MatchError
from pipeline.match import compile_topic, compile_topics, parse_query
from pipeline.match.query import EXCERPT

CONFIG = """\
[[feeds]]
name = "arxiv"
url = "feed.xml"

[topics.rl]
query = {query}

[[subscribers]]
email = "ada@example.org"
topics = ["rl"]
"""
QUERY_LINE = 6


def check(cli: Callable[..., Result], tmp_path: Path, query: str, *verb: str) -> tuple[Result, Path]:
    (tmp_path / "feed.xml").write_text("<rss/>")
    config = tmp_path / "digest.toml"
    config.write_text(CONFIG.format(query=query), encoding="utf-8")
    return cli("--config", config, *(verb or ("check",))), config


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        (
            """'"reinforcement learning" AND'""",
            [
                'topics.rl.query: expected a term after "AND"',
                '    "reinforcement learning" AND',
                "                                ^",
            ],
        ),
        (
            """'"reinforcement learning" AND ('""",
            [
                'topics.rl.query: expected a term after "("',
                '    "reinforcement learning" AND (',
                "                                  ^",
            ],
        ),
        # an unclosed parenthesis: the caret is under the one never closed
        (
            """'bandit AND (RL OR "policy gradient"'""",
            [
                'topics.rl.query: this "(" is never closed: add a ")" where its group ends',
                '    bandit AND (RL OR "policy gradient"',
                "               ^",
            ],
        ),
        (
            '"RL) OR bandit"',
            [
                'topics.rl.query: this ")" has no "(" before it to close',
                "    RL) OR bandit",
                "      ^",
            ],
        ),
        (
            '"RL AND AND bandit"',
            [
                'topics.rl.query: expected a term after "AND", found "AND"',
                "    RL AND AND bandit",
                "           ^",
            ],
        ),
        (
            '"RL - bandit"',
            [
                'topics.rl.query: "-" must be followed by a term, with no space: like -survey',
                "    RL - bandit",
                "       ^",
            ],
        ),
        (
            """'RL "delayed feedback'""",
            [
                'topics.rl.query: this quote is never closed: add a " after the phrase',
                '    RL "delayed feedback',
                "       ^",
            ],
        ),
        (
            '"RL OR titel:bandit"',
            [
                'topics.rl.query: unknown field "titel:"; did you mean `title:`? (to search for these '
                "words, put them in quotes)",
                "    RL OR titel:bandit",
                "          ^",
            ],
        ),
        (
            '"RL title: bandit"',
            [
                'topics.rl.query: expected a term or "phrase" right after "title:"',
                "    RL title: bandit",
                "             ^",
            ],
        ),
        (
            '"RL OR !!"',
            ['topics.rl.query: "!!" has no letters or digits', "    RL OR !!", "          ^"],
        ),
        # a problem of the whole query: the query, no caret
        (
            '"NOT survey"',
            [
                "topics.rl.query: this query matches entries that contain none of its terms; it needs a "
                "term that must be present (to veto entries, use `exclude`)",
                "    NOT survey",
            ],
        ),
        # nothing to show
        ('"  "', ["topics.rl.query: the query is empty"]),
        # a query over several lines: the line where it went wrong
        (
            "'''\nRL OR\n  bandit AND\n'''",
            ['topics.rl.query: expected a term after "AND"', "      bandit AND", "                ^"],
        ),
        # wide characters take two columns, a tab is shown as a space
        (
            '"深層学習 AND"',
            ['topics.rl.query: expected a term after "AND"', "    深層学習 AND", "                ^"],
        ),
        ('"RL\\tOR"', ['topics.rl.query: expected a term after "OR"', "    RL OR", "         ^"]),
    ],
)
def test_check_shows_the_query_and_a_caret_under_the_mistake(
    cli: Callable[..., Result], tmp_path: Path, query: str, expected: list[str]
) -> None:
    result, config = check(cli, tmp_path, query)
    assert result.exit_code == 2, result.output
    lines = result.output.splitlines()
    assert lines == [f"{config}:{QUERY_LINE}: {expected[0]}", *expected[1:], "1 problem in the config."]


def test_every_verb_shows_the_same_caret(cli: Callable[..., Result], tmp_path: Path) -> None:
    result, config = check(cli, tmp_path, "'RL OR'", "send", "--no-fetch")
    assert result.exit_code == 2, result.output
    assert result.output.splitlines() == [
        f'{config}: topics.rl.query: expected a term after "OR"',
        "    RL OR",
        "         ^",
        "1 problem in the config.",
    ]


def test_a_long_query_is_cut_around_the_caret(cli: Callable[..., Result], tmp_path: Path) -> None:
    query = " OR ".join(f"term{i}" for i in range(30)) + " AND AND " + " OR ".join(f"x{i}" for i in range(30))
    result, config = check(cli, tmp_path, f'"{query}"')
    assert result.exit_code == 2, result.output
    message, shown, caret = result.output.splitlines()[:3]
    assert message == f'{config}:{QUERY_LINE}: topics.rl.query: expected a term after "AND", found "AND"'
    assert shown.startswith("    ...") and shown.endswith("...") and len(shown) == 4 + 3 + 72 + 3
    assert shown[caret.index("^") :].startswith("AND x0")  # the second AND


def test_match_error_keeps_its_key_position_and_problems() -> None:
    with pytest.raises(MatchError) as info:
        compile_topics(
            {
                "a": TopicConfig(keywords=["RL", "--"], query="x OR"),
                "b": TopicConfig(query="(x"),
                "c": TopicConfig(query="NOT x"),
            }
        )
    problems = [(p.key, p.position, str(p).splitlines()[0]) for p in info.value.problems]
    never_closed = 'topics.b.query: this "(" is never closed: add a ")" where its group ends'
    none_of_its_terms = (
        "topics.c.query: this query matches entries that contain none of its terms; it needs a term "
        "that must be present (to veto entries, use `exclude`)"
    )
    assert problems == [
        (("topics", "a", "keywords", 1), None, "topics.a.keywords[2]: '--' has no letters or digits"),
        (("topics", "a", "query"), 5, 'topics.a.query: expected a term after "OR"'),
        (("topics", "b", "query"), 1, never_closed),
        (("topics", "c", "query"), None, none_of_its_terms),
    ]
    assert str(info.value) == "\n".join(map(str, info.value.problems))


# --- the caret, as a property ----------------------------------------------------------------

PIECES = st.sampled_from(
    [
        "(",
        ")",
        '"',
        "-",
        " ",
        "\t",
        "\n",
        "\r",
        "\u2028",
        "\x1b",
        "\u0301",
        "AND",
        "OR",
        "NOT",
        "title:",
        "titel:",
        "RL",
        "é",
        "深",
        "x",
        "!!",
    ]
)


def columns(text: str) -> int:
    """The terminal columns ``text`` takes (a wide character two, a combining accent none)."""
    return sum(
        0 if unicodedata.combining(c) else 2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in text
    )


LINE_BREAKS = ("Zl", "Zp")


def visible(text: str) -> str:
    """``text`` as the excerpt prints it: a tab as a space, a carriage return as nothing, other
    control characters and line breaks as "?"."""
    shown = (" " if c == "\t" else c for c in text if c != "\r")
    return "".join(
        "?" if unicodedata.category(c) in LINE_BREAKS or unicodedata.category(c)[0] == "C" else c
        for c in shown
    )


@settings(max_examples=500, deadline=None)
@given(st.one_of(st.lists(PIECES, max_size=40).map("".join), st.text(max_size=40)))
def test_the_caret_lands_under_the_character_the_error_names(query: str) -> None:
    try:
        parse_query(query, "topics.t.query")
        compile_topic("t", TopicConfig(query=query))
    except MatchError as exc:
        error = exc.problems[0]
        message, *shown = str(error).splitlines()
        assert message.startswith("topics.t.query: ") and "position" not in message
        if not query.strip():
            assert shown == []  # a blank query: nothing to point at
            return
        # the line of the query the error is on (past the end: just after the last character)
        index = (
            len(query.rstrip()) if error.position is None else min(error.position - 1, len(query.rstrip()))
        )
        start = query.rfind("\n", 0, index) + 1
        end = query.find("\n", index)
        line = query[start : len(query) if end < 0 else end]
        if len(line) <= EXCERPT:
            assert shown[0] == "    " + visible(line)
        else:  # cut around the caret, "..." where it was cut
            assert "..." in shown[0] and len(shown[0]) <= len("    ") + EXCERPT + 6
        if error.position is None:
            assert len(shown) == 1
            return
        assert len(shown) == 2 and shown[1].endswith("^") and not shown[1][:-1].strip()
        # the character shown above the caret is the one the error names (or nothing: the end)
        caret, printed, above = len(shown[1]) - len("    ^"), 0, ""
        for char in shown[0][4:]:
            if printed >= caret and columns(char):  # a combining accent sits on the letter before
                above = char
                break
            printed += columns(char)
        assert printed == caret  # never inside a wide character
        after = [c for c in visible(query[index : len(query) if end < 0 else end]) if columns(c)]
        assert above == (after[0] if after else "")

"""What is wrong with a config, in the file's words: every pydantic error turned into our own
sentence ("expected a whole number, like 30, not "many""), the names that must exist
cross-checked, and a misspelt key, section, topic or feed given the name it most likely meant
(difflib's closest match). :mod:`.load` reports them with their lines.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from types import UnionType
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import ErrorDetails

from .settings import Settings
from .values import did_you_mean, toml_value

BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")  # a TOML key that needs no quotes

_LISTS = {
    "keywords": ("keywords", "keyword", "diffusion model"),
    "exclude": ("keywords to leave out", "keyword", "survey"),
    "feeds": ("feed names", "feed name", "arxiv-cs"),
    "topics": ("topic names", "topic name", "snn"),
}
# Patterns the sections use, said in words, by key; "[key]" is a topic's name.
_PATTERNS = {
    "name": 'a name is letters, digits, ".", "_" and "-", starting with a letter or digit',
    "[key]": 'a topic name is letters, digits, ".", "_" and "-", starting with a letter or digit',
    "base_url": "expected a web address starting with http:// or https://",
    **dict.fromkeys(
        ("password_env", "secret_env", "old_secrets_env", "imap_password_env"),
        'expected the name of an environment variable (letters, digits and "_", not starting with a digit)',
    ),
    "listen": 'expected HOST:PORT, like "127.0.0.1:8080"',
    "domain": 'expected a domain name, like "example.org"',
    "selector": 'expected a DKIM selector: letters, digits, "_" and "-", in labels joined by "."',
}
# How each table is written, by the key path of the table.
_HEADERS = {
    "digest": "[digest]",
    "fetch": "[fetch]",
    "smtp": "[smtp]",
    "outbox": "[outbox]",
    "feeds": "[[feeds]]",
    "topics": "[topics.NAME]",
    "subscribers": "[[subscribers]]",
    "web": "[web]",
    "bounces": "[bounces]",
    "dkim": "[dkim]",
}


def problem_message(error: ErrorDetails, data: dict[str, Any]) -> str:
    """What is wrong, in the words of the file (never pydantic's "Input should be ...")."""
    kind = error["type"]
    loc = tuple(error["loc"])
    value = error.get("input")
    field, annotation = _field_at(loc)
    ctx = error.get("ctx") or {}
    got = toml_value(value)
    key = str(loc[-1]) if loc else ""
    if kind == "extra_forbidden":
        return _unknown_key(loc, data)
    if kind == "missing":
        return "missing required key" + _misspelt_as(loc, data)
    if kind in ("bool_type", "bool_parsing"):
        # TOML has true and false; a string "yes" (or 1) is a mistake, never silently true
        return f"expected true or false, got {got}"
    if kind == "value_error":
        return str(error["msg"]).removeprefix("Value error, ")
    if kind == "string_type":
        if isinstance(value, dict | list):
            return f"expected text in quotes, not {_kind_of(value)}"
        return f'expected text in quotes, like "{got}"'
    if kind in ("int_parsing", "int_type", "int_from_float"):
        return f"expected a whole number, like {_example(key, field, 1)}, not {got}"
    if kind in ("float_parsing", "float_type", "finite_number"):
        return f"expected a number, like {_example(key, field, 2.5)}, not {got}"
    if kind == "literal_error":
        choices = [str(c) for c in get_args(annotation)] if get_origin(annotation) is Literal else []
        close = did_you_mean(value, choices) if isinstance(value, str) else None
        listed = _either([toml_value(c) for c in choices]) if choices else str(ctx.get("expected"))
        return f"expected {listed}, not {got}" + (f"; did you mean `{close}`?" if close else "")
    if kind == "string_pattern_mismatch":
        return f"{_PATTERNS.get(key, 'this value does not have the form it needs')}, not {got}"
    if kind == "string_too_short":
        return (
            "must not be empty"
            if ctx.get("min_length") == 1
            else f"must be at least {ctx.get('min_length')} characters long"
        )
    if kind == "string_too_long":
        return f"is too long: at most {ctx.get('max_length')} characters, not {len(str(value))}"
    if kind in ("greater_than_equal", "greater_than", "less_than_equal", "less_than"):
        words = {"greater_than_equal": "at least", "greater_than": "more than", "less_than_equal": "at most"}
        word = words.get(kind, "less than")
        limit = next(iter(ctx.values()), "?")
        if isinstance(limit, float) and limit.is_integer():
            limit = int(limit)  # "more than 0", not "more than 0.0"
        return f"must be {word} {toml_value(limit)}, not {got}"
    if kind == "too_short" and key in _LISTS:
        _, one, example = _LISTS[key]
        return f"expected at least one {one}, like {toml_value([_defined(key, data) or example])}"
    if kind in ("too_short", "too_long"):
        bound = (
            f"at least {ctx.get('min_length')}" if kind == "too_short" else f"at most {ctx.get('max_length')}"
        )
        return f"must hold {bound} items, not {ctx.get('actual_length')}"
    if kind == "list_type":
        item = get_args(annotation)[0] if get_args(annotation) else None
        if isinstance(item, type) and issubclass(item, BaseModel):
            header = _HEADERS.get(key, f"[[{key}]]")
            return f"expected tables, each written {header} on a line of its own above its keys, not {got}"
        many, _, example = _LISTS.get(key, ("strings", "string", "x"))
        # topics = "snn, rl" was meant as ["snn", "rl"]
        items = [p.strip() for p in value.split(",") if p.strip()] if isinstance(value, str) else []
        return f"expected a list of {many}, like {toml_value(items or [_defined(key, data) or example])}"
    if kind == "dict_type":
        return f"expected tables, each written {_HEADERS.get(key, f'[{key}.NAME]')} above its keys, not {got}"
    if kind == "model_type":
        return (
            f"expected a table: write {_header(loc)} on a line of its own, then its keys below it, not {got}"
        )
    # Any other kind: still in our words, naming the value.
    return f"{got} is not a valid value here"


def _kind_of(value: object) -> str:
    return "a table" if isinstance(value, dict) else "a list"


def _either(choices: list[str]) -> str:
    """``"a"``, ``one of "a" or "b"``, ``one of "a", "b" or "c"``."""
    if len(choices) == 1:
        return choices[0]
    return "one of " + ", ".join(choices[:-1]) + " or " + choices[-1]


def _defined(key: str, data: dict[str, Any]) -> str | None:
    """The first topic (for ``topics``) or feed (for ``feeds``) the file defines, as an example."""
    if key == "topics" and isinstance(data.get("topics"), dict):
        return next((str(name) for name in data["topics"]), None)
    if key == "feeds" and isinstance(data.get("feeds"), list):
        names = (f.get("name") for f in data["feeds"] if isinstance(f, dict))
        return next((name for name in names if isinstance(name, str)), None)
    return None


def _example(key: str, field: FieldInfo | None, fallback: float) -> str:
    """A number to show as an example: the key's default, else its least value, else ``fallback``."""
    if key == "port":  # its default depends on `security`; 1, its least value, would mislead
        return "587"
    if field is None:
        return str(fallback)
    if isinstance(field.default, int | float) and not isinstance(field.default, bool):
        return str(field.default)
    least = [bound.ge for bound in field.metadata if isinstance(getattr(bound, "ge", None), int)]
    return str(least[0] if least else fallback)


def _field_at(loc: tuple[Any, ...]) -> tuple[FieldInfo | None, Any]:
    """The pydantic field a key path ends at (None for a list item or a table's name) and the
    type of the value there; (None, None) when the path leaves the schema."""
    node: Any = Settings
    field: FieldInfo | None = None
    for part in loc:
        node = _bare(node)
        field = None
        if isinstance(node, type) and issubclass(node, BaseModel):
            field = _model_field(node, part)
            if field is None:
                return None, None
            node = field.annotation
        elif get_origin(node) is list and isinstance(part, int):
            node = get_args(node)[0]
        elif get_origin(node) is dict and isinstance(part, str):
            node = get_args(node)[0 if part == "[key]" else 1]
        else:
            return None, None
    return field, _bare(node)


def _bare(annotation: Any) -> Any:
    """``X`` out of ``X | None`` and ``Annotated[X, ...]``."""
    while True:
        if get_origin(annotation) is Annotated:
            annotation = get_args(annotation)[0]
        elif get_origin(annotation) in (Union, UnionType):
            kept = [a for a in get_args(annotation) if a is not type(None)]
            if len(kept) != 1:
                return annotation
            annotation = kept[0]
        else:
            return annotation


def _model_field(model: type[BaseModel], key: object) -> FieldInfo | None:
    for name, field in model.model_fields.items():
        if key in (name, field.alias):
            return field
    return None


def _keys(model: type[BaseModel]) -> list[str]:
    """The keys a table of this model takes, as the file spells them (``from``, not ``from_``)."""
    return [field.alias or name for name, field in model.model_fields.items() if name != "path"]


def _header(loc: tuple[Any, ...]) -> str:
    """How the table at ``loc`` is written: ``[digest]``, ``[[feeds]]``, ``[topics.rl]``."""
    if not loc:
        return "the top level"
    if len(loc) >= 2 and isinstance(loc[1], int):
        return f"[[{loc[0]}]]"
    return "[" + key_path(loc) + "]"


def _unknown_key(loc: tuple[Any, ...], data: dict[str, Any]) -> str:
    """An unknown key or section, and the one that was likely meant (or the ones there are)."""
    name, parent = str(loc[-1]), loc[:-1]
    _, model = _field_at(parent)
    keys = _keys(model) if isinstance(model, type) and issubclass(model, BaseModel) else []
    what = "key"
    if not parent:
        value = data.get(name)
        tables = isinstance(value, list) and bool(value) and all(isinstance(v, dict) for v in value)
        what = "section" if isinstance(value, dict) or tables else "key"
    close = did_you_mean(name, keys)
    if close is not None:
        return f"unknown {what}; did you mean `{close}`?"
    # A key written in the wrong table: say which tables take it.
    homes = [
        header
        for section, header in _HEADERS.items()
        if (parent[:1] != (section,)) and name in _keys(_table_model(section))
    ]
    if homes:
        where = f"in {_header(parent)}" if parent else "at the top of the file"
        return f"unknown {what} {where}: `{name}` belongs in {' or '.join(homes)}"
    if not keys:
        return f"unknown {what}"
    listed = "sections" if not parent else f"keys of {_header(parent)}"
    return f"unknown {what} ({listed}: {', '.join(sorted(keys))})"


def _misspelt_as(loc: tuple[Any, ...], data: dict[str, Any]) -> str:
    """`` (is `hots` it, misspelt?)`` when the table holds an unknown key close to the missing one."""
    table: Any = data
    for part in loc[:-1]:
        try:
            table = table[part]
        except (KeyError, IndexError, TypeError):
            return ""
    _, model = _field_at(loc[:-1])
    if not isinstance(table, dict) or not (isinstance(model, type) and issubclass(model, BaseModel)):
        return ""
    unknown = set(map(str, table)) - set(_keys(model))
    close = did_you_mean(str(loc[-1]).removesuffix("_"), unknown)
    return f" (is `{close}` it, misspelt?)" if close else ""


def _table_model(section: str) -> type[BaseModel]:
    """The model of one table of ``section`` (one feed, one topic, one subscriber)."""
    _, model = _field_at((section,))
    while get_origin(model) in (list, dict):
        model = _bare(get_args(model)[-1])
    assert isinstance(model, type) and issubclass(model, BaseModel)
    return model


def _unknown_name(what: str, name: str, known: Iterable[str], plural: str) -> str:
    """``unknown topic 'spikng'; did you mean `spiking`?``, or the names there are."""
    close = did_you_mean(name, known)
    if close is not None:
        return f"unknown {what} {name!r}; did you mean `{close}`?"
    return f"unknown {what} {name!r} ({plural}: {_names(known)})"


def cross_check(data: dict[str, Any]) -> list[tuple[tuple[Any, ...], str]]:
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
                        (("topics", tname, "feeds", j), _unknown_name("feed", feed, feed_names, "feeds"))
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
                            (("subscribers", i, "topics", j), _unknown_name("topic", name, topics, "topics"))
                        )
    return problems


def _names(names: Iterable[str]) -> str:
    return ", ".join(sorted(names)) or "none defined"


def key_path(loc: tuple[Any, ...]) -> str:
    """``("subscribers", 2, "topics", 0)`` -> ``subscribers[3].topics[1]``: 1-based, as people
    count; a name that is not a bare TOML key is quoted, as the file must quote it."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part + 1}]"
        else:
            name = "from" if part == "from_" else str(part)
            out += ("." if out else "") + (name if BARE_KEY.fullmatch(name) else toml_value(name))
    return out or "(top level)"

"""Loading ``digest.toml``: read it, validate it, and report every problem with its line.

The file is TOML (read with tomllib) validated with pydantic, then cross-checked (names that
must exist, duplicates). Every problem is reported at once, each with the file, the line where
it can be found, the key path and what is wrong, as a :class:`~pipeline.errors.ConfigError`.
What is wrong is said in the file's words, never pydantic's ("expected a whole number, like 30,
not "many""), and a misspelt key, section, topic or feed gets the name it most likely meant
(difflib's closest match).
"""

from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from ..errors import ConfigError
from .problems import cross_check, key_path, problem_message
from .settings import DEFAULT_CONFIG, DigestSection, FeedConfig, Settings, SmtpSection, TopicConfig

CONFIG_ENV = "DIGEST_CONFIG"


def config_path(explicit: str | os.PathLike[str] | None = None) -> Path:
    """The config file to use: ``--config``, else ``$DIGEST_CONFIG``, else the default."""
    if explicit:
        return Path(explicit)
    return Path(os.environ.get(CONFIG_ENV) or DEFAULT_CONFIG)


def load_settings(path: str | os.PathLike[str] | None = None) -> Settings:
    """Read, validate and resolve the config file, or raise ConfigError listing every problem."""
    file = config_path(path)
    return parse_settings(_read(file), file)


def _read(file: Path) -> str:
    try:
        return file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError([f"{file}: config file not found (use --config PATH or ${CONFIG_ENV})"]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError([f"{file}: cannot read config file: {exc}"]) from None


def _toml(text: str, file: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        line = re.search(r"\(at line (\d+), column \d+\)", str(exc))
        raise ConfigError([f"{file}:{line[1] + ':' if line else ''} TOML syntax error: {exc}"]) from None


def parse_settings(text: str, file: Path) -> Settings:
    """Validate config text as if it were the file ``file``."""
    data = _toml(text, file)
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
                key = loc[:-1] if loc[-1:] == ("[key]",) else loc  # "[key]": a topic's name itself
                problems.append((locator.line(key), f"{key_path(key)}: {problem_message(error, data)}"))
    for loc, message in cross_check(data):
        problems.append((locator.line(loc), f"{key_path(loc)}: {message}"))
    if problems or settings is None:
        problems.sort(key=lambda p: p[0] or 0)
        raise ConfigError([f"{file}:{line}: {msg}" if line else f"{file}: {msg}" for line, msg in problems])
    return settings


@dataclass(frozen=True, slots=True)
class ConfigParts:
    """What ``check`` looks into beyond the schema, from a valid config or from the parts of an
    invalid one that validate on their own.

    ``topics`` holds each topic's ``keywords``, ``exclude`` and ``query`` that are well-typed;
    ``local_feeds`` the index and resolved path of each feed whose ``url`` is a local file;
    ``templates`` the resolved templates folder; ``smtp`` the section, when it validates.
    """

    path: Path
    text: str
    topics: dict[str, TopicConfig]
    local_feeds: tuple[tuple[int, str], ...]
    templates: str | None
    smtp: SmtpSection | None

    def line(self, key: tuple[str | int, ...]) -> int | None:
        """The line of the file where ``key`` (or its nearest parent) is written."""
        return key_line(self.text, key) if self.text else None

    @classmethod
    def of(cls, settings: Settings) -> ConfigParts:
        """The parts of a valid config."""
        try:
            text = settings.path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            text = ""
        return cls(
            path=settings.path,
            text=text,
            topics=dict(settings.topics),
            local_feeds=tuple((i, f.url) for i, f in enumerate(settings.feeds) if f.is_local),
            templates=settings.digest.templates,
            smtp=settings.smtp,
        )

    @classmethod
    def salvage(cls, path: str | os.PathLike[str] | None) -> ConfigParts | None:
        """The parts of a config file that validate on their own, whatever the rest holds
        (None when the file cannot be read or is not TOML: then nothing more can be checked)."""
        file = config_path(path)
        try:
            text = _read(file)
            data = _toml(text, file)
        except ConfigError:
            return None
        context = {"base_dir": file.resolve().parent}
        topics: dict[str, TopicConfig] = {}
        raw_topics = data.get("topics")
        for name, topic in raw_topics.items() if isinstance(raw_topics, dict) else ():
            if isinstance(topic, dict):
                # each of the keys the matcher compiles, if it is well-typed on its own
                fields = {
                    key: topic[key]
                    for key in ("keywords", "exclude", "query")
                    if key in topic and _valid(TopicConfig, {key: topic[key]}, context)
                }
                compiled = _valid(TopicConfig, fields, context) if fields else None
                if compiled is not None:
                    topics[name] = compiled
        feeds: list[tuple[int, str]] = []
        raw_feeds = data.get("feeds")
        for i, feed in enumerate(raw_feeds if isinstance(raw_feeds, list) else ()):
            url = feed.get("url") if isinstance(feed, dict) else None
            parsed = _valid(FeedConfig, {"name": "x", "url": url}, context) if isinstance(url, str) else None
            if parsed is not None and parsed.is_local:
                feeds.append((i, parsed.url))
        digest = data.get("digest")
        templates = digest.get("templates") if isinstance(digest, dict) else None
        section = _valid(DigestSection, {"templates": templates}, context) if templates is not None else None
        return cls(
            path=file,
            text=text,
            topics=topics,
            local_feeds=tuple(feeds),
            templates=section.templates if section else None,
            smtp=_valid(SmtpSection, data.get("smtp"), context) if "smtp" in data else None,
        )


_Model = TypeVar("_Model", bound=BaseModel)


def _valid(model: type[_Model], data: object, context: dict[str, Any]) -> _Model | None:
    """``data`` validated as ``model``, or None."""
    try:
        return model.model_validate(data, context=context)
    except ValidationError:
        return None


def key_line(text: str, key: tuple[str | int, ...]) -> int | None:
    """The line of config ``text`` where the key path ``key`` (or its nearest parent) is written."""
    return _Locator(text).line(key)


# --- the words of problems -----------------------------------------------------------------

# What a list of strings holds, by its key: its items' name, one item's name, an example item.


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
                    self.lines.setdefault(parts, number)  # the array itself: where it starts
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
